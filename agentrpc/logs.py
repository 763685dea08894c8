"""The agent's log: one hub per agent that formats lines, keeps a ring, and feeds monitors.

This is the trio side of logging. The protocol (levels, :class:`LogLike`, :class:`NullLog`,
:class:`CaptureLog`, :func:`clip`, :func:`describe_failure`) lives in the trio-free
:mod:`agentrpc.log_protocol` and is re-exported here; code below the agent imports it from there.

Lines look like the reference's: ``2015/01/17 12:37:35 [INFO] agent.rpc: Accepted client: ...``.
Every line, whatever its level, goes into a ring (replayed to a new monitor) of at most 512
lines and at most 1 MiB (``ring_bytes``; the oldest lines go first); lines at or above the
agent's own level are also written to the sink (stderr by default). Each monitor is a
:class:`LogSubscription` with a queue bounded in lines and in bytes (and all monitors together
in bytes): when a reader falls behind, lines are dropped and counted, never logged one per drop
(the reference's self-feeding "Dropping logs" storm cannot happen here).

Sizes are an upper bound of what a line costs in memory (:func:`line_bytes`). Callers
clip what a peer controls (:func:`clip`, 200 characters); as a last line of defence
:meth:`LogHub.emit` cuts any message longer than ``MAX_MESSAGE_CHARS`` (8 KiB characters).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Final, TextIO

import trio

from .log_protocol import (
    DEBUG,
    ERR,
    INFO,
    LEVEL_INDEX,
    LOG_LEVELS,
    PEER_TEXT_LIMIT,
    TRACE,
    WARN,
    CaptureLog,
    LogLike,
    NullLog,
    clip,
    describe_failure,
    parse_level,
)

__all__ = [
    "DEBUG",
    "DEFAULT_MONITOR_QUEUE",
    "DEFAULT_MONITOR_QUEUE_BYTES",
    "DEFAULT_MONITOR_TOTAL_BYTES",
    "DEFAULT_RING_BYTES",
    "ERR",
    "INFO",
    "LEVEL_INDEX",
    "LINE_OVERHEAD",
    "LOG_LEVELS",
    "MAX_MESSAGE_CHARS",
    "PEER_TEXT_LIMIT",
    "RING_SIZE",
    "THROTTLE_INTERVAL",
    "TRACE",
    "WARN",
    "CaptureLog",
    "LogHub",
    "LogLike",
    "LogLines",
    "LogSubscription",
    "Logger",
    "NullLog",
    "clip",
    "describe_failure",
    "line_bytes",
    "parse_level",
]

RING_SIZE: Final = 512
DEFAULT_RING_BYTES: Final = 1 << 20
"""The ring also keeps at most this many bytes of lines (1 MiB)."""
DEFAULT_MONITOR_QUEUE: Final = 512
DEFAULT_MONITOR_QUEUE_BYTES: Final = 256 << 10
"""Bytes of lines one monitor's queue holds at most (256 KiB)."""
DEFAULT_MONITOR_TOTAL_BYTES: Final = 16 << 20
"""Bytes of lines all monitors' queues hold at most together (16 MiB)."""
MAX_MESSAGE_CHARS: Final = 8 << 10
"""A message longer than this (8 KiB characters) is cut in :meth:`LogHub.emit`."""
THROTTLE_INTERVAL: Final = 1.0

LINE_OVERHEAD: Final = 100
"""Bytes counted per line besides its text (the str and ring entry headers)."""


def line_bytes(line: str) -> int:
    """What the ring and the monitor queues count for a line: an upper bound of its memory in
    bytes (one byte a character for ASCII, four otherwise, plus :data:`LINE_OVERHEAD`)."""
    return (len(line) if line.isascii() else 4 * len(line)) + LINE_OVERHEAD


_sizeof: Final = line_bytes


class LogLines(trio.abc.ReceiveChannel[str]):
    """The live lines of one :class:`LogSubscription` (a receive channel): ``async for``,
    :meth:`receive`, :meth:`receive_nowait`; ``EndOfChannel`` once the subscription ended and
    what was queued has been read."""

    __slots__ = ("_subscription",)

    def __init__(self, subscription: LogSubscription) -> None:
        self._subscription = subscription

    def receive_nowait(self) -> str:
        """The next queued line; ``trio.WouldBlock`` when none is queued yet."""
        return self._subscription._take()

    async def receive(self) -> str:
        await trio.lowlevel.checkpoint_if_cancelled()
        subscription = self._subscription
        parked = False
        while True:
            try:
                line = subscription._take()
            except trio.WouldBlock:
                parked = True
                await subscription._lot.park()
                continue
            if not parked:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return line

    def close(self) -> None:
        self._subscription.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


