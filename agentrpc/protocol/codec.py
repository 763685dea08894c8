"""Sans-I/O codec of the agent RPC protocol: bytes in, requests and responses out.

Frames are msgpack objects back to back with no length prefix. A request is a header map
``{Command, Seq, Token}`` followed, for the commands in :data:`COMMANDS_WITH_BODY`, by exactly
one body object; a response is a header ``{Error, Seq}`` optionally followed by one body.

Nothing here performs I/O or knows about trio: feed bytes with ``feed`` and iterate to pull
whole messages, in the style of h11. Size limits are enforced by msgpack *before* it allocates
(its buffer never grows past ``max_frame_size`` plus one read), so a peer that declares a
100 MB string is refused without the agent allocating it.

Strings are bytes on the Go side: a name need not be UTF-8, and a Go encoder may send a
``[]byte`` where a string is expected (bin, or a raw str with go-msgpack's default handle).
Every decoder here reads str with ``surrogateescape`` (:data:`TEXT_ERRORS`) and every packer
writes it back the same way, so such a name round-trips byte for byte; :func:`as_text` is the
one place that turns a wire string (str or bin) into ``str``, :func:`text_bytes` the way back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, NamedTuple

import msgpack

from .constants import (
    COMMANDS_WITH_BODY,
    DEFAULT_MAX_FRAME_SIZE,
    ERR_AUTH_REQUIRED,
    ERR_HANDSHAKE_REQUIRED,
    ERR_UNSUPPORTED_COMMAND,
)
from .errors import FrameTooLarge, ProtocolError
from .msgpack_wire import (
    MAX_UINT64,
    NEED_DATA,
    READ_SIZE as READ_SIZE,
    TEXT_ERRORS as TEXT_ERRORS,
    ObjectTooLarge,
    Undecodable,
    as_text as as_text,
    bounded_unpacker,
    feed,
    is_uint64,
    new_packer as new_packer,
    next_object,
    text_bytes as text_bytes,
)

MAX_SEQ: Final = MAX_UINT64
HEADER_ONLY_ERRORS: Final = frozenset(
    {ERR_HANDSHAKE_REQUIRED, ERR_UNSUPPORTED_COMMAND, ERR_AUTH_REQUIRED}
)
"""Errors the agents' request gate answers with a bare header whatever the command (serf's
``ipc.go`` and Consul's ``rpc.go`` send them before any handler, with no body; so do ours)."""
RETIRED_STREAMS: Final = 1024
"""How many stopped streams a :class:`ResponseDecoder` remembers (their stragglers)."""


class Request(NamedTuple):
    """One decoded request: the header's fields and the body (``None`` when there is none)."""

    command: str
    seq: int
    token: str | None
    body: Any


class Response(NamedTuple):
    """One decoded response: the header's fields and the body (``None`` when there is none)."""

    seq: int
    error: str
    body: Any


def parse_request_header(obj: object) -> tuple[str, int, str | None]:
    """Validate a request header (map, or the positional array form) into its fields.

    Raises :class:`ProtocolError` unless ``Command`` is a string and ``Seq`` an unsigned 64-bit
    integer; ``Token`` is optional and must be a string when present. A string may arrive as
    str or bin, as Go's decoder allows (see :func:`as_text`).
    """
    if type(obj) is dict:
        command = obj.get("Command")
        seq = obj.get("Seq")
        token = obj.get("Token")
    elif type(obj) is list and 2 <= len(obj) <= 3:
        command, seq = obj[0], obj[1]
        token = obj[2] if len(obj) == 3 else None
    else:
        raise ProtocolError(f"request header must be a map, got {type(obj).__name__}")
    if not is_uint64(seq):
        raise ProtocolError("request header needs Seq as an unsigned 64-bit integer")
    if type(command) is not str:
        command = as_text(command)
        if command is None:
            raise ProtocolError("request header needs Command as a string", seq=seq)
    if token is not None and type(token) is not str:
        token = as_text(token)
        if token is None:
            raise ProtocolError("request header Token must be a string", seq=seq, command=command)
    return command, seq, token


