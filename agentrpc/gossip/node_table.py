"""Memberlist's view of the cluster, as pure state: nodes, incarnations, suspicion, broadcasts.

This is the sans-I/O heart of the gossip layer. It applies hashicorp/memberlist's rules
(``aliveNode``, ``suspectNode``, ``deadNode``, ``mergeState``, ``verifyProtocol``, ``refute``
in state.go) to a node map, and turns what changed into

* broadcasts queued in a :class:`~agentrpc.gossip.broadcast_queue.BroadcastQueue`, named
  after the node they are about (so a newer message about a node replaces an older one), each
  an encoded alive/suspect/dead message ready to be piggybacked;
* calls on :class:`~agentrpc.gossip.contract.MemberlistEvents` (join, leave, update);
* suspicion timers (Lifeguard :class:`~agentrpc.gossip.suspicion.Suspicion`) whose next
  deadline the engine sleeps until before calling :meth:`NodeTable.expire`.

Time and randomness are injected: every method that changes state takes ``now`` (the engine
passes ``trio.current_time()``), and peer choice uses the ``random.Random`` given at
construction. Nothing here does I/O or imports trio.

The rules, in short (see the methods for the details):

* An alive message about another node wins only with a newer incarnation (or when it
  reclaims a left node's name from a new address). About ourselves, an older one is ignored,
  the same one is ignored unless Meta or Vsn differ, and anything else is refuted: our
  incarnation becomes ``max(own + 1, accused + 1)``, our health score gets worse by one and a
  fresh alive message is broadcast.
* A suspect or dead message about ourselves is refuted the same way (unless we are leaving:
  then our own dead message is what we broadcast). About others, it must not be older than
  what we know; a suspect for an already suspected node counts as a confirmation and shrinks
  the timer.
* ``dead`` with ``Node == From`` is a voluntary leave: the node becomes LEFT, not DEAD.
* Push/pull state is merged after a protocol-version check over the whole cluster: alive
  states as alive messages, left as a voluntary dead, dead and suspect downgraded to suspect.
* The map holds at most ``max_members`` nodes (config ``gossip_max_members``, 50,000 by
  default; :meth:`NodeTable.set_max_members` changes it at run time). Alive messages and
  push/pull merges share that one bound: past it, an alive state about a node we do not know
  is ignored and counted (:attr:`NodeTable.refused_members`), and one throttled WARN says
  so. Known nodes still update. As in Go, a suspect or dead message about a node we do not
  know is ignored: it never creates an entry. Lowering the bound evicts nobody; the map just
  stops growing until it is below the new bound.

Every log line a peer can cause at will goes through the logger's per-kind throttle, and
every string a peer chose (node names, Meta) is cut with :func:`agentrpc.log_protocol.clip`.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

from agentrpc.gossip.awareness import Awareness
from agentrpc.gossip.broadcast_queue import Broadcast, BroadcastQueue
from agentrpc.gossip.contract import NodeInfo
from agentrpc.gossip.messages import (
    META_MAX_SIZE,
    Alive,
    Dead,
    GossipEncodeError,
    GossipMessage,
    NodeState,
    PushNodeState,
    Suspect,
    Vsn,
    encode_message,
)
from agentrpc.gossip.probe_order import ProbeOrder, k_random_nodes
from agentrpc.gossip.profiles import GossipProfile
from agentrpc.gossip.suspicion import Suspicion
from agentrpc.log_protocol import ERR, INFO, WARN, LogLike, NullLog, clip

if TYPE_CHECKING:
    from agentrpc.gossip.contract import MemberlistEvents

__all__ = [
    "DEFAULT_MAX_MEMBERS",
    "NO_VSN",
    "NodeRecord",
    "NodeTable",
    "ProtocolVersionError",
    "TableLog",
]

NO_VSN: Vsn = (0, 0, 0, 0, 0, 0)
"""The versions of a node that never told us its versions (Go's zero values)."""

_UINT32_MASK = 0xFFFFFFFF


class ProtocolVersionError(ValueError):
    """A push/pull would bring in a node whose current protocol or delegate version lies
    outside the range every alive node understands (memberlist's ``verifyProtocol``)."""


TableLog = LogLike
"""The logging this module needs (:class:`agentrpc.log_protocol.LogLike`; the agent's
:class:`agentrpc.logs.Logger` fits)."""


def _ip_text(addr: bytes) -> str:
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        return f"<{clip(addr.hex())}>"


@dataclass(slots=True)
class NodeRecord:
    """What the table knows of one node (memberlist's ``nodeState``); mutable, internal."""

    name: str
    addr: bytes
    port: int
    meta: bytes
    incarnation: int
    state: NodeState
    vsn: Vsn
    state_change: float

    @property
    def pmax(self) -> int:
        """The highest memberlist protocol version the node understands."""
        return self.vsn[1]

    @property
    def dead_or_left(self) -> bool:
        return self.state in (NodeState.DEAD, NodeState.LEFT)

    def snapshot(self) -> NodeInfo:
        return NodeInfo(
            name=self.name,
            addr=self.addr,
            port=self.port,
            meta=self.meta,
            incarnation=self.incarnation,
            state=self.state,
            vsn=self.vsn,
            state_change=self.state_change,
        )


@dataclass(slots=True)
class _SuspicionTimer:
    suspicion: Suspicion
    change_time: float
    """The suspect's ``state_change`` when the timer started; a different value at expiry
    means the node moved on (refuted, died, was suspected anew) and the timer is stale."""


DEFAULT_MAX_MEMBERS: Final = 50_000
"""Members one pool keeps at most (config ``gossip_max_members``)."""


def _check_max_members(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_members must be a positive integer, got {value!r}")
    return value


class NodeTable:
    """The node map of one memberlist instance, with memberlist's state rules."""

    def __init__(
        self,
        local_name: str,
        profile: GossipProfile,
        *,
        rng: random.Random,
        events: MemberlistEvents | None = None,
        log: TableLog | None = None,
        awareness: Awareness | None = None,
        on_suspicion_change: Callable[[], None] | None = None,
        on_conflict: Callable[[NodeInfo, NodeInfo], None] | None = None,
        on_broadcast: Callable[[], None] | None = None,
        max_members: int = DEFAULT_MAX_MEMBERS,
    ) -> None:
        """``on_suspicion_change`` is called whenever a suspicion timer starts, stops or
        changes its deadline, so that the engine re-reads :meth:`next_suspicion_deadline`.
        ``on_conflict(existing, other)`` is memberlist's ``NotifyConflict``: an alive gave a
        known name another address while the known node is neither left nor reclaimable (the
        message itself is refused). ``on_broadcast`` is called whenever a message is queued on
        :attr:`broadcasts`. ``max_members`` bounds the node map (ourselves included)."""
        self._max_members = _check_max_members(max_members)
        self.refused_members = 0
        """Alive states about unknown nodes ignored because the map was full."""
        self.local_name = local_name
        self.profile = profile
        self._on_conflict = on_conflict
        self._rng = rng
        self._events = events
        self._log: TableLog = log if log is not None else NullLog()
        self.awareness = (
            awareness if awareness is not None else Awareness(profile.awareness_max_multiplier)
        )
        self._on_suspicion_change = on_suspicion_change
        self._nodes: dict[str, NodeRecord] = {}
        self._order: ProbeOrder[str] = ProbeOrder(rng)
        self._timers: dict[str, _SuspicionTimer] = {}
        self._incarnation = 0
        self._local_vsn: Vsn = NO_VSN
        self.has_left = False
        self.broadcasts = BroadcastQueue(
            profile.retransmit_mult, self.estimated_num_nodes, on_queued=on_broadcast
        )

    # ----------------------------------------------------------------------------------------
    # The bound.

    @property
    def max_members(self) -> int:
        """Nodes the map holds at most (ourselves included)."""
        return self._max_members

    def set_max_members(self, max_members: int) -> None:
        """Change the bound (``reload``); nobody is evicted when it shrinks."""
        self._max_members = _check_max_members(max_members)

    def _refuse(self, name: str) -> None:
        self.refused_members += 1
        self._log.throttled(
            WARN,
            "memberlist.max-members",
            f"Ignoring node '{clip(name)}' and any other new node: the pool already has "
            f"{len(self._nodes)} members (gossip_max_members is {self._max_members}); "
            f"{self.refused_members} refused so far",
        )

    # ----------------------------------------------------------------------------------------
    # Reading.

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, name: object) -> bool:
        return name in self._nodes

    def estimated_num_nodes(self) -> int:
        """memberlist's ``numNodes``: every node in the map, ourselves and dead ones
        included, until dead nodes are reaped at the end of a probe pass."""
        return len(self._nodes)

    @property
    def local_incarnation(self) -> int:
        """The incarnation counter of the local node."""
        return self._incarnation

    def get(self, name: str) -> NodeInfo | None:
        record = self._nodes.get(name)
        return None if record is None else record.snapshot()

    def local(self) -> NodeInfo | None:
        """The local node, once :meth:`set_alive` has run."""
        return self.get(self.local_name)

    def members(self) -> list[NodeInfo]:
        """Every known node in any state, the local one included."""
        return [record.snapshot() for record in self._nodes.values()]

    def num_alive(self) -> int:
        """Nodes neither dead nor left (alive or suspect), ourselves included, as
        memberlist's ``NumMembers`` counts them."""
        return sum(1 for record in self._nodes.values() if not record.dead_or_left)

    def any_alive_peer(self) -> bool:
        """Whether any other node is alive or suspect (memberlist's ``anyAlive``)."""
        return any(
            not record.dead_or_left and record.name != self.local_name
            for record in self._nodes.values()
        )

    def suspicion(self, name: str) -> Suspicion | None:
        """The running suspicion timer of ``name``, if it has one."""
        timer = self._timers.get(name)
        return None if timer is None else timer.suspicion

    # ----------------------------------------------------------------------------------------
    # The local node.

    def _next_incarnation(self) -> int:
        self._incarnation = (self._incarnation + 1) & _UINT32_MASK
        return self._incarnation

    def set_alive(self, addr: bytes, port: int, meta: bytes, vsn: Vsn, now: float) -> None:
        """Add the local node as alive with the next incarnation and broadcast it
        (memberlist's ``setAlive``)."""
        self._local_vsn = vsn
        message = Alive(self._next_incarnation(), self.local_name, addr, port, meta, vsn)
        self.alive(message, now, bootstrap=True)

    def update_local(
        self, meta: bytes, now: float, *, finished: Callable[[], None] | None = None
    ) -> None:
        """Re-advertise the local node with new Meta and a higher incarnation
        (memberlist's ``UpdateNode``); ``finished`` runs when the broadcast is done."""
        record = self._nodes.get(self.local_name)
        if record is None:
            raise RuntimeError("the local node is not in the node map yet")
        message = Alive(
            self._next_incarnation(),
            self.local_name,
            record.addr,
            record.port,
            meta,
            self._local_vsn,
        )
        self.alive(message, now, bootstrap=True, finished=finished)

    def leave(self, now: float, *, finished: Callable[[], None] | None = None) -> bool:
        """Mark ourselves as leaving and broadcast ``dead{Node=self, From=self}``;
        ``finished`` runs once that broadcast has been sent its last time (or replaced).
        False if there was nothing to do (already left, or not started)."""
        if self.has_left:
            return False
        self.has_left = True
        record = self._nodes.get(self.local_name)
        if record is None:
            self._log.warn("Leave but we're not in the node map.")
            return False
        self.dead(Dead(record.incarnation, record.name, record.name), now, finished=finished)
        return True

    def _refute(self, record: NodeRecord, accused: int) -> None:
        """Beat the accusation with a higher incarnation and broadcast us as alive."""
        incarnation = self._next_incarnation()
        if accused >= incarnation:
            self._incarnation = (accused + 1) & _UINT32_MASK
            incarnation = self._incarnation
        record.incarnation = incarnation
        self.awareness.apply_delta(1)
        message = Alive(incarnation, record.name, record.addr, record.port, record.meta, record.vsn)
        self._broadcast(record.name, message)

    # ----------------------------------------------------------------------------------------
    # The three messages.

    def alive(
        self,
        message: Alive,
        now: float,
        *,
        bootstrap: bool = False,
        finished: Callable[[], None] | None = None,
    ) -> None:
        """Apply an alive message (memberlist's ``aliveNode``).

        ``bootstrap`` is true only for our own announcements (start, meta update): they are
        broadcast instead of refuted. Unlike Go, an alive message whose Addr is not 4 or 16
        bytes, or whose Meta exceeds 512 bytes, is ignored (Go would store it and then fail
        to use or re-encode it).
        """
        name = message.node
        is_local = name == self.local_name
        if self.has_left and is_local:
            return
        vsn = message.vsn
        if vsn is not None:
            pmin, pmax, pcur = vsn[0], vsn[1], vsn[2]
            if pmin == 0 or pmax == 0 or pmin > pmax:
                self._log.throttled(
                    WARN,
                    "memberlist.alive-bad-vsn",
                    f"Ignoring an alive message for '{clip(name)}' "
                    f"({_ip_text(message.addr)}:{message.port}) because protocol version(s) "
                    f"are wrong: {pmin} <= {pcur} <= {pmax} should be >0",
                )
                return
        if len(message.addr) not in (4, 16):
            self._log.throttled(
                WARN,
                "memberlist.alive-bad-addr",
                f"Ignoring an alive message for '{clip(name)}': address of "
                f"{len(message.addr)} bytes",
            )
            return
        if len(message.meta) > META_MAX_SIZE:
            self._log.throttled(
                WARN,
                "memberlist.alive-big-meta",
                f"Ignoring an alive message for '{clip(name)}': Meta of {len(message.meta)} "
                f"bytes exceeds {META_MAX_SIZE}",
            )
            return

        record = self._nodes.get(name)
        updates_node = False
        if record is None:
            if not is_local and len(self._nodes) >= self._max_members:
                self._refuse(name)
                return
            record = NodeRecord(
                name=name,
                addr=message.addr,
                port=message.port,
                meta=message.meta,
                incarnation=0,
                state=NodeState.DEAD,
                vsn=vsn if vsn is not None else NO_VSN,
                state_change=now,
            )
            self._nodes[name] = record
            self._order.add(name)
        elif record.addr != message.addr or record.port != message.port:
            reclaim_time = self.profile.dead_node_reclaim_time
            can_reclaim = reclaim_time > 0 and now - record.state_change > reclaim_time
            if record.state == NodeState.LEFT or (record.state == NodeState.DEAD and can_reclaim):
                self._log.throttled(
                    INFO,
                    "memberlist.alive-new-address",
                    f"Updating address for left or failed node {clip(name)} from "
                    f"{_ip_text(record.addr)}:{record.port} to "
                    f"{_ip_text(message.addr)}:{message.port}",
                )
                updates_node = True
            else:
                self._log.throttled(
                    ERR,
                    "memberlist.alive-conflict",
                    f"Conflicting address for {clip(name)}. Mine: {_ip_text(record.addr)}:"
                    f"{record.port} Theirs: {_ip_text(message.addr)}:{message.port} "
                    f"Old state: {record.state.name.lower()}",
                )
                if self._on_conflict is not None:
                    existing = record.snapshot()
                    other = replace(
                        existing,
                        addr=message.addr,
                        port=message.port,
                        meta=message.meta,
                        incarnation=0,
                    )
                    self._on_conflict(existing, other)
                return

        if message.incarnation <= record.incarnation and not is_local and not updates_node:
            return
        if message.incarnation < record.incarnation and is_local:
            return

        self._stop_timer(name)
        old_state = record.state
        old_meta = record.meta

        if is_local and not bootstrap:
            if (
                message.incarnation == record.incarnation
                and message.meta == record.meta
                and message.vsn == record.vsn
            ):
                return
            self._refute(record, message.incarnation)
            self._log.throttled(
                WARN,
                "memberlist.refute-alive",
                f"Refuting an alive message for '{clip(name)}' "
                f"({_ip_text(message.addr)}:{message.port}) meta:({clip(repr(message.meta))} "
                f"VS {clip(repr(record.meta))}), vsn:({message.vsn} VS {record.vsn})",
            )
        else:
            self._broadcast(name, message, finished)
            if vsn is not None:
                record.vsn = vsn
            record.incarnation = message.incarnation
            record.meta = message.meta
            record.addr = message.addr
            record.port = message.port
            if record.state != NodeState.ALIVE:
                record.state = NodeState.ALIVE
                record.state_change = now

        if self._events is not None:
            if old_state in (NodeState.DEAD, NodeState.LEFT):
                self._events.notify_join(record.snapshot())
            elif old_meta != record.meta:
                self._events.notify_update(record.snapshot())

    def suspect(self, message: Suspect, now: float) -> None:
        """Apply a suspect message (memberlist's ``suspectNode``)."""
        name = message.node
        record = self._nodes.get(name)
        if record is None or message.incarnation < record.incarnation:
            return
        timer = self._timers.get(name)
        if timer is not None:
            if timer.suspicion.confirm(message.from_node, now):
                self._broadcast(name, message)
                self._suspicion_changed()
            return
        if record.state != NodeState.ALIVE:
            return
        if name == self.local_name:
            self._refute(record, message.incarnation)
            self._log.throttled(
                WARN,
                "memberlist.refute-suspect",
                f"Refuting a suspect message (from: {clip(message.from_node)})",
            )
            return
        self._broadcast(name, message)
        record.incarnation = message.incarnation
        record.state = NodeState.SUSPECT
        record.state_change = now
        suspicion = Suspicion.for_cluster(
            self.profile, self.estimated_num_nodes(), message.from_node, now
        )
        self._timers[name] = _SuspicionTimer(suspicion, now)
        self._suspicion_changed()

    def dead(
        self, message: Dead, now: float, *, finished: Callable[[], None] | None = None
    ) -> None:
        """Apply a dead message (memberlist's ``deadNode``); ``finished`` is only used for
        our own leave broadcast."""
        name = message.node
        record = self._nodes.get(name)
        if record is None or message.incarnation < record.incarnation:
            return
        self._stop_timer(name)
        if record.dead_or_left:
            return
        if name == self.local_name:
            if not self.has_left:
                self._refute(record, message.incarnation)
                self._log.throttled(
                    WARN,
                    "memberlist.refute-dead",
                    f"Refuting a dead message (from: {clip(message.from_node)})",
                )
                return
            self._broadcast(name, message, finished)
        else:
            self._broadcast(name, message)
        record.incarnation = message.incarnation
        record.state = NodeState.LEFT if message.node == message.from_node else NodeState.DEAD
        record.state_change = now
        if self._events is not None:
            self._events.notify_leave(record.snapshot())

    # ----------------------------------------------------------------------------------------
    # Push/pull.

    def push_states(self) -> list[PushNodeState]:
        """Our whole node map, as sent in a push/pull."""
        return [
            PushNodeState(
                name=record.name,
                addr=record.addr,
                port=record.port,
                meta=record.meta,
                incarnation=record.incarnation,
                state=int(record.state),
                vsn=record.vsn,
            )
            for record in self._nodes.values()
        ]

    def verify_protocol(self, remote: Sequence[PushNodeState]) -> None:
        """Raise :class:`ProtocolVersionError` unless every node, remote and local, speaks
        versions inside the range that every alive node understands."""
        max_pmin = max_dmin = 0
        min_pmax = min_dmax = 0xFF
        for node in remote:
            if node.state != NodeState.ALIVE or node.vsn is None:
                continue
            max_pmin = max(max_pmin, node.vsn[0])
            min_pmax = min(min_pmax, node.vsn[1])
            max_dmin = max(max_dmin, node.vsn[3])
            min_dmax = min(min_dmax, node.vsn[4])
        for record in self._nodes.values():
            if record.state != NodeState.ALIVE:
                continue
            max_pmin = max(max_pmin, record.vsn[0])
            min_pmax = min(min_pmax, record.vsn[1])
            max_dmin = max(max_dmin, record.vsn[3])
            min_dmax = min(min_dmax, record.vsn[4])
        checks: list[tuple[str, int, int]] = [
            (node.name, *((node.vsn[2], node.vsn[5]) if node.vsn is not None else (0, 0)))
            for node in remote
        ]
        checks.extend((r.name, r.vsn[2], r.vsn[5]) for r in self._nodes.values())
        for name, pcur, dcur in checks:
            if pcur < max_pmin or pcur > min_pmax:
                raise ProtocolVersionError(
                    f"Node '{name}' protocol version ({pcur}) is incompatible: "
                    f"[{max_pmin}, {min_pmax}]"
                )
            if dcur < max_dmin or dcur > min_dmax:
                raise ProtocolVersionError(
                    f"Node '{name}' delegate protocol version ({dcur}) is incompatible: "
                    f"[{max_dmin}, {min_dmax}]"
                )

    def merge(self, remote: Sequence[PushNodeState], now: float) -> None:
        """Merge a push/pull's node states (memberlist's ``mergeRemoteState``/``mergeState``).

        Raises :class:`ProtocolVersionError` (and changes nothing) when the versions do not
        fit. States other than the four known ones are ignored.
        """
        self.verify_protocol(remote)
        self.apply_states(remote, now)

    def apply_states(self, remote: Sequence[PushNodeState], now: float) -> None:
        """The second half of :meth:`merge`, without the version check: for an engine that
        checks a whole push/pull once, then applies it in slices between checkpoints."""
        for node in remote:
            if node.state == NodeState.ALIVE:
                alive = Alive(
                    node.incarnation, node.name, node.addr, node.port, node.meta, node.vsn
                )
                self.alive(alive, now)
            elif node.state == NodeState.LEFT:
                self.dead(Dead(node.incarnation, node.name, node.name), now)
            elif node.state in (NodeState.DEAD, NodeState.SUSPECT):
                self.suspect(Suspect(node.incarnation, node.name, self.local_name), now)

    # ----------------------------------------------------------------------------------------
    # Suspicion timers.

    def next_suspicion_deadline(self) -> float | None:
        """The earliest time a suspicion timer runs out, or None with no timer running."""
        if not self._timers:
            return None
        return min(timer.suspicion.deadline for timer in self._timers.values())

    def expire(self, now: float) -> list[str]:
        """Declare dead every suspect whose timer has run out; returns their names."""
        due = [name for name, timer in self._timers.items() if timer.suspicion.expired(now)]
        marked: list[str] = []
        for name in due:
            timer = self._timers.pop(name)
            record = self._nodes.get(name)
            if (
                record is None
                or record.state != NodeState.SUSPECT
                or record.state_change != timer.change_time
            ):
                continue
            self._log.info(
                f"Marking {clip(name)} as failed, suspect timeout reached "
                f"({timer.suspicion.confirmations} peer confirmations)"
            )
            self.dead(Dead(record.incarnation, name, self.local_name), now)
            marked.append(name)
        if due:
            self._suspicion_changed()
        return marked

    def _stop_timer(self, name: str) -> None:
        if self._timers.pop(name, None) is not None:
            self._suspicion_changed()

    def _suspicion_changed(self) -> None:
        if self._on_suspicion_change is not None:
            self._on_suspicion_change()

    # ----------------------------------------------------------------------------------------
    # Choosing peers.

    def next_probe_target(self, now: float) -> NodeInfo | None:
        """The next node to probe in the shuffled round-robin (not us, not dead or left).

        At the end of each pass, nodes dead for longer than the gossip-to-the-dead time are
        forgotten (memberlist keeps left nodes; so do we).
        """
        nodes = self._nodes
        to_the_dead = self.profile.gossip_to_the_dead_time

        def skip(name: str) -> bool:
            return name == self.local_name or nodes[name].dead_or_left

        def reap(name: str) -> bool:
            record = nodes[name]
            return record.state == NodeState.DEAD and now - record.state_change > to_the_dead

        step = self._order.next_target(skip, reap)
        for name in step.reaped:
            del nodes[name]
            self._timers.pop(name, None)
        if step.target is None:
            return None
        return nodes[step.target].snapshot()

    def indirect_helpers(self, k: int, target: str) -> list[NodeInfo]:
        """Up to ``k`` random alive nodes to relay a probe of ``target``."""
        chosen = k_random_nodes(
            k,
            list(self._nodes.values()),
            lambda r: r.name in (self.local_name, target) or r.state != NodeState.ALIVE,
            rng=self._rng,
        )
        return [record.snapshot() for record in chosen]

    def gossip_targets(self, k: int, now: float) -> list[NodeInfo]:
        """Up to ``k`` random nodes to gossip to: alive, suspect, or dead for no longer than
        the gossip-to-the-dead time."""
        to_the_dead = self.profile.gossip_to_the_dead_time

        def exclude(record: NodeRecord) -> bool:
            if record.name == self.local_name:
                return True
            if record.state in (NodeState.ALIVE, NodeState.SUSPECT):
                return False
            if record.state == NodeState.DEAD:
                return now - record.state_change > to_the_dead
            return True

        chosen = k_random_nodes(k, list(self._nodes.values()), exclude, rng=self._rng)
        return [record.snapshot() for record in chosen]

    def push_pull_target(self) -> NodeInfo | None:
        """A random alive node other than us for the periodic push/pull."""
        chosen = k_random_nodes(
            1,
            list(self._nodes.values()),
            lambda r: r.name == self.local_name or r.state != NodeState.ALIVE,
            rng=self._rng,
        )
        return chosen[0].snapshot() if chosen else None

    # ----------------------------------------------------------------------------------------
    # Broadcasts.

    def _broadcast(
        self, node: str, message: GossipMessage, finished: Callable[[], None] | None = None
    ) -> None:
        try:
            payload = encode_message(message)
        except GossipEncodeError as exc:
            self._log.throttled(
                ERR,
                "memberlist.broadcast-encode",
                f"Failed to encode message for broadcast: {clip(exc)}",
            )
            return
        self.broadcasts.queue(Broadcast(payload, name=node, finished=finished))
