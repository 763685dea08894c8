"""Sans-I/O yamux (hashicorp/yamux, spec.md): the frame codec and a session state machine.

Every frame starts with a 12-byte big-endian header: version (0), type, flags, stream id,
length. Types: 0 data (length payload bytes follow), 1 window update (length is an increment),
2 ping (length is an opaque value, answered with ACK), 3 go-away (length is a reason code).
Flags: 1 SYN, 2 ACK, 4 FIN, 8 RST. The dialer uses odd stream ids, the acceptor even ones; id 0
is the session.

:class:`YamuxConnection` is driven with bytes in (:meth:`YamuxConnection.receive_data`) and
bytes out (:meth:`YamuxConnection.data_to_send`); it never blocks, sleeps or spawns. It does what
the reference's ``Session``/``Stream`` do on the wire, frame for frame:

* opening a stream sends a window update with SYN (delta 0 at the default window) at once;
  accepting one sends a window update with ACK;
* a stream's receive window starts at 256 KiB; received data is buffered here (never more than
  the window) and :meth:`read` hands it out, sending a window update once at least half the
  window has been consumed, with the reference's delta formula;
* a sender never puts more data in flight than the peer's window (:meth:`send_data` returns how
  much it could send, possibly 0);
* close is a FIN (half-close) in a window update, reset an RST in a window update;
* a SYN while going away or beyond the accept backlog is answered with RST;
* protocol errors (bad version or type, duplicate stream, window exceeded, unexpected FIN) queue
  a go-away with code 1 and raise :class:`YamuxProtocolError`.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from typing import Final, NamedTuple

VERSION: Final = 0
HEADER_SIZE: Final = 12
INITIAL_WINDOW: Final = 256 * 1024
"""Every stream's window at open, on both sides (the reference's initialStreamWindow)."""
MAX_UINT32: Final = 0xFFFF_FFFF
DEFAULT_ACCEPT_BACKLOG: Final = 256

_HEADER: Final = struct.Struct(">BBHII")


class FrameType(enum.IntEnum):
    DATA = 0
    WINDOW_UPDATE = 1
    PING = 2
    GO_AWAY = 3


class Flag(enum.IntFlag):
    NONE = 0
    SYN = 1
    ACK = 2
    FIN = 4
    RST = 8


class GoAwayCode(enum.IntEnum):
    NORMAL = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class Header(NamedTuple):
    """One decoded frame header."""

    type: int
    flags: int
    stream_id: int
    length: int
    version: int = VERSION


def encode_header(frame_type: int, flags: int, stream_id: int, length: int) -> bytes:
    """The 12 header bytes of a frame (version 0)."""
    return _HEADER.pack(VERSION, frame_type, flags, stream_id, length)


def decode_header(data: bytes | bytearray | memoryview, offset: int = 0) -> Header:
    """Decode 12 header bytes; :class:`YamuxProtocolError` on a bad version or type."""
    version, frame_type, flags, stream_id, length = _HEADER.unpack_from(data, offset)
    if version != VERSION:
        raise YamuxProtocolError(f"invalid protocol version {version}")
    if frame_type > FrameType.GO_AWAY:
        raise YamuxProtocolError(f"invalid message type {frame_type}")
    return Header(frame_type, flags, stream_id, length, version)


# ---------------------------------------------------------------------------------- errors


class YamuxError(Exception):
    """Base of the multiplexer's errors."""


class YamuxProtocolError(YamuxError):
    """The peer broke the protocol; a go-away with code 1 has been queued."""


class RemoteGoAwayError(YamuxError):
    """The peer ended the session with a go-away carrying an error code."""

    def __init__(self, code: int) -> None:
        names = {1: "protocol error", 2: "internal error"}
        super().__init__(f"remote go-away: {names.get(code, f'unexpected code {code}')}")
        self.code = code


class SessionShutdownError(YamuxError):
    """The session is over (closed locally, by the peer, or by an error)."""


class RemoteNotAcceptingError(YamuxError):
    """The peer sent a normal go-away: it accepts no new streams."""


class StreamsExhaustedError(YamuxError):
    """No stream ids left on this session."""


class StreamClosedError(YamuxError):
    """Writing to a stream this side has already closed."""


