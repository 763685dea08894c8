"""The sans-I/O codec: decoding requests from arbitrary byte slices, limits, exact bytes."""

from __future__ import annotations

import tracemalloc

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from agentrpc.protocol.bodies import BODY_DECODERS, JoinRequest
from agentrpc.protocol.codec import (
    Encoded,
    Request,
    RequestDecoder,
    RequestEncoder,
    Response,
    ResponseDecoder,
    ResponseEncoder,
    parse_request_header,
)
from agentrpc.protocol.errors import FrameTooLarge, ProtocolError


def pack(*objects: object) -> bytes:
    return b"".join(msgpack.packb(obj) for obj in objects)


def decode_all(data: bytes, step: int, max_frame_size: int = 1 << 20) -> list[Request]:
    decoder = RequestDecoder(max_frame_size)
    out: list[Request] = []
    for start in range(0, len(data), step):
        decoder.feed(data[start : start + step])
        out.extend(decoder)
    return out


STREAM = pack(
    {"Command": "handshake", "Seq": 1, "Token": ""},
    {"Version": 1},
    {"Command": "members-lan", "Seq": 2, "Token": ""},
    {"Command": "join", "Seq": 3, "Token": "t"},
    {"Existing": ["127.0.0.1:8301"], "WAN": False},
    ["stats", 4, ""],
    {"Command": "stop", "Seq": 5},
    {"Stop": 9},
)
EXPECTED = [
    Request("handshake", 1, "", {"Version": 1}),
    Request("members-lan", 2, "", None),
    Request("join", 3, "t", {"Existing": ["127.0.0.1:8301"], "WAN": False}),
    Request("stats", 4, "", None),
    Request("stop", 5, None, {"Stop": 9}),
]


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 100_000])
def test_decodes_across_every_frame_boundary(step: int) -> None:
    assert decode_all(STREAM, step) == EXPECTED


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=200))
def test_decodes_any_slicing(cuts: list[int]) -> None:
    decoder = RequestDecoder()
    out: list[Request] = []
    position = 0
    for cut in cuts:
        decoder.feed(STREAM[position : position + cut])
        out.extend(decoder)
        position += cut
    decoder.feed(STREAM[position:])
    out.extend(decoder)
    assert out == EXPECTED


def test_header_waiting_for_its_body_is_not_returned() -> None:
    decoder = RequestDecoder()
    decoder.feed(pack({"Command": "monitor", "Seq": 7}))
    assert list(decoder) == []
    assert decoder.awaiting_body
    decoder.feed(pack({"LogLevel": "debug"}))
    assert list(decoder) == [Request("monitor", 7, None, {"LogLevel": "debug"})]
    assert not decoder.awaiting_body


def test_unknown_command_is_returned_without_reading_a_body() -> None:
    decoder = RequestDecoder()
    decoder.feed(pack({"Command": "frobnicate", "Seq": 3}, {"Command": "stats", "Seq": 4}))
    assert list(decoder) == [Request("frobnicate", 3, None, None), Request("stats", 4, None, None)]


@pytest.mark.parametrize(
    "header",
    [
        "just a string",
        42,
        None,
        [],
        ["stats"],
        {"Seq": 1},
        {"Command": "stats"},
        {"Command": "stats", "Seq": -1},
        {"Command": "stats", "Seq": 1.5},
        {"Command": "stats", "Seq": True},
        {"Command": "stats", "Seq": "1"},
        {"Command": 7, "Seq": 1},
        {"Command": "stats", "Seq": 1, "Token": 5},
        ["stats", 1, "", "extra"],
    ],
)
def test_malformed_headers_are_protocol_errors(header: object) -> None:
    decoder = RequestDecoder()
    decoder.feed(pack(header))
    with pytest.raises(ProtocolError):
        list(decoder)


def test_malformed_header_keeps_seq_when_it_is_readable() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request_header({"Command": 5, "Seq": 11})
    assert info.value.seq == 11


def test_max_seq_is_uint64() -> None:
    assert parse_request_header({"Command": "stats", "Seq": 2**64 - 1}) == (
        "stats",
        2**64 - 1,
        None,
    )


def test_garbage_bytes_are_a_protocol_error() -> None:
    decoder = RequestDecoder()
    decoder.feed(b"\xc1\xc1\xc1")  # 0xc1 is never used in msgpack
    with pytest.raises(ProtocolError):
        list(decoder)


