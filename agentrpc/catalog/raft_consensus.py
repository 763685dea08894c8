"""The catalog's consensus interfaces over a running :class:`~agentrpc.raft.engine.RaftEngine`
(:mod:`.consensus` says what each promises), and the server's forwarding over the connection
pool.

- :class:`RaftApplier`: a write is a Raft log entry (``bytes([msg_type]) + msgpack(body)``);
  ``apply`` waits for it to commit and be applied here, up to :data:`APPLY_TIMEOUT` (Consul's
  ``enqueueLimit``), and turns Raft's refusals into :class:`~.consensus.ApplyError` with
  Raft's text (``node is not the leader``, ``leadership lost while committing log`` ...).
- :class:`RaftFacts`: leadership, leader address, last contact and peers, read from the engine
  as they are now; ``verify_leader`` is Raft's ``VerifyLeader``.
- :class:`ServerForwarder`: ``forward_leader`` with Consul's hold loop (while no leader is
  known, retry every ``RandomStagger(hold / 16)`` until :data:`RPC_HOLD_TIMEOUT`, then
  ``No cluster leader``; a server that has just won holds the same way until its state
  machine caught up); ``forward_datacenter`` to a random live server of that datacenter
  among the WAN members (Consul 0.7.0-0.7.2's ``remoteConsuls``), ``No path to datacenter``
  when there is none. A remote error comes back with its text unchanged.

The engine is looked up on every call (``engine()`` returns None before it runs and after it
stopped), so these objects can be built before the engine exists.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any, Final

import trio

from ..log_protocol import DEBUG, LogLike, NullLog, clip
from ..member_status import STATUS_ALIVE
from ..protocol.bodies import Member
from ..raft.engine import RaftEngine
from ..raft.errors import ERR_RAFT_SHUTDOWN, RaftError
from ..serverport.endpoints import ConnectFailed, EndpointError, RemoteError, RPCCallError
from ..serverport.pool import ConnectionPool
from ..transports import AddressError
from .consensus import ApplyError, NotLeader
from .constants import ERR_NO_DC_PATH, ERR_NO_LEADER
from .fsm import encode_command
from .server_list import NOT_RETRIED, ServerList
from .servers import ServerInfo, parse_server
from .structs import Wire

__all__ = [
    "APPLY_TIMEOUT",
    "RPC_HOLD_TIMEOUT",
    "RaftApplier",
    "RaftFacts",
    "ServerForwarder",
]

APPLY_TIMEOUT: Final = 30.0
"""Consul's ``enqueueLimit``: how long a write may wait to be committed."""
ERR_APPLY_TIMEOUT: Final = "timed out enqueuing operation"
"""``raft.ErrEnqueueTimeout``'s text."""
RPC_HOLD_TIMEOUT: Final = 7.0
"""Consul's ``RPCHoldTimeout``: how long a server waits for a leader before it answers
``No cluster leader``."""
HOLD_JITTER_FRACTION: Final = 16
FORWARD_TIMEOUT: Final = 15 * 60.0
"""The longest a forwarded call may take: a blocking query waits up to 10 minutes (plus
jitter) on the leader."""

EngineRef = Callable[[], RaftEngine | None]


class RaftApplier:
    """The write path through Raft."""

    def __init__(self, engine: EngineRef, *, timeout: float = APPLY_TIMEOUT) -> None:
        self._engine = engine
        self._timeout = timeout
        self.applied = 0

    async def apply(self, msg_type: int, body: Wire) -> Any:
        engine = self._engine()
        if engine is None:
            await trio.lowlevel.checkpoint()
            raise ApplyError(ERR_RAFT_SHUTDOWN)
        data = encode_command(msg_type, body)
        try:
            with trio.fail_after(self._timeout):
                result = await engine.apply(data)
        except trio.TooSlowError:
            raise ApplyError(ERR_APPLY_TIMEOUT) from None
        except RaftError as exc:
            raise ApplyError(str(exc)) from None
        self.applied += 1
        return result


class RaftFacts:
    """What reads report, as the engine knows it right now."""

    def __init__(self, engine: EngineRef) -> None:
        self._engine = engine

    def is_leader(self) -> bool:
        """Leading and ready: the state machine has applied the term's first entry (a
        leader that just won answers nothing from older state; requests wait for it)."""
        engine = self._engine()
        return engine is not None and engine.leader_ready

    def leads_unready(self) -> bool:
        """Elected, its state machine not caught up yet: requests hold a moment."""
        engine = self._engine()
        return engine is not None and engine.is_leader and not engine.leader_ready

    def leader(self) -> str:
        engine = self._engine()
        if engine is None:
            return ""
        try:
            return engine.leader_address
        except RaftError:
            return ""

    def last_contact(self) -> float | None:
        engine = self._engine()
        if engine is None:
            return None
        if engine.leader_ready:
            return trio.current_time()
        try:
            return engine.core.last_contact
        except RaftError:
            return None

    def peers(self) -> list[str]:
        engine = self._engine()
        if engine is None:
            return []
        try:
            return [server.address for server in engine.core.configuration.servers]
        except RaftError:
            return []

    async def verify_leader(self) -> None:
        engine = self._engine()
        if engine is None:
            await trio.lowlevel.checkpoint()
            raise NotLeader(ERR_NO_LEADER)
        try:
            await engine.verify_leader()
        except RaftError:
            raise NotLeader(ERR_NO_LEADER) from None


