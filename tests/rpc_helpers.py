"""Helpers for agent RPC tests: start agents on any transport, speak raw frames to them."""

from __future__ import annotations

import io
import itertools
import os
import tempfile
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import msgpack
import trio

from agentrpc.agent import Agent
from agentrpc.client import Client
from agentrpc.config import load_config
from agentrpc.gossip.transport import MemoryGossipNetwork
from agentrpc.membership.pool import MembershipPool
from agentrpc.protocol.codec import Response, ResponseDecoder
from agentrpc.transports import DEFAULT_NETWORK, Address, MemoryNetwork, connect

TRANSPORTS = ("tcp", "unix", "memory")
_names = itertools.count()
_networks: weakref.WeakKeyDictionary[Agent, MemoryNetwork] = weakref.WeakKeyDictionary()
"""The ``memory://`` network each agent of :func:`running_agent` listens on."""
_sinks: weakref.WeakKeyDictionary[Agent, io.StringIO] = weakref.WeakKeyDictionary()


NO_HTTP_NO_DNS: Final = {"http_addr": "", "dns_addr": ""}
"""Settings that keep an agent of the tests off Consul's HTTP and DNS ports (8500, 8600),
which agents take by default: tests run one after another, several agents each."""


def rpc_addr_for(transport: str) -> str:
    if transport == "tcp":
        return "127.0.0.1:0"
    if transport == "unix":
        directory = tempfile.mkdtemp(prefix="agentrpc-test-")
        return f"unix://{os.path.join(directory, 'rpc.sock')}"
    return f"memory://agent-{os.getpid()}-{next(_names)}"


@asynccontextmanager
async def running_agent(
    transport: str = "memory",
    *,
    lan: MembershipPool | None = None,
    files: Sequence[str] = (),
    network: MemoryNetwork | None = None,
    gossip_network: MemoryGossipNetwork | None = None,
    **settings: Any,
) -> AsyncIterator[Agent]:
    """An agent serving on ``transport``, shut down (and awaited) on exit. Its gossip runs
    over an in-process network (a fresh one unless ``gossip_network`` is shared); a
    ``memory://`` RPC address lives on ``network`` (the process-wide one by default), which
    :func:`memory_network_of` gives back. The HTTP API and DNS are off unless the test names
    ``http_addr`` / ``dns_addr`` (their defaults, 8500 and 8600, are real ports)."""
    overrides: dict[str, Any] = {
        "node_name": "node1",
        "rpc_addr": rpc_addr_for(transport),
        "serf_lan_addr": "127.0.0.1:8301",
        "serf_wan_addr": "127.0.0.1:8302",
        "server_addr": "127.0.0.1:0",
        "log_level": "TRACE",
        **NO_HTTP_NO_DNS,
        **settings,
    }
    config = load_config(files, overrides)
    network = DEFAULT_NETWORK if network is None else network
    sink = io.StringIO()
    agent = Agent(
        config,
        overrides=overrides,
        log_sink=sink,
        lan=lan,
        network=network,
        gossip_network=gossip_network or MemoryGossipNetwork(),
    )
    _networks[agent] = network
    _sinks[agent] = sink
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        try:
            yield agent
        finally:
            agent.shutdown()


def log_of(agent: Agent) -> str:
    """What an agent of :func:`running_agent` has logged so far."""
    return _sinks[agent].getvalue()


def memory_network_of(agent: Agent) -> MemoryNetwork:
    """The network a ``memory://`` address of ``agent`` (from :func:`running_agent`) is on."""
    return _networks[agent]


def client_for(agent: Agent, *, token: str = "") -> Client:
    """A :class:`Client` for ``agent``'s first RPC address, whatever its transport."""
    return Client(agent.rpc_addresses[0], network=memory_network_of(agent), token=token)


class RawConnection:
    """Speaks the wire protocol by hand: send any objects, read decoded responses."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = ResponseDecoder()
        self.raw = bytearray()
        self.seq = 0
        self._leftover: list[Response] = []

    @classmethod
    async def open(cls, agent: Agent) -> RawConnection:
        address: Address = agent.rpc_addresses[0]
        if address.kind == "memory":
            return cls(await connect(address, network=memory_network_of(agent)))
        return cls(await connect(address))

    async def send_objects(self, *objects: Any) -> None:
        await self.stream.send_all(b"".join(msgpack.packb(obj) for obj in objects))

    async def send_bytes(self, data: bytes) -> None:
        await self.stream.send_all(data)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def request(
        self, command: str, body: Any = None, *, reply_body: bool = False, seq: int | None = None
    ) -> int:
        seq = self.next_seq() if seq is None else seq
        header = {"Command": command, "Seq": seq, "Token": ""}
        self.decoder.expect(seq, body=reply_body, stream=command == "monitor")
        await self.send_objects(header, *([] if body is None else [body]))
        return seq

    async def handshake(self) -> None:
        seq = await self.request("handshake", {"Version": 1})
        (response,) = await self.read(1)
        assert response == Response(seq, "", None)

    async def call(self, command: str, body: Any = None, *, reply_body: bool = False) -> Response:
        seq = await self.request(command, body, reply_body=reply_body)
        (response,) = await self.read(1)
        assert response.seq == seq
        return response

    async def read(self, count: int) -> list[Response]:
        """Exactly ``count`` responses (fails on EOF before that)."""
        responses: list[Response] = list(self._pending())
        while len(responses) < count:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError(f"connection closed after {len(responses)} of {count} responses")
            self.raw += data
            self.decoder.feed(data)
            responses.extend(self.decoder)
        self._leftover = responses[count:]
        return responses[:count]

    def _pending(self) -> list[Response]:
        pending = self._leftover
        self._leftover = []
        return pending

    async def read_until_eof(self) -> list[Response]:
        responses = self._pending()
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            self.raw += data
            self.decoder.feed(data)
            responses.extend(self.decoder)
        return responses

    async def aclose(self) -> None:
        await self.stream.aclose()


async def poll_until(predicate: Callable[[], bool]) -> None:
    """Wait for a condition that only real sockets can bring about (no event to wait on):
    bounded to 5 s, checked every 10 ms."""
    with trio.fail_after(5):
        while not predicate():  # noqa: ASYNC110 - real I/O, nothing to wait on
            await trio.sleep(0.01)
