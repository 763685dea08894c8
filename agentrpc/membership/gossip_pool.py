"""A membership pool backed by gossip: serf's membership layer over a running memberlist.

:class:`GossipPool` is the agent's LAN (or WAN) pool when the agent gossips. It owns a
:class:`~agentrpc.gossip.serf.SerfState` and talks to memberlist through a
:class:`SerfMemberlist` (memberlist's handle plus UDP sends and the keyring). Wiring, in the
agent (:func:`~agentrpc.membership.gossip_setup.start_pool` does this)::

    pool = GossipPool("lan", SerfConfig(node_name=name, tags=tags), logger=hub.logger("serf"),
                      keyring=keyring)
    memberlist = Memberlist(ml_config, pool.delegate, pool.delegate, hub.logger("memberlist"),
                            transport, rng, conflict=pool.delegate)
    pool.attach(memberlist)
    # in the agent's service nursery, memberlist first:
    await nursery.start(memberlist.run)
    await nursery.start(pool.run)

``pool.delegate`` is memberlist's delegate, event delegate and conflict delegate: it hands
everything to :attr:`serf` and wakes the pool's pump when serf has something to send or to
tell. ``run`` owns the pool's tasks until cancelled: the pump (serf's UDP sends, its events
to the subscribers, keyring changes installed and persisted in order, name conflicts
resolved), reconnecting to failed members and reaping old ones.

The public API beyond :class:`~agentrpc.membership.pool.MembershipPool`: :meth:`user_event`,
:meth:`query` (an async context manager yielding the acks and responses until the deadline),
:meth:`respond`, the key operations (:meth:`install_key`, :meth:`use_key`,
:meth:`remove_key`, :meth:`list_keys`, each returning serf's aggregated
:class:`~agentrpc.gossip.serf_keys.KeyResponse`), and :meth:`subscribe` (an async context
manager yielding every member event, user event and user query of the pool, bounded in
bytes). When a name conflict is lost, :attr:`shutdown_requested` is set (and subscribers get a
:class:`PoolShutdown`): the owner must then stop the pool and its memberlist, as serf shuts
down.
"""

from __future__ import annotations

import ipaddress
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, Protocol

import trio

from ..gossip.contract import GossipAddress, MemberlistHandle, NodeInfo
from ..gossip.security import Keyring
from ..gossip.serf import (
    ConflictDetected,
    KeyringChange,
    MemberEvent,
    MemberEventType,
    QueryError,
    QueryReceived,
    SerfConfig,
    SerfError,
    SerfLifecycle,
    SerfLog,
    SerfMember,
    SerfState,
    TagsTooLargeError,
    UserEventError,
    UserEventReceived,
)
from ..gossip.serf_conflict import ConflictVote
from ..gossip.serf_coordinates import SerfCoordinates
from ..gossip.serf_internal import (
    CONFLICT_QUERY,
    INSTALL_KEY_QUERY,
    LIST_KEYS_QUERY,
    REMOVE_KEY_QUERY,
    USE_KEY_QUERY,
    internal_query_name,
)
from ..gossip.serf_keys import KeyAggregator, KeyRequestError, KeyResponse, key_request_payload
from ..gossip.serf_queries import QueryAck, QueryCollector, QueryItem, QueryReply
from ..gossip.serf_regexp import RegexpError, match_string
from ..log_protocol import ERR, INFO, clip
from ..protocol.bodies import IPAddress, Member
from .keyring_file import write_keyring

__all__ = [
    "EventSubscription",
    "GossipPool",
    "KeyResponse",
    "MemberEvent",
    "MemberEventType",
    "MemberFilterError",
    "PoolEvent",
    "PoolShutdown",
    "QueryAck",
    "QueryError",
    "QueryReceived",
    "QueryReply",
    "QueryStream",
    "SerfError",
    "SerfMemberlist",
    "TagsTooLargeError",
    "UserEventError",
    "UserEventReceived",
    "coordinate_body",
    "filter_members",
    "join_error_text",
    "member_change",
    "member_of",
]

