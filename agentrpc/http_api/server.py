"""The HTTP/1.1 server on Trio (h11 does the parsing): keep-alive, chunked streaming, bounded
requests, timeouts for slow clients and a cap on connections.

:class:`HTTPServer` listens on ``bind`` (TCP, unix or memory, through :mod:`agentrpc.transports`)
and serves each connection in a nursery it owns, one request at a time (pipelined requests are
answered in order). A request is handed to the ``handler`` (request in, response out) only once
its head and whole body are in; while the handler runs (a blocking query, a monitor stream) the
connection is watched, and a client that goes away cancels its request.

Bounds, each with its answer (:class:`HTTPLimits`):

- the request line and headers: ``max_header_bytes`` (h11's ``max_incomplete_event_size``),
  431 past it; a malformed head: 400; both close the connection;
- the body: ``max_body_bytes`` by ``Content-Length`` (413 before it is read) or by counting a
  chunked body (413 once past it); the connection then closes;
- time: the head must arrive within ``header_timeout`` of its first byte (of the connection's
  start for the first request), the body within ``body_timeout`` of the head, a keep-alive
  connection may idle ``idle_timeout`` between requests, and one write may take
  ``send_timeout`` (a client that does not read is dropped); a late head or body: 408, close;
- connections: ``max_connections`` at once; at the cap the connection idle the longest (between
  requests) is closed to make room, and when none is idle the new one is answered 503 and
  closed. Memory per idle connection is h11's state and one read buffer.

Nothing a client sends is logged unbounded: lines are throttled per kind and peer text clipped.
Shutdown (:meth:`HTTPServer.shutdown`): the listener closes, idle connections close at once,
requests in flight get ``drain_timeout`` seconds and are then cancelled.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Final

import h11
import trio

from ..admission import peer_of
from ..log_protocol import DEBUG, ERR, WARN, LogLike, clip, describe_failure, first_leaf
from ..serverport.server import serve_until
from ..transports import DEFAULT_NETWORK, Address, MemoryNetwork, open_listeners, parse_address
from .constants import (
    BODY_TIMEOUT,
    DRAIN_TIMEOUT,
    ERR_BODY_TOO_LARGE,
    ERR_TIMEOUT,
    ERR_TOO_MANY_CONNECTIONS,
    HEADER_TIMEOUT,
    HTTP_PORT,
    IDLE_TIMEOUT,
    MAX_BODY_BYTES,
    MAX_CONNECTIONS,
    MAX_HEADER_BYTES,
    PIPELINE_BYTES,
    READ_SIZE,
    SEND_TIMEOUT,
)
from .messages import ChunkSink, HTTPError, Request, Response, parse_query, text_response

__all__ = ["Handler", "HTTPLimits", "HTTPServer", "HTTPStats"]

Handler = Callable[[Request], Awaitable[Response]]
_SERVER_ERROR: Final = "Internal server error"
LINGER_SECONDS: Final = 0.5
LINGER_BYTES: Final = 1 << 20
_REFUSAL: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
) % (len(ERR_TOO_MANY_CONNECTIONS), ERR_TOO_MANY_CONNECTIONS.encode())


@dataclass(frozen=True, slots=True)
class HTTPLimits:
    max_connections: int = MAX_CONNECTIONS
    max_header_bytes: int = MAX_HEADER_BYTES
    max_body_bytes: int = MAX_BODY_BYTES
    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    send_timeout: float = SEND_TIMEOUT
    drain_timeout: float = DRAIN_TIMEOUT
    body_too_large: Callable[[str], str] = lambda path: ERR_BODY_TOO_LARGE
    """The 413 text for a request path (the KV endpoint words it its own way)."""


@dataclass(slots=True)
class HTTPStats:
    connections: int = 0
    accepted: int = 0
    requests: int = 0
    refused: int = 0
    evicted: int = 0
    timeouts: int = 0
    bad_requests: int = 0
    too_large: int = 0
    cancelled_by_client: int = 0
    errors: int = 0


class _Timeout(Exception):
    pass


class _ClientGone(Exception):
    pass


class _Sink(ChunkSink):
    __slots__ = ("_connection",)

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection

    async def send(self, data: bytes) -> None:
        if data:
            await self._connection.send(h11.Data(data=data))


_date_cache: list[object] = [-1, ""]


@functools.cache
def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("latin-1")
    except ValueError:
        return b""


def http_date() -> str:
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache[0] = second
        _date_cache[1] = email.utils.formatdate(second, usegmt=True)
    return str(_date_cache[1])


class _Connection:
    """One client connection: its h11 state machine and its timeouts."""

    def __init__(self, server: HTTPServer, stream: trio.abc.Stream, peer: str) -> None:
        self.server = server
        self.stream = stream
        self.peer = peer
        limits = server.limits
        self.limits = limits
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.idle_scope: trio.CancelScope | None = None
        self.evicted = False

    # ------------------------------------------------------------------ I/O

    async def _receive(self, deadline: float, size: int = READ_SIZE) -> None:
        with trio.move_on_at(deadline) as scope:
            data = await self.stream.receive_some(size)
        if scope.cancelled_caught:
            raise _Timeout
        self.h11.receive_data(bytes(data))

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            try:
                with trio.fail_after(self.limits.send_timeout):
                    await self.stream.send_all(data)
            except trio.TooSlowError:
                self.server.stats.timeouts += 1
                raise _ClientGone from None

    # ------------------------------------------------------------------ the loop

    async def serve(self) -> None:
        first = True
        while True:
            request = await self._read_head(first)
            first = False
            if request is None:
                return
            keep_going = await self._handle(request)
            if not keep_going or self.server.draining:
                return
            if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is not h11.DONE:
                return
            self.h11.start_next_cycle()

    async def _read_head(self, first: bool) -> h11.Request | None:
        limits = self.limits
        now = trio.current_time()
        pending = bool(self.h11.trailing_data[0]) if not first else False
        head_deadline: float | None = now + limits.header_timeout if (first or pending) else None
        while True:
            event = self.h11.next_event()
            if isinstance(event, h11.Request):
                return event
            if isinstance(event, h11.ConnectionClosed):
                return None
            if event is h11.PAUSED:  # pragma: no cover - start_next_cycle ran already
                return None
            if head_deadline is None:
                # Idle between requests: evictable until the first byte of the next one.
                self.idle_scope = trio.CancelScope()
                self.server._idle[self] = None
                try:
                    with self.idle_scope:
                        await self._receive(now + limits.idle_timeout, self._head_room())
                except _Timeout:
                    return None  # an idle keep-alive connection times out quietly
                finally:
                    self.server._idle.pop(self, None)
                    self.idle_scope = None
                if self.evicted:
                    return None
                head_deadline = trio.current_time() + limits.header_timeout
                continue
            await self._receive(head_deadline, self._head_room())

    def _head_room(self) -> int:
        """Read no more than one byte past the head limit: h11 then refuses a head that big
        (431) instead of parsing it whole."""
        buffered = len(self.h11.trailing_data[0])
        return max(1, min(READ_SIZE, self.limits.max_header_bytes + 1 - buffered))

    def _request_of(self, head: h11.Request, body: bytes) -> Request:
        target = head.target.decode("latin-1")
        raw_path, _, raw_query = target.partition("?")
        path = urllib.parse.unquote(raw_path, errors="surrogateescape")
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1") for name, value in head.headers
        }
        return Request(
            method=head.method.decode("latin-1"),
            path=path,
            query=parse_query(raw_query),
            headers=headers,
            body=body,
            remote=self.peer,
            raw_target=target,
        )

    async def _read_body(self, head: h11.Request) -> bytes | Response:
        limits = self.limits
        length = None
        for name, value in head.headers:
            if name == b"content-length":
                length = int(value)
        path = head.target.split(b"?", 1)[0].decode("latin-1")
        if length is not None and length > limits.max_body_bytes:
            self.server.stats.too_large += 1
            return text_response(413, limits.body_too_large(path))
        if self.h11.they_are_waiting_for_100_continue:
            await self.send(h11.InformationalResponse(status_code=100, headers=[]))
        deadline = trio.current_time() + limits.body_timeout
        body = bytearray()
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                await self._receive(deadline)
                continue
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > limits.max_body_bytes:
                    self.server.stats.too_large += 1
                    return text_response(413, limits.body_too_large(path))
                continue
            if isinstance(event, h11.EndOfMessage):
                return bytes(body)
            raise _ClientGone  # ConnectionClosed mid-body

    async def _handle(self, head: h11.Request) -> bool:
        """Serve one request; whether the connection may carry another."""
        server = self.server
        server.stats.requests += 1
        try:
            body = await self._read_body(head)
        except _Timeout:
            server.stats.timeouts += 1
            await self._send_simple(text_response(408, ERR_TIMEOUT), close=True)
            return False
        if isinstance(body, Response):
            await self._send_simple(body, close=True)
            return False
        request = self._request_of(head, body)
        response = await self._dispatch(request)
        if response is None:
            server.stats.cancelled_by_client += 1
            return False
        if response.stream is None:
            await self._send_response(request, response)
            return True
        return await self._stream(request, response)

    async def _dispatch(self, request: Request) -> Response | None:
        """Run the handler; a request that may wait (a blocking query, ``?index=`` not 0)
        runs while the connection is watched, and None means the client went away. Others
        answer at once: no task is spawned for them."""
        index = request.get("index")
        if not index or index == "0":
            return await self.server._call_handler(request)
        result: list[Response] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch, nursery.cancel_scope)
            result.append(await self.server._call_handler(request))
            nursery.cancel_scope.cancel()
        return result[0] if result else None

    async def _watch(self, scope: trio.CancelScope) -> None:
        """Read ahead (a pipelined request, bounded) to notice a client that went away."""
        while len(self.h11.trailing_data[0]) < PIPELINE_BYTES:
            data = await self.stream.receive_some(READ_SIZE)
            if not data:
                scope.cancel()
                return
            self.h11.receive_data(bytes(data))
        await trio.sleep_forever()

    def _headers(self, response: Response, *, close: bool) -> list[tuple[str, str]]:
        headers = [("Date", http_date()), *response.headers]
        if close or self.server.draining:
            headers.append(("Connection", "close"))
        return headers

    async def linger(self) -> None:
        """Before closing on an error, read (and drop) what the client is still sending, for a
        moment and a bounded number of bytes, so that closing does not reset the connection
        before the client read our answer (Go's ``closeWriteAndWait``)."""
        stream = self.stream
        if isinstance(stream, trio.abc.HalfCloseableStream):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_eof()
        budget = LINGER_BYTES
        with trio.move_on_after(LINGER_SECONDS):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while budget > 0:
                    data = await stream.receive_some(READ_SIZE)
                    if not data:
                        return
                    budget -= len(data)

    async def _send_simple(self, response: Response, *, close: bool) -> None:
        """An error answer (the request may be unread or incomplete); best effort."""
        headers = self._headers(response, close=close)
        headers.append(("Content-Length", str(len(response.body))))
        try:
            try:
                head = h11.Response(
                    status_code=response.status, headers=headers, reason=_reason(response.status)
                )
                data = self.h11.send(head) or b""
                if response.body:
                    data += self.h11.send(h11.Data(data=response.body)) or b""
                data += self.h11.send(h11.EndOfMessage()) or b""
            except h11.LocalProtocolError:
                # No request head yet (a slow one): h11 will not answer it, the bytes will.
                lines = [f"HTTP/1.1 {response.status} {_reason(response.status).decode()}"]
                lines.extend(f"{name}: {value}" for name, value in headers)
                data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body
            with trio.move_on_after(self.limits.send_timeout):
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _send_response(self, request: Request, response: Response) -> None:
        headers = self._headers(response, close=False)
        body = response.body
        headers.append(("Content-Length", str(len(body))))
        await self.send(
            h11.Response(
                status_code=response.status, headers=headers, reason=_reason(response.status)
            )
        )
        if body and request.method != "HEAD":
            await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())

    async def _stream(self, request: Request, response: Response) -> bool:
        assert response.stream is not None
        headers = self._headers(response, close=False)
        await self.send(
            h11.Response(
                status_code=response.status, headers=headers, reason=_reason(response.status)
            )
        )
        sink = _Sink(self)
        finished = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch, nursery.cancel_scope)
            await response.stream(sink)
            finished = True
            nursery.cancel_scope.cancel()
        if not finished:
            return False
        await self.send(h11.EndOfMessage())
        return True


