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

Above membership, serf's upper layer (serf.go, query.go, event.go, internal_query.go):

* user events (:meth:`SerfState.user_event`): the event clock, the recent-event buffer and
  its dedupe (:mod:`~agentrpc.gossip.serf_events`), relayed on the event queue;
* queries (:meth:`SerfState.start_query`, :meth:`SerfState.respond`): the query clock and
  buffer, filters, acks, responses and relays (:mod:`~agentrpc.gossip.serf_queries`), relayed
  on the query queue; serf's internal queries answered here
  (:mod:`~agentrpc.gossip.serf_internal`);
* name conflicts (:meth:`SerfState.notify_conflict`, :mod:`~agentrpc.gossip.serf_conflict`).

Nothing here does I/O or waits. What the layer wants done goes to two queues that its owner
drains after each call: :meth:`SerfState.take_sends` (serf messages to send by UDP to one
address: acks, responses, relays) and :meth:`SerfState.take_events` (user events and queries
for the agent, keyring changes to install and persist before their response is sent, a name
conflict of ours to resolve); :meth:`SerfState.has_output` says whether either holds
something. Our own queries gather their acks and responses in a
:class:`~agentrpc.gossip.serf_queries.QueryCollector` whose deadline the owner enforces.

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
* the event and query queues: pruned like the intent queue;
* the recent events: ``event_buffer`` Lamport times, each at most 64 events, 2 MiB in all;
  the recent queries: ``query_buffer`` Lamport times, each at most 256 IDs;
* the outbound sends: ``max_pending_sends`` (a relay factor is capped at 5); the events for
  the owner: ``max_pending_events`` and ``max_pending_event_bytes`` (past them new ones are
  dropped and counted); queries waiting for our answer: ``max_inbound_queries`` (the oldest
  forgotten first); our own queries in flight: ``max_queries``; responses a collector queues
  (see :class:`~agentrpc.gossip.serf_queries.QueryCollector`).

Every log line a peer can cause at will goes through the per-kind throttle (``serf.*``
keys), and every peer-chosen string in a line is cut with :func:`agentrpc.log_protocol.clip`.
"""

from __future__ import annotations

import enum
import ipaddress
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from agentrpc.gossip.broadcast_queue import Broadcast, BroadcastQueue
from agentrpc.gossip.contract import GossipAddress, NodeInfo
from agentrpc.gossip.lamport import LamportClock
from agentrpc.gossip.messages import META_MAX_SIZE, GossipDecodeError, GossipEncodeError, Vsn
from agentrpc.gossip.node_table import DEFAULT_MAX_MEMBERS
from agentrpc.gossip.security import Keyring
from agentrpc.gossip.serf_conflict import conflict_line, same_ip
from agentrpc.gossip.serf_events import (
    EVENT_BUFFER_SIZE,
    USER_EVENT_SANE_LIMIT,
    USER_EVENT_SIZE_LIMIT,
    EventVerdict,
    RecentEvents,
    UserEventError,
    UserEventReceived,
    encode_user_event,
)
from agentrpc.gossip.serf_internal import (
    CONFLICT_QUERY,
    KEY_QUERIES,
    LIST_KEYS_QUERY,
    PING_QUERY,
    conflict_answer,
    fit_key_list,
    key_operation,
)
from agentrpc.gossip.serf_messages import (
    QUERY_FLAG_ACK,
    JoinIntent,
    LeaveIntent,
    NodeKeyResponse,
    Query,
    QueryResponse,
    Relay,
    SerfMessageType,
    SerfPushPull,
    UserEvent,
    WireMember,
    decode_serf_message,
    decode_tags,
    encode_key_response,
    encode_serf_message,
    encode_tags,
)
from agentrpc.gossip.serf_queries import (
    DEFAULT_QUERY_TIMEOUT_MULT,
    INTERNAL_QUERY_PREFIX,
    MAX_RELAY_FACTOR,
    QUERY_BUFFER_SIZE,
    QUERY_RESPONSE_SIZE_LIMIT,
    QUERY_SIZE_LIMIT,
    QueryCollector,
    QueryError,
    QueryVerdict,
    RecentQueries,
    build_response,
    default_query_timeout,
    encode_filters,
    should_process,
    timeout_from_ns,
    timeout_to_ns,
)
from agentrpc.log_protocol import DEBUG, ERR, WARN, LogLike, NullLog, clip
from agentrpc.member_status import MemberStatus

__all__ = [
    "DAY",
    "RELAY_PROTOCOL",
    "ConflictDetected",
    "KeyringChange",
    "MemberEvent",
    "MemberEventType",
    "MemberStatus",
    "Outbound",
    "QueryError",
    "QueryReceived",
    "ReconnectTarget",
    "SerfConfig",
    "SerfError",
    "SerfEvent",
    "SerfLifecycle",
    "SerfLog",
    "SerfMember",
    "SerfState",
    "TagsTooLargeError",
    "UserEventError",
    "UserEventReceived",
]

DAY: Final = 24 * 60 * 60.0
"""Seconds in a day: serf's default reconnect and tombstone timeouts."""

