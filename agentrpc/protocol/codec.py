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
    WIRE_ERRORS,
    ObjectTooLarge,
    Undecodable,
    as_text as as_text,
    bounded_unpacker,
    feed,
    is_uint64,
    new_packer as new_packer,
    next_object,
    text_bytes as text_bytes,
    wire_error,
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


OK_HEADER_PREFIX: Final = b"\x82\xa5Error\xa0\xa3Seq"
"""A success reply header ``{Error: "", Seq: ...}`` up to its Seq (keys in sorted order)."""
_STOP: Final = "stop"
SPARE_UNPACKERS: Final = 16
"""Idle msgpack parsers a :class:`ParserPool` keeps, per frame-size limit."""
SPARE_BUFFER: Final = 16 * 1024
"""A parser that had to hold more than this many bytes is not kept (its buffer grew)."""


class ParserPool:
    """Idle msgpack parsers for the decoders of one owner (an agent's RPC listeners), so that
    a connection that waits between batches does not build one per read (about 1.5 us).

    Only parsers with no partial object and a small buffer are given back; at most
    ``limit`` are kept per frame-size limit, so the pool holds at most ``limit`` times the
    ~45 KiB of msgpack's parser state for each limit in use. Not thread-safe (one event loop).
    """

    __slots__ = ("_spares", "limit")

    def __init__(self, limit: int = SPARE_UNPACKERS) -> None:
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        self.limit = limit
        self._spares: dict[int, list[Any]] = {}

    def shelf(self, max_frame_size: int) -> list[Any]:
        """The idle parsers for that frame-size limit: a decoder pops one (when there is
        one) and appends it back while the list is shorter than :attr:`limit`."""
        return self._spares.setdefault(max_frame_size, [])

    def idle(self, max_frame_size: int) -> int:
        """Parsers kept for that frame-size limit."""
        return len(self._spares.get(max_frame_size, ()))


PULL_BYTES: Final = 8 * 1024
"""Bytes of requests one :meth:`RequestDecoder.pull` answers at most before it returns
:data:`PAUSED` (some 400 ``stop`` requests, well under a millisecond), so that the caller can
let others run."""


