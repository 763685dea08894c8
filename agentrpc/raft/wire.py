"""Sans-I/O codec of hashicorp/raft 1.1.2's NetworkTransport (spec raft.md §1-3).

One connection carries many RPCs in sequence (or pipelined AppendEntries, answered strictly in
order):

* a **request** is one raw type byte (:class:`RPCType`, not msgpack) followed by the request
  struct as one msgpack object; an InstallSnapshot request is followed by exactly ``Size`` raw
  snapshot bytes on the same stream;
* a **response** is two msgpack objects: the error string (``""`` on success) and the response
  struct, which is always sent (msgpack nil when the request was refused by the header check).

Structs travel as go-msgpack writes them (:mod:`.gomsgpack`): maps keyed by the Go field names
in sorted order, ``RPCHeader``'s ``ProtocolVersion`` inlined at the top level, byte slices as raw
strings, nil for an empty slice where Go code leaves it nil. :func:`encode_request` and
:func:`encode_response` write those bytes; :class:`RequestDecoder` (server side) and
:class:`ResponseDecoder` (client side) are fed bytes and hand out typed events. Both bound what a
peer can make them hold: one object is at most ``max_size`` bytes, the buffer at most that plus
one read, and every declared container is counted before msgpack allocates it.

The server ID is never on the wire in 1.1.2: ``Leader`` and ``Candidate`` are the sender's
address bytes (``EncodePeer``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, Final, NamedTuple

from ..protocol.errors import FrameTooLarge, ProtocolError
from ..protocol.msgpack_wire import NEED_DATA as NEED_DATA, READ_SIZE
from .gomsgpack import (
    DEFAULT_MAX_ELEMENTS,
    DecodeError,
    bool_field,
    bytes_field,
    decode_object,
    int_field,
    nil_if_empty,
    pack,
    scan_object,
    struct_fields,
    text,
    text_bytes,
    uint_field,
)
from .log import LogEntry
from .timing import PROTOCOL_VERSION_MAX, SNAPSHOT_VERSION


class RPCType(enum.IntEnum):
    """The request type byte (``rpcAppendEntries uint8 = iota`` ...)."""

    APPEND_ENTRIES = 0
    REQUEST_VOTE = 1
    INSTALL_SNAPSHOT = 2
    TIMEOUT_NOW = 3


DEFAULT_MAX_REQUEST_SIZE: Final = 64 << 20
"""Largest request object accepted: MaxAppendEntries (64) entries of Consul's suggested maximum
(``SuggestedMaxDataSize``, 512 KiB) need 32 MiB."""
DEFAULT_MAX_RESPONSE_SIZE: Final = 1 << 20
SNAPSHOT_CHUNK: Final = 256 * 1024
"""Most snapshot bytes one :class:`SnapshotChunk` carries."""

ERR_UNKNOWN_RPC_TYPE: Final = "unknown rpc type {rpc_type}"


# ------------------------------------------------------------------------------ messages


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendEntriesRequest:
    term: int
    leader: bytes
    """The leader's address (``EncodePeer``)."""
    prev_log_entry: int = 0
    prev_log_term: int = 0
    entries: tuple[LogEntry, ...] | None = None
    """None is Go's nil slice (a heartbeat); ``()`` an empty one (an AppendEntries that only
    carries the commit index)."""
    leader_commit_index: int = 0
    protocol_version: int = PROTOCOL_VERSION_MAX
    rpc_type: ClassVar[RPCType] = RPCType.APPEND_ENTRIES

    @property
    def is_heartbeat(self) -> bool:
        """The transport's heartbeat fast-path shape (net_transport.go)."""
        return (
            self.term != 0
            and self.prev_log_entry == 0
            and self.prev_log_term == 0
            and not self.entries
            and self.leader_commit_index == 0
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendEntriesResponse:
    term: int = 0
    last_log: int = 0
    success: bool = False
    no_retry_backoff: bool = False
    protocol_version: int = PROTOCOL_VERSION_MAX
    rpc_type: ClassVar[RPCType] = RPCType.APPEND_ENTRIES


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestVoteRequest:
    term: int
    candidate: bytes
    """The candidate's address (``EncodePeer``)."""
    last_log_index: int = 0
    last_log_term: int = 0
    leadership_transfer: bool = False
    protocol_version: int = PROTOCOL_VERSION_MAX
    rpc_type: ClassVar[RPCType] = RPCType.REQUEST_VOTE


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestVoteResponse:
    term: int = 0
    granted: bool = False
    peers: bytes = b""
    """The legacy peer list, only sent by protocol versions below 2."""
    protocol_version: int = PROTOCOL_VERSION_MAX
    rpc_type: ClassVar[RPCType] = RPCType.REQUEST_VOTE


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallSnapshotRequest:
    term: int
    leader: bytes
    last_log_index: int
    last_log_term: int
    size: int
    """Snapshot bytes that follow the request on the stream."""
    configuration: bytes = b""
    """``EncodeConfiguration`` of the snapshot's configuration."""
    configuration_index: int = 0
    peers: bytes = b""
    snapshot_version: int = SNAPSHOT_VERSION
    protocol_version: int = PROTOCOL_VERSION_MAX
    rpc_type: ClassVar[RPCType] = RPCType.INSTALL_SNAPSHOT


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallSnapshotResponse:
    term: int = 0
    success: bool = False
    protocol_version: int = PROTOCOL_VERSION_MAX
    rpc_type: ClassVar[RPCType] = RPCType.INSTALL_SNAPSHOT


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutNowRequest:
    protocol_version: int = PROTOCOL_VERSION_MAX
    rpc_type: ClassVar[RPCType] = RPCType.TIMEOUT_NOW


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutNowResponse:
    protocol_version: int = PROTOCOL_VERSION_MAX
    rpc_type: ClassVar[RPCType] = RPCType.TIMEOUT_NOW


Request = AppendEntriesRequest | RequestVoteRequest | InstallSnapshotRequest | TimeoutNowRequest
Response = (
    AppendEntriesResponse | RequestVoteResponse | InstallSnapshotResponse | TimeoutNowResponse
)


# ------------------------------------------------------------------------------ encoding


def _log_map(entry: LogEntry) -> dict[str, object]:
    return {
        "Data": nil_if_empty(entry.data),
        "Extensions": nil_if_empty(entry.extensions),
        "Index": entry.index,
        "Term": entry.term,
        "Type": entry.type,
    }


def request_map(request: Request) -> dict[str, object]:
    """The request struct as go-msgpack lays it out (keys sorted)."""
    if isinstance(request, AppendEntriesRequest):
        entries = request.entries
        return {
            "Entries": None if entries is None else [_log_map(e) for e in entries],
            "Leader": request.leader,
            "LeaderCommitIndex": request.leader_commit_index,
            "PrevLogEntry": request.prev_log_entry,
            "PrevLogTerm": request.prev_log_term,
            "ProtocolVersion": request.protocol_version,
            "Term": request.term,
        }
    if isinstance(request, RequestVoteRequest):
        return {
            "Candidate": request.candidate,
            "LastLogIndex": request.last_log_index,
            "LastLogTerm": request.last_log_term,
            "LeadershipTransfer": request.leadership_transfer,
            "ProtocolVersion": request.protocol_version,
            "Term": request.term,
        }
    if isinstance(request, InstallSnapshotRequest):
        return {
            "Configuration": nil_if_empty(request.configuration),
            "ConfigurationIndex": request.configuration_index,
            "LastLogIndex": request.last_log_index,
            "LastLogTerm": request.last_log_term,
            "Leader": request.leader,
            "Peers": nil_if_empty(request.peers),
            "ProtocolVersion": request.protocol_version,
            "Size": request.size,
            "SnapshotVersion": request.snapshot_version,
            "Term": request.term,
        }
    return {"ProtocolVersion": request.protocol_version}


def response_map(response: Response) -> dict[str, object]:
    """The response struct as go-msgpack lays it out (keys sorted)."""
    if isinstance(response, AppendEntriesResponse):
        return {
            "LastLog": response.last_log,
            "NoRetryBackoff": response.no_retry_backoff,
            "ProtocolVersion": response.protocol_version,
            "Success": response.success,
            "Term": response.term,
        }
    if isinstance(response, RequestVoteResponse):
        return {
            "Granted": response.granted,
            "Peers": nil_if_empty(response.peers),
            "ProtocolVersion": response.protocol_version,
            "Term": response.term,
        }
    if isinstance(response, InstallSnapshotResponse):
        return {
            "ProtocolVersion": response.protocol_version,
            "Success": response.success,
            "Term": response.term,
        }
    return {"ProtocolVersion": response.protocol_version}


def encode_request(request: Request) -> bytes:
    """The type byte and the msgpack request (an InstallSnapshot's bytes are sent after it)."""
    return bytes((request.rpc_type,)) + pack(request_map(request))


def encode_response(error: str, response: Response | None) -> bytes:
    """The error string and the response struct (``None``: Go's nil, sent with
    ``operation not supported with current protocol version``)."""
    body = pack(None if response is None else response_map(response))
    return pack(text_bytes(error)) + body


# ------------------------------------------------------------------------------ decoding


def _entries(fields: dict[str, object]) -> tuple[LogEntry, ...] | None:
    raw = fields.get("Entries")
    if raw is None:
        return None
    if type(raw) is not list:
        raise DecodeError("Entries must be an array")
    entries = []
    for item in raw:
        log = struct_fields(item, "Log")
        entries.append(
            LogEntry(
                index=uint_field(log, "Index"),
                term=uint_field(log, "Term"),
                type=uint_field(log, "Type", bits=8),
                data=bytes_field(log, "Data"),
                extensions=bytes_field(log, "Extensions"),
            )
        )
    return tuple(entries)


def decode_request_body(rpc_type: int, obj: object) -> Request:
    """The typed request of ``rpc_type`` from its decoded msgpack object."""
    fields = struct_fields(obj, "request")
    version = int_field(fields, "ProtocolVersion")
    if rpc_type == RPCType.APPEND_ENTRIES:
        return AppendEntriesRequest(
            term=uint_field(fields, "Term"),
            leader=bytes_field(fields, "Leader"),
            prev_log_entry=uint_field(fields, "PrevLogEntry"),
            prev_log_term=uint_field(fields, "PrevLogTerm"),
            entries=_entries(fields),
            leader_commit_index=uint_field(fields, "LeaderCommitIndex"),
            protocol_version=version,
        )
    if rpc_type == RPCType.REQUEST_VOTE:
        return RequestVoteRequest(
            term=uint_field(fields, "Term"),
            candidate=bytes_field(fields, "Candidate"),
            last_log_index=uint_field(fields, "LastLogIndex"),
            last_log_term=uint_field(fields, "LastLogTerm"),
            leadership_transfer=bool_field(fields, "LeadershipTransfer"),
            protocol_version=version,
        )
    if rpc_type == RPCType.INSTALL_SNAPSHOT:
        size = int_field(fields, "Size")
        if size < 0:
            raise DecodeError(f"InstallSnapshot Size cannot be negative: {size}")
        return InstallSnapshotRequest(
            term=uint_field(fields, "Term"),
            leader=bytes_field(fields, "Leader"),
            last_log_index=uint_field(fields, "LastLogIndex"),
            last_log_term=uint_field(fields, "LastLogTerm"),
            size=size,
            configuration=bytes_field(fields, "Configuration"),
            configuration_index=uint_field(fields, "ConfigurationIndex"),
            peers=bytes_field(fields, "Peers"),
            snapshot_version=int_field(fields, "SnapshotVersion"),
            protocol_version=version,
        )
    if rpc_type == RPCType.TIMEOUT_NOW:
        return TimeoutNowRequest(protocol_version=version)
    raise ProtocolError(ERR_UNKNOWN_RPC_TYPE.format(rpc_type=rpc_type))


def decode_response_body(rpc_type: int, obj: object) -> Response:
    """The typed response to a request of ``rpc_type``; nil is the zero struct."""
    fields = struct_fields(obj, "response")
    version = int_field(fields, "ProtocolVersion")
    if rpc_type == RPCType.APPEND_ENTRIES:
        return AppendEntriesResponse(
            term=uint_field(fields, "Term"),
            last_log=uint_field(fields, "LastLog"),
            success=bool_field(fields, "Success"),
            no_retry_backoff=bool_field(fields, "NoRetryBackoff"),
            protocol_version=version,
        )
    if rpc_type == RPCType.REQUEST_VOTE:
        return RequestVoteResponse(
            term=uint_field(fields, "Term"),
            granted=bool_field(fields, "Granted"),
            peers=bytes_field(fields, "Peers"),
            protocol_version=version,
        )
    if rpc_type == RPCType.INSTALL_SNAPSHOT:
        return InstallSnapshotResponse(
            term=uint_field(fields, "Term"),
            success=bool_field(fields, "Success"),
            protocol_version=version,
        )
    if rpc_type == RPCType.TIMEOUT_NOW:
        return TimeoutNowResponse(protocol_version=version)
    raise ProtocolError(ERR_UNKNOWN_RPC_TYPE.format(rpc_type=rpc_type))


# ------------------------------------------------------------------------------ streams


class RequestReceived(NamedTuple):
    """A whole request; after an InstallSnapshot one, its snapshot bytes follow as
    :class:`SnapshotChunk` events and a :class:`SnapshotEnd`."""

    request: Request


class SnapshotChunk(NamedTuple):
    data: bytes


class SnapshotEnd(NamedTuple):
    """All ``Size`` bytes of the snapshot have been handed out."""


class ResponseReceived(NamedTuple):
    rpc_type: RPCType
    error: str
    """Not empty: the peer answered with an error (the response is still decoded)."""
    response: Response


class _Buffer:
    """Bytes received and not consumed yet, with the object scan's bookkeeping."""

    __slots__ = ("_buf", "_need", "_pos", "max_buffer", "max_size")

    def __init__(self, max_size: int) -> None:
        if max_size < 64:
            raise ValueError("max_size must be at least 64 bytes")
        self.max_size = max_size
        self.max_buffer = max_size + READ_SIZE
        self._buf = bytearray()
        self._pos = 0
        self._need = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if len(self._buf) - self._pos + len(data) > self.max_buffer:
            raise FrameTooLarge(f"more than {self.max_buffer} bytes buffered")
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf) - self._pos

    def take(self, n: int) -> bytes:
        data = bytes(self._buf[self._pos : self._pos + n])
        self._pos += len(data)
        return data

    def take_object(self) -> object:
        """The next whole msgpack object, or :data:`NEED_DATA`."""
        available = len(self._buf) - self._pos
        if available == 0 or available < self._need:
            return NEED_DATA
        end = scan_object(
            self._buf, self._pos, max_size=self.max_size, max_elements=DEFAULT_MAX_ELEMENTS
        )
        if end < 0:
            self._need = -end - self._pos  # bytes from the object's start (survives compaction)
            return NEED_DATA
        self._need = 0
        obj = decode_object(memoryview(self._buf)[self._pos : end])
        self._pos = end
        return obj


