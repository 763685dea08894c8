"""Helpers for the HTTP API tests: a catalog server (a lone server's catalog behind a server
port, its leader duties running), agents in front of it (a fake :class:`HTTPAgent` each, with
real local state and anti-entropy, serving the HTTP API), and a small Trio HTTP client for the
tests that run on the autojump clock over memory streams.

The fake agent is what the real ``Agent`` will be to the HTTP API: its ``call`` is the server
port's in-process call (the same router and handlers a socket client gets).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import h11
import trio

from agentrpc.catalog.operator import install_operator
from agentrpc.catalog.service import Catalog, install
from agentrpc.gossip.coordinate import Coordinate
from agentrpc.http_api.api import build_http_server
from agentrpc.http_api.events import EVENT_PREFIX, UserEventLog
from agentrpc.http_api.host import AgentInfo, KeyringResult
from agentrpc.http_api.server import HTTPLimits, HTTPServer
from agentrpc.local_state.agent_state import LocalAgent
from agentrpc.local_state.state import LocalState
from agentrpc.log_protocol import CaptureLog
from agentrpc.logs import LogHub, LogSubscription
from agentrpc.protocol.bodies import Member
from agentrpc.serverport.endpoints import Endpoints
from agentrpc.serverport.server import ServerPort
from agentrpc.transports import Address, MemoryNetwork

T = TypeVar("T")

DC = "dc1"
SERVER = "server-1"
SERVER_ADDR = "127.0.0.1:8300"


THREADS = trio.CapacityLimiter(64)


async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking client call (py-consul, requests, a socket) in a worker thread, while the
    agents keep serving on this trio loop."""
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=THREADS)


def member(name: str, *, server: bool = False, status: str = "alive") -> Member:
    tags = (
        {"role": "consul", "dc": DC, "port": "8300", "vsn": "2"}
        if server
        else {"role": "node", "dc": DC}
    )
    return Member(name, ipaddress.ip_address("127.0.0.1"), 8301, tags, status)


