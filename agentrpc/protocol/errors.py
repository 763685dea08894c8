"""Errors raised by the sans-I/O agent RPC codec."""

from __future__ import annotations


class ProtocolError(Exception):
    """The peer broke the framing or the message shapes; the connection must close.

    ``seq`` is the request's sequence number when the header was readable, so that a reply
    can name it; ``None`` when nothing of the request could be trusted.
    """

    def __init__(self, message: str, *, seq: int | None = None, command: str | None = None):
        super().__init__(message)
        self.seq = seq
        self.command = command


class FrameTooLarge(ProtocolError):
    """A single msgpack object exceeded the configured frame-size limit."""