class RequestDecoder:
    """Turns a byte stream from a client into :class:`Request` tuples.

    Unknown commands are returned at once with no body (their body, if any, is never read: the
    connection closes after the ``Unsupported command`` reply).
    """

    __slots__ = ("_body_decoders", "_complete", "_fed", "_pending", "_unpacker", "max_frame_size")

    def __init__(
        self,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        *,
        body_decoders: Mapping[str, Callable[[Any], Any]] | None = None,
    ) -> None:
        """``body_decoders`` (command -> function) turn each body into its command's type as
        it arrives (a malformed one raises :class:`ProtocolError` naming its Seq and command);
        without them bodies are yielded as msgpack decoded them."""
        if max_frame_size < 64:
            raise ValueError("max_frame_size must be at least 64 bytes")
        self.max_frame_size = max_frame_size
        self._body_decoders: Mapping[str, Callable[[Any], Any]] = body_decoders or {}
        # msgpack's unpacker carries ~45 KiB of parser state, so it exists only while bytes
        # are waiting: an idle connection holds none (making one costs under a microsecond).
        self._unpacker: Any = None
        self._fed = 0
        self._complete = 0
        self._pending: tuple[str, int, str | None] | None = None

    def feed(self, data: bytes | bytearray) -> None:
        """Append bytes received from the peer."""
        if self._unpacker is None:
            self._unpacker = bounded_unpacker(self.max_frame_size)
            self._fed = self._complete = 0
        try:
            feed(self._unpacker, data)
        except ObjectTooLarge:
            raise self._too_large() from None
        self._fed += len(data)

    def _too_large(self) -> FrameTooLarge:
        pending = self._pending
        return FrameTooLarge(
            f"frame exceeds the {self.max_frame_size}-byte limit",
            seq=pending[1] if pending else None,
            command=pending[0] if pending else None,
        )

    @property
    def awaiting_body(self) -> bool:
        """True when a header has arrived and its body has not."""
        return self._pending is not None

    def __iter__(self) -> Iterator[Request]:
        """Yield every request complete in the buffer; stop when more bytes are needed."""
        unpacker = self._unpacker
        if unpacker is None:
            return
        while True:
            try:
                obj = next_object(unpacker)
            except ObjectTooLarge:
                raise self._too_large() from None
            except Undecodable as exc:
                pending = self._pending
                raise ProtocolError(
                    f"undecodable msgpack: {exc}",
                    seq=pending[1] if pending else None,
                    command=pending[0] if pending else None,
                ) from None
            if obj is NEED_DATA:
                if self._complete == self._fed:
                    self._unpacker = None  # the last object ended the data: release the parser
                return
            # msgpack's tell() also counts a partly parsed object, so remember where the
            # last whole object ended.
            self._complete = unpacker.tell()
            pending = self._pending
            if pending is not None:
                self._pending = None
                decode = self._body_decoders.get(pending[0])
                if decode is not None:
                    try:
                        obj = decode(obj)
                    except ProtocolError as exc:
                        exc.seq, exc.command = pending[1], pending[0]
                        raise
                yield Request(pending[0], pending[1], pending[2], obj)
                continue
            command, seq, token = parse_request_header(obj)
            if command in COMMANDS_WITH_BODY:
                self._pending = (command, seq, token)
            else:
                yield Request(command, seq, token, None)


class Encoded(bytes):
    """A body that is already msgpack-encoded (for example a cached members list)."""

    __slots__ = ()


class ResponseEncoder:
    """Encodes response frames; keeps one msgpack packer for the connection's lifetime."""

    __slots__ = ("_pack", "_pack_seq")

    _OK_HEAD: Final = b"\x82\xa5Error\xa0\xa3Seq"

    def __init__(self) -> None:
        self._pack: Callable[[Any], bytes] = new_packer()
        # Seq is an integer, never a str: msgpack's own packer, without the str fallback
        # (the hot path of every instant reply).
        self._pack_seq: Callable[[int], bytes] = msgpack.Packer(buf_size=32).pack

    def header(self, seq: int, error: str = "") -> bytes:
        """The response header ``{Error, Seq}`` (keys in the reference's sorted order)."""
        if not error:
            return self._OK_HEAD + self._pack_seq(seq)
        return b"\x82\xa5Error" + self._pack(error) + b"\xa3Seq" + self._pack_seq(seq)

    def response(self, seq: int, error: str = "", body: Any = None) -> bytes:
        """A header, then the body when ``body`` is not None: always one contiguous chunk."""
        head = self.header(seq, error)
        if body is None:
            return head
        if type(body) is Encoded:
            return head + body
        return head + self._pack(body)

    def body(self, body: Any) -> bytes:
        """Encode a body on its own, for callers that cache encoded bodies."""
        return self._pack(body)


class RequestEncoder:
    """Client side: encodes request frames (header plus optional body)."""

    __slots__ = ("_pack",)

    def __init__(self) -> None:
        self._pack: Callable[[Any], bytes] = new_packer()

    def request(self, command: str, seq: int, body: Any = None, token: str = "") -> bytes:
        head: bytes = self._pack({"Command": command, "Seq": seq, "Token": token})
        if body is None:
            return head
        return head + self._pack(body)


