"""Byte-exactness of the Raft codec against Debian's hashicorp/raft 1.1.2 and go-msgpack 0.5.5.

``tests/raft/go/codec_ref`` encodes raft's own structs with a default ``codec.MsgpackHandle{}``
(as NetworkTransport does) and prints the bytes; ours must be the same bytes, and our decoders
must read Go's bytes back to the same values."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from go_programs import build_go_program

from agentrpc.raft.configuration import (
    Configuration,
    Server,
    Suffrage,
    decode_configuration,
    decode_peers,
    encode_configuration,
    encode_peers,
)
from agentrpc.raft.gomsgpack import pack
from agentrpc.raft.log import LogEntry, LogType
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
    TimeoutNowRequest,
    TimeoutNowResponse,
    encode_request,
    encode_response,
)

GO_PROGRAM = Path(__file__).parent / "go" / "codec_ref"
LEADER = b"127.0.0.1:8300"
CONFIGURATION = Configuration(
    (
        Server("5f1c2e3a-0000-4000-8000-000000000001", "127.0.0.1:8300", Suffrage.VOTER),
        Server("n2", "127.0.0.1:8301", Suffrage.NONVOTER),
        Server("n3", "127.0.0.1:8302", Suffrage.STAGING),
    )
)
PEERS = Configuration(
    (Server("127.0.0.1:8300", "127.0.0.1:8300"), Server("127.0.0.1:8301", "127.0.0.1:8301"))
)

REQUESTS = {
    "append_heartbeat": AppendEntriesRequest(term=5, leader=LEADER),
    "append_entries": AppendEntriesRequest(
        term=7,
        leader=LEADER,
        prev_log_entry=41,
        prev_log_term=6,
        entries=(
            LogEntry(42, 7, LogType.COMMAND, b"hello"),
            LogEntry(43, 7, LogType.NOOP),
            LogEntry(44, 7, LogType.CONFIGURATION, encode_configuration(CONFIGURATION)),
            LogEntry(45, 7, LogType.BARRIER, b"x" * 40, b"ext"),
        ),
        leader_commit_index=40,
    ),
    "append_commit_only": AppendEntriesRequest(
        term=7, leader=LEADER, prev_log_entry=45, prev_log_term=7, entries=(),
        leader_commit_index=45,
    ),
    "append_big_numbers": AppendEntriesRequest(
        term=1 << 40,
        leader=LEADER,
        prev_log_entry=200,
        prev_log_term=65535,
        leader_commit_index=(1 << 64) - 1,
        entries=(LogEntry(70000, 1 << 33, LogType.COMMAND, b"y" * 70000),),
        protocol_version=2,
    ),
    "vote_request": RequestVoteRequest(
        term=9, candidate=b"127.0.0.1:8301", last_log_index=100, last_log_term=8,
        leadership_transfer=True,
    ),
    "snapshot_request": InstallSnapshotRequest(
        term=4, leader=LEADER, last_log_index=1000, last_log_term=3,
        configuration=encode_configuration(CONFIGURATION), configuration_index=900,
        size=123456, snapshot_version=1,
    ),
    "timeout_now_request": TimeoutNowRequest(),
}  # fmt: skip

RESPONSES = {
    "append_response": ("", AppendEntriesResponse(term=7, last_log=43, success=True)),
    "append_response_reject": (
        "",
        AppendEntriesResponse(term=8, last_log=12, no_retry_backoff=True),
    ),
    "vote_response": ("", RequestVoteResponse(term=9, granted=True, protocol_version=2)),
    "vote_response_peers": (
        "",
        RequestVoteResponse(term=3, peers=encode_peers(PEERS), protocol_version=1),
    ),
    "snapshot_response": ("", InstallSnapshotResponse(term=4, success=True, protocol_version=0)),
    "timeout_now_response": ("", TimeoutNowResponse(protocol_version=0)),
}
RESPONSE_TYPES = {
    "append_response": RPCType.APPEND_ENTRIES,
    "append_response_reject": RPCType.APPEND_ENTRIES,
    "vote_response": RPCType.REQUEST_VOTE,
    "vote_response_peers": RPCType.REQUEST_VOTE,
    "snapshot_response": RPCType.INSTALL_SNAPSHOT,
    "timeout_now_response": RPCType.TIMEOUT_NOW,
}


@pytest.fixture(scope="module")
def go_bytes() -> dict[str, bytes]:
    binary = build_go_program(GO_PROGRAM, "raft_codec_ref")
    done = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60, check=True)
    return {name: bytes.fromhex(value) for name, value in json.loads(done.stdout).items()}


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_requests_are_go_bytes(go_bytes: dict[str, bytes], name: str) -> None:
    assert encode_request(REQUESTS[name]) == go_bytes[name]


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_go_requests_decode(go_bytes: dict[str, bytes], name: str) -> None:
    decoder = RequestDecoder()
    decoder.feed(go_bytes[name])
    event = decoder.next_event()
    assert event == RequestReceived(REQUESTS[name])
    if isinstance(REQUESTS[name], InstallSnapshotRequest):
        assert decoder.in_snapshot and decoder.snapshot_remaining == 123456
    else:
        assert decoder.next_event() is NEED_DATA and decoder.idle


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_responses_are_go_bytes(go_bytes: dict[str, bytes], name: str) -> None:
    error, response = RESPONSES[name]
    assert encode_response(error, response) == go_bytes[name]


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_go_responses_decode(go_bytes: dict[str, bytes], name: str) -> None:
    decoder = ResponseDecoder()
    decoder.expect(RESPONSE_TYPES[name])
    data = go_bytes[name]
    for i in range(len(data)):  # byte by byte: partial objects wait for the rest
        decoder.feed(data[i : i + 1])
        event = decoder.next_event()
        if i < len(data) - 1:
            assert event is NEED_DATA
    error, response = RESPONSES[name]
    assert event == ResponseReceived(RESPONSE_TYPES[name], error, response)


def test_unsupported_protocol_response_is_go_bytes(go_bytes: dict[str, bytes]) -> None:
    expected = go_bytes["unsupported_response"]
    assert encode_response("operation not supported with current protocol version", None) == (
        expected
    )
    decoder = ResponseDecoder()
    decoder.expect(RPCType.APPEND_ENTRIES)
    decoder.feed(expected)
    event = decoder.next_event()
    assert isinstance(event, ResponseReceived)
    assert event.error == "operation not supported with current protocol version"
    assert event.response == AppendEntriesResponse(protocol_version=0)  # nil: the zero struct


def test_configuration_and_peers_are_go_bytes(go_bytes: dict[str, bytes]) -> None:
    assert encode_configuration(CONFIGURATION) == go_bytes["configuration"]
    assert decode_configuration(go_bytes["configuration"]) == CONFIGURATION
    assert encode_configuration(Configuration()) == go_bytes["configuration_empty"]
    assert decode_configuration(go_bytes["configuration_empty"]) == Configuration()
    assert encode_peers(PEERS) == go_bytes["peers"]
    assert decode_peers(go_bytes["peers"]) == PEERS
    assert pack(b"leadership lost while committing log") == go_bytes["error_string"]
