"""The byte-0 codec (sans-I/O) and the RPC server over memory streams (autojump clock)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import given, settings, strategies as st
from sp_helpers import LogCapture, read_exactly, request_bytes, response_bytes

from agentrpc.protocol.errors import FrameTooLarge, ProtocolError
from agentrpc.serverport.endpoints import (
    EndpointError,
    Endpoints,
    RemoteError,
    RPCCallError,
    RPCServer,
    call_on_stream,
)
from agentrpc.serverport.rpc_codec import (
    MAX_SEQ,
    RequestDecoder,
    ResponseDecoder,
    RPCRequest,
    RPCResponse,
    encode_request,
    encode_response,
    lookup_error,
)
from agentrpc.transports import memory_stream_pair

# ----------------------------------------------------------------------------- encoding


def test_request_bytes_are_go_msgpack_sorted_struct_map() -> None:
    # Go: rpc.Request{ServiceMethod, Seq} through go-msgpack: a map, keys sorted by name.
    assert encode_request("Status.Ping", 1, {}) == (
        b"\x82\xa3Seq\x01\xadServiceMethod\xabStatus.Ping\x80"
    )
    assert encode_request("Status.Ping", 1, {}) == request_bytes("Status.Ping", 1)


def test_response_bytes_are_go_msgpack_sorted_struct_map() -> None:
    assert encode_response("Status.Ping", 7, "", {}) == (
        b"\x83\xa5Error\xa0\xa3Seq\x07\xadServiceMethod\xabStatus.Ping\x80"
    )
    assert encode_response("Status.Ping", 7, "", {}) == response_bytes("Status.Ping", 7)


def test_error_response_always_carries_an_empty_body() -> None:
    # net/rpc replaces the reply with invalidRequest (struct{}{} -> {}) when Error is set.
    error = "rpc: can't find service Foo.Bar"
    encoded = encode_response("Foo.Bar", 3, error, {"ignored": True})
    assert encoded == response_bytes("Foo.Bar", 3, error)
    assert encoded.endswith(b"\x80")


def test_seq_uses_the_smallest_unsigned_encoding() -> None:
    assert encode_request("A.B", 127, None)[5] == 0x7F
    assert encode_request("A.B", 128, None)[5:7] == b"\xcc\x80"
    assert encode_request("A.B", MAX_SEQ, None)[5:14] == b"\xcf" + b"\xff" * 8
    with pytest.raises(ValueError):
        encode_request("A.B", MAX_SEQ + 1, None)


def test_long_strings_use_str8_and_bytes_use_bin() -> None:
    # Consul's handle sets WriteExt: the msgpack "new spec" families.
    method = "Service." + "m" * 40
    assert encode_request(method, 0, b"\x01\x02").endswith(b"\xc4\x02\x01\x02")
    assert b"\xd9\x30" + method.encode() in encode_request(method, 0, None)


# ----------------------------------------------------------------------------- decoding


def test_decoder_accepts_positional_headers_and_missing_fields() -> None:
    decoder = RequestDecoder()
    pack = msgpack.Packer(use_bin_type=True).pack
    decoder.feed(pack(["Status.Ping", 5]) + pack({}))
    decoder.feed(pack({"ServiceMethod": "A.B"}) + pack([1, 2]))
    assert list(decoder) == [
        RPCRequest("Status.Ping", 5, {}),
        RPCRequest("A.B", 0, [1, 2]),
    ]
    responses = ResponseDecoder()
    responses.feed(pack(["A.B", 9, "boom"]) + pack({}) + pack({"Seq": 2}) + pack(None))
    assert list(responses) == [RPCResponse("A.B", 9, "boom", {}), RPCResponse("", 2, "", None)]


def test_request_waits_for_its_body() -> None:
    decoder = RequestDecoder()
    decoder.feed(request_bytes("Status.Ping", 1, body=b""))
    assert decoder.next_request() is None
    assert decoder.awaiting_body
    decoder.feed(b"\x80")
    assert decoder.next_request() == RPCRequest("Status.Ping", 1, {})
    assert not decoder.awaiting_body


@pytest.mark.parametrize(
    "header",
    [
        b"\x01",  # not a map
        b"\x81\xa3Seq\xff",  # negative Seq
        b"\x81\xa3Seq\xa1x",  # Seq not an integer
        b"\x81\xadServiceMethod\x05",  # ServiceMethod not a string
    ],
)
def test_malformed_headers_are_protocol_errors(header: bytes) -> None:
    decoder = RequestDecoder()
    decoder.feed(header)
    with pytest.raises(ProtocolError):
        decoder.next_request()


def test_garbage_and_oversized_objects() -> None:
    decoder = RequestDecoder()
    decoder.feed(b"\xc1")  # never used in msgpack
    with pytest.raises(ProtocolError):
        decoder.next_request()
    small = RequestDecoder(max_object_size=64)
    small.feed(b"\xd9\x46" + b"a" * 70)  # a 70-byte string, over the 64-byte limit
    with pytest.raises(FrameTooLarge):
        small.next_request()
    flood = RequestDecoder(max_object_size=64)
    flood.feed(b"\xdb" + (10_000_000).to_bytes(4, "big"))  # a 10 MB string announced...
    with pytest.raises(FrameTooLarge):
        flood.feed(b"\x00" * 200_000)  # ...is never buffered past the limit plus one read


_bodies = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_requests = st.lists(
    st.builds(RPCRequest, st.text(max_size=40), st.integers(0, MAX_SEQ), _bodies), max_size=8
)


@settings(max_examples=150, deadline=None)
@given(requests=_requests, data=st.data())
def test_request_decoder_fed_in_random_slices(requests: list[RPCRequest], data: Any) -> None:
    wire = b"".join(encode_request(r.service_method, r.seq, r.body) for r in requests)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    decoder = RequestDecoder()
    decoded: list[RPCRequest] = []
    start = 0
    for cut in [*cuts, len(wire)]:
        decoder.feed(wire[start:cut])
        start = cut
        decoded.extend(decoder)
    assert decoded == requests


@settings(max_examples=100, deadline=None)
@given(
    responses=st.lists(
        st.builds(
            RPCResponse,
            st.text(max_size=20),
            st.integers(0, MAX_SEQ),
            st.text(max_size=20),
            _bodies,
        ),
        max_size=6,
    ),
    data=st.data(),
)
def test_response_decoder_fed_in_random_slices(responses: list[RPCResponse], data: Any) -> None:
    wire = b"".join(encode_response(*response) for response in responses)
    expected = [r._replace(body={}) if r.error else r for r in responses]
    decoder = ResponseDecoder()
    decoded: list[RPCResponse] = []
    position = 0
    while position < len(wire):
        step = data.draw(st.integers(1, 17))
        decoder.feed(wire[position : position + step])
        position += step
        decoded.extend(decoder)
    assert decoded == expected


def test_lookup_error_texts_match_net_rpc() -> None:
    services = frozenset({"Status"})
    assert lookup_error("Foo.Bar", services) == "rpc: can't find service Foo.Bar"
    assert lookup_error("Status.Nope", services) == "rpc: can't find method Status.Nope"
    assert lookup_error("nodot", services) == "rpc: service/method request ill-formed: nodot"


def test_endpoint_names_must_be_service_dot_method() -> None:
    endpoints = Endpoints()
    assert endpoints.names() == ["Status.Ping"]
    for bad in ("Ping", ".Ping", "Status."):
        with pytest.raises(ValueError):
            endpoints.register(bad, lambda body: body)
    endpoints.register("Auto.Sign", lambda body: body, insecure=True)
    assert endpoints.names(insecure=True) == ["Auto.Sign"]
    endpoints.unregister("Auto.Sign")
    assert endpoints.get("Auto.Sign") is None


# ----------------------------------------------------------------------------- RPC server


async def _serve_pair(
    endpoints: Endpoints, log: LogCapture, nursery: trio.Nursery, *, insecure: bool = False
) -> trio.abc.HalfCloseableStream:
    client, server = memory_stream_pair()
    rpc = RPCServer(endpoints, log.logger())

    async def serve() -> None:
        try:
            await rpc.serve(server, "test-peer", insecure=insecure)
        finally:
            await server.aclose()

    nursery.start_soon(serve)
    return client


async def test_ping_and_pipelined_requests_answered_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    endpoints = Endpoints()

    async def slow_echo(body: Any) -> Any:
        await trio.sleep(5)
        return body

    endpoints.register("Test.Slow", slow_echo)
    endpoints.register("Test.Echo", lambda body: body)
    log = LogCapture()
    async with trio.open_nursery() as nursery:
        client = await _serve_pair(endpoints, log, nursery)
        await client.send_all(
            encode_request("Test.Slow", 1, "first")
            + encode_request("Test.Echo", 2, "second")
            + encode_request("Status.Ping", 3, {})
        )
        await client.send_eof()
        decoder = ResponseDecoder()
        got: list[RPCResponse] = []
        while data := await client.receive_some():
            decoder.feed(data)
            got.extend(decoder)
    # One request at a time, in order, as net/rpc's ServeRequest loop: the slow one first.
    assert got == [
        RPCResponse("Test.Slow", 1, "", "first"),
        RPCResponse("Test.Echo", 2, "", "second"),
        RPCResponse("Status.Ping", 3, "", {}),
    ]
    assert trio.current_time() >= 5


async def test_unknown_method_answers_then_closes(autojump_clock: trio.testing.MockClock) -> None:
    log = LogCapture()
    async with trio.open_nursery() as nursery:
        client = await _serve_pair(Endpoints(), log, nursery)
        await client.send_all(
            encode_request("Nope.Nothing", 4, {"x": 1}) + encode_request("Status.Ping", 5, {})
        )
        received = b""
        while data := await client.receive_some():
            received += data
    # The answer, an empty body, and EOF: the pipelined ping is never answered.
    assert received == response_bytes("Nope.Nothing", 4, "rpc: can't find service Nope.Nothing")
    assert "rpc: can't find service Nope.Nothing" in log.text


async def test_endpoint_errors_keep_the_stream_open(autojump_clock: trio.testing.MockClock) -> None:
    endpoints = Endpoints()

    def refuse(_body: Any) -> Any:
        raise EndpointError("Permission denied")

    def crash(_body: Any) -> Any:
        raise ZeroDivisionError("bug")

    endpoints.register("Test.Refuse", refuse)
    endpoints.register("Test.Crash", crash)
    endpoints.register("Test.Unencodable", lambda _body: object())
    log = LogCapture()
    async with trio.open_nursery() as nursery:
        client = await _serve_pair(endpoints, log, nursery)
        with pytest.raises(RemoteError) as refused:
            await call_on_stream(client, "Test.Refuse", {}, seq=1)
        assert refused.value.error == "Permission denied"
        with pytest.raises(RemoteError) as crashed:
            await call_on_stream(client, "Test.Crash", {}, seq=2)
        assert crashed.value.error == "rpc: internal error in Test.Crash"
        with pytest.raises(RemoteError, match="cannot encode"):
            await call_on_stream(client, "Test.Unencodable", {}, seq=3)
        assert await call_on_stream(client, "Status.Ping", {}, seq=4) == {}
        await client.aclose()
    assert "ZeroDivisionError" in log.text


async def test_insecure_streams_see_only_insecure_endpoints(
    autojump_clock: trio.testing.MockClock,
) -> None:
    endpoints = Endpoints()
    endpoints.register("AutoEncrypt.Sign", lambda body: {"signed": body}, insecure=True)
    log = LogCapture()
    async with trio.open_nursery() as nursery:
        client = await _serve_pair(endpoints, log, nursery, insecure=True)
        assert await call_on_stream(client, "AutoEncrypt.Sign", "csr", seq=1) == {"signed": "csr"}
        with pytest.raises(RemoteError, match=r"can't find service Status\.Ping"):
            await call_on_stream(client, "Status.Ping", {}, seq=2)


async def test_malformed_request_closes_and_client_reports_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = LogCapture()
    async with trio.open_nursery() as nursery:
        client = await _serve_pair(Endpoints(), log, nursery)
        await client.send_all(b"\x81\xa3Seq\xa1x")
        assert await client.receive_some() == b""
    assert "malformed request" in log.text
    # A client whose server goes away mid-call gets a clear error, not a hang.
    a, b = memory_stream_pair()
    await b.aclose()
    with pytest.raises(RPCCallError):
        await call_on_stream(a, "Status.Ping", {}, seq=1)


# ----------------------------------------------------------------------------- Go strings
# go-msgpack strings are bytes: any bytes in a str (str8 0xd9 with Consul's WriteExt handle,
# str16 0xda from the old-spec default handle), and a []byte sent as bin where a string field
# is expected. Frames below are built by hand the way go-msgpack writes them.


def _go_str(raw: bytes, kind: str) -> bytes:
    if kind == "str16":
        return b"\xda" + len(raw).to_bytes(2, "big") + raw
    if kind == "str8":
        return b"\xd9" + bytes((len(raw),)) + raw
    assert kind == "bin8"
    return b"\xc4" + bytes((len(raw),)) + raw


def _go_request(method: bytes, seq: int, body: bytes, kind: str) -> bytes:
    return b"\x82\xa3Seq" + bytes((seq,)) + b"\xadServiceMethod" + _go_str(method, kind) + body


@pytest.mark.parametrize("kind", ["str8", "str16", "bin8"])
def test_non_utf8_and_bin_header_strings_decode_byte_for_byte(kind: str) -> None:
    decoder = RequestDecoder()
    decoder.feed(_go_request(b"Status.Ping\xff", 3, b"\xa2\xfe\xfd", kind))
    (request,) = list(decoder)
    assert request == RPCRequest("Status.Ping\udcff", 3, "\udcfe\udcfd")
    # Encoded back, the bytes are the ones received.
    assert encode_response(request.service_method, 3, "", request.body) == (
        b"\x83\xa5Error\xa0\xa3Seq\x03\xadServiceMethod\xacStatus.Ping\xff\xa2\xfe\xfd"
    )
    decoder = ResponseDecoder()
    decoder.feed(b"\x82\xa5Error" + _go_str(b"bad \xff", kind) + b"\xa3Seq\x03\x80")
    assert list(decoder) == [RPCResponse("", 3, "bad \udcff", {})]


async def test_a_non_utf8_service_method_gets_net_rpcs_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = LogCapture()
    async with trio.open_nursery() as nursery:
        client = await _serve_pair(Endpoints(), log, nursery)
        await client.send_all(_go_request(b"Status.Ping\xff", 6, b"\x80", "str16"))
        received = b""
        while data := await client.receive_some():
            received += data
    # net/rpc: service "Status" exists, method "Ping\xff" does not; the text and the echoed
    # ServiceMethod carry the raw bytes; then the connection closes, as for any unknown method.
    error = b"rpc: can't find method Status.Ping\xff"
    assert received == (
        b"\x83\xa5Error\xd9" + bytes((len(error),)) + error
        + b"\xa3Seq\x06\xadServiceMethod\xacStatus.Ping\xff\x80"
    )  # fmt: skip
    assert "can't find method Status.Ping" in log.text


async def test_a_non_utf8_body_is_answered_and_the_stream_stays_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    endpoints = Endpoints()
    endpoints.register("Test.Echo", lambda body: body)
    log = LogCapture()
    async with trio.open_nursery() as nursery:
        client = await _serve_pair(endpoints, log, nursery)
        body = b"\x81\xa4Node" + _go_str(b"n\xff\xfe", "str16")
        await client.send_all(_go_request(b"Test.Echo", 1, body, "bin8"))
        expected = (
            b"\x83\xa5Error\xa0\xa3Seq\x01\xadServiceMethod\xa9Test.Echo\x81\xa4Node\xa3n\xff\xfe"
        )
        assert await read_exactly(client, len(expected)) == expected
        assert await call_on_stream(client, "Status.Ping", {}, seq=2) == {}
        await client.aclose()
    assert "malformed" not in log.text
