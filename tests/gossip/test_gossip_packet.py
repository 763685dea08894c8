"""Tests for UDP packet framing: compound, CRC, compression, label, and both pipelines."""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from agentrpc.gossip import lzw
from agentrpc.gossip.messages import (
    AckResp,
    Alive,
    GossipDecodeError,
    GossipEncodeError,
    MessageType,
    Ping,
    encode_message,
)
from agentrpc.gossip.packet import (
    CrcMismatchError,
    LabelError,
    add_crc,
    add_label,
    compress_message,
    decode_packet,
    decompress_body,
    encode_packet,
    encode_packets,
    label_overhead,
    make_compound,
    make_compounds,
    split_compound,
    strip_crc,
    strip_label,
)
from agentrpc.gossip.security import DecryptError, Keyring, encrypt_packet, parse_key
from agentrpc.gossip.serf_messages import (
    LeaveIntent,
    NodeFilter,
    Query,
    TagFilter,
    UserEvent,
    decode_query_filter,
    decode_serf_message,
)

KEY = bytes(range(16))
PING = encode_message(Ping(seq_no=7, node="n"))
ACK = encode_message(AckResp(seq_no=7))


# --------------------------------------------------------------------------------------------
# Compound.


def test_compound_layout() -> None:
    assert make_compound([b"\x00ab", b"\x02c"]) == b"\x07\x02\x00\x03\x00\x02\x00ab\x02c"
    assert make_compound([]) == b"\x07\x00"


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=300), max_size=255))
def test_compound_round_trip(parts: list[bytes]) -> None:
    compound = make_compound(parts)
    assert compound[0] == MessageType.COMPOUND
    split = split_compound(compound[1:])
    assert split.parts == tuple(parts)
    assert split.truncated == 0


def test_compound_part_limits() -> None:
    make_compound([b"x"] * 255)
    with pytest.raises(GossipEncodeError, match="at most 255 parts"):
        make_compound([b"x"] * 256)
    with pytest.raises(GossipEncodeError, match="exceeds 65535"):
        make_compound([bytes(65536)])


def test_make_compounds_splits_large_batches() -> None:
    parts = [bytes([i % 256]) for i in range(600)]
    compounds = make_compounds(parts)
    assert [c[1] for c in compounds] == [255, 255, 90]
    rejoined = [p for c in compounds for p in split_compound(c[1:]).parts]
    assert rejoined == parts
    assert make_compounds([]) == []


def test_truncated_compound_keeps_whole_parts_and_counts_the_rest() -> None:
    compound = make_compound([b"\x00one", b"\x00two", b"\x00three"])
    split = split_compound(compound[1 : len(compound) - 3])
    assert split.parts == (b"\x00one", b"\x00two")
    assert split.truncated == 1
    header_only = split_compound(compound[1:8])
    assert header_only.parts == () and header_only.truncated == 3


def test_compound_header_errors() -> None:
    with pytest.raises(GossipDecodeError, match="missing its length byte"):
        split_compound(b"")
    with pytest.raises(GossipDecodeError, match="truncated length table"):
        split_compound(b"\x03\x00\x01\x00")


# --------------------------------------------------------------------------------------------
# CRC, compression, label.


def test_crc_header() -> None:
    wrapped = add_crc(PING)
    assert wrapped[0] == MessageType.HAS_CRC
    assert struct.unpack(">I", wrapped[1:5])[0] == zlib.crc32(PING)
    assert strip_crc(wrapped) == (PING, True)
    assert strip_crc(PING) == (PING, False)


def test_corrupt_crc_is_rejected() -> None:
    wrapped = bytearray(add_crc(PING))
    wrapped[-1] ^= 0x40
    with pytest.raises(CrcMismatchError, match="invalid checksum"):
        strip_crc(bytes(wrapped))
    with pytest.raises(CrcMismatchError, match="too short"):
        strip_crc(b"\x0c\x00\x00")


def test_compress_message_layout() -> None:
    out = compress_message(PING)
    assert out[0] == MessageType.COMPRESS
    fields = msgpack.unpackb(out[1:], raw=True)
    assert list(fields) == [b"Algo", b"Buf"]
    assert fields[b"Algo"] == 0
    assert lzw.decompress(fields[b"Buf"], 1000) == PING
    assert decompress_body(out[1:]) == PING


def test_decompress_errors() -> None:
    unknown = msgpack.packb({"Algo": 1, "Buf": b"x"}, use_bin_type=False)
    with pytest.raises(GossipDecodeError, match="unknown algorithm 1"):
        decompress_body(unknown)
    big = compress_message(bytes(5000))
    with pytest.raises(lzw.LzwOutputTooLarge):
        decompress_body(big[1:], max_size=4999)


