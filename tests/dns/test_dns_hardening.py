"""Floods of each kind of bad input a DNS client can send, against a server answering from a
real catalog and logging through the agent's real log hub: a few lines a second per kind,
every peer string clipped, everything counted, and good clients still answered."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Awaitable, Callable

import dns.message
import dns.tsigkeyring
import pytest
import trio
from dns_helpers import catalog_env, running_dns

from agentrpc.dns.server import DNSLimits, DNSServer
from agentrpc.dns.settings import DNSConfig
from agentrpc.dns.wire import frame
from agentrpc.gossip.contract import GossipAddress
from agentrpc.gossip.transport import MemoryGossipNetwork, MemoryPacketConnection
from agentrpc.log_protocol import TRACE
from agentrpc.logs import LogHub

FLOOD = 300
SERVER = GossipAddress("127.0.0.1", 8600)


class Attacker:
    def __init__(self, network: MemoryGossipNetwork, packets: MemoryPacketConnection) -> None:
        self.network = network
        self.packets = packets

    async def udp(self, data: bytes) -> None:
        await self.packets.send_to(data, SERVER)

    async def tcp(self, data: bytes) -> None:
        stream = await self.network.transport().dial(SERVER)
        async with stream:
            await stream.send_all(data)
            await stream.receive_some(65536)


def _signed(i: int) -> bytes:
    query = dns.message.make_query(f"n{i}.node.consul.", "A")
    query.use_tsig(dns.tsigkeyring.from_text({"k.": "c2VjcmV0c2VjcmV0"}), keyname="k.")
    return query.to_wire()


def _long_name(i: int) -> bytes:
    labels = ".".join(["x" * 60] * 3)
    return dns.message.make_query(f"{i}.{labels}.consul.", "A").to_wire()


FLOODS: dict[str, Callable[[Attacker, int], Awaitable[None]]] = {
    "garbage": lambda a, i: a.udp(bytes([i % 256, 1, 1]) + b"\x7f" * 40),
    "short": lambda a, i: a.udp(b"\x00" * (i % 12)),
    "responses": lambda a, i: a.udp(
        dns.message.make_response(dns.message.make_query("a.consul.", "A")).to_wire()
    ),
    "signed": lambda a, i: a.udp(_signed(i)),
    "invalid-name": lambda a, i: a.udp(_long_name(i)),
    "unknown-datacenter": lambda a, i: a.udp(
        dns.message.make_query(f"web.service.{'d' * 60}{i}.consul.", "A").to_wire()
    ),
    "tcp-zero-length": lambda a, i: a.tcp(b"\x00\x00"),
    "tcp-garbage": lambda a, i: a.tcp(frame(b"\x01" * 30)),
}


@pytest.mark.parametrize("kind", sorted(FLOODS))
async def test_a_flood_of_each_kind_logs_a_few_lines_a_second(kind: str) -> None:
    env = catalog_env()
    await env.register("foo", "127.0.0.1")
    sink = io.StringIO()
    hub = LogHub(level=TRACE, sink=sink)
    network = MemoryGossipNetwork(queue_depth=4 * FLOOD)
    # The agent's real, throttled logger.
    logger = hub.logger("agent.dns")
    async with running_dns(env, transport=network.transport(), bind=str(SERVER), logger=logger) as (
        server,
        _address,
    ):
        packets, _ = await network.transport().bind(GossipAddress("127.0.0.2", 5353))
        attacker = Attacker(network, packets)
        before = len(sink.getvalue().splitlines())
        start = time.monotonic()
        for i in range(FLOOD):
            await FLOODS[kind](attacker, i)
        # A good client is answered after the flood (so every bad input was handled).
        good = dns.message.make_query("foo.node.consul.", "A")
        await packets.send_to(good.to_wire(), SERVER)
        with trio.fail_after(10):
            while True:
                data, _ = await packets.receive_from()
                reply = dns.message.from_wire(data)
                if reply.id == good.id and reply.answer:
                    break
        elapsed = time.monotonic() - start
        lines = sink.getvalue().splitlines()[before:]
        allowed = 3 * (1 + math.ceil(elapsed))
        assert len(lines) <= allowed, f"{len(lines)} lines for {FLOOD} inputs:\n" + "\n".join(
            lines[:10]
        )
        assert all(len(line) < 700 for line in lines), "a peer's string was not clipped"
        stats = server.stats
        dropped = stats.malformed + stats.ignored_responses + stats.ignored_signed
        if kind in ("garbage", "short", "responses", "signed", "tcp-zero-length", "tcp-garbage"):
            assert dropped == FLOOD
        if kind == "invalid-name":
            assert stats.nxdomain == FLOOD
        if kind == "unknown-datacenter":
            assert stats.servfail == FLOOD


async def test_a_tcp_connection_flood_past_the_cap_logs_once_a_second() -> None:
    env = catalog_env()
    sink = io.StringIO()
    hub = LogHub(level=TRACE, sink=sink)
    network = MemoryGossipNetwork(backlog=4 * FLOOD)
    server = DNSServer(
        DNSConfig(),
        datacenter="dc1",
        call=env.call,
        logger=hub.logger("agent.dns"),
        limits=DNSLimits(max_tcp_connections=4),
        transport=network.transport(),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, SERVER)
        transport = network.transport()
        held = [await transport.dial(SERVER) for _ in range(4)]
        start = time.monotonic()
        for _ in range(FLOOD):
            stream = await transport.dial(SERVER)
            assert await stream.receive_some(10) == b""
        elapsed = time.monotonic() - start
        refused = [line for line in sink.getvalue().splitlines() if "too many TCP" in line]
        assert 1 <= len(refused) <= 1 + math.ceil(elapsed)
        assert server.stats.tcp_refused == FLOOD
        assert server.stats.tcp_connections == 4
        for stream in held:
            await stream.aclose()
        nursery.cancel_scope.cancel()
