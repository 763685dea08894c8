"""The sans-I/O Raft node: hashicorp/raft 1.1.2's behaviour as a state machine (spec raft.md
§5-9), with no sockets, threads, clocks or randomness of its own.

Driving it (the engine's whole contract)::

    node = RaftNode(config, now=clock(), rng=random.Random(), durable=read_durable_state(...))
    # any input, with the current time:
    node.tick(now)                                  # when now >= node.next_deadline()
    node.handle_request(now, token, request)        # an RPC from a peer (wire.Request)
    node.handle_response(now, request_id, response) # the answer to a SendRequest/SendSnapshot
    node.request_failed(now, request_id, error)
    node.persisted(now, seq)                        # storage ops through seq are durable
    node.entries_read(now, seq, entries)            # the answer to a ReadEntries
    node.snapshot_received(now, token, snapshot_id) # after a ReceiveSnapshot was stored
    node.snapshot_taken(now, meta)                  # after a TakeSnapshot was written
    proposal = node.propose(now, data)              # leader only; raises RaftError otherwise
    # then, after every input (or a batch of them):
    for output in node.take_outputs(): ...          # see agentrpc.raft.actions

Everything the node decides comes out of :meth:`RaftNode.take_outputs` as typed values
(:mod:`.actions`): storage operations to perform in order, messages to send (held back until
what they vouch for is durable), committed entries to apply, and notices. Nothing is ever
called back. Time is the ``now`` of each input (seconds, any monotonic origin); randomness (the
election and heartbeat jitter) comes from the ``random.Random`` given at construction, so a
seeded node is fully deterministic.

Behaviour follows Go's ``raft.go``/``replication.go`` rule for rule: the sticky leader check
before the term check in RequestVote, Go's exact rejection conditions, commitment only through
an entry of the leader's term (a noop opens every term), the leader lease, TimeoutNow leadership
transfer, one-at-a-time membership changes as ``LogConfiguration`` entries, AppendEntries
batching (MaxAppendEntries) with pipelining and nextIndex backoff, InstallSnapshot when the
follower needs compacted entries, and compaction after snapshots (TrailingLogs,
SnapshotThreshold, SnapshotInterval). Where 1.1.2 is unsafe or stalls the core does what the Raft
paper says instead, on the same wire: a follower commits only through the last entry the
AppendEntries verified (Go takes its own last index, which can commit a stale tail), never
truncates committed entries, treats a PrevLogEntry inside its snapshot as matching, and keeps the
log after an installed snapshot only when it agrees with the snapshot.
"""

from __future__ import annotations

import enum
import heapq
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from .actions import (
    LEVEL_INFO,
    LEVEL_WARN,
    Apply,
    DeleteEntries,
    LogLine,
    Output,
    ProposalFailed,
    ReadEntries,
    ReceiveSnapshot,
    RestoreSnapshot,
    SendRequest,
    SendResponse,
    SendSnapshot,
    SetTerm,
    SetVote,
    SnapshotMeta,
    StateChanged,
    StoreEntries,
    TakeSnapshot,
    TransferDone,
    VerifyDone,
)
from .configuration import (
    ChangeCommand,
    Configuration,
    ConfigurationChange,
    ConfigurationError,
    Configurations,
    Server,
    check_configuration,
    decode_configuration,
    decode_peers,
    encode_configuration,
    encode_peers,
    next_configuration,
)
from .errors import (
    ERR_ABORTED_BY_RESTORE,
    ERR_BAD_CONFIGURATION_ENTRY,
    ERR_CANT_BOOTSTRAP,
    ERR_COMMITTED_CONFLICT,
    ERR_LEADERSHIP_LOST,
    ERR_LEADERSHIP_TRANSFER_IN_PROGRESS,
    ERR_MALFORMED_ENTRIES,
    ERR_NO_SNAPSHOTS,
    ERR_NOT_LEADER,
    ERR_NOTHING_NEW_TO_SNAPSHOT,
    ERR_RAFT_SHUTDOWN,
    ERR_RPC_TIMEOUT,
    ERR_SNAPSHOT_CONFIG_PENDING,
    ERR_TIMEOUT_NOW_FAILED,
    ERR_TRANSFER_NO_PEER,
    ERR_TRANSFER_NO_REPLICATION,
    ERR_TRANSFER_TIMEOUT,
    ERR_TRANSFER_TO_SELF,
    ERR_UNEXPECTED_COMMAND,
    ERR_UNSUPPORTED_PROTOCOL,
    ERR_UNSUPPORTED_SNAPSHOT_VERSION,
    RaftError,
)
from .gomsgpack import DecodeError, text, text_bytes
from .log import LogEntry, LogType
from .log_view import LogView
from .replication import Mode, PeerReplication, next_after_reject, quorum_match
from .store_api import (
    KEY_CURRENT_TERM,
    KEY_LAST_VOTE_CAND,
    KEY_LAST_VOTE_TERM,
    LogStore,
    StableStore,
)
from .timing import (
    FAILURE_WAIT,
    MAX_FAILURE_SCALE,
    MIN_CHECK_INTERVAL,
    PROTOCOL_VERSION_MAX,
    PROTOCOL_VERSION_MIN,
    SNAPSHOT_VERSION,
    SNAPSHOT_VERSION_MAX,
    SNAPSHOT_VERSION_MIN,
    RaftConfig,
    backoff,
    random_timeout,
    snapshot_rpc_timeout,
)
from .wire import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    Request,
    RequestVoteRequest,
    RequestVoteResponse,
    Response,
    TimeoutNowRequest,
    TimeoutNowResponse,
)

CONFIGURATION_TYPES = frozenset(
    {LogType.CONFIGURATION, LogType.ADD_PEER_DEPRECATED, LogType.REMOVE_PEER_DEPRECATED}
)
"""Entry types that change the configuration as soon as they are appended."""

MAX_APPLY_BATCH = 256
"""Entries one :class:`~agentrpc.raft.actions.Apply` (and one read for applying) carries."""
MAX_SNAPSHOT_RECEPTIONS = 2
"""InstallSnapshot requests being stored at once (Go handles one at a time)."""
MAX_ADDRESS_TEXT = 256
"""Characters of a peer-supplied address kept in log lines."""


class NodeState(enum.Enum):
    """``raft.RaftState`` (its ``String()`` as the value)."""

    FOLLOWER = "Follower"
    CANDIDATE = "Candidate"
    LEADER = "Leader"
    SHUTDOWN = "Shutdown"


class _Kind(enum.Enum):
    APPEND = 1
    HEARTBEAT = 2
    VOTE = 3
    SNAPSHOT = 4
    TIMEOUT_NOW = 5


@dataclass(slots=True)
class _Outstanding:
    kind: _Kind
    peer_id: str
    term: int
    sent_at: float
    deadline: float
    prev: int = 0
    last: int = 0
    epoch: int = 0


@dataclass(slots=True)
class _Transfer:
    id: int
    peer_id: str
    deadline: float
    request_id: int | None = None


@dataclass(slots=True)
class _Verify:
    id: int
    started: float
    acks: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class DurableState:
    """What a node restarts from: the stable store's term and vote, the log's indexes and
    terms, its configuration entries, the newest usable snapshot and (optionally) the newest
    entries to start the cache with. :func:`read_durable_state` reads it from the stores."""

    current_term: int = 0
    vote_term: int = 0
    vote_candidate: bytes = b""
    first_index: int = 0
    terms: tuple[int, ...] = ()
    """Terms of the contiguous entries ``first_index..`` (the store's log up to its first gap)."""
    stored_last_index: int = 0
    """The store's last index; entries past the contiguous run are deleted at start."""
    configuration_entries: tuple[LogEntry, ...] = ()
    snapshot: SnapshotMeta | None = None
    tail: tuple[LogEntry, ...] = ()

    @property
    def has_state(self) -> bool:
        """Go's ``HasExistingState``: a term, a log entry or a snapshot."""
        return self.current_term > 0 or self.stored_last_index > 0 or self.snapshot is not None


