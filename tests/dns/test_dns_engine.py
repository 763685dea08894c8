"""The DNS server engine over the in-memory network on trio's autojump clock: its bounds (the
UDP queue, the TCP connection cap, idle and write timeouts, slow catalog calls), one bad
connection never affecting others, and shutdown by cancellation or ``shutdown()``."""

from __future__ import annotations

import random
from typing import Any

import dns.message
import dns.rcode
import trio
import trio.testing

from agentrpc.catalog.structs import Node
from agentrpc.dns.server import DNSLimits, DNSServer
from agentrpc.dns.settings import DNSConfig
from agentrpc.dns.wire import frame
from agentrpc.gossip.contract import GossipAddress
from agentrpc.gossip.transport import MemoryGossipNetwork
from agentrpc.log_protocol import CaptureLog
from agentrpc.serverport.endpoints import RemoteError

SERVER = GossipAddress("127.0.0.1", 8600)
CLIENT = GossipAddress("127.0.0.2", 5353)


class FakeCatalog:
    """``Catalog.NodeServices`` answers ``10.0.0.1`` for every node, after ``gate`` is set
    (when one is given); ``fail`` makes every call a RemoteError."""

    def __init__(self) -> None:
        self.gate: trio.Event | None = None
        self.calls = 0
        self.waiting = 0
        self.fail = ""

    async def call(self, method: str, args: Any) -> Any:
        self.calls += 1
        if self.gate is not None:
            self.waiting += 1
            try:
                await self.gate.wait()
            finally:
                self.waiting -= 1
        else:
            await trio.lowlevel.checkpoint()
        if self.fail:
            raise RemoteError(method, self.fail)
        node = Node(args["Node"], "10.0.0.1").to_wire()
        return {"Index": 1, "KnownLeader": True, "LastContact": 0, "NodeServices": {"Node": node}}


def make_server(
    catalog: FakeCatalog, network: MemoryGossipNetwork, log: CaptureLog, **limits: Any
) -> DNSServer:
    return DNSServer(
        DNSConfig(),
        datacenter="dc1",
        call=catalog.call,
        logger=log,
        limits=DNSLimits(**limits),
        transport=network.transport(),
        rng=random.Random(1),
        clock=lambda: 1_700_000_000.0,
    )


def q(name: str = "foo.node.consul.") -> dns.message.Message:
    return dns.message.make_query(name, "A")


async def read_reply(stream: trio.abc.Stream) -> dns.message.Message | None:
    data = b""
    while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2]):
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        data += chunk
    return dns.message.from_wire(data[2:])


async def test_udp_queries_past_the_workers_and_the_queue_are_dropped_and_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryGossipNetwork()
    catalog, log = FakeCatalog(), CaptureLog()
    catalog.gate = trio.Event()
    server = make_server(catalog, network, log, udp_workers=2, udp_queue=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, SERVER)
        client, _ = await network.transport().bind(CLIENT)
        queries = [q(f"n{i}.node.consul.") for i in range(10)]
        for query in queries:
            await client.send_to(query.to_wire(), SERVER)
        await trio.testing.wait_all_tasks_blocked()
        assert catalog.waiting == 2  # one call per worker, no more
        assert server.stats.udp_overflow == 10 - 2 - 3
        assert log.has("every worker is busy")
        catalog.gate.set()
        ids = set()
        for _ in range(5):
            data, _ = await client.receive_from()
            ids.add(dns.message.from_wire(data).id)
        assert ids == {query.id for query in queries[:5]}
        assert catalog.calls == 5
        nursery.cancel_scope.cancel()