RELAY_PROTOCOL: Final = 5
"""The highest memberlist protocol a member must understand (``vsn[1]``, serf's
``Member.ProtocolMax``) to be sent a relayed query response: serf relays only through alive
members at 5 or above (``ProtocolMax < 5`` is filtered out in its ``relayResponse``)."""


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
    gossip_interval: float = 0.2
    """Memberlist's GossipInterval (the profile's): the unit of the default query timeout."""
    query_timeout_mult: int = DEFAULT_QUERY_TIMEOUT_MULT
    query_response_size_limit: int = QUERY_RESPONSE_SIZE_LIMIT
    query_size_limit: int = QUERY_SIZE_LIMIT
    user_event_size_limit: int = USER_EVENT_SIZE_LIMIT
    """Name plus payload of a user event we send, and its encoding, at most (<= 9 KiB)."""
    event_buffer: int = EVENT_BUFFER_SIZE
    query_buffer: int = QUERY_BUFFER_SIZE
    enable_name_conflict_resolution: bool = True
    keyring_file: str = ""
    """Where the owner persists the keyring after every change ("" for nowhere); read by
    the membership layer, which does the writing."""
    max_pending_sends: int = 1024
    max_pending_events: int = 4096
    max_pending_event_bytes: int = 4 << 20
    max_inbound_queries: int = 1024
    max_queries: int = 64

    def __post_init__(self) -> None:
        if self.user_event_size_limit > USER_EVENT_SANE_LIMIT:
            raise ValueError(
                f"user event size limit exceeds limit of {USER_EVENT_SANE_LIMIT} bytes"
            )
        positive = {
            "gossip_interval": self.gossip_interval,
            "query_timeout_mult": self.query_timeout_mult,
            "query_response_size_limit": self.query_response_size_limit,
            "query_size_limit": self.query_size_limit,
            "user_event_size_limit": self.user_event_size_limit,
            "event_buffer": self.event_buffer,
            "query_buffer": self.query_buffer,
            "max_pending_sends": self.max_pending_sends,
            "max_pending_events": self.max_pending_events,
            "max_pending_event_bytes": self.max_pending_event_bytes,
            "max_inbound_queries": self.max_inbound_queries,
            "max_queries": self.max_queries,
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


@dataclass(frozen=True, slots=True)
class Outbound:
    """A serf message to send by UDP to one address (memberlist's ``SendToAddress``)."""

    address: GossipAddress
    payload: bytes


@dataclass(frozen=True, slots=True)
class QueryReceived:
    """A user query delivered to this node, waiting for the agent's :meth:`SerfState.respond`
    (serf's ``Query`` on the event channel)."""

    handle: int
    """Ours, to respond with; unique in this state."""
    ltime: int
    id: int
    name: str
    payload: bytes
    source_node: str
    """The querier (empty from serf before 0.9)."""
    deadline: float
    """``clock()`` after which a response is refused."""

    def __str__(self) -> str:
        return f"query: {self.name}"


@dataclass(frozen=True, slots=True)
class KeyringChange:
    """A key query changed our keyring: the owner installs ``keyring`` in memberlist,
    persists it, then calls :meth:`SerfState.finish_key_change` with ``handle``."""

    handle: int
    operation: str
    keyring: Keyring


@dataclass(frozen=True, slots=True)
class ConflictDetected:
    """Another node claims our name (at ``other``): the owner runs the resolution."""

    other: GossipAddress


SerfEvent = UserEventReceived | QueryReceived | KeyringChange | ConflictDetected
"""What :meth:`SerfState.take_events` returns."""


@dataclass(slots=True)
class _InboundQuery:
    """A query we may still answer: where to, until when, with how many relays."""

    ltime: int
    id: int
    addr: bytes
    port: int
    source_node: str
    relay_factor: int
    deadline: float
    name: str
    responded: bool = False


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


def _same_ip(a: bytes, b: bytes) -> bool:
    return same_ip(a, b)


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
        rng: random.Random | None = None,
        keyring: Keyring | None = None,
        on_broadcast: Callable[[], None] | None = None,
    ) -> None:
        """``clock`` gives the time in seconds for leave times, intent expiry, reaping and
        query deadlines; ``on_event`` hears every member event after the state has changed;
        ``rng`` draws query IDs and relay members; ``keyring`` is memberlist's (None without
        encryption), which key queries change; ``on_broadcast`` is called whenever a message
        is queued for :meth:`get_broadcasts` (memberlist's gossip loop sleeps until then)."""
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
        self._broadcasts = BroadcastQueue(
            config.retransmit_mult, self.num_nodes, on_queued=on_broadcast
        )
        # Every clock starts at 1, so that a join intent's default LTime of 0 is never newer.
        self.clock = LamportClock(1)
        """The member clock: orders join and leave intents."""
        self.event_clock = LamportClock(1)
        """The user-event clock: orders user events."""
        self.query_clock = LamportClock(1)
        """The query clock: orders queries."""
        self._rng = rng if rng is not None else random.Random()
        self._keyring = keyring
        self._event_broadcasts = BroadcastQueue(
            config.retransmit_mult, self.num_nodes, on_queued=on_broadcast
        )
        self._query_broadcasts = BroadcastQueue(
            config.retransmit_mult, self.num_nodes, on_queued=on_broadcast
        )
        self._recent_events = RecentEvents(config.event_buffer)
        self._recent_queries = RecentQueries(config.query_buffer)
        self.event_join_ignore = False
        """While set, a join's push/pull moves the event min time to the peer's event clock
        (a join that does not replay old events)."""
        self._sends: deque[Outbound] = deque()
        self._events: deque[SerfEvent] = deque()
        self._event_bytes = 0
        self._inbound: dict[int, _InboundQuery] = {}
        self._next_handle = 0
        self._collectors: dict[int, QueryCollector] = {}
        self._touched: set[int] = set()
        self._resolving_conflict = False
        self.dropped_sends = 0
        """Sends dropped because ``max_pending_sends`` were waiting."""
        self.dropped_events = 0
        """Events for the owner dropped because too many (or too many bytes) were waiting."""

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

    @property
    def event_broadcasts(self) -> BroadcastQueue:
        """The user events waiting to be gossiped (serf's event queue)."""
        return self._event_broadcasts

    @property
    def query_broadcasts(self) -> BroadcastQueue:
        """The queries waiting to be gossiped (serf's query queue)."""
        return self._query_broadcasts

    @property
    def recent_events(self) -> RecentEvents:
        return self._recent_events

    @property
    def recent_queries(self) -> RecentQueries:
        return self._recent_queries

    @property
    def keyring(self) -> Keyring | None:
        """Memberlist's keyring as this layer last set it (None: no encryption)."""
        return self._keyring

    @property
    def encryption_enabled(self) -> bool:
        return self._keyring is not None

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
        queue = self._broadcasts
        if isinstance(message, LeaveIntent):
            log.throttled(DEBUG, "serf.leave-intent", f"messageLeaveType: {clip(message.node)}")
            rebroadcast = self.handle_leave_intent(message)
        elif isinstance(message, JoinIntent):
            log.throttled(DEBUG, "serf.join-intent", f"messageJoinType: {clip(message.node)}")
            rebroadcast = self.handle_join_intent(message)
        elif isinstance(message, UserEvent):
            log.throttled(DEBUG, "serf.user-event", f"messageUserEventType: {clip(message.name)}")
            rebroadcast = self.handle_user_event(message)
            queue = self._event_broadcasts
        elif isinstance(message, Query):
            log.throttled(DEBUG, "serf.query", f"messageQueryType: {clip(message.name)}")
            rebroadcast = self.handle_query(message)
            queue = self._query_broadcasts
        elif isinstance(message, QueryResponse):
            log.throttled(
                DEBUG,
                "serf.query-response",
                f"messageQueryResponseType: {clip(message.from_node)}",
            )
            self.handle_query_response(message)
        elif isinstance(message, Relay):
            self._forward_relay(message)
        else:  # a push/pull message never travels as a user message
            log.throttled(
                WARN, "serf.unexpected-type", f"Received message of unexpected type: {payload[0]}"
            )
        if rebroadcast:
            self._queue_news(bytes(payload), queue)

    def has_broadcasts(self) -> bool:
        """Whether :meth:`get_broadcasts` has anything to give."""
        return bool(self._broadcasts or self._query_broadcasts or self._event_broadcasts)

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        """Intents first, then queries, then user events, within ``limit`` (as serf)."""
        messages = self._broadcasts.get_broadcasts(overhead, limit)
        for queue in (self._query_broadcasts, self._event_broadcasts):
            used = sum(len(message) + overhead for message in messages)
            if limit - used > overhead:
                messages.extend(queue.get_broadcasts(overhead, limit - used))
        return messages

    def local_state(self, join: bool) -> bytes:
        """Serf's push/pull state: clocks, every member's status time, the left members."""
        state = SerfPushPull(
            ltime=self.clock.time(),
            status_ltimes={name: record.status_ltime for name, record in self._members.items()},
            left_members=tuple(self._left),
            event_ltime=self.event_clock.time(),
            events=self._recent_events.snapshot(),
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
        if join and self.event_join_ignore:
            self._recent_events.min_time = max(self._recent_events.min_time, remote.event_ltime)
        for events in remote.events:
            if events is not None:
                for entry in events.events:
                    self.handle_user_event(UserEvent(events.ltime, entry.name, entry.payload))

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

    def _queue_news(self, payload: bytes, queue: BroadcastQueue | None = None) -> None:
        """Rebroadcast a peer's message; a queue never holds more than twice
        ``max_queue_depth`` (pruned back to it at once, as the periodic check would)."""
        queue = queue if queue is not None else self._broadcasts
        queue.queue(Broadcast(payload))
        limit = self._config.max_queue_depth
        if len(queue) > 2 * limit:
            self._log.throttled(
                WARN,
                "serf.queue-depth",
                f"{self._queue_name(queue)} queue depth ({len(queue)}) exceeds limit "
                f"({limit}), dropping messages!",
            )
            queue.prune(limit)

    def _queue_name(self, queue: BroadcastQueue) -> str:
        if queue is self._event_broadcasts:
            return "Event"
        if queue is self._query_broadcasts:
            return "Query"
        return "Intent"

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
        """Warn about a deep intent, event or query queue and drop the excess beyond
        ``max_queue_depth`` (serf checks its three queues alike)."""
        for queue in (self._broadcasts, self._event_broadcasts, self._query_broadcasts):
            name = self._queue_name(queue)
            depth = len(queue)
            if depth >= self._config.queue_depth_warning:
                self._log.warn(f"{name} queue depth: {depth}")
            limit = self._config.max_queue_depth
            if depth > limit:
                self._log.warn(
                    f"{name} queue depth ({depth}) exceeds limit ({limit}), dropping messages!"
                )
                queue.prune(limit)

    # ------------------------------------------------------------------ outputs

    def has_output(self) -> bool:
        """Something waits in :meth:`take_sends`, :meth:`take_events`, or a collector."""
        return bool(self._sends or self._events or self._touched)

    def take_sends(self) -> list[Outbound]:
        """The serf messages to send by UDP, oldest first (each one once)."""
        sends = list(self._sends)
        self._sends.clear()
        return sends

    def take_events(self) -> list[SerfEvent]:
        """The events for the owner, oldest first (each one once)."""
        events = list(self._events)
        self._events.clear()
        self._event_bytes = 0
        return events

    def take_touched_queries(self) -> set[int]:
        """Lamport times of our queries whose collector gathered something new."""
        touched = self._touched
        self._touched = set()
        return touched

    def _send(self, addr: bytes, port: int, payload: bytes) -> None:
        if len(addr) not in (4, 16):
            self._log.throttled(
                ERR, "serf.send-bad-address", f"Not sending to an address of {len(addr)} bytes"
            )
            return
        if len(self._sends) >= self._config.max_pending_sends:
            self.dropped_sends += 1
            self._log.throttled(
                WARN,
                "serf.sends-dropped",
                f"Dropping a message to {_ip_text(addr)}:{port}: {len(self._sends)} are "
                f"waiting to be sent; {self.dropped_sends} dropped so far",
            )
            return
        self._sends.append(Outbound(GossipAddress(_ip_text(addr), port), payload))

    def _emit_event(self, event: SerfEvent, size: int) -> None:
        config = self._config
        if (
            len(self._events) >= config.max_pending_events
            or self._event_bytes + size > config.max_pending_event_bytes
        ):
            self.dropped_events += 1
            self._log.throttled(
                WARN,
                "serf.events-dropped",
                f"Dropping {event}: {len(self._events)} events ({self._event_bytes} bytes) "
                f"are waiting; {self.dropped_events} dropped so far",
            )
            return
        self._events.append(event)
        self._event_bytes += size

    def _is_local_address(self, addr: bytes, port: int) -> bool:
        record = self._members.get(self._config.node_name)
        return record is not None and record.port == port and _same_ip(record.addr, addr)

    # ------------------------------------------------------------------ user events

    def user_event(self, name: str, payload: bytes = b"", coalesce: bool = False) -> None:
        """Send a user event to the cluster (serf's ``UserEvent``): it is delivered here too
        and queued on the event queue. Raises :class:`UserEventError` (serf's size texts)."""
        ltime = self.event_clock.time()
        raw = encode_user_event(
            ltime, name, payload, coalesce, limit=self._config.user_event_size_limit
        )
        self.event_clock.increment()
        self.handle_user_event(UserEvent(ltime, name, bytes(payload), bool(coalesce)))
        self._event_broadcasts.queue(Broadcast(raw))

    def handle_user_event(self, message: UserEvent) -> bool:
        """Take a user event (gossiped or from a push/pull); True when it was new (then it is
        delivered to the owner, and a gossiped one is rebroadcast)."""
        self.event_clock.witness(message.ltime)
        verdict = self._recent_events.record(
            message.ltime, message.name, message.payload, self.event_clock.time()
        )
        if verdict is EventVerdict.TOO_OLD:
            self._log.throttled(
                WARN,
                "serf.old-event",
                f"received old event {clip(message.name)} from time {message.ltime} "
                f"(current: {self.event_clock.time()})",
            )
        if verdict is not EventVerdict.NEW:
            return False
        event = UserEventReceived(message.ltime, message.name, message.payload, message.cc)
        self._emit_event(event, len(message.name) + len(message.payload) + 64)
        return True

    # ------------------------------------------------------------------ queries

    def start_query(
        self,
        name: str,
        payload: bytes = b"",
        *,
        filter_nodes: Sequence[str] = (),
        filter_tags: Mapping[str, str] | None = None,
        request_ack: bool = False,
        relay_factor: int = 0,
        timeout: float = 0.0,
        num_members: int | None = None,
    ) -> QueryCollector:
        """Send a query (serf's ``Query``) and return the collector of its acks and responses;
        the owner reads it until its deadline, then calls :meth:`end_query`.

        ``timeout`` 0 means serf's default for ``num_members`` live members (memberlist's
        count; by default the alive members here). Raises :class:`QueryError` for a query
        over the size limit, before we are announced, or with ``max_queries`` in flight."""
        local = self._members.get(self._config.node_name)
        if local is None:
            raise QueryError("cannot query before memberlist has announced the local node")
        now = self.now()
        self._expire_collectors(now)
        if len(self._collectors) >= self._config.max_queries:
            raise QueryError(f"too many queries in progress ({len(self._collectors)})")
        if isinstance(relay_factor, bool) or not 0 <= relay_factor <= 255:
            raise QueryError(f"relay factor must be 0..255, got {relay_factor!r}")
        if num_members is None:
            num_members = sum(
                1 for record in self._members.values() if record.status is MemberStatus.ALIVE
            )
        if timeout <= 0:
            timeout = default_query_timeout(
                self._config.gossip_interval, num_members, self._config.query_timeout_mult
            )
        query = Query(
            ltime=self.query_clock.time(),
            id=self._rng.getrandbits(31),
            addr=local.addr,
            port=local.port,
            source_node=self._config.node_name,
            filters=encode_filters(filter_nodes, filter_tags),
            flags=QUERY_FLAG_ACK if request_ack else 0,
            relay_factor=relay_factor,
            timeout_ns=timeout_to_ns(timeout),
            name=name,
            payload=bytes(payload),
        )
        raw = encode_serf_message(query)
        if len(raw) > self._config.query_size_limit:
            raise QueryError(f"query exceeds limit of {self._config.query_size_limit} bytes")
        collector = QueryCollector(
            query.id,
            query.ltime,
            now + timeout,
            want_ack=request_ack,
            capacity=max(16, 2 * num_members),
            max_responders=self._max_members,
        )
        self._collectors[query.ltime] = collector
        self.handle_query(query)
        self._query_broadcasts.queue(Broadcast(raw))
        return collector

    def end_query(self, collector: QueryCollector) -> None:
        """The owner is done with a query: nothing more is gathered for it."""
        collector.close()
        if self._collectors.get(collector.ltime) is collector:
            del self._collectors[collector.ltime]
        self._touched.discard(collector.ltime)

    def _expire_collectors(self, now: float) -> None:
        for ltime, collector in list(self._collectors.items()):
            if collector.finished(now):
                del self._collectors[ltime]

    def handle_query(self, query: Query) -> bool:
        """Take a query (gossiped, or our own); True when it is to be rebroadcast."""
        self.query_clock.witness(query.ltime)
        verdict = self._recent_queries.record(query.ltime, query.id, self.query_clock.time())
        if verdict is QueryVerdict.TOO_OLD:
            self._log.throttled(
                WARN,
                "serf.old-query",
                f"received old query {clip(query.name)} from time {query.ltime} "
                f"(current: {self.query_clock.time()})",
            )
        if verdict is not QueryVerdict.NEW:
            return False
        rebroadcast = not query.no_broadcast
        passes, warning = should_process(query.filters, self._config.node_name, self._tags)
        if warning is not None:
            self._log.throttled(WARN, "serf.query-filter", warning)
        if not passes:
            return rebroadcast
        inbound = _InboundQuery(
            ltime=query.ltime,
            id=query.id,
            addr=query.addr,
            port=query.port,
            source_node=query.source_node,
            relay_factor=min(query.relay_factor, MAX_RELAY_FACTOR),
            deadline=self.now() + timeout_from_ns(query.timeout_ns),
            name=query.name,
        )
        if query.wants_ack:
            ack, raw = build_response(query.ltime, query.id, self._config.node_name, ack=True)
            self._deliver(inbound, ack, raw)
        if query.name.startswith(INTERNAL_QUERY_PREFIX):
            self._internal_query(inbound, query)
        else:
            handle = self._remember(inbound)
            event = QueryReceived(
                handle,
                query.ltime,
                query.id,
                query.name,
                query.payload,
                query.source_node,
                inbound.deadline,
            )
            self._emit_event(event, len(query.name) + len(query.payload) + 96)
        return rebroadcast

    def respond(self, handle: int, payload: bytes = b"") -> None:
        """Answer a :class:`QueryReceived` (serf's ``Query.Respond``); raises
        :class:`QueryError` with serf's texts (too large, already sent, past the deadline)."""
        inbound = self._inbound.get(handle)
        if inbound is None:
            raise QueryError("No pending queries matching ID")
        try:
            self._respond_to(inbound, payload)
        except QueryError as exc:
            raise QueryError(f"failed to respond to key query: {exc}") from None
        self._inbound.pop(handle, None)

    def _respond_to(self, inbound: _InboundQuery, payload: bytes) -> None:
        response, raw = build_response(
            inbound.ltime,
            inbound.id,
            self._config.node_name,
            payload,
            limit=self._config.query_response_size_limit,
        )
        if inbound.responded:
            raise QueryError("response already sent")
        if self.now() > inbound.deadline:
            raise QueryError("response is past the deadline")
        inbound.responded = True
        self._deliver(inbound, response, raw)

    def _deliver(self, inbound: _InboundQuery, response: QueryResponse, raw: bytes) -> None:
        """Send an ack or response to the querier, and through the relays it asked for."""
        if self._is_local_address(inbound.addr, inbound.port):
            self.handle_query_response(response)
            return
        self._send(inbound.addr, inbound.port, raw)
        self._relay(inbound, raw)

    def _relay(self, inbound: _InboundQuery, raw: bytes) -> None:
        """Serf's ``relayResponse``: a copy through up to ``relay_factor`` other members
        (alive, speaking memberlist protocol 5, not us)."""
        count = inbound.relay_factor
        if count == 0 or len(self._members) < count + 1:
            return
        relay = encode_serf_message(
            Relay(inbound.addr, inbound.port, inbound.source_node, raw, dest_zone="")
        )
        limit = self._config.query_response_size_limit
        if len(relay) > limit:
            self._log.throttled(
                ERR,
                "serf.relay-too-large",
                f"failed to relay response: relayed response exceeds limit of {limit} bytes",
            )
            return
        local = self._config.node_name
        candidates = [
            record
            for record in self._members.values()
            if record.status is MemberStatus.ALIVE
            and record.vsn[1] >= RELAY_PROTOCOL
            and record.name != local
        ]
        for record in self._rng.sample(candidates, min(count, len(candidates))):
            self._send(record.addr, record.port, relay)

    def _forward_relay(self, relay: Relay) -> None:
        """A peer asks us to pass a response on to the querier. Only query responses are
        passed on (all serf ever relays), so the relay cannot make us send anything else."""
        destination = f"{_ip_text(relay.dest_ip)}:{relay.dest_port}"
        if not relay.message or relay.message[0] != SerfMessageType.QUERY_RESPONSE:
            self._log.throttled(
                WARN, "serf.relay-refused", f"Not relaying a non-response to addr: {destination}"
            )
            return
        self._log.throttled(DEBUG, "serf.relay", f"Relaying response to addr: {clip(destination)}")
        if self._is_local_address(relay.dest_ip, relay.dest_port):
            self.notify_message(relay.message)
            return
        self._send(relay.dest_ip, relay.dest_port, relay.message)

    def handle_query_response(self, response: QueryResponse) -> None:
        """An ack or response to one of our queries."""
        collector = self._collectors.get(response.ltime)
        if collector is None:
            self._log.throttled(
                WARN,
                "serf.query-response-unknown",
                f"reply for non-running query (LTime: {response.ltime}, ID: {response.id}) "
                f"From: {clip(response.from_node)}",
            )
            return
        if collector.id != response.id:
            self._log.throttled(
                WARN,
                "serf.query-response-mismatch",
                f"query reply ID mismatch (Local: {collector.id}, Response: {response.id})",
            )
            return
        warning = collector.deliver(response, self.now())
        if warning is not None:
            self._log.throttled(WARN, "serf.query-response-dropped", warning)
        if collector.has_pending():
            self._touched.add(response.ltime)

    def _remember(self, inbound: _InboundQuery) -> int:
        """Keep a query we may still answer; the oldest go first past the bound."""
        now = self.now()
        for handle, known in list(self._inbound.items()):
            if known.deadline >= now and len(self._inbound) < self._config.max_inbound_queries:
                break
            del self._inbound[handle]
        self._next_handle += 1
        self._inbound[self._next_handle] = inbound
        return self._next_handle

    # ------------------------------------------------------------------ internal queries

    def _internal_query(self, inbound: _InboundQuery, query: Query) -> None:
        operation = query.name[len(INTERNAL_QUERY_PREFIX) :]
        if operation == PING_QUERY:
            return
        if operation == CONFLICT_QUERY:
            answer, lines = conflict_answer(query.payload, self._config.node_name, self._wire)
            self._log_lines(lines, "serf.conflict-query")
            if answer is not None:
                self._answer_internal(inbound, answer)
            return
        if operation in KEY_QUERIES:
            outcome = key_operation(operation, query.payload, self._keyring)
            self._log_lines(list(outcome.lines), f"serf.{operation}")
            if outcome.keyring is not None:
                self._keyring = outcome.keyring
                handle = self._remember(inbound)
                self._emit_event(KeyringChange(handle, operation, outcome.keyring), 256)
                return
            self._answer_key(inbound, operation, outcome.response)
            return
        self._log.throttled(
            WARN, "serf.internal-query-unknown", f"Unhandled internal query '{clip(operation)}'"
        )

    def finish_key_change(self, handle: int, error: str = "") -> None:
        """The owner installed (and persisted) the keyring of a :class:`KeyringChange`: send
        the response (``error`` is the file write's, which fails the response as serf's)."""
        inbound = self._inbound.pop(handle, None)
        if inbound is None:
            return
        operation = inbound.name[len(INTERNAL_QUERY_PREFIX) :]
        if error:
            self._log.throttled(ERR, "serf.keyring-file", f"Failed to write keyring file: {error}")
        self._answer_key(inbound, operation, NodeKeyResponse(result=not error, message=error))

    def _answer_key(
        self, inbound: _InboundQuery, operation: str, response: NodeKeyResponse
    ) -> None:
        if operation == LIST_KEYS_QUERY:
            local = self._config.node_name

            def encoded_size(payload: bytes) -> int:
                message = QueryResponse(inbound.ltime, inbound.id, local, 0, payload)
                return len(encode_serf_message(message))

            fitted, lines = fit_key_list(
                response, encoded_size, self._config.query_response_size_limit
            )
            self._log_lines(lines, "serf.key-list")
            if fitted is None:
                return
            response = fitted
        self._answer_internal(inbound, encode_key_response(response))

    def _answer_internal(self, inbound: _InboundQuery, payload: bytes) -> None:
        try:
            self._respond_to(inbound, payload)
        except QueryError as exc:
            self._log.throttled(
                ERR, "serf.internal-respond", f"Failed to respond to {inbound.name}: {exc}"
            )

    def _wire(self, name: str) -> WireMember | None:
        record = self._members.get(name)
        if record is None:
            return None
        return WireMember(
            record.name, record.addr, record.port, dict(record.tags), str(record.status), record.vsn
        )

    def _log_lines(self, lines: list[tuple[int, str]], key: str) -> None:
        """Log lines a peer's query caused, throttled per kind and level."""
        for level, line in lines:
            self._log.throttled(level, f"{key}.{level}", line)

    # ------------------------------------------------------------------ name conflicts

    def notify_conflict(self, existing: NodeInfo, other: NodeInfo) -> None:
        """Memberlist's NotifyConflict: ``other`` claims the name ``existing`` has. About us,
        a :class:`ConflictDetected` asks the owner to resolve it (one at a time)."""
        local = self._config.node_name
        resolution = self._config.enable_name_conflict_resolution
        level, line = conflict_line(
            local,
            existing.name,
            (existing.addr, existing.port),
            (other.addr, other.port),
            resolution=resolution,
        )
        self._log.throttled(level, "serf.name-conflict", line)
        if existing.name != local or not resolution or self._resolving_conflict:
            return
        if len(other.addr) not in (4, 16):
            return
        self._resolving_conflict = True
        self._emit_event(ConflictDetected(GossipAddress(_ip_text(other.addr), other.port)), 64)

    def conflict_resolved(self) -> None:
        """The owner finished a resolution: a new conflict starts another."""
        self._resolving_conflict = False

    # ------------------------------------------------------------------ internals

    def _changed(self) -> None:
        self._version += 1

    def _emit(self, event: MemberEventType, record: _MemberRecord) -> None:
        if self._on_event is not None:
            self._on_event(MemberEvent(event, record.snapshot()))
