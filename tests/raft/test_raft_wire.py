"""The Raft RPC codec without I/O: round trips (hypothesis), go-msgpack's decoding leniency,
the stream decoders' events, and their bounds against hostile peers."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from agentrpc.protocol.errors import FrameTooLarge, ProtocolError
from agentrpc.raft.gomsgpack import DecodeError, scan_object
from agentrpc.raft.log import LogEntry
from agentrpc.raft.wire import (
    NEED_DATA,
    AppendEntriesRequest,
    AppendEntriesResponse,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    RequestDecoder,
    RequestReceived,
    RequestVoteRequest,
    RequestVoteResponse,
    ResponseDecoder,
    ResponseReceived,
    RPCType,
    SnapshotChunk,
    SnapshotEnd,
    TimeoutNowRequest,
    TimeoutNowResponse,
    encode_request,
    encode_response,
)

u64 = st.integers(0, (1 << 64) - 1)
version = st.integers(-3, 5)
blob = st.binary(max_size=300)

entries = st.builds(
    LogEntry, index=u64, term=u64, type=st.integers(0, 255), data=blob, extensions=blob
)
append_requests = st.builds(
    AppendEntriesRequest,
    term=u64,
    leader=blob,
    prev_log_entry=u64,
    prev_log_term=u64,
    entries=st.one_of(st.none(), st.lists(entries, max_size=5).map(tuple)),
    leader_commit_index=u64,
    protocol_version=version,
)
vote_requests = st.builds(
    RequestVoteRequest,
    term=u64,
    candidate=blob,
    last_log_index=u64,
    last_log_term=u64,
    leadership_transfer=st.booleans(),
    protocol_version=version,
)
snapshot_requests = st.builds(
    InstallSnapshotRequest,
    term=u64,
    leader=blob,
    last_log_index=u64,
    last_log_term=u64,
    size=st.integers(0, 2000),
    configuration=blob,
    configuration_index=u64,
    peers=blob,
    snapshot_version=version,
    protocol_version=version,
)
requests_ = st.one_of(
    append_requests, vote_requests, snapshot_requests,
    st.builds(TimeoutNowRequest, protocol_version=version),
)  # fmt: skip
responses_ = st.one_of(
    st.builds(AppendEntriesResponse, term=u64, last_log=u64, success=st.booleans(),
              no_retry_backoff=st.booleans(), protocol_version=version),
    st.builds(RequestVoteResponse, term=u64, granted=st.booleans(), peers=blob,
              protocol_version=version),
    st.builds(InstallSnapshotResponse, term=u64, success=st.booleans(), protocol_version=version),
    st.builds(TimeoutNowResponse, protocol_version=version),
)  # fmt: skip


def decode_all(decoder: RequestDecoder, data: bytes, step: int) -> list[object]:
    events = []
    for i in range(0, len(data), step):
        decoder.feed(data[i : i + step])
        while (event := decoder.next_event()) is not NEED_DATA:
            events.append(event)
    return events


@settings(max_examples=300, deadline=None)
@given(st.lists(requests_, min_size=1, max_size=4), st.integers(1, 700))
def test_requests_round_trip_through_the_stream_decoder(requests: list, step: int) -> None:
    stream = b""
    expected: list[object] = []
    for request in requests:
        stream += encode_request(request)
        expected.append(RequestReceived(request))
        if isinstance(request, InstallSnapshotRequest):
            data = bytes(range(256)) * (request.size // 256 + 1)
            stream += data[: request.size]
            expected.append(("snapshot", data[: request.size]))
            expected.append(SnapshotEnd())
    events = decode_all(RequestDecoder(), stream, step)
    # Snapshot bytes may come in any chunking: join them for the comparison.
    joined: list[object] = []
    for event in events:
        if isinstance(event, SnapshotChunk):
            if joined and type(joined[-1]) is tuple:
                joined[-1] = ("snapshot", joined[-1][1] + event.data)
            else:
                joined.append(("snapshot", event.data))
        else:
            joined.append(event)
    # A zero-size snapshot has no chunk at all.
    expected = [e for e in expected if e != ("snapshot", b"")]
    assert joined == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=40), st.one_of(st.none(), responses_)), max_size=5),
       st.integers(1, 64))  # fmt: skip
def test_responses_round_trip_in_order(pairs: list, step: int) -> None:
    decoder = ResponseDecoder()
    stream = b""
    for error, response in pairs:
        kind = response.rpc_type if response is not None else RPCType.APPEND_ENTRIES
        decoder.expect(kind)
        stream += encode_response(error, response)
    events = []
    for i in range(0, len(stream), step):
        decoder.feed(stream[i : i + step])
        while (event := decoder.next_event()) is not NEED_DATA:
            events.append(event)
    expected = []
    for error, response in pairs:
        if response is None:
            response = AppendEntriesResponse(protocol_version=0)
        expected.append(ResponseReceived(response.rpc_type, error, response))
    assert events == expected and decoder.pending == 0


def test_go_msgpack_leniency_on_decode() -> None:
    # str8 and bin where Go writes raw strings, keys in any order, unknown keys, a missing
    # key, bools as 0/1: all as go-msgpack reads them.
    body = msgpack.packb(
        {"Term": 7, "Unknown": [1, {"x": 2}], "Leader": b"127.0.0.1:8300", "AppendedAt": b"t",
         "Entries": [{"Index": 1, "Term": 7, "Type": 0, "Data": "caf\u00e9", "New": 1}],
         "ProtocolVersion": 3},
        use_bin_type=True,
    )  # fmt: skip
    decoder = RequestDecoder()
    decoder.feed(b"\x00" + body)
    event = decoder.next_event()
    assert event == RequestReceived(
        AppendEntriesRequest(
            term=7,
            leader=b"127.0.0.1:8300",
            entries=(LogEntry(1, 7, 0, "café".encode()),),
        )
    )
    vote = msgpack.packb({"Term": 2, "Candidate": "x", "LeadershipTransfer": 1})
    decoder.feed(b"\x01" + vote)
    event = decoder.next_event()
    assert isinstance(event, RequestReceived)
    assert event.request == RequestVoteRequest(
        term=2, candidate=b"x", leadership_transfer=True, protocol_version=0
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"Term": -1}, "negative"),
        ({"Term": "x"}, "unsigned"),
        ({"Entries": [{"Type": 256}]}, "Overflow"),
        ({"Entries": {"a": 1}}, "array"),
        ({"Leader": 5}, "byte string"),
        ([1, 2], "map"),
    ],
)
def test_type_errors_close_the_connection(body: object, message: str) -> None:
    decoder = RequestDecoder()
    decoder.feed(b"\x00" + msgpack.packb(body))
    with pytest.raises(DecodeError, match=message):
        decoder.next_event()


def test_unknown_rpc_type_is_an_error() -> None:
    decoder = RequestDecoder()
    decoder.feed(b"\x07\x80")
    with pytest.raises(ProtocolError, match="unknown rpc type 7"):
        decoder.next_event()


def test_snapshot_bytes_are_handed_out_in_bounded_chunks() -> None:
    request = InstallSnapshotRequest(term=1, leader=b"l", last_log_index=5, last_log_term=1,
                                     size=600_000)  # fmt: skip
    decoder = RequestDecoder()
    decoder.feed(encode_request(request))
    assert decoder.next_event() == RequestReceived(request)
    sizes = []
    for _i in range(0, 600_000, 50_000):
        decoder.feed(b"s" * 50_000)
        while isinstance(event := decoder.next_event(), SnapshotChunk):
            sizes.append(len(event.data))
    assert sum(sizes) == 600_000 and max(sizes) <= 256 * 1024
    assert event == SnapshotEnd() and not decoder.in_snapshot
    assert decoder.next_event() is NEED_DATA and decoder.idle


def test_a_short_snapshot_leaves_the_decoder_waiting() -> None:
    request = InstallSnapshotRequest(term=1, leader=b"l", last_log_index=5, last_log_term=1,
                                     size=10)  # fmt: skip
    decoder = RequestDecoder()
    decoder.feed(encode_request(request) + b"abc")
    decoder.next_event()
    assert decoder.next_event() == SnapshotChunk(b"abc")
    assert decoder.next_event() is NEED_DATA
    assert decoder.in_snapshot and decoder.snapshot_remaining == 7 and not decoder.idle


# ----------------------------------------------------------------------------- bounds


def test_an_oversized_request_is_refused_from_its_headers() -> None:
    decoder = RequestDecoder(max_request_size=1024)
    # A 100 MB string is declared: refused with 6 bytes in hand, nothing allocated.
    decoder.feed(b"\x00\x81\xa4Data\xdb\x06\x00\x00\x00")
    with pytest.raises(FrameTooLarge):
        decoder.next_event()


def test_the_buffer_is_bounded() -> None:
    decoder = RequestDecoder(max_request_size=1024)
    with pytest.raises(FrameTooLarge):
        for _ in range(100):
            decoder.feed(b"\x00" * 4096)  # fed, never pulled


def test_a_huge_declared_entries_array_is_refused_before_allocation() -> None:
    # An array of a billion entries, and arrays of arrays that would each preallocate.
    with pytest.raises(DecodeError, match="elements"):
        scan_object(b"\x81\xa7Entries\xdd\x40\x00\x00\x00", max_size=1 << 30)
    nested = b"\x91" * 4 + b"\xdc\xff\xff" + b"\xdc\xff\xff" * 3
    with pytest.raises(DecodeError, match="elements"):
        scan_object(nested, max_size=1 << 30)
    with pytest.raises(DecodeError, match="deeper"):
        scan_object(b"\x91" * 20 + b"\xc0", max_size=1 << 20)
    with pytest.raises(DecodeError, match="0xc1"):
        scan_object(b"\xc1", max_size=100)
    with pytest.raises(DecodeError, match="0xd4"):  # ext types: no Raft peer sends them
        scan_object(b"\xd4\x01\x00", max_size=100)


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1),
              st.floats(allow_nan=False), st.binary(max_size=70), st.text(max_size=70)),
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.text(max_size=5), inner, max_size=5)),
    max_leaves=30,
), st.booleans())  # fmt: skip
def test_the_scan_finds_where_any_object_ends(value: object, bin_type: bool) -> None:
    data = msgpack.packb(value, use_bin_type=bin_type)
    assert scan_object(data + b"\xc0tail", max_size=1 << 20) == len(data)
    for cut in range(len(data)):
        end = scan_object(data[:cut], max_size=1 << 20)
        assert end < 0 and -end > cut


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_decoders(data: bytes) -> None:
    decoder = RequestDecoder(max_request_size=4096)
    with contextlib.suppress(ProtocolError):
        decode_all(decoder, data, 17)
    responses = ResponseDecoder(max_response_size=4096)
    for kind in RPCType:
        responses.expect(kind)
    try:
        responses.feed(data)
        while responses.next_event() is not NEED_DATA:
            pass
    except ProtocolError:
        pass


def test_response_bytes_without_a_request_are_an_error() -> None:
    decoder = ResponseDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(b"\xa0\x80")
