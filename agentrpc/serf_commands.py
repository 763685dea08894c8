"""Serf's own agent RPC commands (serf's ``ipc.go``), acting on the agent's LAN pool.

The ``serf`` CLI and the clients written for Serf (``serfclient`` on PyPI, Go's
``serf/client``) drive the agent through these: ``members`` and ``members-filtered``,
``join`` (with ``Replay``), ``force-leave`` (with ``Prune``), ``event``, ``stream`` (member
events, user events and queries as serf's event records), ``query`` (ack, response and done
records until the deadline), ``respond`` (to a query a stream delivered), ``tags``, the key
commands (serf's ``keyResponse``, with serf's error texts), ``get-coordinate``, ``stats`` and
``leave``. ``handshake``, ``auth``, ``monitor`` and ``stop`` are the session's and the
engine's (:mod:`agentrpc.serf_session`, :mod:`agentrpc.serf_rpc`).

A :class:`SerfCommands` is built for each connection: a stream registers the queries it
delivers under IDs of that connection (serf's ``RegisterQuery``), which only ``respond`` on
the same connection can answer, and its event streams are cancel scopes keyed by their Seq.
Bounded: at most :data:`MAX_PENDING_QUERIES` registered queries per connection (expired ones
go first), streams as :data:`~agentrpc.serf_session.MAX_STREAMS` says, each stream's
undelivered events in bytes as the pool's subscription bounds them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import trio

from .commands import RUNTIME_SECTION, pool_key_operation
from .config import AgentConfig
from .log_protocol import INFO, WARN, LogLike, clip
from .membership import GossipPool, MembershipPool, member_of
from .membership.gossip_pool import (
    MemberEvent,
    MemberFilterError,
    PoolShutdown,
    QueryAck,
    QueryError,
    QueryReceived,
    TagsTooLargeError,
    UserEventError,
    UserEventReceived,
    coordinate_body,
    filter_members,
)
from .protocol.bodies import (
    EventRequest,
    ForceLeaveNode,
    JoinRequest,
    MembersFilter,
    QueryRequest,
    RespondRequest,
    TagsRequest,
    members_body,
)
from .protocol.codec import Request
from .protocol.constants import (
    ERR_INTERNAL_QUERY_PREFIX,
    ERR_INVALID_FILTER,
    ERR_INVALID_QUERY_ID,
    EVENT,
    FORCE_LEAVE,
    GET_COORDINATE,
    INSTALL_KEY,
    JOIN,
    LEAVE,
    LIST_KEYS,
    MEMBERS,
    MEMBERS_FILTERED,
    QUERY,
    QUERY_RECORD_ACK,
    QUERY_RECORD_DONE,
    QUERY_RECORD_RESPONSE,
    REMOVE_KEY,
    RESPOND,
    STATS,
    STREAM,
    TAGS,
    USE_KEY,
)
from .rpc_connection import AsyncHandler, InstantHandler, Reply, ReplyNow
from .serf_session import SerfSession

MAX_PENDING_QUERIES: Final = 1024
"""Queries one connection's streams have delivered and it may still respond to."""
INTERNAL_QUERY_PREFIX: Final = "_serf_"
PING_QUERY: Final = "_serf_ping"
"""The one internal query a client may send (without a payload), as serf's agent allows."""
NO_GOSSIP: Final = "the LAN pool has no gossip layer in this agent"

EVENT_TYPES: Final = frozenset(
    {"member-join", "member-leave", "member-failed", "member-update", "member-reap", "user",
     "query", "*"}
)  # fmt: skip
"""The event types a stream's filter may name (serf's ``EventFilter.Valid``)."""


# --------------------------------------------------------------------------------------------
# Pure parts: event filters, records.


@dataclass(frozen=True, slots=True)
class EventFilter:
    """One filter of a stream: an event type (or ``*``), and for ``user``/``query`` a name."""

    event: str
    name: str = ""

    def matches(self, event: MemberEvent | UserEventReceived | QueryReceived) -> bool:
        """Serf's ``EventFilter.Invoke``."""
        if self.event == "*":
            return True
        if event_type(event) != self.event:
            return False
        if self.name and isinstance(event, UserEventReceived | QueryReceived):
            return event.name == self.name
        return True