class LogSubscription:
    """One monitor's view of the log: a queue of lines at or above ``min_level``, bounded in
    lines (``queue_size``) and in bytes (``queue_bytes``, and the hub's total for all monitors).

    A line that does not fit is dropped and counted (``dropped``, ``hub.monitor_dropped``).
    """

    __slots__ = (
        "_closed",
        "_ended",
        "_hub",
        "_lines",
        "_lot",
        "_max_bytes",
        "_max_lines",
        "_queue",
        "dropped",
        "min_level",
        "queued_bytes",
        "replay",
    )

    def __init__(
        self,
        hub: LogHub,
        min_level: int,
        queue_size: int,
        replay: list[str],
        queue_bytes: int = 0,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be positive")
        self._hub = hub
        self.min_level = min_level
        self.replay = replay
        self.dropped = 0
        self.queued_bytes = 0
        """Bytes of the lines queued and not yet read (see :func:`line_bytes`)."""
        self._max_lines = queue_size
        self._max_bytes = queue_bytes if queue_bytes > 0 else DEFAULT_MONITOR_QUEUE_BYTES
        self._queue: deque[str] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._ended = False
        self._closed = False
        self._lines = LogLines(self)

    @property
    def lines(self) -> LogLines:
        """Live lines; ends (``EndOfChannel``) when the hub closes."""
        return self._lines

    @property
    def queued(self) -> int:
        """Lines queued and not yet read."""
        return len(self._queue)

    def offer(self, line: str, size: int = -1) -> None:
        """Queue ``line`` (``size``: its :func:`line_bytes`, when known) or drop and count it."""
        if self._ended:
            return
        if size < 0:
            size = _sizeof(line)
        hub = self._hub
        if (
            len(self._queue) >= self._max_lines
            or self.queued_bytes + size > self._max_bytes
            or hub._monitor_used + size > hub.monitor_bytes
        ):
            self.dropped += 1
            hub.monitor_dropped += 1
            return
        self._queue.append(line)
        self.queued_bytes += size
        hub._monitor_used += size
        if self._lot:
            self._lot.unpark_all()

    def _take(self) -> str:
        if self._closed:
            raise trio.ClosedResourceError("the subscription is closed")
        queue = self._queue
        if queue:
            line = queue.popleft()
            size = _sizeof(line)
            self.queued_bytes -= size
            self._hub._monitor_used -= size
            return line
        if self._ended:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    def end(self) -> None:
        """No more lines: the reader sees the end after what is queued."""
        self._hub._unsubscribe(self)
        self._ended = True
        self._lot.unpark_all()

    def close(self) -> None:
        """Unsubscribe and release the queue."""
        self.end()
        if not self._closed:
            self._closed = True
            self._hub._monitor_used -= self.queued_bytes
            self.queued_bytes = 0
            self._queue.clear()


class Logger:
    """A component's logger: ``hub.logger("agent.rpc").info("Accepted client: %s", peer)``."""

    __slots__ = ("_emit", "_hub", "component")

    def __init__(self, hub: LogHub, component: str) -> None:
        self.component = component
        self._hub = hub
        self._emit = hub.emit

    def log(self, level: int, message: str) -> None:
        self._emit(level, self.component, message)

    def trace(self, message: str) -> None:
        self._emit(TRACE, self.component, message)

    def debug(self, message: str) -> None:
        self._emit(DEBUG, self.component, message)

    def info(self, message: str) -> None:
        self._emit(INFO, self.component, message)

    def warn(self, message: str) -> None:
        self._emit(WARN, self.component, message)

    def error(self, message: str) -> None:
        self._emit(ERR, self.component, message)

    def throttled(self, level: int, key: str, message: str) -> None:
        """Log at most one line per ``key`` per second; later lines say how many were held
        back. For what a hostile peer can trigger at will (malformed input, floods)."""
        self._hub.emit_throttled(level, self.component, key, message)


class LogHub:
    """Formats, rings, prints and fans out the agent's log lines.

    The ring keeps the last ``ring_size`` lines of every level, but never more than
    ``ring_bytes`` bytes of them (:func:`line_bytes`), the oldest going first. Every level is
    kept because a monitor may ask for any level down to TRACE; the byte bound is what keeps a
    flood of verbose lines from costing memory. ``monitor_bytes`` bounds the lines queued for
    all monitors together (each subscription also has its own bound).
    """

    def __init__(
        self,
        level: int = INFO,
        *,
        sink: TextIO | None = None,
        ring_size: int = RING_SIZE,
        ring_bytes: int = DEFAULT_RING_BYTES,
        monitor_bytes: int = DEFAULT_MONITOR_TOTAL_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ring_size < 1:
            raise ValueError("ring_size must be positive")
        self.level = level
        self._sink = sink if sink is not None else sys.stderr
        self._ring: deque[tuple[int, str]] = deque()
        self._ring_lines = ring_size
        self._ring_bytes = 0
        self._ring_used = 0
        self.set_ring_bytes(ring_bytes)
        self.monitor_bytes = monitor_bytes
        """Bytes of lines queued for all monitors together; past it lines are dropped."""
        self._monitor_used = 0
        self._subscribers: list[LogSubscription] = []
        self._clock = clock
        self._stamp_second = -1
        self._stamp = ""
        self.monitor_dropped = 0
        self.closed = False
        self._throttle: dict[str, tuple[float, int]] = {}
        self._monotonic = time.monotonic

    # ------------------------------------------------------------------ the ring's bounds

    @property
    def ring_bytes(self) -> int:
        """The ring's byte bound."""
        return self._ring_bytes

    @property
    def ring_used(self) -> int:
        """Bytes of the lines in the ring now (at most :attr:`ring_bytes`)."""
        return self._ring_used

    @property
    def monitor_queued_bytes(self) -> int:
        """Bytes of the lines queued for all monitors now (at most :attr:`monitor_bytes`)."""
        return self._monitor_used

    def lines(self, min_level: int = TRACE) -> list[str]:
        """The ring's lines at ``min_level`` or above, oldest first (a copy)."""
        return [line for level, line in self._ring if level >= min_level]

    def set_ring_bytes(self, ring_bytes: int) -> None:
        """Change the ring's byte bound (``reload``); the oldest lines go at once if needed."""
        if ring_bytes < 1:
            raise ValueError("ring_bytes must be positive")
        self._ring_bytes = ring_bytes
        self._trim()

    def set_ring_size(self, ring_size: int) -> None:
        """Change the ring's line bound; the oldest lines go at once if needed."""
        if ring_size < 1:
            raise ValueError("ring_size must be positive")
        self._ring_lines = ring_size
        self._trim()

    def _trim(self) -> None:
        ring = self._ring
        used = self._ring_used
        lines = self._ring_lines
        limit = self._ring_bytes
        while ring and (used > limit or len(ring) > lines):
            used -= _sizeof(ring.popleft()[1])
        self._ring_used = used

    def logger(self, component: str) -> Logger:
        return Logger(self, component)

    def _timestamp(self) -> str:
        second = int(self._clock())
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(second))
        return self._stamp

    def emit(self, level: int, component: str, message: str) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            message = clip(message, MAX_MESSAGE_CHARS)
        line = f"{self._timestamp()} [{LOG_LEVELS[level]}] {component}: {message}"
        size = (len(line) if line.isascii() else 4 * len(line)) + LINE_OVERHEAD
        limit = self._ring_bytes
        if size <= limit:  # a bigger line (only with a tiny ring) is not kept
            ring = self._ring
            used = self._ring_used + size
            if len(ring) >= self._ring_lines:  # full in lines: the oldest goes (the usual case)
                old = ring.popleft()[1]
                used -= (len(old) if old.isascii() else 4 * len(old)) + LINE_OVERHEAD
            ring.append((level, line))
            self._ring_used = used
            if used > limit:
                self._trim()
        if level >= self.level:
            try:
                self._sink.write(line + "\n")
                self._sink.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stderr must not take the agent down
        for subscription in self._subscribers:
            if level >= subscription.min_level:
                subscription.offer(line, size)

    def emit_throttled(self, level: int, component: str, key: str, message: str) -> None:
        now = self._monotonic()
        next_allowed, held = self._throttle.get(key, (0.0, 0))
        if now < next_allowed:
            self._throttle[key] = (next_allowed, held + 1)
            return
        if len(self._throttle) > 1024:  # keys are few; never let them grow without bound
            self._throttle.clear()
        self._throttle[key] = (now + THROTTLE_INTERVAL, 0)
        if held:
            message += f" ({held} similar lines held back)"
        self.emit(level, component, message)

    def subscribe(
        self,
        min_level: int,
        queue_size: int = DEFAULT_MONITOR_QUEUE,
        queue_bytes: int = DEFAULT_MONITOR_QUEUE_BYTES,
    ) -> LogSubscription:
        """A new subscription whose ``replay`` is the ring's lines at ``min_level`` or above;
        its live queue holds at most ``queue_size`` lines and ``queue_bytes`` bytes.

        Taking the ring and registering happen in one step, so no line is lost or seen twice
        between the replay and the live lines.
        """
        replay = self.lines(min_level)
        subscription = LogSubscription(self, min_level, queue_size, replay, queue_bytes)
        if self.closed:
            subscription.end()
        else:
            self._subscribers.append(subscription)
        return subscription

    def _unsubscribe(self, subscription: LogSubscription) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(subscription)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def close(self) -> None:
        """End every subscription (monitors drain what is queued, then see the end)."""
        self.closed = True
        for subscription in self._subscribers:
            subscription.end()
        self._subscribers.clear()