def test_label_header() -> None:
    assert add_label(PING, b"") == PING
    labelled = add_label(PING, b"prod")
    assert labelled == b"\xf4\x04prod" + PING
    assert strip_label(labelled) == (b"prod", PING)
    assert strip_label(PING) == (b"", PING)
    assert label_overhead(b"prod") == 6 and label_overhead(b"") == 0
    with pytest.raises(GossipEncodeError):
        add_label(PING, b"x" * 256)


@pytest.mark.parametrize(
    ("packet", "match"),
    [(b"\xf4", "truncated"), (b"\xf4\x00rest", "cannot be empty"), (b"\xf4\x05ab", "truncated")],
)
def test_bad_label_headers(packet: bytes, match: str) -> None:
    with pytest.raises(LabelError, match=match):
        strip_label(packet)


# --------------------------------------------------------------------------------------------
# The pipelines.


def test_single_message_is_sent_plain_when_compression_does_not_help() -> None:
    assert encode_packet(PING) == PING
    assert encode_packets([PING]) == [PING]


def test_compression_is_used_when_smaller() -> None:
    big = encode_message(Alive(1, "node-" * 20, b"\x7f\x00\x00\x01", 7946, b"m" * 200))
    packet = encode_packet(big)
    assert packet[0] == MessageType.COMPRESS and len(packet) < len(big)
    assert decode_packet(packet).messages == ((MessageType.ALIVE, big[1:]),)
    assert encode_packet(big, compress=False) == big


def test_full_outbound_then_inbound_pipeline() -> None:
    ring = Keyring(KEY)
    packets = encode_packets([PING, ACK] * 3, crc=True, keyring=ring, label=b"lbl")
    assert len(packets) == 1
    assert packets[0].startswith(b"\xf4\x03lbl")
    inbound = decode_packet(packets[0], label=b"lbl", keyring=ring)
    assert inbound.messages == ((0, PING[1:]), (2, ACK[1:])) * 3
    assert inbound.had_crc and inbound.encrypted and inbound.label == b"lbl"
    assert inbound.truncated == 0 and inbound.problems == ()


def test_batches_over_255_messages_make_several_packets() -> None:
    packets = encode_packets([ACK] * 300, compress=False)
    assert len(packets) == 2
    counts = [len(decode_packet(p).messages) for p in packets]
    assert counts == [255, 45]
    assert encode_packets([]) == []


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.sampled_from([PING, ACK, b"\x08serf-user-message"]), min_size=1, max_size=40),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.binary(max_size=10),
)
def test_pipeline_round_trip(
    messages: list[bytes], compress: bool, crc: bool, encrypt: bool, label: bytes
) -> None:
    ring = Keyring(KEY) if encrypt else None
    (packet,) = encode_packets(messages, compress=compress, crc=crc, keyring=ring, label=label)
    inbound = decode_packet(packet, label=label, keyring=ring)
    assert inbound.messages == tuple((m[0], m[1:]) for m in messages)


def test_label_mismatch_rejects_the_packet() -> None:
    with pytest.raises(LabelError, match="unacceptable label"):
        decode_packet(add_label(PING, b"a"), label=b"b")
    with pytest.raises(LabelError):
        decode_packet(PING, label=b"b")
    with pytest.raises(LabelError):
        decode_packet(add_label(PING, b"a"))


def test_encryption_is_required_unless_verify_incoming_is_off() -> None:
    ring = Keyring(KEY)
    with pytest.raises(DecryptError):
        decode_packet(PING, keyring=ring)
    relaxed = decode_packet(PING, keyring=ring, verify_incoming=False)
    assert relaxed.messages == ((0, PING[1:]),) and not relaxed.encrypted
    sealed = encrypt_packet(Keyring(bytes(32)), PING)
    with pytest.raises(DecryptError, match="no installed keys"):
        decode_packet(sealed, keyring=ring)


def test_corrupt_crc_rejects_the_packet() -> None:
    packet = bytearray(encode_packet(PING, crc=True))
    packet[3] ^= 1
    with pytest.raises(CrcMismatchError):
        decode_packet(bytes(packet))


