"""Gossip transports: real UDP+TCP on one port, and an in-memory network for simulations.

Both implement :class:`~agentrpc.gossip.contract.GossipTransport`.

* :class:`UdpTcpTransport` binds a UDP socket and a TCP listener to the same explicit host and
  port, as memberlist's ``NetTransport`` does (port 0 picks a port that is free for both). The
  UDP socket asks for a 2 MB kernel receive buffer and reads up to 65536 bytes per packet.
* :class:`MemoryGossipNetwork` connects any number of in-process nodes, addressed like real
  ones (``127.0.0.x:port``): datagrams go through bounded queues (dropped when full, like
  UDP), streams are in-memory stream pairs. Tests can block traffic between hosts or
  addresses, partition the network into groups, drop a fraction of the packets, and heal.
  Runs happily under trio's autojump clock.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import random
import socket
from collections.abc import Iterable
from typing import Final

import trio

from agentrpc.gossip.contract import GossipAddress
from agentrpc.transports.fastpath import READS_BEFORE_YIELD, DatagramPath
from agentrpc.transports.memory import memory_stream_pair

__all__ = [
    "PACKET_RECEIVE_SIZE",
    "UDP_RECEIVE_BUFFER",
    "MemoryGossipNetwork",
    "MemoryGossipTransport",
    "MemoryPacketConnection",
    "MemoryStreamListener",
    "TcpStreamListener",
    "UdpPacketConnection",
    "UdpTcpTransport",
]

PACKET_RECEIVE_SIZE: Final = 65536
"""Largest datagram read at once (memberlist's udpPacketBufSize)."""
UDP_RECEIVE_BUFFER: Final = 2 * 1024 * 1024
"""Kernel receive buffer asked for on the UDP socket (memberlist's udpRecvBufSize)."""
_TCP_BACKLOG: Final = 128
_BIND_ATTEMPTS: Final = 32


def _family(host: str) -> socket.AddressFamily:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise OSError(errno.EINVAL, f"gossip needs an IP literal to bind, got {host!r}") from None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def _gossip_address(sockaddr: object) -> GossipAddress:
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        return GossipAddress(str(sockaddr[0]), int(sockaddr[1]))
    raise OSError(errno.EINVAL, f"unexpected socket address {sockaddr!r}")


# --------------------------------------------------------------------------------------------
# UDP + TCP.


class UdpPacketConnection:
    """The UDP side of :class:`UdpTcpTransport`: ``sock`` (a trio socket, which owns the
    descriptor) over ``raw``, the stdlib socket under it, read and written directly
    (:class:`~agentrpc.transports.fastpath.DatagramPath`: no pass through the scheduler
    per packet while the kernel is ready)."""

    def __init__(
        self, sock: trio.socket.SocketType, raw: socket.socket, local: GossipAddress
    ) -> None:
        self._sock = sock
        self._path = DatagramPath(raw)
        self._local = local
        self.send_errors = 0
        """Datagrams the kernel refused (they count as lost)."""

    @property
    def local_address(self) -> GossipAddress:
        return self._local

    async def send_to(self, data: bytes, address: GossipAddress) -> None:
        try:
            await self._path.send_to(data, address.host, address.port)
        except OSError:
            self.send_errors += 1

    async def receive_from(self) -> tuple[bytes, GossipAddress]:
        receive = self._path.receive_from
        while True:
            for _ in range(READS_BEFORE_YIELD):
                try:
                    data, sockaddr = await receive(PACKET_RECEIVE_SIZE)
                except ConnectionError:
                    # ICMP errors reported on some platforms: nothing to do with this read.
                    continue
                return data, _gossip_address(sockaddr)
            await trio.lowlevel.checkpoint()  # a run of errors: let the others run

    def close(self) -> None:
        self._sock.close()


class TcpStreamListener:
    """The TCP side of :class:`UdpTcpTransport`."""

    def __init__(self, listener: trio.SocketListener) -> None:
        self._listener = listener

    async def accept(self) -> tuple[trio.abc.Stream, GossipAddress]:
        stream = await self._listener.accept()
        try:
            peer = _gossip_address(stream.socket.getpeername())
        except OSError:
            await trio.aclose_forcefully(stream)
            raise
        return stream, peer

    async def aclose(self) -> None:
        await self._listener.aclose()


class UdpTcpTransport:
    """UDP and TCP on one port of one explicit IP address."""

    def __init__(self, *, udp_receive_buffer: int = UDP_RECEIVE_BUFFER) -> None:
        self._udp_receive_buffer = udp_receive_buffer

    async def bind(self, address: GossipAddress) -> tuple[UdpPacketConnection, TcpStreamListener]:
        """Bind both sockets; with port 0, retry until a port is free for UDP and TCP."""
        family = _family(address.host)
        attempts = _BIND_ATTEMPTS if address.port == 0 else 1
        for attempt in range(attempts):
            raw = socket.socket(family, socket.SOCK_DGRAM)
            udp = trio.socket.from_stdlib_socket(raw)  # non-blocking now; it owns raw
            tcp: trio.socket.SocketType | None = None
            try:
                await udp.bind((address.host, address.port))
                port = int(udp.getsockname()[1])
                tcp = trio.socket.socket(family, socket.SOCK_STREAM)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    await tcp.bind((address.host, port))
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE or attempt + 1 >= attempts:
                        raise
                    tcp.close()
                    udp.close()
                    continue
                tcp.listen(_TCP_BACKLOG)
            except BaseException:
                udp.close()
                if tcp is not None:
                    tcp.close()
                raise
            with contextlib.suppress(OSError):  # a smaller buffer still works
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._udp_receive_buffer)
            local = GossipAddress(address.host, port)
            return (
                UdpPacketConnection(udp, raw, local),
                TcpStreamListener(trio.SocketListener(tcp)),
            )
        raise OSError(errno.EADDRINUSE, "no port was free for both UDP and TCP")

    async def dial(self, address: GossipAddress) -> trio.abc.Stream:
        return await trio.open_tcp_stream(address.host, address.port)


