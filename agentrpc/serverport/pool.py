"""The connection pool: agent-to-agent RPC calls over one yamux connection per peer.

What goes on the wire is what the reference's ``agent/pool`` writes (``dial`` and
``getNewConn``): a TCP connection; with outgoing TLS the byte 3 and a TLS handshake; then the
byte 4 (inside TLS when it is on); then a yamux session as the client (odd stream ids). Each call
opens a stream and writes the msgpack request on it directly: **no type byte inside the
stream** (the server peeks the stream's first byte only to tell gossip (6) from RPC; an RPC
request starts with a msgpack map, 0x8N). As the reference, a stream whose call succeeded
is kept for the next call to that peer (up to :data:`MAX_IDLE_STREAMS` per connection, more are
closed with a FIN, as is one answered with an error); one whose call failed or timed out is
reset (RST), which leaves the connection usable.

A connection whose session ended (EOF, keep-alive failure, go-away) is dropped from the pool and
the next call dials again; opening a stream on a dead session is retried once on a new
connection, as the reference's ``getClient`` does. Every call is bounded by ``call_timeout``.
A connection with no call for ``max_idle`` seconds (127, the reference's) is closed by the
pool's reaper. A call to one of this agent's own addresses (:meth:`ConnectionPool.set_local`)
goes in-process.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from ..log_protocol import DEBUG, LogLike, NullLog, clip
from ..protocol.constants import DEFAULT_MAX_FRAME_SIZE
from ..transports import DEFAULT_NETWORK, Address, MemoryNetwork, connect, parse_address
from .endpoints import (
    STATUS_PING,
    CallTimeout,
    ConnectFailed,
    RemoteError,
    RPCCallError,
    call_on_stream,
)
from .rpc_codec import DEFAULT_SERVER_PORT, RPCType
from .tls import TLSConfig, wrap_client
from .yamux_session import YamuxConfig, YamuxSession, YamuxStream

DEFAULT_CALL_TIMEOUT: Final = 60.0
"""The reference's default ``rpc_client_timeout``."""
DEFAULT_DIAL_TIMEOUT: Final = 10.0
DEFAULT_MAX_IDLE: Final = 127.0
"""Seconds a connection with no call may stay open before the reaper closes it (Consul's
``clientRPCConnMaxIdle``); the next call to that peer dials again."""
REAP_INTERVAL: Final = 1.0
MAX_IDLE_STREAMS: Final = 32
"""Streams kept open per connection for reuse once their call is answered; past that many
idle ones, a stream is closed after its call."""

LocalCall = Callable[[str, Any], Awaitable[Any]]
"""An in-process call: (method, args) -> reply body."""

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_DIAL_TIMEOUT",
    "DEFAULT_MAX_IDLE",
    "CallTimeout",
    "ConnectFailed",
    "ConnectionPool",
    "LocalCall",
    "PoolStats",
    "RPCCallError",
    "RemoteError",
    "open_connection_pool",
]


@dataclass(slots=True)
class PoolStats:
    dials: int = 0
    calls: int = 0
    local_calls: int = 0
    failures: int = 0
    timeouts: int = 0
    reaped: int = 0
    streams: int = 0
    """Streams opened (a reused one counts once)."""


@dataclass(slots=True)
class _PeerConnection:
    key: str
    address: Address
    session: YamuxSession
    last_used: float = 0.0
    """When a call last started or ended on it (trio's clock)."""
    calls: int = 0
    """Calls in flight on it: an idle connection has none."""
    idle: list[YamuxStream] = field(default_factory=list)
    """Streams whose call ended well, kept for the next calls (at most
    :data:`MAX_IDLE_STREAMS`)."""


