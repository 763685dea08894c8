"""The agent: the state commands act on, its listeners, and its lifecycle.

``Agent.run`` binds the RPC listener(s) (TCP, unix or memory, per ``rpc_addr``) plus an
in-process listener, serves every connection in a nursery it owns, and returns after
``shutdown()``: listeners close first, the log ends (monitors drain their queues), every
connection drains its queued replies under a deadline, then the rest is cancelled.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, TextIO

import trio

from . import build_info
from .admission import AdmissionCounter, Refusal, peer_of
from .budget import SharedBudget
from .commands import AgentCommands
from .config import (
    RELOADABLE,
    AgentConfig,
    ConfigError,
    changed_settings,
    load_config,
    tls_config,
)
from .consul_servers import MEMBERS_WAN_ENDPOINT, SERVER_ROLE, members_wan_endpoint
from .log_protocol import DEBUG, WARN, describe_failure, parse_level
from .logs import LogHub, LogSubscription
from .membership import (
    GossipAddress,
    GossipPool,
    HostResolutionError,
    LocalPool,
    Memberlist,
    MembershipPool,
    MemoryGossipNetwork,
    gossip_stream_handler,
    gossip_transport,
    pool_specs,
    resolve_ip,
    start_pool,
)
from .protocol.bodies import Member
from .rpc_connection import AsyncHandler, EngineLimits, InstantHandler, RPCConnection, RPCStats
from .serverport.endpoints import Endpoints
from .serverport.pool import ConnectionPool
from .serverport.router import RouterLimits
from .serverport.server import ServerPort
from .transports import (
    DEFAULT_NETWORK,
    Address,
    MemoryListener,
    MemoryNetwork,
    open_listeners,
    parse_address,
)


class AgentStartError(Exception):
    """The agent could not start (an address in use, a bad certificate, a host DNS does not
    resolve, ...)."""


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
    )


def local_tags(config: AgentConfig) -> dict[str, str]:
    """The tags that say what this agent is (role, datacenter, build, versions, server port)."""
    tags = {
        "role": SERVER_ROLE if config.server else "node",
        "dc": config.datacenter,
        "build": build_info.BUILD_TAG,
        "vsn": "2",
        "vsn_min": "1",
        "vsn_max": "3",
    }
    if config.server:
        tags["port"] = str(parse_address(config.server_addr).port)
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

        Raises :class:`AgentStartError` when a configured serf host does not resolve."""
        self.config = config
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
        self.send_budget = SharedBudget(config.agent_send_bytes)
        """Queued output bytes of every connection together (agent RPC and server port)."""
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
        self._gossip_stop = trio.Event()
        self.server_port: ServerPort | None = None
        self.server_address: Address | None = None
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
        """Serve until :meth:`shutdown`; ``task_status.started`` fires once listening.

        Binding failures (an address in use, say) raise :class:`AgentStartError`.
        """
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
        start_error: AgentStartError | None = None
        try:
            async with trio.open_nursery() as background:
                try:
                    await self._start_background(background)
                except AgentStartError as exc:
                    start_error = exc
                    background.cancel_scope.cancel()
                else:
                    await self._serve(listeners, handle_signals, task_status)
                    self._stop_background()
                    background.cancel_scope.deadline = (
                        trio.current_time() + self.limits.drain_timeout
                    )
        finally:
            if start_error is not None:
                for listener in listeners:
                    await trio.aclose_forcefully(listener)
            self._stopped.set()
        if start_error is not None:
            raise start_error

    async def _start_background(self, nursery: trio.Nursery) -> None:
        """What outlives the RPC connections: the server port and the RPC connection pool."""
        config = self.config
        tls = tls_config(config)
        pool = ConnectionPool(tls=tls, logger=self.hub.logger("agent.pool"), network=self._network)
        self.rpc_pool = await nursery.start(pool.run)
        if config.server:
            endpoints = Endpoints()
            endpoints.register(MEMBERS_WAN_ENDPOINT, members_wan_endpoint(self._wan_members))
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
        if self._gossip_pools:
            await nursery.start(self._run_gossip)

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
        tags = local_tags(config)
        if self.server_address is not None:
            tags["port"] = str(self.server_address.port)
        transport = gossip_transport(self._gossip_network)
        try:
            specs = pool_specs(config)
        except HostResolutionError as exc:
            raise AgentStartError(f"serf address: {exc}") from None
        for spec in specs:
            try:
                pool, memberlist, bound = await start_pool(
                    nursery, spec, config, tags, self.hub, transport
                )
            except OSError as exc:
                address = config.serf_lan_addr if spec.kind == "lan" else config.serf_wan_addr
                raise AgentStartError(
                    f"serf {spec.kind.upper()} address {address}: {_os_reason(exc)}"
                ) from exc
            self.gossip_addresses[spec.kind] = bound
            self.memberlists[spec.kind] = memberlist
            self.hub.logger("agent").info(f"serf {spec.kind.upper()} gossip on {bound}")
            if spec.kind == "lan":
                self.lan = pool
            else:
                self.wan = pool
                if self.server_port is not None:
                    # Byte 6 on the server port carries WAN gossip streams, as the reference.
                    self.server_port.set_gossip_handler(gossip_stream_handler(memberlist))

    def _stop_background(self) -> None:
        self._gossip_stop.set()
        if self.server_port is not None:
            self.server_port.shutdown()
        if self.rpc_pool is not None:
            self.rpc_pool.close()

    def _wan_members(self) -> list[Member]:
        return self.wan.members() if self.wan is not None else []

    def _set_server_port_tag(self, port: int) -> None:
        """Advertise the port really bound (port 0 in the config picks one)."""
        for pool in (self.lan, self.wan):
            if isinstance(pool, LocalPool) and pool.local.tags.get("port") != str(port):
                pool.set_local(replace(pool.local, tags={**pool.local.tags, "port": str(port)}))

    async def _serve(
        self,
        listeners: list[trio.abc.Listener[trio.abc.Stream]],
        handle_signals: bool,
        task_status: trio.TaskStatus[Agent],
    ) -> None:
        config = self.config
        for address in self.rpc_addresses:
            self.rpc_log.info(f"RPC listening on {address}")
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
                if handle_signals:
                    services.start_soon(self._watch_signals)
                task_status.started(self)
                await self._shutdown_requested.wait()
                services.cancel_scope.cancel()
            await self._close_connections(connections)

    def shutdown(self) -> None:
        """Ask the agent to stop; :meth:`run` returns once everything is closed."""
        if not self._shutdown_requested.is_set():
            self.log.info("requesting shutdown")
            self._shutdown_requested.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def _close_connections(self, connections: trio.Nursery) -> None:
        self.log.info("shutdown complete")
        self.hub.close()
        for connection in list(self._connections):
            connection.close_gracefully()
        connections.cancel_scope.deadline = trio.current_time() + self.limits.drain_timeout + 1

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        peer = peer_of(stream)
        admission = self._admission
        refusal = admission.admit(peer.ip)
        if refusal is not None:
            if refusal is Refusal.TOTAL:
                reason = f"the agent already serves {admission.max_total} connections"
            else:
                reason = f"{peer.ip} already has {admission.max_per_client} connections"
            self.rpc_stats.refused_connections += 1
            self.rpc_log.throttled(
                WARN, "refused", f"refusing connection from {peer.name}: {reason}"
            )
            await trio.aclose_forcefully(stream)
            return
        self.rpc_log.throttled(DEBUG, "accepted", f"Accepted client: {peer.name}")
        connection = RPCConnection(stream, self, peer.name)
        self._connections.add(connection)
        try:
            await connection.serve()
        except* Exception as group:
            # The engine handles every fault of the peer itself, so this is a bug: log it loudly,
            # but never let one connection take the agent or other connections down.
            self.rpc_log.error(f"connection from {peer.name} failed: {describe_failure(group)}")
        finally:
            self._connections.discard(connection)
            admission.release(peer.ip)

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.log.info("Caught signal: hangup, reloading configuration")
                    await self.reload()
                else:
                    self.log.info(f"Caught signal: {signal.Signals(signum).name}, shutting down")
                    self.shutdown()

    # ---------------------------------------------------------------- in-process callers

    async def connect(self) -> trio.abc.Stream:
        """A stream to this agent's RPC engine without a socket (the in-process transport)."""
        return await self._in_process.connect()

    # ---------------------------------------------------------------- operations

    async def leave(self) -> str:
        """Gracefully leave every pool; returns the errors joined, or ""."""
        self.log.info("requesting graceful leave")
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
        """
        self.log.info("Reloading configuration...")
        old = self.config
        try:
            new = await trio.to_thread.run_sync(load_config, old.config_files, self._overrides)
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