# --------------------------------------------------------------------------------------------
# In memory.


class _Endpoint:
    __slots__ = ("address", "packets_in", "packets_out", "streams_in", "streams_out")

    def __init__(self, address: GossipAddress, queue_depth: int, backlog: int) -> None:
        self.address = address
        self.packets_in, self.packets_out = trio.open_memory_channel[tuple[bytes, GossipAddress]](
            queue_depth
        )
        self.streams_in, self.streams_out = trio.open_memory_channel[
            tuple[trio.abc.Stream, GossipAddress]
        ](backlog)


class MemoryGossipNetwork:
    """In-process gossip network with fault injection.

    Blocking rules name hosts (``"127.0.0.3"``) or full addresses (``"127.0.0.3:7946"``).
    A blocked direction loses every datagram and refuses every new stream (or, for a
    packets-only rule, just loses datagrams); streams already open are not cut.
    """

    def __init__(
        self,
        *,
        queue_depth: int = 1024,
        backlog: int = 128,
        rng: random.Random | None = None,
        first_port: int = 40000,
    ) -> None:
        self._queue_depth = queue_depth
        self._backlog = backlog
        self._rng = rng if rng is not None else random.Random()
        self._endpoints: dict[GossipAddress, _Endpoint] = {}
        self._blocked: set[tuple[str, str]] = set()
        self._blocked_packets: set[tuple[str, str]] = set()
        self._next_port = first_port
        self.drop_rate = 0.0
        """Fraction of datagrams lost at random (0.0 to 1.0)."""
        self.packets_delivered = 0
        self.packets_dropped = 0

    def transport(self) -> MemoryGossipTransport:
        """A transport for one node on this network."""
        return MemoryGossipTransport(self)

    # Fault injection -------------------------------------------------------------------------

    def block(
        self, source: str, destination: str, *, both_ways: bool = True, streams: bool = True
    ) -> None:
        """Lose traffic from ``source`` to ``destination`` (and back, by default); with
        ``streams=False`` only datagrams are lost and streams still connect."""
        rules = self._blocked if streams else self._blocked_packets
        rules.add((source, destination))
        if both_ways:
            rules.add((destination, source))

    def unblock(self, source: str, destination: str, *, both_ways: bool = True) -> None:
        for rules in (self._blocked, self._blocked_packets):
            rules.discard((source, destination))
            if both_ways:
                rules.discard((destination, source))

    def partition(self, *groups: Iterable[str]) -> None:
        """Block every pair of hosts/addresses that are in different groups."""
        frozen = [list(group) for group in groups]
        for index, group in enumerate(frozen):
            for other in frozen[index + 1 :]:
                for a in group:
                    for b in other:
                        self.block(a, b)

    def heal(self) -> None:
        """Remove every blocking rule (the drop rate is left as it is)."""
        self._blocked.clear()
        self._blocked_packets.clear()

    def is_blocked(
        self, source: GossipAddress, destination: GossipAddress, *, stream: bool = False
    ) -> bool:
        """Whether a datagram (or, with ``stream``, a new stream) from ``source`` to
        ``destination`` is blocked."""
        for rules in (self._blocked,) if stream else (self._blocked, self._blocked_packets):
            if rules and (
                (source.host, destination.host) in rules or (str(source), str(destination)) in rules
            ):
                return True
        return False

    # Used by the transports ------------------------------------------------------------------

    def _register(self, address: GossipAddress) -> _Endpoint:
        try:
            ipaddress.ip_address(address.host)
        except ValueError:
            raise OSError(errno.EINVAL, f"not an IP literal: {address.host!r}") from None
        if address.port == 0:
            while True:
                candidate = GossipAddress(address.host, self._next_port)
                self._next_port = self._next_port + 1 if self._next_port < 65535 else 1024
                if candidate not in self._endpoints:
                    address = candidate
                    break
        elif address in self._endpoints:
            raise OSError(errno.EADDRINUSE, f"{address} is already bound")
        endpoint = _Endpoint(address, self._queue_depth, self._backlog)
        self._endpoints[address] = endpoint
        return endpoint

    def _unregister(self, endpoint: _Endpoint) -> None:
        if self._endpoints.get(endpoint.address) is endpoint:
            del self._endpoints[endpoint.address]
        endpoint.packets_in.close()
        endpoint.streams_in.close()

    def _deliver(self, source: GossipAddress, data: bytes, destination: GossipAddress) -> None:
        endpoint = self._endpoints.get(destination)
        if (
            endpoint is None
            or self.is_blocked(source, destination)
            or (self.drop_rate > 0 and self._rng.random() < self.drop_rate)
        ):
            self.packets_dropped += 1
            return
        try:
            endpoint.packets_in.send_nowait((bytes(data), source))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.packets_dropped += 1
            return
        self.packets_delivered += 1

    def _connect(
        self, source: GossipAddress, destination: GossipAddress
    ) -> tuple[trio.abc.Stream, GossipAddress]:
        endpoint = self._endpoints.get(destination)
        if endpoint is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"nothing listens on {destination}")
        if self.is_blocked(source, destination, stream=True):
            raise OSError(errno.EHOSTUNREACH, f"{destination} is unreachable from {source}")
        client, server = memory_stream_pair()
        origin = GossipAddress(source.host, self._ephemeral_port())
        try:
            endpoint.streams_in.send_nowait((server, origin))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, f"{destination} does not accept connections"
            ) from None
        return client, origin

    def _ephemeral_port(self) -> int:
        return self._rng.randrange(32768, 61000)


