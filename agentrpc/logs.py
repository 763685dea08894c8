"""The agent's log: one hub per agent that formats lines, keeps a ring, and feeds monitors.

Lines look like the reference's: ``2015/01/17 12:37:35 [INFO] agent.rpc: Accepted client: ...``.
Every line, whatever its level, goes into a 512-line ring (replayed to a new monitor); lines at
or above the agent's own level are also written to the sink (stderr by default). Each monitor
is a :class:`LogSubscription` with a bounded queue: when a reader falls behind, lines are
dropped and counted, never logged one per drop (the reference's self-feeding "Dropping logs"
storm cannot happen here).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol, TextIO

import trio

from .protocol.constants import LEVEL_INDEX, LOG_LEVELS

RING_SIZE: Final = 512
DEFAULT_RING_BYTES: Final = 1 << 20
"""The ring also keeps at most this many bytes of lines (1 MiB)."""
DEFAULT_MONITOR_QUEUE: Final = 512
THROTTLE_INTERVAL: Final = 1.0

TRACE, DEBUG, INFO, WARN, ERR = range(5)

PEER_TEXT_LIMIT: Final = 200
"""Characters of a peer-controlled string that a log line or an error reply may carry."""


def clip(text: object, limit: int = PEER_TEXT_LIMIT) -> str:
    """A peer-controlled value, fit for a log line: its ``repr``-free text cut to ``limit``
    characters, followed by its real length when it was cut."""
    value = text if isinstance(text, str) else str(text)
    if len(value) <= limit:
        return value
    return f"{value[:limit]}...({len(value)} characters)"


def parse_level(name: str) -> int:
    """The index of a level name (case-insensitive); ``ValueError`` when unknown.

    ``WARNING`` and ``ERROR`` are accepted as aliases of the reference's ``WARN`` and ``ERR``.
    """
    upper = name.upper()
    upper = {"WARNING": "WARN", "ERROR": "ERR"}.get(upper, upper)
    try:
        return LEVEL_INDEX[upper]
    except KeyError:
        raise ValueError(f"unknown log level {name!r}") from None


class LogLike(Protocol):
    """The logging calls the protocol layers make; :class:`Logger` satisfies it."""

    def debug(self, message: str) -> None: ...

    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def error(self, message: str) -> None: ...

    def throttled(self, level: int, key: str, message: str) -> None:
        """At most one line per ``key`` per second; for what a peer can trigger at will."""
        ...


class NullLog:
    """A :class:`LogLike` that drops everything (for components built without a logger)."""

    def debug(self, message: str) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def error(self, message: str) -> None:
        pass

    def throttled(self, level: int, key: str, message: str) -> None:
        pass


class LogSubscription:
    """One monitor's view of the log: a bounded queue of lines at or above ``min_level``."""

    __slots__ = ("_hub", "_receive", "_send", "dropped", "min_level", "replay")

    def __init__(self, hub: LogHub, min_level: int, queue_size: int, replay: list[str]) -> None:
        self._hub = hub
        self.min_level = min_level
        self.replay = replay
        self.dropped = 0
        self._send, self._receive = trio.open_memory_channel[str](queue_size)

    @property
    def lines(self) -> trio.MemoryReceiveChannel[str]:
        """Live lines; ends (``EndOfChannel``) when the hub closes."""
        return self._receive

    def offer(self, line: str) -> None:
        try:
            self._send.send_nowait(line)
        except trio.WouldBlock:
            self.dropped += 1
            self._hub.monitor_dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def end(self) -> None:
        """No more lines: the reader sees the end after what is queued."""
        self._hub._unsubscribe(self)
        self._send.close()

    def close(self) -> None:
        """Unsubscribe and release the queue."""
        self._hub._unsubscribe(self)
        self._send.close()
        self._receive.close()


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
    """Formats, rings, prints and fans out the agent's log lines."""

    def __init__(
        self,
        level: int = INFO,
        *,
        sink: TextIO | None = None,
        ring_size: int = RING_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.level = level
        self._sink = sink if sink is not None else sys.stderr
        self._ring: deque[tuple[int, str]] = deque(maxlen=ring_size)
        self._subscribers: list[LogSubscription] = []
        self._clock = clock
        self._stamp_second = -1
        self._stamp = ""
        self.monitor_dropped = 0
        self.closed = False
        self._throttle: dict[str, tuple[float, int]] = {}
        self._monotonic = time.monotonic

    def logger(self, component: str) -> Logger:
        return Logger(self, component)

    def _timestamp(self) -> str:
        second = int(self._clock())
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(second))
        return self._stamp

    def emit(self, level: int, component: str, message: str) -> None:
        line = f"{self._timestamp()} [{LOG_LEVELS[level]}] {component}: {message}"
        self._ring.append((level, line))
        if level >= self.level:
            try:
                self._sink.write(line + "\n")
                self._sink.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stderr must not take the agent down
        for subscription in self._subscribers:
            if level >= subscription.min_level:
                subscription.offer(line)

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

    def subscribe(self, min_level: int, queue_size: int = DEFAULT_MONITOR_QUEUE) -> LogSubscription:
        """A new subscription whose ``replay`` is the ring's lines at ``min_level`` or above.

        Taking the ring and registering happen in one step, so no line is lost or seen twice
        between the replay and the live lines.
        """
        replay = [line for level, line in self._ring if level >= min_level]
        subscription = LogSubscription(self, min_level, queue_size, replay)
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