def test_content_problems_are_reported_next_to_the_good_messages() -> None:
    bad_compress = b"\x09" + msgpack.packb({"Algo": 0, "Buf": b"\xff\xff"}, use_bin_type=False)
    truncated = make_compound([ACK, ACK])[:-2]
    parts = [PING, b"", b"\x06pushpull", bad_compress, b"\x07", ACK, truncated]
    inbound = decode_packet(make_compound([make_compound(parts)]))
    assert inbound.messages == ((0, PING[1:]), (2, ACK[1:]), (2, ACK[1:]))
    assert inbound.truncated == 1
    assert len(inbound.problems) == 4
    assert "missing message type byte" in inbound.problems[0]
    assert "type 6 not supported" in inbound.problems[1]
    assert "failed to decompress" in inbound.problems[2]
    assert "failed to decode compound" in inbound.problems[3]


def test_nesting_is_bounded() -> None:
    message = PING
    for _ in range(12):
        message = make_compound([message])
    inbound = decode_packet(message)
    assert inbound.messages == ()
    assert "nesting" in inbound.problems[0]


def test_oversized_decompression_inside_a_packet_is_a_problem() -> None:
    packet = compress_message(make_compound([bytes(3000)]))
    inbound = decode_packet(packet, max_decompressed=1000)
    assert inbound.messages == ()
    assert "larger" in inbound.problems[0] or "more than" in inbound.problems[0]


# --------------------------------------------------------------------------------------------
# Known answers: packets a real serf agent sent.


def test_serf_udp_packets(
    captured_packets: Callable[[str], list[bytes]], manifest: dict[str, Any]
) -> None:
    plain = manifest["plain"]
    packets = captured_packets("udp_packets.bin")
    by_kind: dict[str, list[Any]] = {}
    with_crc = 0
    compressed = 0
    for packet in packets:
        inbound = decode_packet(packet)
        assert inbound.problems == () and inbound.truncated == 0
        with_crc += inbound.had_crc
        compressed += packet[0] == MessageType.COMPRESS
        for msg_type, body in inbound.messages:
            if msg_type == MessageType.USER:
                serf_message = decode_serf_message(body)
                by_kind.setdefault(type(serf_message).__name__, []).append(serf_message)
            else:
                by_kind.setdefault(MessageType(msg_type).name, []).append(body)
    # Gossip to a peer advertising PMax 5 carries a CRC; some packets were compressed.
    assert with_crc > 0 and compressed > 0
    assert {"PING", "ALIVE", "DEAD", "UserEvent", "Query", "LeaveIntent"} <= set(by_kind)

    event_name, event_payload = plain["event"]
    events = [e for e in by_kind["UserEvent"] if e.name == event_name]
    assert events and all(isinstance(e, UserEvent) for e in events)
    assert events[0].payload == event_payload.encode()

    query = by_kind["Query"][0]
    assert isinstance(query, Query)
    assert (query.name, query.payload) == (plain["query"][0], plain["query"][1].encode())
    assert query.source_node == plain["serf_node"] and query.port == plain["serf_port"]
    assert query.addr == b"\x7f\x00\x00\x01"
    filters = [decode_query_filter(f) for f in query.filters]
    assert NodeFilter((plain["our_node"],)) in filters
    assert TagFilter("role", "py") in filters
    assert query.no_broadcast is False and query.wants_ack is False

    leave = by_kind["LeaveIntent"][0]
    assert isinstance(leave, LeaveIntent) and leave.node == plain["serf_node"]


def test_serf_ack_to_our_ping(capture: Callable[[str], bytes], manifest: dict[str, Any]) -> None:
    inbound = decode_packet(capture("ack_to_our_ping.bin"))
    ((msg_type, body),) = inbound.messages
    assert msg_type == MessageType.ACK_RESP
    fields = msgpack.unpackb(body, raw=True)
    assert fields[b"SeqNo"] == manifest["plain"]["our_ping_seq"]
    assert fields[b"Payload"][0] == 1  # serf: 0x01 + msgpack Vivaldi coordinate


def test_serf_encrypted_packets(
    captured_packets: Callable[[str], list[bytes]], manifest: dict[str, Any]
) -> None:
    ring = Keyring(parse_key(manifest["encrypted"]["key"]))
    kinds: set[int] = set()
    for packet in captured_packets("encrypted_udp_packets.bin"):
        inbound = decode_packet(packet, keyring=ring)
        assert inbound.encrypted and inbound.problems == ()
        kinds.update(msg_type for msg_type, _ in inbound.messages)
        with pytest.raises(DecryptError):
            decode_packet(packet, keyring=Keyring(bytes(32)))
    assert MessageType.PING in kinds


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_packets_raise_only_decode_errors(packet: bytes) -> None:
    for candidate in (packet, b"\x07" + packet, b"\x09" + packet, b"\x0c" + packet):
        with contextlib.suppress(GossipDecodeError):
            decode_packet(candidate)
