"""The first-byte router of the server port (the reference's ``handleConn``).

Every accepted connection announces its protocol with one type byte; :class:`Router` reads it
within a deadline (5 s by default) and hands the connection to a small handler from its table:

====  ==============================================================================
byte  handling
====  ==============================================================================
0     msgpack RPC between agents (:class:`~agentrpc.serverport.endpoints.RPCServer`)
1     Raft (hashicorp NetworkTransport), handed to the registered raft handler
3     TLS: handshake as server, then read a *second* type byte inside and route again
4     yamux session; each accepted stream is RPC, unless its first byte is 6 (gossip)
6     a gossip stream, handed to the registered gossip stream handler
7     TLS without asking for a client certificate, then RPC directly (no inner byte),
      restricted to endpoints registered with ``insecure=True`` (as the reference)
====  ==============================================================================

Byte 1 without a registered raft handler, and anything else (2 old multiplex, 5 snapshot, 8
gRPC, unknown values) is logged as ``unrecognized RPC byte`` with the value and the peer, and
closed. With ``verify_incoming`` a plain connection whose byte is not 3 or 7 is logged and
closed; TLS inside TLS is refused.
A per-client-IP cap (100 by default, 0 for none, changeable at run time) closes extra
connections. Each connection handler catches its own errors: one connection never takes the
server down. Every line a peer can cause is logged through the per-kind throttle (at most one
line per kind per second, keys ``server-port:...``), with what the peer sent cut by ``clip``.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from .. import defaults
from ..admission import AdmissionCounter, peer_of
from ..budget import DEFAULT_CONNECTION_BYTES, SharedBudget
from ..log_protocol import DEBUG, ERR, WARN, LogLike, clip, describe_failure, first_leaf
from ..protocol.constants import DEFAULT_MAX_FRAME_SIZE
from ..protocol.errors import ProtocolError
from .endpoints import RPCServer, call_in_process
from .rpc_codec import DEFAULT_SERVER_PORT, RPCType
from .tls import TLSConfig, wrap_server
from .yamux import YamuxError
from .yamux_session import YamuxConfig, YamuxSession

DEFAULT_FIRST_BYTE_TIMEOUT: Final = defaults.FIRST_BYTE_TIMEOUT
DEFAULT_MAX_CONNS_PER_CLIENT: Final = defaults.SERVER_MAX_CONNS_PER_CLIENT

ERR_UNRECOGNIZED_BYTE: Final = "unrecognized RPC byte"
ERR_NON_TLS: Final = "Non-TLS connection attempted with VerifyIncoming set"
ERR_TLS_IN_TLS: Final = "TLS connection attempting to establish inner TLS connection"
ERR_CONN_LIMIT: Final = "rejecting RPC conn because rpc_max_conns_per_client exceeded"

GossipStreamHandler = Callable[[trio.abc.Stream, str], Awaitable[None]]
"""Takes a gossip stream (its type byte consumed) and the peer's name; owns the stream."""

RaftStreamHandler = Callable[[trio.abc.Stream, str], Awaitable[None]]
"""Takes a Raft connection (its type byte 1 consumed) and the peer's name; the router closes
the stream when the handler returns. The router never imports the Raft layer: the agent passes
the engine's handler in."""

_EXPECTED_ERRORS: Final = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    ProtocolError,
    YamuxError,
    ssl.SSLError,
    OSError,
)
"""What a peer can cause on its connection: logged at debug level, never re-raised."""


@dataclass(frozen=True, slots=True)
class RouterLimits:
    first_byte_timeout: float = DEFAULT_FIRST_BYTE_TIMEOUT
    """Seconds a new connection (and a new mux stream) has to send its type byte; it also
    bounds a TLS handshake with its inner type byte."""
    max_conns_per_client: int = DEFAULT_MAX_CONNS_PER_CLIENT
    """Connections at once from one IP address; 0 means no limit."""
    max_object_size: int = DEFAULT_MAX_FRAME_SIZE
    """Largest msgpack object (header or body) of a byte-0 request."""
    yamux: YamuxConfig = field(default_factory=YamuxConfig)
    send_queue_bytes: int = DEFAULT_CONNECTION_BYTES
    """Bytes one byte-0 stream or one yamux stream may hold queued to send (its
    :class:`~agentrpc.budget.ConnectionBudget`); all of them also draw on the agent's budget."""


