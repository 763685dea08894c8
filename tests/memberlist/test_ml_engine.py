"""The memberlist engine's wire behaviour, seen from a raw peer on the in-memory network:
acks and their addresses, ignored pings, indirect probes and nacks, CRC and compression
choices, stream service, bad input, joins that fail, user messages, encryption, labels."""

from __future__ import annotations

import random
import zlib
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from ml_support import Node, alive_names, memory_nodes, wait_until

from agentrpc.gossip.contract import GossipAddress, NodeState
from agentrpc.gossip.messages import (
    AckResp,
    Alive,
    IndirectPingReq,
    MessageType,
    NackResp,
    Ping,
    PushNodeState,
    decode_body,
    encode_message,
)
from agentrpc.gossip.packet import add_crc, decode_packet, encode_packet, make_compound
from agentrpc.gossip.security import Keyring
from agentrpc.gossip.stream import PushPull, StreamEncoder, StreamReader
from agentrpc.gossip.transport import MemoryGossipNetwork, MemoryPacketConnection

PEER = GossipAddress("127.0.0.99", 7946)
NODE1 = GossipAddress("127.0.0.1", 7946)


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


async def started(nursery: trio.Nursery, nodes: list[Node]) -> list[Node]:
    for node in nodes:
        await node.start(nursery)
    for node in nodes[1:]:
        assert await node.memberlist.join([str(nodes[0].address)]) == (1, [])
    names = {n.name for n in nodes}
    await wait_until(lambda: all(alive_names(n) == names for n in nodes), timeout=5)
    return nodes


async def receive_messages(
    packets: MemoryPacketConnection,
    want: int,
    timeout: float = 2.0,  # noqa: ASYNC109
) -> list[tuple[int, bytes]]:
    """Leaf messages of received packets until one of type ``want`` arrives."""
    seen: list[tuple[int, bytes]] = []
    with trio.fail_after(timeout):
        while True:
            data, _ = await packets.receive_from()
            leaves = decode_packet(data).messages
            seen.extend(leaves)
            if any(msg_type == want for msg_type, _ in leaves):
                return seen


async def no_message(packets: MemoryPacketConnection, want: int, wait: float = 2.0) -> bool:
    """True if no message of type ``want`` arrives within ``wait`` seconds."""
    with trio.move_on_after(wait):
        await receive_messages(packets, want, timeout=wait + 1)
        return False
    return True


def ack_seqs(messages: list[tuple[int, bytes]]) -> list[int]:
    return [decode_body(AckResp, body).seq_no for t, body in messages if t == MessageType.ACK_RESP]


# --------------------------------------------------------------------------------------------
# Pings and acks.


async def test_ping_is_acked_to_the_sender_or_to_the_announced_source(
    autojump_clock: trio.testing.MockClock,
    network: MemoryGossipNetwork,
    nursery: trio.Nursery,
    peer: MemoryPacketConnection,
) -> None:
    await started(nursery, memory_nodes(network, 1))
    await peer.send_to(encode_message(Ping(7, "node1")), NODE1)
    assert 7 in ack_seqs(await receive_messages(peer, MessageType.ACK_RESP))
    # Announced source elsewhere: the ack goes there, not back to the sender.
    other, other_listener = await network.transport().bind(GossipAddress("127.0.0.98", 7000))
    ping = Ping(8, "", source_addr=bytes([127, 0, 0, 98]), source_port=7000, source_node="x")
    await peer.send_to(encode_message(ping), NODE1)
    assert 8 in ack_seqs(await receive_messages(other, MessageType.ACK_RESP))
    assert await no_message(peer, MessageType.ACK_RESP, wait=1)
    other.close()
    await other_listener.aclose()


async def test_ping_for_another_node_is_ignored(
    autojump_clock: trio.testing.MockClock,
    network: MemoryGossipNetwork,
    nursery: trio.Nursery,
    peer: MemoryPacketConnection,
) -> None:
    (a,) = await started(nursery, memory_nodes(network, 1))
    await peer.send_to(encode_message(Ping(9, "somebody-else")), NODE1)
    assert await no_message(peer, MessageType.ACK_RESP)
    assert "Got ping for unexpected node 'somebody-else'" in a.log_text()


