"""The catalog's RPC endpoints (Consul 0.7's ``Status``, ``Catalog``, ``Health``, ``KVS``,
``Session`` and ``Internal`` services) as server-port handlers.

Each handler takes the decoded request body and returns the reply body, in the reference's
order: decode the arguments (a body that does not decode is answered with the error and the
stream closed, :class:`~agentrpc.serverport.endpoints.BadRequestBody`), forward if the request
is for another datacenter or needs the leader (:func:`~agentrpc.catalog.rules.route`; stale
reads stay here), validate with the reference's error texts, then either propose the write
through the :class:`~agentrpc.catalog.consensus.Applier` or run the read as a blocking query.
Errors reach the caller as the RPC's Error text (the reference's, byte for byte where it has
one). ACL tokens are accepted and not enforced (ACLs are not implemented).

Replies are msgpack maps with keys sorted as go-msgpack writes them; an empty result list is
nil, as Go's nil slices. Nodes carry 0.7.3+'s ``ID`` and ``Meta``; ``NodeMetaFilters`` (0.7.3+)
narrows ``Catalog.ListNodes``, ``Catalog.ListServices``, ``Catalog.ServiceNodes``,
``Health.ServiceNodes``, ``Health.ServiceChecks`` and ``Health.ChecksInState`` to nodes whose
Meta has every pair, as 0.8's endpoints.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Protocol, TypeVar

import trio

from ..log_protocol import DEBUG, WARN, LogLike, NullLog, clip
from ..serverport.endpoints import EndpointError, Handler
from .blocking import blocking_query
from .consensus import Applier, ApplyError, ConsensusFacts, Forwarder
from .constants import (
    ERR_MUST_PROVIDE_NODE,
    ERR_MUST_PROVIDE_SERVICE_NAME,
    ERR_TAG_FILTERING,
    SESSION_CREATE,
    SESSION_DESTROY,
    SESSION_TTL_MIN_NS,
    MessageType,
)
from .forwarding import ForwardingEndpoints, decode_body
from .hub import StateHub
from .rules import (
    RuleError,
    check_kvs_apply,
    format_session_id,
    prepare_register,
    prepare_session,
    session_ttl_ns,
)
from .state_store import CheckServiceNode, NodeInfo
from .structs import (
    ChecksInStateRequest,
    DCSpecificRequest,
    DeregisterRequest,
    HealthCheck,
    KeyListRequest,
    KeyRequest,
    KVSRequest,
    NodeSpecificRequest,
    QueryMeta,
    ReadArgs,
    RegisterRequest,
    ServiceSpecificRequest,
    SessionRequest,
    SessionSpecificRequest,
    Wire,
    indexed_reply,
    satisfies_meta_filters,
)
from .watch import WatchSet

__all__ = ["CatalogEndpoints", "SessionTimerControl"]

R = TypeVar("R", bound=ReadArgs)
T = TypeVar("T")


class SessionTimerControl(Protocol):
    """The leader's session TTL timers, as the endpoints drive them."""

    def reset_session_timer(self, session_id: str, ttl_ns: int) -> None: ...

    def clear_session_timer(self, session_id: str) -> None: ...


class _NoTimers:
    def reset_session_timer(self, session_id: str, ttl_ns: int) -> None:
        return None

    def clear_session_timer(self, session_id: str) -> None:
        return None


def _nil(items: list[Any]) -> list[Any] | None:
    return items or None


def _checks_wire(checks: Iterable[HealthCheck]) -> list[Wire] | None:
    return _nil([c.to_wire() for c in checks])


def _sorted_map(value: dict[str, str] | None) -> dict[str, str] | None:
    return None if value is None else dict(sorted(value.items()))


def _dump_wire(dump: list[NodeInfo]) -> list[Wire] | None:
    return _nil(
        [
            {
                "Address": info.node.address,
                "Checks": _checks_wire(info.checks),
                "ID": info.node.id,
                "Meta": _sorted_map(info.node.meta),
                "Node": info.node.node,
                "Services": _nil([s.to_wire() for s in info.services]),
                "TaggedAddresses": _sorted_map(info.node.tagged_addresses),
            }
            for info in dump
        ]
    )