class StreamResetError(YamuxError):
    """The stream was reset (by either side)."""


# ---------------------------------------------------------------------------------- streams


class StreamState(enum.Enum):
    SYN_SENT = "syn-sent"
    SYN_RECEIVED = "syn-received"
    ESTABLISHED = "established"
    LOCAL_CLOSE = "local-close"
    REMOTE_CLOSE = "remote-close"
    CLOSED = "closed"
    RESET = "reset"


_OPEN_STATES: Final = frozenset(
    {StreamState.SYN_SENT, StreamState.SYN_RECEIVED, StreamState.ESTABLISHED}
)


class SessionStream:
    """The state of one stream; read its fields, change it only through the connection."""

    __slots__ = (
        "awaiting_ack",
        "buffer",
        "discard",
        "need_ack",
        "recv_window",
        "send_window",
        "state",
        "stream_id",
    )

    def __init__(self, stream_id: int, state: StreamState) -> None:
        self.stream_id = stream_id
        self.state = state
        self.send_window = INITIAL_WINDOW
        self.recv_window = INITIAL_WINDOW
        self.buffer = bytearray()
        self.need_ack = state is StreamState.SYN_RECEIVED
        self.awaiting_ack = state is StreamState.SYN_SENT
        self.discard = False

    @property
    def remote_closed(self) -> bool:
        """The peer sent FIN (or the stream is fully closed): no more data will arrive."""
        return self.state in (StreamState.REMOTE_CLOSE, StreamState.CLOSED)

    @property
    def local_closed(self) -> bool:
        return self.state in (StreamState.LOCAL_CLOSE, StreamState.CLOSED, StreamState.RESET)

    @property
    def is_reset(self) -> bool:
        return self.state is StreamState.RESET

    def __repr__(self) -> str:
        return (
            f"<SessionStream {self.stream_id} {self.state.value} send={self.send_window} "
            f"recv={self.recv_window} buffered={len(self.buffer)}>"
        )


# ---------------------------------------------------------------------------------- events


class StreamOpened(NamedTuple):
    """The peer opened a stream; it waits in the accept queue."""

    stream_id: int


class StreamChanged(NamedTuple):
    """Data, window, FIN, ACK or RST arrived for a stream: wake whoever waits on it."""

    stream_id: int


class PingAnswered(NamedTuple):
    opaque: int


class GoAwayReceived(NamedTuple):
    """The peer sent a normal go-away: it will accept no new streams."""

    code: int


Event = StreamOpened | StreamChanged | PingAnswered | GoAwayReceived


# ---------------------------------------------------------------------------------- session