class ResponseDecoder:
    """Client side: turns a byte stream from an agent into :class:`Response` tuples.

    A response header does not say whether a body follows; the client knows from the command it
    sent. ``expect(seq, body=..., stream=...)`` registers that: ``body`` for one body after the
    header, ``stream`` for a monitor (the first frame is a bare ack, every later frame of that
    Seq carries a body) until ``forget(seq)`` or ``retire(seq)``. Headers of unknown Seq are
    skipped without a body, as the reference client does.

    A stream the client stopped is retired, not forgotten: serf's agent does not promise
    that nothing of a stream's Seq follows the reply to its ``stop`` (its log streamer drains
    the lines already queued, up to hundreds, after that reply), so every later frame of a
    retired Seq is a header and a body, both dropped. Read as a bare header instead, the body
    would be taken for the next header and the connection lost.
    """

    __slots__ = ("_expect", "_pending", "_retired", "_streams", "_unpacker")

    def __init__(self, max_frame_size: int = 64 * DEFAULT_MAX_FRAME_SIZE) -> None:
        self._unpacker = bounded_unpacker(max_frame_size)
        self._expect: dict[int, bool] = {}
        self._streams: set[int] = set()
        self._pending: tuple[int, str] | None = None
        """A header whose body comes next: its Seq and Error (Seq -1: a retired stream's
        frame, whose body is dropped)."""
        self._retired: dict[int, None] = {}
        """The Seqs of stopped streams, oldest first, at most :data:`RETIRED_STREAMS`."""

    def expect(self, seq: int, *, body: bool, stream: bool = False) -> None:
        self._retired.pop(seq, None)
        self._expect[seq] = body
        if stream:
            self._streams.add(seq)

    def forget(self, seq: int) -> None:
        """Nothing more comes for ``seq`` (a call's reply, a query's last record): a later
        header of it is one of unknown Seq."""
        self._expect.pop(seq, None)
        self._streams.discard(seq)

    def retire(self, seq: int) -> None:
        """The stream of ``seq`` was stopped: frames of it may still come, each a header and
        a body, and are dropped. The last :data:`RETIRED_STREAMS` stopped streams are kept
        (serf sends its stragglers right after the ``stop`` reply, so older ones are done).
        A stream not acked yet stays expected as it is: its ack is a bare header."""
        if seq in self._streams and not self._expect.get(seq):
            return
        self.forget(seq)
        retired = self._retired
        retired[seq] = None
        if len(retired) > RETIRED_STREAMS:
            del retired[next(iter(retired))]

    def feed(self, data: bytes | bytearray) -> None:
        try:
            feed(self._unpacker, data)
        except ObjectTooLarge:
            raise FrameTooLarge("response frame exceeds the size limit") from None

    def __iter__(self) -> Iterator[Response]:
        unpacker = self._unpacker
        while True:
            try:
                obj = next_object(unpacker)
            except ObjectTooLarge:
                raise FrameTooLarge("response frame exceeds the size limit") from None
            except Undecodable as exc:
                raise ProtocolError(f"undecodable msgpack from agent: {exc}") from None
            if obj is NEED_DATA:
                return
            pending = self._pending
            if pending is not None:
                self._pending = None
                if pending[0] >= 0:
                    yield Response(pending[0], pending[1], obj)
                continue
            if type(obj) is not dict:
                raise ProtocolError(f"response header must be a map, got {type(obj).__name__}")
            seq = obj.get("Seq")
            error = obj.get("Error") or ""
            if type(error) is not str:
                error = as_text(error)
            if not is_uint64(seq) or error is None:
                raise ProtocolError("response header needs Seq (uint64) and Error (str)")
            wants_body = self._expect.get(seq)
            if wants_body is None and seq in self._retired:
                self._pending = (-1, "")  # a stopped stream's straggler: drop its body too
                continue
            if seq in self._streams:
                if wants_body:
                    # A stream frame after the ack: a body follows.
                    self._pending = (seq, error)
                    continue
                # The stream's ack: no body; after it every frame of this Seq has one.
                if error:
                    self.forget(seq)
                else:
                    self._expect[seq] = True
                yield Response(seq, error, None)
                continue
            if wants_body is not None:
                del self._expect[seq]
            if wants_body and error in HEADER_ONLY_ERRORS:
                wants_body = False  # the gate refused the request before any handler ran
            if wants_body:
                self._pending = (seq, error)
            else:
                yield Response(seq, error, None)
