"""hashicorp/raft's NetworkTransport over Trio streams, on byte 1 of the server port.

The framing is :mod:`agentrpc.raft.wire` (a type byte and a go-msgpack request; the answer is
an error string and a response struct); this module only moves those bytes:

* **Inbound** (:func:`serve_inbound`): a connection whose server-port type byte (1, RAFT) was
  already consumed by the router. Requests are decoded as they arrive and handed to the engine
  as :class:`InboundCall` tokens; the reader keeps reading while earlier requests are still
  being persisted (up to :attr:`TransportLimits.max_pipeline` unanswered), and a writer task
  sends the answers strictly in arrival order. An InstallSnapshot's raw bytes (``Size`` of
  them, right after the request) are read into memory, bounded by ``max_snapshot_size``,
  before the request is handed on.
* **Outbound** (:class:`RaftTransport`): dials a peer's server port and writes byte 1 first
  (Consul's ``RaftLayer.Dial``); a LIFO pool of at most ``pool_size`` (3, Go's
  ``maxPool``) idle connections per peer for single RPCs; :class:`Pipeline` writes
  AppendEntries back to back on a connection of its own and reads the answers in order;
  InstallSnapshot goes on a fresh connection with the snapshot bytes after the request.
  Every RPC is bounded by ``rpc_timeout`` (10 s); a snapshot's by that times its size in
  256 KiB units (Go's ``InstallSnapshot`` scaling).

Bad input from a peer (an unknown type byte, an oversized object, a short snapshot) raises out
of the connection's handler; the caller (the router's guard) logs it, throttled, and only that
connection closes.
"""

from __future__ import annotations

import tempfile
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Final

import trio

from ..hostport import split_host_port
from ..log_protocol import DEBUG, LogLike, NullLog, clip
from ..protocol.errors import FrameTooLarge, ProtocolError
from ..serverport.rpc_codec import RPCType as ServerPortType
from ..serverport.tls import TLSConfig, wrap_client
from .timing import CONSUL_RPC_TIMEOUT, MAX_PIPELINE
from .wire import (
    DEFAULT_MAX_REQUEST_SIZE,
    DEFAULT_MAX_RESPONSE_SIZE,
    NEED_DATA,
    InstallSnapshotRequest,
    Request,
    RequestDecoder,
    RequestReceived,
    Response,
    ResponseDecoder,
    ResponseReceived,
    RPCType,
    SnapshotChunk,
    SnapshotEnd,
    encode_request,
    encode_response,
)

__all__ = [
    "DEFAULT_POOL_SIZE",
    "InboundCall",
    "Pipeline",
    "RaftTransport",
    "TransportLimits",
    "rpc_type_of",
    "serve_inbound",
    "tcp_dialer",
    "tls_dialer",
]

RAFT_BYTE: Final = bytes([ServerPortType.RAFT])
DEFAULT_POOL_SIZE: Final = 3
"""Idle connections kept per peer (hashicorp/raft's ``maxPool`` as Consul sets it)."""
DEFAULT_MAX_SNAPSHOT_SIZE: Final = 512 << 20
SNAPSHOT_TIMEOUT_UNIT: Final = 256 * 1024
"""Go scales the InstallSnapshot timeout by the snapshot's size in these units."""
READ_SIZE: Final = 64 * 1024
SNAPSHOT_SPOOL_MEMORY: Final = 4 << 20
"""Bytes of a received snapshot kept in memory before its spool moves to a temporary file."""

Dialer = Callable[[str], Awaitable[trio.abc.Stream]]
"""Opens a raw stream to a peer's server port (``host:port``); the transport writes byte 1."""


@dataclass(frozen=True, slots=True)
class TransportLimits:
    max_request_size: int = DEFAULT_MAX_REQUEST_SIZE
    max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE
    max_snapshot_size: int = DEFAULT_MAX_SNAPSHOT_SIZE
    max_pipeline: int = MAX_PIPELINE
    """Unanswered requests one inbound connection may have (and one pipeline may send)."""
    rpc_timeout: float = CONSUL_RPC_TIMEOUT
    pool_size: int = DEFAULT_POOL_SIZE


def rpc_type_of(request: Request) -> RPCType:
    """The wire type byte of a request."""
    return request.rpc_type


def snapshot_timeout(limits: TransportLimits, size: int) -> float:
    return limits.rpc_timeout * max(1.0, size / SNAPSHOT_TIMEOUT_UNIT)


async def tcp_dialer(address: str) -> trio.abc.Stream:
    """Dial ``host:port`` over TCP."""
    host, port = split_host_port(address)
    if port is None:
        raise OSError(f"raft peer address without a port: {clip(address)}")
    return await trio.open_tcp_stream(host, int(port))


