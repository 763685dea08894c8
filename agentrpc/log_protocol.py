"""The log protocol: levels, the logging calls every layer makes, and loggers that need no hub.

This is the bottom of the logging stack, pure and importable by any layer (the sans-I/O gossip
rules, the codecs, the engines, the agent): it imports neither trio nor anything else of the
project. :mod:`agentrpc.logs` builds the agent's real log on it (a hub that formats lines,
keeps the ring and feeds monitors); code below the agent asks only for a :class:`LogLike`.

What lives here:

* the levels :data:`TRACE` .. :data:`ERR` (plain ints, lowest first), their names as the
  reference prints them and the agent RPC's ``monitor`` command takes them
  (:data:`LOG_LEVELS`, :data:`LEVEL_INDEX`), and :func:`parse_level` for configuration text;
* :class:`LogLike`, the structural type of a component's logger (:class:`agentrpc.logs.Logger`
  satisfies it, and so do the two loggers below);
* :class:`NullLog`, which drops everything, for components built without a logger;
* :class:`CaptureLog`, which keeps every call as ``(level, message)`` in memory, for tests and
  for callers that want the lines rather than a hub;
* :func:`clip` and :data:`PEER_TEXT_LIMIT`, the one rule for putting text a peer chose into a
  log line or an error reply;
* :func:`describe_failure`, the one way to put an unexpected exception (or exception group)
  into a log line.

Resources: none are held. :class:`CaptureLog` grows without bound (it is meant for tests and
short-lived captures; :meth:`CaptureLog.clear` empties it). Nothing here throttles:
:meth:`LogLike.throttled` is a promise of the real logger, and the two loggers here keep or drop
every throttled line like any other.

Errors: :func:`parse_level` raises ``ValueError`` for an unknown name; nothing else raises.
:func:`describe_failure` only reads the exception it is given; it never re-raises it.
"""

from __future__ import annotations

import traceback
from typing import Final, Protocol

__all__ = [
    "DEBUG",
    "ERR",
    "INFO",
    "LEVEL_INDEX",
    "LOG_LEVELS",
    "PEER_TEXT_LIMIT",
    "TRACE",
    "WARN",
    "CaptureLog",
    "LogLike",
    "NullLog",
    "clip",
    "describe_failure",
    "parse_level",
]

TRACE: Final = 0
DEBUG: Final = 1
INFO: Final = 2
WARN: Final = 3
ERR: Final = 4

LOG_LEVELS: Final = ("TRACE", "DEBUG", "INFO", "WARN", "ERR")
"""The level names, indexed by level, byte for byte as the reference prints them and as the
agent RPC's ``monitor`` command accepts them."""
LEVEL_INDEX: Final = {name: index for index, name in enumerate(LOG_LEVELS)}
"""A level name (upper case, as in :data:`LOG_LEVELS`) to its level."""

_ALIASES: Final = {"WARNING": "WARN", "ERROR": "ERR"}

PEER_TEXT_LIMIT: Final = 200
"""Characters of a peer-controlled string that a log line or an error reply may carry."""

_MORE_LEAVES_SHOWN: Final = 5
"""How many further leaves of a group :func:`describe_failure` names by type."""
_CAUSES_SHOWN: Final = 3
"""How many links of an exception's cause chain :func:`describe_failure` follows."""


def parse_level(name: str) -> int:
    """The level of a level name (case-insensitive); ``ValueError`` when unknown.

    ``WARNING`` and ``ERROR`` are accepted as aliases of the reference's ``WARN`` and ``ERR``.
    """
    upper = name.upper()
    upper = _ALIASES.get(upper, upper)
    try:
        return LEVEL_INDEX[upper]
    except KeyError:
        raise ValueError(f"unknown log level {name!r}") from None


def clip(text: object, limit: int = PEER_TEXT_LIMIT) -> str:
    """A peer-controlled value, fit for a log line: its ``repr``-free text cut to ``limit``
    characters, followed by its real length when it was cut."""
    value = text if isinstance(text, str) else str(text)
    if len(value) <= limit:
        return value
    return f"{value[:limit]}...({len(value)} characters)"


class LogLike(Protocol):
    """The logging calls the layers below the agent make; :class:`agentrpc.logs.Logger`,
    :class:`NullLog` and :class:`CaptureLog` satisfy it."""

    def log(self, level: int, message: str) -> None: ...

    def trace(self, message: str) -> None: ...

    def debug(self, message: str) -> None: ...

    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def error(self, message: str) -> None: ...

    def throttled(self, level: int, key: str, message: str) -> None:
        """At most one line per ``key`` per second; for what a peer can trigger at will."""
        ...


