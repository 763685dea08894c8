"""The Python client of the agent RPC protocol (trio).

    async with Client("127.0.0.1:8400") as client:
        for member in await client.members_lan():
            print(member.name, member.address, member.status)
        async with client.monitor("debug") as lines:
            async for line in lines:
                print(line)

One connection carries many concurrent calls, matched by Seq. ``async with`` dials, runs the
handshake (each under its own deadline, 10 s by default), then owns the reader task and the
connection; ``monitor`` is an async context manager whose exit sends ``stop`` and waits for
its reply, so a stream's cleanup is structured, never left to a garbage collected generator.

Every failure is one exception of the tree in :mod:`agentrpc.client_errors`, never an
exception group: a bad address, a refused or timed out connection, a peer that is not an
agent, an Error from the agent (its exact text), and an agent gone mid-call or mid-stream.
When the agent goes away, every pending call and open monitor raises
:class:`AgentGoneError` at once (no spinning, no hang).
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Final, Generic, Self, TypeVar

import trio

from .client_errors import (
    NOT_AN_AGENT_HINT,
    SERF_NOT_AN_AGENT_HINT,
    AgentConnectionError,
    AgentGoneError,
    AgentTimeoutError,
    ClientError,
    InvalidAddressError,
    JoinError,
    NotAnAgentError,
    PermissionDeniedError,
    RPCError,
    rpc_error,
)
from .defaults import DEFAULT_RPC_ADDR, LOOPBACK_HOST
from .gossip.coordinate import Coordinate, CoordinateError
from .hostport import join_host_port
from .protocol.bodies import Member
from .protocol.codec import READ_SIZE, RequestEncoder, Response, ResponseDecoder, as_text
from .protocol.constants import (
    AUTH,
    DEFAULT_RPC_PORT,
    DEFAULT_SERF_RPC_PORT,
    ERR_PERMISSION_DENIED,
    EVENT,
    FORCE_LEAVE,
    GET_COORDINATE,
    HANDSHAKE,
    INSTALL_KEY,
    JOIN,
    LEAVE,
    LIST_KEYS,
    MEMBERS,
    MEMBERS_FILTERED,
    MEMBERS_LAN,
    MEMBERS_WAN,
    MONITOR,
    QUERY,
    QUERY_RECORD_ACK,
    QUERY_RECORD_DONE,
    QUERY_RECORD_RESPONSE,
    RELOAD,
    REMOVE_KEY,
    RESPOND,
    RPC_VERSION,
    STATS,
    STOP,
    STREAM,
    TAGS,
    USE_KEY,
)
from .protocol.errors import ProtocolError
from .transports import (
    DEFAULT_NETWORK,
    Address,
    AddressError,
    MemoryNetwork,
    connect,
    describe_connect_error,
    parse_address,
)

DEFAULT_ADDRESS: Final = DEFAULT_RPC_ADDR
ENV_RPC_ADDR: Final = "AGENTRPC_RPC_ADDR"
"""Where ``Client()`` without an address (and the CLI without ``--rpc-addr``) dials."""
ENV_RPC_TOKEN: Final = "AGENTRPC_RPC_TOKEN"
"""The RPC token ``Client()`` (and the CLI) send when none is given."""
DEFAULT_SERF_ADDRESS: Final = join_host_port(LOOPBACK_HOST, DEFAULT_SERF_RPC_PORT)
"""``127.0.0.1:7373``: where :class:`SerfClient` dials by default, as the ``serf`` CLI."""
ENV_SERF_RPC_ADDR: Final = "AGENTRPC_SERF_RPC_ADDR"
"""Where ``SerfClient()`` without an address (and ``agentrpc event/query/rtt``) dials."""
ENV_SERF_RPC_AUTH: Final = "AGENTRPC_SERF_RPC_AUTH"
"""The ``auth`` key ``SerfClient()`` sends when none is given (the agent's
``serf_rpc_auth``)."""
DEFAULT_TIMEOUT: Final = 10.0
"""Seconds to connect, and again for the handshake, as the reference's Go client."""
HANDSHAKE_READ_LIMIT: Final = 64 * 1024
"""Bytes a peer may send before answering the handshake; past that it is no agent."""
STREAM_BUFFER = 16384
"""Monitor lines buffered in the client; past that, lines are dropped and counted in
``MonitorStream.dropped`` so that a slow consumer never stalls the other calls."""
STOP_TIMEOUT: Final = 5.0
"""Seconds a monitor's exit waits for the reply to its ``stop``."""


class _Pending:
    __slots__ = ("done", "response")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.response: Response | None = None


T = TypeVar("T")


