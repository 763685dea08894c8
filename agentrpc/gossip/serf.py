"""Serf's membership layer on top of memberlist, as sans-I/O state.

:class:`SerfState` is what hashicorp/serf keeps in its ``Serf`` struct for membership: the
members (address, tags, versions, status and the Lamport time of that status), the member
clock, the buffered intents for nodes memberlist has not announced yet, the failed and left
lists, and the queue of intents to gossip. It plugs into memberlist as both
:class:`~agentrpc.gossip.contract.MemberlistDelegate` and
:class:`~agentrpc.gossip.contract.MemberlistEvents`; everything here is synchronous and never
touches trio or a socket. Time comes from an injected ``clock`` (seconds, any epoch), so tests
drive it by hand and the pool passes ``trio.current_time``.

The rules are serf's (serf.go, delegate.go, event_delegate.go):

* memberlist's NotifyJoin makes a member ``alive`` (a buffered leave intent makes it
  ``leaving``); NotifyLeave makes a ``leaving`` member ``left`` and an ``alive`` one
  ``failed``.
* Join and leave intents carry a Lamport time; one not newer than the member's status time is
  ignored. An intent about a node not known yet is buffered (one per node, the newest) and
  applied when memberlist announces the node. A leave intent moves ``alive`` to ``leaving`` and
  ``failed`` to ``left`` (a forced leave); a join intent moves ``leaving`` back to ``alive``.
  A leave intent about ourselves while we are not leaving is refuted with a newer join intent.
* A graceful leave is a leave intent about ourselves, then memberlist's ``dead{self}``.
* Push/pull carries the member clock, every member's status time and the left members.
* Failed members are reconnect candidates; failed members are reaped after
  ``reconnect_timeout`` and left ones after ``tombstone_timeout``.

User events and queries are not produced or relayed here: their Lamport times are witnessed so
that our clocks stay in step with the cluster, and the messages are otherwise dropped.

What a peer can make this layer keep, and its bound (``max_members``, the pool's
``gossip_max_members``, changed at run time with :meth:`SerfState.set_max_members`):

* members: one per node memberlist announced (memberlist's table has the same bound), but
  failed and left members outlive memberlist's entry for a day. A new member past the bound
  takes the place of the oldest failed or left one (reaped early, with a REAP event); with
  none to reap it is not added, and counted (``refused_members``).
* buffered intents about unknown nodes: at most ``max_members``, each for
  ``recent_intent_timeout``; past it a new one is ignored (not rebroadcast) and counted
  (``refused_intents``).
* the intent queue: rebroadcast news is pruned back to ``max_queue_depth`` as soon as it holds
  twice that, not only at the periodic check.
* user events, queries, their responses and relays keep nothing (only the clocks move).

Every log line a peer can cause at will goes through the per-kind throttle (``serf.*``
keys), and every peer-chosen string in a line is cut with :func:`agentrpc.log_protocol.clip`.
"""

from __future__ import annotations

import enum
import ipaddress
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from agentrpc.gossip.broadcast_queue import Broadcast, BroadcastQueue
from agentrpc.gossip.contract import GossipAddress, NodeInfo
from agentrpc.gossip.lamport import LamportClock
from agentrpc.gossip.messages import META_MAX_SIZE, GossipDecodeError, GossipEncodeError, Vsn
from agentrpc.gossip.node_table import DEFAULT_MAX_MEMBERS
from agentrpc.gossip.serf_messages import (
    JoinIntent,
    LeaveIntent,
    Query,
    QueryResponse,
    Relay,
    SerfMessageType,
    SerfPushPull,
    UserEvent,
    decode_serf_message,
    decode_tags,
    encode_serf_message,
    encode_tags,
)
from agentrpc.log_protocol import DEBUG, ERR, WARN, LogLike, NullLog, clip
from agentrpc.member_status import MemberStatus

__all__ = [
    "DAY",
    "MemberEvent",
    "MemberEventType",
    "MemberStatus",
    "ReconnectTarget",
    "SerfConfig",
    "SerfError",
    "SerfLifecycle",
    "SerfLog",
    "SerfMember",
    "SerfState",
    "TagsTooLargeError",
]

