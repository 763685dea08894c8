"""Sans-I/O session of one connection in Serf's own agent RPC dialect (serf's ``ipc.go``).

Serf's agent speaks the same framing as Consul's and most of the same gate; where it differs,
this session (an :class:`~agentrpc.protocol.rpc_session.RPCSession`) decides as serf does:

* a bad handshake version is ``Unsupported IPC version``;
* no per-request Token: with an auth key configured (``serf agent -rpc-auth``), every command
  but ``handshake`` and ``auth`` is answered ``Authentication required`` (the connection stays
  open) until an ``auth`` with the right key; a wrong key is ``Invalid authentication token``;
* event streams (``stream``) are keyed by their Seq like the monitor: a second stream of the
  same Seq is ``Stream with given sequence exists``, and ``stop`` with a stream's Seq ends it
  (:data:`STOP_STREAM`: the engine cancels that stream before it answers, so no record of it
  follows the reply), as it ends the monitor of that Seq;
* the commands are serf's (:data:`~agentrpc.protocol.constants.SERF_COMMANDS`).

Like its parent it holds state and returns decisions, never calls back: the engine tells it
when a stream ended on its own (:meth:`SerfSession.stream_ended`).
"""

from __future__ import annotations

import hmac
from collections.abc import Container
from typing import Any, Final

from .protocol.codec import Request, text_bytes
from .protocol.constants import (
    AUTH,
    ERR_AUTH_REQUIRED,
    ERR_INVALID_AUTH_TOKEN,
    ERR_STREAM_EXISTS,
    ERR_UNSUPPORTED_IPC_VERSION,
    HANDSHAKE,
    MONITOR,
    RPC_VERSION,
    SERF_COMMANDS,
    STOP,
    STREAM,
)
from .protocol.rpc_session import (
    BEFORE_HANDSHAKE,
    IGNORE,
    INSTANT,
    RUN,
    STOP_MONITOR,
    SUCCESS,
    UNSUPPORTED_COMMAND,
    Decision,
    Kind,
    RPCSession,
)

MAX_STREAMS: Final = 16
"""Event streams one connection may hold open at once (each holds one of the engine's
in-flight slots until stopped, so fewer than those: the connection can always read ``stop``)."""

STOP_STREAM: Final = Decision(Kind.ANSWER)
"""``stop`` of an event stream: the engine cancels the stream of ``request.body`` (the Seq),
then answers success. Told apart from :data:`SUCCESS` by identity."""
UNSUPPORTED_IPC_VERSION: Final = Decision(Kind.ANSWER, ERR_UNSUPPORTED_IPC_VERSION)
AUTH_REQUIRED: Final = Decision(Kind.ANSWER, ERR_AUTH_REQUIRED)
INVALID_AUTH_TOKEN: Final = Decision(Kind.ANSWER, ERR_INVALID_AUTH_TOKEN)
STREAM_EXISTS: Final = Decision(Kind.ANSWER, ERR_STREAM_EXISTS)
TOO_MANY_STREAMS: Final = Decision(
    Kind.ANSWER, f"too many event streams on this connection (at most {MAX_STREAMS})"
)


def _keys_match(sent: str, required: str) -> bool:
    return hmac.compare_digest(text_bytes(sent), text_bytes(required))


class SerfSession(RPCSession):
    """The protocol state of one Serf-dialect connection (see the module docstring).

    ``instant`` and ``handled`` are the connection's command tables, as for the parent;
    ``auth_key`` is the agent's ``serf_rpc_auth`` ("" for none)."""

    __slots__ = ("_auth_key", "_authed", "streams")

    def __init__(
        self, instant: Container[str], handled: Container[str], auth_key: str = ""
    ) -> None:
        super().__init__(instant, handled, "")
        self._auth_key = auth_key
        self._authed = not auth_key
        self.streams: set[int] = set()
        """The Seqs of the event streams open on this connection."""

    @property
    def authenticated(self) -> bool:
        return self._authed

    def receive(self, request: Request) -> Decision:
        command = request.command
        if not self._open:
            if self._closed:
                return IGNORE
            if command == HANDSHAKE:
                return self._handshake(request.body)
            self._close()
            return BEFORE_HANDSHAKE
        if command == HANDSHAKE:
            return self._handshake(request.body)
        if command == AUTH:
            return self._auth(request.body)
        if not self._authed:
            return AUTH_REQUIRED
        if command == STOP:
            return self._stop(request.body)
        if command in self._instant:
            return INSTANT
        if command == MONITOR:
            return self._monitor(request)
        if command == STREAM:
            return self._stream(request.seq)
        if command in self._handled and command in SERF_COMMANDS:
            return RUN
        self._close()
        return UNSUPPORTED_COMMAND

    def _handshake(self, version: Any) -> Decision:
        if version != RPC_VERSION:
            return UNSUPPORTED_IPC_VERSION
        return super()._handshake(version)

    def _auth(self, key: str) -> Decision:
        if _keys_match(key, self._auth_key):
            self._authed = True
            return SUCCESS
        return INVALID_AUTH_TOKEN

    def _stop(self, seq: int) -> Decision:
        if self.monitor_seq is not None and self.monitor_seq == seq:
            self.monitor_seq = None
            return STOP_MONITOR
        if seq in self.streams:
            self.streams.discard(seq)
            return STOP_STREAM
        return SUCCESS

    def _stream(self, seq: int) -> Decision:
        if seq in self.streams:
            return STREAM_EXISTS
        if len(self.streams) >= MAX_STREAMS:
            return TOO_MANY_STREAMS
        self.streams.add(seq)
        return RUN

    def stream_ended(self, seq: int) -> None:
        """The engine's stream of ``seq`` ended on its own (a bad filter, the pool stopped):
        its Seq may be used again."""
        self.streams.discard(seq)
