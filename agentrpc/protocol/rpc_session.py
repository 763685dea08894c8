"""Sans-I/O session of one agent RPC connection: what each request calls for, no I/O.

The engine (:mod:`agentrpc.rpc_connection`) decodes requests with the codec, hands each one to
:meth:`RPCSession.receive` and does what the returned :class:`Decision` says: answer now, run
a command, start or stop the monitor stream, or answer and close. The session holds the
protocol state of the connection (handshaken or not, the token it requires, the Seq of the
active monitor, closed or not) and decides every rule of the gate: the handshake first (and
only once, and only version 1), the token, one monitor at a time, the reference's error
strings and bodies, which requests close the connection.

The engine is told *what*, never handed a callback: a decision is a small immutable value,
and the common ones (an instant command, a success header, a command to run, a monitor at a
given level, a denial) are preallocated singletons, so the per-request path allocates nothing
here. Besides the requests, the engine tells the session three things: a request that does
not decode (:meth:`RPCSession.malformed`, which decides the reply and closes), a monitor
stream that ended for a reason of its own (:meth:`RPCSession.monitor_ended`: the log hub
closed it, the connection is closing) and the token now required (:attr:`RPCSession.token`,
after a config reload).
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Container
from dataclasses import dataclass
from typing import Any, Final

from ..log_protocol import clip
from .codec import Request, text_bytes
from .constants import (
    COMMANDS,
    ERR_DUPLICATE_HANDSHAKE,
    ERR_HANDSHAKE_REQUIRED,
    ERR_MONITOR_EXISTS,
    ERR_PERMISSION_DENIED,
    ERR_UNKNOWN_LOG_LEVEL,
    ERR_UNSUPPORTED_COMMAND,
    ERR_UNSUPPORTED_VERSION,
    ERROR_BODIES,
    HANDSHAKE,
    LEVEL_INDEX,
    LOG_LEVELS,
    MONITOR,
    RPC_VERSION,
    STOP,
)
from .errors import ProtocolError

ERR_MALFORMED: Final = "Malformed request: "
"""The start of the reply to a request that does not decode (then the clipped reason)."""


class Kind(enum.IntEnum):
    """What the engine does with a request (each request gets exactly one decision)."""

    INSTANT = 0
    """Call the instant handler of ``request.command`` with the body and answer its reply."""
    RUN = 1
    """Run the async handler of ``request.command`` as a task (it answers when done)."""
    ANSWER = 2
    """Answer ``(decision.error, decision.body)`` now; the connection stays open."""
    HANDSHAKEN = 3
    """The handshake succeeded: answer success; the handshake deadline no longer applies."""
    DENIED = 4
    """The token is wrong or missing: answer ``Permission denied`` with ``decision.body`` (the
    command is never run) and count it in ``permission_denied``."""
    START_MONITOR = 5
    """Subscribe to the log at ``decision.level``, ack with a success header, then stream;
    the session now holds this request's Seq as the active monitor."""
    STOP_MONITOR = 6
    """End the active monitor stream (before anything else is queued), then answer success."""
    CLOSE = 7
    """Answer ``(decision.error, decision.body)``, then close the connection."""
    IGNORE = 8
    """The session is closed: do nothing (a closed connection reads no further request)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision of the session; compare the preallocated ones by identity."""

    kind: Kind
    error: str = ""
    body: Any = None
    """The reply body that goes with ``error`` (None: a header-only reply)."""
    level: int = 0
    """For :attr:`Kind.START_MONITOR`: the minimum log level of the stream."""


INSTANT: Final = Decision(Kind.INSTANT)
RUN: Final = Decision(Kind.RUN)
SUCCESS: Final = Decision(Kind.ANSWER)
"""A success header: a ``stop`` that matches no monitor (always a success, as the reference)."""
HANDSHAKEN: Final = Decision(Kind.HANDSHAKEN)
STOP_MONITOR: Final = Decision(Kind.STOP_MONITOR)
IGNORE: Final = Decision(Kind.IGNORE)
UNSUPPORTED_VERSION: Final = Decision(Kind.ANSWER, ERR_UNSUPPORTED_VERSION)
DUPLICATE_HANDSHAKE: Final = Decision(Kind.ANSWER, ERR_DUPLICATE_HANDSHAKE)
MONITOR_EXISTS: Final = Decision(Kind.ANSWER, ERR_MONITOR_EXISTS)
BEFORE_HANDSHAKE: Final = Decision(Kind.CLOSE, ERR_HANDSHAKE_REQUIRED)
"""Any command but handshake before a successful handshake: answer, then close."""
UNSUPPORTED_COMMAND: Final = Decision(Kind.CLOSE, ERR_UNSUPPORTED_COMMAND)
"""An unknown (or empty) command: answer, then close (its body, if any, is never read)."""
DENIED: Final = Decision(Kind.DENIED, ERR_PERMISSION_DENIED)
"""Permission denied for a command whose error reply carries no body."""
START_MONITOR: Final = tuple(
    Decision(Kind.START_MONITOR, level=level) for level in range(len(LOG_LEVELS))
)
"""The monitor decisions, indexed by level."""

