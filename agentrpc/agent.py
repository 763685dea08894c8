"""The agent: the state commands act on, its listeners, and its lifecycle.

``Agent.run`` binds the RPC listener(s) (TCP, unix or memory, per ``rpc_addr``) plus an
in-process listener, serves every connection in a nursery it owns, and returns after
``shutdown()``: listeners close first, the log ends (monitors drain their queues), every
connection drains its queued replies under a deadline, then the rest is cancelled.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from typing import Any, Final, TextIO

import trio

from . import build_info
from .admission import AdmissionCounter, Refusal, peer_of
from .agent_http import AgentHTTP, lan_user_event
from .budget import SharedBudget
from .catalog.constants import ERR_NO_SERVERS
from .catalog.event_endpoint import EVENT_FIRE, event_endpoint
from .catalog.keyring_endpoint import KEYRING_OPERATION, keyring_endpoint
from .catalog.operator import install_operator
from .catalog.raft_consensus import ServerForwarder
from .catalog.rules import RuleError, validate_node_meta
from .catalog.servers import RAFT_PROTOCOL
from .catalog.service import Catalog, install as install_catalog
from .commands import AgentCommands, keyring_pool_operation
from .config import (
    RELOADABLE,
    AgentConfig,
    ConfigError,
    changed_settings,
    leaves_on_terminate,
    load_config,
    skips_leave_on_interrupt,
    tls_config,
)
from .consul_servers import MEMBERS_WAN_ENDPOINT, SERVER_ROLE, members_wan_endpoint
from .coordinate_sender import CoordinateSender, lan_coordinate, pool_coordinate, run_until
from .dns.server import DNSServer
from .dns.settings import DNSConfigError, parse_dns_config
from .hostport import join_host_port
from .http_api.api import build_http_server
from .http_api.server import HTTPServer
from .local_state.agent_state import LocalAgentError
from .local_state.from_config import ConfigDefinitions, config_definitions
from .log_protocol import DEBUG, WARN, clip, describe_failure, parse_level
from .logs import Logger, LogHub, LogSubscription
from .membership import (
    GossipAddress,
    GossipPool,
    HostResolutionError,
    KeyringFileError,
    LocalPool,
    Memberlist,
    MembershipPool,
    MemoryGossipNetwork,
    gossip_stream_handler,
    gossip_transport,
    keyring_path,
    pool_specs,
    resolve_ip,
    start_pool,
)
from .membership.gossip_pool import MemberEvent, member_change
from .protocol.bodies import Member
from .protocol.codec import ParserPool
from .raft.engine import RaftEngine
from .raft.transport import Dialer, tls_dialer
from .rpc_connection import AsyncHandler, EngineLimits, InstantHandler, RPCConnection, RPCStats
from .serf_rpc import SerfConnection, SerfServices
from .server_manager import ServerManager
from .server_raft import RaftStartError, ServerRaft, load_node_id
from .serverport.endpoints import Endpoints, RPCCallError
from .serverport.pool import ConnectionPool, LocalCall
from .serverport.router import RouterLimits
from .serverport.server import ServerPort
from .serverport.tls import TLSConfig
from .transports import (
    DEFAULT_NETWORK,
    Address,
    MemoryListener,
    MemoryNetwork,
    connect,
    open_listeners,
    parse_address,
)


class AgentStartError(Exception):
    """The agent could not start (an address in use, a bad certificate, a host DNS does not
    resolve, ...)."""


class AgentJoinError(AgentStartError):
    """The joins at start failed: no address of ``start_join`` (``start_join_wan``) answered,
    or ``retry_join`` (``retry_join_wan``) failed ``retry_max`` times; the agent stopped."""


GRACEFUL_LEAVE_TIMEOUT: Final = 5.0
"""Seconds the graceful leave on SIGINT/SIGTERM may take before the agent shuts down anyway
(Consul's ``gracefulTimeout``)."""

CONSUL_PROTOCOL: Final = 2
CONSUL_PROTOCOL_MIN: Final = 1
CONSUL_PROTOCOL_MAX: Final = 3
"""The Consul protocol this agent speaks by default and the range it understands (the
``vsn``, ``vsn_min`` and ``vsn_max`` member tags; ``agentrpc version`` prints them)."""


RAFT_ACCEPT_WAIT: Final = 10.0
"""Seconds a Raft connection that came before the engine runs waits for it."""
JOIN_ERROR_LIMIT: Final = 1000
"""Characters of a join's error kept in a log line or a start error (the list can be long)."""


def _one_line(text: str) -> str:
    """A join's multi-line list of errors as one line, cut to :data:`JOIN_ERROR_LIMIT`."""
    return clip(
        " ".join(line.strip() for line in text.splitlines() if line.strip()), JOIN_ERROR_LIMIT
    )


def limits_from(config: AgentConfig) -> EngineLimits:
    return EngineLimits(
        max_frame_size=config.max_frame_size,
        handshake_timeout=config.handshake_timeout,
        idle_timeout=config.idle_timeout,
        send_queue=config.send_queue_size,
        send_queue_bytes=config.send_queue_bytes,
        max_inflight=config.max_inflight,
        monitor_queue=config.monitor_queue_size,
        drain_timeout=config.drain_timeout,
        spin_us=config.rpc_spin_us,
    )


def local_tags(config: AgentConfig, node_id: str = "") -> dict[str, str]:
    """The tags that say what this agent is (role, datacenter, build, versions, its node ID;
    a server's port, Raft protocol, and ``bootstrap`` / ``expect`` as Consul's servers)."""
    tags = {
        "role": SERVER_ROLE if config.server else "node",
        "dc": config.datacenter,
        "build": build_info.BUILD_TAG,
        "vsn": str(CONSUL_PROTOCOL),
        "vsn_min": str(CONSUL_PROTOCOL_MIN),
        "vsn_max": str(CONSUL_PROTOCOL_MAX),
    }
    if node_id:
        tags["id"] = node_id  # Consul 0.8: every agent's node ID
    if config.server:
        tags["port"] = str(parse_address(config.server_addr).port)
        tags["raft_vsn"] = str(RAFT_PROTOCOL)
        if config.bootstrap_expect == 1:
            tags["bootstrap"] = "1"
        elif config.bootstrap_expect > 1:
            tags["expect"] = str(config.bootstrap_expect)
    return tags


def local_member(config: AgentConfig, *, wan: bool) -> Member:
    """What the agent says of itself in a pool before gossip runs (or without gossip).

    Raises :class:`AgentStartError` when the pool's configured host does not resolve."""
    text = config.serf_wan_addr if wan else config.serf_lan_addr
    address = parse_address(text)
    try:
        ip = resolve_ip(address.host)
    except HostResolutionError as exc:
        raise AgentStartError(f"serf {'WAN' if wan else 'LAN'} address {text}: {exc}") from None
    return Member(
        name=f"{config.node_name}.{config.datacenter}" if wan else config.node_name,
        addr=ip,
        port=address.port,
        tags=local_tags(config),
        protocol_min=build_info.PROTOCOL_MIN,
        protocol_max=build_info.PROTOCOL_MAX,
        protocol_cur=build_info.PROTOCOL_CUR,
        delegate_min=build_info.DELEGATE_MIN,
        delegate_max=build_info.DELEGATE_MAX,
        delegate_cur=build_info.DELEGATE_CUR,
    )


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class Agent:
    """One agent: config, log, pools, RPC listeners and connections."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        overrides: Mapping[str, Any] | None = None,
        log_sink: TextIO | None = None,
        network: MemoryNetwork = DEFAULT_NETWORK,
        lan: MembershipPool | None = None,
        wan: MembershipPool | None = None,
        gossip_network: MemoryGossipNetwork | None = None,
    ) -> None:
        """``lan``/``wan``: pools to use instead of gossip (tests); ``gossip_network``: gossip
        over an in-process network instead of UDP/TCP sockets (tests, simulations).

        Raises :class:`AgentStartError` when a configured serf host does not resolve, or
        ``dns_config`` does not parse, or a service or check of the config files is refused
        (the :class:`~agentrpc.config.ConfigError` naming its file and key)."""
        self.config = config
        try:
            self._dns_settings = parse_dns_config(
                config.dns_config,
                domain=config.domain,
                translate_wan_addrs=config.translate_wan_addrs,
            )
        except DNSConfigError as exc:
            raise AgentStartError(str(exc)) from exc
        try:
            validate_node_meta(config.node_meta)
        except RuleError as exc:
            raise AgentStartError(f"node_meta: {exc}") from exc
        # The config files' services and checks, registered in the local state at start.
        try:
            self._config_definitions: ConfigDefinitions = config_definitions(config)
        except ConfigError as exc:
            raise AgentStartError(str(exc)) from exc
        self._overrides = dict(overrides or {})
        self._network = network
        self.hub = LogHub(
            parse_level(config.log_level), sink=log_sink, ring_bytes=config.log_ring_bytes
        )
        self.log = self.hub.logger("agent")
        self.rpc_log = self.hub.logger("agent.rpc")
        self._gossip_network = gossip_network
        self._gossip_pools = lan is None
        self.gossip_addresses: dict[str, GossipAddress] = {}
        self.memberlists: dict[str, Memberlist] = {}
        self.lan: MembershipPool = lan or LocalPool("lan", local_member(config, wan=False))
        self.wan: MembershipPool | None = None
        if config.server:
            self.wan = wan or LocalPool("wan", local_member(config, wan=True))
        self.rpc_stats = RPCStats()
        self.serf_rpc_stats = RPCStats()
        """The counters of the Serf-dialect listener's connections (``serf_rpc_addr``)."""
        self.ipc_log = self.hub.logger("agent.ipc")
        self.serf_rpc_addresses: list[Address] = []
        """Where Serf's own agent RPC dialect listens (empty unless ``serf_rpc_addr``)."""
        self.catalog: Catalog | None = None
        """The catalog a server's port answers ``Catalog.*``, ``KVS.*``, ... with."""
        self._catalog_scope = trio.CancelScope()
        """Around a server's Raft and the catalog's leader duties: they end when the
        background stops."""
        self.raft: ServerRaft | None = None
        self._raft_engine: RaftEngine | None = None
        """The running Raft engine byte 1 goes to (None before it runs and after it ends)."""
        self._raft_started = trio.Event()
        """A server's Raft (its engine runs once the server port is bound)."""
        self.node_id = ""
        """A server's node ID (its Raft server ID; kept in ``data_dir/node-id``)."""
        self.send_budget = SharedBudget(config.agent_send_bytes)
        """Queued output bytes of every connection together (agent RPC and server port)."""
        self.parser_pool = ParserPool()
        """Idle msgpack parsers shared by the agent's RPC connections (both dialects)."""
        self.limits = limits_from(config)
        self.started_at = 0.0
        self.rpc_addresses: list[Address] = []
        self._in_process = MemoryListener("in-process")
        self._connections: set[RPCConnection] = set()
        self._admission = AdmissionCounter(
            max_total=config.max_connections, max_per_client=config.max_connections_per_client
        )
        self._shutdown_requested = trio.Event()
        self._stopped = trio.Event()
        self.rpc_pool: ConnectionPool | None = None
        self.server_manager: ServerManager | None = None
        """A client agent's router of server RPCs (None on a server)."""
        self._gossip_stop = trio.Event()
        self.server_port: ServerPort | None = None
        self.dns: DNSServer | None = None
        """The DNS interface (unless ``dns_addr`` is ""), answering from the catalog."""
        self.http: HTTPServer | None = None
        """Consul's HTTP API (unless ``http_addr`` is "")."""
        self.http_agent: AgentHTTP | None = None
        """The local services and checks (on every agent once started, with or without the
        HTTP API, which drives them), user events, in-process RPC."""
        self._http_scope = trio.CancelScope()
        """Around the HTTP side's tasks (anti-entropy, checks, user events)."""
        self.server_address: Address | None = None
        self._join_error: AgentJoinError | None = None
        self._joining = trio.CancelScope()
        """Around the joins at start: a shutdown meanwhile cancels them."""
        self.stop_error = ""
        """Why the agent stopped in error after it started ("" when it did not): a graceful
        leave on SIGINT/SIGTERM that failed, timed out or was cut short by a second signal."""
        # Built once, last: the table looks the pools up through the agent on every call.
        self._commands = AgentCommands(self)

    # ---------------------------------------------------------------- RPCServices

    @property
    def instant_commands(self) -> Mapping[str, InstantHandler]:
        return self._commands.instant

    @property
    def async_commands(self) -> Mapping[str, AsyncHandler]:
        return self._commands.async_

    def subscribe_log(self, min_level: int, queue_size: int) -> LogSubscription:
        return self.hub.subscribe(min_level, queue_size)

    @property
    def rpc_token(self) -> str:
        return self.config.rpc_token

    # ---------------------------------------------------------------- CommandHost

    @property
    def monitor_dropped(self) -> int:
        return self.hub.monitor_dropped

    # ---------------------------------------------------------------- lifecycle

    async def run(
        self,
        *,
        handle_signals: bool = False,
        task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until :meth:`shutdown`; ``task_status.started`` fires once listening and
        the ``start_join`` / ``start_join_wan`` joins succeeded.

        Binding failures (an address in use, say) raise :class:`AgentStartError`; failed
        start-up joins (or ``retry_join`` past ``retry_max``) :class:`AgentJoinError`, after
        the agent shut down. ``handle_signals``: SIGHUP reloads, SIGINT and SIGTERM shut down
        (see :meth:`_watch_signals`); they are caught from the start, so one that comes while
        the agent starts is handled once it serves, never a KeyboardInterrupt.
        """
        if not handle_signals:
            await self._run(None, task_status)
            return
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGINT, signal.SIGTERM) as signals:
            await self._run(signals, task_status)

    async def _run(
        self, signals: AsyncIterator[int] | None, task_status: trio.TaskStatus[Agent]
    ) -> None:
        config = self.config
        self.started_at = trio.current_time()
        try:
            bound = await open_listeners(parse_address(config.rpc_addr), network=self._network)
        except OSError as exc:
            raise AgentStartError(f"RPC address {config.rpc_addr}: {_os_reason(exc)}") from exc
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = [self._in_process]
        for listener, address in bound:
            listeners.append(listener)
            self.rpc_addresses.append(address)
        serf_listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
        start_error: AgentStartError | None = None
        if config.serf_rpc_addr:
            try:
                serf_bound = await open_listeners(
                    parse_address(config.serf_rpc_addr), network=self._network
                )
            except OSError as exc:
                start_error = AgentStartError(
                    f"serf RPC address {config.serf_rpc_addr}: {_os_reason(exc)}"
                )
                start_error.__cause__ = exc
            else:
                for listener, address in serf_bound:
                    serf_listeners.append(listener)
                    self.serf_rpc_addresses.append(address)
        try:
            async with trio.open_nursery() as background:
                try:
                    if start_error is not None:
                        raise start_error
                    await self._start_background(background)
                except AgentStartError as exc:
                    start_error = exc
                    background.cancel_scope.cancel()
                else:
                    await self._serve(listeners, serf_listeners, signals, task_status)
                    self._stop_background()
                    background.cancel_scope.deadline = (
                        trio.current_time() + self.limits.drain_timeout
                    )
        finally:
            if start_error is not None:
                for listener in listeners + serf_listeners:
                    await trio.aclose_forcefully(listener)
            self._stopped.set()
        if start_error is not None:
            raise start_error
        if self._join_error is not None:
            raise self._join_error

    async def _start_background(self, nursery: trio.Nursery) -> None:
        """What outlives the RPC connections: the server port and the RPC connection pool."""
        config = self.config
        tls = tls_config(config)
        pool = ConnectionPool(tls=tls, logger=self.hub.logger("agent.pool"), network=self._network)
        self.rpc_pool = await nursery.start(pool.run)
        self.node_id = await self._load_node_id()
        if config.server:
            await self._start_server(nursery, pool, tls)
        if self._gossip_pools:
            await nursery.start(self._run_gossip)
        if not config.server:
            # A client agent sends every server RPC through its server manager.
            manager = ServerManager(
                lambda: self.rpc_pool,
                lambda: self.lan.members(),
                datacenter=config.datacenter,
                logger=self.hub.logger("agent.client"),
            )
            await nursery.start(manager.run)
            self.server_manager = manager
            if config.dns_addr:
                await self._start_dns(nursery, manager.call)
        if self.raft is not None and self.catalog is not None:
            await nursery.start(self._run_raft, self.raft, self.catalog)
        # Network coordinates: a server flushes the updates it queued into Raft; every agent
        # sends its own (both until shutdown is requested, not until the drain deadline).
        stop = self._shutdown_requested
        if self.catalog is not None:
            await nursery.start(run_until, stop, self.catalog.coordinates.run)
        if not config.disable_coordinates:
            await nursery.start(run_until, stop, self._coordinate_sender().run)
        bridge = await self._start_local(nursery)
        if config.http_addr:
            await self._start_http(nursery, bridge)

    def _coordinate_sender(self) -> CoordinateSender:
        """Consul's ``sendCoordinate``: this agent's LAN coordinate to a server, in-process
        on a server, through the server manager on a client."""
        config = self.config

        async def call(method: str, args: Any) -> Any:
            port = self.server_port
            if port is not None:
                return await port.call_local(method, args)
            if self.server_manager is None:
                raise RPCCallError(ERR_NO_SERVERS)
            return await self.server_manager.call(method, args)

        return CoordinateSender(
            call,
            lan_coordinate(lambda: self.lan),
            lambda: len(self.lan.members()),
            datacenter=config.datacenter,
            node_name=config.node_name,
            interval_min=config.sync_coordinate_interval_min,
            logger=self.hub.logger("agent"),
        )

    async def _load_node_id(self) -> str:
        """Consul 0.8's node ID: ``node_id`` from the config, else the one kept in
        ``data_dir/node-id`` (created on first start), else a fresh one (no data directory).
        A server's Raft ID is the same."""
        config = self.config
        if config.node_id:
            return config.node_id  # a UUID: validate() checked it
        try:
            if config.data_dir:
                return await trio.to_thread.run_sync(load_node_id, config.data_dir)
            return load_node_id("")  # a fresh UUID: nothing to read
        except (RaftStartError, OSError) as exc:
            raise AgentStartError(f"node ID: {exc}") from exc

    async def _start_server(
        self, nursery: trio.Nursery, pool: ConnectionPool, tls: TLSConfig | None
    ) -> None:
        """The server port, the catalog behind it and the Raft that replicates it."""
        config = self.config
        raft = ServerRaft(
            config,
            node_id=self.node_id,
            logger=self.hub.logger("agent.server.raft"),
            dialer=self._raft_dialer(tls),
            pool=lambda: self.rpc_pool,
            lan_members=lambda: self.lan.members(),
        )
        forwarder = ServerForwarder(
            lambda: self.rpc_pool,
            raft.facts,
            datacenter=config.datacenter,
            wan_members=self._wan_members,
            leaving=lambda: raft.leaving,
            logger=self.hub.logger("agent.server"),
        )
        endpoints = Endpoints()
        endpoints.register(MEMBERS_WAN_ENDPOINT, members_wan_endpoint(self._wan_members))
        self.catalog = install_catalog(
            endpoints,
            datacenter=config.datacenter,
            node_name=config.node_name,
            members=lambda: self.lan.members(),
            server_address=lambda: str(self.server_address) if self.server_address else "",
            logger=self.hub.logger("agent.server.catalog"),
            applier=raft.applier,
            facts=raft.facts,
            forwarder=forwarder,
            on_server_change=raft.server_change,
            lan_coordinate=lan_coordinate(lambda: self.lan),
            wan_members=self._wan_members,
            wan_coordinate=lambda name: pool_coordinate(self.wan, name),
            coordinate_update_period=config.coordinate_update_period,
        )
        install_operator(
            endpoints,
            raft,
            facts=raft.facts,
            forwarder=forwarder,
            datacenter=config.datacenter,
            members=lambda: self.lan.members(),
            logger=self.hub.logger("agent.server.operator"),
        )
        endpoints.register(
            KEYRING_OPERATION,
            keyring_endpoint(
                lan=keyring_pool_operation(lambda: self.lan),
                wan=keyring_pool_operation(lambda: self.wan),
                datacenter=config.datacenter,
                forwarder=forwarder,
                logger=self.hub.logger("agent.server.keyring"),
            ),
        )
        endpoints.register(
            EVENT_FIRE,
            event_endpoint(
                fire=lan_user_event(lambda: self.lan),
                datacenter=config.datacenter,
                facts=raft.facts,
                forwarder=forwarder,
                logger=self.hub.logger("agent.server.event"),
            ),
        )
        self.raft = raft
        limits = RouterLimits(
            first_byte_timeout=config.server_first_byte_timeout,
            max_conns_per_client=config.rpc_max_conns_per_client,
            max_object_size=config.max_frame_size,
            send_queue_bytes=config.send_queue_bytes,
        )
        port = ServerPort(
            config.server_addr,
            endpoints,
            tls,
            self.hub.logger("agent.server"),
            limits,
            network=self._network,
            send_budget=self.send_budget,
        )
        # Byte 1 is taken from the first accept on: Raft starts after gossip (its address
        # is the LAN member's), and a peer's connection in between waits for it.
        port.set_raft_handler(self._raft_connection)
        try:
            address = await nursery.start(port.run)
        except OSError as exc:
            raise AgentStartError(
                f"server address {config.server_addr}: {_os_reason(exc)}"
            ) from exc
        self.server_port = port
        self.server_address = address
        pool.set_local([address], port.call_local)
        self._set_server_port_tag(address.port)
        if config.dns_addr:
            await self._start_dns(nursery, port.call_local)

    def _raft_dialer(self, tls: TLSConfig | None) -> Dialer:
        """How Raft reaches a peer's server port: TCP (or the in-process network), with
        byte 3 and a TLS handshake first when outgoing TLS is on."""
        if tls is not None and tls.outgoing:
            return tls_dialer(tls)
        network = self._network

        async def dial(address: str) -> trio.abc.Stream:
            return await connect(parse_address(address), network=network)

        return dial

    def raft_address(self) -> str:
        """This server's Raft address: the LAN pool's advertised IP with the bound server
        port (what peers dial, and the ``ip:port`` its serf tags give), or the server port's
        own address on the in-process network."""
        address = self.server_address
        if address is None:
            return ""
        if address.kind != "tcp":
            return str(address)
        host = str(self.own_member(False).addr)
        return join_host_port(host, address.port)

    async def _run_raft(
        self, raft: ServerRaft, catalog: Catalog, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """The server's Raft (and, while it leads, the catalog's leader duties), until
        :meth:`_stop_background`; Raft's byte 1 reaches the engine once it runs."""
        port = self.server_port
        assert port is not None
        error: AgentStartError | None = None
        with self._catalog_scope:
            async with trio.open_nursery() as nursery:
                try:
                    engine: RaftEngine = await nursery.start(
                        raft.run, catalog.hub, catalog.duties, self.raft_address()
                    )
                except RaftStartError as exc:
                    error = AgentStartError(str(exc))
                    error.__cause__ = exc
                else:
                    self._raft_engine = engine
                    self._raft_started.set()
                    task_status.started()
        self._raft_engine = None
        self._raft_started.set()  # nothing to wait for any more: byte 1 is refused
        if error is not None:
            raise error

    async def _raft_connection(self, stream: trio.abc.Stream, peer: str) -> None:
        """Byte 1 on the server port: to the engine; one that comes before the engine runs
        waits for it (Consul's Raft layer queues such connections until Raft accepts them),
        at most :data:`RAFT_ACCEPT_WAIT` seconds, then is closed."""
        if self._raft_engine is None:
            with trio.move_on_after(RAFT_ACCEPT_WAIT):
                await self._raft_started.wait()
        engine = self._raft_engine
        if engine is None:
            self.hub.logger("agent.server").throttled(
                DEBUG,
                "raft:not-running",
                f"raft: connection from {peer} closed: Raft is not running",
            )
            return
        await engine.handle_connection(stream, peer)

    async def _start_dns(self, nursery: trio.Nursery, call: LocalCall) -> None:
        """Consul's DNS interface on ``dns_addr``, calling the catalog through ``call``: on a
        server the in-process path of its server port (the same router and handlers as a
        socket client), on a client agent its server manager."""
        config = self.config
        dns = DNSServer(
            self._dns_settings,
            datacenter=config.datacenter,
            node_name=config.node_name,
            call=call,
            logger=self.hub.logger("agent.dns"),
        )
        try:
            await nursery.start(dns.run, config.dns_addr)
        except OSError as exc:
            raise AgentStartError(f"DNS address {config.dns_addr}: {_os_reason(exc)}") from exc
        self.dns = dns

    async def _start_local(self, nursery: trio.Nursery) -> AgentHTTP:
        """The local services and checks (the config files' registered first), their
        anti-entropy and checks, and the user-event feed: on every agent, with or without the
        HTTP API; after the pools (user events come from the LAN pool) and the server port
        (a server's ``call`` is its port in-process)."""
        bridge = AgentHTTP(self, logger=self.hub.logger("agent.http"))
        try:
            bridge.local.load_config(self._config_definitions)
        except LocalAgentError as exc:
            raise AgentStartError(f"config files' services and checks: {exc}") from exc
        await nursery.start(self._run_http_side, bridge)
        if self.server_manager is not None:
            self.server_manager.on_server_added = bridge.local.server_up
        self.http_agent = bridge
        return bridge

    async def _start_http(self, nursery: trio.Nursery, bridge: AgentHTTP) -> None:
        """Consul's HTTP API on ``http_addr``, over the local state :meth:`_start_local`
        started."""
        http = build_http_server(
            self.config.http_addr, bridge, self.hub.logger("agent.http"), network=self._network
        )
        try:
            await nursery.start(http.run)
        except OSError as exc:
            raise AgentStartError(
                f"HTTP address {self.config.http_addr}: {_os_reason(exc)}"
            ) from exc
        self.http = http

    async def _run_http_side(
        self, bridge: AgentHTTP, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """The local services' anti-entropy and checks, and the user-event feed, until
        :meth:`_stop_background`."""
        with self._http_scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(bridge.local.run)
                await nursery.start(bridge.run_events)
                task_status.started()

    async def _run_gossip(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Own the gossip pools' tasks: start them, then run until :meth:`_stop_background`."""
        error: AgentStartError | None = None
        async with trio.open_nursery() as nursery:
            try:
                await self._start_gossip(nursery)
            except AgentStartError as exc:
                error = exc
            else:
                task_status.started()
                await self._gossip_stop.wait()
            nursery.cancel_scope.cancel()
        if error is not None:
            raise error

    async def _start_gossip(self, nursery: trio.Nursery) -> None:
        config = self.config
        tags = local_tags(config, self.node_id)
        if self.server_address is not None:
            tags["port"] = str(self.server_address.port)
        transport = gossip_transport(self._gossip_network)
        try:
            specs = pool_specs(config)
        except HostResolutionError as exc:
            raise AgentStartError(f"serf address: {exc}") from None
        for spec in specs:
            keyring_file = str(keyring_path(config.data_dir, spec.kind)) if config.data_dir else ""
            on_member_event = self._lan_member_event if spec.kind == "lan" else None
            try:
                pool, memberlist, bound = await start_pool(
                    nursery,
                    spec,
                    config,
                    tags,
                    self.hub,
                    transport,
                    keyring_file=keyring_file,
                    on_member_event=on_member_event,
                )
            except KeyringFileError as exc:
                raise AgentStartError(f"serf {spec.kind.upper()} keyring: {exc}") from exc
            except OSError as exc:
                address = config.serf_lan_addr if spec.kind == "lan" else config.serf_wan_addr
                raise AgentStartError(
                    f"serf {spec.kind.upper()} address {address}: {_os_reason(exc)}"
                ) from exc
            self.gossip_addresses[spec.kind] = bound
            self.memberlists[spec.kind] = memberlist
            nursery.start_soon(self._watch_conflict, pool)
            self.hub.logger("agent").info(f"serf {spec.kind.upper()} gossip on {bound}")
            if spec.kind == "lan":
                self.lan = pool
            else:
                self.wan = pool
                if self.server_port is not None:
                    # Byte 6 on the server port carries WAN gossip streams, as the reference.
                    self.server_port.set_gossip_handler(gossip_stream_handler(memberlist))

    def _lan_member_event(self, event: MemberEvent) -> None:
        """A LAN member changed: the catalog reconciles it (a server's)."""
        if self.catalog is not None:
            member, reaped = member_change(event)
            self.catalog.duties.member_changed(member, reaped=reaped)
        if self.raft is not None:
            self.raft.member_event()
        if self.server_manager is not None:
            self.server_manager.refresh()

    async def _watch_conflict(self, pool: GossipPool) -> None:
        """A pool that lost a name conflict stops the agent, as serf shuts down (serf's own
        line, ``Minority in name conflict resolution, quitting!``, is the pool's)."""
        await pool.shutdown_requested.wait()
        self.stop_error = (
            f"the {pool.name.upper()} pool lost a name conflict: {clip(pool.shutdown_reason)}"
        )
        self.log.error(f"shutting down: {self.stop_error}")
        self.shutdown()

    def _stop_background(self) -> None:
        self._gossip_stop.set()
        self._catalog_scope.cancel()
        if self.server_port is not None:
            self.server_port.shutdown()
        if self.dns is not None:
            self.dns.shutdown()
        if self.http is not None:
            self.http.shutdown()
        self._http_scope.cancel()
        if self.rpc_pool is not None:
            self.rpc_pool.close()

    # ---------------------------------------------------------------- HTTPHost

    @property
    def http_address(self) -> Address | None:
        """Where the HTTP API listens (None when ``http_addr`` is "")."""
        return self.http.address if self.http is not None else None

    @property
    def dns_address(self) -> GossipAddress | None:
        return self.dns.address if self.dns is not None else None

    def stats_sections(self) -> dict[str, dict[str, str]]:
        """The sections of ``stats`` (``agentrpc info``), freshly built."""
        return self._commands.stats_sections()

    def consul_stats(self) -> dict[str, dict[str, str]]:
        """The ``consul`` section of ``stats`` and, on a server, ``raft``."""
        raft = self.raft
        if raft is None:
            manager = self.server_manager
            known = len(manager.servers) if manager is not None else 0
            return {"consul": {"server": "false", "known_servers": str(known)}}
        datacenters = self.catalog.forwarder.datacenters() if self.catalog is not None else []
        consul = {
            "server": "true",
            "leader": "true" if raft.facts.is_leader() else "false",
            "leader_addr": raft.facts.leader(),
            "bootstrap": "true" if raft.bootstrap_mode else "false",
            "known_datacenters": str(len(datacenters)),
        }
        return {"consul": consul, "raft": raft.stats()}

    def own_member(self, wan: bool) -> Member:
        """This agent as its LAN (or WAN) pool lists it."""
        pool = self.wan if wan else self.lan
        name = f"{self.config.node_name}.{self.config.datacenter}" if wan else self.config.node_name
        for member in pool.members() if pool is not None else ():
            if member.name == name:
                return member
        return local_member(self.config, wan=wan)

    def _wan_members(self) -> list[Member]:
        return self.wan.members() if self.wan is not None else []

    def _set_server_port_tag(self, port: int) -> None:
        """Advertise the port really bound (port 0 in the config picks one) and the node ID."""
        wanted = {"port": str(port), "id": self.node_id} if self.node_id else {"port": str(port)}
        for pool in (self.lan, self.wan):
            if isinstance(pool, LocalPool) and any(
                pool.local.tags.get(key) != value for key, value in wanted.items()
            ):
                pool.set_local(replace(pool.local, tags={**pool.local.tags, **wanted}))

    async def _serve(
        self,
        listeners: list[trio.abc.Listener[trio.abc.Stream]],
        serf_listeners: list[trio.abc.Listener[trio.abc.Stream]],
        signals: AsyncIterator[int] | None,
        task_status: trio.TaskStatus[Agent],
    ) -> None:
        config = self.config
        for address in self.rpc_addresses:
            self.rpc_log.info(f"RPC listening on {address}")
        for address in self.serf_rpc_addresses:
            self.ipc_log.info(f"Serf RPC listening on {address}")
        if not config.rpc_token and not all(a.is_loopback for a in self.rpc_addresses):
            self.rpc_log.warn(
                "the RPC port is bound to a non-loopback address without an rpc_token: "
                "anyone who can reach it can control this agent"
            )
        self.log.info(
            f"agent started: node {config.node_name!r}, datacenter {config.datacenter!r}, "
            f"{'server' if config.server else 'client'} mode, version {build_info.VERSION}"
        )
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as services:
                services.start_soon(
                    functools.partial(
                        trio.serve_listeners,
                        self._serve_connection,
                        listeners,
                        handler_nursery=connections,
                    )
                )
                if serf_listeners:
                    services.start_soon(
                        functools.partial(
                            trio.serve_listeners,
                            self._serve_serf_connection,
                            serf_listeners,
                            handler_nursery=connections,
                        )
                    )
                if signals is not None:
                    services.start_soon(self._watch_signals, signals)
                try:
                    with self._joining:
                        await self._start_joins()
                except AgentJoinError as exc:
                    self._join_error = exc
                    self.log.error(str(exc))
                    self.shutdown()
                else:
                    if not self._joining.cancelled_caught:
                        task_status.started(self)
                        for wan in (False, True):
                            services.start_soon(self._retry_join, wan)
                await self._shutdown_requested.wait()
                services.cancel_scope.cancel()
            await self._close_connections(connections)

    def shutdown(self) -> None:
        """Ask the agent to stop; :meth:`run` returns once everything is closed."""
        if not self._shutdown_requested.is_set():
            self.log.info("requesting shutdown")
            self._shutdown_requested.set()
            self._joining.cancel()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def _close_connections(self, connections: trio.Nursery) -> None:
        self.log.info("shutdown complete")
        self.hub.close()
        for connection in list(self._connections):
            connection.close_gracefully()
        connections.cancel_scope.deadline = trio.current_time() + self.limits.drain_timeout + 1

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        await self._serve_with(
            stream, self.rpc_log, self.rpc_stats, lambda peer: RPCConnection(stream, self, peer)
        )

    async def _serve_serf_connection(self, stream: trio.abc.Stream) -> None:
        """One client of Serf's own dialect (``serf_rpc_addr``), acting on the LAN pool."""

        def serf_connection(peer: str) -> RPCConnection:
            services = SerfServices(
                self,
                self,
                auth_key=self.config.serf_rpc_auth,
                stats=self.serf_rpc_stats,
                log=self.ipc_log,
            )
            return SerfConnection(stream, services, peer)

        await self._serve_with(stream, self.ipc_log, self.serf_rpc_stats, serf_connection)

    async def _serve_with(
        self,
        stream: trio.abc.Stream,
        log: Logger,
        stats: RPCStats,
        make_connection: Callable[[str], RPCConnection],
    ) -> None:
        peer = peer_of(stream)
        admission = self._admission
        refusal = admission.admit(peer.ip)
        if refusal is not None:
            if refusal is Refusal.TOTAL:
                reason = f"the agent already serves {admission.max_total} connections"
            else:
                reason = f"{peer.ip} already has {admission.max_per_client} connections"
            stats.refused_connections += 1
            log.throttled(WARN, "refused", f"refusing connection from {peer.name}: {reason}")
            await trio.aclose_forcefully(stream)
            return
        log.throttled(DEBUG, "accepted", f"Accepted client: {peer.name}")
        connection = make_connection(peer.name)
        self._connections.add(connection)
        try:
            await connection.serve()
        except* Exception as group:
            # The engine handles every fault of the peer itself, so this is a bug: log it loudly,
            # but never let one connection take the agent or other connections down.
            log.error(f"connection from {peer.name} failed: {describe_failure(group)}")
        finally:
            self._connections.discard(connection)
            admission.release(peer.ip)

    # ---------------------------------------------------------------- start-up joins

    async def _start_joins(self) -> None:
        """``start_join``, then ``start_join_wan``: each must reach one address at least."""
        config = self.config
        for wan, addresses in ((False, config.start_join), (True, config.start_join_wan)):
            pool = self.wan if wan else self.lan
            if not addresses or pool is None:
                continue
            kind = " -wan" if wan else ""
            self.log.info(f"Joining{kind} cluster through {', '.join(addresses)}...")
            num, error = await pool.join(list(addresses))
            if error:
                raise AgentJoinError(
                    f"could not join the {pool.name.upper()} pool through "
                    f"{', '.join(addresses)}: {_one_line(error)}"
                )
            self.log.info(f"Join{kind} completed. Synced with {num} initial agents")

    async def _retry_join(self, wan: bool) -> None:
        """``retry_join`` (``retry_join_wan``): join, retrying every ``retry_interval`` until
        an address answers; past ``retry_max`` failed attempts the agent stops in error."""
        config = self.config
        addresses = list(config.retry_join_wan if wan else config.retry_join)
        pool = self.wan if wan else self.lan
        if not addresses or pool is None:
            return
        interval = config.retry_interval_wan if wan else config.retry_interval
        limit = config.retry_max_wan if wan else config.retry_max
        kind = " -wan" if wan else ""
        self.log.info(f"Joining{kind} cluster through {', '.join(addresses)} (with retries)...")
        attempt = 0
        while True:
            num, error = await pool.join(addresses)
            if not error:
                self.log.info(f"Join{kind} completed. Synced with {num} initial agents")
                return
            attempt += 1
            if 0 < limit < attempt:
                self._join_error = AgentJoinError(
                    f"max join{kind} retry exhausted: {attempt} attempts through "
                    f"{', '.join(addresses)} failed, the last with: {_one_line(error)}"
                )
                self.log.error(f"max join{kind} retry exhausted, exiting")
                self.shutdown()
                return
            tries = f"attempt {attempt}" + (f" of {limit + 1}" if limit else "")
            self.log.warn(
                f"Join{kind} failed ({tries}): {_one_line(error)}, retrying in {interval:g}s"
            )
            await trio.sleep(interval)

    # ---------------------------------------------------------------- signals

    async def _watch_signals(self, signals: AsyncIterator[int]) -> None:
        """SIGHUP reloads; SIGINT and SIGTERM shut the agent down, after a graceful leave when
        the config says so (``skip_leave_on_interrupt``, ``leave_on_terminate``)."""
        async for signum in signals:
            if signum == signal.SIGHUP:
                self.log.info("Caught signal: hangup, reloading configuration")
                await self.reload()
                continue
            name = signal.Signals(signum).name
            if signum == signal.SIGINT:
                graceful = not skips_leave_on_interrupt(self.config)
                setting = "skip_leave_on_interrupt"
            else:
                graceful = leaves_on_terminate(self.config)
                setting = "leave_on_terminate"
            if graceful:
                self.log.info(f"Caught signal: {name}, gracefully shutting down agent...")
                await self._leave_on_signal(signals)
            else:
                value = "true" if signum == signal.SIGINT else "false"
                self.log.info(
                    f"Caught signal: {name}, shutting down without leaving the cluster "
                    f"({setting} is {value})"
                )
            self.shutdown()
            return

    async def _leave_on_signal(self, signals: AsyncIterator[int]) -> None:
        """The graceful leave, bounded by :data:`GRACEFUL_LEAVE_TIMEOUT`; another SIGINT or
        SIGTERM cuts it short. A leave that does not complete sets :attr:`stop_error`."""
        outcome = "interrupted by a second signal"
        async with trio.open_nursery() as nursery:

            async def cut_short() -> None:
                async for signum in signals:
                    if signum != signal.SIGHUP:
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(cut_short)
            with trio.move_on_after(GRACEFUL_LEAVE_TIMEOUT) as deadline:
                outcome = await self.leave()
            if deadline.cancelled_caught:
                outcome = f"timed out after {GRACEFUL_LEAVE_TIMEOUT:g} s"
            nursery.cancel_scope.cancel()
        if outcome:
            self.stop_error = f"graceful leave failed: {outcome}"
            self.log.error(f"{self.stop_error}; shutting down without it")

    # ---------------------------------------------------------------- in-process callers

    async def connect(self) -> trio.abc.Stream:
        """A stream to this agent's RPC engine without a socket (the in-process transport)."""
        return await self._in_process.connect()

    # ---------------------------------------------------------------- operations

    async def leave(self) -> str:
        """Gracefully leave every pool; returns the errors joined, or ""."""
        self.log.info("requesting graceful leave")
        if self.raft is not None:
            await self.raft.leave()  # a leader hands leadership over first
        errors = [await self.lan.leave()]
        if self.wan is not None:
            errors.append(await self.wan.leave())
        error = "; ".join(error for error in errors if error)
        if error:
            self.log.error(f"graceful leave failed: {error}")
        else:
            self.log.info("graceful leave complete")
        return error

    async def reload(self) -> str:
        """Re-read the config files; keep running on the old config when the new one is bad.

        Reading and parsing happen in a worker thread, so no client waits on a reload.

        The config files' services and checks replace those the previous config registered
        (see :meth:`~agentrpc.local_state.agent_state.LocalAgent.load_config`): removed ones
        are deregistered, changed ones registered again, unchanged ones keep their checks'
        status. Those registered through the HTTP API are kept, where Consul 0.8's reload
        drops every one it did not persist. A definition refused keeps the old config.
        """
        self.log.info("Reloading configuration...")
        old = self.config
        files, overrides = old.config_files, self._overrides

        def read() -> tuple[AgentConfig, ConfigDefinitions]:
            config = load_config(files, overrides)
            return config, config_definitions(config)

        try:
            new, definitions = await trio.to_thread.run_sync(read)
        except ConfigError as exc:
            message = f"Failed to reload configs: {exc}"
            self.log.error(message)
            return message
        changed = changed_settings(old, new)
        needs_restart = [name for name in changed if name not in RELOADABLE]
        if needs_restart:
            self.log.warn(
                "these settings changed but take effect only after a restart: "
                + ", ".join(needs_restart)
            )
            new = replace(new, **{name: getattr(old, name) for name in needs_restart})
        if self.http_agent is not None:  # else the local state starts with them
            try:
                self.http_agent.local.load_config(definitions)
            except LocalAgentError as exc:
                message = f"Failed to reload configs: {exc}"
                self.log.error(message)
                return message
        self._config_definitions = definitions
        self.config = new
        # At once (RELOAD_AT_ONCE): rpc_token is read from self.config on every request.
        self.hub.level = parse_level(new.log_level)
        self.hub.set_ring_bytes(new.log_ring_bytes)
        self.send_budget.set_limit(new.agent_send_bytes)
        for pool in (self.lan, self.wan):
            if isinstance(pool, GossipPool):
                pool.set_max_members(new.gossip_max_members)  # serf's bounds and memberlist's
        # To what starts next (RELOAD_NEW_CONNECTIONS): connections admitted and opened after
        # this, on the agent RPC port and the server port; live ones keep their limits.
        self._admission.max_total = new.max_connections
        self._admission.max_per_client = new.max_connections_per_client
        self.limits = limits_from(new)
        if self.server_port is not None:
            self.server_port.set_max_conns_per_client(new.rpc_max_conns_per_client)
            self.server_port.set_send_queue_bytes(new.send_queue_bytes)
            self.server_port.set_max_object_size(new.max_frame_size)
        applied = [name for name in changed if name in RELOADABLE]
        self.log.info(
            "configuration reloaded" + (f" ({', '.join(applied)} changed)" if applied else "")
        )
        return ""
