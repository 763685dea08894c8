"""The network side of memberlist: packets and streams in and out, bytes to messages and back.

:class:`MemberlistNet` is everything of one memberlist that touches the transport (the I/O half
of hashicorp/memberlist's net.go). It knows the wire (label, encryption, CRC, compound,
compression, stream framing) and the bounds that protect the process, and nothing of the rules:
what a message means is decided by the engine (:mod:`agentrpc.gossip.memberlist`) that hands
it a handler, and what to piggyback by the broadcast source it is given.

* Packets: :meth:`MemberlistNet.serve_packets` decodes each datagram and calls the handler once
  per message inside it, already decoded (a user message as its payload bytes);
  :meth:`~MemberlistNet.send_packet` sends one message with as many broadcasts piggybacked as
  fit in ``udp_buffer_size``, :meth:`~MemberlistNet.gossip` a packet of broadcasts alone.
* Inbound streams: :meth:`~MemberlistNet.serve_streams` accepts them, one task each, and reads
  one message under the TCP timeout before calling the handler, which answers through
  :meth:`~MemberlistNet.reply`. What all inbound streams together have read and not finished
  handling is bounded by ``inbound_budget`` bytes; a push/pull may declare at most
  ``max_nodes()`` nodes (read per stream, so it follows the node table's bound).
* Outbound streams: the transport half of a push/pull (:meth:`~MemberlistNet.exchange_state`),
  of a fallback ping and of a reliable user message, each bounded by the TCP timeout.
* Addresses: :meth:`~MemberlistNet.resolve` turns ``[name/]host[:port]`` into addresses.

Resources: between :meth:`~MemberlistNet.bind` and :meth:`~MemberlistNet.aclose` it owns the
bound packet connection and stream listener; every stream it dials or accepts is closed by the
call that opened it. Stream handler tasks live in :meth:`~MemberlistNet.serve_streams`'s own
nursery.

Errors: nothing a peer sends is fatal. Undecodable packets and messages are counted in the
stats and logged at debug; a failed inbound stream is counted in ``bad_streams`` and logged.
Every such line goes through the logger's per-kind throttle (``memberlist.*`` keys) and every
string the peer chose is cut with :func:`~agentrpc.log_protocol.clip`. The outbound calls raise
one of :data:`PEER_ERRORS` for the caller to handle per peer (:class:`RemoteStreamError` when
the peer answers with an error or the wrong message).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import trio

from agentrpc.gossip.contract import (
    GossipAddress,
    GossipTransport,
    PacketConnection,
    StreamListener,
)
from agentrpc.gossip.memberlist_config import MemberlistConfig, MemberlistStats
from agentrpc.gossip.messages import (
    AckResp,
    ErrResp,
    GossipDecodeError,
    GossipError,
    GossipMessage,
    MessageType,
    Ping,
    decode_message,
)
from agentrpc.gossip.node_table import ProtocolVersionError
from agentrpc.gossip.packet import (
    COMPOUND_HEADER_OVERHEAD,
    COMPOUND_PART_OVERHEAD,
    PACKET_MESSAGE_TYPES,
    add_label,
    decode_packet,
    encode_packets,
    label_overhead,
)
from agentrpc.gossip.security import Keyring, encrypt_overhead, encryption_version_for
from agentrpc.gossip.stream import (
    PushPull,
    StreamEncoder,
    StreamMessage,
    StreamReader,
)
from agentrpc.hostport import split_host_port
from agentrpc.log_protocol import DEBUG, ERR, LogLike, clip
from agentrpc.transports import describe_connect_error

__all__ = [
    "PEER_ERRORS",
    "DialError",
    "BroadcastSource",
    "MemberlistNet",
    "PacketHandler",
    "PacketMessage",
    "RemoteStreamError",
    "StreamHandler",
    "describe_peer_error",
    "stream_message_type",
]

_STREAM_READ_SIZE: Final = 65536


class RemoteStreamError(GossipError):
    """The peer answered a stream request with an error or with an unexpected message."""


PEER_ERRORS: Final = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    GossipError,
    ProtocolVersionError,
)
"""What talking to one peer may raise; handled per peer, never fatal to the node."""

PacketMessage = GossipMessage | bytes
"""One message of a packet, decoded: a struct, or a user message's payload."""
PacketHandler = Callable[[PacketMessage, GossipAddress], Awaitable[None]]
"""Handles one message of a packet from a sender; may raise ``GossipError`` for a bad one."""
StreamHandler = Callable[[trio.abc.Stream, StreamMessage, GossipAddress], Awaitable[None]]
"""Handles the first message of an inbound stream from a peer (answering on the stream)."""
BroadcastSource = Callable[[int, int], list[bytes]]
"""``(overhead per message, bytes available)`` to the encoded messages to piggyback."""


