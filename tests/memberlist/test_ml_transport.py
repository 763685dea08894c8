"""Gossip transports: UDP+TCP on one loopback port, and the in-memory network with faults."""

from __future__ import annotations

import errno
import random
import socket

import pytest
import trio
import trio.testing

from agentrpc.gossip.contract import GossipAddress
from agentrpc.gossip.transport import (
    MemoryGossipNetwork,
    UdpTcpTransport,
)

LOOPBACK = GossipAddress("127.0.0.1", 0)


# --------------------------------------------------------------------------------------------
# UDP + TCP.


async def test_port_zero_binds_udp_and_tcp_on_the_same_free_port() -> None:
    transport = UdpTcpTransport()
    packets, listener = await transport.bind(LOOPBACK)
    try:
        local = packets.local_address
        assert local.host == "127.0.0.1" and local.port > 0
        # TCP: a dial to the same port is accepted.
        async with trio.open_nursery() as nursery:

            async def accept_one() -> None:
                stream, peer = await listener.accept()
                assert peer.host == "127.0.0.1"
                async with stream:
                    await stream.send_all(b"hello over tcp")

            nursery.start_soon(accept_one)
            client = await transport.dial(local)
            async with client:
                with trio.fail_after(5):
                    assert await client.receive_some(100) == b"hello over tcp"
        # UDP: a datagram to the same port arrives, with its source.
        other, other_listener = await UdpTcpTransport().bind(LOOPBACK)
        try:
            await other.send_to(b"hello over udp", local)
            with trio.fail_after(5):
                data, source = await packets.receive_from()
            assert data == b"hello over udp"
            assert source == other.local_address
        finally:
            other.close()
            await other_listener.aclose()
    finally:
        packets.close()
        await listener.aclose()


async def test_udp_socket_asks_for_a_large_receive_buffer_and_reads_large_packets() -> None:
    packets, listener = await UdpTcpTransport().bind(LOOPBACK)
    other, other_listener = await UdpTcpTransport().bind(LOOPBACK)
    try:
        buffer = packets._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert buffer >= 212992  # Linux's default; 2 MB where rmem_max allows
        big = bytes(60000)
        await other.send_to(big, packets.local_address)
        with trio.fail_after(5):
            data, _ = await packets.receive_from()
        assert data == big
    finally:
        for p, listen in ((packets, listener), (other, other_listener)):
            p.close()
            await listen.aclose()


async def test_explicit_port_in_use_for_tcp_is_an_error() -> None:
    blocker = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    try:
        with pytest.raises(OSError):
            await UdpTcpTransport().bind(GossipAddress("127.0.0.1", port))
    finally:
        blocker.close()


async def test_bind_needs_an_ip_literal_and_dial_failures_are_oserrors() -> None:
    with pytest.raises(OSError):
        await UdpTcpTransport().bind(GossipAddress("localhost", 0))
    packets, listener = await UdpTcpTransport().bind(LOOPBACK)
    free = packets.local_address
    packets.close()
    await listener.aclose()
    with pytest.raises(OSError):
        await UdpTcpTransport().dial(free)


async def test_send_to_nowhere_does_not_raise() -> None:
    packets, listener = await UdpTcpTransport().bind(LOOPBACK)
    try:
        await packets.send_to(b"x", GossipAddress("127.0.0.1", 9))
        await packets.send_to(bytes(70000), GossipAddress("127.0.0.1", 9))  # EMSGSIZE
        assert packets.send_errors >= 1
    finally:
        packets.close()
        await listener.aclose()


# --------------------------------------------------------------------------------------------
# In memory.


async def test_memory_datagrams_and_streams(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryGossipNetwork(rng=random.Random(1))
    a_packets, a_listener = await network.transport().bind(GossipAddress("127.0.0.1", 7946))
    b_transport = network.transport()
    b_packets, _ = await b_transport.bind(GossipAddress("127.0.0.2", 0))
    assert b_packets.local_address.host == "127.0.0.2" and b_packets.local_address.port > 0
    await b_packets.send_to(b"ping", a_packets.local_address)
    assert await a_packets.receive_from() == (b"ping", b_packets.local_address)

    stream = await b_transport.dial(a_packets.local_address)
    server, origin = await a_listener.accept()
    assert origin.host == "127.0.0.2"
    await stream.send_all(b"over a stream")
    assert await server.receive_some(100) == b"over a stream"

    with pytest.raises(OSError) as info:
        await network.transport().bind(GossipAddress("127.0.0.1", 7946))
    assert info.value.errno == errno.EADDRINUSE
    with pytest.raises(ConnectionRefusedError):
        await b_transport.dial(GossipAddress("127.0.0.3", 7946))
    # Sending to nobody is silent.
    await b_packets.send_to(b"lost", GossipAddress("127.0.0.3", 7946))
    assert network.packets_dropped == 1


async def test_memory_blocking_partitions_and_loss(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryGossipNetwork(rng=random.Random(1))
    transports = [network.transport() for _ in range(3)]
    (p1, _), (p2, _), (p3, _) = [
        await t.bind(GossipAddress(f"127.0.0.{i}", 7946)) for i, t in enumerate(transports, 1)
    ]

    async def delivered(source: object, target: GossipAddress) -> bool:
        assert hasattr(source, "send_to")
        before = network.packets_delivered
        await source.send_to(b"x", target)
        return network.packets_delivered > before

    network.partition(["127.0.0.1"], ["127.0.0.2", "127.0.0.3"])
    assert not await delivered(p1, p2.local_address)
    assert not await delivered(p3, p1.local_address)
    assert await delivered(p2, p3.local_address)
    with pytest.raises(OSError):
        await transports[1].dial(p1.local_address)
    stream = await transports[2].dial(p2.local_address)  # same side: fine
    await stream.aclose()
    network.heal()
    assert await delivered(p1, p2.local_address)

    network.block("127.0.0.1", "127.0.0.2", streams=False)
    assert not await delivered(p1, p2.local_address)
    assert network.is_blocked(p1.local_address, p2.local_address)
    assert not network.is_blocked(p1.local_address, p2.local_address, stream=True)
    network.unblock("127.0.0.1", "127.0.0.2")
    assert await delivered(p1, p2.local_address)

    network.block("127.0.0.3:7946", "127.0.0.1:7946", both_ways=False)
    assert not await delivered(p3, p1.local_address)
    assert await delivered(p1, p3.local_address)
    network.heal()

    network.drop_rate = 1.0
    assert not await delivered(p1, p2.local_address)
    network.drop_rate = 0.0


async def test_memory_queue_overflow_drops_and_close_unregisters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryGossipNetwork(queue_depth=2)
    a, a_listener = await network.transport().bind(GossipAddress("127.0.0.1", 7946))
    b, _ = await network.transport().bind(GossipAddress("127.0.0.2", 7946))
    for _ in range(5):
        await b.send_to(b"x", a.local_address)
    assert network.packets_delivered == 2 and network.packets_dropped == 3
    # A stream dialled but never accepted is closed when the listener goes away.
    pending = await network.transport().dial(a.local_address)
    a.close()
    await a_listener.aclose()
    assert await pending.receive_some(10) == b""
    with pytest.raises(trio.ClosedResourceError):
        await a.receive_from()
    with pytest.raises(ConnectionRefusedError):
        await network.transport().dial(a.local_address)
    again, again_listener = await network.transport().bind(GossipAddress("127.0.0.1", 7946))
    again.close()
    await again_listener.aclose()