class RequestDecoder:
    """Server side of one connection: bytes in, :class:`RequestReceived`,
    :class:`SnapshotChunk` and :class:`SnapshotEnd` out (or :data:`NEED_DATA`).

    Raises :class:`~agentrpc.protocol.errors.ProtocolError` (an unknown type byte: Go logs
    ``unknown rpc type N`` and closes) or :class:`~agentrpc.protocol.errors.FrameTooLarge`;
    after either, the connection must close."""

    __slots__ = ("_buffer", "_rpc_type", "_snapshot_left", "_snapshot_open")

    def __init__(self, max_request_size: int = DEFAULT_MAX_REQUEST_SIZE) -> None:
        self._buffer = _Buffer(max_request_size)
        self._rpc_type: int | None = None
        self._snapshot_left = 0
        self._snapshot_open = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the peer (pull the events before feeding more)."""
        self._buffer.feed(data)

    @property
    def snapshot_remaining(self) -> int:
        """Snapshot bytes still expected (a stream that ends before them is a short read)."""
        return self._snapshot_left

    @property
    def in_snapshot(self) -> bool:
        return self._snapshot_open

    @property
    def idle(self) -> bool:
        """No partial request or snapshot is buffered: an end of stream here is clean."""
        return not self._snapshot_open and self._rpc_type is None and len(self._buffer) == 0

    def next_event(self) -> RequestReceived | SnapshotChunk | SnapshotEnd | object:
        buffer = self._buffer
        if self._snapshot_open:
            if self._snapshot_left == 0:
                self._snapshot_open = False
                return SnapshotEnd()
            if len(buffer) == 0:
                return NEED_DATA
            data = buffer.take(min(self._snapshot_left, SNAPSHOT_CHUNK))
            self._snapshot_left -= len(data)
            return SnapshotChunk(data)
        if self._rpc_type is None:
            if len(buffer) == 0:
                return NEED_DATA
            rpc_type = buffer.take(1)[0]
            if rpc_type > RPCType.TIMEOUT_NOW:
                raise ProtocolError(ERR_UNKNOWN_RPC_TYPE.format(rpc_type=rpc_type))
            self._rpc_type = rpc_type
        obj = buffer.take_object()
        if obj is NEED_DATA:
            return NEED_DATA
        request = decode_request_body(self._rpc_type, obj)
        self._rpc_type = None
        if isinstance(request, InstallSnapshotRequest):
            self._snapshot_open = True
            self._snapshot_left = request.size
        return RequestReceived(request)


class ResponseDecoder:
    """Client side of one connection: :meth:`expect` the type of every request sent, feed the
    bytes received, pull :class:`ResponseReceived` events in the same order."""

    __slots__ = ("_buffer", "_error", "_expected")

    def __init__(self, max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE) -> None:
        self._buffer = _Buffer(max_response_size)
        self._expected: list[RPCType] = []
        self._error: str | None = None

    def expect(self, rpc_type: RPCType) -> None:
        self._expected.append(RPCType(rpc_type))

    @property
    def pending(self) -> int:
        """Responses expected and not decoded yet."""
        return len(self._expected)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if data and not self._expected:
            raise ProtocolError("response bytes with no request outstanding")
        self._buffer.feed(data)

    def next_event(self) -> ResponseReceived | object:
        if not self._expected:
            if len(self._buffer):
                raise ProtocolError("response bytes with no request outstanding")
            return NEED_DATA
        if self._error is None:
            obj = self._buffer.take_object()
            if obj is NEED_DATA:
                return NEED_DATA
            if obj is None:
                self._error = ""
            elif type(obj) is bytes:
                self._error = text(obj)
            else:
                raise DecodeError("the response error must be a string")
        obj = self._buffer.take_object()
        if obj is NEED_DATA:
            return NEED_DATA
        rpc_type = self._expected.pop(0)
        error, self._error = self._error, None
        return ResponseReceived(rpc_type, error, decode_response_body(rpc_type, obj))
