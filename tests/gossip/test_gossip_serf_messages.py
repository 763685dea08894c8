"""Tests for serf's user-message codecs and the tags carried in memberlist Meta."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from agentrpc.gossip.messages import GossipDecodeError, GossipEncodeError
from agentrpc.gossip.serf_messages import (
    QUERY_FLAG_ACK,
    QUERY_FLAG_NO_BROADCAST,
    JoinIntent,
    LeaveIntent,
    NodeFilter,
    Query,
    QueryResponse,
    Relay,
    SerfMessage,
    SerfMessageType,
    SerfPushPull,
    TagFilter,
    UserEvent,
    UserEventEntry,
    UserEvents,
    decode_query_filter,
    decode_serf_message,
    decode_tags,
    encode_query_filter,
    encode_serf_message,
    encode_tags,
)
from agentrpc.gossip.stream import PushPull, StreamReader


def serf_user_state(raw_stream: bytes) -> bytes:
    reader = StreamReader()
    reader.feed(raw_stream)
    message = reader.next_message()
    assert isinstance(message, PushPull)
    return message.user_state


def test_type_bytes() -> None:
    assert [int(t) for t in SerfMessageType] == list(range(10))


# --------------------------------------------------------------------------------------------
# Known answers.


def test_serf_push_pull_state_from_go(
    capture: Callable[[str], bytes], manifest: dict[str, Any]
) -> None:
    raw = serf_user_state(capture("pushpull_reply_events.bin"))
    state = decode_serf_message(raw)
    assert isinstance(state, SerfPushPull)
    assert set(state.status_ltimes) == {"serf-a", "py-node"}
    assert all(ltime >= 1 for ltime in state.status_ltimes.values())
    assert state.left_members == ()
    # serf's event ring buffer: 512 slots, the empty ones nil.
    assert len(state.events) == 512
    present = [ev for ev in state.events if ev is not None]
    names = [entry.name for ev in present for entry in ev.events]
    assert manifest["plain"]["event"][0] in names
    assert {f"ev-{i}" for i in range(64)} <= set(names)
    assert state.event_ltime == max(ev.ltime for ev in present) + 1
    sixty_third = next(e for ev in present for e in ev.events if e.name == "ev-63")
    assert len(sixty_third.payload) == 300
    # Encoding what we decoded gives Go's bytes back (map order is kept as received).
    assert encode_serf_message(state) == raw


def test_serf_join_state_reencodes_identically(capture: Callable[[str], bytes]) -> None:
    raw = serf_user_state(capture("pushpull_reply_join.bin"))
    state = decode_serf_message(raw)
    assert isinstance(state, SerfPushPull)
    assert state.events == (None,) * 512
    assert encode_serf_message(state) == raw


def test_serf_messages_from_udp_reencode_identically(
    captured_packets: Callable[[str], list[bytes]],
) -> None:
    from agentrpc.gossip.packet import decode_packet

    seen = set()
    for packet in captured_packets("udp_packets.bin"):
        for msg_type, body in decode_packet(packet).messages:
            if msg_type == 8:
                message = decode_serf_message(body)
                seen.add(type(message))
                assert encode_serf_message(message) == body
    assert {UserEvent, Query, LeaveIntent} <= seen


# --------------------------------------------------------------------------------------------
# Tags.


def test_encode_tags_layout() -> None:
    meta = encode_tags({"role": "web", "dc": "dc1"})
    assert meta == b"\xff\x82\xa4role\xa3web\xa2dc\xa3dc1"
    assert decode_tags(meta) == {"role": "web", "dc": "dc1"}


def test_tags_from_go_meta() -> None:
    # The Meta serf-a gossiped (captured).
    assert decode_tags(b"\xff\x82\xa2dc\xa3dc1\xa4role\xa3web") == {"dc": "dc1", "role": "web"}


def test_meta_without_magic_byte_is_the_role() -> None:
    assert decode_tags(b"") == {"role": ""}
    assert decode_tags(b"web") == {"role": "web"}


def test_tags_size_limit() -> None:
    assert len(encode_tags({"k": "v" * 500})) <= 512
    with pytest.raises(GossipEncodeError, match="512"):
        encode_tags({"k": "v" * 510})


def test_malformed_tags() -> None:
    with pytest.raises(GossipDecodeError):
        decode_tags(b"\xff\x93\x01\x02\x03")
    with pytest.raises(GossipDecodeError):
        decode_tags(b"\xff\x81\xa1k\x05")
    with pytest.raises(GossipDecodeError):
        decode_tags(b"\xff\x82")
    assert decode_tags(b"\xff\xc0") == {}


@settings(max_examples=100)
@given(st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=8))
def test_tags_round_trip(tags: dict[str, str]) -> None:
    assert decode_tags(encode_tags(tags)) == tags


# --------------------------------------------------------------------------------------------
# Messages.


def test_leave_and_join_layout() -> None:
    leave = encode_serf_message(LeaveIntent(ltime=5, node="py-node"))
    assert leave[0] == SerfMessageType.LEAVE
    assert msgpack.unpackb(leave[1:], raw=True) == {
        b"LTime": 5,
        b"Node": b"py-node",
        b"Prune": False,
    }
    join = encode_serf_message(JoinIntent(ltime=6, node="py-node"))
    assert join == b"\x01\x82\xa5LTime\x06\xa4Node\xa7py-node"


def test_query_flags_and_filters() -> None:
    query = Query(1, 2, b"\x7f\x00\x00\x01", 7946, "src", flags=QUERY_FLAG_ACK)
    assert query.wants_ack and not query.no_broadcast
    assert Query(1, 2, b"", 0, "s", flags=QUERY_FLAG_NO_BROADCAST).no_broadcast
    assert QueryResponse(1, 2, "n", flags=QUERY_FLAG_ACK).is_ack
    for query_filter in (NodeFilter(("a", "b")), TagFilter("role", "^web$")):
        assert decode_query_filter(encode_query_filter(query_filter)) == query_filter
    assert encode_query_filter(NodeFilter(("a",))) == b"\x00\x91\xa1a"
    with pytest.raises(GossipDecodeError):
        decode_query_filter(b"\x07\x90")
    with pytest.raises(GossipDecodeError):
        decode_query_filter(b"")
    with pytest.raises(GossipDecodeError):
        decode_query_filter(b"\x00\x05")


def test_relay_round_trip_and_layout() -> None:
    inner = encode_serf_message(QueryResponse(1, 2, "n", 0, b"resp"))
    relay = Relay(dest_ip=b"\x7f\x00\x00\x01", dest_port=7946, dest_name="dest", message=inner)
    encoded = encode_serf_message(relay)
    assert encoded[0] == SerfMessageType.RELAY
    assert encoded.endswith(inner)
    assert decode_serf_message(encoded) == relay
    header = msgpack.Unpacker(raw=True)
    header.feed(encoded[1:])
    assert header.unpack() == {
        b"DestAddr": {b"IP": b"\x7f\x00\x00\x01", b"Port": 7946, b"Zone": b""},
        b"DestName": b"dest",
    }
    with pytest.raises(GossipDecodeError, match="relayHeader"):
        decode_serf_message(b"\x09\x82")


def test_decode_errors() -> None:
    with pytest.raises(GossipDecodeError, match="empty"):
        decode_serf_message(b"")
    for msg_type in (6, 7, 8, 10, 200):
        with pytest.raises(GossipDecodeError, match="unknown type"):
            decode_serf_message(bytes([msg_type]) + b"\x80")
    with pytest.raises(GossipDecodeError, match=r"messageJoin\.LTime"):
        decode_serf_message(b"\x01" + msgpack.packb({"LTime": "x"}))
    with pytest.raises(GossipDecodeError, match="StatusLTimes"):
        decode_serf_message(b"\x02" + msgpack.packb({"StatusLTimes": [1]}))
    with pytest.raises(GossipDecodeError, match="Events"):
        decode_serf_message(b"\x02" + msgpack.packb({"Events": 5}))
    with pytest.raises(GossipDecodeError, match="Filters"):
        decode_serf_message(b"\x04" + msgpack.packb({"Filters": [5]}))
    with pytest.raises(GossipEncodeError):
        encode_serf_message(LeaveIntent(ltime=-1, node="n"))


u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
names = st.text(max_size=12)
raw = st.binary(max_size=30)
user_events = st.builds(
    UserEvents, u64, st.lists(st.builds(UserEventEntry, names, raw), max_size=3).map(tuple)
)
serf_messages = st.one_of(
    st.builds(LeaveIntent, u64, names, st.booleans()),
    st.builds(JoinIntent, u64, names),
    st.builds(
        SerfPushPull,
        u64,
        st.dictionaries(names, u64, max_size=5),
        st.lists(names, max_size=3).map(tuple),
        u64,
        st.lists(st.one_of(st.none(), user_events), max_size=4).map(tuple),
        u64,
    ),
    st.builds(UserEvent, u64, names, raw, st.booleans()),
    st.builds(
        Query,
        u64,
        u32,
        raw,
        st.integers(0, 65535),
        names,
        st.lists(raw, max_size=3).map(tuple),
        u32,
        st.integers(0, 255),
        st.integers(-(2**63), 2**63 - 1),
        names,
        raw,
    ),
    st.builds(QueryResponse, u64, u32, names, u32, raw),
    st.builds(Relay, raw, st.integers(0, 65535), names, raw, names),
)


@settings(max_examples=300)
@given(serf_messages)
def test_serf_message_round_trip(message: SerfMessage) -> None:
    assert decode_serf_message(encode_serf_message(message)) == message


@settings(max_examples=300)
@given(st.integers(0, 10), st.binary(max_size=100))
def test_arbitrary_serf_bytes_raise_only_decode_errors(msg_type: int, body: bytes) -> None:
    for decode in (decode_serf_message, decode_tags, decode_query_filter):
        with contextlib.suppress(GossipDecodeError):
            decode(bytes([msg_type if decode is decode_serf_message else 0xFF]) + body)
