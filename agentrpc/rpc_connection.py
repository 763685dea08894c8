"""The agent RPC connection engine: one client connection, served by a small nursery.

Shape (the design card's): a reader task decodes request frames; a writer task drains a memory
channel of encoded frames and sends everything already queued in one ``send_all``; commands
that answer at once run inline in the reader (no task per frame), the others run as small
handler coroutines in the connection's nursery so that a slow ``join`` never delays the
``members-lan`` pipelined behind it; the monitor stream runs in a cancel scope keyed by its Seq.

What each request calls for is not decided here: the sans-I/O
:class:`~agentrpc.protocol.rpc_session.RPCSession` holds the protocol state (handshake, token,
the active monitor) and returns a decision per request; this module only carries it out.

Closing happens in order, never by throwing queued replies away: the reader stops, the monitor
scope is cancelled (its ``stop`` reply therefore can never be followed by a line of its Seq),
in-flight handlers get a bounded drain time, the outgoing channel is closed, the writer sends
what is queued, all under a deadline.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import trio

from . import defaults
from .budget import DEFAULT_CONNECTION_BYTES, ConnectionBudget, SharedBudget
from .log_protocol import DEBUG, WARN, LogLike, clip
from .logs import LogSubscription
from .protocol.bodies import BODY_DECODERS
from .protocol.codec import (
    PAUSED,
    READ_SIZE,
    ParserPool,
    Request,
    RequestDecoder,
    ResponseEncoder,
)
from .protocol.constants import DEFAULT_MAX_FRAME_SIZE, ERR_SHUTTING_DOWN, ERROR_BODIES
from .protocol.errors import ProtocolError
from .protocol.rpc_session import (
    BEFORE_HANDSHAKE,
    INSTANT,
    SUCCESS,
    Decision,
    Kind,
    RPCSession,
)
from .transports.fastpath import nowait_sender, split_receiver

Reply = tuple[str, Any]
"""A handler's answer: (Error, body or None)."""
InstantHandler = Callable[[Any], Reply]
"""Answers at once from the request body; runs inline in the reader."""
ReplyNow = Callable[[str, Any], Awaitable[None]]
"""Sends the reply (Error, body) of the request being handled before the handler returns
(``leave`` answers, then shuts the agent down); all an async handler gets of the connection."""
AsyncHandler = Callable[[Request, ReplyNow], Awaitable[Reply | None]]
"""Runs as a task; returns the reply, or None when it has sent its reply with ``ReplyNow``."""

_LOG_FRAME_BODY: Final = b"\x81\xa3Log"
_MONITOR_BATCH: Final = 256
DROP_SUMMARY_INTERVAL: Final = 10.0
"""At most one "monitor dropped N lines" notice per stream in this many seconds."""
FLUSH_BYTES: Final = 256 * 1024
"""The reader hands its batch of replies to the writer once it holds this many bytes, so that
no queued item is much bigger than this (the byte budget can then hold the reader back)."""
YIELD_EVERY: Final = 256
"""Requests answered in one go before the reader lets other tasks run (a few ms at most)."""