class YamuxConnection:
    """The session state machine of one side (``client=True`` for the dialer)."""

    def __init__(
        self,
        client: bool,
        *,
        accept_backlog: int = DEFAULT_ACCEPT_BACKLOG,
        max_window: int = INITIAL_WINDOW,
    ) -> None:
        if accept_backlog < 1:
            raise ValueError("accept_backlog must be positive")
        if not INITIAL_WINDOW <= max_window <= MAX_UINT32:
            raise ValueError(f"max_window must be at least {INITIAL_WINDOW}")
        self.client = client
        self.accept_backlog = accept_backlog
        self.max_window = max_window
        self._next_id = 1 if client else 2
        self._streams: dict[int, SessionStream] = {}
        self._accept_queue: deque[SessionStream] = deque()
        self._out = bytearray()
        self._header_part = bytearray()
        self._payload_left = 0
        self._payload_stream: SessionStream | None = None
        self._ping_id = 0
        self._go_away_sent = False
        self.local_go_away = False
        self.remote_go_away = False
        self.outbound_unacked = 0
        """Streams we opened that the peer has not acknowledged yet."""
        self.buffered_input = 0
        """Bytes received and not read yet, over all streams (see :meth:`shed_input`)."""
        self.terminated: YamuxError | None = None

    # ------------------------------------------------------------------ queries

    @property
    def streams(self) -> dict[int, SessionStream]:
        """Live streams by id (read only)."""
        return self._streams

    @property
    def pending_accepts(self) -> int:
        return len(self._accept_queue)

    @property
    def pending_output(self) -> int:
        """Bytes queued for the transport and not yet taken by :meth:`data_to_send`."""
        return len(self._out)

    def data_to_send(self) -> bytes:
        """Everything queued for the transport; the queue is empty afterwards."""
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out.clear()
        return out

    # ------------------------------------------------------------------ output helpers

    def _queue(self, frame_type: int, flags: int, stream_id: int, length: int) -> None:
        self._out += _HEADER.pack(VERSION, frame_type, flags, stream_id, length)

    def _take_flags(self, stream: SessionStream) -> int:
        if stream.need_ack:
            stream.need_ack = False
            if stream.state is StreamState.SYN_RECEIVED:
                stream.state = StreamState.ESTABLISHED
            return Flag.ACK
        return 0

    def _window_delta(self, stream: SessionStream) -> int:
        # The reference's (max - buffered) - recvWindow, where "buffered" also counts the part
        # of a data frame still on its way (already taken off the window at its header).
        in_flight = self._payload_left if self._payload_stream is stream else 0
        return self.max_window - len(stream.buffer) - in_flight - stream.recv_window

    def _check_usable(self) -> None:
        if self.terminated is not None:
            raise SessionShutdownError(f"session is over: {self.terminated}")

    def _forget(self, stream: SessionStream) -> None:
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
        if stream.awaiting_ack:
            stream.awaiting_ack = False
            self.outbound_unacked -= 1

    def _protocol_error(self, message: str) -> YamuxProtocolError:
        error = YamuxProtocolError(message)
        if not self._go_away_sent:
            self._go_away_sent = True
            self.local_go_away = True
            self._queue(FrameType.GO_AWAY, 0, 0, GoAwayCode.PROTOCOL_ERROR)
        self.terminated = error
        return error

    # ------------------------------------------------------------------ local operations

    def open_stream(self) -> SessionStream:
        """A new outgoing stream; its SYN (a window update) is queued at once."""
        self._check_usable()
        if self.remote_go_away:
            raise RemoteNotAcceptingError("remote end is not accepting connections")
        stream_id = self._next_id
        if stream_id >= MAX_UINT32 - 1:
            raise StreamsExhaustedError("no stream ids left on this session")
        self._next_id += 2
        stream = SessionStream(stream_id, StreamState.SYN_SENT)
        self._streams[stream_id] = stream
        self.outbound_unacked += 1
        delta = self._window_delta(stream)
        stream.recv_window += delta
        self._queue(FrameType.WINDOW_UPDATE, Flag.SYN, stream_id, delta)
        return stream

    def accept_stream(self) -> SessionStream | None:
        """The oldest incoming stream, acknowledged (window update with ACK); None if none."""
        if not self._accept_queue:
            return None
        stream = self._accept_queue.popleft()
        if self.terminated is None and stream.need_ack and not stream.is_reset:
            flags = self._take_flags(stream)
            delta = self._window_delta(stream)
            stream.recv_window += delta
            self._queue(FrameType.WINDOW_UPDATE, flags, stream.stream_id, delta)
        return stream

    def send_data(self, stream: SessionStream, data: bytes | bytearray | memoryview) -> int:
        """Queue up to the peer's window of ``data`` in one data frame; returns how much."""
        self._check_usable()
        if stream.is_reset:
            raise StreamResetError(f"stream {stream.stream_id} was reset")
        if stream.local_closed:
            raise StreamClosedError(f"stream {stream.stream_id} is closed for sending")
        count = min(stream.send_window, len(data))
        if count == 0:
            return 0
        flags = self._take_flags(stream)
        self._queue(FrameType.DATA, flags, stream.stream_id, count)
        self._out += data[:count]
        stream.send_window -= count
        return count

    def read(self, stream: SessionStream, max_bytes: int) -> bytes:
        """Take up to ``max_bytes`` of received data; may queue a window update."""
        buffer = stream.buffer
        if not buffer:
            return b""
        if max_bytes >= len(buffer):
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:max_bytes])
            del buffer[:max_bytes]
        self.buffered_input -= len(data)
        self._maybe_update_window(stream)
        return data

    def _maybe_update_window(self, stream: SessionStream) -> None:
        if self.terminated is not None or stream.remote_closed or stream.is_reset:
            return
        delta = self._window_delta(stream)
        flags = self._take_flags(stream)
        if delta < self.max_window // 2 and not flags:
            return
        stream.recv_window += delta
        self._queue(FrameType.WINDOW_UPDATE, flags, stream.stream_id, delta)

    def close_stream(self, stream: SessionStream) -> None:
        """Half-close: send FIN (no more data from this side)."""
        state = stream.state
        if state in _OPEN_STATES:
            stream.state = StreamState.LOCAL_CLOSE
        elif state is StreamState.REMOTE_CLOSE:
            stream.state = StreamState.CLOSED
            self._forget(stream)
        else:
            return
        if self.terminated is None:
            flags = self._take_flags(stream) | Flag.FIN
            self._queue(FrameType.WINDOW_UPDATE, flags, stream.stream_id, 0)

    def reset_stream(self, stream: SessionStream) -> None:
        """Hard close: send RST; both sides forget the stream."""
        if stream.state in (StreamState.CLOSED, StreamState.RESET):
            return
        stream.state = StreamState.RESET
        self._drop_buffer(stream)
        self._forget(stream)
        if self.terminated is None:
            self._queue(FrameType.WINDOW_UPDATE, Flag.RST, stream.stream_id, 0)

    def abandon_stream(self, stream: SessionStream) -> None:
        """The local user will read no more: drop what is buffered and what still arrives,
        granting the window back so that the peer can finish and send its FIN."""
        stream.discard = True
        self._drop_buffer(stream)
        self._maybe_update_window(stream)

    def _drop_buffer(self, stream: SessionStream) -> None:
        self.buffered_input -= len(stream.buffer)
        stream.buffer.clear()

    def shed_input(self, limit: int) -> list[int]:
        """Keep what the streams hold unread within ``limit`` bytes: reset (RST) the streams
        holding the most until it fits, and return their ids.

        Each stream's window bounds what the peer may send it, but not how many streams hold a
        full window that nobody reads; this bounds the session. A peer that reads its replies
        never meets it (the reference has no such bound; its memory grows instead).
        """
        if self.buffered_input <= limit:
            return []
        holding = [stream for stream in self._streams.values() if stream.buffer]
        # Recount from the live streams (a stream forgotten with unread data no longer counts).
        self.buffered_input = sum(len(stream.buffer) for stream in holding)
        holding.sort(key=lambda stream: len(stream.buffer), reverse=True)
        shed: list[int] = []
        for stream in holding:
            if self.buffered_input <= limit:
                break
            self.reset_stream(stream)
            shed.append(stream.stream_id)
        return shed

    def ping(self) -> int:
        """Queue a ping (SYN); returns its opaque value, echoed in the answer."""
        self._check_usable()
        opaque = self._ping_id
        self._ping_id = (opaque + 1) & MAX_UINT32
        self._queue(FrameType.PING, Flag.SYN, 0, opaque)
        return opaque

    def go_away(self, code: int = GoAwayCode.NORMAL) -> None:
        """Tell the peer this side accepts no new streams (sent once)."""
        self.local_go_away = True
        if self._go_away_sent or self.terminated is not None:
            return
        self._go_away_sent = True
        self._queue(FrameType.GO_AWAY, 0, 0, code)

    def connection_lost(self, reason: YamuxError | None = None) -> None:
        """The transport is gone: the session is over."""
        if self.terminated is None:
            self.terminated = reason or SessionShutdownError("connection closed")

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Process bytes from the peer; returns what happened (streams changed once each).

        Raises :class:`YamuxProtocolError` (a go-away is queued) or
        :class:`RemoteGoAwayError`; the session is then over.
        """
        if self.terminated is not None:
            return []
        events: list[Event] = []
        changed: dict[int, None] = {}
        view = memoryview(data)
        end = len(view)
        pos = 0
        while pos < end:
            left = self._payload_left
            if left:
                take = min(left, end - pos)
                self._payload_left = left - take
                stream = self._payload_stream
                if stream is not None:
                    self._deliver(stream, view[pos : pos + take])
                    changed[stream.stream_id] = None
                pos += take
                continue
            part = self._header_part
            if part or end - pos < HEADER_SIZE:
                take = min(HEADER_SIZE - len(part), end - pos)
                part += view[pos : pos + take]
                pos += take
                if len(part) < HEADER_SIZE:
                    break
                version, frame_type, flags, stream_id, length = _HEADER.unpack(part)
                part.clear()
            else:
                version, frame_type, flags, stream_id, length = _HEADER.unpack_from(view, pos)
                pos += HEADER_SIZE
            if version != VERSION:
                raise self._protocol_error(f"invalid protocol version {version}")
            if frame_type > FrameType.GO_AWAY:
                raise self._protocol_error(f"invalid message type {frame_type}")
            self._handle_frame(frame_type, flags, stream_id, length, events, changed)
        events.extend(StreamChanged(stream_id) for stream_id in changed)
        return events

    def _deliver(self, stream: SessionStream, chunk: memoryview) -> None:
        if stream.is_reset:
            return
        if stream.discard:
            self._maybe_update_window(stream)
            return
        stream.buffer += chunk
        self.buffered_input += len(chunk)

    def _handle_frame(
        self,
        frame_type: int,
        flags: int,
        stream_id: int,
        length: int,
        events: list[Event],
        changed: dict[int, None],
    ) -> None:
        if frame_type == FrameType.DATA or frame_type == FrameType.WINDOW_UPDATE:
            if flags & Flag.SYN and self._incoming_stream(stream_id):
                events.append(StreamOpened(stream_id))
            stream = self._streams.get(stream_id)
            if stream is None:
                # Likely a stream this side reset: drain its data, ignore the rest (reference).
                if frame_type == FrameType.DATA and length:
                    self._payload_left = length
                    self._payload_stream = None
                return
            self._process_flags(stream, flags)
            changed[stream_id] = None
            if frame_type == FrameType.WINDOW_UPDATE:
                window = stream.send_window + length
                if window > MAX_UINT32:
                    raise self._protocol_error(f"send window overflow on stream {stream_id}")
                stream.send_window = window
                return
            if length > stream.recv_window:
                raise self._protocol_error(
                    f"receive window exceeded on stream {stream_id} "
                    f"(remain {stream.recv_window}, received {length})"
                )
            stream.recv_window -= length
            if length:
                self._payload_left = length
                self._payload_stream = stream
            return
        if frame_type == FrameType.PING:
            if flags & Flag.SYN:
                self._queue(FrameType.PING, Flag.ACK, 0, length)
            else:
                events.append(PingAnswered(length))
            return
        # GO_AWAY
        if length == GoAwayCode.NORMAL:
            self.remote_go_away = True
            events.append(GoAwayReceived(length))
            return
        error = RemoteGoAwayError(length)
        self.terminated = error
        raise error

    def _incoming_stream(self, stream_id: int) -> bool:
        if self.local_go_away:
            self._queue(FrameType.WINDOW_UPDATE, Flag.RST, stream_id, 0)
            return False
        if stream_id == 0 or (stream_id % 2 == 1) == self.client:
            raise self._protocol_error(f"peer opened stream {stream_id} with this side's parity")
        if stream_id in self._streams:
            raise self._protocol_error(f"duplicate stream {stream_id} declared")
        if len(self._accept_queue) >= self.accept_backlog:
            self._queue(FrameType.WINDOW_UPDATE, Flag.RST, stream_id, 0)
            return False
        stream = SessionStream(stream_id, StreamState.SYN_RECEIVED)
        self._streams[stream_id] = stream
        self._accept_queue.append(stream)
        return True

    def _process_flags(self, stream: SessionStream, flags: int) -> None:
        if flags & Flag.ACK:
            if stream.awaiting_ack:
                stream.awaiting_ack = False
                self.outbound_unacked -= 1
            if stream.state is StreamState.SYN_SENT:
                stream.state = StreamState.ESTABLISHED
        if flags & Flag.FIN:
            state = stream.state
            if state in _OPEN_STATES:
                stream.state = StreamState.REMOTE_CLOSE
            elif state is StreamState.LOCAL_CLOSE:
                stream.state = StreamState.CLOSED
                self._forget(stream)
            else:
                raise self._protocol_error(
                    f"unexpected FIN on stream {stream.stream_id} in state {state.value}"
                )
        if flags & Flag.RST:
            stream.state = StreamState.RESET
            self._forget(stream)