@dataclass
class FakeAgent:
    """An agent as the HTTP API sees it, over a shared catalog server."""

    info: AgentInfo
    local: LocalAgent
    port: ServerPort
    hub: LogHub
    cluster: Cluster
    events: UserEventLog = field(default_factory=UserEventLog)
    joined: list[tuple[list[str], bool]] = field(default_factory=list)
    left: bool = False
    shut_down: bool = False
    reloads: int = 0
    keyring_calls: list[tuple[str, str, int]] = field(default_factory=list)

    async def call(self, method: str, args: Any) -> Any:
        return await self.port.call_local(method, args)

    def members(self, wan: bool) -> Sequence[Member]:
        if wan:
            return [member(f"{SERVER}.{DC}", server=True)] if self.info.server else []
        return list(self.cluster.members())

    def local_member(self) -> Member:
        return member(self.info.node_name, server=self.info.server)

    def stats(self) -> Mapping[str, Mapping[str, str]]:
        return {"agent": {"name": self.info.node_name}}

    def coordinate(self) -> Mapping[str, Any] | None:
        return {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05}

    def coordinates(self, wan: bool) -> Sequence[tuple[str, Mapping[str, Any]]]:
        coord = self.coordinate() or {}
        return [(m.name, coord) for m in self.members(wan)]

    async def join(self, addresses: Sequence[str], wan: bool) -> tuple[int, str]:
        await trio.lowlevel.checkpoint()
        self.joined.append((list(addresses), wan))
        if addresses == ["bad"]:
            return 0, "Failed to join bad: no such host"
        return len(addresses), ""

    async def force_leave(self, node: str) -> str:
        await trio.lowlevel.checkpoint()
        return "" if node != "nope" else "node nope not found"

    async def leave(self) -> str:
        await trio.lowlevel.checkpoint()
        self.left = True
        return ""

    def shutdown(self) -> None:
        self.shut_down = True

    async def reload(self) -> str:
        await trio.lowlevel.checkpoint()
        self.reloads += 1
        return ""

    def subscribe_log(self, min_level: int, queue_size: int) -> LogSubscription:
        return self.hub.subscribe(min_level, queue_size)

    async def keyring(self, operation: str, key: str, relay_factor: int) -> Sequence[KeyringResult]:
        await trio.lowlevel.checkpoint()
        self.keyring_calls.append((operation, key, relay_factor))
        keys = {"pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=": 2}
        results = [KeyringResult(False, DC, keys, 2)]
        if self.info.server:
            results.insert(0, KeyringResult(True, DC, keys, 1))
        if key == "bad":
            results = [KeyringResult(False, DC, {}, 2, "Invalid key")]
        return results

    async def fire_user_event(self, datacenter: str, name: str, payload: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if datacenter != DC:
            raise ValueError(f"No path to datacenter {datacenter}")
        # serf delivers a user event to every member, this one included
        for agent in self.cluster.agents:
            agent.events.ingest(
                name,
                payload,
                self.cluster.next_ltime(),
                agent.info.node_name,
                agent.local.services().values(),
            )
        assert name.startswith(EVENT_PREFIX)


@dataclass
class Cluster:
    catalog: Catalog
    port: ServerPort
    log: CaptureLog
    agents: list[FakeAgent] = field(default_factory=list)
    servers: list[HTTPServer] = field(default_factory=list)
    addresses: list[Address] = field(default_factory=list)
    ltime: int = 0

    def members(self) -> list[Member]:
        return [member(a.info.node_name, server=a.info.server) for a in self.agents]

    def next_ltime(self) -> int:
        self.ltime += 1
        return self.ltime

    def url(self, position: int = 0) -> tuple[str, int]:
        address = self.addresses[position]
        return address.host, address.port


def _agent_info(name: str, server: bool, ttl_min_ns: int) -> AgentInfo:
    return AgentInfo(
        node_name=name,
        datacenter=DC,
        server=server,
        version="0.7.5",
        revision="agentrpc",
        advertise_addr="127.0.0.1",
        bind_addr="127.0.0.1",
        ports={"HTTP": 8500, "RPC": 8400, "SerfLan": 8301, "SerfWan": 8302, "Server": 8300},
        session_ttl_min_ns=ttl_min_ns,
    )


@asynccontextmanager
async def cluster(
    nodes: Sequence[str] = (SERVER,),
    *,
    bind: str = "127.0.0.1:0",
    network: MemoryNetwork | None = None,
    session_ttl_min_ns: int = 10_000_000_000,
    limits: HTTPLimits | None = None,
    ae_interval: float = 60.0,
) -> AsyncIterator[Cluster]:
    """A catalog server and an HTTP agent per name in ``nodes`` (the first is the server),
    each serving the HTTP API on ``bind`` (loopback TCP by default; a memory address with
    ``network``)."""
    log = CaptureLog()
    endpoints = Endpoints()
    holder: list[Cluster] = []
    catalog = install(
        endpoints,
        datacenter=DC,
        node_name=SERVER,
        members=lambda: holder[0].members() if holder else [],
        server_address=lambda: SERVER_ADDR,
        logger=log,
        session_ttl_min_ns=session_ttl_min_ns,
        wan_members=lambda: [member(f"{SERVER}.{DC}", server=True)],
        wan_coordinate=lambda _name: Coordinate.origin(),
    )
    install_operator(
        endpoints,
        None,
        facts=catalog.facts,
        forwarder=catalog.forwarder,
        datacenter=DC,
        members=lambda: holder[0].members() if holder else [],
    )
    port = ServerPort("127.0.0.1:0", endpoints, None, log)
    env = Cluster(catalog, port, log)
    holder.append(env)
    hubs: list[LogHub] = []
    async with trio.open_nursery() as nursery:
        for position, name in enumerate(nodes):
            server = position == 0
            info = _agent_info(name, server, session_ttl_min_ns)
            hub = LogHub(sink=_NullSink())
            hubs.append(hub)
            state = LocalState(
                name, datacenter=DC, address="127.0.0.1", check_update_interval=300.0
            )
            agent_ref: list[FakeAgent] = []

            async def call(method: str, args: Any, _ref: list[FakeAgent] = agent_ref) -> Any:
                return await _ref[0].call(method, args)

            local = LocalAgent(
                state,
                call,
                logger=hub.logger("agent"),
                members=lambda: len(env.agents),
                consul_service_port=8300 if server else None,
                ae_interval=ae_interval,
            )
            agent = FakeAgent(info, local, port, hub, env)
            agent_ref.append(agent)
            env.agents.append(agent)
        await env.catalog.duties.reconcile()
        await nursery.start(env.catalog.duties.run)
        for agent in env.agents:
            await nursery.start(agent.local.run)
            await agent.local.full_sync()
            target = bind if network is None else f"memory://{agent.info.node_name}-http"
            server_http = build_http_server(
                target,
                agent,
                agent.hub.logger("agent.http"),
                limits,
                **({"network": network} if network is not None else {}),
            )
            address = await nursery.start(server_http.run)
            env.servers.append(server_http)
            env.addresses.append(address)
        try:
            yield env
        finally:
            for hub in hubs:
                hub.close()
            nursery.cancel_scope.cancel()


class _NullSink:
    def write(self, _text: str) -> int:
        return 0

    def flush(self) -> None:
        return None


# ------------------------------------------------------------------ a small Trio HTTP client


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def index(self) -> int:
        return int(self.headers["x-consul-index"])


class TrioHTTP:
    """One keep-alive HTTP/1.1 connection (h11), for tests on the trio clock."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, network: MemoryNetwork | None, address: Address) -> TrioHTTP:
        if network is not None:
            stream: trio.abc.Stream = await network.connect(address.path)
        else:
            stream = await trio.open_tcp_stream(address.host, address.port)
        return cls(stream)

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> Reply:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        all_headers = [("Host", "agent"), ("Content-Length", str(len(body))), *headers]
        data = self.conn.send(h11.Request(method=method, target=target, headers=all_headers))
        data += self.conn.send(h11.Data(data=body)) if body else b""
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        status = 0
        reply_headers: dict[str, str] = {}
        chunks = bytearray()
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError:
                return Reply(status, reply_headers, bytes(chunks))  # closed before the end
            if event is h11.NEED_DATA:
                try:
                    self.conn.receive_data(await self.stream.receive_some(65536))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.conn.receive_data(b"")
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                reply_headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return Reply(status, reply_headers, bytes(chunks))

    async def aclose(self) -> None:
        await self.stream.aclose()