async def test_ping_inside_compound_compress_and_crc_is_acked(
    autojump_clock: trio.testing.MockClock,
    network: MemoryGossipNetwork,
    nursery: trio.Nursery,
    peer: MemoryPacketConnection,
) -> None:
    await started(nursery, memory_nodes(network, 1))
    inner = make_compound([encode_message(Ping(1, "node1")), encode_message(Ping(2, ""))])
    await peer.send_to(encode_packet(inner, compress=True, crc=True), NODE1)
    seen = await receive_messages(peer, MessageType.ACK_RESP)
    with trio.move_on_after(1):
        seen += await receive_messages(peer, MessageType.ACK_RESP)
    assert sorted(ack_seqs(seen)) == [1, 2]


async def test_bad_packets_are_counted_and_never_fatal(
    autojump_clock: trio.testing.MockClock,
    network: MemoryGossipNetwork,
    nursery: trio.Nursery,
    peer: MemoryPacketConnection,
) -> None:
    (a,) = await started(nursery, memory_nodes(network, 1))
    rng = random.Random(5)
    garbage = [
        b"",
        b"\x00",  # ping with no body
        b"\x00\xc1",  # invalid msgpack
        b"\x02\x81\xa5SeqNo\xa1x",  # ack with a string SeqNo
        b"\x07\x05\x00",  # compound with a cut-off length table
        b"\x09\x82\xa4Algo\x00\xa3Buf\xa3abc",  # corrupt LZW
        add_crc(encode_message(Ping(1, "")))[:-1] + b"\x00",  # CRC mismatch
        b"\xf4\x03abc\x00",  # a label we do not expect
        b"\x0a" + bytes(40),  # encrypted, but we have no key
        b"\x01\x84\xa6Target\xa2ab\xa4Port\x01\xa4Node\xa1x\xa5SeqNo\x01",  # bad target IP
        b"\x04\x83\xa4Node\xa1x\xa4Addr\xa1a\xa4Port\x01",  # alive with a 1-byte address
        b"\x63hello",  # unknown type
        *(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) for _ in range(300)),
    ]
    for data in garbage:
        await peer.send_to(data, NODE1)
    await trio.sleep(1)
    stats = a.memberlist.stats
    assert stats.bad_packets + stats.bad_messages >= 10
    assert stats.packets_received >= len(garbage)
    await peer.send_to(encode_message(Ping(77, "node1")), NODE1)
    assert 77 in ack_seqs(await receive_messages(peer, MessageType.ACK_RESP))
    assert a.memberlist.members()[0].state == NodeState.ALIVE


async def test_user_message_in_a_packet_reaches_the_delegate(
    autojump_clock: trio.testing.MockClock,
    network: MemoryGossipNetwork,
    nursery: trio.Nursery,
    peer: MemoryPacketConnection,
) -> None:
    (a,) = await started(nursery, memory_nodes(network, 1))
    await peer.send_to(b"\x08" + b"serf says hi", NODE1)
    await wait_until(lambda: a.delegate.messages == [b"serf says hi"], timeout=1)


# --------------------------------------------------------------------------------------------
# Indirect probes.