class HTTPServer:
    """Serves ``handler`` over HTTP/1.1 on ``bind``."""

    def __init__(
        self,
        bind: str | Address,
        handler: Handler,
        logger: LogLike,
        limits: HTTPLimits | None = None,
        *,
        network: MemoryNetwork = DEFAULT_NETWORK,
    ) -> None:
        self.bind = (
            bind if isinstance(bind, Address) else parse_address(bind, default_port=HTTP_PORT)
        )
        self.handler = handler
        self.limits = limits or HTTPLimits()
        self.stats = HTTPStats()
        self.address: Address | None = None
        self.draining = False
        self._log = logger
        self._network = network
        self._shutdown = trio.Event()
        self._idle: OrderedDict[_Connection, None] = OrderedDict()

    def set_limits(self, **changes: object) -> None:
        """Change limits (a reload); new connections and requests see them."""
        self.limits = replace(self.limits, **changes)  # type: ignore[arg-type]

    async def run(
        self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until :meth:`shutdown`; ``task_status.started(bound address)``."""
        bound = await open_listeners(self.bind, network=self._network)
        self.address = bound[0][1]
        await serve_until(
            bound,
            self._serve_connection,
            self._shutdown,
            log=self._log,
            what="HTTP API",
            drain=self._drain,
            task_status=task_status,
        )

    def _drain(self) -> float:
        self.draining = True
        for connection in list(self._idle):
            self._evict(connection)
        return self.limits.drain_timeout

    def shutdown(self) -> None:
        self._shutdown.set()

    def _evict(self, connection: _Connection) -> None:
        self._idle.pop(connection, None)
        connection.evicted = True
        if connection.idle_scope is not None:
            connection.idle_scope.cancel()

    def _admit(self) -> bool:
        stats = self.stats
        if stats.connections < self.limits.max_connections:
            return True
        if self._idle:
            oldest = next(iter(self._idle))
            self._evict(oldest)
            stats.evicted += 1
            return True
        return False

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        stats = self.stats
        peer = peer_of(stream).name
        if not self._admit():
            stats.refused += 1
            self._log.throttled(
                WARN,
                "http:refused",
                f"http: refusing connection from {peer}: {stats.connections} connections open, "
                "none idle",
            )
            with trio.move_on_after(0.5):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(_REFUSAL)
            await trio.aclose_forcefully(stream)
            return
        stats.connections += 1
        stats.accepted += 1
        connection = _Connection(self, stream, peer)
        try:
            await self._serve_known(connection)
        except* Exception as group:
            stats.errors += 1
            self._log.throttled(
                ERR,
                "http:connection-failed",
                f"http: connection from {peer} failed: {describe_failure(group)}",
            )
        finally:
            stats.connections -= 1
            self._idle.pop(connection, None)
            await trio.aclose_forcefully(stream)

    async def _serve_known(self, connection: _Connection) -> None:
        """Serve until the connection ends; the ways a client ends one are answered here."""
        stats = self.stats
        peer = connection.peer
        try:
            await connection.serve()
        except _Timeout:
            stats.timeouts += 1
            await connection._send_simple(text_response(408, ERR_TIMEOUT), close=True)
            self._log.throttled(DEBUG, "http:timeout", f"http: {peer} too slow, closing")
        except h11.RemoteProtocolError as exc:
            stats.bad_requests += 1
            status = exc.error_status_hint
            await connection._send_simple(text_response(status, clip(str(exc))), close=True)
            self._log.throttled(
                DEBUG, "http:bad-request", f"http: bad request from {peer}: {clip(exc)}"
            )
            await connection.linger()
        except (_ClientGone, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _call_handler(self, request: Request) -> Response:
        started = trio.current_time()
        response: Response
        try:
            response = await self.handler(request)
        except* HTTPError as group:
            leaf = first_leaf(group)
            assert isinstance(leaf, HTTPError)
            response = text_response(leaf.status, leaf.text, leaf.headers)
        except* Exception as group:
            self.stats.errors += 1
            self._log.throttled(
                ERR,
                "http:handler-failed",
                f"http: Request {request.method} {clip(request.raw_target)} failed: "
                f"{describe_failure(group)}",
            )
            response = text_response(500, _SERVER_ERROR)
        self._log.throttled(
            DEBUG,
            "http:request",
            f"http: Request {request.method} {clip(request.raw_target)} "
            f"({(trio.current_time() - started) * 1000:.3f}ms) from={request.remote}",
        )
        return response
