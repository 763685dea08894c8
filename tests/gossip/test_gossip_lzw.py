"""Tests for the Go-compatible LZW codec, including Go's own output captured from serf."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings, strategies as st

from agentrpc.gossip import lzw, packet
from agentrpc.gossip.messages import MAX_DECOMPRESSED_BYTES, Compress, decode_body

CLEAR, EOF = 256, 257


class CodeWriter:
    """Writes a raw LZW code stream with the widths Go's reader expects (for crafted input)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.bits = 0
        self.n_bits = 0
        self.width = 9
        self.hi = 257
        self.codes = 0

    def code(self, code: int) -> None:
        self.bits |= code << self.n_bits
        self.n_bits += self.width
        while self.n_bits >= 8:
            self.out.append(self.bits & 0xFF)
            self.bits >>= 8
            self.n_bits -= 8
        if code == CLEAR:
            self.width, self.hi = 9, 257
            return
        self.hi += 1
        if self.hi >= 1 << self.width:
            if self.width == 12:
                self.hi -= 1
            else:
                self.width += 1

    def finish(self) -> bytes:
        self.code(EOF)
        if self.n_bits:
            self.out.append(self.bits & 0xFF)
        return bytes(self.out)


def go_buffers(capture: Callable[[str], bytes]) -> dict[str, bytes]:
    """The LZW buffers inside serf's compressed stream messages."""
    names = [
        "pushpull_reply_join.bin",
        "pushpull_reply_events.bin",
        "pushpull_request_from_serf.bin",
        "tcp_fallback_ping.bin",
        "tcp_ack_reply.bin",
        "tcp_err_reply.bin",
    ]
    out = {}
    for name in names:
        raw = capture(name)
        assert raw[0] == 9
        out[name] = decode_body(Compress, raw[1:]).buf
    return out


def test_empty_input_is_a_clear_and_the_eof_code() -> None:
    # 256 and 257 as 9-bit codes, least significant bit first.
    assert lzw.compress(b"") == bytes([0x00, 0x03, 0x02])
    assert lzw.decompress(b"\x00\x03\x02", 10) == b""
    assert lzw.decompress(b"\x01\x01", 10) == b""  # no leading clear is fine too


def test_known_small_vectors() -> None:
    # clear (256), 'a' (0x61), EOF (257), 9 bits each, LSB first.
    assert lzw.compress(b"a") == bytes([0x00, 0xC3, 0x04, 0x04])
    # "aaaa": clear, 'a', then the new entry 258 ("aa"), then 'a'.
    writer = CodeWriter()
    for code in (CLEAR, 0x61, 258, 0x61):
        writer.code(code)
    expected = writer.finish()
    assert lzw.compress(b"aaaa") == expected
    assert lzw.decompress(expected, 100) == b"aaaa"


def test_decodes_go_output_and_reproduces_it_byte_for_byte(
    capture: Callable[[str], bytes],
) -> None:
    for name, buf in go_buffers(capture).items():
        plain = lzw.decompress(buf, MAX_DECOMPRESSED_BYTES)
        assert plain[0] in (0, 2, 6, 13), name
        assert lzw.compress(plain) == buf, name


