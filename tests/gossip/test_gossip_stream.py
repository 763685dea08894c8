"""Tests for the incremental stream reader and the stream encoder."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from agentrpc.gossip.messages import (
    MAX_PUSH_STATE_BYTES,
    MAX_PUSH_STATE_NODES,
    MAX_USER_MSG_BYTES,
    AckResp,
    ErrResp,
    GossipDecodeError,
    GossipEncodeError,
    MessageType,
    NodeState,
    Ping,
    PushNodeState,
    PushPullHeader,
    UserMsgHeader,
    encode_body,
)
from agentrpc.gossip.packet import LabelError, compress_message
from agentrpc.gossip.security import DecryptError, Keyring, encrypt_stream_message, parse_key
from agentrpc.gossip.serf_messages import SerfPushPull, decode_serf_message, decode_tags
from agentrpc.gossip.stream import (
    PushPull,
    StreamEncoder,
    StreamLimitError,
    StreamMessage,
    StreamReader,
    StreamTruncatedError,
    StreamUserMessage,
)

KEY = bytes(range(32))
LOCALHOST = socket.inet_aton("127.0.0.1")
NODE = PushNodeState(
    "py-node", LOCALHOST, 7946, b"\xff\x80", 3, NodeState.ALIVE, (1, 5, 2, 2, 5, 4)
)


def read_all(data: bytes, **options: Any) -> list[StreamMessage]:
    """Feed everything, then EOF, and collect the messages."""
    reader = StreamReader(**options)
    reader.feed(data)
    reader.feed_eof()
    messages = []
    while (message := reader.next_message()) is not None:
        messages.append(message)
    return messages


def read_in_pieces(data: bytes, cuts: list[int], **options: Any) -> list[StreamMessage]:
    """Feed the bytes split at ``cuts``, pulling messages after every piece."""
    reader = StreamReader(**options)
    messages = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        reader.feed(data[start:cut])
        start = max(start, cut)
        while (message := reader.next_message()) is not None:
            messages.append(message)
    reader.feed_eof()
    assert reader.next_message() is None
    assert reader.buffered == 0
    return messages


SERF_STREAMS = [
    "pushpull_reply_join.bin",
    "pushpull_reply_events.bin",
    "pushpull_request_from_serf.bin",
    "tcp_fallback_ping.bin",
    "tcp_ack_reply.bin",
    "tcp_err_reply.bin",
]


# --------------------------------------------------------------------------------------------
# Known answers against the real serf agent.


def test_serf_join_reply(capture: Callable[[str], bytes], manifest: dict[str, Any]) -> None:
    (reply,) = read_all(capture("pushpull_reply_join.bin"))
    assert isinstance(reply, PushPull)
    assert reply.join is True
    (node,) = reply.nodes
    assert node.name == manifest["plain"]["serf_node"]
    assert node.port == manifest["plain"]["serf_port"]
    assert node.addr == LOCALHOST and node.state == NodeState.ALIVE
    assert node.vsn == (1, 5, 2, 2, 5, 5)
    assert decode_tags(node.meta) == manifest["plain"]["serf_tags"]
    state = decode_serf_message(reply.user_state)
    assert isinstance(state, SerfPushPull)
    assert state.status_ltimes.keys() == {"serf-a"}


def test_serf_push_pull_request_to_us(
    capture: Callable[[str], bytes], manifest: dict[str, Any]
) -> None:
    (request,) = read_all(capture("pushpull_request_from_serf.bin"))
    assert isinstance(request, PushPull) and request.join is True
    names = {node.name: node for node in request.nodes}
    assert set(names) == {"serf-a", "py-node"}
    assert names["py-node"].port == manifest["plain"]["our_port"]
    assert decode_tags(names["py-node"].meta) == manifest["plain"]["our_tags"]


@pytest.mark.parametrize("name", SERF_STREAMS)
def test_reencoding_serf_messages_gives_serfs_exact_bytes(
    capture: Callable[[str], bytes], name: str
) -> None:
    # Our msgpack, our LZW and our framing are byte-for-byte Go's.
    raw = capture(name)
    (message,) = read_all(raw)
    encoder = StreamEncoder()
    if isinstance(message, PushPull):
        again = encoder.push_pull(message.nodes, message.user_state, join=message.join)
    elif isinstance(message, Ping):
        again = encoder.ping(message)
    elif isinstance(message, AckResp):
        again = encoder.ack(message)
    else:
        assert isinstance(message, ErrResp)
        again = encoder.err(message.error)
    assert again == raw


def test_serf_tcp_ping_and_ack(capture: Callable[[str], bytes], manifest: dict[str, Any]) -> None:
    (ping,) = read_all(capture("tcp_fallback_ping.bin"))
    assert isinstance(ping, Ping) and ping.node == manifest["plain"]["our_node"]
    (ack,) = read_all(capture("tcp_ack_reply.bin"))
    assert ack == AckResp(seq_no=manifest["plain"]["our_tcp_ping_seq"])
    (err,) = read_all(capture("tcp_err_reply.bin"))
    assert isinstance(err, ErrResp) and "encryption is not configured" in err.error


def test_serf_encrypted_reply(capture: Callable[[str], bytes], manifest: dict[str, Any]) -> None:
    ring = Keyring(parse_key(manifest["encrypted"]["key"]))
    raw = capture("encrypted_pushpull_reply.bin")
    (reply,) = read_all(raw, keyring=ring)
    assert isinstance(reply, PushPull)
    assert [n.name for n in reply.nodes] == [manifest["encrypted"]["serf_node"]]
    with pytest.raises(GossipDecodeError, match="encryption is not configured"):
        read_all(raw)
    with pytest.raises(DecryptError):
        read_all(raw, keyring=Keyring(bytes(16)))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), name=st.sampled_from(SERF_STREAMS))
def test_serf_streams_fed_in_random_pieces(
    capture: Callable[[str], bytes], data: st.DataObject, name: str
) -> None:
    raw = capture(name)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=20))
    assert read_in_pieces(raw, cuts) == read_all(raw)


# --------------------------------------------------------------------------------------------
# Round trips.

ENCODER_OPTIONS = [
    {},
    {"compress": False},
    {"keyring": Keyring(KEY)},
    {"keyring": Keyring(KEY), "compress": False, "encryption_version": 0},
    {"keyring": Keyring(KEY), "label": b"lbl"},
]


def reader_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k in ("keyring", "label")}


def sample_stream(encoder: StreamEncoder) -> tuple[bytes, list[StreamMessage]]:
    other = PushNodeState("other", LOCALHOST, 8000, b"", 9, NodeState.LEFT, None)
    expected: list[StreamMessage] = [
        PushPull(join=True, nodes=(NODE, other), user_state=b"\x02serf-state"),
        PushPull(join=False, nodes=(), user_state=b""),
        Ping(seq_no=5, node="n", source_addr=LOCALHOST, source_port=7, source_node="s"),
        AckResp(seq_no=5),
        ErrResp("boom"),
        StreamUserMessage(b"\x03user-event"),
        StreamUserMessage(b""),
    ]
    data = encoder.preamble() + b"".join(
        [
            encoder.push_pull([NODE, other], b"\x02serf-state", join=True),
            encoder.push_pull([], join=False),
            encoder.ping(Ping(5, "n", LOCALHOST, 7, "s")),
            encoder.ack(AckResp(5)),
            encoder.err("boom"),
            encoder.user_message(b"\x03user-event"),
            encoder.user_message(b""),
        ]
    )
    return data, expected


@pytest.mark.parametrize("options", ENCODER_OPTIONS)
def test_every_message_kind_round_trips(options: dict[str, Any]) -> None:
    data, expected = sample_stream(StreamEncoder(**options))
    assert read_all(data, **reader_options(options)) == expected


@settings(max_examples=60, deadline=None)
@given(data=st.data(), options=st.sampled_from(ENCODER_OPTIONS))
def test_round_trip_fed_in_random_small_slices(
    data: st.DataObject, options: dict[str, Any]
) -> None:
    raw, expected = sample_stream(StreamEncoder(**options))
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=60))
    assert read_in_pieces(raw, cuts, **reader_options(options)) == expected


def test_byte_at_a_time_plain_push_pull_with_many_nodes() -> None:
    nodes = [
        PushNodeState(f"node-{i}", LOCALHOST, 7000 + i, b"\xff\x80", i, NodeState.ALIVE, None)
        for i in range(200)
    ]
    raw = StreamEncoder(compress=False).push_pull(nodes, b"u" * 3000, join=False)
    reader = StreamReader()
    messages = []
    for index in range(len(raw)):
        reader.feed(raw[index : index + 1])
        if (message := reader.next_message()) is not None:
            messages.append(message)
    assert messages == [PushPull(join=False, nodes=tuple(nodes), user_state=b"u" * 3000)]


def test_encoder_wire_shapes() -> None:
    plain = StreamEncoder(compress=False)
    assert plain.ack(AckResp(1)) == b"\x02\x82\xa7Payload\xc0\xa5SeqNo\x01"
    assert plain.user_message(b"hi") == b"\x08\x81\xaaUserMsgLen\x02hi"
    push = plain.push_pull([NODE], b"xyz", join=True)
    header = encode_body(PushPullHeader(nodes=1, user_state_len=3, join=True))
    assert push == b"\x06" + header + encode_body(NODE) + b"xyz"
    compressed = StreamEncoder().ack(AckResp(1))
    assert compressed == compress_message(plain.ack(AckResp(1)))  # always, even if larger
    assert len(compressed) > len(plain.ack(AckResp(1)))
    encrypted = StreamEncoder(keyring=Keyring(KEY)).ack(AckResp(1))
    assert encrypted[0] == MessageType.ENCRYPT
    assert struct.unpack(">I", encrypted[1:5])[0] == len(encrypted) - 5
    assert StreamEncoder(label=b"dc1").preamble() == b"\xf4\x03dc1"
    assert StreamEncoder().preamble() == b""


def test_encoder_refuses_what_the_peer_would_reject() -> None:
    encoder = StreamEncoder(compress=False)
    with pytest.raises(GossipEncodeError):
        encoder.user_message(bytes(MAX_USER_MSG_BYTES + 1))
    with pytest.raises(GossipEncodeError):
        encoder.push_pull([], bytes(MAX_PUSH_STATE_BYTES + 1), join=False)


# --------------------------------------------------------------------------------------------
# Labels, encryption policy, errors.


def test_label_must_match() -> None:
    ack = StreamEncoder().ack(AckResp(1))
    assert read_all(b"\xf4\x03dc1" + ack, label=b"dc1") == [AckResp(1)]
    reader = StreamReader(label=b"dc1")
    reader.feed(b"\xf4\x03dc1")
    assert reader.next_message() is None and reader.label == b"dc1"
    with pytest.raises(LabelError):
        read_all(b"\xf4\x03dc2" + ack, label=b"dc1")
    with pytest.raises(LabelError):
        read_all(ack, label=b"dc1")
    with pytest.raises(LabelError):
        read_all(b"\xf4\x03dc1" + ack)
    with pytest.raises(GossipDecodeError, match="cannot be empty"):
        read_all(b"\xf4\x00" + ack)
    with pytest.raises(StreamTruncatedError):
        read_all(b"\xf4\x05ab", label=b"ab")


def test_label_is_authenticated_in_encrypted_streams() -> None:
    ring = Keyring(KEY)
    sealed = StreamEncoder(keyring=ring, label=b"a").ack(AckResp(1))
    with pytest.raises(DecryptError):
        read_all(b"\xf4\x01b" + sealed, keyring=ring, label=b"b")


def test_plaintext_refused_when_encryption_is_configured() -> None:
    ack = StreamEncoder().ack(AckResp(1))
    with pytest.raises(GossipDecodeError, match="not encrypted"):
        read_all(ack, keyring=Keyring(KEY))
    assert read_all(ack, keyring=Keyring(KEY), verify_incoming=False) == [AckResp(1)]


def test_empty_stream_and_clean_eof() -> None:
    assert read_all(b"") == []
    reader = StreamReader()
    assert reader.next_message() is None
    assert reader.label is None


def test_eof_in_the_middle_of_a_message() -> None:
    raw = StreamEncoder(compress=False).push_pull([NODE], b"state", join=True)
    reader = StreamReader()
    reader.feed(raw[:-2])
    assert reader.next_message() is None
    reader.feed_eof()
    with pytest.raises(StreamTruncatedError, match=r"\(3 bytes left\)"):
        reader.next_message()
    with pytest.raises(StreamTruncatedError):  # errors are final
        reader.next_message()
    with pytest.raises(RuntimeError):
        reader.feed(b"x")


def test_truncated_inside_an_envelope() -> None:
    truncated = StreamEncoder(compress=False).user_message(b"hello")[:-2]
    with pytest.raises(StreamTruncatedError, match="inside its envelope"):
        read_all(compress_message(truncated))
    with pytest.raises(GossipDecodeError, match="empty"):
        read_all(encrypt_stream_message(Keyring(KEY), b""), keyring=Keyring(KEY))


@pytest.mark.parametrize("msg_type", [1, 3, 4, 5, 7, 11, 12, 99])
def test_unexpected_message_types(msg_type: int) -> None:
    with pytest.raises(GossipDecodeError, match=f"invalid message type \\({msg_type}\\)"):
        read_all(bytes([msg_type]) + b"\x80")


def test_invalid_msgpack_in_a_stream() -> None:
    with pytest.raises(GossipDecodeError, match="invalid msgpack type byte 0xc1"):
        read_all(b"\x06\xc1")
    with pytest.raises(GossipDecodeError, match="expected a msgpack map"):
        read_all(b"\x02\x93\x01\x02\x03")


def test_wrong_field_type_in_a_stream_header() -> None:
    header = msgpack.packb({"Nodes": "many"}, use_bin_type=False)
    with pytest.raises(GossipDecodeError, match=r"pushPullHeader\.Nodes"):
        read_all(b"\x06" + header)


# --------------------------------------------------------------------------------------------
# Limits.


def header(nodes: int = 0, user_state_len: int = 0) -> bytes:
    fields = {"Join": False, "Nodes": nodes, "UserStateLen": user_state_len}
    packed: bytes = msgpack.packb(fields, use_bin_type=False)
    return b"\x06" + packed


def test_node_count_limit() -> None:
    with pytest.raises(StreamLimitError, match="number of nodes"):
        read_all(header(nodes=MAX_PUSH_STATE_NODES + 1))
    with pytest.raises(StreamLimitError, match="number of nodes"):
        read_all(header(nodes=-1))


def test_user_state_limit() -> None:
    reader = StreamReader()
    reader.feed(header(user_state_len=MAX_PUSH_STATE_BYTES + 1))
    with pytest.raises(StreamLimitError, match="user state length"):
        reader.next_message()  # refused from the header alone, before any state arrives


def test_user_message_limit() -> None:
    body = encode_body(UserMsgHeader(MAX_USER_MSG_BYTES + 1))
    with pytest.raises(StreamLimitError, match="user message length"):
        read_all(b"\x08" + body)
    with pytest.raises(StreamLimitError):
        read_all(b"\x08" + encode_body(UserMsgHeader(-5)))


def test_encrypted_length_limit() -> None:
    envelope_header = struct.pack(">BI", MessageType.ENCRYPT, MAX_PUSH_STATE_BYTES + 1)
    reader = StreamReader(keyring=Keyring(KEY))
    reader.feed(envelope_header)
    with pytest.raises(DecryptError, match="larger than limit"):
        reader.next_message()


def test_decompressed_size_limit() -> None:
    raw = StreamEncoder().user_message(bytes(20_000))
    with pytest.raises(GossipDecodeError, match="more than 10000"):
        read_all(raw, max_decompressed=10_000)
    assert read_all(raw, max_decompressed=30_000) == [StreamUserMessage(bytes(20_000))]


def test_oversized_plain_object_is_refused_before_it_arrives() -> None:
    # A node state whose Meta claims 50 MB: refused as soon as the str32 header is seen.
    node = b"\x81\xa4Meta\xdb" + struct.pack(">I", 50 * 1024 * 1024)
    reader = StreamReader()
    reader.feed(header(nodes=1) + node)
    with pytest.raises(StreamLimitError, match="larger than the limit"):
        reader.next_message()


def test_oversized_compressed_envelope_is_refused_before_it_arrives() -> None:
    envelope = b"\x09\x82\xa4Algo\x00\xa3Buf\xdb" + struct.pack(">I", 41 * 1024 * 1024)
    reader = StreamReader()
    reader.feed(envelope)
    with pytest.raises(StreamLimitError):
        reader.next_message()


def test_large_user_message_arriving_in_chunks() -> None:
    raw = StreamEncoder(compress=False).user_message(bytes(1_000_000))
    reader = StreamReader()
    reader.feed(raw[:100])
    assert reader.next_message() is None
    for start in range(100, len(raw), 65536):
        reader.feed(raw[start : start + 65536])
    assert reader.next_message() == StreamUserMessage(bytes(1_000_000))


@settings(max_examples=300)
@given(st.sampled_from([0, 2, 6, 8, 9, 10, 13, 244]), st.binary(max_size=200))
def test_arbitrary_streams_raise_only_decode_errors(first: int, rest: bytes) -> None:
    for options in ({}, {"keyring": Keyring(KEY)}):
        with contextlib.suppress(GossipDecodeError):
            read_all(bytes([first]) + rest, **options)
