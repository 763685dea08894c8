"""Memberlist on Trio: SWIM gossip with the Lifeguard extensions, wire-compatible with
hashicorp/memberlist 0.2.x (a real ``serf`` agent can be a peer).

:class:`Memberlist` is the engine. The rules about nodes live in the sans-I/O
:class:`~agentrpc.gossip.node_table.NodeTable`; the bytes in the codecs (``messages``,
``packet``, ``stream``); this module moves them and keeps time. ``run`` binds the transport
and runs, in one nursery, until cancelled:

* the packet loop: decode (label, decryption, CRC, compound, compression) and dispatch ping,
  indirect ping, ack, nack, suspect, alive, dead and user messages; bad packets are counted
  and logged at debug, never fatal;
* the stream loop: one handler task per accepted stream, each under the TCP timeout, serving
  push/pull (at most 128 at once), fallback pings and user messages, replying ``err`` to what
  it cannot read;
* the probe loop: one target per probe interval (stretched by the Lifeguard health score),
  UDP ping (with a suspect piggybacked if the target is suspect), then indirect pings through
  ``indirect_checks`` peers (asking for nacks from peers with PMax >= 4) and a TCP fallback
  ping (targets with PMax >= 3), then suspicion;
* the gossip loop: broadcasts (memberlist's own, then the delegate's) packed into compound
  packets of at most ``udp_buffer_size`` bytes, to ``gossip_nodes`` random peers, recently
  dead ones included;
* the push/pull loop: a full state exchange with a random alive peer at the scaled interval;
* the suspicion timer: sleeps until the earliest suspicion deadline and declares the dead.

Bounds against hostile peers: the node table holds at most ``max_members`` nodes (config
``gossip_max_members``; :meth:`Memberlist.set_max_members` changes it at run time), shared by
alive messages and push/pulls; unknown nodes past it are ignored and counted
(``stats.refused_members``). A push/pull whose header declares more nodes than that bound is
refused before a single node state is decoded (``err`` reply, counted in ``bad_streams``): a
peer with more nodes than we may hold cannot be merged anyway, and this is the cheapest
honest refusal, costing the bytes of the header and nothing per node. A push/pull within the
bound is decoded as its bytes arrive and merged in slices of ``_MERGE_SLICE`` nodes with a
checkpoint between them, so even a full one never holds the event loop for long. Every log
line a peer can cause at will (bad packets and streams, pings for another node, refused or
failed push/pulls, invalid message types, too many push/pulls or indirect probes) goes
through the logger's per-kind throttle (``memberlist.*`` keys, at most one line a second
each), and every string the peer chose is cut with :func:`agentrpc.logs.clip`.

Outbound UDP is compressed only when that makes it smaller and carries a CRC only for peers
with PMax >= 5; stream messages are always compressed (as Go does). Give the constructor a
``Logger`` for the ``memberlist`` component: lines then read as Go's do, e.g.
``[INFO] memberlist: Suspect node2 has failed, no acks received``.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

import trio

from agentrpc.gossip.awareness import Awareness
from agentrpc.gossip.contract import (
    GossipAddress,
    GossipTransport,
    MemberlistDelegate,
    MemberlistEvents,
    NodeInfo,
    PacketConnection,
    StreamListener,
)
from agentrpc.gossip.messages import (
    LABEL_MAX_SIZE,
    MAX_PUSH_STATE_NODES,
    META_MAX_SIZE,
    PROTOCOL_VERSION_DEFAULT,
    PROTOCOL_VERSION_MAX,
    PROTOCOL_VERSION_MIN,
    AckResp,
    Alive,
    Dead,
    ErrResp,
    GossipDecodeError,
    GossipError,
    IndirectPingReq,
    MessageType,
    NackResp,
    NodeState,
    Ping,
    PushNodeState,
    Suspect,
    Vsn,
    decode_body,
    encode_message,
)
from agentrpc.gossip.node_table import DEFAULT_MAX_MEMBERS, NodeTable, ProtocolVersionError
from agentrpc.gossip.packet import (
    COMPOUND_HEADER_OVERHEAD,
    COMPOUND_PART_OVERHEAD,
    add_label,
    decode_packet,
    encode_packets,
    label_overhead,
)
from agentrpc.gossip.profiles import LAN, GossipProfile
from agentrpc.gossip.security import Keyring, encrypt_overhead, encryption_version_for
from agentrpc.gossip.stream import (
    PushPull,
    StreamEncoder,
    StreamMessage,
    StreamReader,
    StreamUserMessage,
)
from agentrpc.logs import DEBUG, ERR, WARN, Logger, clip
from agentrpc.transports import describe_connect_error

__all__ = [
    "DEFAULT_VSN",
    "MAX_PUSH_PULL_REQUESTS",
    "Memberlist",
    "MemberlistConfig",
    "MemberlistStats",
    "RemoteStreamError",
]

DEFAULT_VSN: Final[Vsn] = (1, 5, 2, 2, 5, 4)
"""Advertised versions: memberlist 1-5 speaking 2, delegate (serf) 2-5 speaking 4, which
both a serf agent (delegate 5) and Consul 0.7-era pools (delegate max 4) accept."""
MAX_PUSH_PULL_REQUESTS: Final = 128
MAX_INBOUND_STREAM_BYTES: Final = 32 << 20
"""Bytes that all inbound streams together may have read and not finished handling (32 MiB);
a stream that would pass it is refused. Each stream's own caps (state size, node count) bound
one message; this bounds how many of them are in memory at once. A slow stream holds only what
it has sent, so a slow-loris cannot keep the others out."""
"""Concurrent inbound push/pulls served (memberlist's maxPushPullRequests)."""
MAX_INDIRECT_PROBES: Final = 1024
"""Concurrent indirect probes run for other nodes; requests beyond are dropped."""
_STREAM_READ_SIZE: Final = 65536
_MERGE_SLICE: Final = 512
"""Node states of a push/pull merged between two checkpoints."""
_USER_MSG_OVERHEAD: Final = 1
_UINT32_MASK: Final = 0xFFFFFFFF


class RemoteStreamError(GossipError):
    """The peer answered a stream request with an error or with an unexpected message."""


_PEER_ERRORS = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    GossipError,
    ProtocolVersionError,
)
"""What talking to one peer may raise; handled per peer, never fatal to the node."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberlistConfig:
    """Configuration of one memberlist instance."""

    name: str
    bind: GossipAddress
    """Where UDP and TCP are bound (an explicit IP; port 0 picks one free for both)."""
    advertise: GossipAddress | None = None
    """What other nodes are told to use; the bound address when None."""
    profile: GossipProfile = LAN
    keyring: Keyring | None = None
    gossip_verify_incoming: bool = True
    """With a keyring: reject plaintext packets and streams (False accepts them too)."""
    gossip_verify_outgoing: bool = True
    """With a keyring: encrypt what we send (False sends plaintext, for key rollout)."""
    label: str = ""
    """memberlist >= 0.3 label; empty for 0.2.x peers."""
    vsn: Vsn = DEFAULT_VSN
    """Versions advertised in alive and push/pull messages."""
    protocol_version: int = PROTOCOL_VERSION_DEFAULT
    """The memberlist protocol version whose behaviour we follow (encryption padding,
    port masking)."""
    max_members: int = DEFAULT_MAX_MEMBERS
    """Nodes the table holds at most, ourselves included (config ``gossip_max_members``)."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a memberlist needs a node name")
        if len(self.label.encode()) > LABEL_MAX_SIZE:
            raise ValueError(f"label is longer than {LABEL_MAX_SIZE} bytes")
        if len(self.vsn) != 6 or not all(0 <= v <= 0xFF for v in self.vsn):
            raise ValueError(f"vsn must be six uint8 versions, got {self.vsn!r}")
        pmin, pmax, pcur, dmin, dmax, dcur = self.vsn
        if not (0 < pmin <= pcur <= pmax and dmin <= dcur <= dmax):
            raise ValueError(f"vsn {self.vsn!r} is not min <= cur <= max")
        if not PROTOCOL_VERSION_MIN <= self.protocol_version <= PROTOCOL_VERSION_MAX:
            raise ValueError(f"unsupported protocol version {self.protocol_version}")
        if self.max_members < 1:
            raise ValueError(f"max_members must be positive, got {self.max_members}")