DAY: Final = 24 * 60 * 60.0
"""Seconds in a day: serf's default reconnect and tombstone timeouts."""


class SerfError(Exception):
    """An operation the membership layer refuses; the text is the reference's error string."""


class TagsTooLargeError(SerfError, ValueError):
    """The encoded tags do not fit in memberlist's Meta."""


class SerfLifecycle(enum.Enum):
    """Where the local node is in its own life (serf's ``SerfState``)."""

    ALIVE = "alive"
    LEAVING = "leaving"
    LEFT = "left"


class MemberEventType(enum.Enum):
    """What happened to a member (serf's member ``EventType``)."""

    JOIN = "member-join"
    LEAVE = "member-leave"
    FAILED = "member-failed"
    UPDATE = "member-update"
    REAP = "member-reap"


SerfLog = LogLike
"""The logging this module needs (:class:`agentrpc.log_protocol.LogLike`; the agent's
:class:`agentrpc.logs.Logger` fits)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SerfConfig:
    """The membership layer's settings; durations are seconds (serf's ``DefaultConfig``)."""

    node_name: str
    """This node's name in the pool (WAN pools use ``node.datacenter``)."""
    tags: Mapping[str, str] = field(default_factory=dict)
    retransmit_mult: int = 4
    """Memberlist's RetransmitMult: intents are sent ``mult * ceil(log10(n + 1))`` times."""
    broadcast_timeout: float = 5.0
    """How long a leave or force-leave waits for its intent to be sent."""
    leave_propagate_delay: float = 1.0
    """How long a graceful leave lingers after memberlist's leave, answering probes."""
    reap_interval: float = 15.0
    reconnect_interval: float = 30.0
    reconnect_timeout: float = DAY
    """How long a failed member is kept (and retried) before it is reaped."""
    tombstone_timeout: float = DAY
    """How long a left member is kept before it is reaped."""
    recent_intent_timeout: float = 300.0
    """How long an intent about an unknown node stays buffered."""
    queue_depth_warning: int = 128
    max_queue_depth: int = 4096
    max_members: int = DEFAULT_MAX_MEMBERS
    """Members, and buffered intents about unknown nodes, kept at most."""

    def __post_init__(self) -> None:
        positive = {
            "max_members": self.max_members,
            "broadcast_timeout": self.broadcast_timeout,
            "reap_interval": self.reap_interval,
            "reconnect_interval": self.reconnect_interval,
            "max_queue_depth": self.max_queue_depth,
        }
        non_negative = {
            "retransmit_mult": self.retransmit_mult,
            "leave_propagate_delay": self.leave_propagate_delay,
            "reconnect_timeout": self.reconnect_timeout,
            "tombstone_timeout": self.tombstone_timeout,
            "recent_intent_timeout": self.recent_intent_timeout,
            "queue_depth_warning": self.queue_depth_warning,
        }
        if not self.node_name:
            raise ValueError("node_name must not be empty")
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        for name, value in non_negative.items():
            if not value >= 0:
                raise ValueError(f"{name} must not be negative, got {value!r}")


@dataclass(frozen=True, slots=True)
class SerfMember:
    """A snapshot of one member."""

    name: str
    addr: bytes
    """4 or 16 raw bytes, as memberlist gave them."""
    port: int
    tags: Mapping[str, str]
    status: MemberStatus
    vsn: Vsn
    status_ltime: int
    """Lamport time of the intent that set the status (0 until one is known)."""
    leave_time: float | None
    """``clock()`` when the member failed or left; None while alive or leaving."""

    @property
    def ip(self) -> str:
        """The address as text (``127.0.0.1``, ``::1``), as serf logs it."""
        return _ip_text(self.addr)

    @property
    def address(self) -> GossipAddress:
        return GossipAddress(self.ip, self.port)


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """A change of one member, as serf would put it on its event channel."""

    type: MemberEventType
    member: SerfMember


