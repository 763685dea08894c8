"""Strings as Go peers send them: any bytes in a str, bin where a str is expected.

Frames are built by hand, byte by byte, the way go-msgpack writes them: fixstr for short
strings, str8 (``0xd9``, new spec with ``WriteExt``) or str16 (``0xda``, the old spec of its
default handle, which has no str8) for longer ones, and bin (``0xc4``) for a ``[]byte``.
"""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from agentrpc.protocol.codec import (
    Request,
    RequestDecoder,
    RequestEncoder,
    Response,
    ResponseDecoder,
    ResponseEncoder,
    as_text,
    new_packer,
    parse_request_header,
    text_bytes,
)
from agentrpc.protocol.errors import ProtocolError

NAME = b"n\xff\xfe\x80-node"
"""A node name that is not UTF-8 (a lone continuation byte, 0xfe/0xff never valid)."""
NAME_TEXT = "n\udcff\udcfe\udc80-node"


def fixstr(raw: bytes) -> bytes:
    assert len(raw) < 32
    return bytes((0xA0 | len(raw),)) + raw


def str8(raw: bytes) -> bytes:
    return b"\xd9" + bytes((len(raw),)) + raw


def str16(raw: bytes) -> bytes:
    return b"\xda" + len(raw).to_bytes(2, "big") + raw


def bin8(raw: bytes) -> bytes:
    return b"\xc4" + bytes((len(raw),)) + raw


WRITERS = {"fixstr": fixstr, "str8": str8, "str16": str16, "bin8": bin8}


def request_header(command: bytes, seq: int, writer: str) -> bytes:
    """``{Command, Seq, Token}`` with sorted keys, the strings written by ``writer``."""
    write = WRITERS[writer]
    assert seq < 128
    return (
        b"\x83"
        + fixstr(b"Command")
        + write(command)
        + fixstr(b"Seq")
        + bytes((seq,))
        + fixstr(b"Token")
        + write(b"")
    )


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("step", [1, 3, 1000])
def test_force_leave_with_a_non_utf8_name_decodes_byte_for_byte(writer: str, step: int) -> None:
    write = WRITERS[writer]
    frame = request_header(b"force-leave", 2, writer) + b"\x81" + fixstr(b"Node") + write(NAME)
    decoder = RequestDecoder()
    out: list[Request] = []
    for start in range(0, len(frame), step):
        decoder.feed(frame[start : start + step])
        out.extend(decoder)
    assert out == [Request("force-leave", 2, "", {"Node": NAME_TEXT if writer != "bin8" else NAME})]
    # The body decoder (bodies.decode_force_leave) turns bin into the same text.
    assert as_text(out[0].body["Node"]) == NAME_TEXT
    assert text_bytes(NAME_TEXT) == NAME


def test_a_long_go_string_in_str16() -> None:
    long_name = b"\xe2\x82" + b"x" * 300 + b"\xff"  # a cut UTF-8 sequence, then more bytes
    frame = request_header(b"force-leave", 5, "str16") + b"\x81\xa4Node" + str16(long_name)
    decoder = RequestDecoder()
    decoder.feed(frame)
    (request,) = list(decoder)
    assert text_bytes(request.body["Node"]) == long_name


def test_header_strings_may_be_bin() -> None:
    assert parse_request_header({"Command": b"stats", "Seq": 1, "Token": b"t\xff"}) == (
        "stats",
        1,
        "t\udcff",
    )
    with pytest.raises(ProtocolError):
        parse_request_header({"Command": b"stats", "Seq": 1, "Token": 5})


@given(st.binary(max_size=300))
def test_any_bytes_round_trip_through_decoder_and_packer(raw: bytes) -> None:
    frame = request_header(b"force-leave", 9, "str16") + b"\x81\xa4Node" + str16(raw)
    decoder = RequestDecoder()
    decoder.feed(frame)
    (request,) = list(decoder)
    # Packed back in the new spec's smallest str form, holding exactly the bytes received.
    expected = fixstr(raw) if len(raw) < 32 else str8(raw) if len(raw) < 256 else str16(raw)
    assert new_packer()(request.body) == b"\x81\xa4Node" + expected


def test_packer_writes_surrogates_back_as_their_bytes_and_stays_usable() -> None:
    pack = new_packer()
    assert pack({"Name": NAME_TEXT}) == b"\x81\xa4Name" + fixstr(NAME)
    # The strict fast path raised and was reset: the next value is packed cleanly.
    assert pack({"Name": "plain"}) == b"\x81\xa4Name\xa5plain"
    # A lone surrogate that no bytes stand for is still refused.
    with pytest.raises(UnicodeEncodeError):
        pack("\ud800")
    assert pack("ok") == b"\xa2ok"


def test_members_body_lists_a_non_utf8_name_unchanged() -> None:
    encoder = ResponseEncoder()
    body = {"Members": [{"Name": NAME_TEXT, "Addr": b"\x7f\x00\x00\x01", "Tags": {}}]}
    frame = encoder.response(4, "", body)
    assert frame.startswith(b"\x82\xa5Error\xa0\xa3Seq\x04")
    assert fixstr(b"Name") + fixstr(NAME) in frame
    # An error that quotes the name carries its bytes too.
    error = encoder.header(5, "Unknown log level: " + NAME_TEXT)
    assert error == b"\x82\xa5Error" + fixstr(b"Unknown log level: " + NAME) + b"\xa3Seq\x05"


def test_request_encoder_sends_the_original_bytes() -> None:
    frame = RequestEncoder().request("force-leave", 3, {"Node": NAME_TEXT})
    assert frame.endswith(b"\x81\xa4Node" + fixstr(NAME))
    decoder = RequestDecoder()
    decoder.feed(frame)
    assert list(decoder) == [Request("force-leave", 3, "", {"Node": NAME_TEXT})]


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_client_decoder_reads_go_responses(writer: str) -> None:
    write = WRITERS[writer]
    decoder = ResponseDecoder()
    decoder.expect(1, body=False)
    decoder.expect(2, body=False, stream=True)
    frames = (
        b"\x82" + fixstr(b"Error") + write(b"bad \xff") + fixstr(b"Seq") + b"\x01"
        # A monitor: its ack, then one log line that is not UTF-8.
        + b"\x82" + fixstr(b"Error") + write(b"") + fixstr(b"Seq") + b"\x02"
        + b"\x82" + fixstr(b"Error") + write(b"") + fixstr(b"Seq") + b"\x02"
        + b"\x81" + fixstr(b"Log") + write(b"[INFO] " + NAME)
    )  # fmt: skip
    for start in range(0, len(frames), 5):
        decoder.feed(frames[start : start + 5])
    responses = list(decoder)
    assert responses[0] == Response(1, "bad \udcff", None)
    assert responses[1] == Response(2, "", None)
    log = responses[2].body["Log"]
    assert as_text(log) == "[INFO] " + NAME_TEXT


def test_as_text_refuses_other_types() -> None:
    assert as_text(None) is None
    assert as_text(5) is None
    assert as_text(["x"]) is None
    assert as_text(bytearray(b"x")) is None
