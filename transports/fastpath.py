"""Writing without waiting: hand bytes to the OS (or the peer's queue) when it takes them now.

The connection engine's writer task owns the stream; when that task is idle (nothing queued,
waiting for more), a reader that has a reply ready may write it at once instead of waking the
writer, saving two task switches per round trip. Only what the transport accepts without
blocking is written; the caller queues the rest for the writer, so order is kept.
"""

from __future__ import annotations

import os

import trio

from .memory import MemoryByteStream


def try_send_nowait(stream: trio.abc.Stream, data: bytes) -> int | None:
    """Bytes of ``data`` written right now (0 when the transport would block), or None when
    the stream has no synchronous path or reports an error (the caller then takes the normal,
    awaiting path, which raises the proper trio exception)."""
    if type(stream) is trio.SocketStream:
        try:
            return os.write(stream.socket.fileno(), data)
        except BlockingIOError:
            return 0
        except OSError:
            return None
    if type(stream) is MemoryByteStream:
        return stream.send_nowait(data)
    return None