class _Held:
    """Bytes one inbound stream has read (given back when it is done)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


@dataclass(slots=True)
class MemberlistStats:
    """Counters of one memberlist instance (never reset)."""

    packets_received: int = 0
    packets_sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    bad_packets: int = 0
    """Packets dropped whole: bad label, failed decryption or CRC, undecodable."""
    bad_messages: int = 0
    """Messages inside packets that could not be decoded or handled (the rest still are)."""
    streams_accepted: int = 0
    bad_streams: int = 0
    """Inbound streams that failed: bad data, timeout, peer gone, too many push/pulls."""
    push_pulls: int = 0
    """Completed state exchanges, in either direction."""
    push_pull_failures: int = 0
    """Outbound push/pulls (joins included) that failed."""
    probes: int = 0
    failed_probes: int = 0
    """Probes that ended in a suspicion."""
    streams_over_budget: int = 0
    """Inbound streams refused because all of them together had read too much."""
    refused_members: int = 0
    """Alive states (messages or push/pull entries) about unknown nodes ignored because the
    table held ``max_members`` nodes already."""


class _AckWaiter:
    __slots__ = ("acked", "nacks", "payload")

    def __init__(self) -> None:
        self.acked = trio.Event()
        self.nacks = 0
        self.payload = b""


class Memberlist:
    """One gossip membership (implements :class:`~agentrpc.gossip.contract.MemberlistHandle`)."""

    def __init__(
        self,
        config: MemberlistConfig,
        delegate: MemberlistDelegate,
        events: MemberlistEvents,
        logger: Logger,
        transport: GossipTransport,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._profile = config.profile
        self._delegate = delegate
        self._log = logger
        self._transport = transport
        self._rng = rng if rng is not None else random.Random()
        self._stats = MemberlistStats()
        self._awareness = Awareness(self._profile.awareness_max_multiplier)
        self._suspicion_wakeup = trio.Event()
        self._table = NodeTable(
            config.name,
            self._profile,
            rng=self._rng,
            events=events,
            log=logger,
            awareness=self._awareness,
            on_suspicion_change=self._wake_suspicion_timer,
            max_members=config.max_members,
        )
        self._label = config.label.encode()
        self._keyring = config.keyring
        self._encryption_version = encryption_version_for(config.protocol_version)
        self._send_keyring = config.keyring if config.gossip_verify_outgoing else None
        self._encoder = StreamEncoder(
            compress=self._profile.enable_compression,
            keyring=self._send_keyring,
            encryption_version=self._encryption_version,
            label=self._label,
        )
        self._packet_overhead = label_overhead(self._label) + (
            encrypt_overhead(self._encryption_version) if self._send_keyring is not None else 0
        )
        self._packets: PacketConnection | None = None
        self._nursery: trio.Nursery | None = None
        self._advertise: GossipAddress | None = None
        self._advertise_ip = b""
        self._bound_port = config.bind.port
        self._started = False
        self._seq = 0
        self._ack_waiters: dict[int, _AckWaiter] = {}
        self._push_pull_active = 0
        self._inbound_bytes = 0
        self._indirect_active = 0

    @property
    def stats(self) -> MemberlistStats:
        """This instance's counters (the table's refusals included)."""
        stats = self._stats
        stats.refused_members = self._table.refused_members
        return stats

    @property
    def max_members(self) -> int:
        """Nodes the table holds at most (ourselves included)."""
        return self._table.max_members

    def set_max_members(self, max_members: int) -> None:
        """Change the node bound at run time (``reload``): it applies to the next alive
        message and to push/pulls read from then on; nobody is evicted when it shrinks."""
        self._table.set_max_members(max_members)

    # ----------------------------------------------------------------------------------------
    # MemberlistHandle.

    @property
    def local_name(self) -> str:
        return self._config.name

    @property
    def advertise_address(self) -> GossipAddress:
        """Our address as other nodes see it (the configured one until ``run`` binds)."""
        if self._advertise is not None:
            return self._advertise
        return self._config.advertise or self._config.bind

    @property
    def table(self) -> NodeTable:
        """The node table (read it; change it only through this class)."""
        return self._table

    def members(self) -> list[NodeInfo]:
        return self._table.members()

    def node(self, name: str) -> NodeInfo | None:
        return self._table.get(name)

    def num_alive(self) -> int:
        """Nodes alive or suspect, ourselves included (memberlist's ``NumMembers``)."""
        return self._table.num_alive()

    @property
    def health_score(self) -> int:
        return self._awareness.score

    async def join(self, addresses: Sequence[str]) -> tuple[int, list[str]]:
        """Push/pull (Join=true) with every address at once; each is bounded by the TCP
        timeout for dialling and again for the exchange."""
        if self._advertise is None:
            raise RuntimeError("memberlist is not running")
        errors: list[str] = []
        targets: list[GossipAddress] = []
        for text in addresses:
            try:
                targets.extend(await self._resolve(text))
            except (OSError, ValueError) as exc:
                message = f"Failed to resolve {text}: {exc}"
                self._log.warn(message)
                errors.append(message)
        outcomes: list[str | None] = [None] * len(targets)

        async def join_one(index: int, address: GossipAddress) -> None:
            try:
                await self._push_pull(address, join=True)
            except _PEER_ERRORS as exc:
                outcomes[index] = f"Failed to join {address.host}: {clip(_describe(exc))}"
                self._log.debug(outcomes[index] or "")

        async with trio.open_nursery() as nursery:
            for index, address in enumerate(targets):
                nursery.start_soon(join_one, index, address)
        errors.extend(outcome for outcome in outcomes if outcome is not None)
        return sum(1 for outcome in outcomes if outcome is None), errors

    async def leave(self) -> None:
        """Broadcast ``dead{Node=self, From=self}`` and wait until it has been transmitted its
        last time (returns at once without peers, or if we already left)."""
        done = trio.Event()
        if not self._table.leave(trio.current_time(), finished=done.set):
            return
        if self._table.any_alive_peer():
            await done.wait()

    def update_meta(self) -> None:
        meta = self._delegate.node_meta(META_MAX_SIZE)
        if len(meta) > META_MAX_SIZE:
            raise ValueError(f"node meta of {len(meta)} bytes exceeds {META_MAX_SIZE}")
        self._table.update_local(meta, trio.current_time())

    async def send_reliable(self, node: str, payload: bytes) -> None:
        info = self._table.get(node)
        if info is None:
            raise OSError(errno.EHOSTUNREACH, f"unknown node {node!r}")
        data = self._encoder.preamble() + self._encoder.user_message(payload)
        stream = await self._dial(info.address)
        try:
            async with stream:
                with trio.fail_after(self._profile.tcp_timeout):
                    await stream.send_all(data)
        except trio.TooSlowError:
            raise TimeoutError(f"write to {info.address}: i/o timeout") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionError(f"write to {info.address}: {exc}") from exc

    # ----------------------------------------------------------------------------------------
    # Running.

    async def run(
        self, *, task_status: trio.TaskStatus[GossipAddress] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind, announce ourselves, report the advertised address, and run every loop until
        cancelled; the sockets are closed on the way out. A Memberlist runs once."""
        if self._started:
            raise RuntimeError("a Memberlist can only be run once")
        self._started = True
        packets, listener = await self._transport.bind(self._config.bind)
        try:
            local = packets.local_address
            self._bound_port = local.port
            advertise = self._config.advertise or local
            ip = ipaddress.ip_address(advertise.host)
            if ip.is_unspecified:
                raise ValueError(f"cannot advertise {advertise}: give an advertise address")
            meta = self._delegate.node_meta(META_MAX_SIZE)
            if len(meta) > META_MAX_SIZE:
                raise ValueError(f"node meta of {len(meta)} bytes exceeds {META_MAX_SIZE}")
            self._advertise = advertise
            self._advertise_ip = ip.packed
            self._packets = packets
            self._table.set_alive(
                ip.packed, advertise.port, meta, self._config.vsn, trio.current_time()
            )
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._packet_loop, packets)
                nursery.start_soon(self._stream_loop, listener)
                nursery.start_soon(self._probe_loop)
                nursery.start_soon(self._gossip_loop)
                nursery.start_soon(self._push_pull_loop)
                nursery.start_soon(self._suspicion_loop)
                task_status.started(advertise)
        finally:
            self._nursery = None
            self._packets = None
            packets.close()
            with trio.CancelScope(shield=True):
                await listener.aclose()

    # ----------------------------------------------------------------------------------------
    # Sending packets.

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & _UINT32_MASK
        return self._seq

    def _ping(self, seq: int, node: str) -> Ping:
        port = self._advertise.port if self._advertise is not None else 0
        return Ping(seq, node, self._advertise_ip, port, self._config.name)

    def _crc_for(self, name: str) -> bool:
        """CRC only for peers known to understand protocol 5."""
        info = self._table.get(name) if name else None
        return info is not None and info.vsn[1] >= 5

    def _get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        """Our broadcasts first, then the delegate's as user messages, within ``limit``."""
        messages = self._table.broadcasts.get_broadcasts(overhead, limit)
        available = limit - sum(len(message) + overhead for message in messages)
        if available > overhead + _USER_MSG_OVERHEAD:
            for user in self._delegate.get_broadcasts(overhead + _USER_MSG_OVERHEAD, available):
                messages.append(bytes((MessageType.USER,)) + user)
        return messages

    async def _send_packet(
        self, address: GossipAddress, message: bytes, *, crc: bool, piggyback: bool = True
    ) -> None:
        """Send one message, with broadcasts piggybacked in a compound if there is room."""
        messages = [message]
        if piggyback:
            available = (
                self._profile.udp_buffer_size
                - len(message)
                - COMPOUND_HEADER_OVERHEAD
                - self._packet_overhead
            )
            messages.extend(self._get_broadcasts(COMPOUND_PART_OVERHEAD, available))
        await self._send_messages(address, messages, crc=crc)

    async def _send_messages(
        self, address: GossipAddress, messages: Sequence[bytes], *, crc: bool
    ) -> None:
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
            self.stats.packets_sent += 1
            self.stats.bytes_sent += len(data)
            await packets.send_to(data, address)

    # ----------------------------------------------------------------------------------------
    # Receiving packets.

    async def _packet_loop(self, packets: PacketConnection) -> None:
        while True:
            try:
                data, source = await packets.receive_from()
            except trio.ClosedResourceError:
                return
            self.stats.packets_received += 1
            self.stats.bytes_received += len(data)
            try:
                inbound = decode_packet(
                    data,
                    label=self._label,
                    keyring=self._keyring,
                    verify_incoming=self._config.gossip_verify_incoming,
                )
            except GossipDecodeError as exc:
                self.stats.bad_packets += 1
                self._log.throttled(
                    DEBUG, "memberlist.bad-packet", f"Dropping packet from={source}: {clip(exc)}"
                )
                continue
            if inbound.truncated or inbound.problems:
                self.stats.bad_messages += inbound.truncated + len(inbound.problems)
                details = "; ".join(inbound.problems) or f"{inbound.truncated} truncated parts"
                self._log.throttled(
                    DEBUG,
                    "memberlist.bad-parts",
                    f"Bad parts in packet from={source}: {clip(details)}",
                )
            for msg_type, body in inbound.messages:
                try:
                    await self._handle_packet_message(msg_type, body, source)
                except GossipError as exc:
                    self.stats.bad_messages += 1
                    self._log.throttled(
                        DEBUG,
                        "memberlist.bad-message",
                        f"Failed to handle message type {msg_type} from={source}: {clip(exc)}",
                    )

    async def _handle_packet_message(
        self, msg_type: int, body: bytes, source: GossipAddress
    ) -> None:
        now = trio.current_time()
        if msg_type == MessageType.PING:
            await self._on_ping(decode_body(Ping, body), source)
        elif msg_type == MessageType.INDIRECT_PING:
            self._on_indirect_ping(decode_body(IndirectPingReq, body), source)
        elif msg_type == MessageType.ACK_RESP:
            ack = decode_body(AckResp, body)
            waiter = self._ack_waiters.get(ack.seq_no)
            if waiter is not None:
                waiter.payload = ack.payload
                waiter.acked.set()
        elif msg_type == MessageType.NACK_RESP:
            nack = decode_body(NackResp, body)
            waiter = self._ack_waiters.get(nack.seq_no)
            if waiter is not None:
                waiter.nacks += 1
        elif msg_type == MessageType.SUSPECT:
            self._table.suspect(decode_body(Suspect, body), now)
        elif msg_type == MessageType.ALIVE:
            alive = decode_body(Alive, body)
            if alive.port == 0 or self._config.protocol_version < 2:
                alive = replace(alive, port=self._bound_port)
            self._table.alive(alive, now)
        elif msg_type == MessageType.DEAD:
            self._table.dead(decode_body(Dead, body), now)
        elif msg_type == MessageType.USER:
            self._delegate.notify_message(body)
        else:
            raise GossipDecodeError(f"msg type ({msg_type}) not supported")

    def _reply_address(self, addr: bytes, port: int, source: GossipAddress) -> GossipAddress:
        """Where to answer: the announced source if there is one, else the sender."""
        if addr and port > 0:
            try:
                return GossipAddress(str(ipaddress.ip_address(addr)), port)
            except ValueError:
                pass
        return source

    async def _on_ping(self, ping: Ping, source: GossipAddress) -> None:
        if ping.node and ping.node != self._config.name:
            self._log.throttled(
                WARN,
                "memberlist.ping-unexpected-node",
                f"Got ping for unexpected node '{clip(ping.node)}' from={source}",
            )
            return
        reply = self._reply_address(ping.source_addr, ping.source_port, source)
        ack = encode_message(AckResp(ping.seq_no))
        await self._send_packet(reply, ack, crc=self._crc_for(ping.source_node))

    def _on_indirect_ping(self, request: IndirectPingReq, source: GossipAddress) -> None:
        nursery = self._nursery
        if nursery is None:
            return
        try:
            target_ip = ipaddress.ip_address(request.target)
        except ValueError:
            raise GossipDecodeError(
                f"indirect ping target of {len(request.target)} bytes is not an IP"
            ) from None
        if self._indirect_active >= MAX_INDIRECT_PROBES:
            self._log.throttled(
                DEBUG,
                "memberlist.too-many-indirect-probes",
                f"Too many indirect probes, dropping request from={source}",
            )
            return
        port = request.port
        if port == 0 or self._config.protocol_version < 2:
            port = self._bound_port
        target = GossipAddress(str(target_ip), port)
        reply = self._reply_address(request.source_addr, request.source_port, source)
        self._indirect_active += 1
        nursery.start_soon(self._relay_probe, request, target, reply)

    async def _relay_probe(
        self, request: IndirectPingReq, target: GossipAddress, reply: GossipAddress
    ) -> None:
        """Probe ``target`` for another node; forward the ack, or send a nack in time."""
        seq = self._next_seq()
        waiter = self._ack_waiters[seq] = _AckWaiter()
        try:
            ping = encode_message(self._ping(seq, request.node))
            await self._send_packet(target, ping, crc=self._crc_for(request.node))
            with trio.move_on_after(self._profile.probe_timeout):
                await waiter.acked.wait()
            crc = self._crc_for(request.source_node)
            if waiter.acked.is_set():
                ack = encode_message(AckResp(request.seq_no))
                await self._send_packet(reply, ack, crc=crc)
            elif request.nack:
                nack = encode_message(NackResp(request.seq_no))
                await self._send_packet(reply, nack, crc=crc)
        finally:
            self._ack_waiters.pop(seq, None)
            self._indirect_active -= 1

    # ----------------------------------------------------------------------------------------
    # Streams.

    def _new_reader(self, *, response: bool = False) -> StreamReader:
        reader = StreamReader(
            label=self._label,
            keyring=self._keyring,
            verify_incoming=self._config.gossip_verify_incoming,
            max_nodes=min(MAX_PUSH_STATE_NODES, self._table.max_members),
        )
        if response:
            # Replies carry no label header, yet their encryption is bound to our label:
            # feeding the header ourselves makes the reader expect exactly that.
            reader.feed(add_label(b"", self._label))
        return reader

    async def _receive_stream_message(
        self, stream: trio.abc.Stream, reader: StreamReader, held: _Held | None = None
    ) -> StreamMessage | None:
        """The next message on ``stream``; None if it ended cleanly first. With ``held`` (an
        inbound stream), what is read counts against :data:`MAX_INBOUND_STREAM_BYTES`."""
        eof = False
        while True:
            message = reader.next_message()
            if message is not None or eof:
                return message
            data = await stream.receive_some(_STREAM_READ_SIZE)
            if data and held is not None:
                if self._inbound_bytes + len(data) > MAX_INBOUND_STREAM_BYTES:
                    self.stats.streams_over_budget += 1
                    raise GossipDecodeError(
                        "inbound streams hold more than "
                        f"{MAX_INBOUND_STREAM_BYTES >> 20} MiB at once; try again later"
                    )
                self._inbound_bytes += len(data)
                held.count += len(data)
            if data:
                reader.feed(data)
            else:
                reader.feed_eof()
                eof = True

    async def _dial(self, address: GossipAddress) -> trio.abc.Stream:
        with trio.move_on_after(self._profile.tcp_timeout):
            return await self._transport.dial(address)
        raise TimeoutError(f"dial tcp {address}: i/o timeout")

    def _local_state(self, join: bool) -> bytes:
        user_state = self._delegate.local_state(join)
        return self._encoder.push_pull(self._table.push_states(), user_state, join=join)

    async def _merge_remote_state(self, exchange: PushPull) -> None:
        """Check the versions of the whole exchange, then merge it a slice at a time with a
        checkpoint in between (raises :class:`ProtocolVersionError` before any change)."""
        nodes: list[PushNodeState] = [
            replace(node, port=self._bound_port)
            if node.port == 0 or self._config.protocol_version < 2
            else node
            for node in exchange.nodes
        ]
        self._table.verify_protocol(nodes)
        for start in range(0, len(nodes), _MERGE_SLICE):
            if start:
                await trio.lowlevel.checkpoint()
            self._table.apply_states(nodes[start : start + _MERGE_SLICE], trio.current_time())
        if exchange.user_state:
            self._delegate.merge_remote_state(exchange.user_state, exchange.join)
        self.stats.push_pulls += 1

    async def _push_pull(self, address: GossipAddress, *, join: bool) -> None:
        """A full state exchange with ``address`` (raises one of ``_PEER_ERRORS``)."""
        try:
            await self._exchange_state(address, join=join)
        except _PEER_ERRORS:
            self.stats.push_pull_failures += 1
            raise

    async def _exchange_state(self, address: GossipAddress, *, join: bool) -> None:
        timeout = self._profile.tcp_timeout
        stream = await self._dial(address)
        self._log.debug(f"Initiating push/pull sync with: {address}")
        try:
            async with stream:
                with trio.fail_after(timeout):
                    await stream.send_all(self._encoder.preamble() + self._local_state(join))
                with trio.fail_after(timeout):
                    reply = await self._receive_stream_message(
                        stream, self._new_reader(response=True)
                    )
        except trio.TooSlowError:
            raise TimeoutError(f"push/pull with {address}: i/o timeout") from None
        if reply is None:
            raise RemoteStreamError("EOF")
        if isinstance(reply, ErrResp):
            raise RemoteStreamError(f"remote error: {clip(reply.error)}")
        if not isinstance(reply, PushPull):
            raise RemoteStreamError(
                f"received invalid msgType ({_stream_type(reply)}), expected pushPullMsg "
                f"({int(MessageType.PUSH_PULL)}) from={address}"
            )
        await self._merge_remote_state(reply)

    async def _stream_loop(self, listener: StreamListener) -> None:
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
                self.stats.streams_accepted += 1
                nursery.start_soon(self._handle_stream, stream, peer)

    async def serve_stream(self, stream: trio.abc.Stream, peer: GossipAddress) -> None:
        """Serve one inbound gossip stream accepted elsewhere (a server port's byte 6, whose
        type byte is already consumed); owns and closes the stream."""
        self.stats.streams_accepted += 1
        await self._handle_stream(stream, peer)

    async def _handle_stream(self, stream: trio.abc.Stream, peer: GossipAddress) -> None:
        """Serve one inbound stream; every failure stays inside this connection."""
        self._log.throttled(DEBUG, "memberlist.stream-connection", f"Stream connection from={peer}")
        try:
            async with stream:
                await self._serve_stream(stream, peer)
        except _PEER_ERRORS as exc:
            self.stats.bad_streams += 1
            self._log.throttled(
                ERR,
                "memberlist.stream-failed",
                f"Failed to serve stream: {clip(_describe(exc))} from={peer}",
            )

    async def _serve_stream(self, stream: trio.abc.Stream, peer: GossipAddress) -> None:
        held = _Held()
        try:
            await self._serve_stream_message(stream, peer, held)
        finally:
            self._inbound_bytes -= held.count

    async def _serve_stream_message(
        self, stream: trio.abc.Stream, peer: GossipAddress, held: _Held
    ) -> None:
        timeout = self._profile.tcp_timeout
        reader = self._new_reader()
        with trio.fail_after(timeout):
            try:
                message = await self._receive_stream_message(stream, reader, held)
            except GossipDecodeError as exc:
                self.stats.bad_streams += 1
                self._log.throttled(
                    ERR, "memberlist.stream-bad-data", f"failed to receive: {clip(exc)} from={peer}"
                )
                await stream.send_all(self._encoder.err(clip(exc)))
                return
        if message is None:
            return
        if isinstance(message, StreamUserMessage):
            if message.payload:
                self._delegate.notify_message(message.payload)
        elif isinstance(message, PushPull):
            if self._push_pull_active >= MAX_PUSH_PULL_REQUESTS:
                self.stats.bad_streams += 1
                self._log.throttled(
                    ERR,
                    "memberlist.too-many-push-pulls",
                    f"Too many pending push/pull requests, refusing one from={peer}",
                )
                return
            self._push_pull_active += 1
            try:
                with trio.fail_after(timeout):
                    await stream.send_all(self._local_state(message.join))
                try:
                    await self._merge_remote_state(message)
                except ProtocolVersionError as exc:
                    self.stats.bad_streams += 1
                    self._log.throttled(
                        ERR,
                        "memberlist.push-pull-merge-failed",
                        f"Failed push/pull merge: {clip(exc)} from={peer}",
                    )
            finally:
                self._push_pull_active -= 1
        elif isinstance(message, Ping):
            if message.node and message.node != self._config.name:
                self._log.throttled(
                    WARN,
                    "memberlist.stream-ping-unexpected-node",
                    f"Got ping for unexpected node {clip(message.node)} from={peer}",
                )
                return
            with trio.fail_after(timeout):
                await stream.send_all(self._encoder.ack(AckResp(message.seq_no)))
        else:
            self.stats.bad_streams += 1
            self._log.throttled(
                ERR,
                "memberlist.stream-invalid-type",
                f"Received invalid msgType ({_stream_type(message)}) from={peer}",
            )

    # ----------------------------------------------------------------------------------------
    # Probing.

    async def _probe_loop(self) -> None:
        """One probe per tick; ticks missed while a (stretched) probe ran collapse into one,
        like Go's ticker."""
        interval = self._profile.probe_interval
        await trio.sleep(self._rng.random() * interval)
        tick = trio.current_time()
        while True:
            target = self._table.next_probe_target(trio.current_time())
            if target is not None:
                await self._probe_node(target)
            now = trio.current_time()
            tick += interval
            if tick < now:
                tick += math.floor((now - tick) / interval) * interval
            await trio.sleep_until(tick)

    async def _probe_node(self, target: NodeInfo) -> None:
        """One SWIM probe round with Lifeguard (memberlist's ``probeNode``)."""
        profile = self._profile
        self.stats.probes += 1
        interval = self._awareness.scale_timeout(profile.probe_interval)
        seq = self._next_seq()
        ping = self._ping(seq, target.name)
        waiter = self._ack_waiters[seq] = _AckWaiter()
        deadline = trio.current_time() + interval
        crc = target.vsn[1] >= 5
        awareness_delta = 0
        try:
            if target.state == NodeState.ALIVE:
                await self._send_packet(target.address, encode_message(ping), crc=crc)
            else:
                suspect = Suspect(target.incarnation, target.name, self._config.name)
                await self._send_messages(
                    target.address, [encode_message(ping), encode_message(suspect)], crc=crc
                )
            awareness_delta = -1
            with trio.move_on_after(profile.probe_timeout):
                await waiter.acked.wait()
            if waiter.acked.is_set():
                return
            self._log.debug(f"Failed ping: {clip(target.name)} (timeout reached)")

            expected_nacks = 0
            port = self._advertise.port if self._advertise is not None else 0
            for peer in self._table.indirect_helpers(profile.indirect_checks, target.name):
                nack = peer.vsn[1] >= 4
                expected_nacks += nack
                request = IndirectPingReq(
                    seq_no=seq,
                    target=target.addr,
                    port=target.port,
                    node=target.name,
                    nack=nack,
                    source_addr=self._advertise_ip,
                    source_port=port,
                    source_node=self._config.name,
                )
                await self._send_packet(peer.address, encode_message(request), crc=peer.vsn[1] >= 5)

            fallback: list[bool] = []
            async with trio.open_nursery() as nursery:
                if not profile.disable_tcp_pings and target.vsn[1] >= 3:
                    nursery.start_soon(self._fallback_ping, target, ping, deadline, fallback)
                with trio.move_on_at(deadline):
                    await waiter.acked.wait()
                if waiter.acked.is_set():
                    nursery.cancel_scope.cancel()
            if waiter.acked.is_set():
                return
            if fallback:
                self._log.warn(
                    f"Was able to connect to {clip(target.name)} but other probes failed, "
                    "network may be misconfigured"
                )
                return

            # Missing nacks mean our own network is suspect; with no nack expected, any
            # failed probe counts against our health.
            missing = max(0, expected_nacks - waiter.nacks)
            awareness_delta = missing if expected_nacks > 0 else 1
            self.stats.failed_probes += 1
            self._log.info(f"Suspect {clip(target.name)} has failed, no acks received")
            suspect = Suspect(target.incarnation, target.name, self._config.name)
            self._table.suspect(suspect, trio.current_time())
        finally:
            self._ack_waiters.pop(seq, None)
            self._awareness.apply_delta(awareness_delta)

    async def _fallback_ping(
        self, target: NodeInfo, ping: Ping, deadline: float, contacted: list[bool]
    ) -> None:
        """TCP ping until ``deadline``; appends True to ``contacted`` on a matching ack."""
        try:
            with trio.move_on_at(deadline):
                try:
                    stream = await self._transport.dial(target.address)
                except OSError:
                    return  # expected when the node is really down: not worth a log line
                async with stream:
                    await stream.send_all(self._encoder.preamble() + self._encoder.ping(ping))
                    reply = await self._receive_stream_message(
                        stream, self._new_reader(response=True)
                    )
                if not isinstance(reply, AckResp):
                    kind = "EOF" if reply is None else _stream_type(reply)
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
                    contacted.append(True)
        except _PEER_ERRORS as exc:
            self._log.throttled(
                ERR,
                "memberlist.fallback-ping-failed",
                f"Failed fallback ping: {clip(_describe(exc))}",
            )

    # ----------------------------------------------------------------------------------------
    # Gossip, push/pull, suspicion.

    async def _gossip_loop(self) -> None:
        interval = self._profile.gossip_interval
        if interval <= 0 or self._profile.gossip_nodes <= 0:
            return
        await trio.sleep(self._rng.random() * interval)
        tick = trio.current_time()
        while True:
            await self._gossip_once()
            now = trio.current_time()
            tick += interval
            if tick < now:
                tick += math.floor((now - tick) / interval) * interval
            await trio.sleep_until(tick)

    async def _gossip_once(self) -> None:
        now = trio.current_time()
        available = self._profile.udp_buffer_size - COMPOUND_HEADER_OVERHEAD - self._packet_overhead
        for node in self._table.gossip_targets(self._profile.gossip_nodes, now):
            messages = self._get_broadcasts(COMPOUND_PART_OVERHEAD, available)
            if not messages:
                return
            await self._send_messages(node.address, messages, crc=node.vsn[1] >= 5)

    async def _push_pull_loop(self) -> None:
        interval = self._profile.push_pull_interval
        if interval <= 0:
            return
        await trio.sleep(self._rng.random() * interval)
        while True:
            await trio.sleep(
                self._profile.push_pull_interval_for(self._table.estimated_num_nodes())
            )
            target = self._table.push_pull_target()
            if target is None:
                continue
            try:
                await self._push_pull(target.address, join=False)
            except _PEER_ERRORS as exc:
                self._log.throttled(
                    ERR,
                    "memberlist.push-pull-failed",
                    f"Push/Pull with {clip(target.name)} failed: {clip(_describe(exc))}",
                )

    def _wake_suspicion_timer(self) -> None:
        self._suspicion_wakeup.set()

    async def _suspicion_loop(self) -> None:
        while True:
            self._suspicion_wakeup = trio.Event()
            deadline = self._table.next_suspicion_deadline()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await self._suspicion_wakeup.wait()
            self._table.expire(trio.current_time())

    # ----------------------------------------------------------------------------------------
    # Addresses.

    async def _resolve(self, text: str) -> list[GossipAddress]:
        """``[name/]host[:port]`` to addresses; the port defaults to our own."""
        name, slash, rest = text.strip().rpartition("/")
        if slash and not name:
            raise ValueError("empty node name provided")
        host, port = _split_host_port(rest, self._bound_port)
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


def _split_host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):
        host, bracket, tail = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"missing ']' in address {text!r}")
        if not tail:
            return host, default_port
        if not tail.startswith(":"):
            raise ValueError(f"bad address {text!r}")
        return host, _port(tail[1:], text)
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        return host, _port(port_text, text)
    if not text:
        raise ValueError("empty address")
    return text, default_port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 0xFFFF:
        raise ValueError(f"bad port in address {whole!r}")
    return int(text)


def _stream_type(message: StreamMessage) -> int:
    if isinstance(message, PushPull):
        return int(MessageType.PUSH_PULL)
    if isinstance(message, Ping):
        return int(MessageType.PING)
    if isinstance(message, AckResp):
        return int(MessageType.ACK_RESP)
    if isinstance(message, ErrResp):
        return int(MessageType.ERR)
    return int(MessageType.USER)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "i/o timeout"
    if isinstance(exc, OSError):
        return describe_connect_error(exc)
    return str(exc) or type(exc).__name__
