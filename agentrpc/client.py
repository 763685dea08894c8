"""The Python client of the agent RPC protocol (trio).

    async with Client("127.0.0.1:8400") as client:
        for member in await client.members_lan():
            print(member.name, member.address, member.status)
        async with client.monitor("debug") as lines:
            async for line in lines:
                print(line)

One connection carries many concurrent calls, matched by Seq. The ``async with`` owns the
reader task and the connection; ``monitor`` is an async context manager whose exit sends
``stop`` and waits for its reply, so a stream's cleanup is structured, never left to a garbage
collected generator. When the agent goes away, every pending call fails at once with
:class:`AgentConnectionError` (no spinning, no hang).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from types import TracebackType
from typing import Any, Final

import trio

from .defaults import DEFAULT_RPC_ADDR
from .protocol.bodies import Member
from .protocol.codec import READ_SIZE, RequestEncoder, Response, ResponseDecoder, as_text
from .protocol.constants import (
    DEFAULT_RPC_PORT,
    FORCE_LEAVE,
    HANDSHAKE,
    JOIN,
    LEAVE,
    MEMBERS_LAN,
    MEMBERS_WAN,
    MONITOR,
    RELOAD,
    RPC_VERSION,
    STATS,
    STOP,
)
from .protocol.errors import ProtocolError
from .transports import (
    DEFAULT_NETWORK,
    Address,
    MemoryNetwork,
    connect,
    describe_connect_error,
    parse_address,
)

DEFAULT_ADDRESS: Final = DEFAULT_RPC_ADDR
STREAM_BUFFER = 16384
"""Monitor lines buffered in the client; past that, lines are dropped and counted in
``MonitorStream.dropped`` so that a slow consumer never stalls the other calls."""


class ClientError(Exception):
    """Base of the client's errors."""


class AgentConnectionError(ClientError):
    """The agent could not be reached, or the connection to it was lost."""