DEFAULT_SUBSCRIPTION_BYTES: Final = 1 << 20
"""What one subscriber's undelivered events may hold (names, payloads, an estimate per
member event) before new ones are dropped for it."""
_MAX_PENDING_KEY_CHANGES: Final = 64
_PUMP_ROUNDS: Final = 64
"""Drain rounds per wake-up (what handling produces is drained in the same wake-up)."""


class SerfMemberlist(MemberlistHandle, Protocol):
    """What serf's upper layer needs of memberlist beyond :class:`MemberlistHandle`."""

    async def send_to_address(self, address: GossipAddress, payload: bytes) -> None:
        """A user message in one UDP packet to ``address`` (best effort)."""
        ...

    def set_keyring(self, keyring: Keyring) -> None:
        """Seal with the new primary key and open with any of the keys from now on."""
        ...

    def wake_gossip(self) -> None:
        """Serf queued a broadcast: gossip it on the next tick (the loop sleeps while every
        queue is empty)."""
        ...


@dataclass(frozen=True, slots=True)
class PoolShutdown:
    """The pool lost a name conflict and must stop (serf's ``Shutdown``)."""

    reason: str

    def __str__(self) -> str:
        return f"shutdown: {self.reason}"


PoolEvent = MemberEvent | UserEventReceived | QueryReceived | PoolShutdown
"""What a subscriber receives."""


def join_error_text(errors: Sequence[str]) -> str:
    """The error of a join where no address answered, as the reference words it (the
    go-multierror list of memberlist's ``Failed to join ...`` texts); "" without errors."""
    if not errors:
        return ""
    points = "\n".join(f"* {error}" for error in errors)
    return f"{len(errors)} error(s) occurred:\n\n{points}"


def _ip(member: SerfMember) -> IPAddress:
    try:
        return ipaddress.ip_address(member.addr)
    except ValueError:
        # Memberlist admits only 4- or 16-byte addresses, so this is a bug, not a peer's doing:
        # say so rather than list the member at 0.0.0.0.
        raise ValueError(
            f"member {clip(member.name)!r} has an address of {len(member.addr)} bytes "
            "(memberlist admits only 4 or 16)"
        ) from None


def member_of(member: SerfMember) -> Member:
    """The agent RPC's :class:`Member` of a serf member; ``ValueError`` when its address is
    not 4 or 16 bytes (which memberlist never admits)."""
    pmin, pmax, pcur, dmin, dmax, dcur = member.vsn
    return Member(
        name=member.name,
        addr=_ip(member),
        port=member.port,
        tags=dict(member.tags),
        status=str(member.status),
        protocol_min=pmin,
        protocol_max=pmax,
        protocol_cur=pcur,
        delegate_min=dmin,
        delegate_max=dmax,
        delegate_cur=dcur,
    )


def member_change(event: MemberEvent) -> tuple[Member, bool]:
    """A member event as the agent's catalog takes it: the member, and whether serf reaped it
    (``member-reap``)."""
    return member_of(event.member), event.type is MemberEventType.REAP


class MemberFilterError(ValueError):
    """A filter of ``members-filtered`` that does not compile (serf's text)."""


def _anchored(expr: str) -> str:
    return f"^{expr}$"


def filter_members(
    members: Sequence[Member], tags: Mapping[str, str], status: str, name: str
) -> list[Member]:
    """Serf's ``filterMembers``: each tag's value, the status and the name must match the
    given regular expressions whole (``^expr$``; an empty status or name matches all; a tag
    filter on a missing tag matches against ""). Linear-time regexps
    (:mod:`~agentrpc.gossip.serf_regexp`): a filter comes from a client, so no pattern can
    stall the agent. Raises :class:`MemberFilterError` for one that does not compile."""
    patterns = [_anchored(expr) for expr in tags.values()]
    if status:
        patterns.append(_anchored(status))
    if name:
        patterns.append(_anchored(name))
    try:
        for pattern in patterns:
            match_string(pattern, "")
    except RegexpError as exc:
        raise MemberFilterError(f"Failed to compile regex: {clip(exc)}") from None
    found = []
    for member in members:
        if all(
            match_string(_anchored(expr), member.tags.get(tag, "")) for tag, expr in tags.items()
        ):
            if status and not match_string(_anchored(status), member.status):
                continue
            if name and not match_string(_anchored(name), member.name):
                continue
            found.append(member)
    return found