async def test_indirect_ping_relays_the_ack_or_sends_a_nack(
    autojump_clock: trio.testing.MockClock,
    network: MemoryGossipNetwork,
    nursery: trio.Nursery,
    peer: MemoryPacketConnection,
) -> None:
    a, b = await started(nursery, memory_nodes(network, 2))
    request = IndirectPingReq(
        seq_no=500, target=bytes([127, 0, 0, 2]), port=7946, node="node2", nack=True
    )
    await peer.send_to(encode_message(request), NODE1)
    seen = await receive_messages(peer, MessageType.ACK_RESP)
    assert 500 in ack_seqs(seen)
    assert MessageType.NACK_RESP not in {t for t, _ in seen}

    await b.kill()
    start = trio.current_time()
    request = IndirectPingReq(
        seq_no=501, target=bytes([127, 0, 0, 2]), port=7946, node="node2", nack=True
    )
    await peer.send_to(encode_message(request), NODE1)
    seen = await receive_messages(peer, MessageType.NACK_RESP)
    nacks = [decode_body(NackResp, body) for t, body in seen if t == MessageType.NACK_RESP]
    assert nacks == [NackResp(501)]
    assert trio.current_time() - start == pytest.approx(a.memberlist.table.profile.probe_timeout)
    assert 501 not in ack_seqs(seen)

    # Without Nack=true, silence.
    request = IndirectPingReq(seq_no=502, target=bytes([127, 0, 0, 2]), port=7946, node="node2")
    await peer.send_to(encode_message(request), NODE1)
    assert await no_message(peer, MessageType.NACK_RESP)


# --------------------------------------------------------------------------------------------
# CRC and compression on what we send.


def fake_peer_alive(pmax: int, name: str = "peer") -> bytes:
    return encode_message(
        Alive(1, name, bytes([127, 0, 0, 99]), 7946, b"", (1, pmax, min(pmax, 2), 2, 5, 4))
    )


@pytest.mark.parametrize(("pmax", "crc"), [(4, False), (5, True)])
async def test_crc_is_added_only_for_peers_with_pmax_5(
    autojump_clock: trio.testing.MockClock,
    network: MemoryGossipNetwork,
    nursery: trio.Nursery,
    peer: MemoryPacketConnection,
    pmax: int,
    crc: bool,
) -> None:
    await started(nursery, memory_nodes(network, 1))
    await peer.send_to(fake_peer_alive(pmax), NODE1)
    # Now the node probes us (we are its only peer); look at the raw ping packets.
    with trio.fail_after(5):
        while True:
            data, _ = await peer.receive_from()
            if MessageType.PING in {t for t, _ in decode_packet(data).messages}:
                break
    assert (data[0] == MessageType.HAS_CRC) == crc
    # And acks to a ping naming us as source node follow the same rule.
    await peer.send_to(encode_message(Ping(3, "node1", source_node="peer")), NODE1)
    with trio.fail_after(2):
        while True:
            data, _ = await peer.receive_from()
            if 3 in ack_seqs(list(decode_packet(data).messages)):
                break
    assert (data[0] == MessageType.HAS_CRC) == crc


async def test_packets_are_compressed_only_when_smaller(
    autojump_clock: trio.testing.MockClock,
    network: MemoryGossipNetwork,
    nursery: trio.Nursery,
    peer: MemoryPacketConnection,
) -> None:
    (a,) = await started(nursery, memory_nodes(network, 1))
    # A lone node's own alive broadcast rides on its first acks until its retransmit limit.
    first_bytes = []
    for seq in range(40, 50):
        await peer.send_to(encode_message(Ping(seq, "node1")), NODE1)
        with trio.fail_after(2):
            data, _ = await peer.receive_from()
        assert ack_seqs(list(decode_packet(data).messages)) == [seq]
        first_bytes.append(data[0])
    # Small packets are never worth compressing: compounds first, then bare acks.
    assert first_bytes[0] == MessageType.COMPOUND
    assert first_bytes[-1] == MessageType.ACK_RESP
    assert MessageType.COMPRESS not in first_bytes
    # A large, repetitive broadcast makes the piggybacked packet worth compressing.
    a.delegate.outgoing.append(b"serf-event " * 100)
    await peer.send_to(encode_message(Ping(51, "node1")), NODE1)
    with trio.fail_after(2):
        while True:
            data, _ = await peer.receive_from()
            if 51 in ack_seqs(list(decode_packet(data).messages)):
                break
    assert data[0] == MessageType.COMPRESS
    assert (MessageType.USER, b"serf-event " * 100) in decode_packet(data).messages
    assert len(data) < 1100


# --------------------------------------------------------------------------------------------
# Streams.