def test_huge_declared_string_is_never_allocated() -> None:
    decoder = RequestDecoder(max_frame_size=1024)
    # A str32 header declaring 100 MB: nothing is allocated for it, and the buffer refuses to
    # grow past the limit as the bytes arrive.
    tracemalloc.start()
    try:
        decoder.feed(b"\xdb" + (100_000_000).to_bytes(4, "big") + b"x" * 10)
        assert list(decoder) == []
        with pytest.raises(FrameTooLarge):
            for _ in range(100):
                decoder.feed(b"x" * 4096)
                list(decoder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_a_frame_larger_than_the_limit_is_refused_while_streaming() -> None:
    decoder = RequestDecoder(max_frame_size=1024)
    big = pack({"Command": "join", "Seq": 1}, {"Existing": ["x" * 200_000], "WAN": False})
    with pytest.raises(FrameTooLarge) as info:
        for start in range(0, len(big), 4096):
            decoder.feed(big[start : start + 4096])
            list(decoder)
    assert info.value.seq == 1
    assert info.value.command == "join"


def test_frames_up_to_the_limit_are_fine() -> None:
    body = {"Existing": ["y" * 900], "WAN": False}
    data = pack({"Command": "join", "Seq": 1}, body)
    assert decode_all(data, 13, max_frame_size=1024) == [Request("join", 1, None, body)]


def test_deep_nesting_is_a_protocol_error() -> None:
    decoder = RequestDecoder()
    decoder.feed(b"\x91" * 100_000)
    with pytest.raises(ProtocolError):
        list(decoder)


def test_invalid_utf8_is_kept_byte_for_byte() -> None:
    # Go strings are bytes: the reference reads this header (and answers Unsupported command).
    decoder = RequestDecoder()
    decoder.feed(b"\x82\xa7Command\xa3\xff\xfe\xfd\xa3Seq\x01")
    assert list(decoder) == [Request("\udcff\udcfe\udcfd", 1, None, None)]


def test_response_header_bytes_are_exactly_the_references() -> None:
    encoder = ResponseEncoder()
    assert encoder.header(1) == b"\x82\xa5Error\xa0\xa3Seq\x01"
    assert encoder.header(300, "Handshake required") == (
        b"\x82\xa5Error\xb2Handshake required\xa3Seq\xcd\x01\x2c"
    )
    # A 40-byte error uses str8 (new spec), not str16.
    assert encoder.header(2, "e" * 40)[7:9] == b"\xd9\x28"
    assert msgpack.unpackb(encoder.header(2**64 - 1)) == {"Error": "", "Seq": 2**64 - 1}


def test_response_keeps_header_and_body_together() -> None:
    encoder = ResponseEncoder()
    frame = encoder.response(5, "", {"Num": 2})
    unpacker = msgpack.Unpacker()
    unpacker.feed(frame)
    assert list(unpacker) == [{"Error": "", "Seq": 5}, {"Num": 2}]
    cached = Encoded(msgpack.packb({"Members": []}))
    assert encoder.response(6, "", cached) == encoder.header(6) + b"\x81\xa7Members\x90"


def test_bytes_encode_as_bin_and_strings_as_str() -> None:
    frame = ResponseEncoder().body({"Addr": b"\x7f\x00\x00\x01", "Name": "n"})
    assert b"\xc4\x04\x7f\x00\x00\x01" in frame  # bin8 of length 4
    assert b"\xa1n" in frame  # fixstr


def test_request_encoder_and_response_decoder_round_trip() -> None:
    request = RequestEncoder().request("handshake", 1, {"Version": 1})
    assert decode_all(request, 3) == [Request("handshake", 1, "", {"Version": 1})]
    decoder = ResponseDecoder()
    decoder.expect(1, body=False)
    decoder.expect(2, body=True)
    decoder.expect(3, body=False, stream=True)
    encoder = ResponseEncoder()
    data = (
        encoder.header(9)  # unknown Seq: skipped, no body read
        + encoder.header(1)
        + encoder.response(2, "boom", {"Num": 0})
        + encoder.header(3)
        + encoder.response(3, "", {"Log": "line 1"})
        + encoder.response(3, "", {"Log": "line 2"})
    )
    out: list[Response] = []
    for start in range(0, len(data), 5):
        decoder.feed(data[start : start + 5])
        out.extend(decoder)
    assert out == [
        Response(9, "", None),
        Response(1, "", None),
        Response(2, "boom", {"Num": 0}),
        Response(3, "", None),
        Response(3, "", {"Log": "line 1"}),
        Response(3, "", {"Log": "line 2"}),
    ]


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    decoder = RequestDecoder(max_frame_size=256)
    try:
        decoder.feed(data)
        for request in decoder:
            assert isinstance(request, Request)
    except ProtocolError:
        pass


def test_decoder_holds_no_parser_between_whole_frames() -> None:
    decoder = RequestDecoder()
    frame = pack({"Command": "stats", "Seq": 1})
    decoder.feed(frame)
    assert list(decoder) == [Request("stats", 1, None, None)]
    assert decoder._unpacker is None  # idle: msgpack's ~45 KiB parser state is released
    decoder.feed(frame[:5])  # a partial frame keeps it
    assert list(decoder) == []
    assert decoder._unpacker is not None
    decoder.feed(frame[5:] + pack({"Command": "monitor", "Seq": 2}))
    assert list(decoder) == [Request("stats", 1, None, None)]
    # A header waiting for its body survives the release of the parser.
    assert decoder.awaiting_body
    decoder.feed(pack({"LogLevel": "warn"}))
    assert list(decoder) == [Request("monitor", 2, None, {"LogLevel": "warn"})]


def test_body_decoders_turn_bodies_into_their_types_as_they_arrive() -> None:
    decoder = RequestDecoder(body_decoders=BODY_DECODERS)
    decoder.feed(pack({"Command": "join", "Seq": 4}, {"Existing": ["a:1"], "WAN": True}))
    [request] = list(decoder)
    assert request == Request("join", 4, None, JoinRequest(["a:1"], True))
    decoder.feed(pack({"Command": "join", "Seq": 5}, {"Existing": 7}))
    with pytest.raises(ProtocolError) as info:
        list(decoder)
    assert (info.value.seq, info.value.command) == (5, "join")