_DENIED_WITH_BODY: Final = {
    command: Decision(Kind.DENIED, ERR_PERMISSION_DENIED, body)
    for command, body in ERROR_BODIES.items()
}


def token_matches(sent: str | None, required: str) -> bool:
    """True when the request's Token is the required one (compared in constant time)."""
    return sent is not None and hmac.compare_digest(text_bytes(sent), text_bytes(required))


class RPCSession:
    """The protocol state of one connection; :meth:`receive` decides for each request.

    ``instant`` names the commands answered at once from the request body, ``handled`` the
    commands run as tasks; any other command (and any name outside the protocol's
    :data:`~agentrpc.protocol.constants.COMMANDS`) is unsupported. Both are kept as given, not
    copied (an agent's thousands of connections share its command table; a session is a few
    slots). ``token`` may be changed at any time (a config reload): it applies to the requests
    received after the change.
    """

    __slots__ = (
        "_closed",
        "_handled",
        "_handshaken",
        "_instant",
        "_open",
        "_plain_rules",
        "monitor_seq",
        "token",
    )

    def __init__(self, instant: Container[str], handled: Container[str], token: str = "") -> None:
        self._instant = instant
        self._handled = handled
        self.token = token
        """When not empty, every command but handshake must carry this Token."""
        self.monitor_seq: int | None = None
        """The Seq of the active monitor stream, or None."""
        self._handshaken = False
        self._closed = False
        # Handshaken and not closed: the one test on the per-request path.
        self._open = False
        # A subclass with its own rules for requests (another dialect) decides every one.
        self._plain_rules = type(self).receive is RPCSession.receive

    @property
    def plain_stop(self) -> bool:
        """True while a ``stop`` of any Seq but :attr:`monitor_seq` is a plain success that
        needs nothing of the session (handshaken, not closed, no token to check): the
        decoder may then answer it by itself
        (:meth:`~agentrpc.protocol.codec.RequestDecoder.pull`), as :meth:`receive` would."""
        return self._open and not self.token and self._plain_rules

    @property
    def handshaken(self) -> bool:
        """True once a handshake succeeded (and still true after the session closed)."""
        return self._handshaken

    @property
    def closed(self) -> bool:
        return self._closed

    def receive(self, request: Request) -> Decision:
        """The decision for one request, in the order requests arrived.

        Bodies are expected as the codec's body decoders make them (handshake: the version,
        monitor: the level name, stop: the Seq of the stream).
        """
        if not self._open:
            return self._receive_gated(request)
        command = request.command
        token = self.token
        if token and command != HANDSHAKE and not token_matches(request.token, token):
            return _DENIED_WITH_BODY.get(command, DENIED)
        if command == STOP:
            if self.monitor_seq is not None and self.monitor_seq == request.body:
                self.monitor_seq = None
                return STOP_MONITOR
            return SUCCESS
        if command in self._instant:
            return INSTANT
        if command == HANDSHAKE:
            return self._handshake(request.body)
        if command == MONITOR:
            return self._monitor(request)
        if command in self._handled and command in COMMANDS:
            return RUN
        self._close()
        return UNSUPPORTED_COMMAND

    def _receive_gated(self, request: Request) -> Decision:
        if self._closed:
            return IGNORE
        if request.command == HANDSHAKE:
            return self._handshake(request.body)
        self._close()
        return BEFORE_HANDSHAKE

    def _handshake(self, version: Any) -> Decision:
        if version != RPC_VERSION:  # checked first, as the reference does
            return UNSUPPORTED_VERSION
        if self._open:
            return DUPLICATE_HANDSHAKE
        self._open = self._handshaken = True
        return HANDSHAKEN

    def _monitor(self, request: Request) -> Decision:
        level_name: str = request.body.upper()
        level = LEVEL_INDEX.get(level_name)
        if level is None:
            # The reference echoes the level; never more than a bounded part of it.
            return Decision(Kind.ANSWER, ERR_UNKNOWN_LOG_LEVEL + clip(level_name))
        if self.monitor_seq is not None:
            return MONITOR_EXISTS
        self.monitor_seq = request.seq
        return START_MONITOR[level]

    def _close(self) -> None:
        self._closed = True
        self._open = False

    def monitor_ended(self, seq: int) -> None:
        """The engine's monitor stream of ``seq`` ended on its own: another may start."""
        if self.monitor_seq == seq:
            self.monitor_seq = None

    def malformed(self, error: ProtocolError) -> Decision:
        """A request that does not decode: answer where its Seq is known (``error.seq``), with
        the command's error body, then close."""
        self._close()
        body = ERROR_BODIES.get(error.command or "")
        return Decision(Kind.CLOSE, ERR_MALFORMED + clip(error), body)
