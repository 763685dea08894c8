"""The DNS interface's Trio server: UDP and TCP on one address, answering from the catalog.

A thin layer over :mod:`agentrpc.dns.resolver`: it moves bytes, makes the catalog calls a
:class:`~agentrpc.dns.resolver.Resolution` asks for through the in-process call it was given
(``ServerPort.call_local``), and counts. Wiring, for the agent::

    dns = DNSServer(dns_config, datacenter=config.datacenter, node_name=config.node_name,
                    call=server_port.call_local, logger=hub.logger("agent.dns"))
    address = await nursery.start(dns.run, config.dns_addr)   # really bound (port 0 works)
    ...
    dns.reconfigure(new_dns_config)    # on reload: applies to the next query
    dns.shutdown()                     # run() returns (or cancel its nursery)

Bounds (everything a client can cause): UDP datagrams wait in a queue of ``udp_queue``
(past it they are dropped and counted) for ``udp_workers`` tasks that answer them, so at most
that many catalog calls run for UDP at once; at most ``max_tcp_connections`` TCP connections
(more are closed at once and counted), each answered one message at a time, closed after
``tcp_idle_timeout`` without a whole message, or when a reply cannot be written within
``tcp_write_timeout``; a TCP connection holds at most one message (64 KiB) and one read. A
catalog call that takes longer than ``call_timeout`` is answered SERVFAIL. Undecodable
packets, responses and signed queries are dropped and counted, never answered; no reply is
larger than the query allows (512 bytes, its EDNS0 size up to ``max_udp_size``, or 64 KiB over
TCP). Every log line a client can cause is throttled per kind and carries at most 200
characters of anything it sent.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Final

import trio

from ..gossip.contract import GossipAddress, GossipTransport, PacketConnection, StreamListener
from ..gossip.transport import UdpTcpTransport
from ..hostport import HostPortError, split_host_port
from ..log_protocol import (
    DEBUG,
    ERR,
    WARN,
    LogLike,
    NullLog,
    clip,
    describe_failure,
    first_leaf,
)
from ..serverport.endpoints import RemoteError, RPCCallError
from .resolver import CatalogCall, Resolution, Respond, servfail
from .settings import DNS_PORT, DNSConfig
from .wire import Drop, Refusal, TCPFramer, Transport, decode_query, frame

__all__ = ["CatalogCaller", "DNSLimits", "DNSServer", "DNSStats", "parse_bind_address"]

CatalogCaller = Callable[[str, Any], Awaitable[Any]]
"""``ServerPort.call_local``: an endpoint name and its request body in, the reply body out;
:class:`~agentrpc.serverport.endpoints.RemoteError` or
:class:`~agentrpc.serverport.endpoints.RPCCallError` when there is none."""

READ_SIZE: Final = 65536
MAX_CALLS_PER_QUERY: Final = 4
"""A resolution asks for at most two calls; this guard ends any loop past it."""


@dataclass(frozen=True, slots=True)
class DNSLimits:
    udp_workers: int = 32
    """UDP queries answered at once."""
    udp_queue: int = 512
    """UDP queries waiting for a worker; past it a datagram is dropped and counted."""
    max_tcp_connections: int = 256
    tcp_idle_timeout: float = 8.0
    """Seconds a TCP connection may take to send its next whole message (miekg's 8 s)."""
    tcp_write_timeout: float = 2.0
    """Seconds a reply may take to be written to a TCP connection (miekg's 2 s)."""
    call_timeout: float = 10.0
    """Seconds a catalog call may take before the query is answered SERVFAIL."""


@dataclass(slots=True)
class DNSStats:
    udp_queries: int = 0
    tcp_queries: int = 0
    answered: int = 0
    nxdomain: int = 0
    servfail: int = 0
    truncated: int = 0
    refused: int = 0
    """FORMERR (no question) and NOTIMP (an opcode other than QUERY) replies."""
    malformed: int = 0
    """Packets that do not decode as DNS: dropped."""
    ignored_responses: int = 0
    ignored_signed: int = 0
    udp_overflow: int = 0
    """Datagrams dropped because every worker was busy and the queue was full."""
    tcp_connections: int = 0
    """Open now."""
    tcp_refused: int = 0
    tcp_idle_closed: int = 0
    tcp_write_timeouts: int = 0
    """Connections closed because a reply could not be written in time (a peer not reading)."""
    failures: int = 0
    """Queries whose answering went wrong (a bug): answered SERVFAIL, logged."""

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


def parse_bind_address(text: str) -> GossipAddress:
    """``host:port`` (``[v6]:port``) to bind; the host must be an IP literal, the port defaults
    to 8600."""
    try:
        host, port_text = split_host_port(text.strip())
    except HostPortError as exc:
        raise ValueError(f"dns_addr: {exc}") from None
    if not host:
        raise ValueError(f"dns_addr needs an explicit IP address: {text!r}")
    try:
        port = DNS_PORT if port_text is None else int(port_text)
    except ValueError:
        raise ValueError(f"dns_addr: bad port in {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"dns_addr: port out of range in {text!r}")
    return GossipAddress(host, port)


class DNSServer:
    """Answers DNS for ``config.domain`` over UDP and TCP; see the module's docstring."""

    def __init__(
        self,
        config: DNSConfig,
        *,
        datacenter: str,
        call: CatalogCaller,
        logger: LogLike | None = None,
        node_name: str = "",
        limits: DNSLimits | None = None,
        transport: GossipTransport | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.datacenter = datacenter
        self.node_name = node_name
        self.limits = limits or DNSLimits()
        self.stats = DNSStats()
        self.address: GossipAddress | None = None
        """The address really bound (known once :meth:`run` has started)."""
        self._call = call
        self._log: LogLike = logger or NullLog()
        self._transport: GossipTransport = transport or UdpTcpTransport()
        self._clock = clock
        self._rng = rng or random.Random()
        self._shutdown = trio.Event()

    def reconfigure(self, config: DNSConfig) -> None:
        """New settings for the queries that start after this call."""
        self.config = config

    def shutdown(self) -> None:
        """Stop serving: :meth:`run` returns, open connections are closed."""
        self._shutdown.set()

    async def run(
        self,
        bind: str | GossipAddress,
        *,
        task_status: trio.TaskStatus[GossipAddress] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Bind UDP and TCP on ``bind`` (port 0 picks one free for both), report the bound
        address, and serve until :meth:`shutdown` or cancellation."""
        address = bind if isinstance(bind, GossipAddress) else parse_bind_address(bind)
        packets, listener = await self._transport.bind(address)
        self.address = packets.local_address
        self._log.info(f"dns: listening on {self.address} (udp, tcp)")
        limits = self.limits
        try:
            async with trio.open_nursery() as nursery:
                send, receive = trio.open_memory_channel[tuple[bytes, GossipAddress]](
                    limits.udp_queue
                )
                nursery.start_soon(self._udp_reader, packets, send)
                async with receive:
                    for _ in range(limits.udp_workers):
                        nursery.start_soon(self._udp_worker, packets, receive.clone())
                nursery.start_soon(self._tcp_acceptor, listener)
                task_status.started(self.address)
                await self._shutdown.wait()
                nursery.cancel_scope.cancel()
        finally:
            packets.close()
            with trio.CancelScope(shield=True):
                await listener.aclose()
            self._log.info(f"dns: stopped listening on {self.address}")

    # ------------------------------------------------------------------ UDP

    async def _udp_reader(
        self, packets: PacketConnection, send: trio.MemorySendChannel[tuple[bytes, GossipAddress]]
    ) -> None:
        async with send:
            while True:
                data, peer = await packets.receive_from()
                try:
                    send.send_nowait((data, peer))
                except trio.WouldBlock:
                    self.stats.udp_overflow += 1
                    self._log.throttled(
                        WARN,
                        "dns:udp-overflow",
                        "dns: every worker is busy and the queue is full: dropping queries",
                    )

    async def _udp_worker(
        self,
        packets: PacketConnection,
        receive: trio.MemoryReceiveChannel[tuple[bytes, GossipAddress]],
    ) -> None:
        async with receive:
            async for data, peer in receive:
                self.stats.udp_queries += 1
                wire = await self.answer(data, "udp", str(peer))
                if wire is not None:
                    await packets.send_to(wire, peer)

    # ------------------------------------------------------------------ TCP

    async def _tcp_acceptor(self, listener: StreamListener) -> None:
        async with trio.open_nursery() as connections:
            while True:
                try:
                    stream, peer = await listener.accept()
                except OSError as exc:
                    # Out of file descriptors and the like: wait a little, as trio.serve does.
                    self._log.throttled(ERR, "dns:accept", f"dns: accept failed: {clip(exc)}")
                    await trio.sleep(0.1)
                    continue
                if self.stats.tcp_connections >= self.limits.max_tcp_connections:
                    self.stats.tcp_refused += 1
                    self._log.throttled(
                        WARN,
                        "dns:tcp-refused",
                        f"dns: too many TCP connections "
                        f"({self.limits.max_tcp_connections}): closing one from {peer}",
                    )
                    await trio.aclose_forcefully(stream)
                    continue
                self.stats.tcp_connections += 1
                connections.start_soon(self._tcp_connection, stream, str(peer))

    async def _tcp_connection(self, stream: trio.abc.Stream, peer: str) -> None:
        try:
            await self._guarded(peer, self._tcp_messages(stream, peer))
        finally:
            self.stats.tcp_connections -= 1
            await trio.aclose_forcefully(stream)

    async def _guarded(self, peer: str, work: Awaitable[None]) -> None:
        """A connection's ending that the peer caused is a DEBUG line; anything else is a bug,
        logged loudly (throttled) while everyone else is still served."""
        try:
            await work
        except* (trio.BrokenResourceError, trio.ClosedResourceError) as group:
            self._log.throttled(
                DEBUG,
                "dns:tcp-ended",
                f"dns: TCP connection from {peer} ended: {clip(repr(first_leaf(group)))}",
            )
        except* Exception as group:
            self.stats.failures += 1
            self._log.throttled(
                ERR,
                "dns:tcp-failed",
                f"dns: TCP connection from {peer} failed: {describe_failure(group)}",
            )

    async def _tcp_messages(self, stream: trio.abc.Stream, peer: str) -> None:
        framer = TCPFramer()
        limits = self.limits
        while True:
            message: bytes | None = None
            with trio.move_on_after(limits.tcp_idle_timeout) as idle:
                while True:
                    try:
                        message = framer.next_message()
                    except ValueError as exc:
                        self.stats.malformed += 1
                        self._log.throttled(
                            DEBUG, "dns:tcp-malformed", f"dns: closing TCP from {peer}: {exc}"
                        )
                        return
                    if message is not None:
                        break
                    data = await stream.receive_some(max(framer.needed(), 2))
                    if not data:
                        return
                    framer.feed(bytes(data))
            if idle.cancelled_caught:
                self.stats.tcp_idle_closed += 1
                self._log.throttled(
                    DEBUG, "dns:tcp-idle", f"dns: closing idle TCP connection from {peer}"
                )
                return
            assert message is not None
            self.stats.tcp_queries += 1
            wire = await self.answer(message, "tcp", peer)
            if wire is None:
                return  # not DNS: close only this connection
            with trio.move_on_after(limits.tcp_write_timeout) as writing:
                await stream.send_all(frame(wire))
            if writing.cancelled_caught:
                self.stats.tcp_write_timeouts += 1
                self._log.throttled(
                    DEBUG,
                    "dns:tcp-write-timeout",
                    f"dns: closing TCP connection from {peer}: it does not read its replies",
                )
                return

    # ------------------------------------------------------------------ answering

    async def answer(self, data: bytes, transport: Transport, peer: str) -> bytes | None:
        """The reply to one message (None: nothing is sent). Never raises for what the
        message holds; a bug answers SERVFAIL and is logged."""
        stats = self.stats
        decoded = decode_query(data)
        if isinstance(decoded, Drop):
            if decoded.reason == "response":
                stats.ignored_responses += 1
            elif decoded.reason == "signed":
                stats.ignored_signed += 1
            else:
                stats.malformed += 1
            self._log.throttled(
                DEBUG,
                f"dns:dropped-{decoded.reason}",
                f"dns: dropped a {transport} packet from {peer}: {clip(decoded.detail)}",
            )
            return None
        if isinstance(decoded, Refusal):
            stats.refused += 1
            return decoded.wire
        config = self.config
        query = decoded.message
        respond: Respond | None = None
        try:
            respond = await self._resolve(query, config, transport)
        except* Exception as group:
            stats.failures += 1
            self._log.throttled(
                ERR,
                "dns:failed",
                f"dns: answering a query from {peer} failed: {describe_failure(group)}",
            )
        if respond is None:
            return servfail(query, config.max_udp_size)
        for note in respond.notes:
            self._log.throttled(note.level, note.kind, note.text)
        stats.answered += 1
        if respond.rcode == 3:
            stats.nxdomain += 1
        elif respond.rcode == 2:
            stats.servfail += 1
        if respond.truncated:
            stats.truncated += 1
        return respond.wire

    async def _resolve(self, query: Any, config: DNSConfig, transport: Transport) -> Respond:
        resolution = Resolution(
            query,
            config=config,
            datacenter=self.datacenter,
            node_name=self.node_name,
            transport=transport,
            now=self._clock(),
            rng=self._rng,
        )
        action = resolution.start()
        for _ in range(MAX_CALLS_PER_QUERY):
            if not isinstance(action, CatalogCall):
                return action
            action = await self._catalog(resolution, action)
        raise RuntimeError(f"a resolution asked for more than {MAX_CALLS_PER_QUERY} calls")

    async def _catalog(self, resolution: Resolution, call: CatalogCall) -> CatalogCall | Respond:
        try:
            with trio.fail_after(self.limits.call_timeout):
                reply = await self._call(call.method, call.args)
        except (RemoteError, RPCCallError) as exc:
            text = exc.error if isinstance(exc, RemoteError) else str(exc)
            return resolution.fail(text)
        except trio.TooSlowError:
            return resolution.fail(f"{call.method} timed out")
        return resolution.receive(reply)
