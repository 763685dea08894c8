"""Reading and writing without waiting: move bytes when the OS (or the peer's queue) has them now.

The connection engine's writer task owns sending; when that task is idle (nothing queued,
waiting for more), a reader that has a reply ready may write it at once instead of waking the
writer, saving two task switches per round trip (:func:`nowait_sender`). Only what the
transport accepts without blocking is written; the caller queues the rest for the writer, so
order is kept.

Reading (:func:`receiver`): on a plain socket stream a read is tried first and only an empty
socket waits in the event loop, so a read that finds data costs no pass through the scheduler
(``SocketStream.receive_some`` makes one on every call). A schedule point every
:data:`READS_BEFORE_YIELD` reads that found data keeps the other tasks running and lets a
cancellation in. With ``spin_us`` the empty socket is polled that long before the wait (an
opt-in trade of CPU for latency, see ``docs/performance.md``). Any other stream (memory, TLS)
reads with its own ``receive_some``.

A reader that wants to do something only when it is about to wait (the RPC engine lets its
parser go then) uses :func:`split_receiver`: a synchronous attempt that gives the bytes the
socket has now, or None, then the awaiting read, which does not repeat a failed attempt.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from .memory import MemoryByteStream

READS_BEFORE_YIELD: Final = 64
"""Reads in a row that found data before the reader lets other tasks run."""

Receive = Callable[[int], Awaitable[bytes | bytearray]]
"""Reads at most that many bytes; ``b""`` at EOF (the contract of ``receive_some``)."""
TryReceive = Callable[[int], bytes | None]
"""Reads at most that many bytes without waiting: None when the caller must await its
:data:`Receive` (nothing there now, or a schedule point is due); ``b""`` at EOF."""


def nowait_sender(stream: trio.abc.Stream) -> Callable[[bytes], int | None]:
    """A function writing what ``stream`` takes right now: the bytes written (0 when it would
    block), or None when the stream has no synchronous path or reports an error (the caller
    then takes the awaiting path, which raises the proper trio exception). A socket's
    descriptor is looked up once: use it only while the stream is open."""
    if type(stream) is trio.SocketStream:
        fd = stream.socket.fileno()
        write = os.write

        def send_socket(data: bytes) -> int | None:
            try:
                return write(fd, data)
            except BlockingIOError:
                return 0
            except OSError:
                return None

        return send_socket
    if type(stream) is MemoryByteStream:
        return stream.send_nowait
    return _no_sync_path


def _no_sync_path(data: bytes) -> None:
    return None


def receiver(stream: trio.abc.Stream, spin_us: int = 0) -> Receive:
    """The fastest way to read ``stream``: :class:`SocketReceiver` for a plain socket stream,
    the stream's own ``receive_some`` for any other. The caller must be the stream's only
    reader and must not use the receiver after closing the stream."""
    if type(stream) is trio.SocketStream:
        return SocketReceiver(stream, spin_us).receive
    return stream.receive_some


def split_receiver(stream: trio.abc.Stream, spin_us: int = 0) -> tuple[TryReceive, Receive]:
    """:func:`receiver` in two steps, ``(try_receive, receive)``: call ``try_receive`` first
    and await ``receive`` only when it gave None. On any stream but a plain socket stream
    ``try_receive`` always gives None. The caller must be the stream's only reader."""
    if type(stream) is trio.SocketStream:
        socket_receiver = SocketReceiver(stream, spin_us)
        return socket_receiver.try_receive, socket_receiver.receive
    return _nothing_now, stream.receive_some


def _nothing_now(max_bytes: int) -> None:
    return None


def _closed_or(exc: OSError) -> OSError | trio.ClosedResourceError:
    """EBADF means our socket was closed: trio's error for that; any other stays as it is."""
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("the socket was closed")
    return exc


