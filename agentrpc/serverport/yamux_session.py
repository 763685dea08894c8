"""The yamux engine: one :class:`YamuxSession` per connection, streams as ``trio.abc.Stream``.

Shape: :meth:`YamuxSession.run` owns a nursery with a reader task (bytes from the transport into
the sans-I/O :class:`~agentrpc.serverport.yamux.YamuxConnection`, waking the streams concerned),
a writer task (everything the state machine queued, in one ``send_all`` per batch, each under the
write timeout) and, when enabled, a keep-alive task (a ping every 30 s, answered within the write
timeout or the session ends).

Back-pressure is real at every step: a stream's ``send_all`` waits while the peer's window is
zero, and also while the session's byte budget (:attr:`YamuxSession.send_budget`,
``max_buffered_output`` bytes, drawing on the agent-wide ``send_budget`` when one is given)
is spent: data is counted from the moment it is queued until the writer handed it to the
kernel, in chunks of at most ``SEND_CHUNK`` (64 KiB) so that an empty session can always make
progress. The reader stops reading while the control frames queued for the transport are far
above the mark (a peer that sends but never reads cannot grow them). So a slow reader at the far
end blocks the writer here instead of making the session buffer without bound, however many
streams it opens; received data never exceeds a stream's window.

Closing: :meth:`YamuxSession.close` queues a go-away (normal), lets the writer flush what is
queued (bounded by the write timeout), then the run ends and the transport is closed. Streams
then fail with ``trio.BrokenResourceError``; data already received can still be read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import trio

from ..budget import ConnectionBudget, SharedBudget
from ..log_protocol import DEBUG, ERR, WARN, LogLike, NullLog, clip
from .yamux import (
    DEFAULT_ACCEPT_BACKLOG,
    INITIAL_WINDOW,
    Event,
    GoAwayCode,
    PingAnswered,
    SessionShutdownError,
    SessionStream,
    StreamChanged,
    StreamClosedError,
    StreamOpened,
    YamuxConnection,
    YamuxError,
)

DEFAULT_KEEPALIVE_INTERVAL: Final = 30.0
DEFAULT_WRITE_TIMEOUT: Final = 10.0
READ_SIZE: Final = 64 * 1024
SEND_CHUNK: Final = 64 * 1024
"""Largest data frame a stream queues at once (what an empty session may always queue)."""


@dataclass(frozen=True, slots=True)
class YamuxConfig:
    """The reference's defaults: backlog 256, keep-alive 30 s, write timeout 10 s, 256 KiB."""

    accept_backlog: int = DEFAULT_ACCEPT_BACKLOG
    keepalive_interval: float | None = DEFAULT_KEEPALIVE_INTERVAL
    """Seconds between keep-alive pings; None disables them."""
    write_timeout: float = DEFAULT_WRITE_TIMEOUT
    """Longest a write to the transport (or a ping's answer) may take before the session ends."""
    max_stream_window: int = INITIAL_WINDOW
    max_buffered_output: int = 256 * 1024
    max_buffered_input: int = 4 * 1024 * 1024
    """Bytes all streams of the session may hold received and unread; past it the streams
    holding the most are reset (each stream's window alone bounds only that stream)."""
    """Bytes of stream data the session holds queued for the transport (its byte budget);
    stream writers wait past it."""
    read_size: int = READ_SIZE


_T = TypeVar("_T")


def _broken(exc: YamuxError) -> trio.BrokenResourceError:
    return trio.BrokenResourceError(f"yamux: {exc}")


async def _park_until(lot: trio.lowlevel.ParkingLot, attempt: Callable[[], _T | None]) -> _T:
    """``attempt()`` until it returns a value (it raises to give up), parking on ``lot``
    between tries; one checkpoint in all, as a trio operation should."""
    await trio.lowlevel.checkpoint_if_cancelled()
    parked = False
    while (result := attempt()) is None:
        parked = True
        await lot.park()
    if not parked:
        await trio.lowlevel.cancel_shielded_checkpoint()
    return result


class _OneTaskAtATime:
    """Refuses a second task in a stream operation (trio's ``BusyResourceError``)."""

    __slots__ = ("_busy", "_message")

    def __init__(self, message: str) -> None:
        self._busy = False
        self._message = message

    def __enter__(self) -> None:
        if self._busy:
            raise trio.BusyResourceError(self._message)
        self._busy = True

    def __exit__(self, *exc_info: object) -> None:
        self._busy = False