async def read_reply(stream: trio.abc.Stream) -> object:
    reader = StreamReader()
    with trio.fail_after(2):
        while True:
            message = reader.next_message()
            if message is not None:
                return message
            data = await stream.receive_some(65536)
            if not data:
                reader.feed_eof()
                return reader.next_message()
            reader.feed(data)


async def test_push_pull_server_answers_with_its_state_and_the_same_join_flag(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    a, _ = await started(nursery, memory_nodes(network, 2))
    a.delegate.user_state = b"\x02opaque-serf-state"
    encoder = StreamEncoder()
    stream = await network.transport().dial(NODE1)
    me = PushNodeState("raw", bytes([127, 0, 0, 99]), 7946, b"", 1, 0, (1, 5, 2, 2, 5, 4))
    await stream.send_all(encoder.push_pull([me], b"\x02mine", join=False))
    reply = await read_reply(stream)
    assert isinstance(reply, PushPull)
    assert reply.join is False
    assert {n.name for n in reply.nodes} == {"node1", "node2"}
    assert reply.user_state == b"\x02opaque-serf-state"
    await wait_until(lambda: a.memberlist.node("raw") is not None, timeout=1)
    assert a.delegate.remote_states == [(b"\x02mine", False)]


async def test_stream_ping_user_message_and_garbage(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    (a,) = await started(nursery, memory_nodes(network, 1))
    encoder = StreamEncoder()
    stream = await network.transport().dial(NODE1)
    await stream.send_all(encoder.ping(Ping(12, "node1")))
    assert await read_reply(stream) == AckResp(12)

    stream = await network.transport().dial(NODE1)
    await stream.send_all(encoder.ping(Ping(13, "not-me")))
    assert await read_reply(stream) is None  # closed without an ack

    stream = await network.transport().dial(NODE1)
    await stream.send_all(encoder.user_message(b"reliable hello"))
    await stream.send_eof()  # type: ignore[attr-defined]
    await wait_until(lambda: b"reliable hello" in a.delegate.messages, timeout=1)

    stream = await network.transport().dial(NODE1)
    await stream.send_all(b"\x63 definitely not memberlist")
    reply = await read_reply(stream)
    assert reply is not None and "invalid message type" in getattr(reply, "error", "")
    assert a.memberlist.stats.bad_streams >= 1


async def test_stalled_stream_is_dropped_after_the_tcp_timeout(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    (a,) = await started(nursery, memory_nodes(network, 1))
    stream = await network.transport().dial(NODE1)
    await stream.send_all(b"\x06")  # a push/pull that never continues
    start = trio.current_time()
    with trio.fail_after(30):
        assert await stream.receive_some(100) == b""
    assert trio.current_time() - start == pytest.approx(a.memberlist.table.profile.tcp_timeout)


# --------------------------------------------------------------------------------------------
# Joining, messages, meta.


async def test_join_reports_each_failure(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    _, b = await started(nursery, memory_nodes(network, 2))
    num, errors = await b.memberlist.join(
        ["127.0.0.1", "127.0.0.77:7946", "seed/127.0.0.1:7946", "bad:port:x:y]", "[::1"]
    )
    assert num == 2
    assert len(errors) == 3
    assert any("Failed to join 127.0.0.77" in e for e in errors)
    assert sum("Failed to resolve" in e for e in errors) == 2


async def test_join_of_an_incompatible_node_fails_on_its_side(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    (a,) = await started(nursery, memory_nodes(network, 1))
    old = Node(
        "old", network.transport(), GossipAddress("127.0.0.50", 7946), vsn=(1, 5, 2, 1, 3, 3)
    )
    await old.start(nursery)
    num, errors = await old.memberlist.join([str(a.address)])
    assert num == 0
    assert "delegate protocol version (4) is incompatible: [2, 3]" in errors[0]
    # The trap: the seed had already answered, and then refuses to merge the newcomer.
    await trio.sleep(1)
    assert a.memberlist.node("old") is None
    assert "Failed push/pull merge" in a.log_text()


async def test_send_reliable_and_delegate_broadcasts_reach_the_other_node(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    a, b, c = await started(nursery, memory_nodes(network, 3))
    await a.memberlist.send_reliable("node2", b"direct")
    await wait_until(lambda: b"direct" in b.delegate.messages, timeout=1)
    with pytest.raises(OSError):
        await a.memberlist.send_reliable("nobody", b"x")
    a.delegate.outgoing.append(b"gossiped")
    a.memberlist.wake_gossip()  # the delegate's side of the contract: its loop may sleep
    await wait_until(
        lambda: b"gossiped" in b.delegate.messages or b"gossiped" in c.delegate.messages,
        timeout=2,
    )


async def test_update_meta_reaches_every_node(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    a, b, c = await started(nursery, memory_nodes(network, 3))
    a.delegate.tags = {"role": "changed"}
    a.memberlist.update_meta()
    meta = a.memberlist.node("node1").meta  # type: ignore[union-attr]
    await wait_until(
        lambda: all(n.memberlist.node("node1").meta == meta for n in (b, c)),  # type: ignore[union-attr]
        timeout=3,
    )
    for node in (b, c):
        assert [n.name for _, n in node.events.updates] == ["node1"]


# --------------------------------------------------------------------------------------------
# Encryption and labels.


KEY1 = bytes(range(16))
KEY2 = bytes(range(16, 48))


async def test_encrypted_cluster_converges_and_rejects_outsiders(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    nodes = [
        Node(
            f"node{i}",
            network.transport(),
            GossipAddress(f"127.0.0.{i}", 7946),
            seed=i,
            keyring=Keyring(KEY1, [KEY2]) if i == 2 else Keyring(KEY1),
        )
        for i in (1, 2, 3)
    ]
    await started(nursery, nodes)
    plain = Node("plain", network.transport(), GossipAddress("127.0.0.9", 7946))
    await plain.start(nursery)
    num, errors = await plain.memberlist.join([str(nodes[0].address)])
    assert num == 0 and errors
    stranger = Node(
        "stranger",
        network.transport(),
        GossipAddress("127.0.0.10", 7946),
        keyring=Keyring(KEY2),
    )
    await stranger.start(nursery)
    assert (await stranger.memberlist.join([str(nodes[0].address)]))[0] == 0
    await trio.sleep(5)
    for node in nodes:
        assert alive_names(node) == {"node1", "node2", "node3"}


async def test_labelled_cluster_ignores_other_labels(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    nodes = [
        Node(
            f"node{i}",
            network.transport(),
            GossipAddress(f"127.0.0.{i}", 7946),
            seed=i,
            label="blue",
        )
        for i in (1, 2)
    ]
    await started(nursery, nodes)
    red = Node("red", network.transport(), GossipAddress("127.0.0.9", 7946), label="red")
    await red.start(nursery)
    num, errors = await red.memberlist.join([str(nodes[0].address)])
    assert num == 0 and errors
    await trio.sleep(3)
    assert alive_names(nodes[0]) == {"node1", "node2"}


def test_crc_helper_matches_zlib() -> None:
    """The CRC we expect on the wire is plain CRC-32/IEEE, big-endian after the type byte."""
    packet = add_crc(b"\x00abc")
    assert packet[1:5] == zlib.crc32(b"\x00abc").to_bytes(4, "big")


async def test_push_pulls_beyond_the_cap_are_refused(
    autojump_clock: trio.testing.MockClock,
    network: MemoryGossipNetwork,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = await started(nursery, memory_nodes(network, 2))
    monkeypatch.setattr("agentrpc.gossip.memberlist.MAX_PUSH_PULL_REQUESTS", 0)
    num, errors = await b.memberlist.join([str(a.address)])
    assert num == 0 and "EOF" in errors[0]
    assert "Too many pending push/pull requests" in a.log_text()
    monkeypatch.undo()
    assert await b.memberlist.join([str(a.address)]) == (1, [])
