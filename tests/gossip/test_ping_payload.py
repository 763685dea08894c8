"""Coordinates on memberlist's pings: our acks carry the ping delegate's payload, our probes
hand a peer's payload and the RTT to it, and serf's coordinate delegate learns from them.

The engine is seen from raw peers on the in-memory network under the autojump clock (so an
RTT is exactly the delay the raw peer chose); :class:`SerfCoordinates` is also driven directly.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from agentrpc.gossip.contract import GossipAddress, NodeInfo, NodeState, PingDelegate
from agentrpc.gossip.coordinate import (
    Coordinate,
    CoordinateConfig,
    decode_ping_payload,
    encode_ping_payload,
)
from agentrpc.gossip.memberlist import Memberlist, MemberlistConfig
from agentrpc.gossip.messages import (
    AckResp,
    Alive,
    IndirectPingReq,
    MessageType,
    Ping,
    decode_body,
    encode_message,
)
from agentrpc.gossip.packet import decode_packet
from agentrpc.gossip.profiles import LAN
from agentrpc.gossip.serf import MemberEvent, MemberEventType, MemberStatus, SerfMember
from agentrpc.gossip.serf_coordinates import SerfCoordinates
from agentrpc.gossip.serf_messages import encode_tags
from agentrpc.gossip.stream import StreamEncoder, StreamReader
from agentrpc.gossip.transport import MemoryGossipNetwork, MemoryPacketConnection
from agentrpc.log_protocol import ERR, TRACE, CaptureLog, NullLog

NODE1 = GossipAddress("127.0.0.1", 7946)
PEER = GossipAddress("127.0.0.99", 7946)
VSN = (1, 5, 2, 2, 5, 4)


class Delegate:
    """Serf-style Meta, nothing else."""

    def node_meta(self, limit: int) -> bytes:
        return encode_tags({"role": "test"})

    def notify_message(self, payload: bytes) -> None:
        pass

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        return []

    def has_broadcasts(self) -> bool:
        return False

    def local_state(self, join: bool) -> bytes:
        return b""

    def merge_remote_state(self, state: bytes, join: bool) -> None:
        pass


class Events:
    def notify_join(self, node: NodeInfo) -> None:
        pass

    def notify_leave(self, node: NodeInfo) -> None:
        pass

    def notify_update(self, node: NodeInfo) -> None:
        pass


class RecordingPing:
    """A ping delegate with a fixed payload that records every completed probe."""

    def __init__(self, payload: bytes = b"\x01ours") -> None:
        self.payload = payload
        self.completed: list[tuple[str, float, bytes]] = []

    def ack_payload(self) -> bytes:
        return self.payload

    def notify_ping_complete(self, node: NodeInfo, rtt: float, payload: bytes) -> None:
        self.completed.append((node.name, rtt, payload))


@pytest.fixture
def network() -> MemoryGossipNetwork:
    return MemoryGossipNetwork(rng=random.Random(3))


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


@pytest.fixture
async def peer(network: MemoryGossipNetwork) -> AsyncIterator[MemoryPacketConnection]:
    """A raw UDP endpoint at 127.0.0.99:7946."""
    packets, listener = await network.transport().bind(PEER)
    yield packets
    packets.close()
    await listener.aclose()


async def start_node(
    nursery: trio.Nursery,
    network: MemoryGossipNetwork,
    ping: PingDelegate | None,
    *,
    name: str = "node1",
    address: GossipAddress = NODE1,
) -> Memberlist:
    memberlist = Memberlist(
        MemberlistConfig(name=name, bind=address, profile=LAN, ping=ping),
        Delegate(),
        Events(),
        NullLog(),
        network.transport(),
        random.Random(1),
    )
    await nursery.start(memberlist.run)
    return memberlist


async def next_message(
    packets: MemoryPacketConnection,
    want: MessageType,
    timeout: float = 2.0,  # noqa: ASYNC109
) -> bytes:
    """The body of the next message of type ``want`` that ``packets`` receives."""
    with trio.fail_after(timeout):
        while True:
            data, _ = await packets.receive_from()
            for msg_type, body in decode_packet(data).messages:
                if msg_type == want:
                    return body


def announce(name: str, address: GossipAddress) -> bytes:
    """An alive message for a raw peer, so that the node starts probing it."""
    ip = bytes(int(part) for part in address.host.split("."))
    return encode_message(Alive(1, name, ip, address.port, encode_tags({"role": "raw"}), VSN))


# --------------------------------------------------------------------------------------------
# Acks we send.


@pytest.mark.parametrize("with_delegate", [True, False])
async def test_our_ack_to_a_udp_ping_carries_the_delegates_payload(
    autojump_clock: trio.testing.MockClock,
    network: MemoryGossipNetwork,
    nursery: trio.Nursery,
    peer: MemoryPacketConnection,
    with_delegate: bool,
) -> None:
    await start_node(nursery, network, RecordingPing(b"\x01coordinate") if with_delegate else None)
    await peer.send_to(encode_message(Ping(7, "node1")), NODE1)
    ack = decode_body(AckResp, await next_message(peer, MessageType.ACK_RESP))
    assert ack == AckResp(7, b"\x01coordinate" if with_delegate else b"")


async def test_tcp_and_forwarded_acks_carry_no_payload(
    autojump_clock: trio.testing.MockClock,
    network: MemoryGossipNetwork,
    nursery: trio.Nursery,
    peer: MemoryPacketConnection,
) -> None:
    await start_node(nursery, network, RecordingPing(b"\x01coordinate"))
    # A TCP fallback ping is acked without a payload (memberlist: ackResp{SeqNo, nil}).
    stream = await network.transport().dial(NODE1)
    await stream.send_all(StreamEncoder().ping(Ping(12, "node1")))
    reader = StreamReader()
    with trio.fail_after(2):
        while (reply := reader.next_message()) is None:
            reader.feed(await stream.receive_some(65536))
    assert reply == AckResp(12)
    await stream.aclose()

    # An indirect probe: the target's ack (with its payload) is forwarded without one.
    target_address = GossipAddress("127.0.0.98", 7946)
    target, target_listener = await network.transport().bind(target_address)
    request = IndirectPingReq(
        seq_no=500, target=bytes([127, 0, 0, 98]), port=7946, node="target", nack=True
    )
    await peer.send_to(encode_message(request), NODE1)
    ping = decode_body(Ping, await next_message(target, MessageType.PING))
    await target.send_to(encode_message(AckResp(ping.seq_no, b"\x01target")), NODE1)
    forwarded = decode_body(AckResp, await next_message(peer, MessageType.ACK_RESP))
    assert forwarded == AckResp(500)
    target.close()
    await target_listener.aclose()


# --------------------------------------------------------------------------------------------
# Our probes.


async def answer_pings(
    packets: MemoryPacketConnection, delay: float, payload: bytes, count: int
) -> list[int]:
    """Answer ``count`` pings, each ``delay`` seconds after it arrived; their sequence numbers."""
    answered = []
    for _ in range(count):
        ping = decode_body(Ping, await next_message(packets, MessageType.PING, timeout=10))
        await trio.sleep(delay)
        await packets.send_to(encode_message(AckResp(ping.seq_no, payload)), NODE1)
        answered.append(ping.seq_no)
    return answered


async def test_a_direct_ack_reports_rtt_and_payload_to_the_delegate(
    autojump_clock: trio.testing.MockClock,
    network: MemoryGossipNetwork,
    nursery: trio.Nursery,
    peer: MemoryPacketConnection,
) -> None:
    ping_delegate = RecordingPing()
    memberlist = await start_node(nursery, network, ping_delegate)
    await peer.send_to(announce("peer", PEER), NODE1)
    await answer_pings(peer, 0.0123, b"\x01theirs", count=3)
    await trio.sleep(0.01)  # let the probe see the last ack
    assert len(ping_delegate.completed) == 3
    for name, rtt, payload in ping_delegate.completed:
        assert name == "peer"
        assert rtt == pytest.approx(0.0123, abs=1e-9)  # the autojump clock: exactly the delay
        assert payload == b"\x01theirs"
    assert memberlist.stats.failed_probes == 0


async def test_late_acks_count_for_the_probe_but_are_not_reported(
    autojump_clock: trio.testing.MockClock,
    network: MemoryGossipNetwork,
    nursery: trio.Nursery,
    peer: MemoryPacketConnection,
) -> None:
    ping_delegate = RecordingPing()
    memberlist = await start_node(nursery, network, ping_delegate)
    await peer.send_to(announce("peer", PEER), NODE1)
    # After the probe timeout (0.5 s) but within the interval: the probe succeeds anyway.
    await answer_pings(peer, LAN.probe_timeout + 0.2, b"\x01late", count=2)
    await trio.sleep(0.01)
    assert memberlist.stats.probes >= 2
    assert memberlist.stats.failed_probes == 0
    assert memberlist.node("peer") is not None
    assert memberlist.node("peer").state == NodeState.ALIVE  # type: ignore[union-attr]
    assert ping_delegate.completed == []


async def test_duplicate_acks_do_not_change_the_measurement(
    autojump_clock: trio.testing.MockClock,
    network: MemoryGossipNetwork,
    nursery: trio.Nursery,
    peer: MemoryPacketConnection,
) -> None:
    ping_delegate = RecordingPing()
    await start_node(nursery, network, ping_delegate)
    await peer.send_to(announce("peer", PEER), NODE1)
    ping = decode_body(Ping, await next_message(peer, MessageType.PING, timeout=10))
    await trio.sleep(0.002)
    first = encode_message(AckResp(ping.seq_no, b"\x01first"))
    second = encode_message(AckResp(ping.seq_no, b"\x01second"))
    await peer.send_to(first, NODE1)
    await peer.send_to(second, NODE1)
    await trio.sleep(0.01)
    assert ping_delegate.completed == [("peer", pytest.approx(0.002, abs=1e-9), b"\x01first")]


async def test_two_nodes_learn_each_others_coordinates(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    one = SerfCoordinates("node1", rng=random.Random(1))
    two = SerfCoordinates("node2", rng=random.Random(2))
    first = await start_node(nursery, network, one)
    await start_node(nursery, network, two, name="node2", address=GossipAddress("127.0.0.2", 7946))
    assert await first.join(["127.0.0.2:7946"]) == (1, [])
    with trio.fail_after(30):
        while True:
            if one.get_cached_coordinate("node2") and two.get_cached_coordinate("node1"):
                break
            await trio.sleep(0.5)
    # Each cached what the other sent: its coordinate at the time of that ack.
    seen_by_one = one.get_cached_coordinate("node2")
    assert seen_by_one is not None and seen_by_one.is_valid()
    assert one.stats.updates >= 1 and one.stats.rejected == 0
    assert one.coordinate != Coordinate.origin()  # it moved on what it learnt
    # Loopback in memory has no delay: the estimate is tiny, and finite.
    estimate = one.coordinate.distance_to(seen_by_one)
    assert math.isfinite(estimate) and 0 <= estimate < 0.01


# --------------------------------------------------------------------------------------------
# The serf delegate on its own.


def info(name: str) -> NodeInfo:
    return NodeInfo(name, bytes([127, 0, 0, 2]), 7946, b"", 1, NodeState.ALIVE, VSN, 0.0)


def peer_coordinate(seed: int) -> Coordinate:
    rng = random.Random(seed)
    return Coordinate(tuple(rng.uniform(-0.01, 0.01) for _ in range(8)), 0.5, 0.0, 1e-4)


def test_the_ack_payload_is_our_coordinate_re_encoded_when_it_moves() -> None:
    coordinates = SerfCoordinates("me", rng=random.Random(1))
    first = coordinates.ack_payload()
    assert first == encode_ping_payload(Coordinate.origin())
    assert coordinates.ack_payload() is first  # cached while the coordinate stays
    coordinates.notify_ping_complete(info("a"), 0.02, encode_ping_payload(peer_coordinate(1)))
    moved = coordinates.ack_payload()
    assert moved != first
    assert decode_ping_payload(moved) == coordinates.coordinate
    assert coordinates.get_cached_coordinate("me") == coordinates.coordinate
    assert coordinates.get_cached_coordinate("a") == peer_coordinate(1)
    assert coordinates.cached_coordinates() == {
        "a": peer_coordinate(1),
        "me": coordinates.coordinate,
    }
    assert coordinates.serf_stats() == {"coordinate_resets": "0"}


def test_unusable_payloads_are_logged_like_serf_and_change_nothing() -> None:
    log = CaptureLog()
    coordinates = SerfCoordinates("me", logger=log, rng=random.Random(1))
    good = encode_ping_payload(peer_coordinate(1))
    short = encode_ping_payload(Coordinate((0.1, 0.2), 0.5, 0.0, 1e-4))
    nan = encode_ping_payload(Coordinate((math.nan,) * 8, 0.5, 0.0, 1e-4))
    coordinates.notify_ping_complete(info("quiet"), 0.01, b"")  # a peer without coordinates
    coordinates.notify_ping_complete(info("v2"), 0.01, b"\x02" + good[1:])
    coordinates.notify_ping_complete(info("junk"), 0.01, b"\x01\xc1")
    coordinates.notify_ping_complete(info("short"), 0.01, short)
    coordinates.notify_ping_complete(info("nan"), 0.01, nan)
    coordinates.notify_ping_complete(info("slow"), 11.0, good)
    coordinates.notify_ping_complete(info("x" * 5000), 0.01, short)
    assert coordinates.coordinate == Coordinate.origin()
    assert coordinates.cached_coordinates() == {"me": Coordinate.origin()}
    assert coordinates.stats.rejected == 6 and coordinates.stats.updates == 0
    errors = log.messages(ERR)
    assert errors[0] == "Unsupported ping version: 2"
    assert errors[1].startswith("Failed to decode coordinate from ping: ")
    rejected = [line for line in log.messages(TRACE) if line.startswith("Rejected")]
    assert rejected[0] == "Rejected coordinate from short: dimensions aren't compatible"
    assert rejected[1] == "Rejected coordinate from nan: coordinate is invalid"
    assert rejected[2].startswith("Rejected coordinate from slow: round trip time not in valid")
    assert len(rejected[3]) < 500  # the peer's name is clipped


def test_the_cache_is_bounded_and_forgets_reaped_members() -> None:
    coordinates = SerfCoordinates("me", rng=random.Random(1), max_nodes=3)
    for index in range(5):
        coordinates.notify_ping_complete(
            info(f"n{index}"), 0.01, encode_ping_payload(peer_coordinate(index))
        )
    assert set(coordinates.cached_coordinates()) == {"me", "n2", "n3", "n4"}
    assert coordinates.stats.evicted == 2
    # Hearing from n2 again makes it the newest: n3 goes next.
    coordinates.notify_ping_complete(info("n2"), 0.01, encode_ping_payload(peer_coordinate(9)))
    coordinates.notify_ping_complete(info("n5"), 0.01, encode_ping_payload(peer_coordinate(5)))
    assert set(coordinates.cached_coordinates()) == {"me", "n2", "n4", "n5"}
    assert coordinates.get_cached_coordinate("n2") == peer_coordinate(9)
    # The client's RTT samples follow the cache (plus nothing else).
    assert coordinates.tracked_nodes == 3

    def event(kind: MemberEventType, name: str) -> MemberEvent:
        member = SerfMember(name, bytes(4), 7946, {}, MemberStatus.FAILED, VSN, 0, None)
        return MemberEvent(kind, member)

    coordinates.on_member_event(event(MemberEventType.FAILED, "n4"))
    assert coordinates.get_cached_coordinate("n4") is not None
    coordinates.on_member_event(event(MemberEventType.REAP, "n4"))
    assert coordinates.get_cached_coordinate("n4") is None
    coordinates.forget("n5")
    assert set(coordinates.cached_coordinates()) == {"me", "n2"}
    assert coordinates.tracked_nodes == 1

    coordinates.set_max_nodes(1)
    assert set(coordinates.cached_coordinates()) == {"me", "n2"}
    coordinates.notify_ping_complete(info("n6"), 0.01, encode_ping_payload(peer_coordinate(6)))
    assert set(coordinates.cached_coordinates()) == {"me", "n6"}
    with pytest.raises(ValueError):
        coordinates.set_max_nodes(0)


def test_a_peer_using_our_name_never_replaces_our_coordinate() -> None:
    coordinates = SerfCoordinates("me", rng=random.Random(1))
    coordinates.notify_ping_complete(info("me"), 0.01, encode_ping_payload(peer_coordinate(1)))
    assert coordinates.get_cached_coordinate("me") == coordinates.coordinate
    assert coordinates.cached_coordinates().keys() == {"me"}


def test_other_configurations_are_honoured() -> None:
    config = CoordinateConfig(dimensionality=2)
    coordinates = SerfCoordinates("me", config=config, rng=random.Random(1))
    assert len(coordinates.coordinate.vec) == 2
    eight = encode_ping_payload(peer_coordinate(1))
    coordinates.notify_ping_complete(info("a"), 0.01, eight)
    assert coordinates.stats.rejected == 1
    two = encode_ping_payload(Coordinate((0.01, 0.0), 0.5, 0.0, 1e-4))
    coordinates.notify_ping_complete(info("a"), 0.01, two)
    assert coordinates.stats.updates == 1