def coordinate_body(pool: object, node: str) -> dict[str, object]:
    """Serf's ``coordinateResponse`` for ``node``: ``{Coord, Ok}``, the zero coordinate and
    ``Ok`` false when the pool has none for it (or keeps no coordinates)."""
    coordinates = pool.coordinates if isinstance(pool, GossipPool) else None
    coord = coordinates.get_cached_coordinate(node) if coordinates is not None else None
    if coord is None:
        zero = {"Adjustment": 0.0, "Error": 0.0, "Height": 0.0, "Vec": None}
        return {"Coord": zero, "Ok": False}
    return {
        "Coord": {
            "Adjustment": float(coord.adjustment),
            "Error": float(coord.error),
            "Height": float(coord.height),
            "Vec": [float(x) for x in coord.vec],
        },
        "Ok": True,
    }


class EventSubscription:
    """The pool's events for one subscriber, in order; an async iterator (see
    :meth:`GossipPool.subscribe`). Past ``max_bytes`` of undelivered events, new ones are
    dropped for this subscriber and counted in :attr:`dropped`."""

    def __init__(self, max_bytes: int) -> None:
        self._events: deque[tuple[PoolEvent, int]] = deque()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._ready = trio.Event()
        self._closed = False
        self.dropped = 0

    def _push(self, event: PoolEvent, size: int) -> None:
        if self._closed:
            return
        if self._bytes + size > self._max_bytes:
            self.dropped += 1
            return
        self._events.append((event, size))
        self._bytes += size
        self._ready.set()

    def _close(self) -> None:
        self._closed = True
        self._ready.set()

    def __aiter__(self) -> EventSubscription:
        return self

    async def __anext__(self) -> PoolEvent:
        while not self._events:
            if self._closed:
                raise StopAsyncIteration
            self._ready = trio.Event()
            await self._ready.wait()
        event, size = self._events.popleft()
        self._bytes -= size
        return event

    def pending(self) -> list[PoolEvent]:
        """Take what is queued now without waiting."""
        events = [event for event, _ in self._events]
        self._events.clear()
        self._bytes = 0
        return events


class QueryStream:
    """The acks and responses of one query of ours, as they arrive, until its deadline (see
    :meth:`GossipPool.query`); an async iterator of :class:`QueryAck` and
    :class:`QueryReply`."""

    def __init__(self, pool: GossipPool, collector: QueryCollector) -> None:
        self._pool = pool
        self._collector = collector
        self._items: deque[QueryItem] = deque()

    @property
    def id(self) -> int:
        return self._collector.id

    @property
    def ltime(self) -> int:
        return self._collector.ltime

    @property
    def deadline(self) -> float:
        """``trio.current_time()`` at which the query ends."""
        return self._collector.deadline

    @property
    def acks(self) -> frozenset[str]:
        return self._collector.acks

    @property
    def responders(self) -> frozenset[str]:
        return self._collector.responders

    def finished(self) -> bool:
        return trio.current_time() >= self._collector.deadline or self._collector.finished(
            trio.current_time()
        )

    def __aiter__(self) -> QueryStream:
        return self

    async def __anext__(self) -> QueryItem:
        while True:
            if self._items:
                return self._items.popleft()
            self._items.extend(self._collector.take())
            if self._items:
                continue
            if self.finished():
                raise StopAsyncIteration
            with trio.move_on_at(self._collector.deadline):
                await self._pool._progress.wait()


