"""Memberlist on Trio: SWIM gossip with the Lifeguard extensions, wire-compatible with
hashicorp/memberlist 0.2.x (a real ``serf`` agent can be a peer).

:class:`Memberlist` is the engine, in three parts that mirror memberlist's own files:

* the rules about nodes live in the sans-I/O :class:`~agentrpc.gossip.node_table.NodeTable`
  (state.go's ``aliveNode``, ``suspectNode``, ``deadNode``, ``mergeState``), and what each
  version number means in :mod:`~agentrpc.gossip.versions`;
* the network side, :class:`~agentrpc.gossip.memberlist_net.MemberlistNet` (net.go's I/O):
  packets and streams in and out, the codecs, the byte and time bounds, dialling, resolving;
* the clock side, :class:`~agentrpc.gossip.memberlist_schedule.Scheduler` (state.go's
  scheduling): probe, gossip, push/pull and suspicion loops.

This module joins them (memberlist.go, with net.go's handlers): it takes each event the
network delivers, hands it to the rules or the scheduler, and has the network send what they
answer; and it is the :class:`~agentrpc.gossip.contract.MemberlistHandle` the membership layer
calls (join, leave, meta, reliable messages, the node bound).

``run`` binds the transport and runs, in one nursery, until cancelled: the packet loop
(ping, indirect ping, ack, nack, suspect, alive, dead and user messages), the stream loop
(push/pull, at most :data:`MAX_PUSH_PULL_REQUESTS` at once; fallback pings; user messages;
``err`` for what it cannot read) and the scheduler's loops.

Bounds against hostile peers: the node table holds at most ``max_members`` nodes (config
``gossip_max_members``; :meth:`Memberlist.set_max_members` changes it at run time), shared by
alive messages and push/pulls; unknown nodes past it are ignored and counted
(``stats.refused_members``). A push/pull whose header declares more nodes than that bound is
refused before a single node state is decoded (``err`` reply, counted in ``bad_streams``): a
peer with more nodes than we may hold cannot be merged anyway, and this is the cheapest
honest refusal, costing the bytes of the header and nothing per node. A push/pull within the
bound is decoded as its bytes arrive and merged in slices of ``_MERGE_SLICE`` nodes with a
checkpoint between them, so even a full one never holds the event loop for long. All inbound
streams together hold at most :data:`MAX_INBOUND_STREAM_BYTES`. Every log line a peer can
cause at will (bad packets and streams, pings for another node, refused or failed push/pulls,
invalid message types, too many push/pulls or indirect probes) goes through the logger's
per-kind throttle (``memberlist.*`` keys, at most one line a second each), and every string
the peer chose is cut with :func:`agentrpc.log_protocol.clip`.

Outbound UDP is compressed only when that makes it smaller and carries a CRC only for peers
that check one; stream messages are always compressed (as Go does). Give the constructor a
logger for the ``memberlist`` component: lines then read as Go's do, e.g.
``[INFO] memberlist: Suspect node2 has failed, no acks received``.

Resources: a Memberlist runs once; its sockets are bound in ``run`` and closed when ``run``
returns. Errors: nothing a peer does is fatal (see the parts); ``run`` raises for a bind or
configuration it cannot run with, ``join`` reports failures per address, ``send_reliable``
raises ``OSError``.
"""

from __future__ import annotations

import errno
import ipaddress
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Final, Protocol

import trio

from agentrpc.gossip.awareness import Awareness
from agentrpc.gossip.contract import (
    GossipAddress,
    GossipTransport,
    MemberlistDelegate,
    MemberlistEvents,
    NodeInfo,
)
from agentrpc.gossip.memberlist_config import MemberlistConfig, MemberlistStats
from agentrpc.gossip.memberlist_net import (
    PEER_ERRORS,
    MemberlistNet,
    PacketMessage,
    RemoteStreamError,
    describe_peer_error,
    stream_message_type,
)
from agentrpc.gossip.memberlist_schedule import MAX_INDIRECT_PROBES, Scheduler
from agentrpc.gossip.messages import (
    MAX_PUSH_STATE_NODES,
    META_MAX_SIZE,
    AckResp,
    Alive,
    Dead,
    GossipDecodeError,
    IndirectPingReq,
    MessageType,
    NackResp,
    Ping,
    PushNodeState,
    Suspect,
    encode_message,
)
from agentrpc.gossip.node_table import NodeTable, ProtocolVersionError
from agentrpc.gossip.security import Keyring
from agentrpc.gossip.stream import PushPull, StreamMessage, StreamReader, StreamUserMessage
from agentrpc.gossip.versions import DEFAULT_VSN, announced_port
from agentrpc.log_protocol import ERR, WARN, LogLike, clip