class MemoryPacketConnection:
    """Datagrams of one node on a :class:`MemoryGossipNetwork`."""

    def __init__(self, network: MemoryGossipNetwork, endpoint: _Endpoint) -> None:
        self._network = network
        self._endpoint = endpoint

    @property
    def local_address(self) -> GossipAddress:
        return self._endpoint.address

    async def send_to(self, data: bytes, address: GossipAddress) -> None:
        await trio.lowlevel.checkpoint()
        self._network._deliver(self._endpoint.address, data, address)

    async def receive_from(self) -> tuple[bytes, GossipAddress]:
        try:
            return await self._endpoint.packets_out.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("packet connection is closed") from None

    def close(self) -> None:
        self._network._unregister(self._endpoint)
        self._endpoint.packets_out.close()


class MemoryStreamListener:
    """Incoming streams of one node on a :class:`MemoryGossipNetwork`."""

    def __init__(self, network: MemoryGossipNetwork, endpoint: _Endpoint) -> None:
        self._network = network
        self._endpoint = endpoint

    async def accept(self) -> tuple[trio.abc.Stream, GossipAddress]:
        try:
            return await self._endpoint.streams_out.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("listener is closed") from None

    async def aclose(self) -> None:
        self._network._unregister(self._endpoint)
        # Streams dialled but never accepted are closed, so their dialers see the end.
        pending: list[trio.abc.Stream] = []
        while True:
            try:
                stream, _ = self._endpoint.streams_out.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            pending.append(stream)
        self._endpoint.streams_out.close()
        for stream in pending:
            await trio.aclose_forcefully(stream)
        await trio.lowlevel.checkpoint()


class MemoryGossipTransport:
    """One node's transport on a :class:`MemoryGossipNetwork`."""

    def __init__(self, network: MemoryGossipNetwork) -> None:
        self._network = network
        self._local: GossipAddress | None = None

    async def bind(
        self, address: GossipAddress
    ) -> tuple[MemoryPacketConnection, MemoryStreamListener]:
        await trio.lowlevel.checkpoint()
        endpoint = self._network._register(address)
        self._local = endpoint.address
        return MemoryPacketConnection(self._network, endpoint), MemoryStreamListener(
            self._network, endpoint
        )

    async def dial(self, address: GossipAddress) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        source = self._local if self._local is not None else GossipAddress("0.0.0.0", 0)
        stream, _ = self._network._connect(source, address)
        return stream