class _Held:
    """Bytes one inbound stream has read (given back when it is done)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class MemberlistNet:
    """Packets and streams of one memberlist (see the module docstring).

    ``broadcasts`` fills the room left in each outbound packet; ``max_nodes`` is read for every
    inbound push/pull; ``inbound_budget`` bounds the bytes all inbound streams hold at once.
    """

    def __init__(
        self,
        config: MemberlistConfig,
        transport: GossipTransport,
        stats: MemberlistStats,
        log: LogLike,
        *,
        broadcasts: BroadcastSource,
        max_nodes: Callable[[], int],
        inbound_budget: int,
    ) -> None:
        self._config = config
        self._profile = config.profile
        self._transport = transport
        self._stats = stats
        self._log = log
        self._broadcasts = broadcasts
        self._max_nodes = max_nodes
        self._inbound_budget = inbound_budget
        self._label = config.label.encode()
        self._keyring = config.keyring
        self._encryption_version = encryption_version_for(config.protocol_version)
        self._send_keyring = config.keyring if config.gossip_verify_outgoing else None
        self._encoder = self._new_encoder()
        self._packet_overhead = label_overhead(self._label) + (
            encrypt_overhead(self._encryption_version) if self._send_keyring is not None else 0
        )
        self._packets: PacketConnection | None = None
        self._listener: StreamListener | None = None
        self.inbound_bytes = 0
        """What all inbound streams together have read and not finished handling."""

    @property
    def encoder(self) -> StreamEncoder:
        """Builds every outbound stream message (for handlers' replies), with the keyring in
        use now."""
        return self._encoder

    def _new_encoder(self) -> StreamEncoder:
        return StreamEncoder(
            compress=self._profile.enable_compression,
            keyring=self._send_keyring,
            encryption_version=self._encryption_version,
            label=self._label,
        )

    @property
    def keyring(self) -> Keyring | None:
        return self._keyring

    def set_keyring(self, keyring: Keyring) -> None:
        """Seal with ``keyring``'s primary key and open with any of its keys from now on
        (only when encrypting already: the packet budget was sized for it)."""
        if self._keyring is None:
            raise ValueError("encryption is not enabled: no keyring to replace")
        self._keyring = keyring
        if self._send_keyring is not None:
            self._send_keyring = keyring
        self._encoder = self._new_encoder()

    # ----------------------------------------------------------------------------------------
    # Binding.

    async def bind(self, address: GossipAddress) -> GossipAddress:
        """Bind packets and streams to ``address``; the address actually bound."""
        self._packets, self._listener = await self._transport.bind(address)
        return self._packets.local_address

    async def aclose(self) -> None:
        """Close what :meth:`bind` opened (sending stops; the serve loops return)."""
        packets, listener = self._packets, self._listener
        self._packets = self._listener = None
        if packets is not None:
            packets.close()
        if listener is not None:
            with trio.CancelScope(shield=True):
                await listener.aclose()

    # ----------------------------------------------------------------------------------------
    # Packets out.

    async def send_packet(self, address: GossipAddress, message: bytes, *, crc: bool) -> None:
        """Send one message, with broadcasts piggybacked in a compound if there is room."""
        room = (
            self._profile.udp_buffer_size
            - len(message)
            - COMPOUND_HEADER_OVERHEAD
            - self._packet_overhead
        )
        await self.send_messages(
            address, [message, *self._broadcasts(COMPOUND_PART_OVERHEAD, room)], crc=crc
        )

    async def gossip(self, address: GossipAddress, *, crc: bool) -> bool:
        """Send a packet of broadcasts alone; False (nothing sent) when there are none."""
        room = self._profile.udp_buffer_size - COMPOUND_HEADER_OVERHEAD - self._packet_overhead
        messages = self._broadcasts(COMPOUND_PART_OVERHEAD, room)
        if not messages:
            return False
        await self.send_messages(address, messages, crc=crc)
        return True

    async def send_messages(
        self, address: GossipAddress, messages: Sequence[bytes], *, crc: bool
    ) -> None:
        """Send ``messages`` in as few packets as fit (nothing before :meth:`bind`)."""
        packets = self._packets
        if packets is None:
            return
        for data in encode_packets(
            messages,
            compress=self._profile.enable_compression,
            crc=crc,
            keyring=self._send_keyring,
            encryption_version=self._encryption_version,
            label=self._label,
        ):
            self._stats.packets_sent += 1
            self._stats.bytes_sent += len(data)
            await packets.send_to(data, address)

    # ----------------------------------------------------------------------------------------
    # Packets in.

    async def serve_packets(self, handle: PacketHandler) -> None:
        """Receive packets until the connection is closed, calling ``handle`` per message."""
        packets = self._packets
        if packets is None:
            raise RuntimeError("serve_packets before bind")
        stats = self._stats
        while True:
            try:
                data, source = await packets.receive_from()
            except trio.ClosedResourceError:
                return
            stats.packets_received += 1
            stats.bytes_received += len(data)
            try:
                inbound = decode_packet(
                    data,
                    label=self._label,
                    keyring=self._keyring,
                    verify_incoming=self._config.gossip_verify_incoming,
                )
            except GossipDecodeError as exc:
                stats.bad_packets += 1
                self._log.throttled(
                    DEBUG, "memberlist.bad-packet", f"Dropping packet from={source}: {clip(exc)}"
                )
                continue
            if inbound.truncated or inbound.problems:
                stats.bad_messages += inbound.truncated + len(inbound.problems)
                details = "; ".join(inbound.problems) or f"{inbound.truncated} truncated parts"
                self._log.throttled(
                    DEBUG,
                    "memberlist.bad-parts",
                    f"Bad parts in packet from={source}: {clip(details)}",
                )
            for msg_type, body in inbound.messages:
                try:
                    await handle(_decode_packet_message(msg_type, body), source)
                except GossipError as exc:
                    stats.bad_messages += 1
                    self._log.throttled(
                        DEBUG,
                        "memberlist.bad-message",
                        f"Failed to handle message type {msg_type} from={source}: {clip(exc)}",
                    )

    # ----------------------------------------------------------------------------------------
    # Streams in.

    async def serve_streams(self, handle: StreamHandler) -> None:
        """Accept streams until the listener is closed, serving each in its own task."""
        listener = self._listener
        if listener is None:
            raise RuntimeError("serve_streams before bind")
        backoff = 0.0
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    stream, peer = await listener.accept()
                except trio.ClosedResourceError:
                    return
                except OSError as exc:
                    backoff = min(1.0, backoff * 2 if backoff else 0.005)
                    self._log.throttled(
                        ERR, "memberlist.accept-error", f"Error accepting TCP connection: {exc}"
                    )
                    await trio.sleep(backoff)
                    continue
                backoff = 0.0
                self._stats.streams_accepted += 1
                nursery.start_soon(self.serve_stream, stream, peer, handle)

    async def serve_stream(
        self, stream: trio.abc.Stream, peer: GossipAddress, handle: StreamHandler
    ) -> None:
        """Serve one inbound stream (owns and closes it); every failure stays inside it."""
        self._log.throttled(DEBUG, "memberlist.stream-connection", f"Stream connection from={peer}")
        try:
            async with stream:
                held = _Held()
                try:
                    message = await self._read_request(stream, peer, held)
                    if message is not None:
                        await handle(stream, message, peer)
                finally:
                    self.inbound_bytes -= held.count
        except PEER_ERRORS as exc:
            self._stats.bad_streams += 1
            self._log.throttled(
                ERR,
                "memberlist.stream-failed",
                f"Failed to serve stream: {clip(describe_peer_error(exc))} from={peer}",
            )

    async def _read_request(
        self, stream: trio.abc.Stream, peer: GossipAddress, held: _Held
    ) -> StreamMessage | None:
        """The stream's first message, or None: it ended first, or was bad (then the peer
        got an ``err`` reply)."""
        reader = self.new_reader()
        with trio.fail_after(self._profile.tcp_timeout):
            try:
                return await self._receive(stream, reader, held)
            except GossipDecodeError as exc:
                self._stats.bad_streams += 1
                self._log.throttled(
                    ERR, "memberlist.stream-bad-data", f"failed to receive: {clip(exc)} from={peer}"
                )
                await stream.send_all(self.encoder.err(clip(exc)))
                return None

    async def reply(self, stream: trio.abc.Stream, data: bytes) -> None:
        """Answer on an inbound stream, within the TCP timeout."""
        with trio.fail_after(self._profile.tcp_timeout):
            await stream.send_all(data)

    def new_reader(self, *, response: bool = False) -> StreamReader:
        """A reader for one stream message under our label, keys and node bound;
        ``response`` for the reply to a stream we opened (which carries no label header)."""
        reader = StreamReader(
            label=self._label,
            keyring=self._keyring,
            verify_incoming=self._config.gossip_verify_incoming,
            max_nodes=self._max_nodes(),
        )
        if response:
            # Replies carry no label header, yet their encryption is bound to our label:
            # feeding the header ourselves makes the reader expect exactly that.
            reader.feed(add_label(b"", self._label))
        return reader

    async def _receive(
        self, stream: trio.abc.Stream, reader: StreamReader, held: _Held | None = None
    ) -> StreamMessage | None:
        """The next message on ``stream``; None if it ended cleanly first. With ``held`` (an
        inbound stream), what is read counts against the inbound budget."""
        eof = False
        while True:
            message = reader.next_message()
            if message is not None or eof:
                return message
            data = await stream.receive_some(_STREAM_READ_SIZE)
            if data and held is not None:
                if self.inbound_bytes + len(data) > self._inbound_budget:
                    self._stats.streams_over_budget += 1
                    raise GossipDecodeError(
                        "inbound streams hold more than "
                        f"{self._inbound_budget >> 20} MiB at once; try again later"
                    )
                self.inbound_bytes += len(data)
                held.count += len(data)
            if data:
                reader.feed(data)
            else:
                reader.feed_eof()
                eof = True

    # ----------------------------------------------------------------------------------------
    # Streams out.

    async def dial(self, address: GossipAddress) -> trio.abc.Stream:
        """A stream to ``address`` within the TCP timeout (``TimeoutError`` past it; a
        :class:`DialError` when the connection is not made)."""
        try:
            with trio.move_on_after(self._profile.tcp_timeout):
                return await self._transport.dial(address)
        except OSError as exc:
            raise DialError(address, exc) from exc
        raise TimeoutError(f"dial tcp {address}: i/o timeout")

    async def exchange_state(
        self, address: GossipAddress, local_state: Callable[[], bytes]
    ) -> PushPull:
        """Send ``local_state()`` (built once connected) as a push/pull and return the
        peer's; raises one of :data:`PEER_ERRORS`."""
        timeout = self._profile.tcp_timeout
        stream = await self.dial(address)
        self._log.debug(f"Initiating push/pull sync with: {address}")
        try:
            async with stream:
                with trio.fail_after(timeout):
                    await stream.send_all(self.encoder.preamble() + local_state())
                with trio.fail_after(timeout):
                    reply = await self._receive(stream, self.new_reader(response=True))
        except trio.TooSlowError:
            raise TimeoutError(f"push/pull with {address}: i/o timeout") from None
        if reply is None:
            raise RemoteStreamError("EOF")
        if isinstance(reply, ErrResp):
            raise RemoteStreamError(f"remote error: {clip(reply.error)}")
        if not isinstance(reply, PushPull):
            raise RemoteStreamError(
                f"received invalid msgType ({stream_message_type(reply)}), expected "
                f"pushPullMsg ({int(MessageType.PUSH_PULL)}) from={address}"
            )
        return reply

    async def fallback_ping(self, address: GossipAddress, ping: Ping) -> bool:
        """Ping over TCP; True on a matching ack. Never raises for the peer: an unreachable
        node is expected (no log line), any other failure is logged (throttled)."""
        try:
            try:
                stream = await self._transport.dial(address)
            except OSError:
                return False  # expected when the node is really down: not worth a log line
            async with stream:
                await stream.send_all(self.encoder.preamble() + self.encoder.ping(ping))
                reply = await self._receive(stream, self.new_reader(response=True))
            if not isinstance(reply, AckResp):
                kind = "EOF" if reply is None else stream_message_type(reply)
                self._log.throttled(
                    ERR,
                    "memberlist.fallback-ping-failed",
                    f"Failed fallback ping: unexpected msgType ({kind})",
                )
            elif reply.seq_no != ping.seq_no:
                self._log.throttled(
                    ERR,
                    "memberlist.fallback-ping-failed",
                    f"Failed fallback ping: sequence number from ack ({reply.seq_no}) "
                    f"doesn't match ping ({ping.seq_no})",
                )
            else:
                return True
        except PEER_ERRORS as exc:
            self._log.throttled(
                ERR,
                "memberlist.fallback-ping-failed",
                f"Failed fallback ping: {clip(describe_peer_error(exc))}",
            )
        return False

    async def send_user_message(self, address: GossipAddress, payload: bytes) -> None:
        """A user message over a new stream; ``TimeoutError`` or ``ConnectionError`` (both
        ``OSError``) when it cannot be delivered."""
        data = self.encoder.preamble() + self.encoder.user_message(payload)
        stream = await self.dial(address)
        try:
            async with stream:
                with trio.fail_after(self._profile.tcp_timeout):
                    await stream.send_all(data)
        except trio.TooSlowError:
            raise TimeoutError(f"write to {address}: i/o timeout") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionError(f"write to {address}: {exc}") from exc

    # ----------------------------------------------------------------------------------------
    # Addresses.

    async def resolve(self, text: str, default_port: int) -> list[GossipAddress]:
        """``[name/]host[:port]`` to addresses (``ValueError`` for malformed text, ``OSError``
        when the name resolves to nothing)."""
        name, slash, rest = text.strip().rpartition("/")
        if slash and not name:
            raise ValueError("empty node name provided")
        if not rest:
            raise ValueError("empty address")
        host, port_text = split_host_port(rest)
        port = default_port if port_text is None else _port(port_text, rest)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return [GossipAddress(host, port)]
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        found: list[GossipAddress] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            address = GossipAddress(str(sockaddr[0]), port)
            if address not in found:
                found.append(address)
        if not found:
            raise OSError(errno.EHOSTUNREACH, f"no addresses for {host}")
        return found