class _PoolDelegate:
    """Memberlist's delegate, event delegate and conflict delegate for a pool: everything
    goes to serf, and the pool's pump is woken when serf has output."""

    __slots__ = ("_pool", "_serf")

    def __init__(self, pool: GossipPool) -> None:
        self._pool = pool
        self._serf = pool.serf

    def _after(self) -> None:
        if self._serf.has_output():
            self._pool._wake_pump()

    def node_meta(self, limit: int) -> bytes:
        return self._serf.node_meta(limit)

    def notify_message(self, payload: bytes) -> None:
        self._serf.notify_message(payload)
        self._after()

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        return self._serf.get_broadcasts(overhead, limit)

    def has_broadcasts(self) -> bool:
        return self._serf.has_broadcasts()

    def local_state(self, join: bool) -> bytes:
        return self._serf.local_state(join)

    def merge_remote_state(self, state: bytes, join: bool) -> None:
        self._serf.merge_remote_state(state, join)
        self._after()

    def notify_join(self, node: NodeInfo) -> None:
        self._serf.notify_join(node)

    def notify_leave(self, node: NodeInfo) -> None:
        self._serf.notify_leave(node)

    def notify_update(self, node: NodeInfo) -> None:
        self._serf.notify_update(node)

    def notify_conflict(self, existing: NodeInfo, other: NodeInfo) -> None:
        self._serf.notify_conflict(existing, other)
        self._after()


def _event_size(event: PoolEvent) -> int:
    if isinstance(event, UserEventReceived | QueryReceived):
        return len(event.name) + len(event.payload) + 128
    return 512