def _stream_error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("the socket was closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


class SocketReceiver:
    """Reads a socket stream's file descriptor: try first, wait only when it is empty."""

    __slots__ = ("_empty", "_fd", "_spin", "_streak")

    def __init__(self, stream: trio.SocketStream, spin_us: int = 0) -> None:
        self._fd = stream.socket.fileno()
        self._spin = spin_us / 1e6
        self._streak = 0
        self._empty = False  # try_receive just found the socket empty

    def try_receive(self, max_bytes: int) -> bytes | None:
        """The bytes the socket has now (``b""`` at EOF), or None: it is empty, or a schedule
        point is due; then await :meth:`receive`. Raises as :meth:`receive` does."""
        if self._streak >= READS_BEFORE_YIELD:
            return None
        try:
            data = os.read(self._fd, max_bytes)
        except BlockingIOError:
            self._empty = True
            return None
        except OSError as exc:
            raise _stream_error(exc) from None
        self._streak += 1
        return data

    async def receive(self, max_bytes: int) -> bytes:
        """At most ``max_bytes`` bytes, ``b""`` at EOF; ``trio.BrokenResourceError`` when
        the connection broke (``ClosedResourceError`` once the socket is closed)."""
        fd = self._fd
        if self._empty:
            self._empty = False  # try_receive found it empty just now: do not try again
        else:
            if self._streak >= READS_BEFORE_YIELD:
                # Many reads found data in a row: let the others run (and a cancellation in).
                self._streak = 0
                await trio.lowlevel.checkpoint()
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise _stream_error(exc) from None
            else:
                self._streak += 1
                return data
        if self._spin:
            spun = self._spin_read(max_bytes)
            if spun is not None:
                self._streak += 1  # no schedule point yet: counts as a read that found data
                return spun
        self._streak = 0
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                return os.read(fd, max_bytes)
            except BlockingIOError:
                continue  # woken without data (another reader of the event): wait again
            except OSError as exc:
                raise _stream_error(exc) from None

    def _spin_read(self, max_bytes: int) -> bytes | None:
        """Poll the socket for up to ``spin_us`` while no other task is ready to run; the
        data, or None when nothing came (the caller then waits in the event loop)."""
        if trio.lowlevel.current_statistics().tasks_runnable:
            return None  # never hold the others back
        fd = self._fd
        clock = time.perf_counter
        end = clock() + self._spin
        while True:
            try:
                return os.read(fd, max_bytes)
            except BlockingIOError:
                if clock() >= end:
                    return None
            except OSError as exc:
                raise _stream_error(exc) from None


class DatagramPath:
    """A UDP socket's datagrams in and out without a pass through the scheduler when the
    kernel is ready: ``sendto`` and ``recvfrom`` are tried at once, and only a full send
    buffer or an empty queue waits in the event loop. (``trio.socket``'s own methods make a
    schedule point after every datagram, a whole pass of the run loop per packet.)

    ``sock`` is the non-blocking stdlib socket under the trio socket that owns it and closes
    it; this only borrows it. Both methods are cancel points; a send that the kernel takes and
    a receive that finds a datagram are not schedule points, except that every
    :data:`READS_BEFORE_YIELD` receives in a row that found data, the next one lets the
    others run. After the socket is closed both raise ``trio.ClosedResourceError``.
    """

    __slots__ = ("_family", "_sock", "_streak")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._family = sock.family
        self._streak = 0

    async def send_to(self, data: bytes, host: str, port: int) -> None:
        """Send one datagram to an IP literal; raises ``OSError`` as ``sendto`` does (a
        name, not an address, is refused: nothing here resolves)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        sock = self._sock
        try:
            socket.inet_pton(self._family, host)
        except (OSError, ValueError):
            raise OSError(errno.EINVAL, f"not an IP address of this socket: {host!r}") from None
        while True:
            try:
                sock.sendto(data, (host, port))
            except BlockingIOError:
                await self._wait(trio.lowlevel.wait_writable)
                continue
            except OSError as exc:
                raise _closed_or(exc) from None
            return

    async def receive_from(self, max_bytes: int) -> tuple[bytes, Any]:
        """The next datagram and its source address; ``OSError`` as ``recvfrom`` raises it
        (an ICMP error reported on the socket, for one)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        sock = self._sock
        if self._streak >= READS_BEFORE_YIELD:
            self._streak = 0
            await trio.lowlevel.checkpoint()
        while True:
            try:
                received = sock.recvfrom(max_bytes)
            except BlockingIOError:
                self._streak = 0
                await self._wait(trio.lowlevel.wait_readable)
                continue
            except OSError as exc:
                raise _closed_or(exc) from None
            self._streak += 1
            return received

    async def _wait(self, wait: Callable[[socket.socket], Awaitable[None]]) -> None:
        if self._sock.fileno() < 0:
            raise trio.ClosedResourceError("the socket was closed")
        await wait(self._sock)