def test_go_output_with_table_clears(capture: Callable[[str], bytes]) -> None:
    # 64 events with 300 random hex characters each: far more than 4095 codes, so Go's
    # writer emitted clear codes; both directions must still agree with Go exactly.
    buf = go_buffers(capture)["pushpull_reply_events.bin"]
    plain = lzw.decompress(buf, MAX_DECOMPRESSED_BYTES)
    assert len(plain) > 20000
    assert len(buf) * 8 // 12 > 4096
    assert plain.count(b"ev-63") == 1
    assert lzw.compress(plain) == buf


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_round_trip_random_bytes(data: bytes) -> None:
    assert lzw.decompress(lzw.compress(data), len(data)) == data


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"b", b"ab", b"node-", b"\x00"]), max_size=2000))
def test_round_trip_repetitive_bytes(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    assert lzw.decompress(lzw.compress(data), len(data)) == data


@pytest.mark.parametrize("size", [4095, 4096, 4097, 9000, 60000])
def test_round_trip_across_table_resets(size: int) -> None:
    rng = random.Random(size)
    data = bytes(rng.getrandbits(8) for _ in range(size))
    assert lzw.decompress(lzw.compress(data), size) == data
    zeros = bytes(size * 50)
    assert lzw.decompress(lzw.compress(zeros), len(zeros)) == zeros


@given(
    st.one_of(
        st.binary(max_size=600),
        st.lists(st.sampled_from([b"a", b"b", b"ab", b"node-", b"\x00"]), max_size=300).map(
            b"".join
        ),
    ),
    st.integers(min_value=-5, max_value=700),
)
def test_giving_up_only_when_the_output_reaches_the_limit(data: bytes, limit: int) -> None:
    full = lzw.compress(data)
    assert lzw.compress(data, give_up_at=len(full) + 1) == full  # the tightest that fits
    bounded = lzw.compress(data, give_up_at=limit)
    if len(full) < limit:
        assert bounded == full  # never gives up on an output that would fit
    else:
        assert bounded in (None, full)


def test_incompressible_data_is_given_up_early() -> None:
    data = random.Random(7).randbytes(200)
    assert len(lzw.compress(data)) > len(data)
    assert lzw.compress(data, give_up_at=len(data)) is None


@given(
    st.one_of(
        st.binary(max_size=400),
        st.lists(st.sampled_from([b"a", b"b", b"ab", b"node-", b"\x00"]), max_size=300).map(
            b"".join
        ),
    )
)
def test_packets_compress_exactly_when_it_makes_them_smaller(message: bytes) -> None:
    compressed = packet.compress_message(message)
    expected = compressed if len(compressed) < len(message) else None
    assert packet.compress_if_smaller(message) == expected
    assert packet.encode_packet(message) == (expected or message)


def test_deferred_clear_keeps_decoding_without_new_entries() -> None:
    # An encoder other than Go's may keep sending 12-bit codes once the table is full
    # (hi == 4095) and clear later; Go's reader accepts that and so must we.
    writer = CodeWriter()
    rng = random.Random(7)
    literals = [rng.randrange(256) for _ in range(3838 + 5)]
    for literal in literals[:3838]:
        writer.code(literal)
    assert writer.width == 12 and writer.hi == 4095
    expected = bytearray(literals[:3838])
    # The table is now full: entry 258 + i is literals[i] + literals[i + 1].
    writer.code(258)
    expected += bytes(literals[0:2])
    writer.code(4094)  # highest entry: literals[3836] + literals[3837]
    expected += bytes(literals[3836:3838])
    for literal in literals[3838:]:
        writer.code(literal)
        expected.append(literal)
    writer.code(CLEAR)
    writer.code(ord("x"))
    writer.code(ord("y"))
    writer.code(258)  # after the clear, 258 is "xy"
    expected += b"xyxy"
    assert lzw.decompress(writer.finish(), 10**6) == bytes(expected)


def test_code_equal_to_next_entry_kwkwk_case() -> None:
    writer = CodeWriter()
    writer.code(ord("a"))
    writer.code(258)  # not yet defined: "a" + "a"
    writer.code(259)  # "aa" + "a"
    assert lzw.decompress(writer.finish(), 100) == b"a" + b"aa" + b"aaa"


def test_trailing_bytes_after_eof_are_ignored() -> None:
    assert lzw.decompress(lzw.compress(b"hello") + b"junk", 100) == b"hello"


def test_invalid_code_raises() -> None:
    writer = CodeWriter()
    writer.code(ord("a"))
    writer.code(300)
    with pytest.raises(lzw.LzwDecodeError, match="invalid LZW code 300"):
        lzw.decompress(writer.finish(), 100)


def test_code_above_table_right_after_start_raises() -> None:
    writer = CodeWriter()
    writer.code(258)
    with pytest.raises(lzw.LzwDecodeError):
        lzw.decompress(writer.finish(), 100)


def test_missing_eof_code_raises() -> None:
    data = lzw.compress(b"hello world")
    with pytest.raises(lzw.LzwDecodeError, match="before the EOF code"):
        lzw.decompress(data[:-2], 100)
    with pytest.raises(lzw.LzwDecodeError):
        lzw.decompress(b"", 100)


def test_output_exactly_at_the_cap_is_allowed_one_more_byte_is_not() -> None:
    data = os.urandom(500)
    packed = lzw.compress(data)
    assert lzw.decompress(packed, 500) == data
    with pytest.raises(lzw.LzwOutputTooLarge):
        lzw.decompress(packed, 499)


def test_decompression_bomb_stops_at_memberlists_cap() -> None:
    # Each code k after a reset expands to k bytes of zeros: a few tens of KB of codes
    # expand past 40 MB. The decoder must stop at the cap, not exhaust memory.
    writer = CodeWriter()
    for _ in range(8):
        writer.code(0)
        for code in range(258, 4095):
            writer.code(code)
        writer.code(CLEAR)
    bomb = writer.finish()
    assert len(bomb) < 60_000
    with pytest.raises(lzw.LzwOutputTooLarge):
        lzw.decompress(bomb, MAX_DECOMPRESSED_BYTES)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_input_raises_only_lzw_errors(data: bytes) -> None:
    with contextlib.suppress(lzw.LzwDecodeError):
        lzw.decompress(data, 10_000)