@dataclass(slots=True)
class RPCStats:
    """Counters shared by every connection of one agent (surfaced in ``stats``)."""

    connections: int = 0
    connections_total: int = 0
    frames_in: int = 0
    frames_out: int = 0
    monitors: int = 0
    protocol_errors: int = 0
    handshake_timeouts: int = 0
    idle_timeouts: int = 0
    permission_denied: int = 0
    refused_connections: int = 0

    def as_strings(self) -> dict[str, str]:
        return {
            "connections": str(self.connections),
            "connections_total": str(self.connections_total),
            "frames_in": str(self.frames_in),
            "frames_out": str(self.frames_out),
            "monitors": str(self.monitors),
            "protocol_errors": str(self.protocol_errors),
            "handshake_timeouts": str(self.handshake_timeouts),
            "idle_timeouts": str(self.idle_timeouts),
            "permission_denied": str(self.permission_denied),
            "refused_connections": str(self.refused_connections),
        }


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """Per-connection limits (all configurable through the agent's config)."""

    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    handshake_timeout: float = defaults.HANDSHAKE_TIMEOUT
    idle_timeout: float = defaults.IDLE_TIMEOUT
    """Close a handshaken connection with nothing in flight after this long (0: never)."""
    send_queue: int = defaults.SEND_QUEUE
    send_queue_bytes: int = DEFAULT_CONNECTION_BYTES
    """Bytes queued for the writer (beyond what the kernel holds); past it the reader waits."""
    max_inflight: int = defaults.MAX_INFLIGHT
    """Commands that wait (join, leave, ...) running at once; past it the reader pushes back."""
    monitor_queue: int = defaults.MONITOR_QUEUE
    drain_timeout: float = defaults.DRAIN_TIMEOUT
    spin_us: int = 0
    """``rpc_spin_us``: poll an empty socket this long before waiting in the event loop (0:
    never; plain TCP and unix sockets only)."""


class RPCServices(Protocol):
    """What a connection needs from the agent it serves."""

    @property
    def instant_commands(self) -> Mapping[str, InstantHandler]: ...

    @property
    def async_commands(self) -> Mapping[str, AsyncHandler]: ...

    @property
    def limits(self) -> EngineLimits: ...

    @property
    def rpc_stats(self) -> RPCStats: ...

    @property
    def rpc_log(self) -> LogLike: ...

    @property
    def rpc_token(self) -> str:
        """When not empty, every command but handshake must carry this Token."""
        ...

    @property
    def send_budget(self) -> SharedBudget | None:
        """The agent-wide budget of queued output bytes that every connection draws on."""
        ...

    @property
    def parser_pool(self) -> ParserPool | None:
        """The agent's idle msgpack parsers, which its connections take and give back."""
        ...

    def subscribe_log(self, min_level: int, queue_size: int) -> LogSubscription: ...


class EndReason(enum.Enum):
    EOF = "eof"
    FATAL = "fatal"
    SHUTDOWN = "shutdown"
    HANDSHAKE_TIMEOUT = "handshake timeout"
    IDLE_TIMEOUT = "idle timeout"
    PEER_GONE = "peer gone"


class _Monitor:
    __slots__ = ("scope", "seq", "subscription")

    def __init__(self, seq: int, subscription: LogSubscription) -> None:
        self.seq = seq
        self.subscription = subscription
        self.scope = trio.CancelScope()