class RPCError(ClientError):
    """The agent answered with an Error."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class JoinError(RPCError):
    """A join failed; ``num`` says how many addresses were contacted nevertheless."""

    def __init__(self, error: str, num: int) -> None:
        super().__init__(error)
        self.num = num


class _Pending:
    __slots__ = ("done", "response")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.response: Response | None = None


class MonitorStream:
    """The lines of one monitor; iterate with ``async for``. Ends if the agent ends it."""

    def __init__(self, seq: int, lines: trio.MemoryReceiveChannel[str]) -> None:
        self.seq = seq
        self.dropped = 0
        self._lines = lines

    def __aiter__(self) -> MonitorStream:
        return self

    async def __anext__(self) -> str:
        try:
            return await self._lines.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None


class Client:
    """A connection to an agent's RPC endpoint; an async context manager."""

    def __init__(
        self,
        address: str | Address | None = None,
        *,
        token: str = "",
        stream: trio.abc.Stream | None = None,
        network: MemoryNetwork = DEFAULT_NETWORK,
        connect_timeout: float = 10.0,
    ) -> None:
        if isinstance(address, str):
            address = parse_address(address, default_port=DEFAULT_RPC_PORT)
        self.address = address or parse_address(DEFAULT_ADDRESS)
        self._token = token
        self._stream = stream
        self._network = network
        self._connect_timeout = connect_timeout
        self._encoder = RequestEncoder()
        self._decoder = ResponseDecoder()
        self._seq = 0
        self._waiters: dict[int, _Pending] = {}
        self._streams: dict[int, trio.MemorySendChannel[str]] = {}
        self._monitors: dict[int, MonitorStream] = {}
        self._write_lock = trio.Lock()
        self._closed = False
        self._close_reason = "connection closed"
        self._exit_stack: AsyncExitStack | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Client:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            if self._stream is None:
                self._stream = await self._dial()
            nursery = await stack.enter_async_context(trio.open_nursery())
            stack.push_async_callback(self._shutdown_reader, nursery)
            nursery.start_soon(self._read_responses)
            await self._call(HANDSHAKE, {"Version": RPC_VERSION})
        except BaseException as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._exit_stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._exit_stack = self._exit_stack, None
        assert stack is not None
        try:
            return await stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # The reader's nursery wraps the body's own exception: hand it back unwrapped.
            if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
                raise exc from None
            raise

    async def _dial(self) -> trio.abc.Stream:
        try:
            with trio.fail_after(self._connect_timeout):
                return await connect(self.address, network=self._network)
        except trio.TooSlowError:
            raise AgentConnectionError(f"dial {self.address}: timed out") from None
        except OSError as exc:
            raise AgentConnectionError(
                f"dial {self.address}: {describe_connect_error(exc)}"
            ) from None

    async def _shutdown_reader(self, nursery: trio.Nursery) -> None:
        await self.aclose()
        nursery.cancel_scope.cancel()

    async def aclose(self) -> None:
        """Close the connection; pending calls fail with :class:`AgentConnectionError`."""
        self._mark_closed("client closed the connection")
        if self._stream is not None:
            await trio.aclose_forcefully(self._stream)

    @property
    def closed(self) -> bool:
        return self._closed

    def _mark_closed(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_reason = reason
        for pending in self._waiters.values():
            pending.done.set()
        for channel in self._streams.values():
            channel.close()
        self._streams.clear()

    # ------------------------------------------------------------------ plumbing

    async def _read_responses(self) -> None:
        assert self._stream is not None
        stream = self._stream
        decoder = self._decoder
        reason = "the agent closed the connection"
        try:
            while True:
                data = await stream.receive_some(READ_SIZE)
                if not data:
                    break
                decoder.feed(data)
                for response in decoder:
                    self._deliver(response)
                await trio.lowlevel.checkpoint()
        except ProtocolError as exc:
            reason = f"bad response from the agent: {exc}"
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            reason = f"connection lost: {exc}"
        self._mark_closed(reason)

    def _deliver(self, response: Response) -> None:
        seq = response.seq
        pending = self._waiters.pop(seq, None)
        if pending is None:
            channel = self._streams.get(seq)
            if channel is None:
                return
            log = as_text(response.body.get("Log")) if isinstance(response.body, dict) else None
            if log is not None:
                try:
                    channel.send_nowait(log)
                except trio.WouldBlock:
                    monitor = self._monitors.get(seq)
                    if monitor is not None:
                        monitor.dropped += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._streams.pop(seq, None)
        else:
            pending.response = response
            pending.done.set()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def _write(self, frame: bytes) -> None:
        assert self._stream is not None
        try:
            async with self._write_lock:
                await self._stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._mark_closed(f"connection lost: {exc}")
            raise AgentConnectionError(self._close_reason) from None

    async def _call(
        self,
        command: str,
        body: Any = None,
        *,
        reply_body: bool = False,
        stream: trio.MemorySendChannel[str] | None = None,
    ) -> Response:
        if self._closed:
            raise AgentConnectionError(self._close_reason)
        seq = self._next_seq()
        pending = _Pending()
        self._waiters[seq] = pending
        self._decoder.expect(seq, body=reply_body, stream=stream is not None)
        if stream is not None:
            self._streams[seq] = stream
        try:
            await self._write(self._encoder.request(command, seq, body, self._token))
            await pending.done.wait()
        finally:
            self._waiters.pop(seq, None)
        if pending.response is None:
            self._streams.pop(seq, None)
            raise AgentConnectionError(self._close_reason)
        return pending.response

    async def _simple(self, command: str, body: Any = None) -> None:
        response = await self._call(command, body)
        if response.error:
            raise RPCError(response.error)

    # ------------------------------------------------------------------ commands

    async def members_lan(self) -> list[Member]:
        """Every member of the LAN pool."""
        return await self._members(MEMBERS_LAN)

    async def members_wan(self) -> list[Member]:
        """Every member of the WAN pool (empty on a client-mode agent)."""
        return await self._members(MEMBERS_WAN)

    async def members(self, *, wan: bool = False) -> list[Member]:
        return await self._members(MEMBERS_WAN if wan else MEMBERS_LAN)

    async def _members(self, command: str) -> list[Member]:
        response = await self._call(command, reply_body=True)
        if response.error:
            raise RPCError(response.error)
        body = response.body
        if not isinstance(body, dict) or not isinstance(body.get("Members", []), list):
            raise ClientError(f"unexpected {command} body from the agent: {body!r}")
        return [Member.from_wire(item) for item in body.get("Members") or []]

    async def join(self, addresses: Sequence[str], *, wan: bool = False) -> int:
        """Join through ``addresses``; returns how many were contacted.

        Raises :class:`JoinError` (with ``num``) when the agent reports an error.
        """
        body = {"Existing": list(addresses), "WAN": wan}
        response = await self._call(JOIN, body, reply_body=True)
        num = response.body.get("Num", 0) if isinstance(response.body, dict) else 0
        if response.error:
            raise JoinError(response.error, int(num))
        return int(num)

    async def force_leave(self, node: str) -> None:
        await self._simple(FORCE_LEAVE, {"Node": node})

    async def leave(self) -> None:
        """Gracefully leave the cluster; the agent then shuts down."""
        await self._simple(LEAVE)

    async def reload(self) -> None:
        """Reload the agent's configuration; raises :class:`RPCError` if it is invalid."""
        await self._simple(RELOAD)

    async def stats(self) -> dict[str, dict[str, str]]:
        response = await self._call(STATS, reply_body=True)
        if response.error:
            raise RPCError(response.error)
        body = response.body
        if not isinstance(body, dict):
            raise ClientError(f"unexpected stats body from the agent: {body!r}")
        return {
            _shown(section): {_shown(k): _shown(v) for k, v in values.items()}
            for section, values in body.items()
            if isinstance(values, dict)
        }

    @asynccontextmanager
    async def monitor(self, level: str = "INFO") -> AsyncIterator[MonitorStream]:
        """Stream the agent's log lines at ``level`` or above; ``stop`` is sent on exit."""
        send, receive = trio.open_memory_channel[str](STREAM_BUFFER)
        response = await self._call(MONITOR, {"LogLevel": level}, stream=send)
        seq = response.seq
        if response.error:
            raise RPCError(response.error)
        stream = self._monitors[seq] = MonitorStream(seq, receive)
        try:
            yield stream
        finally:
            self._streams.pop(seq, None)
            self._monitors.pop(seq, None)
            receive.close()
            if not self._closed:
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(5),
                    suppress(AgentConnectionError),
                ):
                    await self._call(STOP, {"Stop": seq})
            self._decoder.forget(seq)


def _shown(value: object) -> str:
    """A stats key or value as text: a wire string (str or bin) as such, anything else
    (a number from a lenient agent) as ``str()`` gives it."""
    text = as_text(value)
    return str(value) if text is None else text


__all__ = [
    "AgentConnectionError",
    "Client",
    "ClientError",
    "JoinError",
    "MonitorStream",
    "RPCError",
]
