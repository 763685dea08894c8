"""Sans-I/O codec of the server port's byte-0 RPC: Go's net/rpc over msgpack.

The reference (hashicorp/net-rpc-msgpackrpc with go-msgpack, as Consul uses it) writes, for each
call, two msgpack objects back to back with no length prefix:

* request: the header ``rpc.Request`` then the body (the arguments);
* response: the header ``rpc.Response`` then the body (the reply, ``{}`` when Error is set).

go-msgpack encodes a Go struct as a map whose keys are the field names **sorted** (its
``sfiSort``), so the request header is ``{Seq, ServiceMethod}`` and the response header
``{Error, Seq, ServiceMethod}`` in that order on the wire. Consul's handle sets ``WriteExt``, so
strings use the str8/str16/str32 families and byte slices bin: what msgpack-python produces with
``use_bin_type=True``. Seq is a uint64 in its smallest encoding (positive fixint below 128).

Decoding is lenient the way go-msgpack is: a header may also arrive as a positional array in the
struct's declaration order (``[ServiceMethod, Seq]``, ``[ServiceMethod, Seq, Error]``), and a
missing or nil field is the zero value. Size limits are enforced by msgpack before it allocates,
as in :mod:`agentrpc.protocol.codec`. Strings follow that module's rule too: str is read with
``surrogateescape`` and packed back the same way, and a header string may arrive as bin (or a
raw str), so a ServiceMethod or a body that is not UTF-8 is answered like any other.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from typing import Any, Final, NamedTuple, TypeVar

from ..defaults import SERVER_PORT
from ..protocol.constants import DEFAULT_MAX_FRAME_SIZE
from ..protocol.errors import FrameTooLarge, ProtocolError
from ..protocol.msgpack_wire import (
    MAX_UINT64,
    NEED_DATA,
    READ_SIZE as READ_SIZE,
    ObjectTooLarge,
    Undecodable,
    as_text,
    bounded_unpacker,
    feed,
    is_uint64,
    new_packer,
    next_object,
)


class RPCType(enum.IntEnum):
    """The type bytes of the server port (the reference's ``pool.RPCType``)."""

    CONSUL = 0
    RAFT = 1
    MULTIPLEX = 2
    TLS = 3
    MULTIPLEX_V2 = 4
    SNAPSHOT = 5
    GOSSIP = 6
    TLS_INSECURE = 7
    GRPC = 8


DEFAULT_SERVER_PORT: Final = SERVER_PORT
"""The reference's server port (``ports.server``)."""

MAX_SEQ: Final = MAX_UINT64

EMPTY_BODY: Final = b"\x80"
"""``{}``: Go's ``struct{}{}`` (net/rpc's ``invalidRequest``, sent as the body of every error)."""

# Error texts of Go's net/rpc server, byte for byte.
ERR_CANT_FIND_SERVICE: Final = "rpc: can't find service "
ERR_CANT_FIND_METHOD: Final = "rpc: can't find method "
ERR_ILL_FORMED: Final = "rpc: service/method request ill-formed: "


class RPCRequest(NamedTuple):
    """One decoded request: the header's fields and the body (the arguments)."""

    service_method: str
    seq: int
    body: Any


class RPCResponse(NamedTuple):
    """One decoded response: the header's fields and the body (the reply)."""

    service_method: str
    seq: int
    error: str
    body: Any


def _field(header: object, name: str, position: int) -> object:
    if type(header) is dict:
        return header.get(name)
    assert type(header) is list
    return header[position] if position < len(header) else None


def _header_fields(header: object, names: tuple[str, ...], what: str) -> list[object]:
    if type(header) is not dict and type(header) is not list:
        raise ProtocolError(f"{what} header must be a map, got {type(header).__name__}")
    return [_field(header, name, position) for position, name in enumerate(names)]


def _seq(value: object, what: str) -> int:
    if value is None:
        return 0
    if not is_uint64(value):
        raise ProtocolError(f"{what} header needs Seq as an unsigned 64-bit integer")
    return value


def _text(value: object, name: str, what: str, seq: int) -> str:
    if value is None:
        return ""
    text = as_text(value)
    if text is None:
        raise ProtocolError(f"{what} header field {name} must be a string", seq=seq)
    return text


def parse_request_header(header: object) -> tuple[str, int]:
    """``{ServiceMethod, Seq}`` (or ``[ServiceMethod, Seq]``) -> (service_method, seq)."""
    method, seq = _header_fields(header, ("ServiceMethod", "Seq"), "request")
    number = _seq(seq, "request")
    return _text(method, "ServiceMethod", "request", number), number


def parse_response_header(header: object) -> tuple[str, int, str]:
    """``{Error, Seq, ServiceMethod}`` (or the positional array) -> (method, seq, error)."""
    method, seq, error = _header_fields(header, ("ServiceMethod", "Seq", "Error"), "response")
    number = _seq(seq, "response")
    return (
        _text(method, "ServiceMethod", "response", number),
        number,
        _text(error, "Error", "response", number),
    )


_Header = TypeVar("_Header")


class _PairDecoder:
    """Shared machinery: msgpack objects in, (header, body) pairs out."""

    __slots__ = ("_header", "_unpacker", "max_object_size")

    def __init__(self, max_object_size: int) -> None:
        if max_object_size < 64:
            raise ValueError("max_object_size must be at least 64 bytes")
        self.max_object_size = max_object_size
        self._unpacker = bounded_unpacker(max_object_size)
        self._header: Any = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the peer."""
        try:
            feed(self._unpacker, data)
        except ObjectTooLarge:
            raise self._too_large() from None

    def _too_large(self) -> FrameTooLarge:
        return FrameTooLarge(f"msgpack object exceeds the {self.max_object_size}-byte limit")

    @property
    def awaiting_body(self) -> bool:
        """True when a header has arrived and its body has not."""
        return self._header is not None

    def _next_object(self) -> tuple[bool, Any]:
        try:
            obj = next_object(self._unpacker)
        except ObjectTooLarge:
            raise self._too_large() from None
        except Undecodable as exc:
            raise ProtocolError(f"undecodable msgpack: {exc}") from None
        if obj is NEED_DATA:
            return False, None
        return True, obj

    def _next_pair(self, parse_header: Callable[[object], _Header]) -> tuple[_Header, Any] | None:
        """The next (validated header, body) pair; None when more bytes are needed. A header
        is validated (and may raise) as soon as it arrives, before its body."""
        while True:
            ok, obj = self._next_object()
            if not ok:
                return None
            header = self._header
            if header is None:
                self._header = parse_header(obj)
                continue
            self._header = None
            return header, obj


class RequestDecoder(_PairDecoder):
    """Server side: a byte stream from a client into :class:`RPCRequest` tuples.

    The header is validated as soon as it arrives (a malformed one raises at once); the request
    is returned when its body has arrived too, as net/rpc reads the body before it answers.
    """

    __slots__ = ()

    def __init__(self, max_object_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        super().__init__(max_object_size)

    def next_request(self) -> RPCRequest | None:
        """The next complete request, or None when more bytes are needed."""
        pair = self._next_pair(parse_request_header)
        if pair is None:
            return None
        (method, seq), body = pair
        return RPCRequest(method, seq, body)

    def __iter__(self) -> Iterator[RPCRequest]:
        while (request := self.next_request()) is not None:
            yield request


class ResponseDecoder(_PairDecoder):
    """Client side: a byte stream from a server into :class:`RPCResponse` tuples."""

    __slots__ = ()

    def __init__(self, max_object_size: int = 64 * DEFAULT_MAX_FRAME_SIZE) -> None:
        super().__init__(max_object_size)

    def next_response(self) -> RPCResponse | None:
        """The next complete response, or None when more bytes are needed."""
        pair = self._next_pair(parse_response_header)
        if pair is None:
            return None
        (method, seq, error), body = pair
        return RPCResponse(method, seq, error, body)

    def __iter__(self) -> Iterator[RPCResponse]:
        while (response := self.next_response()) is not None:
            yield response


class RPCEncoder:
    """Encodes requests and responses (header and body, one contiguous chunk each)."""

    __slots__ = ("_pack",)

    def __init__(self) -> None:
        self._pack: Callable[[Any], bytes] = new_packer()

    def request(self, service_method: str, seq: int, body: Any) -> bytes:
        """``{Seq, ServiceMethod}`` (sorted keys, as go-msgpack writes a struct) + body."""
        if not 0 <= seq <= MAX_SEQ:
            raise ValueError("seq must be an unsigned 64-bit integer")
        pack = self._pack
        return pack({"Seq": seq, "ServiceMethod": service_method}) + pack(body)

    def response(self, service_method: str, seq: int, error: str, body: Any) -> bytes:
        """``{Error, Seq, ServiceMethod}`` + body; with an Error the body is always ``{}``."""
        pack = self._pack
        head = pack({"Error": error, "Seq": seq, "ServiceMethod": service_method})
        if error:
            return head + EMPTY_BODY
        return head + pack(body)


def encode_request(service_method: str, seq: int, body: Any) -> bytes:
    """A request frame (header then body)."""
    return RPCEncoder().request(service_method, seq, body)


def encode_response(service_method: str, seq: int, error: str, body: Any) -> bytes:
    """A response frame (header then body)."""
    return RPCEncoder().response(service_method, seq, error, body)


def lookup_error(service_method: str, services: frozenset[str] | set[str]) -> str:
    """The error net/rpc's server gives for a method it does not serve ("" when it does not
    apply): ill-formed without a dot, unknown service, else unknown method."""
    dot = service_method.rfind(".")
    if dot < 0:
        return ERR_ILL_FORMED + service_method
    if service_method[:dot] not in services:
        return ERR_CANT_FIND_SERVICE + service_method
    return ERR_CANT_FIND_METHOD + service_method
