"""Tests for memberlist's message structs: exact field names, Go's zero values, type errors."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from agentrpc.gossip.messages import (
    AckResp,
    Alive,
    Compress,
    Dead,
    ErrResp,
    GossipDecodeError,
    GossipEncodeError,
    GossipMessage,
    IndirectPingReq,
    MessageType,
    NackResp,
    NodeState,
    Ping,
    PushNodeState,
    PushPullHeader,
    Suspect,
    UserMsgHeader,
    decode_body,
    decode_message,
    encode_body,
    encode_message,
)
from agentrpc.gossip.packet import decode_packet, decompress_body

LOCALHOST = socket.inet_aton("127.0.0.1")


def raw_map(data: bytes) -> dict[bytes, Any]:
    """Decode msgpack independently of the code under test."""
    decoded: dict[bytes, Any] = msgpack.unpackb(data, raw=True)
    return decoded


# --------------------------------------------------------------------------------------------
# Known answers: bytes from the real serf agent.


def test_type_bytes_match_memberlist() -> None:
    assert [int(t) for t in MessageType] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 244]
    assert [int(s) for s in NodeState] == [0, 1, 2, 3]


def test_go_stream_ack_decodes_and_reencodes_identically(
    capture: Callable[[str], bytes],
) -> None:
    plain = decompress_body(capture("tcp_ack_reply.bin")[1:])
    assert plain == b"\x02\x82\xa7Payload\xc0\xa5SeqNoM"  # Go sends a nil Payload
    ack = decode_message(plain[0], plain[1:])
    assert ack == AckResp(seq_no=77, payload=b"")
    assert encode_message(ack) == plain


def test_go_fallback_ping_decodes_and_reencodes_identically(
    capture: Callable[[str], bytes], manifest: dict[str, Any]
) -> None:
    plain = decompress_body(capture("tcp_fallback_ping.bin")[1:])
    ping = decode_message(plain[0], plain[1:])
    assert isinstance(ping, Ping)
    assert ping.seq_no > 0
    assert ping.node == manifest["plain"]["our_node"]
    assert ping.source_addr == LOCALHOST
    assert ping.source_port == manifest["plain"]["serf_port"]
    assert ping.source_node == manifest["plain"]["serf_node"]
    assert encode_message(ping) == plain


def test_go_err_response_decodes_and_reencodes_identically(
    capture: Callable[[str], bytes],
) -> None:
    plain = decompress_body(capture("tcp_err_reply.bin")[1:])
    err = decode_message(plain[0], plain[1:])
    assert err == ErrResp("Remote state is encrypted and encryption is not configured")
    assert encode_message(err) == plain


def test_go_gossip_messages_reencode_identically(
    captured_packets: Callable[[str], list[bytes]], manifest: dict[str, Any]
) -> None:
    seen: dict[type[GossipMessage], int] = {}
    for packet in captured_packets("udp_packets.bin"):
        for msg_type, body in decode_packet(packet).messages:
            if msg_type == MessageType.USER:
                continue
            message = decode_message(msg_type, body)
            seen[type(message)] = seen.get(type(message), 0) + 1
            assert encode_message(message) == bytes((msg_type,)) + body
            if isinstance(message, Alive):
                assert message.addr == LOCALHOST
                assert message.vsn in ((1, 5, 2, 2, 5, 5), (1, 5, 2, 2, 5, 4))
            if isinstance(message, Dead):
                # serf-a left: a dead message about itself, from itself.
                assert message.node == message.from_node == "serf-a"
            if isinstance(message, Ping):
                assert message.node == manifest["plain"]["our_node"]
    assert {Alive, Dead, Ping, Suspect} <= set(seen)


def test_go_push_node_state_fields(capture: Callable[[str], bytes]) -> None:
    plain = decompress_body(capture("pushpull_reply_join.bin")[1:])
    assert plain[0] == MessageType.PUSH_PULL
    unpacker = msgpack.Unpacker(raw=True)
    unpacker.feed(plain[1:])
    header_map = unpacker.unpack()
    header_end = unpacker.tell()
    assert set(header_map) == {b"Join", b"Nodes", b"UserStateLen"}
    header = decode_body(PushPullHeader, plain[1 : 1 + header_end])
    assert header.join is True and header.nodes == 1
    node_map = unpacker.unpack()
    node_end = unpacker.tell()
    assert set(node_map) == {b"Name", b"Addr", b"Port", b"Meta", b"Incarnation", b"State", b"Vsn"}
    node = decode_body(PushNodeState, plain[1 + header_end : 1 + node_end])
    assert node.name == "serf-a"
    assert node.state == NodeState.ALIVE
    assert node.vsn == (1, 5, 2, 2, 5, 5)
    assert encode_body(node) == plain[1 + header_end : 1 + node_end]
    assert header.user_state_len == len(plain) - 1 - node_end


# --------------------------------------------------------------------------------------------
# Encoding shape.


def test_ping_omits_empty_source_fields() -> None:
    assert raw_map(encode_body(Ping(seq_no=1, node="a"))) == {b"Node": b"a", b"SeqNo": 1}
    full = raw_map(encode_body(Ping(1, "a", LOCALHOST, 7946, "b")))
    assert full == {
        b"Node": b"a",
        b"SeqNo": 1,
        b"SourceAddr": LOCALHOST,
        b"SourcePort": 7946,
        b"SourceNode": b"b",
    }


def test_indirect_ping_fields() -> None:
    msg = IndirectPingReq(seq_no=9, target=LOCALHOST, port=7946, node="t", nack=True)
    assert raw_map(encode_body(msg)) == {
        b"Nack": True,
        b"Node": b"t",
        b"Port": 7946,
        b"SeqNo": 9,
        b"Target": LOCALHOST,
    }


def test_alive_fields_and_vsn_as_raw_bytes() -> None:
    msg = Alive(3, "n", LOCALHOST, 7946, b"\xffmeta", (1, 5, 2, 2, 5, 4))
    encoded = encode_body(msg)
    # Go's []uint8 is a raw string on the wire, not an array.
    assert b"\xa3Vsn\xa6\x01\x05\x02\x02\x05\x04" in encoded
    assert raw_map(encoded) == {
        b"Addr": LOCALHOST,
        b"Incarnation": 3,
        b"Meta": b"\xffmeta",
        b"Node": b"n",
        b"Port": 7946,
        b"Vsn": bytes([1, 5, 2, 2, 5, 4]),
    }


def test_strings_use_the_old_spec_raw_type() -> None:
    name = "x" * 40  # 32..255 bytes: the new spec would use str8 (0xd9); the old one str16
    encoded = encode_body(ErrResp(name))
    assert b"\xda\x00\x28" + name.encode() in encoded
    assert b"\xd9" not in encoded
    assert b"\xc4" not in encode_body(AckResp(1, b"\x00" * 40))  # never bin8


def all_structs() -> list[Any]:
    return [
        Ping(1, "a", LOCALHOST, 1, "b"),
        IndirectPingReq(1, LOCALHOST, 2, "n", True, LOCALHOST, 3, "s"),
        AckResp(1, b"p"),
        NackResp(1),
        ErrResp("e"),
        Suspect(1, "n", "f"),
        Alive(1, "n", LOCALHOST, 1, b"m", (1, 5, 2, 2, 5, 5)),
        Dead(1, "n", "f"),
        PushPullHeader(1, 2, True),
        PushNodeState("n", LOCALHOST, 1, b"m", 1, 0, (1, 5, 2, 2, 5, 5)),
        UserMsgHeader(5),
        Compress(0, b"buf"),
    ]


@pytest.mark.parametrize("struct", all_structs(), ids=lambda s: type(s).__name__)
def test_keys_are_written_sorted_like_go(struct: Any) -> None:
    keys = list(raw_map(encode_body(struct)))
    assert keys == sorted(keys)


# --------------------------------------------------------------------------------------------
# Decoding rules.


def test_unknown_keys_are_ignored_and_missing_keys_are_zero() -> None:
    body = msgpack.packb({"SeqNo": 5, "Future": [1, 2], "Node": "a"}, use_bin_type=False)
    assert decode_body(Ping, body) == Ping(seq_no=5, node="a")
    assert decode_body(Alive, msgpack.packb({})) == Alive(0, "", b"", 0, b"", None)
    assert decode_body(Dead, b"\xc0") == Dead(0, "", "")  # nil map


def test_nil_values_are_zero_values() -> None:
    body = msgpack.packb({"SeqNo": None, "Node": None, "SourceAddr": None})
    assert decode_body(Ping, body) == Ping(0, "")


def test_bin_and_str8_are_accepted_like_go() -> None:
    body = msgpack.packb({"SeqNo": 1, "Payload": b"\x01" * 40}, use_bin_type=True)
    assert decode_body(AckResp, body) == AckResp(1, b"\x01" * 40)
    body = msgpack.packb({"Error": "y" * 40}, use_bin_type=True)  # str8
    assert decode_body(ErrResp, body) == ErrResp("y" * 40)


def test_vsn_as_array_and_absent() -> None:
    body = msgpack.packb({"Vsn": [1, 5, 2, 2, 5, 4]})
    assert decode_body(Alive, body).vsn == (1, 5, 2, 2, 5, 4)
    assert decode_body(Alive, msgpack.packb({"Vsn": b""})).vsn is None
    longer = msgpack.packb({"Vsn": bytes([1, 5, 2, 2, 5, 4, 9])}, use_bin_type=False)
    assert decode_body(Alive, longer).vsn == (1, 5, 2, 2, 5, 4)


def test_trailing_bytes_are_ignored_like_go() -> None:
    assert decode_body(NackResp, encode_body(NackResp(3)) + b"\x01\x02") == NackResp(3)


def test_non_utf8_names_survive_a_round_trip() -> None:
    body = msgpack.packb({"Error": b"\xff\xfe bad"}, use_bin_type=False)
    err = decode_body(ErrResp, body)
    assert encode_body(err) == body


@pytest.mark.parametrize(
    ("cls", "fields", "match"),
    [
        (Ping, {"SeqNo": "one"}, r"ping\.SeqNo: expected an unsigned integer, got string"),
        (Ping, {"SeqNo": -1}, r"ping\.SeqNo: -1 does not fit in uint32"),
        (Ping, {"SeqNo": 1 << 32}, r"does not fit in uint32"),
        (Ping, {"SourcePort": 70000}, r"does not fit in uint16"),
        (Ping, {"Node": 5}, r"ping\.Node: expected a string, got integer"),
        (Ping, {"SeqNo": True}, r"got bool"),
        (IndirectPingReq, {"Nack": 1}, r"Nack: expected a boolean"),
        (AckResp, {"Payload": [1, 2]}, r"Payload: expected bytes, got array"),
        (Alive, {"Vsn": b"\x01\x02"}, r"Vsn: expected 6 versions, got 2"),
        (Alive, {"Vsn": [1, 2, 3, 4, 5, 300]}, r"Vsn: entries must be uint8"),
        (Alive, {"Vsn": 7}, r"Vsn: expected bytes"),
        (PushPullHeader, {"Nodes": 1.5}, r"Nodes: expected an integer, got float"),
        (Compress, {"Algo": 256}, r"does not fit in uint8"),
    ],
)
def test_wrong_types_raise_a_clear_error(
    cls: type[Any], fields: dict[str, Any], match: str
) -> None:
    with pytest.raises(GossipDecodeError, match=match):
        decode_body(cls, msgpack.packb(fields, use_bin_type=False))


def test_not_a_map_or_not_msgpack_raises() -> None:
    with pytest.raises(GossipDecodeError, match="expected a msgpack map, got array"):
        decode_body(Ping, msgpack.packb([1, 2]))
    with pytest.raises(GossipDecodeError, match="invalid msgpack"):
        decode_body(Ping, b"\x85\xa5SeqNo")  # truncated
    with pytest.raises(GossipDecodeError, match="invalid msgpack"):
        decode_body(Ping, b"\xc1")
    with pytest.raises(GossipDecodeError, match="not a single-struct message"):
        decode_message(MessageType.COMPOUND, b"")


def test_gossip_decode_error_is_a_value_error() -> None:
    assert issubclass(GossipDecodeError, ValueError)


@pytest.mark.parametrize(
    "struct",
    [
        Ping(seq_no=1 << 32, node="a"),
        Ping(seq_no=1, node="a", source_port=1 << 16),
        Alive(1, "n", LOCALHOST, 1, b"m" * 513, (1, 5, 2, 2, 5, 5)),
        Alive(1, "n", LOCALHOST, 1, b"", (1, 5, 2, 2, 5, 256)),
        Alive(1, "n", LOCALHOST, 1, b"", (1, 5, 2)),  # type: ignore[arg-type]
        PushPullHeader(nodes=1 << 63, user_state_len=0, join=False),
        Suspect(incarnation=-1, node="n", from_node="f"),
    ],
)
def test_out_of_range_values_are_refused_on_encode(struct: Any) -> None:
    with pytest.raises(GossipEncodeError):
        encode_body(struct)


# --------------------------------------------------------------------------------------------
# Round trips.

u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 2**16 - 1)
names = st.text(max_size=30)
raw = st.binary(max_size=40)
vsns = st.tuples(*[st.integers(0, 255)] * 6)

messages = st.one_of(
    st.builds(Ping, u32, names, raw, u16, names),
    st.builds(IndirectPingReq, u32, raw, u16, names, st.booleans(), raw, u16, names),
    st.builds(AckResp, u32, raw),
    st.builds(NackResp, u32),
    st.builds(ErrResp, names),
    st.builds(Suspect, u32, names, names),
    st.builds(Alive, u32, names, raw, u16, raw, st.one_of(st.none(), vsns)),
    st.builds(Dead, u32, names, names),
)


@settings(max_examples=300)
@given(messages)
def test_message_round_trip(message: GossipMessage) -> None:
    encoded = encode_message(message)
    assert encoded[0] == message.MESSAGE_TYPE
    assert decode_message(encoded[0], encoded[1:]) == message


@settings(max_examples=100)
@given(
    st.builds(
        PushNodeState,
        names,
        raw,
        u16,
        raw,
        u32,
        st.sampled_from(list(NodeState)),
        st.one_of(st.none(), vsns),
    )
)
def test_push_node_state_round_trip(node: PushNodeState) -> None:
    assert decode_body(PushNodeState, encode_body(node)) == node
