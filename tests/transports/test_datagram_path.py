"""The datagram fast path: UDP sent and received at once when the kernel is ready, with the
schedule and cancel points, errors and closing of trio's own socket methods where they matter.
Real loopback UDP sockets."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from agentrpc.gossip.contract import GossipAddress
from agentrpc.gossip.transport import UdpTcpTransport
from agentrpc.transports.fastpath import READS_BEFORE_YIELD, DatagramPath

HOST = "127.0.0.1"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A bound receiver and a sender, both non-blocking."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind((HOST, 0))
    sender.bind((HOST, 0))
    receiver.setblocking(False)
    sender.setblocking(False)
    with receiver, sender:
        yield receiver, sender


async def test_datagrams_go_both_ways_and_a_waiting_receive_wakes(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    receiver, sender = pair
    inbound, outbound = DatagramPath(receiver), DatagramPath(sender)
    port = receiver.getsockname()[1]
    await outbound.send_to(b"one", HOST, port)
    data, source = await inbound.receive_from(100)
    assert (data, source) == (b"one", sender.getsockname())
    async with trio.open_nursery() as nursery:
        got: list[bytes] = []

        async def receive() -> None:
            got.append((await inbound.receive_from(100))[0])

        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # waiting in the event loop on an empty socket
        await outbound.send_to(b"two", HOST, port)
    assert got == [b"two"]


async def test_a_ready_datagram_is_no_schedule_point_until_a_long_run(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    receiver, sender = pair
    inbound = DatagramPath(receiver)
    for index in range(READS_BEFORE_YIELD + 1):
        sender.sendto(b"%d" % index, receiver.getsockname())
    ran: list[int] = []
    async with trio.open_nursery() as nursery:

        async def other() -> None:
            ran.append(1)

        nursery.start_soon(other)
        for index in range(READS_BEFORE_YIELD):
            assert (await inbound.receive_from(100))[0] == b"%d" % index
        assert ran == []  # 64 datagrams read and the other task has not run yet
        with trio.testing.assert_checkpoints():  # the 65th lets the others run first
            assert (await inbound.receive_from(100))[0] == b"%d" % READS_BEFORE_YIELD


async def test_receive_and_send_are_cancel_points(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    receiver, sender = pair
    sender.sendto(b"waiting", receiver.getsockname())
    inbound, outbound = DatagramPath(receiver), DatagramPath(sender)
    with trio.CancelScope() as scope:
        scope.cancel()
        await inbound.receive_from(100)
    assert scope.cancelled_caught
    with trio.CancelScope() as scope:
        scope.cancel()
        await outbound.send_to(b"never", HOST, receiver.getsockname()[1])
    assert scope.cancelled_caught
    assert (await inbound.receive_from(100))[0] == b"waiting"  # the datagram stayed queued
    with pytest.raises(BlockingIOError):
        receiver.recvfrom(100)  # and the cancelled send sent nothing


async def test_a_name_is_refused_not_resolved(pair: tuple[socket.socket, socket.socket]) -> None:
    _, sender = pair
    with pytest.raises(OSError) as raised:
        await DatagramPath(sender).send_to(b"x", "localhost", 9)
    assert raised.value.errno == errno.EINVAL


async def test_a_full_send_buffer_waits_for_writable(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    receiver, _ = pair

    class FullOnce(socket.socket):
        refused = 0

        def sendto(self, *args: object) -> int:  # type: ignore[override]
            if not self.refused:
                self.refused += 1
                raise BlockingIOError(errno.EAGAIN, "full")
            return super().sendto(*args)  # type: ignore[call-overload, no-any-return]

    with FullOnce(socket.AF_INET, socket.SOCK_DGRAM) as full:
        full.setblocking(False)
        await DatagramPath(full).send_to(b"later", HOST, receiver.getsockname()[1])
        assert full.refused == 1
    assert (await DatagramPath(receiver).receive_from(100))[0] == b"later"


async def test_closing_wakes_a_waiting_receive_and_fails_the_next_calls() -> None:
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    owner = trio.socket.from_stdlib_socket(raw)
    await owner.bind((HOST, 0))
    path = DatagramPath(raw)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            raised: list[BaseException] = []

            async def receive() -> None:
                try:
                    await path.receive_from(100)
                except trio.ClosedResourceError as exc:
                    raised.append(exc)

            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            owner.close()
    assert len(raised) == 1
    with pytest.raises(trio.ClosedResourceError):
        await path.receive_from(100)
    with pytest.raises(trio.ClosedResourceError):
        await path.send_to(b"x", HOST, 9)


async def test_the_gossip_udp_side_counts_refused_datagrams_and_ends_at_close() -> None:
    packets, listener = await UdpTcpTransport().bind(GossipAddress(HOST, 0))
    try:
        await packets.send_to(b"to a name", GossipAddress("localhost", 9))
        assert packets.send_errors == 1
        await packets.send_to(b"to myself", packets.local_address)
        data, source = await packets.receive_from()
        assert (data, source) == (b"to myself", packets.local_address)
    finally:
        packets.close()
        await listener.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await packets.receive_from()