class NullLog:
    """A :class:`LogLike` that drops everything (for components built without a logger)."""

    __slots__ = ()

    def log(self, level: int, message: str) -> None:
        pass

    def trace(self, message: str) -> None:
        pass

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


class CaptureLog:
    """A :class:`LogLike` that keeps every call in memory, in order.

    ``records`` holds ``(level, message)`` for each line, throttled lines included (nothing is
    held back: a test sees every line the code asked for); ``keys`` holds the throttle key of
    each throttled line, in order. :attr:`lines` and :meth:`text` render the records as
    ``LEVEL message`` for assertions that look for a fragment.
    """

    __slots__ = ("keys", "records")

    def __init__(self) -> None:
        self.records: list[tuple[int, str]] = []
        self.keys: list[str] = []
        """The throttle key of every throttled line, in order."""

    def log(self, level: int, message: str) -> None:
        self.records.append((level, message))

    def trace(self, message: str) -> None:
        self.records.append((TRACE, message))

    def debug(self, message: str) -> None:
        self.records.append((DEBUG, message))

    def info(self, message: str) -> None:
        self.records.append((INFO, message))

    def warn(self, message: str) -> None:
        self.records.append((WARN, message))

    def error(self, message: str) -> None:
        self.records.append((ERR, message))

    def throttled(self, level: int, key: str, message: str) -> None:
        self.records.append((level, message))
        self.keys.append(key)

    @property
    def lines(self) -> list[str]:
        """Every record as ``LEVEL message`` (``INFO Accepted client: ...``), oldest first."""
        return [f"{LOG_LEVELS[level]} {message}" for level, message in self.records]

    def text(self) -> str:
        """:attr:`lines`, one per line."""
        return "\n".join(self.lines)

    def messages(self, min_level: int = TRACE) -> list[str]:
        """The messages at ``min_level`` or above, without their levels, oldest first."""
        return [message for level, message in self.records if level >= min_level]

    def has(self, fragment: str) -> bool:
        """Whether one of :attr:`lines` contains ``fragment`` (``"WARN Bad state"`` looks for
        a warning, ``"Bad state"`` for that text at any level)."""
        return any(fragment in line for line in self.lines)

    def clear(self) -> None:
        """Forget every record and key."""
        self.records.clear()
        self.keys.clear()


def _first_leaf_path(exc: BaseException) -> list[BaseException]:
    """``exc``, then the first exception of each nested group down to the first leaf."""
    path = [exc]
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
        path.append(exc)
    return path


def first_leaf(exc: BaseException) -> BaseException:
    """The first exception at the bottom of a (nested) exception group; ``exc`` itself when
    it is no group."""
    return _first_leaf_path(exc)[-1]


def _leaf_types(exc: BaseException) -> list[str]:
    """The type names of every leaf of ``exc`` (``exc`` itself when it is no group)."""
    if not isinstance(exc, BaseExceptionGroup):
        return [type(exc).__name__]
    names: list[str] = []
    for inner in exc.exceptions:
        names.extend(_leaf_types(inner))
    return names


def _cause_of(exc: BaseException) -> BaseException | None:
    if exc.__cause__ is not None:
        return exc.__cause__
    if exc.__context__ is not None and not exc.__suppress_context__:
        return exc.__context__
    return None


def describe_failure(exc: BaseException) -> str:
    """A bug report for one log line about an exception nobody expected.

    For an exception group, the first leaf (the first exception at the bottom of the nesting)
    is described and the other leaves are named by type. The description is the type name, the
    text cut by :func:`clip` (an exception's text may quote what a peer sent, so it is never
    written in full), the traceback from the outermost group down to where the leaf was raised
    (our own frames; nothing a peer chose), and the types and clipped texts of up to three
    links of the leaf's cause chain.

    Only reads ``exc`` (it is neither re-raised nor changed).
    """
    path = _first_leaf_path(exc)
    leaf = path[-1]
    lines = [f"{type(leaf).__name__}: {clip(leaf)}"]
    others = _leaf_types(exc)[1:]
    if others:
        named = ", ".join(others[:_MORE_LEAVES_SHOWN])
        if len(others) > _MORE_LEAVES_SHOWN:
            named += ", ..."
        lines.append(f"(and {len(others)} more: {named})")
    cause = _cause_of(leaf)
    for _ in range(_CAUSES_SHOWN):
        if cause is None:
            break
        lines.append(f"caused by {type(cause).__name__}: {clip(cause)}")
        cause = _cause_of(cause)
    frames = "".join("".join(traceback.format_tb(level.__traceback__)) for level in path).rstrip()
    if frames:
        lines.append("Traceback (most recent call last):")
        lines.append(frames)
    return "\n".join(lines)