class YamuxStream(trio.abc.HalfCloseableStream):
    """One multiplexed stream. ``aclose`` half-closes (FIN) and drops what still arrives;
    :meth:`reset` aborts it (RST)."""

    def __init__(self, session: YamuxSession, state: SessionStream) -> None:
        self._session = session
        self._state = state
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self._sending = _OneTaskAtATime("another task is sending on this stream")
        self._receiving = _OneTaskAtATime("another task is receiving on this stream")

    @property
    def stream_id(self) -> int:
        return self._state.stream_id

    @property
    def session(self) -> YamuxSession:
        return self._session

    def __repr__(self) -> str:
        return f"<YamuxStream {self._state!r}>"

    def _wake(self) -> None:
        self._lot.unpark_all()

    # ------------------------------------------------------------------ sending

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._sending:
            await trio.lowlevel.checkpoint_if_cancelled()
            session = self._session
            conn = session._conn
            budget = session.send_budget
            state = self._state
            view = memoryview(data)
            total = len(view)
            position = 0
            parked = False
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("stream is closed")
                # Each chunk is accounted in the session's byte budget (and the agent's) from
                # the moment it is queued until the writer has handed it to the kernel.
                size = min(total - position, state.send_window, SEND_CHUNK)
                reserved = 0
                if size and conn.terminated is None:
                    if not budget.try_reserve(size):
                        parked = True
                        try:
                            await budget.reserve(size)
                        except trio.ClosedResourceError:
                            raise session._dead_error() from None
                    reserved = size
                try:
                    sent = conn.send_data(state, view[position : position + size])
                except StreamClosedError as exc:
                    budget.release(reserved)
                    raise trio.ClosedResourceError(str(exc)) from None
                except YamuxError as exc:
                    budget.release(reserved)
                    raise _broken(exc) from None
                if reserved > sent:
                    budget.release(reserved - sent)
                if sent:
                    position += sent
                    session._reserved_output += sent
                    session._kick_writer()
                if position >= total:
                    break
                if not sent:
                    parked = True
                    await self._lot.park()
            if not parked:
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        state = self._state
        conn = self._session._conn
        while not self._closed and not state.local_closed and conn.terminated is None:
            if state.send_window > 0:
                break
            await self._lot.park()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_eof(self) -> None:
        """Half-close: a FIN; the peer reads EOF after the data already sent."""
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        self._session._conn.close_stream(self._state)
        self._session._kick_writer()
        await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------------ receiving

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._receiving:
            await trio.lowlevel.checkpoint_if_cancelled()
            session = self._session
            conn = session._conn
            state = self._state
            size = max_bytes or session.config.read_size
            parked = False
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("stream is closed")
                data = conn.read(state, size)
                if data:
                    session._kick_writer()
                    break
                if state.remote_closed:
                    break
                if state.is_reset:
                    raise trio.BrokenResourceError(f"yamux: stream {state.stream_id} was reset")
                if conn.terminated is not None:
                    raise _broken(conn.terminated)
                parked = True
                await self._lot.park()
            if not parked:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    # ------------------------------------------------------------------ closing

    def reset(self) -> None:
        """Abort the stream at once (RST); never blocks, safe in cleanup code."""
        if self._closed and self._state.is_reset:
            return
        self._closed = True
        session = self._session
        session._conn.reset_stream(self._state)
        session._forget(self)
        session._kick_writer()
        self._wake()

    def close_nowait(self) -> None:
        """What :meth:`aclose` does, without the checkpoint (for cleanup code): FIN unless
        already sent, and drop whatever still arrives."""
        if self._closed:
            return
        self._closed = True
        session = self._session
        conn = session._conn
        state = self._state
        conn.close_stream(state)
        if not state.remote_closed and not state.is_reset:
            conn.abandon_stream(state)
        session._forget(self)
        session._kick_writer()
        self._wake()

    async def aclose(self) -> None:
        self.close_nowait()
        await trio.lowlevel.checkpoint()