class GossipPool:
    """A :class:`~agentrpc.membership.pool.MembershipPool` over serf and memberlist."""

    def __init__(
        self,
        name: str,
        config: SerfConfig,
        *,
        logger: SerfLog | None = None,
        memberlist: SerfMemberlist | None = None,
        encrypted: bool = False,
        rng: random.Random | None = None,
        on_event: Callable[[MemberEvent], None] | None = None,
        keyring: Keyring | None = None,
        coordinates: SerfCoordinates | None = None,
    ) -> None:
        """``name`` is the pool's (``lan``/``wan``); ``logger`` should be the hub's ``serf``
        logger; ``encrypted`` says whether memberlist encrypts (shown in stats); ``rng``
        drives reconnect choices, query IDs and relays; ``on_event`` hears every member
        event; ``keyring`` is the one memberlist starts with (key queries change it, and it
        is written to ``config.keyring_file`` when that is set); ``coordinates``, the pool's
        network coordinates when they are on (memberlist's ping delegate; its member events
        are the caller's to route, see ``on_event``). The memberlist can be given here or
        later to :meth:`attach` (it is built over :attr:`delegate`)."""
        self._name = name
        self._rng = rng if rng is not None else random.Random()
        self._on_member_event = on_event
        self._serf = SerfState(
            config,
            logger=logger,
            clock=trio.current_time,
            on_event=self._member_event,
            rng=self._rng,
            keyring=keyring,
            on_broadcast=self._wake_gossip,
        )
        self._delegate = _PoolDelegate(self)
        self._log = logger
        self._memberlist = memberlist
        self._encrypted = encrypted or keyring is not None
        self._cache_version = -1
        self._cache: list[Member] = []
        self._wake = trio.Event()
        self._progress = trio.Event()
        self._subscribers: list[EventSubscription] = []
        self._key_lock = trio.Lock()
        self._key_send, self._key_receive = trio.open_memory_channel[KeyringChange](
            _MAX_PENDING_KEY_CHANGES
        )
        self._nursery: trio.Nursery | None = None
        self.coordinates = coordinates
        """Serf's network coordinates of this pool (None when disabled)."""
        self.shutdown_requested = trio.Event()
        """Set when the pool lost a name conflict: its owner must stop it and memberlist."""
        self.shutdown_reason = ""

    # ------------------------------------------------------------------ wiring

    @property
    def serf(self) -> SerfState:
        """The serf state of this pool (read it; memberlist is given :attr:`delegate`)."""
        return self._serf

    @property
    def delegate(self) -> _PoolDelegate:
        """Memberlist's delegate, event delegate and conflict delegate for this pool."""
        return self._delegate

    @property
    def memberlist(self) -> SerfMemberlist | None:
        return self._memberlist

    def _wake_gossip(self) -> None:
        memberlist = self._memberlist
        if memberlist is not None:
            memberlist.wake_gossip()

    def attach(self, memberlist: SerfMemberlist) -> None:
        """Give the pool the memberlist built over :attr:`delegate` (once)."""
        if self._memberlist is not None and self._memberlist is not memberlist:
            raise RuntimeError(f"the {self._name} pool already has a memberlist")
        self._memberlist = memberlist

    # ------------------------------------------------------------------ MembershipPool

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int:
        return self._serf.version

    def members(self) -> list[Member]:
        """Every member serf knows, in any status (ourselves once memberlist started)."""
        if self._cache_version != self._serf.version:
            self._cache = [member_of(member) for member in self._serf.members()]
            self._cache_version = self._serf.version
        return list(self._cache)

    async def join(self, addresses: Sequence[str], *, ignore_old: bool = False) -> tuple[int, str]:
        """Push/pull with each address; on any success, gossip our join intent. With
        ``ignore_old``, user events older than the peers' event clocks are not delivered
        (serf's join without replay).

        Returns how many answered and "" when at least one did (as the reference: a partial
        join is a success), else the reference's error list."""
        if not addresses:
            return 0, ""
        if self._serf.lifecycle is not SerfLifecycle.ALIVE:
            return 0, "Serf can't Join after Leave or Shutdown"
        memberlist = self._memberlist
        if memberlist is None:
            return 0, f"the {self._name.upper()} pool's gossip layer is not running"
        if ignore_old:
            self._serf.event_join_ignore = True
        try:
            num, errors = await memberlist.join(addresses)
        finally:
            self._serf.event_join_ignore = False
        self._wake_pump()
        if num > 0:
            self._serf.broadcast_join()
            return num, ""
        return 0, join_error_text(errors) or f"Failed to join {', '.join(addresses)}"

    async def force_leave(self, node: str, *, prune: bool = False) -> str:
        """Gossip a leave intent about ``node`` and wait (bounded) until it was sent.

        A failed member becomes left; an unknown name is not an error."""
        sent = trio.Event()
        if not self._serf.force_leave(node, prune=prune, on_sent=sent.set):
            return ""
        with trio.move_on_after(self._serf.config.broadcast_timeout) as wait:
            await sent.wait()
        return "timed out broadcasting node removal" if wait.cancelled_caught else ""

    async def leave(self) -> str:
        """Leave gracefully: gossip our leave intent, wait (bounded) until it was sent, then
        memberlist's leave (``dead{self}``), linger ``leave_propagate_delay``; we end ``left``.

        A second call after the leave is a no-op; one during it is an error."""
        serf = self._serf
        if serf.lifecycle is SerfLifecycle.LEFT:
            return ""
        config = serf.config
        sent = trio.Event()
        try:
            queued = serf.begin_leave(on_sent=sent.set)
        except SerfError as exc:
            return str(exc)
        if queued:
            with trio.move_on_after(config.broadcast_timeout) as wait:
                await sent.wait()
            if wait.cancelled_caught:
                self._warn("timeout while waiting for graceful leave")
        memberlist = self._memberlist
        if memberlist is not None:
            with trio.move_on_after(config.broadcast_timeout) as wait:
                await memberlist.leave()
            if wait.cancelled_caught:
                self._warn("timeout waiting for leave broadcast")
            if queued:
                # Stay up a little so that peers' probes are answered until they know.
                await trio.sleep(config.leave_propagate_delay)
        serf.finish_leave()
        return ""

    def stats(self) -> dict[str, str]:
        """The reference's ``serf_lan``/``serf_wan`` keys, every value a string (with
        ``coordinate_resets`` when coordinates are on, as serf adds it)."""
        serf = self._serf
        memberlist = self._memberlist
        health = memberlist.health_score if memberlist is not None else 0
        coordinates = self.coordinates.serf_stats() if self.coordinates is not None else {}
        return {
            **coordinates,
            "encrypted": "true" if self._encrypted else "false",
            "event_queue": str(len(serf.event_broadcasts)),
            "event_time": str(serf.event_clock.time()),
            "failed": str(len(serf.failed_members())),
            "health_score": str(health),
            "intent_queue": str(len(serf.broadcasts)),
            "left": str(len(serf.left_members())),
            "member_time": str(serf.clock.time()),
            "members": str(serf.num_nodes()),
            "query_queue": str(len(serf.query_broadcasts)),
            "query_time": str(serf.query_clock.time()),
        }

    # ------------------------------------------------------------------ events and queries

    async def user_event(self, name: str, payload: bytes = b"", coalesce: bool = False) -> None:
        """Send a user event to the pool (delivered here too). Raises
        :class:`~agentrpc.gossip.serf.UserEventError` with serf's size texts."""
        await trio.lowlevel.checkpoint()
        self._serf.user_event(name, payload, coalesce)
        self._wake_pump()

    @asynccontextmanager
    async def query(
        self,
        name: str,
        payload: bytes = b"",
        *,
        filter_nodes: Sequence[str] = (),
        filter_tags: Mapping[str, str] | None = None,
        request_ack: bool = False,
        relay_factor: int = 0,
        timeout: float = 0.0,  # noqa: ASYNC109 - the query's own lifetime, sent to every node
    ) -> AsyncIterator[QueryStream]:
        """Send a query; the stream yields :class:`QueryAck` (with ``request_ack``) and
        :class:`QueryReply` items as they arrive and ends at the deadline (``timeout`` 0:
        serf's default, ``GossipInterval * 16 * ceil(log10(N + 1))``). Leaving the block
        ends the query. Raises :class:`~agentrpc.gossip.serf.QueryError` (serf's texts)."""
        memberlist = self._memberlist
        num = memberlist.num_alive() if memberlist is not None else None
        collector = self._serf.start_query(
            name,
            payload,
            filter_nodes=filter_nodes,
            filter_tags=filter_tags,
            request_ack=request_ack,
            relay_factor=relay_factor,
            timeout=timeout,
            num_members=num,
        )
        self._wake_pump()
        try:
            yield QueryStream(self, collector)
        finally:
            self._serf.end_query(collector)

    async def respond(self, handle: int, payload: bytes = b"") -> None:
        """Answer a :class:`~agentrpc.gossip.serf.QueryReceived` by its ``handle``. Raises
        :class:`~agentrpc.gossip.serf.QueryError` (serf's texts: too large, already sent,
        past the deadline, no such query)."""
        await trio.lowlevel.checkpoint()
        self._serf.respond(handle, payload)
        self._wake_pump()

    @asynccontextmanager
    async def subscribe(
        self, max_bytes: int = DEFAULT_SUBSCRIPTION_BYTES
    ) -> AsyncIterator[EventSubscription]:
        """Every member event, user event and user query (and a :class:`PoolShutdown`) from
        now on, until the block is left."""
        subscription = EventSubscription(max_bytes)
        self._subscribers.append(subscription)
        try:
            yield subscription
        finally:
            subscription._close()
            self._subscribers.remove(subscription)

    def _publish(self, event: PoolEvent) -> None:
        size = _event_size(event)
        for subscription in self._subscribers:
            subscription._push(event, size)

    def _member_event(self, event: MemberEvent) -> None:
        if self._on_member_event is not None:
            self._on_member_event(event)
        self._publish(event)

    # ------------------------------------------------------------------ keys

    async def install_key(self, key: str, *, relay_factor: int = 0) -> KeyResponse:
        """Install a base64 key on every member (``serf keys -install``)."""
        return await self._key_request(INSTALL_KEY_QUERY, key, relay_factor)

    async def use_key(self, key: str, *, relay_factor: int = 0) -> KeyResponse:
        """Make a key every member holds the primary one (``serf keys -use``)."""
        return await self._key_request(USE_KEY_QUERY, key, relay_factor)

    async def remove_key(self, key: str, *, relay_factor: int = 0) -> KeyResponse:
        """Remove a (non-primary) key from every member (``serf keys -remove``)."""
        return await self._key_request(REMOVE_KEY_QUERY, key, relay_factor)

    async def list_keys(self, *, relay_factor: int = 0) -> KeyResponse:
        """Every member's keys, counted (``serf keys -list``)."""
        return await self._key_request(LIST_KEYS_QUERY, "", relay_factor)

    async def _key_request(self, operation: str, key: str, relay_factor: int) -> KeyResponse:
        """Serf's ``handleKeyRequest``: one internal query, every response folded in; one
        operation at a time (serf's key manager lock)."""
        try:
            payload = key_request_payload(operation, key)
        except KeyRequestError as exc:
            return KeyResponse(error=str(exc))
        async with self._key_lock:
            memberlist = self._memberlist
            num_nodes = memberlist.num_alive() if memberlist is not None else 1
            aggregator = KeyAggregator(num_nodes)
            try:
                async with self.query(
                    internal_query_name(operation), payload, relay_factor=relay_factor
                ) as stream:
                    async for item in stream:
                        if isinstance(item, QueryReply):
                            aggregator.add(item.from_node, item.payload)
                            if aggregator.complete:
                                break
            except QueryError as exc:
                return KeyResponse(num_nodes=num_nodes, error=str(exc))
            for level, line in aggregator.lines:
                self._logline(level, line)
            return aggregator.finish()

    async def _key_worker(self) -> None:
        """Persist keyring changes in order, each before its response is sent."""
        path = self._serf.config.keyring_file
        async for change in self._key_receive:
            error = ""
            if path:
                try:
                    await write_keyring(path, change.keyring)
                except OSError as exc:
                    error = f"Failed to write keyring file: {exc}"
            self._serf.finish_key_change(change.handle, error)
            self._wake_pump()

    def _keyring_change(self, change: KeyringChange) -> None:
        memberlist = self._memberlist
        if memberlist is not None:
            try:
                memberlist.set_keyring(change.keyring)
            except ValueError as exc:
                self._serf.finish_key_change(change.handle, str(exc))
                return
        try:
            self._key_send.send_nowait(change)
        except trio.WouldBlock:
            self._serf.finish_key_change(change.handle, "too many keyring changes in progress")

    # ------------------------------------------------------------------ name conflicts

    async def _resolve_conflict(self, event: ConflictDetected) -> None:
        """Serf's ``resolveNodeConflict``: the conflict query, then the vote."""
        serf = self._serf
        try:
            local = serf.local_member()
            if local is None:
                return
            vote = ConflictVote(local.addr, local.port)
            try:
                async with self.query(
                    internal_query_name(CONFLICT_QUERY), serf.local_name.encode()
                ) as stream:
                    async for item in stream:
                        if isinstance(item, QueryReply):
                            problem = vote.add(item.payload)
                            if problem is not None:
                                self._logline(*problem)
            except QueryError as exc:
                self._logline(ERR, f"Failed to start name resolution query: {exc}")
                return
            won, (level, line) = vote.outcome()
            self._logline(level, line)
            if not won:
                self._request_shutdown(line)
        finally:
            serf.conflict_resolved()

    def _request_shutdown(self, reason: str) -> None:
        if self.shutdown_requested.is_set():
            return
        self.shutdown_reason = reason
        self.shutdown_requested.set()
        self._publish(PoolShutdown(reason))

    # ------------------------------------------------------------------ more operations

    def set_max_members(self, max_members: int) -> None:
        """Change the pool's member bound at run time (``reload`` of ``gossip_max_members``):
        serf's members and buffered intents, and memberlist's node table when attached."""
        self._serf.set_max_members(max_members)
        if self._memberlist is not None:
            self._memberlist.set_max_members(max_members)
        if self.coordinates is not None:
            self.coordinates.set_max_nodes(max_members)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Replace our tags and have memberlist announce them (raises
        :class:`~agentrpc.gossip.serf.TagsTooLargeError` beyond 512 encoded bytes)."""
        self._serf.set_tags(tags)
        if self._memberlist is not None:
            self._memberlist.update_meta()

    async def reconnect_once(self) -> bool:
        """One reconnect round: maybe pick a failed member (serf's throttle) and try to join
        it, bounded by the reconnect interval. Returns whether an attempt was made."""
        memberlist = self._memberlist
        if memberlist is None or self._serf.lifecycle is not SerfLifecycle.ALIVE:
            return False
        target = self._serf.choose_reconnect(self._rng)
        if target is None:
            return False
        if self._log is not None:
            self._log.info(f"attempting reconnect to {clip(target.name)} {target.join_address}")
        with trio.move_on_after(self._serf.config.reconnect_interval):
            try:
                await memberlist.join([target.join_address])
            except OSError as exc:
                self._warn(f"reconnect to {clip(target.name)} failed: {clip(exc)}")
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serf's background work until cancelled: the pump (sends, events, keyring changes,
        conflicts), a reconnect attempt every ``reconnect_interval``, reaping (and the
        queue-depth check) every ``reap_interval``."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                nursery.start_soon(self._pump)
                nursery.start_soon(self._key_worker)
                nursery.start_soon(self._reconnect_loop)
                nursery.start_soon(self._reap_loop)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None
                for subscription in list(self._subscribers):
                    subscription._close()

    def _wake_pump(self) -> None:
        self._wake.set()

    async def _pump(self) -> None:
        """Drain serf's output whenever it has some."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await self.drain()

    async def drain(self) -> None:
        """Send what serf wants sent and hand out its events, until it has nothing left
        (at most a bounded number of rounds per call; the rest waits for the next wake)."""
        serf = self._serf
        for _ in range(_PUMP_ROUNDS):
            events = serf.take_events()
            sends = serf.take_sends()
            touched = serf.take_touched_queries()
            if not (events or sends or touched):
                return
            if touched:
                self._progress.set()
                self._progress = trio.Event()
            for event in events:
                self._dispatch(event)
            memberlist = self._memberlist
            for send in sends:
                if memberlist is None:
                    break
                try:
                    await memberlist.send_to_address(send.address, send.payload)
                except OSError as exc:
                    self._logline(ERR, f"failed to send to {send.address}: {clip(exc)}")
        self._wake_pump()

    def _dispatch(self, event: object) -> None:
        if isinstance(event, UserEventReceived):
            self._throttled(INFO, "serf.received-event", f"Received event: {clip(str(event))}")
            self._publish(event)
        elif isinstance(event, QueryReceived):
            self._throttled(INFO, "serf.received-query", f"Received query: {clip(str(event))}")
            self._publish(event)
        elif isinstance(event, KeyringChange):
            self._keyring_change(event)
        elif isinstance(event, ConflictDetected):
            nursery = self._nursery
            if nursery is None:
                self._serf.conflict_resolved()
                return
            nursery.start_soon(self._resolve_conflict, event)

    async def _reconnect_loop(self) -> None:
        while True:
            await trio.sleep(self._serf.config.reconnect_interval)
            await self.reconnect_once()

    async def _reap_loop(self) -> None:
        while True:
            await trio.sleep(self._serf.config.reap_interval)
            self._serf.reap()
            self._serf.check_queue_depth()

    def _warn(self, message: str) -> None:
        if self._log is not None:
            self._log.warn(message)

    def _logline(self, level: int, message: str) -> None:
        if self._log is not None:
            self._log.log(level, message)

    def _throttled(self, level: int, key: str, message: str) -> None:
        if self._log is not None:
            self._log.throttled(level, key, message)