def parse_event_filter(text: str) -> list[EventFilter] | None:
    """Serf's ``ParseEventFilter`` (``member-join,user:deploy``; "" means ``*``); None when a
    filter names an unknown event type (``Invalid event filter``)."""
    filters = []
    for part in (text or "*").split(","):
        event, name = part, ""
        if part.startswith("user:"):
            event, name = "user", part[len("user:") :]
        elif part.startswith("query:"):
            event, name = "query", part[len("query:") :]
        if event not in EVENT_TYPES:
            return None
        filters.append(EventFilter(event, name))
    return filters


def event_type(event: MemberEvent | UserEventReceived | QueryReceived) -> str:
    if isinstance(event, MemberEvent):
        return event.type.value
    return "user" if isinstance(event, UserEventReceived) else "query"


def member_record(event: MemberEvent) -> dict[str, Any]:
    """Serf's ``memberEventRecord``."""
    return {"Event": event.type.value, "Members": [member_of(event.member).to_wire()]}


def user_event_record(event: UserEventReceived) -> dict[str, Any]:
    """Serf's ``userEventRecord`` (keys in go-msgpack's order)."""
    return {
        "Coalesce": event.coalesce,
        "Event": "user",
        "LTime": event.ltime,
        "Name": event.name,
        "Payload": event.payload,
    }


def query_event_record(event: QueryReceived, query_id: int) -> dict[str, Any]:
    """Serf's ``queryEventRecord``: ``ID`` is the connection's, to ``respond`` with."""
    return {
        "Event": "query",
        "ID": query_id,
        "LTime": event.ltime,
        "Name": event.name,
        "Payload": event.payload,
    }


def query_record(kind: str, from_node: str = "", payload: bytes | None = None) -> dict[str, Any]:
    """Serf's ``queryRecord``: ``ack``, ``response`` or ``done``."""
    return {"From": from_node, "Payload": payload, "Type": kind}


def key_reply(messages: Mapping[str, str], keys: Mapping[str, int] | None, result: Any) -> Any:
    """Serf's ``keyResponse`` (``Keys`` only for ``list-keys``; nil otherwise)."""
    return {
        "Keys": dict(keys) if keys is not None else None,
        "Messages": dict(messages),
        "NumErr": result.num_err,
        "NumNodes": result.num_nodes,
        "NumResp": result.num_resp,
    }


# --------------------------------------------------------------------------------------------
# The commands.


class SerfHost(Protocol):
    """What Serf's commands read and do of the agent."""

    @property
    def config(self) -> AgentConfig: ...

    @property
    def lan(self) -> MembershipPool: ...

    @property
    def log(self) -> LogLike: ...

    async def leave(self) -> str: ...

    def shutdown(self) -> None: ...