def read_durable_state(
    logs: LogStore,
    stable: StableStore,
    snapshot: SnapshotMeta | None,
    *,
    cache_bytes: int = 8 << 20,
    chunk: int = 1024,
) -> DurableState:
    """Read a :class:`DurableState` from the stores (blocking: run it off the event loop).
    ``snapshot`` is the newest snapshot the snapshot store could open, or None."""
    first, last = logs.first_index(), logs.last_index()
    terms: list[int] = []
    configs: list[LogEntry] = []
    tail: deque[LogEntry] = deque()
    tail_bytes = 0
    expected = first
    index = first
    while first and index <= last:
        batch = logs.get_range(index, min(index + chunk - 1, last))
        if not batch:
            break
        gap = False
        for entry in batch:
            if entry.index != expected:
                gap = True
                break
            terms.append(entry.term)
            if entry.type in CONFIGURATION_TYPES:
                configs.append(entry)
            tail.append(entry)
            tail_bytes += len(entry.data)
            while tail_bytes > cache_bytes and tail:
                tail_bytes -= len(tail.popleft().data)
            expected += 1
        if gap:
            break
        index = batch[-1].index + 1
    return DurableState(
        current_term=stable.get_uint64(KEY_CURRENT_TERM) or 0,
        vote_term=stable.get_uint64(KEY_LAST_VOTE_TERM) or 0,
        vote_candidate=stable.get_bytes(KEY_LAST_VOTE_CAND) or b"",
        first_index=first if terms else 0,
        terms=tuple(terms),
        stored_last_index=last,
        configuration_entries=tuple(configs),
        snapshot=snapshot,
        tail=tuple(tail),
    )


def decode_configuration_entry(entry: LogEntry) -> Configuration:
    """The configuration a ``LogConfiguration`` (or legacy peers) entry sets."""
    if entry.type == LogType.CONFIGURATION:
        return decode_configuration(entry.data)
    return decode_peers(entry.data)