def _remote(exc: RemoteError) -> EndpointError:
    return EndpointError(exc.error)


class ServerForwarder:
    """Forwarding of a server: to its leader, or to a server of another datacenter."""

    def __init__(
        self,
        pool: Callable[[], ConnectionPool | None],
        facts: RaftFacts,
        *,
        datacenter: str,
        wan_members: Callable[[], Iterable[Member]],
        leaving: Callable[[], bool] = lambda: False,
        hold_timeout: float = RPC_HOLD_TIMEOUT,
        rng: random.Random | None = None,
        logger: LogLike | None = None,
    ) -> None:
        self._pool = pool
        self._facts = facts
        self._datacenter = datacenter
        self._wan_members = wan_members
        self._leaving = leaving
        self._hold = hold_timeout
        self._rng = rng or random.Random()
        self._log: LogLike = logger or NullLog()
        self.forwarded = 0
        self._routes: dict[str, ServerList] = {}
        """Per other datacenter, its servers in the order calls try them."""

    def _connection_pool(self) -> ConnectionPool:
        pool = self._pool()
        if pool is None:
            raise EndpointError(ERR_NO_LEADER)
        return pool

    async def _call(self, address: str, method: str, body: Any) -> Any:
        pool = self._connection_pool()
        self.forwarded += 1
        try:
            return await pool.call(address, method, body, max_time=FORWARD_TIMEOUT)
        except RemoteError as exc:
            raise _remote(exc) from None
        except (RPCCallError, AddressError) as exc:
            self._log.throttled(
                DEBUG,
                f"server:forward-failed:{method}",
                f"forwarding {method} to {address} failed: {clip(exc)}",
            )
            raise EndpointError(str(exc)) from None

    async def forward_leader(self, method: str, body: Any) -> Any:
        """Call ``method`` on the leader, holding up to the hold timeout for one to exist."""
        deadline = trio.current_time() + self._hold
        while True:
            if self._leaving():
                break
            leader = self._facts.leader()
            if leader and not self._facts.leads_unready():
                # The leader, or ourselves once we lead and are ready (the call then stays
                # in-process and is answered here).
                return await self._call(leader, method, body)
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                break
            stagger = self._rng.random() * (self._hold / HOLD_JITTER_FRACTION)
            await trio.sleep(min(stagger, remaining))
        await trio.lowlevel.checkpoint()
        raise EndpointError(ERR_NO_LEADER)

    def _servers_of(self, datacenter: str) -> list[ServerInfo]:
        found = []
        for member in self._wan_members():
            info = parse_server(member)
            if info is not None and info.datacenter == datacenter and info.status == STATUS_ALIVE:
                found.append(info)
        return found

    async def forward_datacenter(self, datacenter: str, method: str, body: Any) -> Any:
        """Call ``method`` on a server of ``datacenter``, found through WAN gossip: the front
        one of that datacenter's list (shuffled when first seen); one that fails goes to the
        back and the call moves on to the next when that is safe (nothing was sent, or the
        request is not one of :data:`~agentrpc.catalog.server_list.NOT_RETRIED`), as a
        client agent's server manager does. Each server is tried at most once per call."""
        current = self._servers_of(datacenter)
        self._rng.shuffle(current)  # the order a newly seen datacenter's servers are tried
        routes = self._routes.setdefault(datacenter, ServerList())
        routes.sync(current)
        server = routes.first()
        if server is None:
            del self._routes[datacenter]  # bounded: only datacenters with live servers stay
            await trio.lowlevel.checkpoint()
            self._log.throttled(
                DEBUG,
                f"server:no-dc-path:{clip(datacenter, 64)}",
                f"RPC request for DC '{clip(datacenter, 64)}', no path found",
            )
            raise EndpointError(ERR_NO_DC_PATH)
        tried: set[str] = set()
        while True:
            tried.add(server.address)
            pool = self._connection_pool()
            self.forwarded += 1
            try:
                return await pool.call(server.address, method, body, max_time=FORWARD_TIMEOUT)
            except RemoteError as exc:
                raise _remote(exc) from None
            except (RPCCallError, AddressError) as exc:
                routes.failed(server)
                self._log.throttled(
                    DEBUG,
                    f"server:forward-failed:{method}",
                    f"forwarding {method} to {server.address} ({datacenter}) failed: {clip(exc)}",
                )
                following = routes.first()
                retry = isinstance(exc, ConnectFailed) or method not in NOT_RETRIED
                if not retry or following is None or following.address in tried:
                    raise EndpointError(str(exc)) from None
                server = following

    def datacenters(self) -> list[str]:
        """Our datacenter first, then the others the WAN pool knows, by name."""
        names = {self._datacenter}
        for member in self._wan_members():
            info = parse_server(member)
            if info is not None:
                names.add(info.datacenter)
        return [self._datacenter, *sorted(names - {self._datacenter})]
