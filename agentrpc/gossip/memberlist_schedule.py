"""The clock side of memberlist: probing, gossip, periodic push/pull and suspicion timeouts.

:class:`Scheduler` runs what hashicorp/memberlist's state.go schedules, over the rules of the
:class:`~agentrpc.gossip.node_table.NodeTable` (which picks targets and applies every state
change) and the packets of :class:`~agentrpc.gossip.memberlist_net.MemberlistNet`:

* the probe loop: one target per probe interval (stretched by the Lifeguard health score), a
  UDP ping (with a suspect piggybacked if the target is suspect), then indirect pings through
  ``indirect_checks`` peers (asking for nacks from those that send them) and a TCP fallback
  ping (to targets that answer one), then suspicion; missing nacks count against our health;
  a direct ack within the probe timeout goes to the config's ping delegate with its RTT and
  payload (serf's coordinates);
* relayed probes: an indirect ping another node asked us for, answered with an ack or a nack;
* the gossip loop: broadcasts packed into packets for ``gossip_nodes`` random peers; it
  sleeps while no broadcast is queued (or nobody is there to gossip to) and, woken by
  :meth:`Scheduler.wake_gossip`, goes on at the next tick of its schedule, so packets leave
  when Go's ticker would send them, without waking an idle node 5 times a second;
* the push/pull loop: a full state exchange with a random alive peer at the scaled interval;
* the suspicion loop: sleeps until the earliest suspicion deadline and expires the table.

Acks and nacks reach the probe waiting for them through :meth:`Scheduler.on_ack` and
:meth:`Scheduler.on_nack` (the engine's packet handler calls them).

Resources: the four loops and every relayed probe run in the nursery given to
:meth:`Scheduler.start` (the engine's); relayed probes run at most
:data:`MAX_INDIRECT_PROBES` at once. Nothing else is held.

Errors: a failed periodic push/pull is logged (throttled) and the loop goes on; the probe's
own failures are the protocol's outcomes (suspicion), never exceptions. Everything else
propagates to the nursery.
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from agentrpc.gossip.awareness import Awareness
from agentrpc.gossip.contract import GossipAddress, NodeInfo
from agentrpc.gossip.memberlist_config import MemberlistConfig, MemberlistStats
from agentrpc.gossip.memberlist_net import PEER_ERRORS, MemberlistNet, describe_peer_error
from agentrpc.gossip.messages import (
    AckResp,
    IndirectPingReq,
    NackResp,
    NodeState,
    Ping,
    Suspect,
    encode_message,
)
from agentrpc.gossip.node_table import NodeTable
from agentrpc.gossip.versions import accepts_crc, sends_nacks, understands_tcp_ping
from agentrpc.log_protocol import DEBUG, ERR, LogLike, clip

__all__ = ["MAX_INDIRECT_PROBES", "Scheduler"]

MAX_INDIRECT_PROBES: Final = 1024
"""Concurrent indirect probes run for other nodes; requests beyond are dropped."""
_UINT32_MASK: Final = 0xFFFFFFFF


class _AckWaiter:
    __slots__ = ("acked", "acked_at", "nacks", "payload")

    def __init__(self) -> None:
        self.acked = trio.Event()
        self.acked_at = 0.0
        self.nacks = 0
        self.payload = b""


class Scheduler:
    """Probe, gossip, push/pull and suspicion timing of one memberlist (see the module).

    ``push_pull`` runs one periodic state exchange with an address (raising one of
    :data:`~agentrpc.gossip.memberlist_net.PEER_ERRORS` when it fails); ``has_broadcasts``
    says whether any broadcast waits to be gossiped (the gossip loop sleeps while it is
    False, until :meth:`wake_gossip`).
    """

    def __init__(
        self,
        config: MemberlistConfig,
        table: NodeTable,
        net: MemberlistNet,
        awareness: Awareness,
        stats: MemberlistStats,
        log: LogLike,
        rng: random.Random,
        *,
        push_pull: Callable[[GossipAddress], Awaitable[None]],
        has_broadcasts: Callable[[], bool],
    ) -> None:
        self._name = config.name
        self._profile = config.profile
        self._ping_delegate = config.ping
        self._table = table
        self._net = net
        self._awareness = awareness
        self._stats = stats
        self._log = log
        self._rng = rng
        self._push_pull = push_pull
        self._has_broadcasts = has_broadcasts
        self._gossip_wakeup = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._source_ip = b""
        self._source_port = 0
        self._seq = 0
        self._ack_waiters: dict[int, _AckWaiter] = {}
        self._relays = 0
        self._suspicion_wakeup = trio.Event()

    def start(self, nursery: trio.Nursery, advertise: GossipAddress) -> None:
        """Start the four loops in ``nursery`` (relayed probes run there too); our pings
        name ``advertise`` as their source."""
        self._source_ip = ipaddress.ip_address(advertise.host).packed
        self._source_port = advertise.port
        self._nursery = nursery
        nursery.start_soon(self._probe_loop)
        nursery.start_soon(self._gossip_loop)
        nursery.start_soon(self._push_pull_loop)
        nursery.start_soon(self._suspicion_loop)

    # ----------------------------------------------------------------------------------------
    # What the packet handler feeds in.

    def on_ack(self, ack: AckResp) -> None:
        waiter = self._ack_waiters.get(ack.seq_no)
        if waiter is not None and not waiter.acked.is_set():
            waiter.payload = ack.payload
            waiter.acked_at = trio.current_time()
            waiter.acked.set()

    def on_nack(self, nack: NackResp) -> None:
        waiter = self._ack_waiters.get(nack.seq_no)
        if waiter is not None:
            waiter.nacks += 1

    def relay(
        self,
        request: IndirectPingReq,
        target: GossipAddress,
        reply: GossipAddress,
        source: GossipAddress,
    ) -> None:
        """Probe ``target`` for the node that sent ``request`` from ``source`` and answer at
        ``reply``, unless :data:`MAX_INDIRECT_PROBES` already run (then drop it)."""
        nursery = self._nursery
        if nursery is None:
            return
        if self._relays >= MAX_INDIRECT_PROBES:
            self._log.throttled(
                DEBUG,
                "memberlist.too-many-indirect-probes",
                f"Too many indirect probes, dropping request from={source}",
            )
            return
        self._relays += 1
        nursery.start_soon(self._relay_probe, request, target, reply)

    def wake_gossip(self) -> None:
        """A broadcast was queued: a sleeping gossip loop goes on at its next tick."""
        self._gossip_wakeup.set()

    def wake_suspicion_timer(self) -> None:
        """A suspicion started, changed or ended: recompute the next deadline."""
        self._suspicion_wakeup.set()

    # ----------------------------------------------------------------------------------------
    # Probing.

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & _UINT32_MASK
        return self._seq

    def _ping(self, seq: int, node: str) -> Ping:
        return Ping(seq, node, self._source_ip, self._source_port, self._name)

    def crc_for(self, name: str) -> bool:
        """Whether packets to the node called ``name`` carry a CRC: only if it is known to
        check one."""
        info = self._table.get(name) if name else None
        return info is not None and accepts_crc(info.vsn)

    async def _probe_loop(self) -> None:
        """One probe per tick; ticks missed while a (stretched) probe ran collapse into one,
        like Go's ticker."""
        await self._every(self._profile.probe_interval, self._probe_next)

    async def _probe_next(self) -> None:
        target = self._table.next_probe_target(trio.current_time())
        if target is not None:
            await self._probe_node(target)

    async def _probe_node(self, target: NodeInfo) -> None:
        """One SWIM probe round with Lifeguard (memberlist's ``probeNode``)."""
        profile = self._profile
        self._stats.probes += 1
        interval = self._awareness.scale_timeout(profile.probe_interval)
        seq = self._next_seq()
        ping = self._ping(seq, target.name)
        waiter = self._ack_waiters[seq] = _AckWaiter()
        sent = trio.current_time()  # before the send, as Go marks it (never a negative RTT)
        deadline = sent + interval
        crc = accepts_crc(target.vsn)
        awareness_delta = 0
        try:
            if target.state == NodeState.ALIVE:
                await self._net.send_packet(target.address, encode_message(ping), crc=crc)
            else:
                suspect = Suspect(target.incarnation, target.name, self._name)
                await self._net.send_messages(
                    target.address, [encode_message(ping), encode_message(suspect)], crc=crc
                )
            awareness_delta = -1
            with trio.move_on_after(profile.probe_timeout):
                await waiter.acked.wait()
            if waiter.acked.is_set():
                # Only a direct ack in time measures the RTT (later ones, indirect ones and
                # TCP ones do not), as memberlist's probeNode.
                if self._ping_delegate is not None:
                    rtt = waiter.acked_at - sent
                    self._ping_delegate.notify_ping_complete(target, rtt, waiter.payload)
                return
            self._log.debug(f"Failed ping: {clip(target.name)} (timeout reached)")

            expected_nacks = 0
            for peer in self._table.indirect_helpers(profile.indirect_checks, target.name):
                nack = sends_nacks(peer.vsn)
                expected_nacks += nack
                request = IndirectPingReq(
                    seq_no=seq,
                    target=target.addr,
                    port=target.port,
                    node=target.name,
                    nack=nack,
                    source_addr=self._source_ip,
                    source_port=self._source_port,
                    source_node=self._name,
                )
                await self._net.send_packet(
                    peer.address, encode_message(request), crc=accepts_crc(peer.vsn)
                )

            fallback: list[bool] = []
            async with trio.open_nursery() as nursery:
                if not profile.disable_tcp_pings and understands_tcp_ping(target.vsn):
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
            self._stats.failed_probes += 1
            self._log.info(f"Suspect {clip(target.name)} has failed, no acks received")
            suspect = Suspect(target.incarnation, target.name, self._name)
            self._table.suspect(suspect, trio.current_time())
        finally:
            self._ack_waiters.pop(seq, None)
            self._awareness.apply_delta(awareness_delta)

    async def _fallback_ping(
        self, target: NodeInfo, ping: Ping, deadline: float, contacted: list[bool]
    ) -> None:
        """TCP ping until ``deadline``; appends True to ``contacted`` on a matching ack."""
        with trio.move_on_at(deadline):
            if await self._net.fallback_ping(target.address, ping):
                contacted.append(True)

    async def _relay_probe(
        self, request: IndirectPingReq, target: GossipAddress, reply: GossipAddress
    ) -> None:
        """Probe ``target`` for another node; forward the ack, or send a nack in time."""
        seq = self._next_seq()
        waiter = self._ack_waiters[seq] = _AckWaiter()
        try:
            ping = encode_message(self._ping(seq, request.node))
            await self._net.send_packet(target, ping, crc=self.crc_for(request.node))
            with trio.move_on_after(self._profile.probe_timeout):
                await waiter.acked.wait()
            crc = self.crc_for(request.source_node)
            if waiter.acked.is_set():
                ack = encode_message(AckResp(request.seq_no))
                await self._net.send_packet(reply, ack, crc=crc)
            elif request.nack:
                nack = encode_message(NackResp(request.seq_no))
                await self._net.send_packet(reply, nack, crc=crc)
        finally:
            self._ack_waiters.pop(seq, None)
            self._relays -= 1

    # ----------------------------------------------------------------------------------------
    # Gossip, push/pull, suspicion.

    async def _every(self, interval: float, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` once per ``interval`` after a random first delay; ticks missed while
        a step ran long collapse into one, like Go's ticker."""
        await trio.sleep(self._rng.random() * interval)
        tick = trio.current_time()
        while True:
            await step()
            now = trio.current_time()
            tick += interval
            if tick < now:
                tick += math.floor((now - tick) / interval) * interval
            await trio.sleep_until(tick)

    async def _gossip_loop(self) -> None:
        """Go's gossip ticker, except that it stops while there is nothing to gossip: with
        every queue empty, or nobody to send to, it waits for :meth:`wake_gossip` and goes
        on at the first tick of the same schedule after the wake-up."""
        interval = self._profile.gossip_interval
        if interval <= 0 or self._profile.gossip_nodes <= 0:
            return
        await trio.sleep(self._rng.random() * interval)
        tick = trio.current_time()
        while True:
            sent = await self._gossip_once()
            tick += interval
            if not (sent and self._has_broadcasts()):
                self._gossip_wakeup = trio.Event()
                await self._gossip_wakeup.wait()
                # The first tick of the schedule after the wake-up, as a ticker that ran on.
                now = trio.current_time()
                if tick < now:
                    tick += math.ceil((now - tick) / interval) * interval
            else:
                now = trio.current_time()
                if tick < now:  # a slow round: missed ticks collapse into one
                    tick += math.floor((now - tick) / interval) * interval
            await trio.sleep_until(tick)

    async def _gossip_once(self) -> bool:
        """One gossip round; False when there was nobody to gossip to or nothing to send."""
        self._stats.gossip_rounds += 1
        now = trio.current_time()
        if not self._has_broadcasts():
            return False
        targets = self._table.gossip_targets(self._profile.gossip_nodes, now)
        for node in targets:
            if not await self._net.gossip(node.address, crc=accepts_crc(node.vsn)):
                return False
        return bool(targets)

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
                await self._push_pull(target.address)
            except PEER_ERRORS as exc:
                self._log.throttled(
                    ERR,
                    "memberlist.push-pull-failed",
                    f"Push/Pull with {clip(target.name)} failed: {clip(describe_peer_error(exc))}",
                )

    async def _suspicion_loop(self) -> None:
        while True:
            self._suspicion_wakeup = trio.Event()
            deadline = self._table.next_suspicion_deadline()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await self._suspicion_wakeup.wait()
            self._table.expire(trio.current_time())