class SerfCommands:
    """The command tables of one Serf-dialect connection, and its session."""

    def __init__(self, host: SerfHost, auth_key: str = "") -> None:
        self._host = host
        self._log = host.log
        self._queries: OrderedDict[int, tuple[int, float]] = OrderedDict()
        """Connection-wide query ID -> (the pool's handle, the query's deadline)."""
        self._next_query_id = 0
        self._streams: dict[int, trio.CancelScope] = {}
        instant: dict[str, InstantHandler] = {
            MEMBERS: self.members,
            MEMBERS_FILTERED: self.members_filtered,
            STATS: self.stats,
            GET_COORDINATE: self.get_coordinate,
            TAGS: self.tags,
        }
        slow: dict[str, AsyncHandler] = {
            JOIN: self.join,
            FORCE_LEAVE: self.force_leave,
            EVENT: self.event,
            STREAM: self.stream,
            QUERY: self.query,
            RESPOND: self.respond,
            INSTALL_KEY: self.key_operation,
            USE_KEY: self.key_operation,
            REMOVE_KEY: self.key_operation,
            LIST_KEYS: self.key_operation,
            LEAVE: self.leave,
        }
        self.instant: Mapping[str, InstantHandler] = instant
        self.async_: Mapping[str, AsyncHandler] = slow
        self.session = SerfSession(instant, slow, auth_key)

    def _gossip(self) -> GossipPool | None:
        pool = self._host.lan
        return pool if isinstance(pool, GossipPool) else None

    # ------------------------------------------------------------------ answered at once

    def members(self, _body: Any) -> Reply:
        return "", members_body(self._host.lan.members())

    def members_filtered(self, body: MembersFilter) -> Reply:
        try:
            found = filter_members(self._host.lan.members(), body.tags, body.status, body.name)
        except MemberFilterError as exc:
            return str(exc), {"Members": []}
        return "", members_body(found)

    def stats(self, _body: Any) -> Reply:
        """Serf's agent ``Stats``: agent, runtime, serf, tags, event_handlers."""
        host = self._host
        pool = host.lan
        local = next((m for m in pool.members() if m.name == host.config.node_name), None)
        return "", {
            "agent": {"name": host.config.node_name},
            "runtime": RUNTIME_SECTION,
            "serf": pool.stats(),
            "tags": dict(local.tags) if local is not None else {},
            "event_handlers": {},
        }

    def get_coordinate(self, node: str) -> Reply:
        return "", coordinate_body(self._host.lan, node)

    def tags(self, body: TagsRequest) -> Reply:
        """Serf's ``tags``: the current tags less ``DeleteTags``, plus ``Tags``."""
        pool = self._gossip()
        if pool is None:
            return NO_GOSSIP, None
        tags = {key: value for key, value in pool.serf.tags.items() if key not in body.delete}
        tags.update(body.tags)
        try:
            pool.set_tags(tags)
        except TagsTooLargeError as exc:
            return str(exc), None
        self._log.throttled(INFO, "ipc-tags", f"agent.ipc: tags updated ({len(tags)} tags)")
        return "", None

    # ------------------------------------------------------------------ run as tasks

    async def join(self, request: Request, _reply_now: ReplyNow) -> Reply:
        join: JoinRequest = request.body
        pool = self._host.lan
        self._log.throttled(
            INFO,
            "ipc-join",
            f"agent: joining: {clip(', '.join(join.existing)) or '-'} replay: "
            f"{'true' if join.replay else 'false'}",
        )
        if isinstance(pool, GossipPool):
            num, error = await pool.join(join.existing, ignore_old=not join.replay)
        else:
            num, error = await pool.join(join.existing)
        if error:
            self._log.throttled(WARN, "ipc-join-failed", f"agent: error joining: {clip(error)}")
        return error, {"Num": num}

    async def force_leave(self, request: Request, _reply_now: ReplyNow) -> Reply:
        node: ForceLeaveNode = request.body
        prune = bool(getattr(node, "prune", False))
        self._log.throttled(
            INFO,
            "ipc-force-leave",
            f"agent: Force leaving node{' (prune)' if prune else ''}: {clip(str(node))}",
        )
        pool = self._host.lan
        if isinstance(pool, GossipPool):
            return await pool.force_leave(str(node), prune=prune), None
        return await pool.force_leave(str(node)), None

    async def event(self, request: Request, _reply_now: ReplyNow) -> Reply:
        event: EventRequest = request.body
        pool = self._gossip()
        if pool is None:
            return NO_GOSSIP, None
        try:
            await pool.user_event(event.name, event.payload, event.coalesce)
        except UserEventError as exc:
            self._log.throttled(
                WARN, "ipc-event-failed", f"agent: failed to send user event: {clip(exc)}"
            )
            return str(exc), None
        return "", None

    async def key_operation(self, request: Request, _reply_now: ReplyNow) -> Reply:
        command = request.command
        key: str = request.body if command != LIST_KEYS else ""
        self._log.throttled(INFO, f"ipc-{command}", f"agent: {command} (serf keys)")
        result = await pool_key_operation(self._host.lan, command, key)
        keys = result.keys if command == LIST_KEYS else None
        return result.error, key_reply(result.messages, keys, result)

    async def leave(self, _request: Request, reply_now: ReplyNow) -> None:
        host = self._host
        self._log.info("agent.ipc: Graceful leave triggered")
        error = await host.leave()
        await reply_now(error, None)
        host.shutdown()

    async def query(self, request: Request, reply_now: ReplyNow) -> Reply | None:
        """Send a query; ack, then stream its acks and responses, then ``done`` at the
        deadline (serf's ``queryResponseStream``)."""
        query: QueryRequest = request.body
        name = query.name
        if name.startswith(INTERNAL_QUERY_PREFIX) and (name != PING_QUERY or query.payload):
            return ERR_INTERNAL_QUERY_PREFIX, None
        pool = self._gossip()
        if pool is None:
            return NO_GOSSIP, None
        self._log.throttled(INFO, "ipc-query", f"agent: Requesting query send: {clip(name)}")
        acked = False
        try:
            async with pool.query(
                name,
                query.payload,
                filter_nodes=query.filter_nodes,
                filter_tags=query.filter_tags,
                request_ack=query.request_ack,
                relay_factor=query.relay_factor,
                timeout=query.timeout_ns / 1e9,
            ) as stream:
                acked = True
                await reply_now("", None)
                async for item in stream:
                    if isinstance(item, QueryAck):
                        await reply_now("", query_record(QUERY_RECORD_ACK, item.from_node))
                    else:
                        record = query_record(QUERY_RECORD_RESPONSE, item.from_node, item.payload)
                        await reply_now("", record)
                await reply_now("", query_record(QUERY_RECORD_DONE))
        except QueryError as exc:
            if acked:
                raise
            self._log.throttled(
                WARN, "ipc-query-failed", f"agent: failed to start user query: {clip(exc)}"
            )
            return str(exc), None
        return None

    async def respond(self, request: Request, _reply_now: ReplyNow) -> Reply:
        respond: RespondRequest = request.body
        pool = self._gossip()
        self._expire_queries()
        pending = self._queries.get(respond.id)
        if pool is None or pending is None:
            return ERR_INVALID_QUERY_ID, None
        try:
            await pool.respond(pending[0], respond.payload)
        except QueryError as exc:
            return str(exc), None
        return "", None

    async def stream(self, request: Request, reply_now: ReplyNow) -> None:
        """An event stream: ack, then every event the filter takes, as serf's records, until
        ``stop`` (the engine cancels :meth:`cancel_stream`), the pool stops or the
        connection closes."""
        seq = request.seq
        filters = parse_event_filter(request.body)
        if filters is None:
            self._streams.pop(seq, None)
            self.session.stream_ended(seq)
            await reply_now(ERR_INVALID_FILTER, None)
            return
        scope = self._streams.setdefault(seq, trio.CancelScope())
        pool = self._gossip()
        try:
            if pool is None:
                await reply_now("", None)
                with scope:
                    await trio.sleep_forever()
                return
            async with pool.subscribe() as events:
                # Subscribed before the ack: nothing that happens after the ack is missed.
                await reply_now("", None)
                with scope:
                    async for event in events:
                        if isinstance(event, PoolShutdown):
                            return
                        if not any(f.matches(event) for f in filters):
                            continue
                        await reply_now("", self._record(event))
        finally:
            self._streams.pop(seq, None)
            self.session.stream_ended(seq)

    def _record(self, event: MemberEvent | UserEventReceived | QueryReceived) -> dict[str, Any]:
        if isinstance(event, MemberEvent):
            return member_record(event)
        if isinstance(event, UserEventReceived):
            return user_event_record(event)
        return query_event_record(event, self._register_query(event))

    def _register_query(self, event: QueryReceived) -> int:
        """Serf's ``RegisterQuery``: an ID of this connection for ``respond``."""
        self._next_query_id += 1
        query_id = self._next_query_id
        now = trio.current_time()
        if event.deadline <= now:
            return query_id
        self._expire_queries()
        while len(self._queries) >= MAX_PENDING_QUERIES:
            self._queries.popitem(last=False)
        self._queries[query_id] = (event.handle, event.deadline)
        return query_id

    def _expire_queries(self) -> None:
        now = trio.current_time()
        for query_id, (_, deadline) in list(self._queries.items()):
            if deadline <= now:
                del self._queries[query_id]

    def cancel_stream(self, seq: int) -> None:
        """End the event stream of ``seq`` now (``stop``): nothing more of it is queued."""
        self._streams.setdefault(seq, trio.CancelScope()).cancel()


__all__ = [
    "EVENT_TYPES",
    "MAX_PENDING_QUERIES",
    "EventFilter",
    "SerfCommands",
    "SerfHost",
    "event_type",
    "parse_event_filter",
    "query_record",
]
