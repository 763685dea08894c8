"""Unix domain socket listeners and dialing (``unix:///path``)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat

import trio

from .address import Address


class UnixSocketListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener on a filesystem path that removes its socket file when closed."""

    def __init__(self, sock: trio.socket.SocketType, path: str) -> None:
        self._listener = trio.SocketListener(sock)
        self.path = path

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._listener.socket

    async def accept(self) -> trio.abc.Stream:
        return await self._listener.accept()

    async def aclose(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        await self._listener.aclose()


async def open_unix_listener(address: Address, backlog: int = 128) -> UnixSocketListener:
    """Bind ``address.path``; a stale socket file left by a dead agent is replaced."""
    path = address.path
    await _remove_stale_socket(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return UnixSocketListener(sock, path)


async def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    try:
        probe = await trio.open_unix_socket(path)
    except OSError:
        os.unlink(path)  # nobody answers: a leftover of a dead process
        return
    await probe.aclose()
    raise OSError(errno.EADDRINUSE, f"another process is listening on {path}")


async def connect_unix(address: Address) -> trio.SocketStream:
    return await trio.open_unix_socket(address.path)