def format_go_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()`` (``1.5s``, ``12.345ms``, ``1m0.5s``, ``0s``)."""
    nanos = round(seconds * 1e9)
    if nanos == 0:
        return "0s"
    sign = "-" if nanos < 0 else ""
    nanos = abs(nanos)
    if nanos < 1000:
        return f"{sign}{nanos}ns"
    if nanos < 1_000_000:
        return sign + _fraction(nanos, 1000) + "µs"
    if nanos < 1_000_000_000:
        return sign + _fraction(nanos, 1_000_000) + "ms"
    hours, rest = divmod(nanos, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    text_ = _fraction(rest, 1_000_000_000) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text_}"
    if minutes:
        return f"{sign}{minutes}m{text_}"
    return sign + text_


def _fraction(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{frac:0{digits}d}".rstrip("0")


class RaftNode:
    """One Raft server's state machine. See the module docstring for the driving contract."""

    def __init__(
        self,
        config: RaftConfig,
        *,
        now: float,
        rng: random.Random,
        durable: DurableState | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self._rng = rng
        self._now = now
        durable = durable or DurableState()
        self._id = config.local_id
        self._address = config.local_address
        self._address_bytes = text_bytes(config.local_address)
        self._version = config.protocol_version
        self._state = NodeState.FOLLOWER
        self._term = durable.current_term
        self._vote_term = durable.vote_term
        self._vote_candidate = durable.vote_candidate
        self._leader = ""
        self._last_contact: float | None = None
        self._ids = 0

        self._outputs: list[Output] = []
        self._seq = 0
        self._durable = 0
        self._hard_seq = 0
        self._wait_all: deque[tuple[int, Output]] = deque()
        self._wait_hard: deque[tuple[int, Output]] = deque()

        snapshot = durable.snapshot
        self._snapshot = snapshot
        self._log = LogView(
            durable.first_index,
            durable.terms,
            snapshot_index=snapshot.index if snapshot else 0,
            snapshot_term=snapshot.term if snapshot else 0,
            cache_bytes=config.entry_cache_bytes,
        )
        if snapshot is None:
            self._configs = Configurations()
        else:
            self._configs = Configurations(snapshot.configuration, snapshot.configuration_index)
        self._commit = self._applied = snapshot.index if snapshot else 0
        self._configs.committed_through(self._commit)
        self._loaded: dict[int, LogEntry] = {}
        self._apply_read: int | None = None
        self._reads: dict[int, tuple[int, int]] = {}
        self._recover(durable)

        # Follower and candidate timers.
        self._heartbeat_check_at = now + random_timeout(rng, config.heartbeat_timeout)
        if self._sole_voter():
            self._heartbeat_check_at = now  # nobody else can lead: stand at once
        self._election_at = 0.0
        self._votes: set[str] = set()
        self._transfer_candidate = False
        self._snapshot_at = now + random_timeout(rng, config.snapshot_interval)
        self._snapshot_pending = False
        self._receiving: dict[object, SnapshotMeta] = {}

        # Leader state.
        self._peers: dict[str, PeerReplication] = {}
        self._dirty: set[str] = set()
        self._start_index = 0
        self._inflight: dict[int, int] = {}
        """Index -> proposal id of entries this leader wrote and has not applied yet."""
        self._self_match = 0
        self._self_writes: deque[tuple[int, int]] = deque()
        """(seq, last index) of this leader's StoreEntries not durable yet."""
        self._changes: deque[tuple[int, ConfigurationChange]] = deque()
        self._transfer: _Transfer | None = None
        self._verifies: dict[int, _Verify] = {}
        self._lease_at = 0.0
        self._stepping_down = False
        self._requests: dict[int, _Outstanding] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._announced: tuple[NodeState, str, int] | None = None

    # ================================================================== properties

    @property
    def id(self) -> str:
        return self._id

    @property
    def address(self) -> str:
        return self._address

    @property
    def state(self) -> NodeState:
        return self._state

    @property
    def is_leader(self) -> bool:
        return self._state == NodeState.LEADER

    @property
    def term(self) -> int:
        return self._term

    @property
    def leader_address(self) -> str:
        """The leader's address as this node knows it (``Status.Leader``), ``""`` if none."""
        return self._leader

    @property
    def leader_id(self) -> str:
        server = self._configs.latest.server_at(self._leader) if self._leader else None
        return server.id if server else ""

    @property
    def term_start_index(self) -> int:
        """A leader's first index of its term (its noop): once the state machine has applied
        it, the leader's state holds every entry committed before (0 when not leading)."""
        return self._start_index if self._state == NodeState.LEADER else 0

    @property
    def commit_index(self) -> int:
        return self._commit

    @property
    def applied_index(self) -> int:
        """The last index handed to the apply stream."""
        return self._applied

    @property
    def last_index(self) -> int:
        return self._log.last_index

    @property
    def first_index(self) -> int:
        return self._log.first_index

    @property
    def last_term(self) -> int:
        return self._log.last_entry()[1]

    @property
    def configuration(self) -> Configuration:
        """The latest configuration (``GetConfiguration``)."""
        return self._configs.latest

    @property
    def latest_configuration_index(self) -> int:
        return self._configs.latest_index

    @property
    def committed_configuration(self) -> Configuration:
        return self._configs.committed

    @property
    def snapshot(self) -> SnapshotMeta | None:
        return self._snapshot

    @property
    def last_contact(self) -> float | None:
        return self._last_contact

    def term_at(self, index: int) -> int | None:
        """The term of a log index this node holds (log or snapshot), else None."""
        return self._log.term_at(index)

    def match_index(self, peer_id: str) -> int | None:
        """Leader only: the follower's match index."""
        peer = self._peers.get(peer_id)
        return peer.match_index if peer else None

    def stats(self, now: float) -> dict[str, str]:
        """``raft.Stats()``: Go's keys and formatting (``fsm_pending`` is the engine's)."""
        last_index, last_term = self._log.last_entry()
        latest = self._configs.latest
        has_us = latest.has_vote(self._id)
        peers = sum(1 for s in latest.voters() if s.id != self._id) if has_us else 0
        if self._state == NodeState.LEADER:
            contact = "0"
        elif self._last_contact is None:
            contact = "never"
        else:
            contact = format_go_duration(max(0.0, now - self._last_contact))
        return {
            "state": self._state.value,
            "term": str(self._term),
            "last_log_index": str(last_index),
            "last_log_term": str(last_term),
            "commit_index": str(self._commit),
            "applied_index": str(self._applied),
            "fsm_pending": "0",
            "last_snapshot_index": str(self._log.snapshot_index),
            "last_snapshot_term": str(self._log.snapshot_term),
            "protocol_version": str(self._version),
            "protocol_version_min": str(PROTOCOL_VERSION_MIN),
            "protocol_version_max": str(PROTOCOL_VERSION_MAX),
            "snapshot_version_min": str(SNAPSHOT_VERSION_MIN),
            "snapshot_version_max": str(SNAPSHOT_VERSION_MAX),
            "latest_configuration_index": str(self._configs.latest_index),
            "latest_configuration": latest.go_servers(),
            "num_peers": str(peers),
            "last_contact": contact,
        }

    # ================================================================== outputs and timers

    def take_outputs(self) -> list[Output]:
        """Everything decided since the last call, in order. Replication messages are built
        here, so inputs fed together (say, many proposals) share AppendEntries."""
        if self._state == NodeState.LEADER:
            self._leader_work(self._now)
        self._loaded.clear()
        self._announce()
        outputs, self._outputs = self._outputs, []
        return outputs

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must next be called (None: only inputs can change anything)."""
        if self._state == NodeState.SHUTDOWN:
            return None
        times = [self._snapshot_at]
        if self._deadlines:
            times.append(self._deadlines[0][0])
        if self._state == NodeState.FOLLOWER:
            times.append(self._heartbeat_check_at)
        elif self._state == NodeState.CANDIDATE:
            times.append(self._election_at)
        elif self._state == NodeState.LEADER:
            # The lease of the only voter cannot fail (it contacts a quorum of one by itself):
            # an idle single-server leader sets no timer for it. A peer added later makes the
            # check due at once (its contact counts from its start).
            if self._peers or not self._configs.latest.has_vote(self._id):
                times.append(self._lease_at)
            if self._transfer is not None:
                times.append(self._transfer.deadline)
            commit = self._commit
            for peer in self._peers.values():
                times.append(peer.heartbeat_at)
                if peer.retry_at > self._now:
                    times.append(peer.retry_at)
                elif (peer.commit_sent < commit or peer.inflight) and (
                    peer.commit_only_at > self._now
                ):
                    times.append(peer.commit_only_at)
        return min(times)

    def tick(self, now: float) -> None:
        """Fire every timer due at ``now``."""
        now = self._advance(now)
        if self._state == NodeState.SHUTDOWN:
            return
        while self._deadlines and self._deadlines[0][0] <= now:
            _, request_id = heapq.heappop(self._deadlines)
            if request_id in self._requests:
                self._fail_request(now, request_id, ERR_RPC_TIMEOUT)
        if self._state == NodeState.FOLLOWER and now >= self._heartbeat_check_at:
            self._heartbeat_check(now)
        elif self._state == NodeState.CANDIDATE and now >= self._election_at:
            self._log_line(LEVEL_WARN, "Election timeout reached, restarting election")
            self._start_election(now)
        elif self._state == NodeState.LEADER:
            if now >= self._lease_at:
                self._check_lease(now)
            transfer = self._transfer
            if self._state == NodeState.LEADER and transfer and now >= transfer.deadline:
                self._finish_transfer(ERR_TRANSFER_TIMEOUT)
            if self._state == NodeState.LEADER:
                for peer_id in self._peers:
                    self._dirty.add(peer_id)
        if now >= self._snapshot_at:
            self._snapshot_at = now + random_timeout(self._rng, self.config.snapshot_interval)
            backlog = self._log.log_last_index - self._log.snapshot_index
            if backlog >= self.config.snapshot_threshold:
                self._start_snapshot()

    # ================================================================== storage results

    def persisted(self, now: float, seq: int) -> None:
        """Storage operations through ``seq`` are durable."""
        now = self._advance(now)
        if seq <= self._durable:
            return
        if seq > self._seq:
            raise ValueError(f"persisted({seq}) but only {self._seq} operations were issued")
        self._durable = seq
        self._release()
        writes = self._self_writes
        advanced = False
        while writes and writes[0][0] <= seq:
            _, last = writes.popleft()
            if last > self._self_match:
                self._self_match = last
                advanced = True
        if advanced and self._state == NodeState.LEADER:
            self._update_commit(now)

    def entries_read(self, now: float, seq: int, entries: Sequence[LogEntry]) -> None:
        """The answer to :class:`~agentrpc.raft.actions.ReadEntries` ``seq``."""
        now = self._advance(now)
        self.persisted(now, seq)
        if self._reads.pop(seq, None) is None:
            return
        for entry in entries:
            if self._log.has_entry(entry.index) and self._log.term_at(entry.index) == entry.term:
                self._loaded[entry.index] = entry
        if self._apply_read == seq:
            self._apply_read = None
            self._advance_apply()
        for peer in self._peers.values():
            if peer.read_seq == seq:
                peer.read_seq = None
                self._dirty.add(peer.server.id)

    # ================================================================== requests from peers

    def handle_request(self, now: float, token: object, request: Request) -> None:
        """An RPC from a peer; its answer comes out as a
        :class:`~agentrpc.raft.actions.SendResponse` with ``token`` (for InstallSnapshot, a
        :class:`~agentrpc.raft.actions.ReceiveSnapshot` may come first)."""
        now = self._advance(now)
        if self._state == NodeState.SHUTDOWN:
            self._outputs.append(SendResponse(token, ERR_RAFT_SHUTDOWN, None))
            return
        version = request.protocol_version
        if (
            version < PROTOCOL_VERSION_MIN
            or version > PROTOCOL_VERSION_MAX
            or version < self._version - 1
        ):
            self._outputs.append(SendResponse(token, ERR_UNSUPPORTED_PROTOCOL, None))
            return
        if isinstance(request, AppendEntriesRequest):
            self._on_append_entries(now, token, request)
        elif isinstance(request, RequestVoteRequest):
            self._on_request_vote(now, token, request)
        elif isinstance(request, InstallSnapshotRequest):
            self._on_install_snapshot(now, token, request)
        elif isinstance(request, TimeoutNowRequest):
            self._on_timeout_now(now, token)
        else:
            self._outputs.append(SendResponse(token, ERR_UNEXPECTED_COMMAND, None))

    def _on_append_entries(self, now: float, token: object, a: AppendEntriesRequest) -> None:
        log = self._log
        resp_term = self._term
        last_log = log.last_index

        def reply(success: bool = False, error: str = "", no_retry: bool = False) -> None:
            response = AppendEntriesResponse(
                term=resp_term,
                last_log=last_log,
                success=success,
                no_retry_backoff=no_retry,
                protocol_version=self._version,
            )
            vouches = success and (a.prev_log_entry > 0 or bool(a.entries))
            self._send_after_durable(SendResponse(token, error, response), everything=vouches)

        if a.term < self._term:
            reply()
            return
        if a.term > self._term or self._state != NodeState.FOLLOWER:
            self._become_follower(now)
            self._set_term(a.term)
            resp_term = a.term
        self._set_leader(text(a.leader))

        entries = a.entries or ()
        prev = a.prev_log_entry
        if not _well_formed(a, entries):
            reply(error=ERR_MALFORMED_ENTRIES)
            return
        if prev > 0:
            prev_term = log.term_at(prev)
            if prev_term is None:
                if prev >= log.snapshot_index:
                    reply(no_retry=True)
                    return
                # Inside our snapshot: committed, so it matches the leader's entry.
            elif prev_term != a.prev_log_term:
                self._log_line(
                    LEVEL_WARN,
                    f"previous log term mis-match: ours={prev_term} remote={a.prev_log_term}",
                )
                reply(no_retry=True)
                return

        new: Sequence[LogEntry] = ()
        for i, entry in enumerate(entries):
            if entry.index > log.last_index:
                new = entries[i:]
                break
            ours = log.term_at(entry.index)
            if ours is None or ours == entry.term:
                continue  # compacted into the snapshot (committed), or already there
            if entry.index <= self._commit:
                reply(error=ERR_COMMITTED_CONFLICT)
                return
            self._log_line(LEVEL_WARN, f"clearing log suffix: from={entry.index}")
            self._truncate(entry.index)
            new = entries[i:]
            break
        if new:
            configs = []
            for entry in new:
                if entry.type in CONFIGURATION_TYPES:
                    try:
                        configs.append((entry.index, decode_configuration_entry(entry)))
                    except DecodeError:
                        reply(error=ERR_BAD_CONFIGURATION_ENTRY)
                        return
            self._append(tuple(new))
            for index, configuration in configs:
                self._configs.appended(index, configuration)

        if a.leader_commit_index > self._commit:
            # Through the last entry this request verified (Go takes its own last index).
            self._commit_to(min(a.leader_commit_index, prev + len(entries)))
        self._last_contact = now
        reply(success=True)

    def _on_request_vote(self, now: float, token: object, req: RequestVoteRequest) -> None:
        resp_term = self._term
        peers = encode_peers(self._configs.latest) if self._version < 2 else b""

        def reply(granted: bool = False) -> None:
            response = RequestVoteResponse(
                term=resp_term, granted=granted, peers=peers, protocol_version=self._version
            )
            self._send_after_durable(SendResponse(token, "", response))

        candidate = text(req.candidate)
        if self._leader and self._leader != candidate and not req.leadership_transfer:
            self._log_line(
                LEVEL_WARN,
                f"rejecting vote request since we have a leader: from={_clip(candidate)} "
                f"leader={_clip(self._leader)}",
            )
            reply()
            return
        if req.term < self._term:
            reply()
            return
        if req.term > self._term:
            self._become_follower(now)
            self._set_term(req.term)
            resp_term = req.term
        if self._vote_term == req.term and self._vote_candidate:
            reply(granted=self._vote_candidate == req.candidate)
            return
        last_index, last_term = self._log.last_entry()
        if last_term > req.last_log_term:
            reply()
            return
        if last_term == req.last_log_term and last_index > req.last_log_index:
            reply()
            return
        self._persist_vote(req.term, req.candidate)
        self._last_contact = now
        reply(granted=True)

    def _on_install_snapshot(self, now: float, token: object, req: InstallSnapshotRequest) -> None:
        resp_term = self._term

        def reply(error: str = "") -> None:
            response = InstallSnapshotResponse(
                term=resp_term, success=False, protocol_version=self._version
            )
            self._send_after_durable(SendResponse(token, error, response))

        if not SNAPSHOT_VERSION_MIN <= req.snapshot_version <= SNAPSHOT_VERSION_MAX:
            reply(ERR_UNSUPPORTED_SNAPSHOT_VERSION.format(version=req.snapshot_version))
            return
        if req.term < self._term:
            reply()
            return
        if req.term > self._term or self._state != NodeState.FOLLOWER:
            self._become_follower(now)
            self._set_term(req.term)
            resp_term = req.term
        self._set_leader(text(req.leader))
        try:
            if req.snapshot_version > 0:
                configuration = decode_configuration(req.configuration)
                configuration_index = req.configuration_index
            else:
                configuration = decode_peers(req.peers)
                configuration_index = req.last_log_index
        except DecodeError:
            reply(ERR_BAD_CONFIGURATION_ENTRY)
            return
        if len(self._receiving) >= MAX_SNAPSHOT_RECEPTIONS:
            reply("snapshot install already in progress")
            return
        meta = SnapshotMeta(
            id="",
            index=req.last_log_index,
            term=req.last_log_term,
            configuration=configuration,
            configuration_index=configuration_index,
            size=req.size,
            version=SNAPSHOT_VERSION,
        )
        self._receiving[token] = meta
        self._outputs.append(ReceiveSnapshot(token, meta))

    def snapshot_received(self, now: float, token: object, snapshot_id: str) -> None:
        """The bytes of the :class:`~agentrpc.raft.actions.ReceiveSnapshot` ``token`` are
        stored durably as snapshot ``snapshot_id``."""
        now = self._advance(now)
        meta = self._receiving.pop(token, None)
        if meta is None:
            return
        meta = SnapshotMeta(
            id=snapshot_id,
            index=meta.index,
            term=meta.term,
            configuration=meta.configuration,
            configuration_index=meta.configuration_index,
            size=meta.size,
            version=meta.version,
        )
        if meta.index > self._applied:
            self._install_snapshot(meta)
        elif self._snapshot is None or meta.index > self._snapshot.index:
            self._snapshot = meta
        self._last_contact = now
        response = InstallSnapshotResponse(
            term=self._term, success=True, protocol_version=self._version
        )
        self._send_after_durable(SendResponse(token, "", response), everything=True)

    def snapshot_failed(self, now: float, token: object, error: str) -> None:
        """The snapshot bytes of ``token`` could not be stored (``short read``, disk error)."""
        self._advance(now)
        if self._receiving.pop(token, None) is None:
            return
        response = InstallSnapshotResponse(
            term=self._term, success=False, protocol_version=self._version
        )
        self._send_after_durable(SendResponse(token, error, response))

    def _install_snapshot(self, meta: SnapshotMeta) -> None:
        log = self._log
        self._outputs.append(RestoreSnapshot(meta))
        self._snapshot = meta
        self._applied = meta.index
        self._commit = max(self._commit, meta.index)
        keep = log.has_entry(meta.index) and log.term_at(meta.index) == meta.term
        log.set_snapshot(meta.index, meta.term)
        if keep:
            self._configs.compacted(meta.index, meta.configuration, meta.configuration_index)
            self._configs.committed_through(self._commit)
            self._compact(meta.index)
        else:
            deleted = log.truncate_from(log.first_index) if log.first_index else None
            if deleted:
                self._storage(DeleteEntries(self._next_seq(), *deleted))
            self._configs.reset(meta.configuration, meta.configuration_index, self._commit)
        # (Only a node that became leader while the snapshot was being stored has proposals.)
        for index in sorted(i for i in self._inflight if i <= meta.index):
            self._outputs.append(ProposalFailed(self._inflight.pop(index), ERR_ABORTED_BY_RESTORE))

    def _on_timeout_now(self, now: float, token: object) -> None:
        self._set_leader("")
        if self._state == NodeState.LEADER:
            self._become_follower(now)
        self._transfer_candidate = True
        self._start_election(now)
        self._send_after_durable(
            SendResponse(token, "", TimeoutNowResponse(protocol_version=self._version))
        )

    # ================================================================== answers from peers

    def handle_response(self, now: float, request_id: int, response: Response) -> None:
        """The answer to the request ``request_id`` (a response with a non-empty error string
        is a failure: call :meth:`request_failed`)."""
        now = self._advance(now)
        info = self._requests.pop(request_id, None)
        if info is None or self._state == NodeState.SHUTDOWN:
            return
        if response.rpc_type != _RPC_OF_KIND[info.kind]:
            self._requests[request_id] = info
            self._fail_request(now, request_id, ERR_UNEXPECTED_COMMAND)
            return
        term = getattr(response, "term", 0)
        if term > self._term:
            self._log_line(LEVEL_INFO, "newer term discovered, fallback to follower")
            self._become_follower(now)
            self._set_term(term)
            self._forget(info, request_id)
            return
        if info.term != self._term:
            self._forget(info, request_id)
            return
        if info.kind == _Kind.VOTE:
            assert isinstance(response, RequestVoteResponse)
            self._on_vote(now, info, response)
            return
        if self._state != NodeState.LEADER:
            return
        if info.kind == _Kind.TIMEOUT_NOW:
            transfer = self._transfer
            if transfer is not None and transfer.request_id == request_id:
                self._finish_transfer(None)
            return
        peer = self._peers.get(info.peer_id)
        if peer is None:
            return
        peer.last_contact = now
        if info.kind == _Kind.HEARTBEAT:
            assert isinstance(response, AppendEntriesResponse)
            peer.heartbeat_inflight = None
            peer.heartbeat_failures = 0
            if response.success:
                self._verify_ack(info)
        elif info.kind == _Kind.APPEND:
            assert isinstance(response, AppendEntriesResponse)
            self._on_append_response(now, peer, request_id, info, response)
        elif info.kind == _Kind.SNAPSHOT:
            assert isinstance(response, InstallSnapshotResponse)
            peer.snapshot_inflight = None
            if response.success:
                peer.next_index = max(peer.next_index, info.last + 1)
                self._matched(now, peer, info.last)
                peer.failures = 0
                self._verify_ack(info)
            else:
                self._peer_failed(now, peer)
        self._dirty.add(peer.server.id)

    def request_failed(self, now: float, request_id: int, error: str) -> None:
        """The request ``request_id`` got no usable answer (connection error, timeout, or an
        error string from the peer)."""
        now = self._advance(now)
        if request_id in self._requests:
            self._fail_request(now, request_id, error)

    def _fail_request(self, now: float, request_id: int, error: str) -> None:
        info = self._requests.pop(request_id)
        if self._state != NodeState.LEADER or info.term != self._term:
            return
        if info.kind == _Kind.TIMEOUT_NOW:
            transfer = self._transfer
            if transfer is not None and transfer.request_id == request_id:
                self._finish_transfer(
                    ERR_TIMEOUT_NOW_FAILED.format(id=transfer.peer_id, error=error)
                )
            return
        peer = self._peers.get(info.peer_id)
        if peer is None:
            return
        if info.kind == _Kind.HEARTBEAT:
            peer.heartbeat_inflight = None
            peer.heartbeat_failures += 1
            peer.heartbeat_at = now + backoff(
                FAILURE_WAIT, peer.heartbeat_failures, MAX_FAILURE_SCALE
            )
            return
        if info.kind == _Kind.APPEND:
            if peer.inflight.pop(request_id, None) is None:
                return
            if peer.mode == Mode.PIPELINE:
                self._abort_pipeline(peer)
        elif info.kind == _Kind.SNAPSHOT:
            peer.snapshot_inflight = None
        self._peer_failed(now, peer)
        self._dirty.add(peer.server.id)

    def _forget(self, info: _Outstanding, request_id: int) -> None:
        peer = self._peers.get(info.peer_id)
        if peer is not None:
            peer.inflight.pop(request_id, None)
            if peer.heartbeat_inflight == request_id:
                peer.heartbeat_inflight = None
            if peer.snapshot_inflight == request_id:
                peer.snapshot_inflight = None

    def _on_append_response(
        self,
        now: float,
        peer: PeerReplication,
        request_id: int,
        info: _Outstanding,
        response: AppendEntriesResponse,
    ) -> None:
        if peer.inflight.pop(request_id, None) is None or info.epoch != peer.epoch:
            return
        if response.success:
            peer.failures = 0
            if peer.mode == Mode.PROBE:
                peer.mode = Mode.PIPELINE
                peer.next_index = max(peer.next_index, info.last + 1)
            self._matched(now, peer, info.last)
            self._verify_ack(info)
            return
        if peer.mode == Mode.PIPELINE:
            self._abort_pipeline(peer)
        peer.next_index = next_after_reject(peer, info.prev, response.last_log)
        if response.no_retry_backoff:
            peer.failures = 0
        else:
            self._peer_failed(now, peer)
        self._log_line(
            LEVEL_WARN,
            f"appendEntries rejected, sending older logs: peer={peer.server.id} "
            f"next={peer.next_index}",
        )

    def _peer_failed(self, now: float, peer: PeerReplication) -> None:
        peer.failures += 1
        peer.retry_at = now + backoff(FAILURE_WAIT, peer.failures, MAX_FAILURE_SCALE)

    def _abort_pipeline(self, peer: PeerReplication) -> None:
        for request_id in peer.inflight:
            self._requests.pop(request_id, None)
        peer.inflight.clear()
        peer.epoch += 1
        peer.mode = Mode.PROBE
        peer.next_index = peer.match_index + 1

    def _matched(self, now: float, peer: PeerReplication, index: int) -> None:
        if index > peer.match_index:
            peer.match_index = index
            self._update_commit(now)
        if peer.stop_after is not None and peer.match_index >= peer.stop_after:
            self._stop_peer(peer.server.id)

    def _on_vote(self, now: float, info: _Outstanding, response: RequestVoteResponse) -> None:
        if self._state != NodeState.CANDIDATE or not response.granted:
            return
        self._votes.add(info.peer_id)
        self._check_votes(now)

    # ================================================================== follower and candidate

    def _sole_voter(self) -> bool:
        """This node is the only voter of its latest configuration: no other node can ever
        lead, so waiting a heartbeat timeout before standing would only delay the first
        election (hashicorp/raft waits; the result is the same, sooner)."""
        voters = self._configs.latest.voters()
        return len(voters) == 1 and voters[0].id == self._id

    def _heartbeat_check(self, now: float) -> None:
        config = self.config
        self._heartbeat_check_at = now + random_timeout(self._rng, config.heartbeat_timeout)
        if self._last_contact is not None and now - self._last_contact < config.heartbeat_timeout:
            return
        last_leader = self._leader
        self._set_leader("")
        configs = self._configs
        if configs.latest_index == 0:
            self._log_line(LEVEL_WARN, "no known peers, aborting election")
        elif configs.stable and not configs.latest.has_vote(self._id):
            self._log_line(LEVEL_WARN, "not part of stable configuration, aborting election")
        else:
            self._log_line(
                LEVEL_WARN,
                f"heartbeat timeout reached, starting election: last-leader={_clip(last_leader)}",
            )
            self._start_election(now)

    def _start_election(self, now: float) -> None:
        self._set_state(NodeState.CANDIDATE)
        self._set_leader("")
        self._set_term(self._term + 1)
        self._votes = set()
        self._election_at = now + random_timeout(self._rng, self.config.election_timeout)
        last_index, last_term = self._log.last_entry()
        request = RequestVoteRequest(
            term=self._term,
            candidate=self._address_bytes,
            last_log_index=last_index,
            last_log_term=last_term,
            leadership_transfer=self._transfer_candidate,
            protocol_version=self._version,
        )
        self._transfer_candidate = False
        self._log_line(LEVEL_INFO, f"entering candidate state: term={self._term}")
        for server in self._configs.latest.voters():
            if server.id == self._id:
                self._persist_vote(self._term, self._address_bytes)
                self._votes.add(self._id)
            else:
                self._send_request(now, _Kind.VOTE, server.id, server.address, request)
        self._check_votes(now)

    def _check_votes(self, now: float) -> None:
        latest = self._configs.latest
        granted = sum(1 for server in latest.voters() if server.id in self._votes)
        if granted >= latest.quorum_size():
            self._log_line(LEVEL_INFO, f"election won: tally={granted}")
            self._become_leader(now)

    def _become_follower(self, now: float) -> None:
        if self._state == NodeState.SHUTDOWN:
            return
        if self._state == NodeState.LEADER:
            self._leave_leadership(now, ERR_LEADERSHIP_LOST)
        if self._state != NodeState.FOLLOWER:
            # Go starts a new heartbeat timer when it enters the follower loop, not when a
            # follower merely adopts a newer term.
            self._set_state(NodeState.FOLLOWER)
            self._heartbeat_check_at = now + random_timeout(
                self._rng, self.config.heartbeat_timeout
            )
        self._set_leader("")

    def _leave_leadership(self, now: float, error: str) -> None:
        for index in sorted(self._inflight):
            self._outputs.append(ProposalFailed(self._inflight[index], error))
        self._inflight.clear()
        while self._changes:
            proposal, _ = self._changes.popleft()
            self._outputs.append(ProposalFailed(proposal, ERR_NOT_LEADER))
        if self._transfer is not None:
            self._finish_transfer(None)
        for verify in self._verifies.values():
            self._outputs.append(VerifyDone(verify.id, error))
        self._verifies.clear()
        self._requests.clear()
        self._deadlines.clear()
        self._peers.clear()
        self._dirty.clear()
        self._self_writes.clear()
        self._stepping_down = False
        self._last_contact = now

    # ================================================================== leader

    def _become_leader(self, now: float) -> None:
        self._set_state(NodeState.LEADER)
        self._set_leader(self._address)
        last = self._log.last_index
        self._start_index = last + 1
        # Our own match counts once our writes are durable; the noop below is the first.
        self._self_match = 0
        self._self_writes.clear()
        self._peers = {}
        self._stepping_down = False
        for server in self._configs.latest.servers:
            if server.id != self._id:
                self._start_peer(now, server, last + 1)
        self._lease_at = now + self.config.leader_lease_timeout
        self._append_as_leader(LogType.NOOP, b"", None)

    def _start_peer(self, now: float, server: Server, next_index: int) -> None:
        self._peers[server.id] = PeerReplication(
            server=server,
            next_index=next_index,
            last_contact=now,
            heartbeat_at=now + random_timeout(self._rng, self.config.heartbeat_timeout / 10),
        )
        self._dirty.add(server.id)

    def _stop_peer(self, peer_id: str) -> None:
        peer = self._peers.pop(peer_id, None)
        self._dirty.discard(peer_id)
        if peer is not None:
            for request_id in list(peer.inflight):
                self._requests.pop(request_id, None)

    def _sync_peers(self, now: float, removal_index: int) -> None:
        """Go's ``startStopReplication`` after a configuration change."""
        latest = self._configs.latest
        for server in latest.servers:
            if server.id == self._id:
                continue
            peer = self._peers.get(server.id)
            if peer is None:
                self._start_peer(now, server, self._log.last_index + 1)
            else:
                peer.server = server
                peer.stop_after = None
        for peer_id, peer in list(self._peers.items()):
            if latest.server(peer_id) is None and peer.stop_after is None:
                peer.stop_after = removal_index
                if peer.match_index >= removal_index:
                    self._stop_peer(peer_id)

    def _append_as_leader(self, entry_type: int, data: bytes, proposal: int | None) -> int:
        index = self._log.last_index + 1
        entry = LogEntry(index=index, term=self._term, type=entry_type, data=data)
        self._append((entry,))
        self._self_writes.append((self._seq, index))
        if proposal is not None:
            self._inflight[index] = proposal
        for peer_id in self._peers:
            self._dirty.add(peer_id)
        return index

    def _update_commit(self, now: float) -> None:
        latest = self._configs.latest
        matches = []
        for server in latest.voters():
            if server.id == self._id:
                matches.append(self._self_match)
            else:
                peer = self._peers.get(server.id)
                matches.append(peer.match_index if peer else 0)
        index = quorum_match(matches)
        if index > self._commit and self._may_commit(index):
            self._commit_to(index)
            for peer_id in self._peers:
                self._dirty.add(peer_id)
            if self._configs.stable and not self._configs.committed.has_vote(self._id):
                self._stepping_down = True

    def _may_commit(self, index: int) -> bool:
        """Raft's commitment rule: a leader commits only through an entry of its own term
        (its noop opens the term), older entries only with it (Figure 8 of the paper)."""
        return index >= self._start_index

    def _leader_work(self, now: float) -> None:
        """Membership changes, removal of ourselves, transfers and replication (run when the
        outputs are taken)."""
        if self._stepping_down and self._configs.stable:
            self._removed(now)
            return
        self._process_changes(now)
        for peer_id in sorted(self._dirty):
            peer = self._peers.get(peer_id)
            if peer is not None:
                self._replicate(now, peer)
                self._heartbeat(now, peer)
        self._dirty.clear()
        transfer = self._transfer
        if transfer is not None and transfer.request_id is None:
            peer = self._peers.get(transfer.peer_id)
            if peer is not None and peer.match_index >= self._log.last_index:
                transfer.request_id = self._send_request(
                    now,
                    _Kind.TIMEOUT_NOW,
                    peer.server.id,
                    peer.server.address,
                    TimeoutNowRequest(protocol_version=self._version),
                )

    def _removed(self, now: float) -> None:
        if self.config.shutdown_on_remove:
            self._log_line(LEVEL_INFO, "removed ourself, shutting down")
            self.shutdown(now)
        else:
            self._log_line(LEVEL_INFO, "removed ourself, transitioning to follower")
            self._become_follower(now)

    def _replicate(self, now: float, peer: PeerReplication) -> None:
        if peer.snapshot_inflight is not None or peer.read_seq is not None:
            return
        if now < peer.retry_at:
            return
        log = self._log
        window = self.config.max_pipeline if peer.mode == Mode.PIPELINE else 1
        limit = self._log.last_index
        if peer.stop_after is not None:
            limit = min(limit, peer.stop_after)
        while len(peer.inflight) < window:
            next_index = peer.next_index
            more = next_index <= limit
            if not more:
                # Nothing new to send: an AppendEntries with only the commit index, at most
                # once per CommitTimeout. A pipeline also sends one while requests are in
                # flight (as Go's does), so a lost request shows up as a rejection at once
                # instead of after the RPC timeout.
                if now < peer.commit_only_at:
                    return
                pipelined = peer.mode == Mode.PIPELINE and bool(peer.inflight)
                if peer.inflight and not pipelined:
                    return
                if peer.commit_sent >= self._commit and not pipelined:
                    return
            prev = next_index - 1
            prev_term = log.term_at(prev)
            if (
                prev_term is None
                or (more and next_index < log.first_index)
                or (more and not log.has_entry(next_index))
            ):
                if not peer.inflight:
                    self._send_snapshot(now, peer)
                return
            entries: list[LogEntry] = []
            size = 0
            last = min(limit, next_index + self.config.max_append_entries - 1)
            for index in range(next_index, last + 1):
                entry = log.cache_get(index) or self._loaded.get(index)
                if entry is None:
                    if not entries:
                        seq = self._read(index, last)
                        peer.read_seq = seq
                        return
                    break
                entries.append(entry)
                size += len(entry.data)
                if size >= self.config.max_append_bytes:
                    break
            request = AppendEntriesRequest(
                term=self._term,
                leader=self._address_bytes,
                prev_log_entry=prev,
                prev_log_term=prev_term,
                entries=tuple(entries),
                leader_commit_index=self._commit,
                protocol_version=self._version,
            )
            sent_last = prev + len(entries)
            request_id = self._send_request(
                now,
                _Kind.APPEND,
                peer.server.id,
                peer.server.address,
                request,
                prev=prev,
                last=sent_last,
                epoch=peer.epoch,
                pipeline=peer.mode == Mode.PIPELINE,
            )
            peer.inflight[request_id] = (prev, sent_last)
            peer.commit_sent = max(peer.commit_sent, self._commit)
            peer.commit_only_at = now + random_timeout(self._rng, self.config.commit_timeout)
            if peer.mode == Mode.PIPELINE:
                peer.next_index = sent_last + 1
            else:
                return

    def _send_snapshot(self, now: float, peer: PeerReplication) -> None:
        meta = self._snapshot
        if meta is None:
            self._log_line(
                LEVEL_WARN, f"failed to send snapshot to {peer.server.id}: {ERR_NO_SNAPSHOTS}"
            )
            self._peer_failed(now, peer)
            return
        request = InstallSnapshotRequest(
            term=self._term,
            leader=self._address_bytes,
            last_log_index=meta.index,
            last_log_term=meta.term,
            size=meta.size,
            configuration=encode_configuration(meta.configuration),
            configuration_index=meta.configuration_index,
            peers=encode_peers(meta.configuration) if self._version < 2 else b"",
            snapshot_version=meta.version,
            protocol_version=self._version,
        )
        self._ids += 1
        request_id = self._ids
        timeout = snapshot_rpc_timeout(self.config.rpc_timeout, meta.size)
        self._track(now, request_id, _Kind.SNAPSHOT, peer.server.id, timeout, last=meta.index)
        peer.snapshot_inflight = request_id
        self._send_after_durable(
            SendSnapshot(request_id, peer.server.id, peer.server.address, request, meta.id)
        )

    def _heartbeat(self, now: float, peer: PeerReplication) -> None:
        if now < peer.heartbeat_at:
            return
        peer.heartbeat_at = now + random_timeout(self._rng, self.config.heartbeat_timeout / 10)
        if peer.heartbeat_inflight is not None:
            # Unanswered for a whole interval: forget it (a late answer is ignored) rather
            # than let one lost message silence the leader until the RPC timeout.
            self._requests.pop(peer.heartbeat_inflight, None)
        request = AppendEntriesRequest(
            term=self._term, leader=self._address_bytes, protocol_version=self._version
        )
        peer.heartbeat_inflight = self._send_request(
            now, _Kind.HEARTBEAT, peer.server.id, peer.server.address, request
        )

    def _check_lease(self, now: float) -> None:
        lease = self.config.leader_lease_timeout
        contacted = 0
        max_diff = 0.0
        latest = self._configs.latest
        for server in latest.voters():
            if server.id == self._id:
                contacted += 1
                continue
            peer = self._peers.get(server.id)
            if peer is None:
                continue
            diff = now - peer.last_contact
            if diff <= lease:
                contacted += 1
                max_diff = max(max_diff, diff)
        if contacted < latest.quorum_size():
            self._log_line(LEVEL_WARN, "failed to contact quorum of nodes, stepping down")
            self._become_follower(now)
            return
        self._lease_at = now + max(lease - max_diff, MIN_CHECK_INTERVAL)

    def _verify_ack(self, info: _Outstanding) -> None:
        if not self._verifies:
            return
        quorum = self._configs.latest.quorum_size()
        voter = self._configs.latest.has_vote(info.peer_id)
        for verify_id in list(self._verifies):
            verify = self._verifies[verify_id]
            if info.sent_at >= verify.started and voter:
                verify.acks.add(info.peer_id)
                if len(verify.acks) >= quorum:
                    del self._verifies[verify_id]
                    self._outputs.append(VerifyDone(verify_id, None))

    def _finish_transfer(self, error: str | None) -> None:
        transfer, self._transfer = self._transfer, None
        if transfer is not None:
            self._outputs.append(TransferDone(transfer.id, error))

    # ================================================================== membership changes

    def _process_changes(self, now: float) -> None:
        while (
            self._changes
            and self._configs.stable
            and self._commit >= self._start_index
            and self._transfer is None
        ):
            proposal, change = self._changes.popleft()
            configs = self._configs
            try:
                configuration = next_configuration(configs.latest, configs.latest_index, change)
            except ConfigurationError as exc:
                self._outputs.append(ProposalFailed(proposal, str(exc)))
                continue
            if self._version < 2:
                entry_type, data = LogType.REMOVE_PEER_DEPRECATED, encode_peers(configuration)
            else:
                entry_type, data = LogType.CONFIGURATION, encode_configuration(configuration)
            index = self._append_as_leader(entry_type, data, proposal)
            configs.appended(index, configuration)
            self._sync_peers(now, index)
            self._update_commit(now)
        if self._transfer is not None:
            while self._changes:
                proposal, _ = self._changes.popleft()
                self._outputs.append(ProposalFailed(proposal, ERR_LEADERSHIP_TRANSFER_IN_PROGRESS))

    def _change(self, now: float, change: ConfigurationChange, min_version: int) -> int:
        self._advance(now)
        if self._version < min_version:
            raise RaftError(ERR_UNSUPPORTED_PROTOCOL)
        self._check_leader()
        if len(self._changes) >= self.config.max_pending_changes:
            raise RaftError("too many pending configuration changes")
        self._ids += 1
        self._changes.append((self._ids, change))
        return self._ids

    def add_voter(self, now: float, server_id: str, address: str, prev_index: int = 0) -> int:
        """``AddVoter``: a proposal id, resolved when the configuration entry commits."""
        change = ConfigurationChange(ChangeCommand.ADD_STAGING, server_id, address, prev_index)
        return self._change(now, change, 2)

    def add_nonvoter(self, now: float, server_id: str, address: str, prev_index: int = 0) -> int:
        change = ConfigurationChange(ChangeCommand.ADD_NONVOTER, server_id, address, prev_index)
        return self._change(now, change, 3)

    def demote_voter(self, now: float, server_id: str, prev_index: int = 0) -> int:
        change = ConfigurationChange(ChangeCommand.DEMOTE_VOTER, server_id, "", prev_index)
        return self._change(now, change, 3)

    def remove_server(self, now: float, server_id: str, prev_index: int = 0) -> int:
        """``RemoveServer`` (the leader itself included: it steps down once committed)."""
        change = ConfigurationChange(ChangeCommand.REMOVE_SERVER, server_id, "", prev_index)
        return self._change(now, change, 2)

    # ================================================================== client operations

    def _check_leader(self) -> None:
        if self._state == NodeState.SHUTDOWN:
            raise RaftError(ERR_RAFT_SHUTDOWN)
        if self._state != NodeState.LEADER or self._stepping_down:
            raise RaftError(ERR_NOT_LEADER)
        if self._transfer is not None:
            raise RaftError(ERR_LEADERSHIP_TRANSFER_IN_PROGRESS)

    def propose(self, now: float, data: bytes) -> int:
        """``Apply``: write a command; returns the proposal id that the matching
        :class:`~agentrpc.raft.actions.Apply` (or a ProposalFailed) names. Raises
        :class:`~agentrpc.raft.errors.RaftError` (``node is not the leader`` ...)."""
        self._advance(now)
        self._check_leader()
        self._ids += 1
        self._append_as_leader(LogType.COMMAND, data, self._ids)
        return self._ids

    def barrier(self, now: float) -> int:
        """``Barrier``: resolved once everything before it is applied."""
        self._advance(now)
        self._check_leader()
        self._ids += 1
        self._append_as_leader(LogType.BARRIER, b"", self._ids)
        return self._ids

    def verify_leader(self, now: float) -> int:
        """``VerifyLeader``: a :class:`~agentrpc.raft.actions.VerifyDone` follows once a quorum
        answered heartbeats sent from now on (or leadership is lost)."""
        now = self._advance(now)
        if self._state != NodeState.LEADER:
            raise RaftError(ERR_NOT_LEADER)
        self._ids += 1
        verify = _Verify(self._ids, now, {self._id})
        if self._configs.latest.quorum_size() <= 1:
            self._outputs.append(VerifyDone(verify.id, None))
            return verify.id
        self._verifies[verify.id] = verify
        for peer in self._peers.values():
            peer.heartbeat_at = now
            if peer.heartbeat_inflight is not None:
                self._requests.pop(peer.heartbeat_inflight, None)
                peer.heartbeat_inflight = None
            self._dirty.add(peer.server.id)
        return verify.id

    def transfer_leadership(self, now: float, target_id: str | None = None) -> int:
        """``LeadershipTransfer[ToServer]``: a transfer id a TransferDone names."""
        now = self._advance(now)
        if target_id == self._id:
            raise RaftError(ERR_TRANSFER_TO_SELF)
        if self._state != NodeState.LEADER:
            raise RaftError(ERR_NOT_LEADER)
        if self._transfer is not None:
            raise RaftError(ERR_LEADERSHIP_TRANSFER_IN_PROGRESS)
        if target_id is None:
            voters = [
                p
                for p in self._peers.values()
                if p.stop_after is None and self._configs.latest.has_vote(p.server.id)
            ]
            if not voters:
                raise RaftError(ERR_TRANSFER_NO_PEER)
            target_id = max(voters, key=lambda p: (p.match_index, p.server.id)).server.id
        elif target_id not in self._peers:
            raise RaftError(ERR_TRANSFER_NO_REPLICATION.format(id=target_id))
        self._ids += 1
        self._transfer = _Transfer(self._ids, target_id, now + self.config.election_timeout)
        self._dirty.add(target_id)
        return self._ids

    def request_snapshot(self, now: float) -> None:
        """``Snapshot()``: ask for a snapshot now (a TakeSnapshot follows). Raises
        ``nothing new to snapshot`` when nothing was applied since the last one."""
        self._advance(now)
        if self._snapshot_pending:
            return
        if self._applied <= self._log.snapshot_index:
            raise RaftError(ERR_NOTHING_NEW_TO_SNAPSHOT)
        if not self._start_snapshot():
            raise RaftError(
                ERR_SNAPSHOT_CONFIG_PENDING.format(
                    committed=self._configs.committed_index, applied=self._applied
                )
            )

    def bootstrap(self, now: float, configuration: Configuration) -> None:
        """``BootstrapCluster``: term 1 and the configuration as entry 1, on a node without
        any state (``bootstrap only works on new clusters`` otherwise)."""
        self._advance(now)
        check_configuration(configuration)
        if self._term > 0 or self._log.last_index > 0 or self._snapshot is not None:
            raise RaftError(ERR_CANT_BOOTSTRAP)
        if self._state != NodeState.FOLLOWER:
            raise RaftError(ERR_CANT_BOOTSTRAP)
        self._set_term(1)
        if self._version < 3:
            entry = LogEntry(1, 1, LogType.REMOVE_PEER_DEPRECATED, encode_peers(configuration))
        else:
            entry = LogEntry(1, 1, LogType.CONFIGURATION, encode_configuration(configuration))
        self._append((entry,))
        self._configs.appended(1, configuration)
        if self._sole_voter():
            self._heartbeat_check_at = now

    def shutdown(self, now: float) -> None:
        """Stop: every pending operation fails with ``raft is already shutdown``."""
        now = self._advance(now)
        if self._state == NodeState.LEADER:
            self._leave_leadership(now, ERR_RAFT_SHUTDOWN)
        self._set_state(NodeState.SHUTDOWN)
        self._set_leader("")
        for token in list(self._receiving):
            self._outputs.append(SendResponse(token, ERR_RAFT_SHUTDOWN, None))
        self._receiving.clear()
        self._requests.clear()
        self._deadlines.clear()

    # ================================================================== snapshots

    def _start_snapshot(self) -> bool:
        if self._snapshot_pending or self._applied <= self._log.snapshot_index:
            return False
        configuration, configuration_index = self._configs.as_of(self._applied)
        if configuration_index > self._applied:
            return False
        term = self._log.term_at(self._applied)
        if term is None:
            return False
        self._snapshot_pending = True
        self._outputs.append(TakeSnapshot(self._applied, term, configuration, configuration_index))
        return True

    def snapshot_taken(self, now: float, meta: SnapshotMeta) -> None:
        """The snapshot a TakeSnapshot asked for is durable: compact the log behind it."""
        self._advance(now)
        self._snapshot_pending = False
        if self._snapshot is not None and meta.index <= self._snapshot.index:
            return
        self._snapshot = meta
        if meta.index > self._log.snapshot_index:
            self._log.set_snapshot(meta.index, meta.term)
        self._configs.compacted(meta.index, meta.configuration, meta.configuration_index)
        self._compact(meta.index)

    def snapshot_take_failed(self, now: float) -> None:
        self._advance(now)
        self._snapshot_pending = False

    def _compact(self, snapshot_index: int) -> None:
        """Go's ``compactLogs``: delete through the snapshot, keeping TrailingLogs entries."""
        log = self._log
        last = log.log_last_index
        trailing = self.config.trailing_logs
        if last <= trailing:
            return
        deleted = log.compact_through(min(snapshot_index, last - trailing))
        if deleted:
            self._storage(DeleteEntries(self._next_seq(), *deleted))

    # ================================================================== internals

    def _advance(self, now: float) -> float:
        if now > self._now:
            self._now = now
        return self._now

    def _announce(self) -> None:
        current = (self._state, self._leader, self._term)
        if current != self._announced:
            self._announced = current
            self._outputs.append(
                StateChanged(self._state.value, self._term, self._leader, self.leader_id)
            )

    def _set_state(self, state: NodeState) -> None:
        if state != self._state:
            self._log_line(LEVEL_INFO, f"entering {state.value.lower()} state")
        self._state = state

    def _set_leader(self, address: str) -> None:
        self._leader = address

    def _log_line(self, level: str, message: str) -> None:
        self._outputs.append(LogLine(level, message))

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _storage(self, op: StoreEntries | DeleteEntries | SetTerm | SetVote | ReadEntries) -> None:
        self._outputs.append(op)

    def _set_term(self, term: int) -> None:
        if term == self._term:
            return
        self._term = term
        self._hard_seq = self._next_seq()
        self._storage(SetTerm(self._hard_seq, term))

    def _persist_vote(self, term: int, candidate: bytes) -> None:
        self._vote_term, self._vote_candidate = term, candidate
        self._hard_seq = self._next_seq()
        self._storage(SetVote(self._hard_seq, term, candidate))

    def _append(self, entries: tuple[LogEntry, ...]) -> None:
        log = self._log
        if log.log_last_index and entries[0].index != log.log_last_index + 1:
            # The log ends before the snapshot (its newest entries were applied and
            # snapshotted before they were durable): everything in it is in the snapshot, and
            # the new entries follow the snapshot. The log restarts with them.
            deleted = log.truncate_from(log.first_index)
            if deleted:
                self._storage(DeleteEntries(self._next_seq(), *deleted))
        log.append(entries)
        outputs = self._outputs
        last = outputs[-1] if outputs else None
        if (
            isinstance(last, StoreEntries)
            and last.seq == self._seq
            and last.entries[-1].index + 1 == entries[0].index
        ):
            # Merge with the previous write if the engine has not taken it yet.
            outputs[-1] = StoreEntries(last.seq, last.entries + entries)
            return
        self._storage(StoreEntries(self._next_seq(), entries))

    def _truncate(self, index: int) -> None:
        deleted = self._log.truncate_from(index)
        if deleted:
            self._storage(DeleteEntries(self._next_seq(), *deleted))
        self._configs.truncated(index)
        for i in sorted(i for i in self._inflight if i >= index):
            self._outputs.append(ProposalFailed(self._inflight.pop(i), ERR_LEADERSHIP_LOST))

    def _read(self, first: int, last: int) -> int:
        seq = self._next_seq()
        self._reads[seq] = (first, last)
        self._storage(ReadEntries(seq, first, last))
        return seq

    def _commit_to(self, index: int) -> None:
        if index <= self._commit:
            return
        self._commit = index
        self._configs.committed_through(index)
        self._advance_apply()

    def _advance_apply(self) -> None:
        while self._applied < self._commit and self._apply_read is None:
            first = self._applied + 1
            last = min(self._commit, first + MAX_APPLY_BATCH - 1)
            entries: list[LogEntry] = []
            for index in range(first, last + 1):
                entry = self._log.cache_get(index) or self._loaded.get(index)
                if entry is None:
                    break
                entries.append(entry)
            if not entries:
                if not self._log.has_entry(first):
                    # Neither stored nor in the snapshot: nothing more can be applied.
                    return
                self._apply_read = self._read(first, last)
                return
            proposals = tuple(self._inflight.pop(e.index, None) for e in entries)
            self._applied = entries[-1].index
            self._outputs.append(Apply(tuple(entries), proposals))

    def _send_after_durable(
        self, output: SendRequest | SendSnapshot | SendResponse, *, everything: bool = False
    ) -> None:
        """Hand ``output`` out once the term and vote (or, with ``everything``, every storage
        operation issued so far) are durable."""
        barrier = self._seq if everything else self._hard_seq
        if barrier <= self._durable:
            self._outputs.append(output)
        elif everything:
            self._wait_all.append((barrier, output))
        else:
            self._wait_hard.append((barrier, output))

    def _release(self) -> None:
        durable = self._durable
        for queue in (self._wait_hard, self._wait_all):
            while queue and queue[0][0] <= durable:
                self._outputs.append(queue.popleft()[1])

    def _send_request(
        self,
        now: float,
        kind: _Kind,
        peer_id: str,
        address: str,
        request: Request,
        *,
        prev: int = 0,
        last: int = 0,
        epoch: int = 0,
        pipeline: bool = False,
    ) -> int:
        self._ids += 1
        request_id = self._ids
        self._track(
            now,
            request_id,
            kind,
            peer_id,
            self.config.rpc_timeout,
            prev=prev,
            last=last,
            epoch=epoch,
        )
        self._send_after_durable(SendRequest(request_id, peer_id, address, request, pipeline))
        return request_id

    def _track(
        self,
        now: float,
        request_id: int,
        kind: _Kind,
        peer_id: str,
        timeout: float,
        *,
        prev: int = 0,
        last: int = 0,
        epoch: int = 0,
    ) -> None:
        deadline = now + timeout
        self._requests[request_id] = _Outstanding(
            kind, peer_id, self._term, now, deadline, prev, last, epoch
        )
        deadlines = self._deadlines
        if len(deadlines) > 2 * len(self._requests) + 64:
            # Drop the deadlines of requests already answered (bounded by what is in flight).
            self._deadlines = deadlines = [d for d in deadlines if d[1] in self._requests]
            heapq.heapify(deadlines)
        heapq.heappush(deadlines, (deadline, request_id))

    def _recover(self, durable: DurableState) -> None:
        log = self._log
        snapshot = durable.snapshot
        stored_last = max(durable.stored_last_index, log.log_last_index)
        if stored_last > log.log_last_index and log.log_last_index:
            self._storage(DeleteEntries(self._next_seq(), log.log_last_index + 1, stored_last))
        elif stored_last and not log.log_last_index:
            self._storage(DeleteEntries(self._next_seq(), 1, stored_last))
        base = snapshot.index if snapshot else 0
        # A log that does not connect to the snapshot, or disagrees with it, or lies entirely
        # before it (its newest entries were snapshotted before they were durable) is dropped.
        unusable = (
            log.first_index > base + 1
            or log.log_last_index < base
            or (
                snapshot is not None
                and log.has_entry(snapshot.index)
                and log.term_at(snapshot.index) != snapshot.term
            )
        )
        if log.first_index and unusable:
            deleted = log.truncate_from(log.first_index)
            if deleted:
                self._storage(DeleteEntries(self._next_seq(), *deleted))
        for entry in durable.configuration_entries:
            if entry.index > base and log.term_at(entry.index) == entry.term:
                try:
                    self._configs.appended(entry.index, decode_configuration_entry(entry))
                except DecodeError:
                    self._log_line(LEVEL_WARN, f"{ERR_BAD_CONFIGURATION_ENTRY}: {entry.index}")
        log.cache_put(
            [e for e in durable.tail if log.has_entry(e.index) and log.term_at(e.index) == e.term]
        )


_RPC_OF_KIND = {
    _Kind.APPEND: AppendEntriesRequest.rpc_type,
    _Kind.HEARTBEAT: AppendEntriesRequest.rpc_type,
    _Kind.VOTE: RequestVoteRequest.rpc_type,
    _Kind.SNAPSHOT: InstallSnapshotRequest.rpc_type,
    _Kind.TIMEOUT_NOW: TimeoutNowRequest.rpc_type,
}


def _well_formed(a: AppendEntriesRequest, entries: Sequence[LogEntry]) -> bool:
    """Entries follow PrevLogEntry one by one, with terms that never decrease and never pass
    the leader's term (what every correct leader sends)."""
    expected = a.prev_log_entry + 1
    term = a.prev_log_term
    for entry in entries:
        if entry.index != expected or entry.term < term or entry.term > a.term:
            return False
        expected += 1
        term = entry.term
    return True


def _clip(value: str) -> str:
    return value if len(value) <= MAX_ADDRESS_TEXT else value[:MAX_ADDRESS_TEXT] + "..."