class ConnectionPool:
    """One yamux connection per peer address; run it with ``await nursery.start(pool.run)``
    (or :func:`open_connection_pool`), which owns every connection's tasks."""

    def __init__(
        self,
        *,
        tls: TLSConfig | None = None,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        dial_timeout: float = DEFAULT_DIAL_TIMEOUT,
        yamux: YamuxConfig | None = None,
        logger: LogLike | None = None,
        network: MemoryNetwork = DEFAULT_NETWORK,
        max_object_size: int = 64 * DEFAULT_MAX_FRAME_SIZE,
        max_idle: float = DEFAULT_MAX_IDLE,
    ) -> None:
        if call_timeout <= 0 or dial_timeout <= 0 or max_idle <= 0:
            raise ValueError("timeouts must be positive")
        self.call_timeout = call_timeout
        self.max_idle = max_idle
        self.dial_timeout = dial_timeout
        self.stats = PoolStats()
        self._tls = tls
        self._tls_context = tls.client_context() if tls is not None and tls.outgoing else None
        self._yamux = yamux or YamuxConfig()
        self._log: LogLike = logger or NullLog()
        self._network = network
        self._max_object_size = max_object_size
        self._conns: dict[str, _PeerConnection] = {}
        self._dialing: dict[str, trio.Event] = {}
        self._seq = itertools.count(1)
        self._local_addresses: frozenset[Address] = frozenset()
        self._local_call: LocalCall | None = None
        self._nursery: trio.Nursery | None = None
        self._closed = trio.Event()
        self._pooled = trio.Event()
        """Set when a connection is pooled: the reaper sleeps while the pool is empty."""

    # ------------------------------------------------------------------ lifecycle

    async def run(
        self, *, task_status: trio.TaskStatus[ConnectionPool] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the pool's connections until :meth:`close`; then go away and close them."""
        if self._nursery is not None:
            raise RuntimeError("ConnectionPool.run is already running")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                reaper = trio.CancelScope()
                nursery.start_soon(self._reap, reaper)
                task_status.started(self)
                await self._closed.wait()
                reaper.cancel()  # at once: only the sessions may use the grace period
                for conn in list(self._conns.values()):
                    conn.session.close()
                nursery.cancel_scope.deadline = trio.current_time() + self._yamux.write_timeout
        finally:
            self._nursery = None
            self._conns.clear()

    async def _reap(self, scope: trio.CancelScope) -> None:
        """Close connections idle for longer than ``max_idle`` (no call for that long), as
        the reference's pool reaper does, so a peer talked to once holds nothing forever;
        until ``scope`` is cancelled (when the pool closes)."""
        with scope:
            while True:
                if not self._conns:
                    self._pooled = trio.Event()
                    await self._pooled.wait()
                await trio.sleep(min(REAP_INTERVAL, self.max_idle))
                now = trio.current_time()
                for conn in list(self._conns.values()):
                    if conn.calls == 0 and now - conn.last_used >= self.max_idle:
                        self.stats.reaped += 1
                        self._log.debug(f"closing idle connection to {conn.address}")
                        self._drop(conn)

    def close(self) -> None:
        """Stop the pool (for good): its connections go away and close; :meth:`run` then
        returns and later calls fail with :class:`RPCCallError`."""
        self._closed.set()

    def set_local(self, addresses: Iterable[str | Address], call: LocalCall) -> None:
        """Calls to any of ``addresses`` (this agent's own server port) go to ``call``."""
        self._local_addresses = frozenset(_address(address) for address in addresses)
        self._local_call = call

    def connected(self, address: str | Address) -> bool:
        """True when a live connection to ``address`` is pooled."""
        conn = self._conns.get(str(_address(address)))
        return conn is not None and not conn.session.is_closed

    @property
    def connection_count(self) -> int:
        return sum(1 for conn in self._conns.values() if not conn.session.is_closed)

    # ------------------------------------------------------------------ calls

    async def call(
        self, address: str | Address, method: str, args: Any, *, max_time: float | None = None
    ) -> Any:
        """Call ``method`` with ``args`` on the server port at ``address``; returns the reply
        body. Raises :class:`RemoteError` (the remote Error text in ``.error``),
        :class:`CallTimeout` after ``max_time`` (default ``call_timeout``; a forwarded
        blocking query needs longer), :class:`RPCCallError` for no answer."""
        target = _address(address)
        limit = self.call_timeout if max_time is None else max_time
        if self._closed.is_set():
            raise RPCCallError(f"the connection pool is closed: cannot call {method}")
        self.stats.calls += 1
        try:
            with trio.fail_after(limit):
                local = self._local_call
                if local is not None and target in self._local_addresses:
                    self.stats.local_calls += 1
                    return await local(method, args)
                return await self._remote_call(target, method, args)
        except trio.TooSlowError:
            self.stats.timeouts += 1
            raise CallTimeout(f"{method} to {target} got no answer within {limit:g} s") from None
        except RPCCallError:
            self.stats.failures += 1
            raise

    async def ping(self, address: str | Address) -> None:
        """``Status.Ping``: returns when the server answered, raises otherwise."""
        await self.call(address, STATUS_PING, {})

    async def _remote_call(self, address: Address, method: str, args: Any) -> Any:
        for attempt in range(2):
            conn = await self._connection(address)
            if conn.idle:
                stream = conn.idle.pop()  # the most recently used: its windows are warm
                break
            try:
                stream = await conn.session.open_stream()
                self.stats.streams += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # The session died under us (the peer closed it, say): redial once.
                self._drop(conn)
                if attempt:
                    raise ConnectFailed(f"failed to start stream to {address}: {exc}") from None
                continue
            break
        completed = reusable = False
        conn.calls += 1
        conn.last_used = trio.current_time()
        try:
            result = await call_on_stream(
                stream, method, args, seq=next(self._seq), max_object_size=self._max_object_size
            )
            completed = reusable = True
        except RemoteError:
            completed = True  # answered: closed, not reused (the server may end it after some)
            raise
        except RPCCallError:
            if conn.session.is_closed:
                self._drop(conn)
            raise
        finally:
            conn.calls -= 1
            conn.last_used = trio.current_time()
            if not completed:
                stream.reset()
            elif reusable and len(conn.idle) < MAX_IDLE_STREAMS and not conn.session.is_closed:
                conn.idle.append(stream)
            else:
                stream.close_nowait()
        return result

    # ------------------------------------------------------------------ connections

    def _live(self, key: str) -> _PeerConnection | None:
        conn = self._conns.get(key)
        if conn is not None and conn.session.is_closed:
            self._drop(conn)
            return None
        return conn

    def _drop(self, conn: _PeerConnection) -> None:
        if self._conns.get(conn.key) is conn:
            del self._conns[conn.key]
        conn.session.close()

    async def _connection(self, address: Address) -> _PeerConnection:
        key = str(address)
        conn = self._live(key)
        if conn is not None:
            return conn
        waiting = self._dialing.get(key)
        if waiting is not None:
            # Another call is dialing this peer: use its connection (the reference's limiter).
            await waiting.wait()
            conn = self._live(key)
            if conn is None:
                raise ConnectFailed(f"failed to connect to {address}")
            return conn
        dialed = trio.Event()
        self._dialing[key] = dialed
        try:
            conn = await self._dial(key, address)
        finally:
            del self._dialing[key]
            dialed.set()
        self._conns[key] = conn
        self._pooled.set()
        return conn

    async def _dial(self, key: str, address: Address) -> _PeerConnection:
        nursery = self._nursery
        if nursery is None:
            raise RuntimeError("the ConnectionPool is not running (start pool.run first)")
        self.stats.dials += 1
        try:
            with trio.fail_after(self.dial_timeout):
                transport = await self._open_transport(address)
        except trio.TooSlowError:
            raise ConnectFailed(f"connecting to {address} timed out") from None
        except OSError as exc:
            raise ConnectFailed(f"failed to connect to {address}: {exc}") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__ or exc
            raise ConnectFailed(f"failed to set up the connection to {address}: {cause}") from None
        session = YamuxSession(
            transport, client=True, config=self._yamux, logger=self._log, peer=str(address)
        )
        conn = _PeerConnection(key, address, session, last_used=trio.current_time())
        await nursery.start(self._run_session, conn)
        self._log.debug(f"connected to server port {address}")
        return conn

    async def _open_transport(self, address: Address) -> trio.abc.Stream:
        stream = await connect(address, network=self._network)
        try:
            if self._tls_context is not None:
                await stream.send_all(bytes([RPCType.TLS]))
                server_name = self._tls.server_name if self._tls is not None else None
                tls_stream = wrap_client(stream, self._tls_context, server_name)
                await tls_stream.do_handshake()
                stream = tls_stream
            await stream.send_all(bytes([RPCType.MULTIPLEX_V2]))
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream

    async def _run_session(
        self, conn: _PeerConnection, *, task_status: trio.TaskStatus[None]
    ) -> None:
        try:
            await conn.session.run(task_status=task_status)
        finally:
            if self._conns.get(conn.key) is conn:
                del self._conns[conn.key]
            reason = conn.session.error
            self._log.throttled(
                DEBUG,
                "server-port:pool-connection-ended",
                f"connection to {conn.address} ended: {clip(reason)}",
            )


def _address(address: str | Address) -> Address:
    if isinstance(address, Address):
        return address
    return parse_address(address, default_port=DEFAULT_SERVER_PORT)


@asynccontextmanager
async def open_connection_pool(**options: Any) -> AsyncIterator[ConnectionPool]:
    """A running :class:`ConnectionPool` (closed on exit); ``options`` go to its constructor.

    Exceptions leaving the ``async with`` body pass through the pool's nursery (trio wraps them
    in an ``ExceptionGroup``); catch expected call errors inside the body.
    """
    pool = ConnectionPool(**options)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        try:
            yield pool
        finally:
            pool.close()