__all__ = [
    "DEFAULT_VSN",
    "ConflictDelegate",
    "MAX_INBOUND_STREAM_BYTES",
    "MAX_INDIRECT_PROBES",
    "MAX_PUSH_PULL_REQUESTS",
    "Memberlist",
    "MemberlistConfig",
    "MemberlistStats",
    "RemoteStreamError",
]

MAX_PUSH_PULL_REQUESTS: Final = 128
"""Concurrent inbound push/pulls served (memberlist's maxPushPullRequests)."""
MAX_INBOUND_STREAM_BYTES: Final = 32 << 20
"""Bytes that all inbound streams together may have read and not finished handling (32 MiB);
a stream that would pass it is refused. Each stream's own caps (state size, node count) bound
one message; this bounds how many of them are in memory at once. A slow stream holds only what
it has sent, so a slow-loris cannot keep the others out. Read when a Memberlist is built."""
_MERGE_SLICE: Final = 512
"""Node states of a push/pull merged between two checkpoints."""
_USER_MSG_OVERHEAD: Final = 1


class ConflictDelegate(Protocol):
    """Memberlist's ``ConflictDelegate``: hears when an alive message (gossiped or in a
    push/pull) gives a known name another address while the known node is neither left nor
    reclaimable; the message itself is ignored, as before."""

    def notify_conflict(self, existing: NodeInfo, other: NodeInfo) -> None: ...


