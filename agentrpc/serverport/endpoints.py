"""RPC endpoints of the server port: the registry, the byte-0 server, and the client side.

An endpoint is a plain callable registered under ``"Service.Method"``: it takes the decoded
request body and returns the reply body (or an awaitable of it). Raising
:class:`EndpointError` answers with that Error text (and the body ``{}``, as net/rpc does); the
stream stays open, as after any error a Go method returns. :class:`BadRequestBody` (a body that
does not decode into the method's arguments) answers the same way and then closes the stream.

:class:`RPCServer` serves one byte-0 stream the way Consul's ``handleConsulConn`` loop does:
**one request at a time, in order** (net/rpc's ``ServeRequest``), until EOF. Requests pipelined
by a client are answered in order. A request for a method nobody registered is answered with
net/rpc's own text (``rpc: can't find service <Service.Method>``, ``rpc: can't find method
...``, ``rpc: service/method request ill-formed: ...``) and an empty body ``{}``, after its body
has been read, and then the stream is closed. That reply and its log line carry at most 200
characters of the name the peer sent (with its real length), never the whole of it.

Bytes: a stream holds at most one reply at a time (the next request is not even decoded before
the reply is sent), and that reply is counted in a :class:`~agentrpc.budget.ConnectionBudget`
drawing on the agent-wide :class:`~agentrpc.budget.SharedBudget` until the kernel took it: a
reply waits while the agent's budget is spent (an empty stream may always send a reply of up to
the budget's ``reserve``), and meanwhile nothing more is read from that peer. Every log line a
peer can trigger goes through the per-kind throttle (one line per kind per second).

:func:`call_in_process` is the in-process entry point: a memory stream pair, the type byte 0,
and the same router and handlers as a TCP client gets.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import trio

from ..budget import DEFAULT_CONNECTION_BYTES, ConnectionBudget, SharedBudget
from ..log_protocol import (
    DEBUG,
    ERR,
    PEER_TEXT_LIMIT,
    WARN,
    LogLike,
    clip,
    describe_failure,
    first_leaf,
)
from ..protocol.constants import DEFAULT_MAX_FRAME_SIZE
from ..protocol.errors import ProtocolError
from ..transports import memory_stream_pair
from .rpc_codec import (
    READ_SIZE,
    RequestDecoder,
    ResponseDecoder,
    RPCEncoder,
    RPCRequest,
    RPCType,
    encode_request,
    lookup_error,
)

Handler = Callable[[Any], Any]
"""An endpoint: request body -> reply body, or an awaitable of it."""
ConnectionHandler = Callable[[trio.abc.Stream], Awaitable[None]]
"""Serves one whole connection (the router's entry point)."""

STATUS_PING: Final = "Status.Ping"


class EndpointError(Exception):
    """Raised by an endpoint: the reply carries this text as its Error."""


class BadRequestBody(EndpointError):
    """Raised by an endpoint whose request body does not decode into its arguments: the reply
    carries this text as its Error and then the stream is closed, as Go's net/rpc server ends
    ``ServeRequest`` with the decode error (and Consul's loop closes the connection)."""


class RPCCallError(Exception):
    """A call got no answer: connection refused or lost, malformed reply, timeout."""


class CallTimeout(RPCCallError):
    """A call did not complete within its time limit."""


class ConnectFailed(RPCCallError):
    """The call never reached the server: the connection to it could not be set up, so
    nothing was sent (a caller may safely try another server, even with a write)."""


class RemoteError(Exception):
    """The server answered with an Error; ``error`` is its text, byte for byte."""

    def __init__(self, method: str, error: str) -> None:
        super().__init__(f"rpc error calling {method}: {error}")
        self.method = method
        self.error = error


def ping(_body: Any) -> dict[str, Any]:
    """``Status.Ping``: ``{}`` in, ``{}`` out."""
    return {}


class Endpoints:
    """The registry of endpoints. ``Status.Ping`` is registered unless ``status_ping=False``.

    ``insecure=True`` also offers an endpoint on type byte 7 (TLS without a client certificate),
    which serves only such endpoints, as the reference's insecure RPC server does.
    """

    def __init__(self, *, status_ping: bool = True) -> None:
        self._handlers: dict[str, Handler] = {}
        self._insecure: dict[str, Handler] = {}
        if status_ping:
            self.register(STATUS_PING, ping)

    def register(self, name: str, handler: Handler, *, insecure: bool = False) -> None:
        """Serve ``name`` ("Service.Method") with ``handler``; replaces an earlier one."""
        service, dot, method = name.rpartition(".")
        if not dot or not service or not method:
            raise ValueError(f"endpoint name must be Service.Method, got {name!r}")
        self._handlers[name] = handler
        if insecure:
            self._insecure[name] = handler
        else:
            self._insecure.pop(name, None)

    def unregister(self, name: str) -> None:
        self._handlers.pop(name, None)
        self._insecure.pop(name, None)

    def get(self, name: str, *, insecure: bool = False) -> Handler | None:
        return (self._insecure if insecure else self._handlers).get(name)

    def names(self, *, insecure: bool = False) -> list[str]:
        return sorted(self._insecure if insecure else self._handlers)

    def services(self, *, insecure: bool = False) -> frozenset[str]:
        table = self._insecure if insecure else self._handlers
        return frozenset(name.rpartition(".")[0] for name in table)


@dataclass(slots=True)
class RPCServerStats:
    requests: int = 0
    errors: int = 0
    connections: int = 0


class RPCServer:
    """Serves the byte-0 RPC on streams handed to :meth:`serve`."""

    def __init__(
        self,
        endpoints: Endpoints,
        logger: LogLike,
        *,
        max_object_size: int = DEFAULT_MAX_FRAME_SIZE,
        send_queue_bytes: int = DEFAULT_CONNECTION_BYTES,
        send_budget: SharedBudget | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.max_object_size = max_object_size
        self.send_queue_bytes = send_queue_bytes
        """Each stream's byte budget (read when a stream starts; ``reload`` may change it)."""
        self.send_budget = send_budget
        """The agent-wide budget every stream's replies draw on (None: per stream only)."""
        self.stats = RPCServerStats()
        self._log = logger

    async def serve(
        self,
        stream: trio.abc.Stream,
        peer: str,
        *,
        initial: bytes | bytearray = b"",
        insecure: bool = False,
    ) -> None:
        """Answer requests one at a time until EOF or a fatal error; ``initial`` holds bytes
        already read from the stream. Never raises for the peer's faults; does not close."""
        decoder = RequestDecoder(self.max_object_size)
        encoder = RPCEncoder()
        budget = ConnectionBudget(self.send_queue_bytes, self.send_budget)
        stats = self.stats
        stats.connections += 1
        try:
            if initial:
                decoder.feed(initial)
            while True:
                request = decoder.next_request()
                if request is None:
                    data = await stream.receive_some(READ_SIZE)
                    if not data:
                        return
                    decoder.feed(data)
                    continue
                stats.requests += 1
                reply, keep_open = await self._answer(request, encoder, peer, insecure)
                size = len(reply)
                await budget.reserve(size)
                try:
                    await stream.send_all(reply)
                finally:
                    budget.release(size)
                del reply
                if not keep_open:
                    return
        except ProtocolError as exc:
            stats.errors += 1
            self._log.throttled(
                WARN,
                "server-port:rpc-malformed",
                f"RPC error from {peer}: malformed request: {clip(exc)}",
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._log.throttled(
                DEBUG, "server-port:rpc-lost", f"RPC connection from {peer} lost: {clip(exc)}"
            )
        finally:
            budget.close()
            stats.connections -= 1

    async def _answer(
        self, request: RPCRequest, encoder: RPCEncoder, peer: str, insecure: bool
    ) -> tuple[bytes, bool]:
        method, seq = request.service_method, request.seq
        handler = self.endpoints.get(method, insecure=insecure)
        if handler is None:
            error = lookup_error(method, self.endpoints.services(insecure=insecure))
            if len(method) > PEER_TEXT_LIMIT:
                # net/rpc's text ends with the name: never echo more than a bounded part of it.
                shown = clip(method)
                error = error[: len(error) - len(method)] + shown
                method = shown
            self.stats.errors += 1
            self._log.throttled(
                WARN, "server-port:rpc-unknown-method", f"RPC error from {peer}: {error}"
            )
            return encoder.response(method, seq, error, None), False
        error = ""
        keep_open = True
        body: Any = None
        try:
            body = handler(request.body)
            if inspect.isawaitable(body):
                body = await body
        except* EndpointError as group:
            leaf = first_leaf(group)
            error = str(leaf) or f"{method} failed"
            keep_open = not isinstance(leaf, BadRequestBody)
        except* Exception as group:
            self._log.throttled(
                ERR,
                f"server-port:rpc-endpoint-failed:{method}",
                f"RPC endpoint {method} failed for {peer}: {describe_failure(group)}",
            )
            error = error or f"rpc: internal error in {method}"
        if error:
            self.stats.errors += 1
            return encoder.response(method, seq, error, None), keep_open
        try:
            return encoder.response(method, seq, "", body), True
        except (TypeError, ValueError, OverflowError) as exc:
            self.stats.errors += 1
            self._log.throttled(
                ERR,
                f"server-port:rpc-unencodable:{method}",
                f"RPC endpoint {method} returned an unencodable reply: {clip(exc)}",
            )
            return encoder.response(
                method, seq, f"rpc: cannot encode reply of {method}", None
            ), True


async def call_on_stream(
    stream: trio.abc.Stream,
    method: str,
    args: Any,
    *,
    seq: int,
    max_object_size: int = 64 * DEFAULT_MAX_FRAME_SIZE,
) -> Any:
    """Client side of one call on a byte-0 stream (the type byte already sent): returns the
    reply body; :class:`RemoteError` for an Error, :class:`RPCCallError` for no answer."""
    try:
        await stream.send_all(encode_request(method, seq, args))
        decoder = ResponseDecoder(max_object_size)
        while (response := decoder.next_response()) is None:
            data = await stream.receive_some(READ_SIZE)
            if not data:
                raise RPCCallError(f"connection closed before the answer to {method}")
            decoder.feed(data)
    except ProtocolError as exc:
        raise RPCCallError(f"malformed answer to {method}: {exc}") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise RPCCallError(f"connection lost during {method}: {exc}") from None
    if response.seq != seq:
        raise RPCCallError(f"answer to {method} carries Seq {response.seq}, expected {seq}")
    if response.error:
        raise RemoteError(method, response.error)
    return response.body


async def call_in_process(
    handle_connection: ConnectionHandler, method: str, args: Any, *, seq: int = 1
) -> Any:
    """Call an endpoint without a socket: a memory stream pair, type byte 0, and
    ``handle_connection`` (the router) serving the other end, exactly as for a TCP client."""
    client, server = memory_stream_pair()
    failure: RemoteError | RPCCallError | None = None
    result: Any = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle_connection, server)
        try:
            await client.send_all(bytes([RPCType.CONSUL]))
            result = await call_on_stream(client, method, args, seq=seq)
        except (RemoteError, RPCCallError) as exc:
            # Raised outside the nursery so that callers see it bare, not in a group.
            failure = exc
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            failure = RPCCallError(f"in-process connection lost during {method}: {exc}")
        finally:
            await trio.aclose_forcefully(client)
    if failure is not None:
        raise failure
    return result