class RequestDecoder:
    """Turns a byte stream from a client into :class:`Request` tuples.

    Unknown commands are returned at once with no body (their body, if any, is never read: the
    connection closes after the ``Unsupported command`` reply).

    Two ways to read: iterate (every request, one :class:`Request` each), or :meth:`pull`, the
    engine's hot path, which also answers by itself the one request whose answer needs no
    state beyond what the caller passes in (a plain ``stop``, see :meth:`pull`) and hands back
    the next request that needs the session.
    """

    __slots__ = (
        "_body_decoders",
        "_complete",
        "_fed",
        "_keep",
        "_pack_seq",
        "_pending",
        "_small",
        "_spare_limit",
        "_spares",
        "_unpacker",
        "answered",
        "max_frame_size",
    )

    def __init__(
        self,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        *,
        body_decoders: Mapping[str, Callable[[Any], Any]] | None = None,
        keep_parser: bool = False,
        parsers: ParserPool | None = None,
    ) -> None:
        """``body_decoders`` (command -> function) turn each body into its command's type as
        it arrives (a malformed one raises :class:`ProtocolError` naming its Seq and command);
        without them bodies are yielded as msgpack decoded them. The parser is let go when
        the buffer holds no byte of a request; with ``keep_parser``, only at
        :meth:`release_idle` (a reader calls it before it waits for more bytes, so a
        connection that keeps sending keeps its parser). With ``parsers``, the parser comes
        from that pool and goes back to it."""
        if max_frame_size < 64:
            raise ValueError("max_frame_size must be at least 64 bytes")
        self.max_frame_size = max_frame_size
        self._body_decoders: Mapping[str, Callable[[Any], Any]] = body_decoders or {}
        # msgpack's unpacker carries ~45 KiB of parser state, so it exists only while bytes
        # are waiting: an idle connection holds none (see _release).
        self._unpacker: Any = None
        self._fed = 0
        self._complete = 0
        self._pending: tuple[str, int, str | None] | None = None
        self._small = True
        self._keep = keep_parser
        # The pool's list for this limit, used directly: two calls fewer per batch.
        self._spares = parsers.shelf(max_frame_size) if parsers is not None else None
        self._spare_limit = parsers.limit if parsers is not None else 0
        self._pack_seq: Callable[[int], bytes] = msgpack.Packer(buf_size=32).pack
        self.answered = 0
        """Requests :meth:`pull` answered by itself (the caller counts and resets it)."""

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the peer."""
        unpacker = self._unpacker
        if unpacker is None:
            spares = self._spares
            unpacker = self._unpacker = (
                spares.pop() if spares else bounded_unpacker(self.max_frame_size)
            )
            # Offsets are the unpacker's own (a spare one has counted bytes before).
            self._fed = self._complete = unpacker.tell()
            self._small = True
        size = len(data)
        if self._fed - self._complete + size > SPARE_BUFFER:
            self._small = False  # its buffer may have grown: not kept as a spare
        try:
            feed(unpacker, data)
        except ObjectTooLarge:
            raise self._too_large() from None
        self._fed += size

    def release_idle(self) -> None:
        """Let the parser go if its buffer holds no byte of an unfinished object (a header
        waiting for its body is kept apart); a no-op otherwise."""
        unpacker = self._unpacker
        if unpacker is not None and self._complete == self._fed:
            self._unpacker = None
            spares = self._spares
            if self._small and spares is not None and len(spares) < self._spare_limit:
                spares.append(unpacker)

    def _release(self) -> None:
        """No byte of an unfinished object is buffered: an idle connection keeps no parser.
        One whose buffer stayed small goes back to the pool while it is not full."""
        unpacker = self._unpacker
        self._unpacker = None
        spares = self._spares
        if self._small and spares is not None and len(spares) < self._spare_limit:
            spares.append(unpacker)

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
        pull = self.pull
        while True:
            request = pull(None)
            if request is None:
                return
            yield request

    def pull(
        self,
        out: list[bytes] | None,
        plain_stop: bool = False,
        monitor_seq: int | None = None,
        limit: int = PULL_BYTES,
    ) -> Request | None:
        """The next whole request that needs the caller, or None: the buffer holds no whole
        request, or :data:`PAUSED` once requests of ``limit`` bytes were answered here.

        With ``plain_stop`` (the session says: handshaken, no token to check, ``stop`` is a
        plain success), a ``stop`` whose body is ``{Stop: n}`` with ``n`` not ``monitor_seq``
        is answered here: its success header is appended to ``out`` and :attr:`answered`
        counts it. Everything else (a ``stop`` of the monitor included) is returned, in order.
        One pass per object, with no call per request: this is the engine's hot path.
        """
        unpacker = self._unpacker
        if unpacker is None:
            return None
        if not plain_stop or out is None:
            return self._pull_each(unpacker)
        # The pending header (its body comes next) in three locals: no tuple per request.
        command: str | None = None
        seq: Any = 0  # an int once checked
        token: str | None = None
        if self._pending is not None:
            command, seq, token = self._pending
            self._pending = None
        keep = -1 if monitor_seq is None else monitor_seq  # int against int: the fast compare
        before = len(out)
        ok_head, pack_seq, append = OK_HEADER_PREFIX, self._pack_seq, out.append
        tell, with_body, stop_command = unpacker.tell, COMMANDS_WITH_BODY, _STOP
        # msgpack's tell() also counts a partly parsed object: ``end`` is where the last whole
        # request ended (the release below needs it); it also bounds the work of one call.
        end = self._complete
        pause_at = end + limit
        try:
            for obj in unpacker:
                if command is not None:
                    if command == stop_command and type(obj) is dict:
                        stop = obj.get("Stop")
                        if type(stop) is int and stop >= 0 and stop != keep:
                            append(ok_head + pack_seq(seq))
                            command = None
                            end = tell()
                            if end >= pause_at:
                                self._complete = end
                                self.answered += len(out) - before
                                return PAUSED
                            continue
                    self._complete = tell()
                    self.answered += len(out) - before
                    before = len(out)
                    request = self._with_body(command, seq, token, obj)
                    command = None
                    return request
                # The header's common shape checked inline (no call per request).
                if type(obj) is dict:
                    name = obj.get("Command")
                    seq = obj.get("Seq")
                    token = obj.get("Token")
                    # msgpack yields no int above 2**64 - 1: Seq >= 0 is a uint64.
                    if not (
                        type(name) is str
                        and type(seq) is int
                        and seq >= 0
                        and (type(token) is str or token is None)
                    ):
                        name, seq, token = parse_request_header(obj)
                else:
                    name, seq, token = parse_request_header(obj)
                if name in with_body:
                    command = name
                    continue
                self._complete = tell()
                self.answered += len(out) - before
                return Request(name, seq, token, None)
        except WIRE_ERRORS as exc:
            self._complete = end
            self.answered += len(out) - before
            if command is not None:
                self._pending = (command, seq, token)
            raise self._undecodable(exc) from None
        except ProtocolError:
            self._complete = end
            self.answered += len(out) - before
            raise
        # The buffer holds no whole object.
        self._complete = end
        self.answered += len(out) - before
        if command is not None:
            self._pending = (command, seq, token)
        elif end == self._fed and not self._keep:
            self._release()
        return None

    def _pull_each(self, unpacker: Any) -> Request | None:
        """:meth:`pull` without the plain ``stop``: every request is returned."""
        pending = self._pending
        try:
            for obj in unpacker:
                self._complete = unpacker.tell()
                if pending is not None:
                    command, seq, token = pending
                    pending = self._pending = None
                    return self._with_body(command, seq, token, obj)
                command, seq, token = _header(obj)
                if command in COMMANDS_WITH_BODY:
                    pending = self._pending = (command, seq, token)
                    continue
                return Request(command, seq, token, None)
        except WIRE_ERRORS as exc:
            raise self._undecodable(exc) from None
        if self._complete == self._fed and not self._keep:
            self._release()
        return None

    def _with_body(self, command: str, seq: int, token: str | None, obj: Any) -> Request:
        decode = self._body_decoders.get(command)
        if decode is not None:
            try:
                obj = decode(obj)
            except ProtocolError as exc:
                exc.seq, exc.command = seq, command
                raise
        return Request(command, seq, token, obj)

    def _undecodable(self, exc: Exception) -> ProtocolError:
        """msgpack's failure as the :class:`ProtocolError` that names the pending request."""
        wire = wire_error(exc)
        if type(wire) is ObjectTooLarge:
            return self._too_large()
        pending = self._pending
        return ProtocolError(
            f"undecodable msgpack: {wire}",
            seq=pending[1] if pending else None,
            command=pending[0] if pending else None,
        )


PAUSED: Final = Request("", -1, None, None)
"""What :meth:`RequestDecoder.pull` returns once it answered ``limit`` requests by itself."""


def _header(obj: object) -> tuple[str, int, str | None]:
    """A request header's fields: the common shape checked inline, the rest (and every error)
    by :func:`parse_request_header`."""
    if type(obj) is dict:
        command = obj.get("Command")
        seq = obj.get("Seq")
        token = obj.get("Token")
        if (
            type(command) is str
            and type(seq) is int
            and 0 <= seq <= MAX_SEQ
            and (token is None or type(token) is str)
        ):
            return command, seq, token
    return parse_request_header(obj)


class Encoded(bytes):
    """A body that is already msgpack-encoded (for example a cached members list)."""

    __slots__ = ()


class ResponseEncoder:
    """Encodes response frames; keeps one msgpack packer for the connection's lifetime."""

    __slots__ = ("_pack", "_pack_seq")

    _OK_HEAD: Final = OK_HEADER_PREFIX

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