def _decode_packet_message(msg_type: int, body: bytes) -> PacketMessage:
    if msg_type == MessageType.USER:
        return body
    if msg_type not in PACKET_MESSAGE_TYPES:
        raise GossipDecodeError(f"msg type ({msg_type}) not supported")
    return decode_message(msg_type, body)


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 0xFFFF:
        raise ValueError(f"bad port in address {whole!r}")
    return int(text)


def stream_message_type(message: StreamMessage) -> int:
    """The type byte ``message`` travels under (for log lines and error replies)."""
    if isinstance(message, PushPull):
        return int(MessageType.PUSH_PULL)
    if isinstance(message, Ping):
        return int(MessageType.PING)
    if isinstance(message, AckResp):
        return int(MessageType.ACK_RESP)
    if isinstance(message, ErrResp):
        return int(MessageType.ERR)
    return int(MessageType.USER)


class DialError(OSError):
    """A TCP connection to a peer that was not made, worded as Go's ``net.Dial`` error that
    memberlist passes on (``dial tcp 127.0.0.1:8301: connect: connection refused``), so that
    a join error names the port it tried."""

    def __init__(self, address: GossipAddress, cause: OSError) -> None:
        super().__init__(cause.errno, describe_connect_error(cause))
        self.address = address

    def __str__(self) -> str:
        return f"dial tcp {self.address}: connect: {self.strerror}"


def describe_peer_error(exc: BaseException) -> str:
    """One of :data:`PEER_ERRORS` as Go's memberlist words it (``i/o timeout``, ``connection
    refused``, a dial's ``dial tcp HOST:PORT: connect: ...``), for log lines and join
    errors."""
    if isinstance(exc, trio.TooSlowError):
        return "i/o timeout"
    if isinstance(exc, DialError):
        return str(exc)
    if isinstance(exc, OSError):
        return describe_connect_error(exc)
    return str(exc) or type(exc).__name__