@dataclass(frozen=True, slots=True)
class ReconnectTarget:
    """A failed member to try to join again."""

    name: str
    address: GossipAddress

    @property
    def join_address(self) -> str:
        """``host:port`` (IPv6 in brackets), as memberlist's join takes it."""
        return str(self.address)


@dataclass(slots=True)
class _MemberRecord:
    name: str
    addr: bytes
    port: int
    tags: dict[str, str]
    status: MemberStatus
    vsn: Vsn
    status_ltime: int = 0
    leave_time: float | None = None

    def snapshot(self) -> SerfMember:
        return SerfMember(
            self.name,
            self.addr,
            self.port,
            dict(self.tags),
            self.status,
            self.vsn,
            self.status_ltime,
            self.leave_time,
        )


@dataclass(frozen=True, slots=True)
class _Intent:
    """A join or leave intent about a node memberlist has not announced (yet)."""

    kind: SerfMessageType
    ltime: int
    received_at: float


def _ip_text(addr: bytes) -> str:
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        return clip(addr.hex()) or "<no address>"


class SerfState:
    """Serf's membership state for one pool; memberlist's delegate and event delegate."""

    def __init__(
        self,
        config: SerfConfig,
        *,
        logger: SerfLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[MemberEvent], None] | None = None,
    ) -> None:
        """``clock`` gives the time in seconds for leave times, intent expiry and reaping;
        ``on_event`` hears every member event after the state has changed."""
        self._config = config
        self._tags = dict(config.tags)
        self._check_tags(self._tags)
        self._log: SerfLog = logger if logger is not None else NullLog()
        self._clock_source = clock
        self._on_event = on_event
        self._lifecycle = SerfLifecycle.ALIVE
        self._members: dict[str, _MemberRecord] = {}
        # Insertion-ordered sets of names (serf's failedMembers and leftMembers lists).
        self._failed: dict[str, None] = {}
        self._left: dict[str, None] = {}
        self._intents: dict[str, _Intent] = {}
        self._pending_prunes: dict[str, float] = {}
        self._version = 1
        self._max_members = config.max_members
        self.refused_members = 0
        """New members not added because the bound was reached with nobody to reap."""
        self.refused_intents = 0
        """Intents about unknown nodes not buffered because the buffer was full."""
        self._broadcasts = BroadcastQueue(config.retransmit_mult, self.num_nodes)
        # Every clock starts at 1, so that a join intent's default LTime of 0 is never newer.
        self.clock = LamportClock(1)
        """The member clock: orders join and leave intents."""
        self.event_clock = LamportClock(1)
        """The user-event clock (only witnessed here)."""
        self.query_clock = LamportClock(1)
        """The query clock (only witnessed here)."""

    # ------------------------------------------------------------------ views

    @property
    def config(self) -> SerfConfig:
        return self._config

    @property
    def local_name(self) -> str:
        return self._config.node_name

    @property
    def tags(self) -> dict[str, str]:
        """A copy of this node's tags."""
        return dict(self._tags)

    @property
    def lifecycle(self) -> SerfLifecycle:
        return self._lifecycle

    @property
    def version(self) -> int:
        """Grows by one at every change of what :meth:`members` returns."""
        return self._version

    @property
    def broadcasts(self) -> BroadcastQueue:
        """The intents waiting to be gossiped (serf's intent queue)."""
        return self._broadcasts

    def now(self) -> float:
        return self._clock_source()

    def num_nodes(self) -> int:
        """Members in any status: the cluster size the retransmit limit follows."""
        return len(self._members)

    def members(self) -> list[SerfMember]:
        return [record.snapshot() for record in self._members.values()]

    def member(self, name: str) -> SerfMember | None:
        record = self._members.get(name)
        return None if record is None else record.snapshot()

    def local_member(self) -> SerfMember | None:
        """Ourselves, once memberlist has announced the local node."""
        return self.member(self._config.node_name)

    def failed_members(self) -> list[str]:
        return list(self._failed)

    def left_members(self) -> list[str]:
        return list(self._left)

    def has_alive_members(self) -> bool:
        """Is any member other than ourselves alive?"""
        local = self._config.node_name
        return any(
            record.status is MemberStatus.ALIVE and name != local
            for name, record in self._members.items()
        )

    def buffered_intent(self, node: str) -> tuple[str, int] | None:
        """The buffered intent about an unknown node: ("join" | "leave", LTime)."""
        intent = self._intents.get(node)
        if intent is None:
            return None
        kind = "join" if intent.kind is SerfMessageType.JOIN else "leave"
        return kind, intent.ltime

    # ------------------------------------------------------------------ bounds

    @property
    def max_members(self) -> int:
        return self._max_members

    def set_max_members(self, max_members: int) -> None:
        """Change the bound on members and buffered intents (``reload``); nothing is dropped
        when it shrinks, the state just stops growing."""
        if isinstance(max_members, bool) or not isinstance(max_members, int) or max_members < 1:
            raise ValueError(f"max_members must be a positive integer, got {max_members!r}")
        self._max_members = max_members

    def _make_room(self, name: str) -> bool:
        """Room for one more member: reap the oldest failed or left one if the bound is
        reached. False (counted, logged) when everybody is alive or leaving."""
        if len(self._members) < self._max_members:
            return True
        oldest: _MemberRecord | None = None
        for names in (self._failed, self._left):
            for candidate in names:
                record = self._members[candidate]
                if oldest is None or (record.leave_time or 0.0) < (oldest.leave_time or 0.0):
                    oldest = record
                break  # insertion order: the first one is the oldest of its list
        if oldest is not None:
            self._log.info(
                f"EventMemberReap (member limit): {clip(oldest.name)} {_ip_text(oldest.addr)}"
            )
            self._erase(oldest)
            return True
        self.refused_members += 1
        self._log.throttled(
            WARN,
            "serf.max-members",
            f"Not adding member '{clip(name)}' or any other new one: {len(self._members)} "
            f"members, none failed or left (gossip_max_members is {self._max_members}); "
            f"{self.refused_members} refused so far",
        )
        return False

    # ------------------------------------------------------------------ tags

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Replace this node's tags (memberlist must then re-read :meth:`node_meta`)."""
        new_tags = dict(tags)
        self._check_tags(new_tags)
        self._tags = new_tags

    @staticmethod
    def _check_tags(tags: Mapping[str, str]) -> None:
        try:
            encode_tags(tags)
        except GossipEncodeError:
            raise TagsTooLargeError(
                f"Encoded length of tags exceeds limit of {META_MAX_SIZE} bytes"
            ) from None

    def _decode_tags(self, meta: bytes) -> dict[str, str]:
        try:
            return decode_tags(meta)
        except GossipDecodeError as exc:
            self._log.throttled(ERR, "serf.bad-tags", f"Failed to decode tags: {clip(exc)}")
            return {}

    # ------------------------------------------------------------------ MemberlistDelegate

    def node_meta(self, limit: int) -> bytes:
        """``0xFF`` + msgpack tags; raises :class:`TagsTooLargeError` beyond ``limit``."""
        meta = encode_tags(self._tags)
        if len(meta) > limit:
            raise TagsTooLargeError(
                f"Node tags {self._tags!r} exceeds length limit of {limit} bytes"
            )
        return meta

    def notify_message(self, payload: bytes) -> None:
        """A serf message from a peer: apply intents (rebroadcasting news), witness clocks."""
        if not payload:
            return
        try:
            message = decode_serf_message(payload)
        except GossipDecodeError as exc:
            self._log.throttled(
                ERR,
                "serf.bad-message",
                f"Error decoding message of type {payload[0]}: {clip(exc)}",
            )
            return
        log = self._log
        rebroadcast = False
        if isinstance(message, LeaveIntent):
            log.throttled(DEBUG, "serf.leave-intent", f"messageLeaveType: {clip(message.node)}")
            rebroadcast = self.handle_leave_intent(message)
        elif isinstance(message, JoinIntent):
            log.throttled(DEBUG, "serf.join-intent", f"messageJoinType: {clip(message.node)}")
            rebroadcast = self.handle_join_intent(message)
        elif isinstance(message, UserEvent):
            self.event_clock.witness(message.ltime)
            log.throttled(
                DEBUG, "serf.user-event", f"messageUserEventType: {clip(message.name)} (ignored)"
            )
        elif isinstance(message, Query):
            self.query_clock.witness(message.ltime)
            log.throttled(DEBUG, "serf.query", f"messageQueryType: {clip(message.name)} (ignored)")
        elif isinstance(message, QueryResponse):
            log.throttled(
                DEBUG,
                "serf.query-response",
                f"messageQueryResponseType: {clip(message.from_node)} (ignored)",
            )
        elif isinstance(message, Relay):
            destination = message.dest_name or _ip_text(message.dest_ip)
            log.throttled(DEBUG, "serf.relay", f"relay to {clip(destination)} (ignored)")
        else:  # a push/pull message never travels as a user message
            log.throttled(
                WARN, "serf.unexpected-type", f"Received message of unexpected type: {payload[0]}"
            )
        if rebroadcast:
            self._queue_news(bytes(payload))

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        return self._broadcasts.get_broadcasts(overhead, limit)

    def local_state(self, join: bool) -> bytes:
        """Serf's push/pull state: clocks, every member's status time, the left members."""
        state = SerfPushPull(
            ltime=self.clock.time(),
            status_ltimes={name: record.status_ltime for name, record in self._members.items()},
            left_members=tuple(self._left),
            event_ltime=self.event_clock.time(),
            events=(),
            query_ltime=self.query_clock.time(),
        )
        return encode_serf_message(state)

    def merge_remote_state(self, state: bytes, join: bool) -> None:
        """A peer's push/pull state: witness its clocks, then replay its leaves and joins."""
        if not state:
            self._log.throttled(ERR, "serf.remote-state-empty", "Remote state is zero bytes")
            return
        if state[0] != SerfMessageType.PUSH_PULL:
            self._log.throttled(
                ERR, "serf.remote-state-bad-type", f"Remote state has bad type prefix: {state[0]}"
            )
            return
        try:
            remote = decode_serf_message(state)
        except GossipDecodeError as exc:
            self._log.throttled(
                ERR, "serf.remote-state-bad", f"Failed to decode remote state: {clip(exc)}"
            )
            return
        assert isinstance(remote, SerfPushPull)
        # No message with the sender's current times has been sent yet: witness one less.
        if remote.ltime > 0:
            self.clock.witness(remote.ltime - 1)
        if remote.event_ltime > 0:
            self.event_clock.witness(remote.event_ltime - 1)
        if remote.query_ltime > 0:
            self.query_clock.witness(remote.query_ltime - 1)
        # Leaves first, one past their status time (the leave came after that time).
        left = set(remote.left_members)
        for name in remote.left_members:
            ltime = remote.status_ltimes.get(name, 0) + 1
            self.handle_leave_intent(LeaveIntent(ltime, name))
        for name, ltime in remote.status_ltimes.items():
            if name not in left:
                self.handle_join_intent(JoinIntent(ltime, name))
        for events in remote.events:
            if events is not None:
                for _ in events.events:
                    self.event_clock.witness(events.ltime)

    # ------------------------------------------------------------------ MemberlistEvents

    def notify_join(self, node: NodeInfo) -> None:
        record = self._members.get(node.name)
        tags = self._decode_tags(node.meta)
        if record is None:
            if not self._make_room(node.name):
                return
            old_status = MemberStatus.NONE
            record = _MemberRecord(
                node.name, node.addr, node.port, tags, MemberStatus.ALIVE, node.vsn
            )
            intent = self._intents.get(node.name)
            if intent is not None and intent.kind is SerfMessageType.JOIN:
                record.status_ltime = intent.ltime
            elif intent is not None:
                record.status = MemberStatus.LEAVING
                record.status_ltime = intent.ltime
            self._members[node.name] = record
        else:
            old_status = record.status
            record.status = MemberStatus.ALIVE
            record.leave_time = None
            record.addr = node.addr
            record.port = node.port
            record.tags = tags
        record.vsn = node.vsn
        if old_status in (MemberStatus.FAILED, MemberStatus.LEFT):
            self._failed.pop(node.name, None)
            self._left.pop(node.name, None)
        self._pending_prunes.pop(node.name, None)
        self._changed()
        self._log.info(f"EventMemberJoin: {clip(record.name)} {_ip_text(record.addr)}")
        self._emit(MemberEventType.JOIN, record)

    def notify_leave(self, node: NodeInfo) -> None:
        record = self._members.get(node.name)
        if record is None:
            return  # never heard of it: nothing to do
        if record.status is MemberStatus.LEAVING:
            record.status = MemberStatus.LEFT
            record.leave_time = self.now()
            self._left[record.name] = None
            event, text = MemberEventType.LEAVE, "EventMemberLeave"
        elif record.status is MemberStatus.ALIVE:
            record.status = MemberStatus.FAILED
            record.leave_time = self.now()
            self._failed[record.name] = None
            event, text = MemberEventType.FAILED, "EventMemberFailed"
        else:
            self._log.throttled(
                WARN,
                "serf.bad-leave-state",
                f"Bad state when leave: {clip(record.name)} is {record.status}",
            )
            return
        self._changed()
        self._log.info(f"{text}: {clip(record.name)} {_ip_text(record.addr)}")
        self._emit(event, record)

    def notify_update(self, node: NodeInfo) -> None:
        record = self._members.get(node.name)
        if record is None:
            return
        record.addr = node.addr
        record.port = node.port
        record.tags = self._decode_tags(node.meta)
        record.vsn = node.vsn
        self._changed()
        self._log.info(f"EventMemberUpdate: {clip(record.name)}")
        self._emit(MemberEventType.UPDATE, record)

    # ------------------------------------------------------------------ intents

    def handle_leave_intent(self, intent: LeaveIntent) -> bool:
        """Apply a leave intent; True when it was news (to be rebroadcast)."""
        self.clock.witness(intent.ltime)
        record = self._members.get(intent.node)
        if record is None:
            return self._buffer_intent(intent.node, SerfMessageType.LEAVE, intent.ltime)
        if intent.ltime <= record.status_ltime:
            return False
        if intent.node == self._config.node_name and self._lifecycle is SerfLifecycle.ALIVE:
            self._log.throttled(DEBUG, "serf.refute-leave", "Refuting an older leave intent")
            self.broadcast_join(self.clock.time())
            return False
        # Take the time even when the status stays: a second leave intent for the same
        # member must not be rebroadcast forever (hashicorp/consul#8179).
        record.status_ltime = intent.ltime
        if record.status is MemberStatus.ALIVE:
            record.status = MemberStatus.LEAVING
            self._changed()
        elif record.status is MemberStatus.FAILED:
            record.status = MemberStatus.LEFT
            self._failed.pop(record.name, None)
            self._left[record.name] = None
            self._changed()
            self._log.info(
                f"EventMemberLeave (forced): {clip(record.name)} {_ip_text(record.addr)}"
            )
            self._emit(MemberEventType.LEAVE, record)
        elif record.status not in (MemberStatus.LEAVING, MemberStatus.LEFT):
            return False
        if intent.prune:
            self._prune(record)
        return True

    def handle_join_intent(self, intent: JoinIntent) -> bool:
        """Apply a join intent; True when it was news (to be rebroadcast)."""
        self.clock.witness(intent.ltime)
        record = self._members.get(intent.node)
        if record is None:
            return self._buffer_intent(intent.node, SerfMessageType.JOIN, intent.ltime)
        if intent.ltime <= record.status_ltime:
            return False
        record.status_ltime = intent.ltime
        if record.status is MemberStatus.LEAVING:
            record.status = MemberStatus.ALIVE
            self._changed()
        return True

    def _buffer_intent(self, node: str, kind: SerfMessageType, ltime: int) -> bool:
        known = self._intents.get(node)
        if known is not None and ltime <= known.ltime:
            return False
        if known is None and len(self._intents) >= self._max_members:
            self.refused_intents += 1
            self._log.throttled(
                WARN,
                "serf.max-intents",
                f"Ignoring an intent about unknown node '{clip(node)}': {len(self._intents)} "
                f"intents about unknown nodes are buffered already; "
                f"{self.refused_intents} ignored so far",
            )
            return False
        self._intents[node] = _Intent(kind, ltime, self.now())
        return True

    def _queue_news(self, payload: bytes) -> None:
        """Rebroadcast a peer's intent; the queue never holds more than twice
        ``max_queue_depth`` (pruned back to it at once, as the periodic check would)."""
        self._broadcasts.queue(Broadcast(payload))
        limit = self._config.max_queue_depth
        if len(self._broadcasts) > 2 * limit:
            self._log.throttled(
                WARN,
                "serf.queue-depth",
                f"Intent queue depth ({len(self._broadcasts)}) exceeds limit ({limit}), "
                "dropping messages!",
            )
            self._broadcasts.prune(limit)

    def broadcast_join(self, ltime: int | None = None) -> None:
        """Tie our membership to ``ltime`` (default: the clock now) and gossip it: after a
        join, and to refute a leave intent about ourselves."""
        if ltime is None:
            ltime = self.clock.time()
        intent = JoinIntent(ltime, self._config.node_name)
        self.clock.witness(ltime)
        self.handle_join_intent(intent)
        self._broadcasts.queue(Broadcast(encode_serf_message(intent)))

    # ------------------------------------------------------------------ leaving

    def begin_leave(self, on_sent: Callable[[], None] | None = None) -> bool:
        """Start a graceful leave: we are ``leaving`` and a leave intent about us is queued.

        Returns whether the intent was queued (only when another member is alive to hear
        it); ``on_sent`` is called once the queue has sent it for the last time. Raises
        :class:`SerfError` when a leave is in progress or done.
        """
        if self._lifecycle is SerfLifecycle.LEAVING:
            raise SerfError("Leave already in progress")
        if self._lifecycle is SerfLifecycle.LEFT:
            raise SerfError("Leave already done")
        self._lifecycle = SerfLifecycle.LEAVING
        intent = LeaveIntent(self.clock.time(), self._config.node_name)
        self.clock.increment()
        self.handle_leave_intent(intent)
        if not self.has_alive_members():
            return False
        self._broadcasts.queue(Broadcast(encode_serf_message(intent), finished=on_sent))
        return True

    def finish_leave(self) -> None:
        """The leave is complete: we are ``left``.

        Memberlist's NotifyLeave for ``dead{self}`` normally moved the local member to
        ``left`` already; if it did not, that is done here."""
        self._lifecycle = SerfLifecycle.LEFT
        record = self._members.get(self._config.node_name)
        if record is None or record.status in (MemberStatus.LEFT, MemberStatus.FAILED):
            return
        record.status = MemberStatus.LEFT
        record.leave_time = self.now()
        self._left[record.name] = None
        self._changed()
        self._log.info(f"EventMemberLeave: {record.name} {_ip_text(record.addr)}")
        self._emit(MemberEventType.LEAVE, record)

    def force_leave(
        self, node: str, *, prune: bool = False, on_sent: Callable[[], None] | None = None
    ) -> bool:
        """Broadcast a leave intent about ``node`` (serf's RemoveFailedNode).

        A failed member becomes ``left``; an alive one becomes ``leaving`` (it refutes that if
        it is really alive); an unknown one gets a buffered intent. With ``prune``, the member
        is also erased (a leaving one after ``broadcast_timeout + leave_propagate_delay``).
        Returns whether the intent was queued (only when another member is alive to hear it);
        ``on_sent`` is called once it has been sent for the last time.
        """
        intent = LeaveIntent(self.clock.time(), node, prune)
        self.clock.increment()
        self.handle_leave_intent(intent)
        if not self.has_alive_members():
            return False
        self._broadcasts.queue(Broadcast(encode_serf_message(intent), finished=on_sent))
        return True

    def _prune(self, record: _MemberRecord) -> None:
        if record.status is MemberStatus.LEAVING:
            delay = self._config.broadcast_timeout + self._config.leave_propagate_delay
            self._pending_prunes[record.name] = self.now() + delay
            return
        self._log.info(f"EventMemberReap (forced): {clip(record.name)} {_ip_text(record.addr)}")
        self._erase(record)

    def _erase(self, record: _MemberRecord) -> None:
        self._members.pop(record.name, None)
        self._failed.pop(record.name, None)
        self._left.pop(record.name, None)
        self._pending_prunes.pop(record.name, None)
        self._changed()
        self._emit(MemberEventType.REAP, record)

    # ------------------------------------------------------------------ maintenance

    def reap(self, now: float | None = None) -> list[str]:
        """Erase failed members older than ``reconnect_timeout``, left ones older than
        ``tombstone_timeout``, due prunes, and buffered intents older than
        ``recent_intent_timeout``; returns the names erased."""
        if now is None:
            now = self.now()
        reaped: list[str] = []
        for names, timeout in (
            (self._failed, self._config.reconnect_timeout),
            (self._left, self._config.tombstone_timeout),
        ):
            for name in list(names):
                record = self._members[name]
                if record.leave_time is not None and now - record.leave_time <= timeout:
                    continue
                self._log.info(f"EventMemberReap: {clip(name)}")
                self._erase(record)
                reaped.append(name)
        for name, due in list(self._pending_prunes.items()):
            if now < due:
                continue
            record_or_none = self._members.get(name)
            del self._pending_prunes[name]
            if record_or_none is None or record_or_none.status is MemberStatus.ALIVE:
                continue
            self._log.info(
                f"EventMemberReap (forced): {clip(name)} {_ip_text(record_or_none.addr)}"
            )
            self._erase(record_or_none)
            reaped.append(name)
        timeout = self._config.recent_intent_timeout
        for name, intent in list(self._intents.items()):
            if now - intent.received_at > timeout:
                del self._intents[name]
        return reaped

    def reconnect_candidates(self) -> list[ReconnectTarget]:
        """Every failed member, oldest failure first."""
        return [self._target(self._members[name]) for name in self._failed]

    def choose_reconnect(self, rng: random.Random) -> ReconnectTarget | None:
        """Serf's throttled pick: with probability failed / alive (so the cluster as a whole
        tries each failed member about once per interval), one failed member at random."""
        if not self._failed:
            return None
        num_failed = len(self._failed)
        num_alive = len(self._members) - num_failed - len(self._left)
        probability = num_failed / max(1, num_alive)
        if rng.random() > probability:
            self._log.debug("forgoing reconnect for random throttling")
            return None
        name = rng.choice(list(self._failed))
        return self._target(self._members[name])

    @staticmethod
    def _target(record: _MemberRecord) -> ReconnectTarget:
        return ReconnectTarget(record.name, GossipAddress(_ip_text(record.addr), record.port))

    def check_queue_depth(self) -> None:
        """Warn about a deep intent queue and drop the excess beyond ``max_queue_depth``."""
        depth = len(self._broadcasts)
        if depth >= self._config.queue_depth_warning:
            self._log.warn(f"Intent queue depth: {depth}")
        limit = self._config.max_queue_depth
        if depth > limit:
            self._log.warn(
                f"Intent queue depth ({depth}) exceeds limit ({limit}), dropping messages!"
            )
            self._broadcasts.prune(limit)

    # ------------------------------------------------------------------ internals

    def _changed(self) -> None:
        self._version += 1

    def _emit(self, event: MemberEventType, record: _MemberRecord) -> None:
        if self._on_event is not None:
            self._on_event(MemberEvent(event, record.snapshot()))