def _csn_wire(nodes: list[CheckServiceNode]) -> list[Wire] | None:
    return _nil(
        [
            {
                "Checks": _checks_wire(csn.checks),
                "Node": csn.node.to_wire(),
                "Service": csn.service.to_wire(),
            }
            for csn in nodes
        ]
    )


def _needs_service_name(request: ServiceSpecificRequest) -> None:
    if not request.service_name:
        raise EndpointError(ERR_MUST_PROVIDE_SERVICE_NAME)


class CatalogEndpoints(ForwardingEndpoints):
    """The handlers, over one hub (state), applier (writes), facts and forwarder."""

    def __init__(
        self,
        hub: StateHub,
        applier: Applier,
        facts: ConsensusFacts,
        forwarder: Forwarder,
        *,
        datacenter: str,
        timers: SessionTimerControl | None = None,
        logger: LogLike | None = None,
        clock: Callable[[], float] = trio.current_time,
        rng: random.Random | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        session_ttl_min_ns: int = SESSION_TTL_MIN_NS,
    ) -> None:
        self.hub = hub
        self.applier = applier
        self.facts = facts
        self.forwarder = forwarder
        self.datacenter = datacenter
        self.timers: SessionTimerControl = timers if timers is not None else _NoTimers()
        self._log: LogLike = logger or NullLog()
        self._clock = clock
        self._rng = rng or random.Random()
        self._random_bytes = random_bytes
        self.session_ttl_min_ns = session_ttl_min_ns

    def handlers(self) -> dict[str, Handler]:
        """Every endpoint by its ``Service.Method`` name."""
        return {
            "Status.Leader": self.status_leader,
            "Status.Peers": self.status_peers,
            "Catalog.Register": self.catalog_register,
            "Catalog.Deregister": self.catalog_deregister,
            "Catalog.ListDatacenters": self.catalog_list_datacenters,
            "Catalog.ListNodes": self.catalog_list_nodes,
            "Catalog.ListServices": self.catalog_list_services,
            "Catalog.ServiceNodes": self.catalog_service_nodes,
            "Catalog.NodeServices": self.catalog_node_services,
            "Health.ChecksInState": self.health_checks_in_state,
            "Health.NodeChecks": self.health_node_checks,
            "Health.ServiceChecks": self.health_service_checks,
            "Health.ServiceNodes": self.health_service_nodes,
            "KVS.Apply": self.kvs_apply,
            "KVS.Get": self.kvs_get,
            "KVS.List": self.kvs_list,
            "KVS.ListKeys": self.kvs_list_keys,
            "Session.Apply": self.session_apply,
            "Session.Get": self.session_get,
            "Session.List": self.session_list,
            "Session.NodeSessions": self.session_node_sessions,
            "Session.Renew": self.session_renew,
            "Internal.NodeInfo": self.internal_node_info,
            "Internal.NodeDump": self.internal_node_dump,
        }

    # ------------------------------------------------------------------ plumbing

    async def _apply(self, method: str, msg_type: MessageType, body: Wire) -> Any:
        try:
            response = await self.applier.apply(msg_type, body)
        except ApplyError as exc:
            self._log.throttled(
                WARN, f"catalog:apply-failed:{method}", f"{method}: apply failed: {clip(exc)}"
            )
            raise EndpointError(str(exc)) from None
        if isinstance(response, Exception):
            raise EndpointError(str(response))
        return response

    async def _read(
        self,
        method: str,
        body: Any,
        parse: Callable[[Any], R],
        run: Callable[[R, WatchSet], tuple[int, Wire]],
        *,
        check: Callable[[R], None] | None = None,
    ) -> Any:
        """A read: decode, forward (a stale read stays here), check, run as a blocking query;
        the ``Indexed*`` reply."""
        request, done, reply = await self._forward_read(method, body, parse)
        if done:
            return reply
        if check is not None:
            check(request)
        meta, fields = await blocking_query(
            self.hub,
            self.facts,
            request.options,
            lambda ws: run(request, ws),
            rng=self._rng,
            clock=self._clock,
        )
        return indexed_reply(meta, fields)

    # ------------------------------------------------------------------ Status

    async def status_leader(self, _body: Any) -> str:
        await trio.lowlevel.checkpoint()
        return self.facts.leader()

    async def status_peers(self, _body: Any) -> list[str]:
        await trio.lowlevel.checkpoint()
        return list(self.facts.peers())

    # ------------------------------------------------------------------ Catalog

    async def catalog_register(self, body: Any) -> Wire:
        request, done, reply = await self._forward_write(
            "Catalog.Register", body, RegisterRequest.from_wire
        )
        if done:
            return reply  # type: ignore[no-any-return]
        try:
            prepared = prepare_register(request)
        except RuleError as exc:
            raise EndpointError(str(exc)) from None
        await self._apply("Catalog.Register", MessageType.REGISTER, prepared.to_wire())
        return {}

    async def catalog_deregister(self, body: Any) -> Wire:
        request, done, reply = await self._forward_write(
            "Catalog.Deregister", body, DeregisterRequest.from_wire
        )
        if done:
            return reply  # type: ignore[no-any-return]
        if not request.node:
            raise EndpointError(ERR_MUST_PROVIDE_NODE)
        await self._apply("Catalog.Deregister", MessageType.DEREGISTER, request.to_wire())
        return {}

    async def catalog_list_datacenters(self, _body: Any) -> list[str]:
        await trio.lowlevel.checkpoint()
        return list(self.forwarder.datacenters())

    async def catalog_list_nodes(self, body: Any) -> Any:
        def run(request: DCSpecificRequest, ws: WatchSet) -> tuple[int, Wire]:
            index, nodes = self.hub.store.nodes(ws, request.node_meta_filters)
            return index, {"Nodes": _nil([n.to_wire() for n in nodes])}

        return await self._read("Catalog.ListNodes", body, DCSpecificRequest.from_wire, run)

    async def catalog_list_services(self, body: Any) -> Any:
        def run(request: DCSpecificRequest, ws: WatchSet) -> tuple[int, Wire]:
            index, services = self.hub.store.services(ws, request.node_meta_filters)
            return index, {"Services": services}

        return await self._read("Catalog.ListServices", body, DCSpecificRequest.from_wire, run)

    async def catalog_service_nodes(self, body: Any) -> Any:
        def run(request: ServiceSpecificRequest, ws: WatchSet) -> tuple[int, Wire]:
            index, found = self.hub.store.service_nodes(request.service_name, request.tag, ws)
            filters = request.node_meta_filters
            nodes = [
                service.to_service_node_wire(node)
                for node, service in found
                if not filters or satisfies_meta_filters(node.meta, filters)
            ]
            return index, {"ServiceNodes": _nil(nodes)}

        return await self._read(
            "Catalog.ServiceNodes",
            body,
            ServiceSpecificRequest.from_wire,
            run,
            check=_needs_service_name,
        )

    async def catalog_node_services(self, body: Any) -> Any:
        def check(request: NodeSpecificRequest) -> None:
            if not request.node:
                raise EndpointError(ERR_MUST_PROVIDE_NODE)

        def run(request: NodeSpecificRequest, ws: WatchSet) -> tuple[int, Wire]:
            index, found = self.hub.store.node_services(request.node, ws)
            if found is None:
                return index, {"NodeServices": None}
            node, services = found
            return index, {
                "NodeServices": {
                    "Node": node.to_wire(),
                    "Services": {sid: s.to_wire() for sid, s in services.items()},
                }
            }

        return await self._read(
            "Catalog.NodeServices", body, NodeSpecificRequest.from_wire, run, check=check
        )

    # ------------------------------------------------------------------ Health

    async def health_checks_in_state(self, body: Any) -> Any:
        def run(request: ChecksInStateRequest, ws: WatchSet) -> tuple[int, Wire]:
            index, checks = self.hub.store.checks_in_state(
                request.state, ws, request.node_meta_filters
            )
            return index, {"HealthChecks": _checks_wire(checks)}

        return await self._read("Health.ChecksInState", body, ChecksInStateRequest.from_wire, run)

    async def health_node_checks(self, body: Any) -> Any:
        def run(request: NodeSpecificRequest, ws: WatchSet) -> tuple[int, Wire]:
            index, checks = self.hub.store.node_checks(request.node, ws)
            return index, {"HealthChecks": _checks_wire(checks)}

        return await self._read("Health.NodeChecks", body, NodeSpecificRequest.from_wire, run)

    async def health_service_checks(self, body: Any) -> Any:
        if decode_body(ServiceSpecificRequest.from_wire, body).tag_filter:
            raise EndpointError(ERR_TAG_FILTERING)

        def run(request: ServiceSpecificRequest, ws: WatchSet) -> tuple[int, Wire]:
            index, checks = self.hub.store.service_checks(
                request.service_name, ws, request.node_meta_filters
            )
            return index, {"HealthChecks": _checks_wire(checks)}

        return await self._read("Health.ServiceChecks", body, ServiceSpecificRequest.from_wire, run)

    async def health_service_nodes(self, body: Any) -> Any:
        def run(request: ServiceSpecificRequest, ws: WatchSet) -> tuple[int, Wire]:
            index, found = self.hub.store.check_service_nodes(request.service_name, request.tag, ws)
            filters = request.node_meta_filters
            if filters:
                found = [c for c in found if satisfies_meta_filters(c.node.meta, filters)]
            return index, {"Nodes": _csn_wire(found)}

        return await self._read(
            "Health.ServiceNodes",
            body,
            ServiceSpecificRequest.from_wire,
            run,
            check=_needs_service_name,
        )

    # ------------------------------------------------------------------ KVS

    async def kvs_apply(self, body: Any) -> bool:
        request, done, reply = await self._forward_write("KVS.Apply", body, KVSRequest.from_wire)
        if done:
            return reply  # type: ignore[no-any-return]
        entry = request.dir_ent
        try:
            ok = check_kvs_apply(
                request.op,
                entry,
                lock_delay_until=self.hub.store.kvs_lock_delay(entry.key),
                now=self._clock(),
            )
        except RuleError as exc:
            raise EndpointError(str(exc)) from None
        if not ok:
            self._log.throttled(
                WARN,
                "catalog:lock-delay",
                f"consul.kvs: Rejecting lock of {clip(entry.key)} due to lock-delay",
            )
            return False
        response = await self._apply("KVS.Apply", MessageType.KVS, request.to_wire())
        return response if type(response) is bool else False

    async def kvs_get(self, body: Any) -> Any:
        def run(request: KeyRequest, ws: WatchSet) -> tuple[int, Wire]:
            index, entry = self.hub.store.kvs_get(request.key, ws)
            if entry is None:
                return index or 1, {"Entries": None}
            return entry.modify_index, {"Entries": [entry.to_wire()]}

        return await self._read("KVS.Get", body, KeyRequest.from_wire, run)

    async def kvs_list(self, body: Any) -> Any:
        def run(request: KeyRequest, ws: WatchSet) -> tuple[int, Wire]:
            index, entries = self.hub.store.kvs_list(request.key, ws)
            return index or 1, {"Entries": _nil([e.to_wire() for e in entries])}

        return await self._read("KVS.List", body, KeyRequest.from_wire, run)

    async def kvs_list_keys(self, body: Any) -> Any:
        def run(request: KeyListRequest, ws: WatchSet) -> tuple[int, Wire]:
            index, keys = self.hub.store.kvs_list_keys(request.prefix, request.seperator, ws)
            return index or 1, {"Keys": _nil(keys)}

        return await self._read("KVS.ListKeys", body, KeyListRequest.from_wire, run)

    # ------------------------------------------------------------------ Session

    async def session_apply(self, body: Any) -> str:
        request, done, reply = await self._forward_write(
            "Session.Apply", body, SessionRequest.from_wire
        )
        if done:
            return reply  # type: ignore[no-any-return]
        try:
            session = prepare_session(
                request.op, request.session, ttl_min_ns=self.session_ttl_min_ns
            )
        except RuleError as exc:
            raise EndpointError(str(exc)) from None
        if request.op == SESSION_CREATE:
            session = replace(session, id=self._new_session_id())
        prepared = SessionRequest(request.op, session, request.datacenter, request.token)
        response = await self._apply("Session.Apply", MessageType.SESSION, prepared.to_wire())
        if request.op == SESSION_CREATE and session.ttl:
            ttl = session_ttl_ns(session.ttl)
            if ttl:
                self.timers.reset_session_timer(session.id, ttl)
        elif request.op == SESSION_DESTROY:
            self.timers.clear_session_timer(session.id)
        return response if type(response) is str else ""

    def _new_session_id(self) -> str:
        store = self.hub.store
        for _ in range(16):
            candidate = format_session_id(self._random_bytes(16))
            if store.session_get(candidate)[1] is None:
                return candidate
        raise EndpointError("session ID generation failed: no free ID after 16 tries")

    async def session_get(self, body: Any) -> Any:
        def run(request: SessionSpecificRequest, ws: WatchSet) -> tuple[int, Wire]:
            index, session = self.hub.store.session_get(request.session, ws)
            return index, {"Sessions": None if session is None else [session.to_wire()]}

        return await self._read("Session.Get", body, SessionSpecificRequest.from_wire, run)

    async def session_list(self, body: Any) -> Any:
        def run(_request: DCSpecificRequest, ws: WatchSet) -> tuple[int, Wire]:
            index, sessions = self.hub.store.session_list(ws)
            return index, {"Sessions": _nil([s.to_wire() for s in sessions])}

        return await self._read("Session.List", body, DCSpecificRequest.from_wire, run)

    async def session_node_sessions(self, body: Any) -> Any:
        def run(request: NodeSpecificRequest, ws: WatchSet) -> tuple[int, Wire]:
            index, sessions = self.hub.store.node_sessions(request.node, ws)
            return index, {"Sessions": _nil([s.to_wire() for s in sessions])}

        return await self._read("Session.NodeSessions", body, NodeSpecificRequest.from_wire, run)

    async def session_renew(self, body: Any) -> Any:
        """``Session.Renew``: the session (or none) at the sessions index, its TTL timer reset;
        no blocking and no QueryMeta but the index, as the reference."""
        method = "Session.Renew"
        request, done, reply = await self._forward_read(
            method, body, SessionSpecificRequest.from_wire
        )
        if done:
            return reply
        index, session = self.hub.store.session_get(request.session)
        if session is None:
            return indexed_reply(QueryMeta(index), {"Sessions": None})
        try:
            ttl = session_ttl_ns(session.ttl)
        except ValueError as exc:
            self._log.throttled(
                DEBUG, "catalog:session-renew", f"consul.session: Session renew failed: {exc}"
            )
            raise EndpointError(str(exc)) from None
        if ttl:
            self.timers.reset_session_timer(session.id, ttl)
        return indexed_reply(QueryMeta(index), {"Sessions": [session.to_wire()]})

    # ------------------------------------------------------------------ Internal

    async def internal_node_info(self, body: Any) -> Any:
        def run(request: NodeSpecificRequest, ws: WatchSet) -> tuple[int, Wire]:
            index, dump = self.hub.store.node_info(request.node, ws)
            return index, {"Dump": _dump_wire(dump)}

        return await self._read("Internal.NodeInfo", body, NodeSpecificRequest.from_wire, run)

    async def internal_node_dump(self, body: Any) -> Any:
        def run(_request: DCSpecificRequest, ws: WatchSet) -> tuple[int, Wire]:
            index, dump = self.hub.store.node_dump(ws)
            return index, {"Dump": _dump_wire(dump)}

        return await self._read("Internal.NodeDump", body, DCSpecificRequest.from_wire, run)