class RPCConnection:
    """Serves the agent RPC protocol on one stream until EOF, a fatal error or shutdown."""

    def __init__(self, stream: trio.abc.Stream, services: RPCServices, peer: str) -> None:
        self.stream = stream
        self.peer = peer
        self._services = services
        self._limits = services.limits
        self._stats = services.rpc_stats
        self._log = services.rpc_log
        self._encoder = ResponseEncoder()
        self._instant = services.instant_commands
        self._async = services.async_commands
        self._send, self._receive = trio.open_memory_channel[bytes](self._limits.send_queue)
        self._budget = ConnectionBudget(self._limits.send_queue_bytes, services.send_budget)
        # Seq -> command of the handlers still running (answered with an error at shutdown).
        self._running: dict[int, str] = {}
        self._session = RPCSession(self._instant, self._async, services.rpc_token)
        # True only while the writer waits on an empty channel and nothing was queued since.
        self._writer_waiting = False
        self._send_nowait = nowait_sender(stream)
        self._inflight = trio.Semaphore(self._limits.max_inflight)
        self._monitor: _Monitor | None = None
        self._reader_scope = trio.CancelScope()
        self._close_reason: EndReason | None = None
        self._work: trio.Nursery | None = None
        self.end_reason: EndReason | None = None

    # ------------------------------------------------------------------ lifecycle

    async def serve(self) -> None:
        """Run the connection; returns once it is closed. Never raises for the peer's faults."""
        stats = self._stats
        stats.connections += 1
        stats.connections_total += 1
        limits = self._limits
        try:
            async with trio.open_nursery() as connection:
                connection.start_soon(self._write_frames, connection.cancel_scope)
                try:
                    async with trio.open_nursery() as work:
                        self._work = work
                        reason = await self._read_until_done()
                        self.end_reason = reason
                        if reason is not EndReason.SHUTDOWN:
                            self._cancel_monitor()
                        if reason is EndReason.FATAL or reason is EndReason.PEER_GONE:
                            work.cancel_scope.cancel()
                        else:
                            work.cancel_scope.deadline = trio.current_time() + limits.drain_timeout
                    if self._running and self.end_reason is EndReason.SHUTDOWN:
                        with trio.move_on_after(limits.drain_timeout):
                            await self._answer_abandoned()
                finally:
                    self._cancel_monitor()
                    self._send.close()
                    connection.cancel_scope.deadline = trio.current_time() + limits.drain_timeout
        finally:
            stats.connections -= 1
            self._budget.close()
            await trio.aclose_forcefully(self.stream)

    async def _answer_abandoned(self) -> None:
        """Commands cut short by the shutdown get an error that says so, not a bare EOF."""
        encoder = self._encoder
        frames = [
            encoder.response(seq, ERR_SHUTTING_DOWN, ERROR_BODIES.get(command))
            for seq, command in self._running.items()
        ]
        self._running.clear()
        self._stats.frames_out += len(frames)
        await self._queue(b"".join(frames))

    def close_gracefully(self) -> None:
        """Stop reading; let queued replies and monitor lines drain, then close."""
        self._close_reason = self._close_reason or EndReason.SHUTDOWN
        self._reader_scope.cancel()

    # ------------------------------------------------------------------ writer

    async def _write_frames(self, connection_scope: trio.CancelScope) -> None:
        receive = self._receive
        stream = self.stream
        try:
            while True:
                try:
                    chunk = receive.receive_nowait()
                except trio.WouldBlock:
                    self._writer_waiting = True
                    try:
                        chunk = await receive.receive()
                    except trio.EndOfChannel:
                        break
                    finally:
                        self._writer_waiting = False
                except trio.EndOfChannel:
                    break
                batch = [chunk]
                while True:
                    try:
                        batch.append(receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                data = chunk if len(batch) == 1 else b"".join(batch)
                await stream.send_all(data)
                self._budget.release(len(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The peer is gone: nothing more can be delivered, so stop all work.
            self._close_reason = self._close_reason or EndReason.PEER_GONE
            self._reader_scope.cancel()
            connection_scope.cancel()

    async def send_frame(self, frame: bytes) -> None:
        """Queue one encoded frame (a header and its body, whole) for the writer."""
        await self._queue(frame)
        self._stats.frames_out += 1

    async def _queue(self, data: bytes) -> None:
        """Every frame goes to the writer through here (so the idle flag stays true), after
        its bytes fit the connection's budget (waiting here is the backpressure)."""
        self._writer_waiting = False
        budget = self._budget
        if not budget.try_reserve(len(data)):
            await budget.reserve(len(data))
            # The writer may have drained the channel and gone idle while we waited: once
            # it has this frame (it may not run before us), it is not idle any more, or the
            # reader would write newer replies ahead of it.
            self._writer_waiting = False
        await self._send.send(data)

    async def send_reply(self, seq: int, error: str = "", body: Any = None) -> None:
        await self.send_frame(self._encoder.response(seq, error, body))

    # ------------------------------------------------------------------ reader

    async def _read_until_done(self) -> EndReason:
        limits = self._limits
        with self._reader_scope:
            self._reader_scope.deadline = trio.current_time() + limits.handshake_timeout
            try:
                return await self._read_requests()
            except ProtocolError as exc:
                return await self._refuse(exc)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return EndReason.PEER_GONE
        if self._close_reason is not None:
            return self._close_reason
        if self._session.handshaken:
            self._stats.idle_timeouts += 1
            self._log.throttled(DEBUG, "idle", f"closing idle connection from {self.peer}")
            return EndReason.IDLE_TIMEOUT
        self._stats.handshake_timeouts += 1
        self._log.throttled(
            WARN,
            "handshake-timeout",
            f"closing connection from {self.peer}: no handshake within the deadline",
        )
        return EndReason.HANDSHAKE_TIMEOUT

    def _arm_idle_deadline(self) -> None:
        """Before each read: an idle deadline only when nothing is streaming or in flight."""
        idle = self._limits.idle_timeout
        if idle <= 0 or not self._session.handshaken:
            return
        quiet = self._monitor is None and self._inflight.value == self._limits.max_inflight
        self._reader_scope.deadline = trio.current_time() + idle if quiet else math.inf

    async def _refuse(self, exc: ProtocolError) -> EndReason:
        """Answer a malformed request with a clear error where its Seq is known, then close."""
        self._stats.protocol_errors += 1
        decision = self._session.malformed(exc)
        self._log.throttled(
            WARN,
            "malformed",
            f"closing connection from {self.peer}: malformed request: {clip(exc)}",
        )
        if exc.seq is not None:
            with trio.move_on_after(self._limits.drain_timeout):
                await self.send_reply(exc.seq, decision.error, decision.body)
        return EndReason.FATAL

    async def _read_requests(self) -> EndReason:
        """Read and answer until EOF or a request that ends the connection.

        The hot path is inline: a read whose requests the decoder answers by itself (plain
        ``stop``, :meth:`RequestDecoder.pull`) is written at once when the writer is idle
        (the rest of what the OS does not take goes to the writer); the first request that
        needs the session sends the batch through :meth:`_answer_requests`."""
        try_receive, receive = split_receiver(self.stream, self._limits.spin_us)
        # The parser is kept while the client keeps sending and let go only before a wait
        # (an idle connection holds none).
        decoder = RequestDecoder(
            self._limits.max_frame_size,
            body_decoders=BODY_DECODERS,
            keep_parser=True,
            parsers=self._services.parser_pool,
        )
        release_idle = decoder.release_idle
        pull = decoder.pull
        session = self._session
        stats = self._stats
        send_nowait = nowait_sender(self.stream)
        idle_checks = self._limits.idle_timeout > 0
        out: list[bytes] = []
        while True:
            if idle_checks:
                self._arm_idle_deadline()
            data: bytes | bytearray | None = try_receive(READ_SIZE)
            if data is None:
                release_idle()
                data = await receive(READ_SIZE)
            if not data:
                return EndReason.EOF
            decoder.feed(data)
            # Token read for every batch: a reloaded token applies from the next read on.
            session.token = self._services.rpc_token
            try:
                request = pull(out, session.plain_stop, session.monitor_seq)
            except ProtocolError:
                stats.frames_in += decoder.answered
                decoder.answered = 0
                await self._flush(out)
                raise
            if request is not None:
                if not await self._answer_requests(decoder, request, out):
                    return EndReason.FATAL
                continue
            if not out:
                continue
            stats.frames_in += decoder.answered
            decoder.answered = 0
            stats.frames_out += len(out)
            frames = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            if self._writer_waiting:
                sent = send_nowait(frames)
                if sent == len(frames):
                    continue
                if sent:
                    frames = frames[sent:]
            await self._queue(frames)

    async def _answer_requests(
        self, decoder: RequestDecoder, request: Request, out: list[bytes]
    ) -> bool:
        """Answer ``request`` and every whole request after it in ``decoder``, in order (the
        replies of the batch so far are in ``out``); False: close the connection.

        A plain ``stop`` (the hot path) is answered by the decoder itself when the session
        allows it (:attr:`RPCSession.plain_stop`); for every other request the session decides.
        Decisions answered at once (an instant command, a plain ``stop``, the gate's errors:
        :meth:`_answer`) are batched into one hand-over to the writer; the others go to
        :meth:`_dispatch`. A malformed request raises ProtocolError once the answers before it
        are handed over."""
        stats = self._stats
        session = self._session
        receive = session.receive
        pull = decoder.pull
        instant, instant_decision, success = self._instant, INSTANT, SUCCESS
        encoder = self._encoder
        count = 0
        pending = 0
        try:
            while True:
                if request is PAUSED:
                    # The decoder answered a long run of plain stops: hand them over, let
                    # others run.
                    await self._flush(out)
                    await trio.lowlevel.checkpoint()
                else:
                    count += 1
                    decision = receive(request)
                    if decision is instant_decision:
                        error, body = instant[request.command](request.body)
                        frame = encoder.response(request.seq, error, body)
                    elif decision is success:
                        frame = encoder.header(request.seq)
                    else:
                        answer = self._answer(decision, request)
                        if answer is None:
                            if not await self._dispatch(decision, request, out):
                                stats.frames_in += count + decoder.answered
                                decoder.answered = 0
                                await self._flush(out)
                                return False
                            frame = b""
                        else:
                            frame = answer
                    if frame:
                        out.append(frame)
                        pending += len(frame)
                    if pending >= FLUSH_BYTES:
                        # Big replies (stats, members) to a long pipelined batch: hand them
                        # over now, so the budget can hold this reader back mid-batch.
                        pending = 0
                        await self._flush(out)
                    elif not count % YIELD_EVERY:
                        # One read can hold ~3,000 requests: let other connections run.
                        await trio.lowlevel.checkpoint()
                following = pull(out, session.plain_stop, session.monitor_seq)
                if following is None:
                    break
                request = following
        except ProtocolError:
            stats.frames_in += count + decoder.answered
            decoder.answered = 0
            await self._flush(out)
            raise
        stats.frames_in += count + decoder.answered
        decoder.answered = 0
        await self._flush(out)
        return True

    def _answer(self, decision: Decision, request: Request) -> bytes | None:
        """The reply frame of a decision answered at once (besides the two hot ones), or None
        when the decision needs :meth:`_dispatch`."""
        kind = decision.kind
        if kind is Kind.ANSWER:
            return self._encoder.response(request.seq, decision.error, decision.body)
        if kind is Kind.DENIED:
            self._stats.permission_denied += 1
            return self._encoder.response(request.seq, decision.error, decision.body)
        if kind is Kind.STOP_MONITOR:
            # Cancelled before the reply is queued: no line of that Seq can follow it.
            self._cancel_monitor()
            return self._encoder.header(request.seq)
        if kind is Kind.HANDSHAKEN:
            self._reader_scope.deadline = math.inf
            return self._encoder.header(request.seq)
        return None

    async def _flush(self, out: list[bytes]) -> None:
        if out:
            frames = len(out)
            data = b"".join(out)
            out.clear()
            self._stats.frames_out += frames
            if self._writer_waiting:
                # Nothing is queued and the writer waits: write now, skipping two task
                # switches; whatever the OS does not take goes to the writer, in order.
                sent = self._send_nowait(data)
                if sent == len(data):
                    return
                if sent:
                    data = data[sent:]
            await self._queue(data)

    async def _dispatch(self, decision: Decision, request: Request, out: list[bytes]) -> bool:
        """Carry out a decision that is more than a reply; False means: close after ``out``."""
        kind = decision.kind
        if kind is Kind.RUN:
            assert self._work is not None
            if self._inflight.value == 0:
                await self._flush(out)  # what is answered already goes out while we wait
            await self._inflight.acquire()
            self._work.start_soon(self._run_handler, self._async[request.command], request)
            return True
        if kind is Kind.START_MONITOR:
            await self._start_monitor(decision.level, request.seq, out)
            return True
        if kind is Kind.CLOSE:
            self._log_refusal(decision, request.command)
            out.append(self._encoder.response(request.seq, decision.error, decision.body))
        return False  # CLOSE, or IGNORE (the session is closed already)

    def _log_refusal(self, decision: Decision, command: str) -> None:
        if decision is BEFORE_HANDSHAKE:
            key, what = "before-handshake", f"{clip(command)!r} before handshake"
        else:
            key, what = "unsupported-command", f"unsupported command {clip(command)!r}"
        self._log.throttled(DEBUG, key, f"closing connection from {self.peer}: {what}")

    async def _run_handler(self, handler: AsyncHandler, request: Request) -> None:
        seq = request.seq
        self._running[seq] = request.command
        try:
            reply = await handler(request, functools.partial(self._reply_now, seq))
            if reply is not None:
                error, body = reply
                await self.send_reply(seq, error, body)
            # Only now is it answered: cancelled before this, it is answered at shutdown.
            self._running.pop(seq, None)
        finally:
            self._inflight.release()

    async def _reply_now(self, seq: int, error: str, body: Any) -> None:
        """A handler's :data:`ReplyNow`: answered here, so never again at shutdown."""
        await self.send_reply(seq, error, body)
        self._running.pop(seq, None)

    # ------------------------------------------------------------------ monitor

    async def _start_monitor(self, level: int, seq: int, out: list[bytes]) -> None:
        """The session accepted a monitor of ``seq``: subscribe, ack, then stream."""
        subscription = self._services.subscribe_log(level, self._limits.monitor_queue)
        monitor = _Monitor(seq, subscription)
        self._monitor = monitor
        out.append(self._encoder.header(seq))
        # The ack must reach the writer before the first line of the stream.
        await self._flush(out)
        assert self._work is not None
        self._work.start_soon(self._stream_logs, monitor)

    def _cancel_monitor(self) -> None:
        monitor = self._monitor
        if monitor is not None:
            self._monitor = None
            self._session.monitor_ended(monitor.seq)
            monitor.scope.cancel()
            # Stop queueing lines now; the stream task itself releases the queue as it exits.
            monitor.subscription.end()

    def _log_frame(self, header: bytes, line: str) -> bytes:
        return header + _LOG_FRAME_BODY + self._encoder.body(line)

    async def _stream_logs(self, monitor: _Monitor) -> None:
        stats = self._stats
        stats.monitors += 1
        subscription = monitor.subscription
        header = self._encoder.header(monitor.seq)
        frame = self._log_frame
        reported_drops = 0
        next_summary = -math.inf
        try:
            with monitor.scope:
                replay = subscription.replay
                subscription.replay = []
                for start in range(0, len(replay), _MONITOR_BATCH):
                    chunk = replay[start : start + _MONITOR_BATCH]
                    await self._queue(b"".join([frame(header, line) for line in chunk]))
                    stats.frames_out += len(chunk)
                lines = subscription.lines
                async for line in lines:
                    frames = [frame(header, line)]
                    while len(frames) < _MONITOR_BATCH:
                        try:
                            frames.append(frame(header, lines.receive_nowait()))
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    if (
                        subscription.dropped != reported_drops
                        and trio.current_time() >= next_summary
                    ):
                        next_summary = trio.current_time() + DROP_SUMMARY_INTERVAL
                        missed = subscription.dropped - reported_drops
                        reported_drops = subscription.dropped
                        notice = (
                            f"[WARN] agent.rpc: monitor dropped {missed} log lines "
                            "because this client reads too slowly"
                        )
                        frames.append(frame(header, notice))
                    await self._queue(b"".join(frames))
                    stats.frames_out += len(frames)
        finally:
            stats.monitors -= 1
            subscription.close()
            if self._monitor is monitor:
                self._monitor = None
                self._session.monitor_ended(monitor.seq)
