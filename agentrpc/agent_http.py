"""The agent as Consul's HTTP API drives it: :class:`AgentHTTP` implements
:class:`~agentrpc.http_api.host.HTTPAgent` over the agent's public parts (:class:`HTTPHost`,
which :class:`~agentrpc.agent.Agent` satisfies), so the HTTP API imports nothing above it and
this module imports no agent.

``call`` is the in-process RPC: a server's own port (``ServerPort.call_local``), a client's
connection pool to the servers its LAN pool knows. :meth:`AgentHTTP.run_events` feeds the user
events the LAN pool delivers to the :class:`~agentrpc.http_api.events.UserEventLog` that
``/v1/event/list`` reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol

import trio

from . import build_info
from .catalog.constants import ERR_NO_DC_PATH, ERR_NO_SERVERS
from .catalog.event_endpoint import EVENT_FIRE, EventFireRequest, UserEventSender
from .catalog.keyring_endpoint import KEYRING_OPERATIONS, KeyringRequest
from .catalog.structs import QueryOptions
from .commands import keyring_operation
from .config import AgentConfig
from .gossip.coordinate import Coordinate
from .gossip.serf_events import UserEventReceived
from .http_api.events import EVENT_PREFIX, UserEventLog
from .http_api.host import AgentInfo, KeyringResult
from .local_state.agent_state import LocalAgent
from .local_state.state import LocalState
from .log_protocol import INFO, WARN, LogLike, clip
from .logs import LogHub, LogSubscription
from .membership import GossipAddress, GossipPool, MembershipPool
from .protocol.bodies import Member
from .protocol.constants import ERR_KEYRING_CLIENT, ERR_WAN_JOIN_CLIENT
from .server_manager import ServerManager
from .serverport.endpoints import RPCCallError
from .serverport.pool import ConnectionPool
from .serverport.server import ServerPort
from .transports import Address

__all__ = [
    "ERR_NO_DC_PATH",
    "ERR_NO_GOSSIP_EVENTS",
    "ERR_NO_SERVERS",
    "AgentHTTP",
    "HTTPHost",
    "lan_user_event",
]

ERR_NO_GOSSIP_EVENTS: Final = "the LAN pool has no gossip layer: no user events"
"""A user event fired on a server whose LAN pool does not gossip (a test double's pool)."""


class HTTPHost(Protocol):
    """What :class:`AgentHTTP` reads and does of the agent."""

    @property
    def config(self) -> AgentConfig: ...

    @property
    def hub(self) -> LogHub: ...

    @property
    def lan(self) -> MembershipPool: ...

    @property
    def wan(self) -> MembershipPool | None: ...

    @property
    def rpc_pool(self) -> ConnectionPool | None: ...

    @property
    def node_id(self) -> str: ...

    @property
    def server_manager(self) -> ServerManager | None: ...

    @property
    def server_port(self) -> ServerPort | None: ...

    @property
    def rpc_addresses(self) -> list[Address]: ...

    @property
    def gossip_addresses(self) -> Mapping[str, GossipAddress]: ...

    @property
    def server_address(self) -> Address | None: ...

    @property
    def http_address(self) -> Address | None: ...

    @property
    def dns_address(self) -> GossipAddress | None: ...

    def stats_sections(self) -> dict[str, dict[str, str]]: ...

    def own_member(self, wan: bool) -> Member: ...

    async def leave(self) -> str: ...

    async def reload(self) -> str: ...

    def shutdown(self) -> None: ...

    def subscribe_log(self, min_level: int, queue_size: int) -> LogSubscription: ...


def lan_user_event(lookup: Callable[[], MembershipPool]) -> UserEventSender:
    """The ``fire`` callable of :func:`~agentrpc.catalog.event_endpoint.event_endpoint` over
    the LAN pool ``lookup`` returns at each call: serf's user event, not coalesced (serf's
    refusals are ``ValueError`` s with its text); a pool without gossip refuses."""

    async def fire(name: str, payload: bytes) -> None:
        pool = lookup()
        if not isinstance(pool, GossipPool):
            await trio.lowlevel.checkpoint()
            raise ValueError(ERR_NO_GOSSIP_EVENTS)
        await pool.user_event(name, payload, False)

    return fire


def coordinate_json(coord: Coordinate) -> dict[str, Any]:
    """A coordinate as Consul's JSON names it (``coordinate.Coordinate``)."""
    return {
        "Vec": list(coord.vec),
        "Error": coord.error,
        "Adjustment": coord.adjustment,
        "Height": coord.height,
    }


def _port(address: Address | GossipAddress | None) -> int:
    return address.port if address is not None else -1


class AgentHTTP:
    """The HTTP API's view of one agent (see the module docstring)."""

    def __init__(self, host: HTTPHost, *, logger: LogLike) -> None:
        self._host = host
        self._log = logger
        config = host.config
        self.events = UserEventLog()
        own = host.own_member(False)
        server_port = host.server_address.port if host.server_address is not None else None
        # Consul's TaggedAddresses: the LAN and the WAN advertise address (a client agent,
        # which has no WAN pool, advertises its LAN address for both).
        wan = host.own_member(True) if host.wan is not None else own
        state = LocalState(
            config.node_name,
            datacenter=config.datacenter,
            address=str(own.addr),
            tagged_addresses={"lan": str(own.addr), "wan": str(wan.addr)},
            node_id=host.node_id,
            node_meta={str(k): str(v) for k, v in config.node_meta.items()},
        )
        self.local = LocalAgent(
            state,
            self.call,
            logger=host.hub.logger("agent"),
            members=lambda: len(host.lan.members()),
            consul_service_port=server_port,
        )

    # ------------------------------------------------------------------ records

    @property
    def info(self) -> AgentInfo:
        host = self._host
        config = host.config
        tcp = [a for a in host.rpc_addresses if a.port]
        return AgentInfo(
            node_name=config.node_name,
            node_id=host.node_id,
            datacenter=config.datacenter,
            server=config.server,
            version=build_info.VERSION,
            revision=build_info.REVISION,
            version_prerelease=build_info.PRERELEASE,
            bind_addr=str(host.own_member(False).addr),
            advertise_addr=str(host.own_member(False).addr),
            ports={
                "DNS": _port(host.dns_address),
                "HTTP": _port(host.http_address),
                "RPC": tcp[0].port if tcp else -1,
                "SerfLan": _port(host.gossip_addresses.get("lan")),
                "SerfWan": _port(host.gossip_addresses.get("wan")),
                "Server": _port(host.server_address),
            },
            log_level=config.log_level,
            data_dir=config.data_dir,
        )

    def members(self, wan: bool) -> Sequence[Member]:
        pool = self._host.wan if wan else self._host.lan
        return pool.members() if pool is not None else []

    def local_member(self) -> Member:
        return self._host.own_member(False)

    def stats(self) -> Mapping[str, Mapping[str, str]]:
        return self._host.stats_sections()

    def coordinate(self) -> Mapping[str, Any] | None:
        pool = self._host.lan
        coordinates = pool.coordinates if isinstance(pool, GossipPool) else None
        return coordinate_json(coordinates.coordinate) if coordinates is not None else None

    # ------------------------------------------------------------------ RPC

    async def call(self, method: str, args: Any) -> Any:
        """On a server its own port in-process; on a client through its server manager
        (:mod:`agentrpc.server_manager`: the front server, failover, ``No known Consul
        servers``)."""
        host = self._host
        port = host.server_port
        if port is not None:
            return await port.call_local(method, args)
        manager = host.server_manager
        if manager is None:
            raise RPCCallError(ERR_NO_SERVERS)
        return await manager.call(method, args)

    # ------------------------------------------------------------------ operations

    async def join(self, addresses: Sequence[str], wan: bool) -> tuple[int, str]:
        host = self._host
        pool = host.wan if wan else host.lan
        if pool is None:
            return 0, ERR_WAN_JOIN_CLIENT
        return await pool.join(list(addresses))

    async def force_leave(self, node: str) -> str:
        """Both pools of a server hear it; a bare node name means its WAN member too."""
        host = self._host
        self._log.throttled(INFO, "http-force-leave", f"force leaving node: {clip(node)}")
        errors = [await host.lan.force_leave(node)]
        wan = host.wan
        if wan is not None:
            wan_names = {member.name for member in wan.members()}
            qualified = f"{node}.{host.config.datacenter}"
            errors.append(
                await wan.force_leave(
                    qualified if node not in wan_names and qualified in wan_names else node
                )
            )
        return "; ".join(error for error in errors if error)

    async def leave(self) -> str:
        return await self._host.leave()

    def shutdown(self) -> None:
        self._host.shutdown()

    async def reload(self) -> str:
        return await self._host.reload()

    def subscribe_log(self, min_level: int, queue_size: int) -> LogSubscription:
        return self._host.subscribe_log(min_level, queue_size)

    async def keyring(self, operation: str, key: str, relay_factor: int) -> Sequence[KeyringResult]:
        """``Internal.KeyringOperation`` on this server, in-process (the WAN pool, then the
        LAN pool of every datacenter, as Consul's ``keyringProcess``); a client has no keyring
        to change, and a call that failed as a whole is one result with its error."""
        host = self._host
        datacenter = host.config.datacenter
        if operation not in KEYRING_OPERATIONS:
            raise ValueError(f"unknown keyring operation {clip(operation)!r}")
        if host.wan is None:
            return [KeyringResult(False, datacenter, error=ERR_KEYRING_CLIENT)]
        request = KeyringRequest(
            operation=operation,
            key=key,
            relay_factor=relay_factor,
            options=QueryOptions(allow_stale=True),
        )
        error, responses = await keyring_operation(host.server_port, request)
        if error:
            self._log.throttled(
                WARN, f"http-keyring-{operation}", f"keyring: {operation}: {clip(error)}"
            )
            return [KeyringResult(False, datacenter, error=error)]
        return [
            KeyringResult(
                r.wan, r.datacenter, keys=dict(r.keys), num_nodes=r.num_nodes, error=r.error
            )
            for r in responses.responses
        ]

    async def fire_user_event(self, datacenter: str, name: str, payload: bytes) -> None:
        """Consul's ``UserEvent``: ``Internal.EventFire`` through :meth:`call` (a server's own
        port in-process, a client's server manager), with ``AllowStale`` (any server of the
        datacenter may fire it). The server routes it to ``datacenter`` and fires it in that
        datacenter's LAN pool. ``name`` is the serf event name the HTTP API gives (the server
        adds the prefix again: the request carries the event's own name). An RPC error
        (``No path to datacenter``, ``No known Consul servers``, serf's refusal) propagates."""
        request = EventFireRequest(
            datacenter=datacenter or self._host.config.datacenter,
            name=name.removeprefix(EVENT_PREFIX),
            payload=payload,
            options=QueryOptions(allow_stale=True),
        )
        await self.call(EVENT_FIRE, request.to_wire())

    # ------------------------------------------------------------------ tasks

    async def run_events(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Feed the LAN pool's user events to :attr:`events` until cancelled (a pool without
        gossip delivers none)."""
        pool = self._host.lan
        if not isinstance(pool, GossipPool):
            task_status.started()
            await trio.sleep_forever()
        async with pool.subscribe() as subscription:
            task_status.started()
            async for event in subscription:
                if isinstance(event, UserEventReceived):
                    self.events.ingest(
                        event.name,
                        event.payload,
                        event.ltime,
                        self._host.config.node_name,
                        self.local.services().values(),
                    )