def tls_dialer(tls: TLSConfig) -> Dialer:
    """Dial over TCP, write byte 3 and shake hands as a TLS client (as Consul's RaftLayer
    with outgoing TLS); the transport then writes byte 1 inside the TLS stream."""
    context = tls.client_context()

    async def dial(address: str) -> trio.abc.Stream:
        stream = await tcp_dialer(address)
        try:
            await stream.send_all(bytes([ServerPortType.TLS]))
            tls_stream = wrap_client(stream, context, tls.server_name)
            await tls_stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return tls_stream

    return dial


# ============================================================================ inbound


class InboundCall:
    """One request received on an inbound connection: the engine's token for the core.
    :meth:`answer` once; the connection writes answers in arrival order."""

    __slots__ = ("_event", "error", "peer", "request", "response", "snapshot")

    def __init__(self, request: Request, peer: str, snapshot: IO[bytes] | None) -> None:
        self.request = request
        self.peer = peer
        self.snapshot = snapshot
        """An InstallSnapshot's bytes (exactly ``Size`` of them, read from the start), spooled
        to a temporary file past :data:`SNAPSHOT_SPOOL_MEMORY`; closed when answered."""
        self.error = ""
        self.response: Response | None = None
        self._event = trio.Event()

    def answer(self, error: str, response: Response | None) -> None:
        if self._event.is_set():
            return
        self.error = error
        self.response = response
        if self.snapshot is not None:
            self.snapshot.close()
            self.snapshot = None
        self._event.set()

    @property
    def answered(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


RequestSink = Callable[[InboundCall], None]
"""Hands one inbound request to the engine (synchronously; the engine answers later)."""


async def serve_inbound(
    stream: trio.abc.Stream,
    peer: str,
    sink: RequestSink,
    limits: TransportLimits | None = None,
) -> None:
    """Serve one inbound Raft connection (byte 1 already consumed) until the peer closes it.
    Raises on bad input (the caller logs and closes); the stream is not closed here."""
    await _Inbound(stream, peer, sink, limits or TransportLimits()).run()


class _Inbound:
    """One inbound connection: a reader (this task) and a writer answering in order."""

    def __init__(
        self, stream: trio.abc.Stream, peer: str, sink: RequestSink, limits: TransportLimits
    ) -> None:
        self.stream = stream
        self.peer = peer
        self.sink = sink
        self.limits = limits
        self.pending: deque[InboundCall] = deque()
        self.slots = trio.Semaphore(limits.max_pipeline)
        self.more = trio.Event()
        self.done = False
        self.spool: IO[bytes] | None = None
        self.spool_request: InstallSnapshotRequest | None = None

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                await self._reader()
                self.done = True
                self.more.set()
        finally:
            if self.spool is not None:
                self.spool.close()
            for call in self.pending:
                call.answer("", None)  # releases a spooled snapshot; nobody reads the answer

    async def _writer(self) -> None:
        while True:
            while not self.pending:
                if self.done:
                    return
                self.more = trio.Event()
                await self.more.wait()
            call = self.pending[0]
            await call.wait()
            self.pending.popleft()
            self.slots.release()
            await self.stream.send_all(encode_response(call.error, call.response))

    async def _hand_on(self, call: InboundCall) -> None:
        await self.slots.acquire()
        self.pending.append(call)
        self.more.set()
        self.sink(call)

    async def _reader(self) -> None:
        decoder = RequestDecoder(self.limits.max_request_size)
        while True:
            data = await self.stream.receive_some(READ_SIZE)
            if not data:
                if not decoder.idle:
                    raise ProtocolError("raft connection ended inside a request")
                return
            decoder.feed(data)
            while True:
                event = decoder.next_event()
                if event is NEED_DATA:
                    break
                if isinstance(event, RequestReceived):
                    request = event.request
                    if not isinstance(request, InstallSnapshotRequest):
                        await self._hand_on(InboundCall(request, self.peer, None))
                        continue
                    if request.size > self.limits.max_snapshot_size:
                        raise FrameTooLarge(
                            f"snapshot of {request.size} bytes exceeds "
                            f"{self.limits.max_snapshot_size}"
                        )
                    self.spool = tempfile.SpooledTemporaryFile(  # noqa: SIM115 (closed on answer)
                        max_size=SNAPSHOT_SPOOL_MEMORY
                    )
                    self.spool_request = request
                elif isinstance(event, SnapshotChunk):
                    assert self.spool is not None
                    await trio.to_thread.run_sync(self.spool.write, event.data)
                elif isinstance(event, SnapshotEnd):
                    spool, snapshot_request = self.spool, self.spool_request
                    assert spool is not None and snapshot_request is not None
                    self.spool, self.spool_request = None, None
                    await trio.to_thread.run_sync(spool.seek, 0)
                    await self._hand_on(InboundCall(snapshot_request, self.peer, spool))


# ============================================================================ outbound


class _Conn:
    __slots__ = ("decoder", "stream")

    def __init__(self, stream: trio.abc.Stream, max_response_size: int) -> None:
        self.stream = stream
        self.decoder = ResponseDecoder(max_response_size)

    async def read_response(self) -> ResponseReceived:
        while True:
            event = self.decoder.next_event()
            if isinstance(event, ResponseReceived):
                return event
            data = await self.stream.receive_some(READ_SIZE)
            if not data:
                raise trio.BrokenResourceError("raft peer closed the connection")
            self.decoder.feed(data)


class RaftTransport:
    """Outbound Raft RPCs to peers' server ports, with a small LIFO pool per peer."""

    def __init__(
        self,
        dialer: Dialer = tcp_dialer,
        limits: TransportLimits | None = None,
        log: LogLike | None = None,
    ) -> None:
        self.dialer = dialer
        self.limits = limits or TransportLimits()
        self._log = log if log is not None else NullLog()
        self._pools: dict[str, list[_Conn]] = {}
        self._closed = False

    async def _dial(self, address: str) -> _Conn:
        stream = await self.dialer(address)
        try:
            await stream.send_all(RAFT_BYTE)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return _Conn(stream, self.limits.max_response_size)

    def pooled(self, address: str) -> int:
        return len(self._pools.get(address, ()))

    async def call(self, address: str, request: Request) -> ResponseReceived:
        """One RPC on a pooled connection; raises on a connection error or the timeout."""
        pool = self._pools.get(address)
        with trio.fail_after(self.limits.rpc_timeout):
            conn = pool.pop() if pool else await self._dial(address)
            try:
                conn.decoder.expect(rpc_type_of(request))
                await conn.stream.send_all(encode_request(request))
                result = await conn.read_response()
            except BaseException:
                await trio.aclose_forcefully(conn.stream)
                raise
        await self._release(address, conn)
        return result

    async def _release(self, address: str, conn: _Conn) -> None:
        pool = self._pools.setdefault(address, [])
        if self._closed or len(pool) >= self.limits.pool_size:
            await trio.aclose_forcefully(conn.stream)
            return
        pool.append(conn)

    async def install_snapshot(
        self,
        address: str,
        request: InstallSnapshotRequest,
        read_chunk: Callable[[], Awaitable[bytes]],
    ) -> ResponseReceived:
        """InstallSnapshot on a connection of its own: the request, then ``request.size``
        bytes pulled from ``read_chunk`` (b"" ends early: an error), then the answer."""
        with trio.fail_after(snapshot_timeout(self.limits, request.size)):
            conn = await self._dial(address)
            try:
                conn.decoder.expect(RPCType.INSTALL_SNAPSHOT)
                await conn.stream.send_all(encode_request(request))
                left = request.size
                while left > 0:
                    chunk = await read_chunk()
                    if not chunk:
                        raise OSError("snapshot shorter than its size")
                    chunk = chunk[:left]
                    await conn.stream.send_all(chunk)
                    left -= len(chunk)
                return await conn.read_response()
            finally:
                await trio.aclose_forcefully(conn.stream)

    async def aclose(self) -> None:
        self._closed = True
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            for conn in pool:
                await trio.aclose_forcefully(conn.stream)

    def log_failure(self, address: str, exc: BaseException) -> None:
        self._log.throttled(
            DEBUG, f"raft-transport:{clip(address, 64)}", f"raft rpc to {clip(address)}: {exc!r}"
        )


class Pipeline:
    """AppendEntries written back to back on one connection, answers read in order.

    :meth:`run` owns the connection: it sends what :meth:`send` queued and calls
    ``on_response(request_id, result)`` for each answer in order; when the connection fails,
    it raises, and the caller fails every request still :attr:`outstanding`."""

    def __init__(self, transport: RaftTransport, address: str) -> None:
        self.transport = transport
        self.address = address
        self.outstanding: deque[int] = deque()
        self._send, self._receive = trio.open_memory_channel[tuple[int, Request]](
            transport.limits.max_pipeline
        )

    def send(self, request_id: int, request: Request) -> bool:
        """Queue a request; False when the pipeline is full (the caller fails it)."""
        try:
            self._send.send_nowait((request_id, request))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    def close(self) -> None:
        self._send.close()

    def drain_queued(self) -> list[int]:
        """Request ids queued and never written (after :meth:`run` ended)."""
        ids: list[int] = []
        while True:
            try:
                request_id, _ = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return ids
            ids.append(request_id)

    async def run(self, on_response: Callable[[int, ResponseReceived], None]) -> None:
        transport = self.transport
        with trio.fail_after(transport.limits.rpc_timeout):
            conn = await transport._dial(self.address)
        try:
            async with trio.open_nursery() as nursery:

                async def reader() -> None:
                    while True:
                        result = await conn.read_response()
                        request_id = self.outstanding.popleft()
                        on_response(request_id, result)

                nursery.start_soon(reader)
                async for request_id, request in self._receive:
                    conn.decoder.expect(RPCType.APPEND_ENTRIES)
                    self.outstanding.append(request_id)
                    with trio.fail_after(transport.limits.rpc_timeout):
                        await conn.stream.send_all(encode_request(request))
                nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(conn.stream)