class YamuxSession:
    """A yamux session over ``stream``; ``client=True`` on the dialing side (odd stream ids)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        client: bool,
        *,
        config: YamuxConfig | None = None,
        logger: LogLike | None = None,
        peer: str = "",
        send_budget: SharedBudget | None = None,
    ) -> None:
        self.transport = stream
        self.client = client
        self.config = config = config or YamuxConfig()
        self.peer = peer
        self._log: LogLike = logger or NullLog()
        self.send_budget = ConnectionBudget(config.max_buffered_output, send_budget)
        self.streams_shed = 0
        """Streams reset because the session held too much unread input."""
        """Stream data queued for the transport and not yet handed to the kernel."""
        self._reserved_output = 0
        self._conn = YamuxConnection(
            client, accept_backlog=config.accept_backlog, max_window=config.max_stream_window
        )
        self._high_water = config.max_buffered_output
        self._handles: dict[int, YamuxStream] = {}
        self._pings: dict[int, trio.Event] = {}
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._drain_lot = trio.lowlevel.ParkingLot()
        self._accept_lot = trio.lowlevel.ParkingLot()
        self._open_lot = trio.lowlevel.ParkingLot()
        self._closing = False
        self._locally_closed = False
        self._started = False
        self._done = trio.Event()
        self._scope: trio.CancelScope | None = None
        self.error: YamuxError | None = None
        """Why the session ended (None while it runs)."""

    # ------------------------------------------------------------------ state

    @property
    def is_closed(self) -> bool:
        """True once the session is ending or over: no new streams can be opened."""
        return self._closing or self._conn.terminated is not None

    @property
    def remote_go_away(self) -> bool:
        return self._conn.remote_go_away

    @property
    def num_streams(self) -> int:
        return len(self._conn.streams)

    async def wait_closed(self) -> None:
        """Wait until :meth:`run` has returned."""
        await self._done.wait()

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the session until it ends (EOF, error, close or cancellation), then close the
        transport. Never raises for the peer's faults."""
        if self._started:
            raise RuntimeError("YamuxSession.run called twice")
        self._started = True
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                if self._closing:
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._read_loop)
                nursery.start_soon(self._write_loop, nursery.cancel_scope)
                if self.config.keepalive_interval is not None:
                    nursery.start_soon(self._keepalive_loop)
                task_status.started()
        finally:
            self._finish(SessionShutdownError("session closed"))
            self._done.set()
            await trio.aclose_forcefully(self.transport)

    def go_away(self) -> None:
        """Refuse new incoming streams (they are reset); existing streams go on."""
        self._conn.go_away(GoAwayCode.NORMAL)
        self._kick_writer()

    def close(self) -> None:
        """End the session: go-away (normal), flush what is queued, close the transport."""
        if self._closing:
            return
        self._locally_closed = True
        self._conn.go_away(GoAwayCode.NORMAL)
        self._finish(SessionShutdownError("session closed"))

    async def aclose(self) -> None:
        """:meth:`close` and wait for the end (at once if :meth:`run` never started)."""
        self.close()
        if self._started:
            await self._done.wait()
        else:
            await trio.aclose_forcefully(self.transport)

    def _finish(self, error: YamuxError) -> None:
        if self._closing:
            return
        self._closing = True
        self.send_budget.close()
        self._conn.connection_lost(error)
        self.error = self._conn.terminated
        for event in self._pings.values():
            event.set()
        for handle in list(self._handles.values()):
            handle._wake()
        self._accept_lot.unpark_all()
        self._open_lot.unpark_all()
        self._drain_lot.unpark_all()
        self._writer_lot.unpark_all()

    def _kick_writer(self) -> None:
        self._writer_lot.unpark_all()

    def _forget(self, handle: YamuxStream) -> None:
        if self._handles.get(handle.stream_id) is handle:
            del self._handles[handle.stream_id]

    def _dead_error(self) -> Exception:
        reason = self._conn.terminated or SessionShutdownError("session closed")
        if self._locally_closed:
            return trio.ClosedResourceError(f"yamux: {reason}")
        return _broken(reason)

    # ------------------------------------------------------------------ streams

    async def open_stream(self) -> YamuxStream:
        """A new outgoing stream (waits while 256 opened streams are not yet acknowledged)."""
        conn = self._conn

        def attempt() -> YamuxStream | None:
            if self.is_closed:
                raise self._dead_error()
            if conn.remote_go_away:
                raise trio.BrokenResourceError("yamux: remote end is not accepting connections")
            if conn.outbound_unacked >= conn.accept_backlog:
                return None
            try:
                return self._adopt(conn.open_stream())
            except YamuxError as exc:
                raise _broken(exc) from None

        return await _park_until(self._open_lot, attempt)

    async def accept_stream(self) -> YamuxStream:
        """The next stream the peer opened; raises once the session is over."""
        conn = self._conn

        def attempt() -> YamuxStream | None:
            if self.is_closed:
                raise self._dead_error()
            state = conn.accept_stream()
            return None if state is None else self._adopt(state)

        return await _park_until(self._accept_lot, attempt)

    def _adopt(self, state: SessionStream) -> YamuxStream:
        handle = YamuxStream(self, state)
        self._handles[state.stream_id] = handle
        self._kick_writer()
        return handle

    async def ping(self) -> float:
        """Round-trip time of one ping; ``trio.TooSlowError`` when no answer comes within the
        write timeout (as the reference)."""
        if self.is_closed:
            raise self._dead_error()
        opaque = self._conn.ping()
        event = trio.Event()
        self._pings[opaque] = event
        self._kick_writer()
        start = trio.current_time()
        try:
            with trio.fail_after(self.config.write_timeout):
                await event.wait()
            if opaque in self._pings:
                raise self._dead_error()
        finally:
            self._pings.pop(opaque, None)
        return trio.current_time() - start

    # ------------------------------------------------------------------ tasks

    async def _read_loop(self) -> None:
        conn = self._conn
        transport = self.transport
        read_size = self.config.read_size
        hard_limit = 4 * self._high_water
        max_input = self.config.max_buffered_input
        try:
            while True:
                data = await transport.receive_some(read_size)
                if not data:
                    self._finish(SessionShutdownError("connection closed by the peer"))
                    return
                try:
                    events = conn.receive_data(data)
                except YamuxError as exc:
                    self._log.throttled(
                        ERR,
                        "server-port:yamux-protocol-error",
                        f"yamux session with {self.peer or 'peer'} failed: {clip(exc)}",
                    )
                    self._finish(exc)
                    return
                if events:
                    self._dispatch(events)
                if conn.buffered_input > max_input:
                    self._shed_input(max_input)
                if conn.pending_output:
                    self._kick_writer()
                    while conn.pending_output > hard_limit and not self._closing:
                        await self._drain_lot.park()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._finish(SessionShutdownError(f"connection lost: {exc}"))

    def _shed_input(self, limit: int) -> None:
        shed = self._conn.shed_input(limit)
        if not shed:
            return
        self.streams_shed += len(shed)
        self._log.throttled(
            WARN,
            "server-port:yamux-input-shed",
            f"yamux: reset {len(shed)} stream(s) of {self.peer or 'peer'} holding more than "
            f"{limit} unread bytes together",
        )
        for stream_id in shed:
            handle = self._handles.get(stream_id)
            if handle is not None:
                handle._wake()
        self._kick_writer()

    def _dispatch(self, events: list[Event]) -> None:
        handles = self._handles
        for event in events:
            if type(event) is StreamChanged:
                handle = handles.get(event.stream_id)
                if handle is not None:
                    handle._wake()
            elif type(event) is StreamOpened:
                self._accept_lot.unpark_all()
            elif type(event) is PingAnswered:
                waiter = self._pings.pop(event.opaque, None)
                if waiter is not None:
                    waiter.set()
            else:
                self._log.throttled(
                    DEBUG,
                    "server-port:yamux-go-away",
                    f"yamux: {self.peer or 'peer'} sent go-away: no new streams",
                )
                self._open_lot.unpark_all()
        if self._conn.outbound_unacked < self._conn.accept_backlog:
            self._open_lot.unpark_all()

    async def _write_loop(self, session_scope: trio.CancelScope) -> None:
        conn = self._conn
        transport = self.transport
        timeout = self.config.write_timeout
        try:
            while True:
                data = conn.data_to_send()
                if not data:
                    self._drain_lot.unpark_all()
                    if self._closing:
                        break
                    await self._writer_lot.park()
                    continue
                reserved = self._reserved_output
                self._reserved_output = 0
                self._drain_lot.unpark_all()
                try:
                    with trio.move_on_after(timeout) as scope:
                        await transport.send_all(data)
                finally:
                    self.send_budget.release(reserved)
                if scope.cancelled_caught:
                    self._log.throttled(
                        ERR,
                        "server-port:yamux-write-timeout",
                        f"yamux session with {self.peer or 'peer'}: connection write timeout",
                    )
                    self._finish(SessionShutdownError("connection write timeout"))
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._finish(SessionShutdownError(f"connection lost: {exc}"))
        finally:
            session_scope.cancel()

    async def _keepalive_loop(self) -> None:
        interval = self.config.keepalive_interval
        assert interval is not None
        while True:
            await trio.sleep(interval)
            try:
                await self.ping()
            except trio.TooSlowError:
                self._log.throttled(
                    ERR,
                    "server-port:yamux-keepalive",
                    f"yamux: keepalive with {self.peer or 'peer'} failed: no answer",
                )
                self._finish(SessionShutdownError("keepalive timeout"))
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return


__all__ = [
    "DEFAULT_KEEPALIVE_INTERVAL",
    "DEFAULT_WRITE_TIMEOUT",
    "YamuxConfig",
    "YamuxSession",
    "SEND_CHUNK",
    "YamuxStream",
]
