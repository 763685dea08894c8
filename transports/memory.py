"""In-memory byte streams and listeners: the same engines, no sockets.

Used for in-process callers (components inside the agent calling its endpoints) and for fast
tests. A stream pair is two bounded channels of byte chunks, so a sender that outruns its reader
waits, exactly as a socket would push back.
"""

from __future__ import annotations

from typing import Final

import trio

DEFAULT_CHUNKS: Final = 64


class MemoryByteStream(trio.abc.HalfCloseableStream):
    """One end of an in-memory stream pair."""

    def __init__(
        self,
        outgoing: trio.MemorySendChannel[bytes],
        incoming: trio.MemoryReceiveChannel[bytes],
    ) -> None:
        self._outgoing = outgoing
        self._incoming = incoming
        self._leftover = b""
        self._closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        if not data:
            await trio.lowlevel.checkpoint()
            return
        try:
            await self._outgoing.send(bytes(data))
        except trio.ClosedResourceError:
            raise trio.ClosedResourceError("stream was half-closed for sending") from None
        except trio.BrokenResourceError:
            raise trio.BrokenResourceError("peer closed the stream") from None

    def send_nowait(self, data: bytes) -> int | None:
        """Queue ``data`` without waiting: its length, 0 when the peer's queue is full, or None
        when the stream is closed (the awaiting ``send_all`` then raises the right error)."""
        if self._closed or not data:
            return None if self._closed else 0
        try:
            self._outgoing.send_nowait(bytes(data))
        except trio.WouldBlock:
            return 0
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return None
        return len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        self._outgoing.close()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if not self._leftover:
            try:
                self._leftover = await self._incoming.receive()
            except trio.EndOfChannel:
                return b""
            except trio.ClosedResourceError:
                raise trio.ClosedResourceError("stream is closed") from None
        else:
            await trio.lowlevel.checkpoint()
        data = self._leftover
        if max_bytes is None or len(data) <= max_bytes:
            self._leftover = b""
            return data
        self._leftover = data[max_bytes:]
        return data[:max_bytes]

    async def aclose(self) -> None:
        self._closed = True
        self._outgoing.close()
        self._incoming.close()
        await trio.lowlevel.checkpoint()


def memory_stream_pair(
    chunks: int = DEFAULT_CHUNKS,
) -> tuple[MemoryByteStream, MemoryByteStream]:
    """Two connected streams; each direction buffers at most ``chunks`` sends."""
    a_to_b_send, a_to_b_receive = trio.open_memory_channel[bytes](chunks)
    b_to_a_send, b_to_a_receive = trio.open_memory_channel[bytes](chunks)
    return (
        MemoryByteStream(a_to_b_send, b_to_a_receive),
        MemoryByteStream(b_to_a_send, a_to_b_receive),
    )


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose connections come from :meth:`connect` in the same process."""

    def __init__(self, name: str = "memory", backlog: int = 128) -> None:
        self.name = name
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](backlog)

    async def connect(self) -> trio.abc.Stream:
        """Open a connection to this listener; the other end is handed to ``accept``."""
        client, server = memory_stream_pair()
        try:
            await self._send.send(server)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise trio.BrokenResourceError(f"memory listener {self.name!r} is closed") from None
        return client

    async def accept(self) -> trio.abc.Stream:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("listener is closed") from None

    async def aclose(self) -> None:
        self._send.close()
        self._receive.close()
        await trio.lowlevel.checkpoint()


class MemoryNetwork:
    """A registry of named in-process listeners, for ``memory://NAME`` addresses."""

    def __init__(self) -> None:
        self._listeners: dict[str, MemoryListener] = {}

    def listen(self, name: str) -> MemoryListener:
        existing = self._listeners.get(name)
        if existing is not None:
            raise OSError(f"memory address memory://{name} is already in use")
        listener = _RegisteredMemoryListener(self, name)
        self._listeners[name] = listener
        return listener

    def forget(self, name: str, listener: MemoryListener) -> None:
        if self._listeners.get(name) is listener:
            del self._listeners[name]

    async def connect(self, name: str) -> trio.abc.Stream:
        listener = self._listeners.get(name)
        if listener is None:
            raise ConnectionRefusedError(f"nothing listens on memory://{name}")
        return await listener.connect()


class _RegisteredMemoryListener(MemoryListener):
    def __init__(self, network: MemoryNetwork, name: str) -> None:
        super().__init__(name)
        self._network = network

    async def aclose(self) -> None:
        self._network.forget(self.name, self)
        await super().aclose()


DEFAULT_NETWORK: Final = MemoryNetwork()
"""The process-wide registry behind ``memory://`` addresses."""