async def test_a_slow_catalog_call_is_answered_servfail(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryGossipNetwork()
    catalog, log = FakeCatalog(), CaptureLog()
    catalog.gate = trio.Event()  # never set
    server = make_server(catalog, network, log, call_timeout=3.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, SERVER)
        client, _ = await network.transport().bind(CLIENT)
        started = trio.current_time()
        await client.send_to(q().to_wire(), SERVER)
        data, _ = await client.receive_from()
        assert dns.message.from_wire(data).rcode() == dns.rcode.SERVFAIL
        assert trio.current_time() - started >= 3.0
        assert log.has("dns: rpc error: Catalog.NodeServices timed out")
        catalog.fail = "No cluster leader"
        catalog.gate.set()
        await client.send_to(q().to_wire(), SERVER)
        data, _ = await client.receive_from()
        assert dns.message.from_wire(data).rcode() == dns.rcode.SERVFAIL
        assert log.has("dns: rpc error: No cluster leader")
        assert server.stats.servfail == 2
        nursery.cancel_scope.cancel()


async def test_tcp_idle_and_half_sent_connections_are_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryGossipNetwork()
    catalog, log = FakeCatalog(), CaptureLog()
    server = make_server(catalog, network, log, tcp_idle_timeout=8.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, SERVER)
        transport = network.transport()
        silent = await transport.dial(SERVER)
        half = await transport.dial(SERVER)
        await half.send_all(frame(q().to_wire())[:7])
        busy = await transport.dial(SERVER)
        # A connection that asks something every 5 s stays open past the idle timeout.
        for _ in range(4):
            await trio.sleep(5)
            await busy.send_all(frame(q().to_wire()))
            reply = await read_reply(busy)
            assert reply is not None and reply.rcode() == 0
        assert await silent.receive_some(10) == b""
        assert await half.receive_some(10) == b""
        assert server.stats.tcp_idle_closed == 2
        assert server.stats.tcp_connections == 1
        nursery.cancel_scope.cancel()


async def test_tcp_connections_past_the_cap_are_closed_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryGossipNetwork()
    catalog, log = FakeCatalog(), CaptureLog()
    server = make_server(catalog, network, log, max_tcp_connections=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, SERVER)
        transport = network.transport()
        first, second = await transport.dial(SERVER), await transport.dial(SERVER)
        await trio.testing.wait_all_tasks_blocked()
        extra = [await transport.dial(SERVER) for _ in range(5)]
        for stream in extra:
            assert await stream.receive_some(10) == b""
        assert server.stats.tcp_refused == 5
        # Each of those lines went through the throttle (one a second per kind in the agent).
        refused = [line for line in log.lines if "too many TCP connections" in line]
        assert len(refused) == log.keys.count("dns:tcp-refused") == 5
        for stream in (first, second):
            await stream.send_all(frame(q().to_wire()))
            reply = await read_reply(stream)
            assert reply is not None and reply.rcode() == 0
        # A slot freed is a slot for the next client.
        await first.aclose()
        await trio.testing.wait_all_tasks_blocked()
        third = await transport.dial(SERVER)
        await third.send_all(frame(q().to_wire()))
        assert await read_reply(third) is not None
        nursery.cancel_scope.cancel()


async def test_bad_tcp_input_closes_only_that_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryGossipNetwork()
    catalog, log = FakeCatalog(), CaptureLog()
    server = make_server(catalog, network, log)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, SERVER)
        transport = network.transport()
        good = await transport.dial(SERVER)
        for bad_bytes in (b"\x00\x00", frame(b"\x01" * 40), frame(b"\x01\x02\x03")):
            bad = await transport.dial(SERVER)
            await bad.send_all(bad_bytes)
            assert await bad.receive_some(10) == b""
        await good.send_all(frame(q().to_wire()))
        assert await read_reply(good) is not None
        assert server.stats.malformed == 3
        nursery.cancel_scope.cancel()


async def test_a_tcp_client_that_never_reads_is_closed_by_the_write_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryGossipNetwork()
    catalog, log = FakeCatalog(), CaptureLog()
    server = make_server(catalog, network, log, tcp_write_timeout=2.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, SERVER)
        stream = await network.transport().dial(SERVER)
        await stream.send_all(
            b"".join(frame(q(f"n{i}.node.consul.").to_wire()) for i in range(200))
        )
        await trio.sleep(3.0)  # virtual time past the write timeout
        assert server.stats.tcp_write_timeouts == 1
        # The memory stream buffers 64 replies; the server gave up on the next one.
        assert server.stats.tcp_queries <= 66
        assert server.stats.tcp_connections == 0
        nursery.cancel_scope.cancel()


async def test_shutdown_and_cancellation_end_everything(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryGossipNetwork()
    catalog, log = FakeCatalog(), CaptureLog()
    catalog.gate = trio.Event()  # calls in flight when it stops
    server = make_server(catalog, network, log)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, SERVER)
        client, _ = await network.transport().bind(CLIENT)
        await client.send_to(q().to_wire(), SERVER)
        stream = await network.transport().dial(SERVER)
        await stream.send_all(frame(q().to_wire()))
        await trio.testing.wait_all_tasks_blocked()
        assert catalog.waiting == 2
        server.shutdown()
    # run() returned: the in-flight calls were cancelled, the connection closed, the address
    # is free to bind again.
    assert catalog.waiting == 0
    assert await stream.receive_some(10) == b""
    assert log.has("dns: stopped listening on 127.0.0.1:8600")
    again = make_server(FakeCatalog(), network, log)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            assert await nursery.start(again.run, SERVER) == SERVER
            scope.cancel()


async def test_a_bug_while_answering_is_servfail_for_that_query_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryGossipNetwork()
    catalog, log = FakeCatalog(), CaptureLog()

    async def buggy(method: str, args: Any) -> Any:
        if args["Node"] == "boom":
            raise KeyError("a bug")
        return await catalog.call(method, args)

    server = DNSServer(
        DNSConfig(),
        datacenter="dc1",
        call=buggy,
        logger=log,
        transport=network.transport(),
        rng=random.Random(1),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, SERVER)
        client, _ = await network.transport().bind(CLIENT)
        for name in ("boom.node.consul.", "fine.node.consul."):
            await client.send_to(q(name).to_wire(), SERVER)
            data, _ = await client.receive_from()
            reply = dns.message.from_wire(data)
            assert reply.rcode() == (
                dns.rcode.SERVFAIL if name.startswith("boom") else dns.rcode.NOERROR
            )
        assert server.stats.failures == 1
        assert log.has("ERR dns: answering a query from 127.0.0.2:5353 failed: KeyError")
        nursery.cancel_scope.cancel()