class _Sink:
    """Where the frames of one stream's Seq go: ``extract`` turns each body into an item
    (None: skip it); past the buffer, items are dropped and counted in ``owner.dropped``."""

    __slots__ = ("channel", "done", "extract", "owner")

    def __init__(
        self,
        channel: trio.MemorySendChannel[Any],
        extract: Callable[[Any], Any],
        owner: _Stream[Any],
    ) -> None:
        self.channel = channel
        self.extract = extract
        self.owner = owner
        self.done: Callable[[Any], bool] | None = None
        """For a query: whether a body is its last record (the Seq is then forgotten)."""


class _Stream(Generic[T]):
    """The items of one stream; iterate with ``async for``.

    The iteration ends when the ``async with`` block exits (or the agent ends the stream);
    when the connection to the agent is lost (the agent left, stopped or crashed), it raises
    :class:`AgentGoneError` after the items already received."""

    def __init__(self, seq: int, items: trio.MemoryReceiveChannel[T], client: BaseClient) -> None:
        self.seq = seq
        self.dropped = 0
        """Items dropped because the stream was not read fast enough (the buffer holds
        :data:`STREAM_BUFFER`)."""
        self._items = items
        self._client = client

    def __aiter__(self) -> _Stream[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self._items.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            gone = self._client._gone_error()
            if gone is not None:
                raise gone from None
            raise StopAsyncIteration from None


class MonitorStream(_Stream[str]):
    """The lines of one monitor (``async with client.monitor(...) as lines``)."""


class EventStream(_Stream[dict[str, Any]]):
    """The event records of one Serf ``stream`` (``async with client.stream("user") as
    events``), each a map as serf sends it: ``{Event: "member-join", Members: [...]}``
    (``Members`` as :class:`~agentrpc.protocol.bodies.Member`), ``{Event: "user", LTime,
    Name, Payload, Coalesce}`` or ``{Event: "query", ID, LTime, Name, Payload}`` (answer with
    :meth:`SerfClient.respond` and its ``ID``)."""


@dataclass(frozen=True, slots=True)
class QueryAck:
    """A node acknowledged a query (``request_ack``)."""

    from_node: str


@dataclass(frozen=True, slots=True)
class QueryResponse:
    """A node's response to a query."""

    from_node: str
    payload: bytes


class QueryStream(_Stream[QueryAck | QueryResponse]):
    """The acks and responses of one query, until its deadline (the agent's ``done``)."""


@dataclass(frozen=True, slots=True)
class KeyringEntry:
    """One key of a pool in Consul's ``keyring -list``: how many of ``num_nodes`` hold it."""

    datacenter: str
    pool: str
    key: str
    count: int
    num_nodes: int


@dataclass(frozen=True, slots=True)
class KeyringMessage:
    """What one node said about a key operation (usually why it failed)."""

    datacenter: str
    pool: str
    node: str
    message: str


@dataclass(frozen=True, slots=True)
class KeyringInfo:
    """How a key operation went on one pool: its node count and error ("" for success)."""

    datacenter: str
    pool: str
    num_nodes: int
    error: str


@dataclass(frozen=True, slots=True)
class KeyringResult:
    """Consul 0.7's keyring reply: one :class:`KeyringInfo` per pool (WAN, then the LAN),
    the nodes' messages and (for a list) the keys."""

    info: list[KeyringInfo]
    messages: list[KeyringMessage]
    keys: list[KeyringEntry]

    @property
    def failed(self) -> list[KeyringInfo]:
        """The pools where the operation failed."""
        return [info for info in self.info if info.error]


@dataclass(frozen=True, slots=True)
class SerfKeyResult:
    """Serf's key reply: each node's message, the keys (a list) with how many nodes hold each,
    and the counts."""

    messages: dict[str, str]
    keys: dict[str, int]
    num_nodes: int
    num_resp: int
    num_err: int


class KeyOperationError(RPCError):
    """A Serf key operation failed on some node (``1/3 nodes reported failure``): ``result``
    says which nodes and why."""

    def __init__(self, error: str, result: SerfKeyResult) -> None:
        super().__init__(error)
        self.result = result


def _check_timeout(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and value > 0 and not math.isinf(value)):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class BaseClient:
    """A connection to an agent's RPC endpoint; an async context manager.

    ``address``: ``HOST:PORT`` (port 8400 if left out), ``unix:///path``, an
    :class:`~agentrpc.transports.Address`, or None for ``$AGENTRPC_RPC_ADDR``, else
    ``127.0.0.1:8400``. ``token``: None for ``$AGENTRPC_RPC_TOKEN``, else "". ``stream``: an
    already connected stream (``await agent.connect()``) instead of dialling.
    ``connect_timeout`` bounds the dial, ``handshake_timeout`` the handshake after it.

    Raises :class:`InvalidAddressError` at once for an address that does not parse.
    """

    _default_address: ClassVar[str] = DEFAULT_ADDRESS
    _default_port: ClassVar[int] = DEFAULT_RPC_PORT
    _env_address: ClassVar[str] = ENV_RPC_ADDR
    _not_an_agent_hint: ClassVar[str] = NOT_AN_AGENT_HINT
    """What the errors of a peer that does not speak this dialect tell the user to check."""

    def __init__(
        self,
        address: str | Address | None = None,
        *,
        token: str | None = None,
        stream: trio.abc.Stream | None = None,
        network: MemoryNetwork = DEFAULT_NETWORK,
        connect_timeout: float = DEFAULT_TIMEOUT,
        handshake_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if address is None and stream is None:
            address = os.environ.get(self._env_address) or self._default_address
        if isinstance(address, str):
            try:
                address = parse_address(address, default_port=self._default_port)
            except AddressError as exc:
                raise InvalidAddressError(str(exc)) from None
        self.address = address
        self._where = str(address) if address is not None else "the peer"
        self._agent = f"the agent at {address}" if address is not None else "the agent"
        self._token = os.environ.get(ENV_RPC_TOKEN, "") if token is None else token
        self._stream = stream
        self._network = network
        self._connect_timeout = _check_timeout("connect_timeout", connect_timeout)
        self._handshake_timeout = _check_timeout("handshake_timeout", handshake_timeout)
        self._encoder = RequestEncoder()
        self._decoder = ResponseDecoder()
        self._seq = 0
        self._waiters: dict[int, _Pending] = {}
        self._streams: dict[int, _Sink] = {}
        self._write_lock = trio.Lock()
        self._closed = False
        self._lost = False
        self._close_reason = "the client is closed"
        self._exit_stack: AsyncExitStack | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        if self._closed:
            raise AgentGoneError(self._close_reason, address=self._where)
        if self._stream is None:
            self._stream = await self._dial()
        try:
            await self._handshake()
        except BaseException:
            self._mark_closed("the handshake failed", lost=False)
            await trio.aclose_forcefully(self._stream)
            raise
        stack = AsyncExitStack()
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.push_async_callback(self._shutdown_reader, nursery)
        nursery.start_soon(self._read_responses)
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
        assert self.address is not None
        where = self._where
        timeout = self._connect_timeout
        try:
            with trio.move_on_after(timeout):
                return await connect(self.address, network=self._network)
        except (OSError, trio.BrokenResourceError) as exc:
            raise AgentConnectionError(f"dial {where}: {_reason(exc)}", address=where) from None
        raise AgentTimeoutError(
            f"dial {where}: timed out after {timeout:g} s", address=where, timeout=timeout
        )

    async def _handshake(self) -> None:
        """Send the handshake and read its reply before the reader task starts, so that each
        way a peer can fail it is one plain exception."""
        seq = self._next_seq()
        self._decoder.expect(seq, body=False)
        frame = self._encoder.request(HANDSHAKE, seq, {"Version": RPC_VERSION}, self._token)
        where = self._where
        timeout = self._handshake_timeout
        response: Response | None = None
        with trio.move_on_after(timeout):
            response = await self._exchange_handshake(seq, frame)
        if response is None:
            raise AgentTimeoutError(
                f"{where} accepted the connection but did not answer the handshake within "
                f"{timeout:g} s (a stopped or overloaded agent, or not an agent RPC port)",
                address=where,
                timeout=timeout,
            )
        if response.error:
            raise rpc_error(response.error)

    async def _exchange_handshake(self, seq: int, frame: bytes) -> Response:
        assert self._stream is not None
        stream = self._stream
        decoder = self._decoder
        where = self._where
        received = 0
        try:
            await stream.send_all(frame)
            while received <= HANDSHAKE_READ_LIMIT:
                data = await stream.receive_some(READ_SIZE)
                if not data:
                    break
                received += len(data)
                decoder.feed(data)
                for response in decoder:
                    if response.seq == seq:
                        return response
        except ProtocolError as exc:
            raise NotAnAgentError(
                f"{where} does not speak the agent RPC (its answer to the handshake: {exc}); "
                f"{self._not_an_agent_hint}",
                address=where,
            ) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise NotAnAgentError(
                f"{where} closed the connection without answering the handshake "
                f"({_reason(exc)}); {self._not_an_agent_hint}",
                address=where,
            ) from None
        if received > HANDSHAKE_READ_LIMIT:
            raise NotAnAgentError(
                f"{where} sent {received} bytes without answering the handshake; "
                f"{self._not_an_agent_hint}",
                address=where,
            )
        raise NotAnAgentError(
            f"{where} closed the connection without answering the handshake (is the agent "
            f"refusing connections, or is it not an agent RPC port?); {self._not_an_agent_hint}",
            address=where,
        )

    async def _shutdown_reader(self, nursery: trio.Nursery) -> None:
        await self.aclose()
        nursery.cancel_scope.cancel()

    async def aclose(self) -> None:
        """Close the connection; pending calls fail with :class:`AgentGoneError`."""
        self._mark_closed("the client is closed", lost=False)
        if self._stream is not None:
            await trio.aclose_forcefully(self._stream)

    @property
    def closed(self) -> bool:
        return self._closed

    def _mark_closed(self, reason: str, *, lost: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self._lost = lost
        self._close_reason = reason
        for pending in self._waiters.values():
            pending.done.set()
        for sink in self._streams.values():
            sink.channel.close()
        self._streams.clear()

    def _gone_error(self) -> AgentGoneError | None:
        """The error for a stream that ended because the connection was lost, else None."""
        if not self._lost:
            return None
        return AgentGoneError(self._close_reason, address=self._where)

    # ------------------------------------------------------------------ plumbing

    async def _read_responses(self) -> None:
        assert self._stream is not None
        stream = self._stream
        decoder = self._decoder
        reason = f"{self._agent} closed the connection (did it stop or crash?)"
        try:
            while True:
                for response in decoder:
                    self._deliver(response)
                data = await stream.receive_some(READ_SIZE)
                if not data:
                    break
                decoder.feed(data)
                await trio.lowlevel.checkpoint()
        except ProtocolError as exc:
            reason = f"bad response from {self._agent}: {exc}"
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            reason = f"connection to {self._agent} lost: {_reason(exc)}"
        self._mark_closed(reason, lost=True)

    def _deliver(self, response: Response) -> None:
        seq = response.seq
        pending = self._waiters.pop(seq, None)
        if pending is None:
            sink = self._streams.get(seq)
            if sink is None:
                return
            if sink.done is not None and sink.done(response.body):
                # A query's last record: nothing more comes for this Seq.
                self._streams.pop(seq, None)
                self._decoder.forget(seq)
                sink.channel.close()
                return
            item = sink.extract(response.body)
            if item is not None:
                try:
                    sink.channel.send_nowait(item)
                except trio.WouldBlock:
                    sink.owner.dropped += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the stream's block has exited; its Seq is still expected
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
            if not self._closed:
                self._mark_closed(f"connection to {self._agent} lost: {_reason(exc)}", lost=True)
            raise AgentGoneError(self._close_reason, address=self._where) from None

    async def _call(
        self,
        command: str,
        body: Any = None,
        *,
        reply_body: bool = False,
        stream: _Sink | None = None,
    ) -> Response:
        if self._closed:
            raise AgentGoneError(self._close_reason, address=self._where)
        if self._exit_stack is None:
            raise ClientError("the client is not connected: use `async with Client(...) as c`")
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
            raise AgentGoneError(self._close_reason, address=self._where)
        return pending.response

    async def _simple(self, command: str, body: Any = None) -> None:
        response = await self._call(command, body)
        if response.error:
            raise rpc_error(response.error)

    # ------------------------------------------------------------------ both dialects

    async def leave(self) -> None:
        """Gracefully leave the cluster; the agent then shuts down."""
        await self._simple(LEAVE)

    async def stats(self) -> dict[str, dict[str, str]]:
        response = await self._call(STATS, reply_body=True)
        if response.error:
            raise rpc_error(response.error)
        body = response.body
        if not isinstance(body, dict):
            raise ClientError(f"unexpected stats body from the agent: {body!r:.200}")
        return {
            _shown(section): {_shown(k): _shown(v) for k, v in values.items()}
            for section, values in body.items()
            if isinstance(values, dict)
        }

    async def _open_stream(
        self,
        command: str,
        body: Any,
        make: Callable[[int, trio.MemoryReceiveChannel[Any], BaseClient], _Stream[Any]],
        extract: Callable[[Any], Any],
        done: Callable[[Any], bool] | None = None,
    ) -> _Stream[Any]:
        """Send a streaming command; its items go to the stream it returns, from the ack on.
        Raises the agent's error when it refuses to start the stream."""
        send, receive = trio.open_memory_channel[Any](STREAM_BUFFER)
        stream = make(self._seq + 1, receive, self)
        sink = _Sink(send, extract, stream)
        sink.done = done
        response = await self._call(command, body, stream=sink)
        assert response.seq == stream.seq  # _call numbered it before its first await
        if response.error:
            self._streams.pop(response.seq, None)
            raise rpc_error(response.error)
        return stream

    async def _stop_stream(self, stream: _Stream[Any]) -> None:
        """End a stream of ours: ``stop``, bounded and shielded. Frames of its Seq that come
        after the reply (serf's agent sends the lines it had queued) are read and dropped."""
        seq = stream.seq
        sink = self._streams.get(seq)
        stream._items.close()
        if not self._closed:
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(STOP_TIMEOUT),
                suppress(AgentConnectionError),
            ):
                await self._call(STOP, {"Stop": seq})
        if self._streams.get(seq) is sink:
            self._streams.pop(seq, None)
        # Not forget: serf may still send frames of this Seq after the stop reply.
        self._decoder.retire(seq)

    @asynccontextmanager
    async def monitor(self, level: str = "INFO") -> AsyncIterator[MonitorStream]:
        """Stream the agent's log lines at ``level`` or above; ``stop`` is sent on exit.

        Raises :class:`RPCError` (``Unknown log level: ...``) when the agent refuses the
        level; iterating raises :class:`AgentGoneError` when the connection is lost."""
        stream = await self._open_stream(MONITOR, {"LogLevel": level}, MonitorStream, _log_line)
        assert isinstance(stream, MonitorStream)
        try:
            yield stream
        finally:
            await self._stop_stream(stream)


class Client(BaseClient):
    """A connection to an agent's RPC endpoint (Consul 0.7's dialect); an async context
    manager. See :class:`BaseClient` for the address, the deadlines and the errors."""

    # ------------------------------------------------------------------ commands

    async def members_lan(self) -> list[Member]:
        """Every member of the LAN pool."""
        return await self._members(MEMBERS_LAN)

    async def members_wan(self) -> list[Member]:
        """Every member of the WAN pool (empty on a client-mode agent)."""
        return await self._members(MEMBERS_WAN)

    async def members(self, *, wan: bool = False) -> list[Member]:
        return await self._members(MEMBERS_WAN if wan else MEMBERS_LAN)

    async def _members(self, command: str, body: Any = None) -> list[Member]:
        response = await self._call(command, body, reply_body=True)
        if response.error:
            raise rpc_error(response.error)
        return _members_of(command, response.body)

    async def join(self, addresses: Sequence[str], *, wan: bool = False) -> int:
        """Join through ``addresses``; returns how many were contacted.

        Raises :class:`JoinError` (with ``num``) when the agent reports an error.
        """
        body = {"Existing": list(addresses), "WAN": wan}
        response = await self._call(JOIN, body, reply_body=True)
        num = response.body.get("Num", 0) if isinstance(response.body, dict) else 0
        if not isinstance(num, int):
            num = 0
        if response.error == ERR_PERMISSION_DENIED:
            raise PermissionDeniedError(response.error)
        if response.error:
            raise JoinError(response.error, num)
        return num

    async def force_leave(self, node: str) -> None:
        await self._simple(FORCE_LEAVE, {"Node": node})

    async def reload(self) -> None:
        """Reload the agent's configuration; raises :class:`RPCError` if it is invalid."""
        await self._simple(RELOAD)

    # ------------------------------------------------------------------ keyring (Consul 0.7)

    async def install_key(self, key: str) -> KeyringResult:
        """Install a base64 gossip key on every node of the LAN and WAN pools (a server's).
        A pool that failed shows in :attr:`KeyringResult.failed`; the call raises only when
        the agent refuses (a client agent: ``keyring operations must run against a server
        node``)."""
        return await self._keyring(INSTALL_KEY, key)

    async def use_key(self, key: str) -> KeyringResult:
        """Make an installed key the primary one (used to encrypt) on every node."""
        return await self._keyring(USE_KEY, key)

    async def remove_key(self, key: str) -> KeyringResult:
        """Remove a key that is not the primary one from every node."""
        return await self._keyring(REMOVE_KEY, key)

    async def list_keys(self) -> KeyringResult:
        """Every key of every node, counted per pool."""
        return await self._keyring(LIST_KEYS, None)

    async def _keyring(self, command: str, key: str | None) -> KeyringResult:
        body = None if key is None else {"Key": key}
        response = await self._call(command, body, reply_body=True)
        if response.error:
            raise rpc_error(response.error)
        try:
            return _keyring_result(response.body)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ClientError(f"unexpected {command} body from the agent: {exc}") from None


class SerfClient(BaseClient):
    """A connection to Serf's own agent RPC dialect (``serf agent``'s ``-rpc-addr``, or our
    agent's ``serf_rpc_addr``); an async context manager, as :class:`Client`::

        async with SerfClient("127.0.0.1:7373") as serf:
            await serf.event("deploy", b"v2")
            async with serf.query("status", timeout=2.0) as replies:
                async for reply in replies:
                    print(reply)

    ``address`` defaults to ``$AGENTRPC_SERF_RPC_ADDR``, else ``127.0.0.1:7373`` (port 7373
    when left out); ``auth_key`` (``$AGENTRPC_SERF_RPC_AUTH`` when None) is sent with
    ``auth`` right after the handshake when not empty. Streams (``stream``, ``query``,
    ``monitor``) are async context managers, as the monitor of :class:`Client`."""

    _default_address: ClassVar[str] = DEFAULT_SERF_ADDRESS
    _default_port: ClassVar[int] = DEFAULT_SERF_RPC_PORT
    _not_an_agent_hint: ClassVar[str] = SERF_NOT_AN_AGENT_HINT
    _env_address: ClassVar[str] = ENV_SERF_RPC_ADDR

    def __init__(
        self,
        address: str | Address | None = None,
        *,
        auth_key: str | None = None,
        stream: trio.abc.Stream | None = None,
        network: MemoryNetwork = DEFAULT_NETWORK,
        connect_timeout: float = DEFAULT_TIMEOUT,
        handshake_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(
            address,
            token="",
            stream=stream,
            network=network,
            connect_timeout=connect_timeout,
            handshake_timeout=handshake_timeout,
        )
        self._auth_key = os.environ.get(ENV_SERF_RPC_AUTH, "") if auth_key is None else auth_key

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        if self._auth_key:
            try:
                with trio.fail_after(self._handshake_timeout):
                    await self._simple(AUTH, {"AuthKey": self._auth_key})
            except BaseException as exc:
                stack, self._exit_stack = self._exit_stack, None
                assert stack is not None
                await stack.aclose()
                if isinstance(exc, trio.TooSlowError):
                    raise AgentTimeoutError(
                        f"{self._where} did not answer auth within {self._handshake_timeout:g} s",
                        address=self._where,
                        timeout=self._handshake_timeout,
                    ) from None
                raise
        return self

    # ------------------------------------------------------------------ members and gossip

    async def members(self) -> list[Member]:
        """Every member of the pool, in any status."""
        return await self._members(MEMBERS)

    async def members_filtered(
        self, *, tags: Mapping[str, str] | None = None, status: str = "", name: str = ""
    ) -> list[Member]:
        """The members whose tags, status and name match these regular expressions whole
        (serf's ``members -tag/-status/-name``)."""
        body = {"Tags": dict(tags or {}), "Status": status, "Name": name}
        return await self._members(MEMBERS_FILTERED, body)

    async def _members(self, command: str, body: Any = None) -> list[Member]:
        response = await self._call(command, body, reply_body=True)
        if response.error:
            raise rpc_error(response.error)
        return _members_of(command, response.body)

    async def join(self, addresses: Sequence[str], *, replay: bool = False) -> int:
        """Join through ``addresses`` (``replay``: deliver the user events older than the
        join too); returns how many answered. Raises :class:`JoinError` when none did."""
        body = {"Existing": list(addresses), "Replay": replay}
        response = await self._call(JOIN, body, reply_body=True)
        num = response.body.get("Num", 0) if isinstance(response.body, dict) else 0
        if response.error:
            raise JoinError(response.error, num if isinstance(num, int) else 0)
        return num if isinstance(num, int) else 0

    async def force_leave(self, node: str, *, prune: bool = False) -> None:
        """Move a failed node to left (``prune``: and forget it at once)."""
        await self._simple(FORCE_LEAVE, {"Node": node, "Prune": prune})

    async def event(self, name: str, payload: bytes = b"", *, coalesce: bool = True) -> None:
        """Send a user event to the pool (``serf event``); raises :class:`RPCError` with
        serf's text when it is too large."""
        await self._simple(EVENT, {"Name": name, "Payload": payload, "Coalesce": coalesce})

    async def update_tags(
        self, tags: Mapping[str, str] | None = None, delete: Sequence[str] = ()
    ) -> None:
        """Set ``tags`` and delete the tags named in ``delete`` (``serf tags``)."""
        await self._simple(TAGS, {"Tags": dict(tags or {}), "DeleteTags": list(delete)})

    async def get_coordinate(self, node: str) -> Coordinate | None:
        """The network coordinate the agent holds for ``node`` (None when it has none)."""
        response = await self._call(GET_COORDINATE, {"Node": node}, reply_body=True)
        if response.error:
            raise rpc_error(response.error)
        body = response.body
        if not isinstance(body, dict) or not body.get("Ok"):
            return None
        coord = body.get("Coord")
        if not isinstance(coord, dict):
            raise ClientError(f"unexpected get-coordinate body from the agent: {body!r:.200}")
        try:
            return Coordinate(
                tuple(float(x) for x in coord.get("Vec") or ()),
                float(coord.get("Error") or 0.0),
                float(coord.get("Adjustment") or 0.0),
                float(coord.get("Height") or 0.0),
            )
        except (TypeError, ValueError) as exc:
            raise ClientError(f"unexpected get-coordinate body from the agent: {exc}") from None

    async def rtt(self, node: str, other: str | None = None) -> float:
        """The estimated round trip time between two nodes, in seconds (``serf rtt``): to
        the agent's own node when ``other`` is None. Raises :class:`RPCError` naming the node
        without a coordinate."""
        if other is None:
            other = (await self.stats()).get("agent", {}).get("name", "")
        first = await self.get_coordinate(node)
        if first is None:
            raise RPCError(f"Could not find a coordinate for node {node!r}")
        second = await self.get_coordinate(other)
        if second is None:
            raise RPCError(f"Could not find a coordinate for node {other!r}")
        try:
            return first.distance_to(second)
        except CoordinateError as exc:
            raise RPCError(f"Could not compute the rtt: {exc}") from None

    # ------------------------------------------------------------------ keys

    async def install_key(self, key: str) -> SerfKeyResult:
        """Install a base64 key on every member. Raises :class:`KeyOperationError` (with
        the nodes' messages) when some node failed or did not answer."""
        return await self._key(INSTALL_KEY, key)

    async def use_key(self, key: str) -> SerfKeyResult:
        return await self._key(USE_KEY, key)

    async def remove_key(self, key: str) -> SerfKeyResult:
        return await self._key(REMOVE_KEY, key)

    async def list_keys(self) -> SerfKeyResult:
        """Every member's keys, counted."""
        return await self._key(LIST_KEYS, None)

    async def _key(self, command: str, key: str | None) -> SerfKeyResult:
        body = None if key is None else {"Key": key}
        response = await self._call(command, body, reply_body=True)
        data = response.body if isinstance(response.body, dict) else {}
        result = SerfKeyResult(
            messages={_text(k): _text(v) for k, v in (data.get("Messages") or {}).items()},
            keys={_text(k): _count(v) for k, v in (data.get("Keys") or {}).items()},
            num_nodes=_count(data.get("NumNodes")),
            num_resp=_count(data.get("NumResp")),
            num_err=_count(data.get("NumErr")),
        )
        if response.error == ERR_PERMISSION_DENIED:
            raise PermissionDeniedError(response.error)
        if response.error:
            raise KeyOperationError(response.error, result)
        return result

    # ------------------------------------------------------------------ streams

    @asynccontextmanager
    async def stream(self, kinds: str = "*") -> AsyncIterator[EventStream]:
        """Stream the pool's events that ``kinds`` selects (serf's filter:
        ``member-join,user:deploy,query``; ``*`` for all); ``stop`` is sent on exit."""
        stream = await self._open_stream(STREAM, {"Type": kinds}, EventStream, _event_record)
        assert isinstance(stream, EventStream)
        try:
            yield stream
        finally:
            await self._stop_stream(stream)

    @asynccontextmanager
    async def query(
        self,
        name: str,
        payload: bytes = b"",
        *,
        filter_nodes: Sequence[str] = (),
        filter_tags: Mapping[str, str] | None = None,
        request_ack: bool = False,
        relay_factor: int = 0,
        timeout: float = 0.0,  # noqa: ASYNC109 - the query's own lifetime, sent to the agent
    ) -> AsyncIterator[QueryStream]:
        """Send a query; iterate its :class:`QueryAck` (with ``request_ack``) and
        :class:`QueryResponse` items until the deadline (``timeout`` 0: serf's default).
        Leaving the block early stops reading: the rest is discarded as it arrives."""
        body = {
            "FilterNodes": list(filter_nodes),
            "FilterTags": dict(filter_tags or {}),
            "RequestAck": request_ack,
            "RelayFactor": relay_factor,
            "Timeout": max(0, int(timeout * 1e9)),
            "Name": name,
            "Payload": payload,
        }
        stream = await self._open_stream(QUERY, body, QueryStream, _query_item, _query_done)
        assert isinstance(stream, QueryStream)
        try:
            yield stream
        finally:
            # Serf has no stop for a query: its records keep coming until done, and are
            # read and dropped (the Seq stays known to the decoder until then).
            stream._items.close()

    async def respond(self, query_id: int, payload: bytes = b"") -> None:
        """Answer a query a :meth:`stream` delivered (its record's ``ID``)."""
        await self._simple(RESPOND, {"ID": query_id, "Payload": payload})


def _members_of(command: str, body: Any) -> list[Member]:
    if not isinstance(body, dict) or not isinstance(body.get("Members", []), list):
        raise ClientError(f"unexpected {command} body from the agent: {body!r:.200}")
    try:
        return [Member.from_wire(item) for item in body.get("Members") or []]
    except ProtocolError as exc:
        raise ClientError(f"unexpected {command} body from the agent: {exc}") from None


def _event_record(body: Any) -> dict[str, Any] | None:
    """A stream record with text keys, and ``Members`` as :class:`Member` values."""
    if not isinstance(body, dict):
        return None
    record = {_text(key): value for key, value in body.items()}
    members = record.get("Members")
    if isinstance(members, list):
        try:
            record["Members"] = [Member.from_wire(item) for item in members]
        except ProtocolError:
            return None
    for key in ("Event", "Name"):
        if key in record:
            record[key] = _text(record[key])
    return record


def _query_item(body: Any) -> QueryAck | QueryResponse | None:
    if not isinstance(body, dict):
        return None
    kind = _text(body.get("Type"))
    if kind == QUERY_RECORD_ACK:
        return QueryAck(_text(body.get("From")))
    if kind == QUERY_RECORD_RESPONSE:
        payload = body.get("Payload")
        if isinstance(payload, str):
            payload = payload.encode("utf-8", "surrogateescape")
        return QueryResponse(_text(body.get("From")), payload or b"")
    return None


def _query_done(body: Any) -> bool:
    return isinstance(body, dict) and _text(body.get("Type")) == QUERY_RECORD_DONE


def _log_line(body: Any) -> str | None:
    return as_text(body.get("Log")) if isinstance(body, dict) else None


def _text(value: object) -> str:
    text = as_text(value)
    return "" if text is None else text


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _keyring_result(body: Any) -> KeyringResult:
    """Consul 0.7's ``keyringResponse`` (nil lists are empty)."""
    if not isinstance(body, dict):
        raise ValueError(f"not a map: {body!r:.200}")
    info = [
        KeyringInfo(
            _text(item.get("Datacenter")),
            _text(item.get("Pool")),
            _count(item.get("NumNodes")),
            _text(item.get("Error")),
        )
        for item in body.get("Info") or []
    ]
    nodes = {(entry.datacenter, entry.pool): entry.num_nodes for entry in info}
    keys = []
    for item in body.get("Keys") or []:
        datacenter, pool = _text(item.get("Datacenter")), _text(item.get("Pool"))
        keys.append(
            KeyringEntry(
                datacenter,
                pool,
                _text(item.get("Key")),
                _count(item.get("Count")),
                nodes.get((datacenter, pool), 0),
            )
        )
    messages = [
        KeyringMessage(
            _text(item.get("Datacenter")),
            _text(item.get("Pool")),
            _text(item.get("Node")),
            _text(item.get("Message")),
        )
        for item in body.get("Messages") or []
    ]
    return KeyringResult(info, messages, keys)


def _reason(exc: BaseException) -> str:
    """An I/O error's reason, in lower case ("connection reset by peer")."""
    if isinstance(exc, OSError):
        return describe_connect_error(exc)
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError):
        return describe_connect_error(cause)
    return str(exc) or type(exc).__name__


def _shown(value: object) -> str:
    """A stats key or value as text: a wire string (str or bin) as such, anything else
    (a number from a lenient agent) as ``str()`` gives it."""
    text = as_text(value)
    return str(value) if text is None else text


__all__ = [
    "DEFAULT_SERF_ADDRESS",
    "DEFAULT_TIMEOUT",
    "ENV_RPC_ADDR",
    "ENV_RPC_TOKEN",
    "ENV_SERF_RPC_ADDR",
    "ENV_SERF_RPC_AUTH",
    "AgentConnectionError",
    "AgentGoneError",
    "AgentTimeoutError",
    "BaseClient",
    "Client",
    "ClientError",
    "EventStream",
    "InvalidAddressError",
    "JoinError",
    "KeyOperationError",
    "KeyringEntry",
    "KeyringInfo",
    "KeyringMessage",
    "KeyringResult",
    "MonitorStream",
    "NotAnAgentError",
    "PermissionDeniedError",
    "QueryAck",
    "QueryResponse",
    "QueryStream",
    "RPCError",
    "SerfClient",
    "SerfKeyResult",
]