class Memberlist:
    """One gossip membership (implements :class:`~agentrpc.gossip.contract.MemberlistHandle`)."""

    def __init__(
        self,
        config: MemberlistConfig,
        delegate: MemberlistDelegate,
        events: MemberlistEvents,
        logger: LogLike,
        transport: GossipTransport,
        rng: random.Random | None = None,
        *,
        conflict: ConflictDelegate | None = None,
    ) -> None:
        self._config = config
        self._delegate = delegate
        self._log = logger
        rng = rng if rng is not None else random.Random()
        self._stats = MemberlistStats()
        self._awareness = Awareness(config.profile.awareness_max_multiplier)
        self._table = NodeTable(
            config.name,
            config.profile,
            rng=rng,
            events=events,
            log=logger,
            awareness=self._awareness,
            on_suspicion_change=self._wake_suspicion_timer,
            on_conflict=conflict.notify_conflict if conflict is not None else None,
            on_broadcast=self.wake_gossip,
            max_members=config.max_members,
        )
        self._net = MemberlistNet(
            config,
            transport,
            self._stats,
            logger,
            broadcasts=self._broadcasts,
            max_nodes=self._max_push_nodes,
            inbound_budget=MAX_INBOUND_STREAM_BYTES,
        )
        self._schedule = Scheduler(
            config,
            self._table,
            self._net,
            self._awareness,
            self._stats,
            logger,
            rng,
            push_pull=self._periodic_push_pull,
            has_broadcasts=self._has_broadcasts,
        )
        self._advertise: GossipAddress | None = None
        self._bound_port = config.bind.port
        self._started = False
        self._push_pull_active = 0

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

    @property
    def inbound_stream_bytes(self) -> int:
        """What all inbound streams together have read and not finished handling."""
        return self._net.inbound_bytes

    def new_stream_reader(self) -> StreamReader:
        """A stream reader with this engine's limits as they are now (the node cap included),
        for tools that decode what a peer would send."""
        return self._net.new_reader()

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
                targets.extend(await self._net.resolve(text, self._bound_port))
            except (OSError, ValueError) as exc:
                message = f"Failed to resolve {text}: {exc}"
                self._log.warn(message)
                errors.append(message)
        outcomes: list[str | None] = [None] * len(targets)

        async def join_one(index: int, address: GossipAddress) -> None:
            try:
                await self._push_pull(address, join=True)
            except PEER_ERRORS as exc:
                outcomes[index] = f"Failed to join {address.host}: {clip(describe_peer_error(exc))}"
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
        self._table.update_local(self._node_meta(), trio.current_time())

    async def send_reliable(self, node: str, payload: bytes) -> None:
        info = self._table.get(node)
        if info is None:
            raise OSError(errno.EHOSTUNREACH, f"unknown node {node!r}")
        await self._net.send_user_message(info.address, payload)

    async def send_to_address(self, address: GossipAddress, payload: bytes) -> None:
        """A user message in one UDP packet to ``address`` (memberlist's ``SendToAddress``:
        no piggybacked broadcasts, no CRC, encrypted like every packet). Best effort."""
        await self._net.send_messages(address, [bytes((MessageType.USER,)) + payload], crc=False)

    def wake_gossip(self) -> None:
        """Something was queued to gossip: the gossip loop, asleep while every broadcast
        queue is empty, sends it on its next tick (the delegate calls this, see
        :meth:`~agentrpc.gossip.contract.MemberlistDelegate.has_broadcasts`)."""
        self._schedule.wake_gossip()

    @property
    def keyring(self) -> Keyring | None:
        """The keyring packets and streams are sealed and opened with (None: plaintext)."""
        return self._net.keyring

    def set_keyring(self, keyring: Keyring) -> None:
        """Use ``keyring`` from now on: its primary key seals what we send, all its keys
        open what we receive (serf's key queries change it; memberlist encrypts from the
        start or never, so this cannot turn encryption on)."""
        self._net.set_keyring(keyring)

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
        local = await self._net.bind(self._config.bind)
        try:
            self._bound_port = local.port
            advertise = self._config.advertise or local
            ip = ipaddress.ip_address(advertise.host)
            if ip.is_unspecified:
                raise ValueError(f"cannot advertise {advertise}: give an advertise address")
            meta = self._node_meta()
            self._advertise = advertise
            self._table.set_alive(
                ip.packed, advertise.port, meta, self._config.vsn, trio.current_time()
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._net.serve_packets, self._on_packet)
                nursery.start_soon(self._net.serve_streams, self._on_stream)
                self._schedule.start(nursery, advertise)
                task_status.started(advertise)
        finally:
            await self._net.aclose()

    async def serve_stream(self, stream: trio.abc.Stream, peer: GossipAddress) -> None:
        """Serve one inbound gossip stream accepted elsewhere (a server port's byte 6, whose
        type byte is already consumed); owns and closes the stream."""
        self.stats.streams_accepted += 1
        await self._net.serve_stream(stream, peer, self._on_stream)

    def _node_meta(self) -> bytes:
        meta = self._delegate.node_meta(META_MAX_SIZE)
        if len(meta) > META_MAX_SIZE:
            raise ValueError(f"node meta of {len(meta)} bytes exceeds {META_MAX_SIZE}")
        return meta

    # ----------------------------------------------------------------------------------------
    # What the network asks of the rules.

    def _broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        """Our broadcasts first, then the delegate's as user messages, within ``limit``."""
        messages = self._table.broadcasts.get_broadcasts(overhead, limit)
        available = limit - sum(len(message) + overhead for message in messages)
        if available > overhead + _USER_MSG_OVERHEAD:
            for user in self._delegate.get_broadcasts(overhead + _USER_MSG_OVERHEAD, available):
                messages.append(bytes((MessageType.USER,)) + user)
        return messages

    def _has_broadcasts(self) -> bool:
        return bool(self._table.broadcasts) or self._delegate.has_broadcasts()

    def _max_push_nodes(self) -> int:
        """Nodes an inbound push/pull may declare: what the table may hold."""
        return min(MAX_PUSH_STATE_NODES, self._table.max_members)

    def _wake_suspicion_timer(self) -> None:
        self._schedule.wake_suspicion_timer()

    # ----------------------------------------------------------------------------------------
    # Packets.

    async def _on_packet(self, message: PacketMessage, source: GossipAddress) -> None:
        """One message of a packet from ``source``, to the rules or the scheduler."""
        now = trio.current_time()
        if isinstance(message, Ping):
            await self._on_ping(message, source)
        elif isinstance(message, IndirectPingReq):
            self._on_indirect_ping(message, source)
        elif isinstance(message, AckResp):
            self._schedule.on_ack(message)
        elif isinstance(message, NackResp):
            self._schedule.on_nack(message)
        elif isinstance(message, Suspect):
            self._table.suspect(message, now)
        elif isinstance(message, Alive):
            port = announced_port(message.port, self._config.protocol_version, self._bound_port)
            self._table.alive(message if port == message.port else replace(message, port=port), now)
        elif isinstance(message, Dead):
            self._table.dead(message, now)
        elif isinstance(message, bytes):
            self._delegate.notify_message(message)
        else:
            raise GossipDecodeError(f"msg type ({message.MESSAGE_TYPE}) not supported")

    async def _on_ping(self, ping: Ping, source: GossipAddress) -> None:
        if not self._ping_is_for_us(ping, source, "memberlist.ping-unexpected-node", "'"):
            return
        reply = _reply_address(ping.source_addr, ping.source_port, source)
        ping_delegate = self._config.ping
        payload = ping_delegate.ack_payload() if ping_delegate is not None else b""
        ack = encode_message(AckResp(ping.seq_no, payload))
        await self._net.send_packet(reply, ack, crc=self._schedule.crc_for(ping.source_node))

    def _ping_is_for_us(self, ping: Ping, peer: GossipAddress, key: str, quote: str = "") -> bool:
        """True unless ``ping`` names another node (then log it under ``key``, the name in
        ``quote`` marks as Go's packet and stream handlers print it)."""
        if not ping.node or ping.node == self._config.name:
            return True
        name = f"{quote}{clip(ping.node)}{quote}"
        self._log.throttled(WARN, key, f"Got ping for unexpected node {name} from={peer}")
        return False

    def _on_indirect_ping(self, request: IndirectPingReq, source: GossipAddress) -> None:
        try:
            target_ip = ipaddress.ip_address(request.target)
        except ValueError:
            raise GossipDecodeError(
                f"indirect ping target of {len(request.target)} bytes is not an IP"
            ) from None
        port = announced_port(request.port, self._config.protocol_version, self._bound_port)
        target = GossipAddress(str(target_ip), port)
        reply = _reply_address(request.source_addr, request.source_port, source)
        self._schedule.relay(request, target, reply, source)

    # ----------------------------------------------------------------------------------------
    # Streams and state exchange.

    async def _on_stream(
        self, stream: trio.abc.Stream, message: StreamMessage, peer: GossipAddress
    ) -> None:
        """The first message of an inbound stream from ``peer``, answered on ``stream``."""
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
                await self._net.reply(stream, self._local_state(message.join))
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
            if not self._ping_is_for_us(message, peer, "memberlist.stream-ping-unexpected-node"):
                return
            await self._net.reply(stream, self._net.encoder.ack(AckResp(message.seq_no)))
        else:
            self.stats.bad_streams += 1
            self._log.throttled(
                ERR,
                "memberlist.stream-invalid-type",
                f"Received invalid msgType ({stream_message_type(message)}) from={peer}",
            )

    def _local_state(self, join: bool) -> bytes:
        user_state = self._delegate.local_state(join)
        return self._net.encoder.push_pull(self._table.push_states(), user_state, join=join)

    async def _merge_remote_state(self, exchange: PushPull) -> None:
        """Check the versions of the whole exchange, then merge it a slice at a time with a
        checkpoint in between (raises :class:`ProtocolVersionError` before any change)."""
        version, bound = self._config.protocol_version, self._bound_port
        nodes: list[PushNodeState] = []
        for node in exchange.nodes:
            port = announced_port(node.port, version, bound)
            nodes.append(node if port == node.port else replace(node, port=port))
        self._table.verify_protocol(nodes)
        for start in range(0, len(nodes), _MERGE_SLICE):
            if start:
                await trio.lowlevel.checkpoint()
            self._table.apply_states(nodes[start : start + _MERGE_SLICE], trio.current_time())
        if exchange.user_state:
            self._delegate.merge_remote_state(exchange.user_state, exchange.join)
        self.stats.push_pulls += 1

    async def _push_pull(self, address: GossipAddress, *, join: bool) -> None:
        """A full state exchange with ``address`` (raises one of ``PEER_ERRORS``)."""
        try:
            reply = await self._net.exchange_state(address, lambda: self._local_state(join))
            await self._merge_remote_state(reply)
        except PEER_ERRORS:
            self.stats.push_pull_failures += 1
            raise

    async def _periodic_push_pull(self, address: GossipAddress) -> None:
        await self._push_pull(address, join=False)


def _reply_address(addr: bytes, port: int, source: GossipAddress) -> GossipAddress:
    """Where to answer: the announced source if there is one, else the sender."""
    if addr and port > 0:
        try:
            return GossipAddress(str(ipaddress.ip_address(addr)), port)
        except ValueError:
            pass
    return source