@dataclass(slots=True)
class RouterStats:
    connections: int = 0
    rejected_conn_limit: int = 0
    first_byte_timeouts: int = 0
    unrecognized: int = 0
    refused_non_tls: int = 0
    refused_tls_in_tls: int = 0
    tls_failures: int = 0
    mux_sessions: int = 0
    mux_streams: int = 0


@dataclass(frozen=True, slots=True)
class _Context:
    peer: str
    is_tls: bool = False
    local: bool = False


RouteHandler = Callable[[trio.abc.Stream, _Context], Awaitable[None]]


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A stream whose first bytes were already read: they are returned first."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes | bytearray) -> None:
        self.stream = stream
        self._prefix = prefix

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if not isinstance(self.stream, trio.abc.HalfCloseableStream):
            raise trio.ClosedResourceError("the underlying stream cannot half-close")
        await self.stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        prefix = self._prefix
        if not prefix:
            return await self.stream.receive_some(max_bytes)
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        await trio.lowlevel.checkpoint()
        size = len(prefix) if max_bytes is None else max_bytes
        self._prefix = prefix[size:]
        return prefix[:size]

    async def aclose(self) -> None:
        await self.stream.aclose()


class Router:
    """Routes connections by their first byte; see the module docstring for the table."""

    def __init__(
        self,
        rpc: RPCServer,
        logger: LogLike,
        *,
        tls: TLSConfig | None = None,
        limits: RouterLimits | None = None,
        gossip_handler: GossipStreamHandler | None = None,
        raft_handler: RaftStreamHandler | None = None,
        send_budget: SharedBudget | None = None,
    ) -> None:
        self.rpc = rpc
        self.limits = limits = limits or RouterLimits()
        self.stats = RouterStats()
        self._log = logger
        self._tls = tls
        self._tls_required = tls is not None and tls.verify_incoming
        self._tls_context: ssl.SSLContext | None = None
        self._tls_insecure_context: ssl.SSLContext | None = None
        if tls is not None and tls.can_serve:
            self._tls_context = tls.server_context(verify_client=tls.verify_incoming)
            self._tls_insecure_context = tls.server_context(verify_client=False)
        self._admission = AdmissionCounter(max_per_client=limits.max_conns_per_client)
        self._gossip = gossip_handler
        self._raft = raft_handler
        self.send_budget = send_budget
        """The agent-wide byte budget that yamux sessions draw on (None: per session only)."""
        self._sessions: set[YamuxSession] = set()
        self._handlers: dict[int, RouteHandler] = {
            RPCType.CONSUL: self._route_rpc,
            RPCType.RAFT: self._route_raft,
            RPCType.TLS: self._route_tls,
            RPCType.MULTIPLEX_V2: self._route_mux,
            RPCType.GOSSIP: self._route_gossip,
            RPCType.TLS_INSECURE: self._route_tls_insecure,
        }

    # ------------------------------------------------------------------ configuration

    @property
    def handlers(self) -> Mapping[int, RouteHandler]:
        """The routing table: type byte -> handler."""
        return self._handlers

    @property
    def tls_required(self) -> bool:
        return self._tls_required

    def set_gossip_handler(self, handler: GossipStreamHandler | None) -> None:
        """Register (or remove) the handler of gossip streams (byte 6, and mux streams that
        start with 6)."""
        self._gossip = handler

    def set_raft_handler(self, handler: RaftStreamHandler | None) -> None:
        """Register (or remove) the handler of Raft connections (byte 1, and byte 1 inside
        TLS); without one, byte 1 is refused as unrecognized."""
        self._raft = handler

    @property
    def max_conns_per_client(self) -> int:
        return self._admission.max_per_client

    def set_max_conns_per_client(self, limit: int) -> None:
        """Change the per-IP cap (a config reload); applies to new connections, 0 = none."""
        if limit < 0:
            raise ValueError("max_conns_per_client must be >= 0")
        self._admission.max_per_client = limit

    def connections_from(self, ip: str) -> int:
        return self._admission.connections_from(ip)

    def close_sessions(self) -> None:
        """Go away and close every yamux session (server shutdown)."""
        for session in list(self._sessions):
            session.close()

    # ------------------------------------------------------------------ entry points

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        """Serve one accepted connection until it ends; closes it; never raises."""
        peer = peer_of(stream)
        if self._admission.admit(peer.ip) is not None:
            self.stats.rejected_conn_limit += 1
            self._log.throttled(
                ERR, "server-port:conn-limit", f"{ERR_CONN_LIMIT}: conn=from={peer.name}"
            )
            await trio.aclose_forcefully(stream)
            return
        try:
            await self._serve(stream, _Context(peer.name))
        finally:
            self._admission.release(peer.ip)

    async def handle_local(self, stream: trio.abc.Stream) -> None:
        """Serve an in-process connection (memory stream): the same routing, without the
        per-IP cap and without the TLS requirement (its bytes never leave the process)."""
        await self._serve(stream, _Context("in-process", local=True))

    async def call_local(self, method: str, args: Any) -> Any:
        """Call an endpoint in-process through this router (type byte 0 on a memory stream)."""
        return await call_in_process(self.handle_local, method, args)

    # ------------------------------------------------------------------ routing

    async def _serve(self, stream: trio.abc.Stream, context: _Context) -> None:
        self.stats.connections += 1
        try:
            await self._guarded("connection", context.peer, self._route(stream, context))
        finally:
            self.stats.connections -= 1
            await trio.aclose_forcefully(stream)

    async def _guarded(self, what: str, peer: str, work: Awaitable[None]) -> None:
        """Run one connection's (or mux stream's) work: what the peer causes ends it with a
        DEBUG line; anything else is a bug, logged loudly (once a second) while everyone else
        is still served."""
        key = what.replace(" ", "-")
        try:
            await work
        except* _EXPECTED_ERRORS as group:
            self._log.throttled(
                DEBUG,
                f"server-port:{key}-ended",
                f"{what} from {peer} ended: {clip(repr(first_leaf(group)))}",
            )
        except* Exception as group:
            self._log.throttled(
                ERR,
                f"server-port:{key}-failed",
                f"{what} from {peer} failed: {describe_failure(group)}",
            )

    async def _route(
        self, stream: trio.abc.Stream, context: _Context, deadline: float | None = None
    ) -> None:
        if deadline is None:
            deadline = trio.current_time() + self.limits.first_byte_timeout
        with trio.move_on_at(deadline) as scope:
            first = await stream.receive_some(1)
        if scope.cancelled_caught:
            self.stats.first_byte_timeouts += 1
            self._log.throttled(
                WARN,
                "server-port:first-byte-timeout",
                f"closing connection from {context.peer}: no type byte in time",
            )
            return
        if not first:
            return
        kind = first[0]
        if (
            self._tls_required
            and not context.is_tls
            and not context.local
            and kind not in (RPCType.TLS, RPCType.TLS_INSECURE)
        ):
            self.stats.refused_non_tls += 1
            self._log.throttled(
                WARN, "server-port:non-tls", f"{ERR_NON_TLS}: conn=from={context.peer} byte={kind}"
            )
            return
        handler = self._handlers.get(kind)
        if handler is None:
            self._unrecognized(kind, context.peer)
            return
        await handler(stream, context)

    def _unrecognized(self, kind: int, peer: str) -> None:
        self.stats.unrecognized += 1
        self._log.throttled(
            ERR,
            "server-port:unrecognized-byte",
            f"{ERR_UNRECOGNIZED_BYTE}: byte={kind} conn=from={peer}",
        )

    async def _route_rpc(self, stream: trio.abc.Stream, context: _Context) -> None:
        await self.rpc.serve(stream, context.peer)

    async def _route_gossip(self, stream: trio.abc.Stream, context: _Context) -> None:
        handler = self._gossip
        if handler is None:
            self._unrecognized(RPCType.GOSSIP, context.peer)
            return
        await handler(stream, context.peer)

    async def _route_raft(self, stream: trio.abc.Stream, context: _Context) -> None:
        handler = self._raft
        if handler is None:
            self._unrecognized(RPCType.RAFT, context.peer)
            return
        await handler(stream, context.peer)

    async def _start_tls(
        self,
        stream: trio.abc.Stream,
        context: _Context,
        tls_context: ssl.SSLContext | None,
        deadline: float,
    ) -> trio.SSLStream[trio.abc.Stream] | None:
        if context.is_tls:
            self.stats.refused_tls_in_tls += 1
            self._log.throttled(
                ERR, "server-port:tls-in-tls", f"{ERR_TLS_IN_TLS}: conn=from={context.peer}"
            )
            return None
        if tls_context is None:
            self.stats.tls_failures += 1
            self._log.throttled(
                ERR,
                "server-port:tls-not-configured",
                f"TLS connection attempted, but TLS is not configured: {context.peer}",
            )
            return None
        tls_stream = wrap_server(stream, tls_context)
        with trio.move_on_at(deadline) as scope:
            try:
                await tls_stream.do_handshake()
            except trio.BrokenResourceError as exc:
                self.stats.tls_failures += 1
                cause = exc.__cause__ or exc
                self._log.throttled(
                    WARN,
                    "server-port:tls-handshake-failed",
                    f"TLS handshake with {context.peer} failed: {clip(cause)}",
                )
                return None
        if scope.cancelled_caught:
            self.stats.tls_failures += 1
            self._log.throttled(
                WARN,
                "server-port:tls-handshake-timeout",
                f"TLS handshake with {context.peer} did not finish in time",
            )
            return None
        return tls_stream

    async def _route_tls(self, stream: trio.abc.Stream, context: _Context) -> None:
        # One deadline for the handshake and the inner type byte, as the reference.
        deadline = trio.current_time() + self.limits.first_byte_timeout
        tls_stream = await self._start_tls(stream, context, self._tls_context, deadline)
        if tls_stream is not None:
            inner = _Context(context.peer, is_tls=True, local=context.local)
            await self._route(tls_stream, inner, deadline)

    async def _route_tls_insecure(self, stream: trio.abc.Stream, context: _Context) -> None:
        deadline = trio.current_time() + self.limits.first_byte_timeout
        tls_stream = await self._start_tls(stream, context, self._tls_insecure_context, deadline)
        if tls_stream is not None:
            await self.rpc.serve(tls_stream, context.peer, insecure=True)

    async def _route_mux(self, stream: trio.abc.Stream, context: _Context) -> None:
        session = YamuxSession(
            stream,
            client=False,
            config=self.limits.yamux,
            logger=self._log,
            peer=context.peer,
            send_budget=self.send_budget,
        )
        self._sessions.add(session)
        self.stats.mux_sessions += 1
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(session.run)
                while True:
                    try:
                        sub = await session.accept_stream()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    nursery.start_soon(self._serve_mux_stream, sub, context)
        finally:
            self._sessions.discard(session)
            self.stats.mux_sessions -= 1

    async def _serve_mux_stream(self, sub: trio.abc.HalfCloseableStream, context: _Context) -> None:
        self.stats.mux_streams += 1
        try:
            await self._guarded("mux stream", context.peer, self._route_mux_stream(sub, context))
        finally:
            self.stats.mux_streams -= 1
            await trio.aclose_forcefully(sub)

    async def _route_mux_stream(self, sub: trio.abc.HalfCloseableStream, context: _Context) -> None:
        with trio.move_on_after(self.limits.first_byte_timeout) as scope:
            first = await sub.receive_some()
        if scope.cancelled_caught:
            self._log.throttled(
                WARN,
                "server-port:mux-first-byte-timeout",
                f"closing mux stream from {context.peer}: no data in time",
            )
            return
        if not first:
            return
        if first[0] == RPCType.GOSSIP:
            handler = self._gossip
            if handler is None:
                self._unrecognized(RPCType.GOSSIP, context.peer)
                return
            await handler(PrefixedStream(sub, first[1:]), context.peer)
        else:
            await self.rpc.serve(sub, context.peer, initial=first)


__all__ = [
    "DEFAULT_FIRST_BYTE_TIMEOUT",
    "DEFAULT_MAX_CONNS_PER_CLIENT",
    "DEFAULT_SERVER_PORT",
    "ERR_CONN_LIMIT",
    "ERR_NON_TLS",
    "ERR_TLS_IN_TLS",
    "ERR_UNRECOGNIZED_BYTE",
    "GossipStreamHandler",
    "PrefixedStream",
    "RPCType",
    "Router",
    "RouterLimits",
    "RouterStats",
]
