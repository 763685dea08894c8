"""A deterministic simulation of a cluster of sans-I/O Raft cores (agentrpc.raft.core).

One seeded ``random.Random`` drives everything: an in-memory network that delivers, drops,
delays (and so reorders) and duplicates messages and can be partitioned; a disk per node that
makes storage operations durable after a delay, in order, and on a crash keeps only what was
durable; crashes and restarts from that disk (the state machine rebuilt from the newest
snapshot); membership changes and leadership transfers; and clients that send KV operations to
the node they believe leads, with timeouts and retries. Time is a float advanced event by event
(the core takes ``now`` as an input, so no clock is needed, and a schedule of ten simulated
seconds runs in a fraction of a real one).

After every event the harness checks Raft's safety properties:

* election safety: at most one leader per term;
* log matching: an (index, term) pair names one entry, with one predecessor term, on every node;
* leader completeness: every committed entry is in the log of every leader of a later term;
* state machine safety: every node applies the same entry at each index, in order; snapshots at
  the same index are identical;

and at the end checks the clients' history for linearizability (:mod:`linearizability`).

Bugs can be injected to prove the checks catch them: ``lying_disk`` acknowledges writes before
they are durable (a follower that acks before persisting), ``local_reads`` answers reads from the
contacted node's state machine (stale reads, which only the linearizability check can see), and
``node_bug`` swaps in a core with a broken rule: ``commit_old_terms`` (a leader commits entries
of earlier terms by counting replicas: Raft's Figure 8).
"""

from __future__ import annotations

import heapq
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from linearizability import CAS, DELETE, GET, SET, CheckResult, Operation, check_history

from agentrpc.raft.actions import (
    Apply,
    DeleteEntries,
    LogLine,
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
from agentrpc.raft.configuration import Configuration, Server
from agentrpc.raft.core import NodeState, RaftNode, read_durable_state
from agentrpc.raft.errors import ERR_ABORTED_BY_RESTORE, ERR_LEADERSHIP_LOST, RaftError
from agentrpc.raft.fsm import apply_entry
from agentrpc.raft.kv_fsm import (
    KVStateMachine,
    cas_command,
    delete_command,
    get_command,
    set_command,
)
from agentrpc.raft.log import LogEntry
from agentrpc.raft.store_api import KEY_CURRENT_TERM, KEY_LAST_VOTE_CAND, KEY_LAST_VOTE_TERM
from agentrpc.raft.timing import RaftConfig
from agentrpc.raft.wire import InstallSnapshotRequest, Request, Response

# ============================================================================ the disk


class SimDisk:
    """A node's durable storage (log, stable store, snapshots): what survives a crash. It
    implements the LogStore and StableStore protocols, so the core's own
    ``read_durable_state`` reads it at restart."""

    def __init__(self) -> None:
        self.log: dict[int, LogEntry] = {}
        self.stable: dict[bytes, bytes] = {}
        self.snapshots: list[tuple[SnapshotMeta, bytes]] = []
        """Newest last; the two newest are kept, as the file store does."""

    # LogStore
    def first_index(self) -> int:
        return min(self.log) if self.log else 0

    def last_index(self) -> int:
        return max(self.log) if self.log else 0

    def get_entry(self, index: int) -> LogEntry | None:
        return self.log.get(index)

    def get_range(self, first: int, last: int) -> list[LogEntry]:
        return [self.log[i] for i in range(first, last + 1) if i in self.log]

    def store_entries(self, entries: Sequence[LogEntry]) -> None:
        for entry in entries:
            self.log[entry.index] = entry

    def delete_range(self, first: int, last: int) -> None:
        if last - first > len(self.log):
            for index in [i for i in self.log if first <= i <= last]:
                del self.log[index]
        else:
            for index in range(first, last + 1):
                self.log.pop(index, None)

    # StableStore
    def set_bytes(self, key: bytes, value: bytes) -> None:
        self.stable[key] = value

    def get_bytes(self, key: bytes) -> bytes | None:
        return self.stable.get(key)

    def set_uint64(self, key: bytes, value: int) -> None:
        self.stable[key] = value.to_bytes(8, "big")

    def get_uint64(self, key: bytes) -> int | None:
        value = self.stable.get(key)
        return None if value is None else int.from_bytes(value, "big")

    # snapshots
    def add_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        self.snapshots.append((meta, data))
        self.snapshots.sort(key=lambda item: (item[0].index, item[0].term))
        del self.snapshots[:-2]

    def snapshot(self, snapshot_id: str) -> tuple[SnapshotMeta, bytes] | None:
        for meta, data in self.snapshots:
            if meta.id == snapshot_id:
                return meta, data
        return None

    def newest_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        return self.snapshots[-1] if self.snapshots else None

    def apply(self, op: StoreEntries | DeleteEntries | SetTerm | SetVote) -> None:
        if isinstance(op, StoreEntries):
            self.store_entries(op.entries)
        elif isinstance(op, DeleteEntries):
            self.delete_range(op.first, op.last)
        elif isinstance(op, SetTerm):
            self.set_uint64(KEY_CURRENT_TERM, op.term)
        else:
            self.set_uint64(KEY_LAST_VOTE_TERM, op.term)
            self.set_bytes(KEY_LAST_VOTE_CAND, op.candidate)


# ============================================================================ parameters


@dataclass
class SimParams:
    nodes: int = 3
    voters: int | None = None
    """Initial voters (the first ones); the rest join through membership changes."""
    duration: float = 10.0
    settle: float = 3.0
    """Fault-free time at the end (everything healed and restarted) so operations finish."""
    drop: float = 0.01
    duplicate: float = 0.01
    latency: tuple[float, float] = (0.0005, 0.01)
    slow: float = 0.05
    """Share of messages that take a slow path (reordering them)."""
    slow_latency: tuple[float, float] = (0.02, 0.4)
    disk_latency: tuple[float, float] = (0.0002, 0.004)
    crashes: float = 0.15
    """Crash rate per simulated second, cluster-wide."""
    downtime: tuple[float, float] = (0.1, 2.5)
    power_failures: float = 0.0
    """Rate of cluster-wide crashes (every node at once, as in a power cut)."""
    partitions: float = 0.1
    heal_after: tuple[float, float] = (0.3, 3.0)
    membership: bool = False
    transfers: float = 0.0
    clients: int = 3
    keys: int = 2
    think: tuple[float, float] = (0.0, 0.1)
    client_timeout: float = 2.5
    snapshot_threshold: int = 40
    trailing_logs: int = 10
    snapshot_interval: float = 1.0
    cache_bytes: int = 1 << 20
    max_append_entries: int = 16
    protocol_version: int = 3
    """2: server IDs are the addresses (as Consul 0.7's raft_protocol 2)."""
    lying_disk: bool = False
    """Bug: writes are acknowledged (persisted) before they are durable."""
    local_reads: bool = False
    """Bug: a get is answered from the contacted node's state machine, without the log."""
    node_bug: str = ""
    """Bug: a core subclass of :data:`BUGGY_NODES`."""

    @classmethod
    def random(cls, rng: random.Random) -> SimParams:
        nodes = rng.choice((3, 3, 5))
        membership = nodes == 5 and rng.random() < 0.5
        return cls(
            nodes=nodes,
            voters=3 if membership else None,
            duration=rng.uniform(6.0, 12.0),
            drop=rng.choice((0.0, 0.01, 0.05, 0.15)),
            duplicate=rng.choice((0.0, 0.01, 0.05)),
            slow=rng.choice((0.0, 0.05, 0.2)),
            disk_latency=rng.choice(((0.0001, 0.001), (0.0002, 0.004), (0.002, 0.05))),
            crashes=rng.choice((0.0, 0.1, 0.3, 0.6)),
            power_failures=rng.choice((0.0, 0.0, 0.0, 0.1)),
            partitions=rng.choice((0.0, 0.1, 0.3)),
            membership=membership,
            transfers=rng.choice((0.0, 0.0, 0.2)),
            clients=rng.choice((2, 3, 5)),
            keys=rng.choice((1, 2, 3)),
            snapshot_threshold=rng.choice((8, 20, 60, 10_000)),
            trailing_logs=rng.choice((0, 2, 10)),
            snapshot_interval=rng.choice((0.3, 1.0, 3.0)),
            cache_bytes=rng.choice((256, 4096, 1 << 20)),
            max_append_entries=rng.choice((1, 4, 64)),
            protocol_version=rng.choice((3, 3, 2)),
        )


# ============================================================================ bug injection


class OldTermCommitNode(RaftNode):
    """A leader that commits by counting replicas, whatever the entry's term (the bug Raft's
    commitment rule exists to prevent: Figure 8)."""

    def _may_commit(self, index: int) -> bool:
        return True


BUGGY_NODES: dict[str, type[RaftNode]] = {
    "commit_old_terms": OldTermCommitNode,
}


# ============================================================================ the cluster


@dataclass
class Message:
    src: str
    dst: str
    src_gen: int
    dst_gen: int | None
    request_id: int
    request: Request | None = None
    response: Response | None = None
    error: str = ""
    snapshot: bytes | None = None


@dataclass
class PendingOp:
    client: int
    node: str
    gen: int
    proposal: int
    kind: str
    key: str
    args: tuple[str | None, ...]
    invoke: float
    deadline: float


@dataclass
class SimNode:
    id: str
    address: str
    disk: SimDisk = field(default_factory=SimDisk)
    core: RaftNode | None = None
    fsm: KVStateMachine = field(default_factory=KVStateMachine)
    applied: int = 0
    gen: int = 0
    pending_ops: deque[Any] = field(default_factory=deque)
    disk_busy: bool = False
    timer_token: int = 0
    timer_at: float = float("inf")
    seen_commit: int = 0
    led_term: int = 0
    snapshots_taken: int = 0


@dataclass
class SimResult:
    seed: int
    params: SimParams
    violations: list[str]
    operations: int = 0
    completed: int = 0
    indeterminate: int = 0
    failed: int = 0
    committed: int = 0
    events: int = 0
    sim_time: float = 0.0
    wall: float = 0.0
    faults: dict[str, int] = field(default_factory=dict)
    leaders: int = 0
    linearizability: CheckResult | None = None

    @property
    def ok(self) -> bool:
        return not self.violations


class Violation(Exception):
    pass


class Simulation:
    def __init__(self, seed: int, params: SimParams | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.params = params if params is not None else SimParams.random(self.rng)
        p = self.params
        self.now = 0.0
        self._events: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self.nodes: dict[str, SimNode] = {}
        for i in range(p.nodes):
            node_id = f"n{i + 1}"
            self.nodes[node_id] = SimNode(node_id, f"127.0.0.1:{8300 + i + 1}")
        self.by_address = {n.address: n for n in self.nodes.values()}
        self.by_raft_id = {self.raft_id(n): n for n in self.nodes.values()}
        self.blocked: set[tuple[str, str]] = set()
        self.violations: list[str] = []
        self.faults: dict[str, int] = {}
        # Safety bookkeeping.
        self.leaders_by_term: dict[int, str] = {}
        self.entries: dict[tuple[int, int], tuple[int | None, int, bytes]] = {}
        self.committed: dict[int, tuple[int, int, bytes, int]] = {}
        self.applied_global: dict[int, tuple[int, int, bytes]] = {}
        self.snapshot_data: dict[tuple[int, int], bytes] = {}
        # Clients.
        self.history: list[Operation] = []
        self.pending: dict[tuple[str, int, int], PendingOp] = {}
        self.client_pending: dict[int, PendingOp | None] = {}
        self.client_target: dict[int, str] = {}
        self.failed_ops = 0
        self.op_counter = 0
        self.events = 0
        self._started = time.perf_counter()

    # ------------------------------------------------------------------ scheduling

    def _at(self, when: float, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, kind, payload))

    def _count(self, fault: str) -> None:
        self.faults[fault] = self.faults.get(fault, 0) + 1

    def raft_id(self, node: SimNode) -> str:
        """The node's Raft server ID: its address under protocol version 2."""
        return node.address if self.params.protocol_version < 3 else node.id

    def config_for(self, node: SimNode) -> RaftConfig:
        p = self.params
        return RaftConfig(
            local_id=self.raft_id(node),
            protocol_version=p.protocol_version,
            local_address=node.address,
            heartbeat_timeout=1.0,
            election_timeout=1.0,
            leader_lease_timeout=0.5,
            commit_timeout=0.05,
            rpc_timeout=1.5,
            snapshot_threshold=p.snapshot_threshold,
            trailing_logs=p.trailing_logs,
            snapshot_interval=p.snapshot_interval,
            entry_cache_bytes=p.cache_bytes,
            max_append_entries=p.max_append_entries,
            shutdown_on_remove=False,
        )

    def _new_core(self, node: SimNode) -> RaftNode:
        newest = node.disk.newest_snapshot()
        meta = newest[0] if newest else None
        durable = read_durable_state(
            node.disk, node.disk, meta, cache_bytes=self.params.cache_bytes
        )
        cls = BUGGY_NODES[self.params.node_bug] if self.params.node_bug else RaftNode
        core = cls(
            self.config_for(node),
            now=self.now,
            rng=random.Random(self.rng.getrandbits(64)),
            durable=durable,
        )
        node.fsm = KVStateMachine()
        node.applied = 0
        if newest is not None:
            node.fsm.restore(_Reader(newest[1]))
            node.applied = newest[0].index
        node.seen_commit = core.commit_index
        return core

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        """Boot the cluster (the initial voters bootstrapped with the same configuration),
        start the clients and plan the schedule's faults."""
        self._started = time.perf_counter()
        p = self.params
        voters = self.params.voters or p.nodes
        initial = Configuration(
            tuple(Server(self.raft_id(n), n.address) for n in list(self.nodes.values())[:voters])
        )
        for i, node in enumerate(self.nodes.values()):
            node.core = self._new_core(node)
            if i < voters:
                node.core.bootstrap(self.now, initial)
            self._drain(node)
        for client in range(p.clients):
            self.client_pending[client] = None
            self.client_target[client] = self.rng.choice(list(self.nodes))
            self._at(self.rng.uniform(0.5, 1.5), "client", client)
        self._plan_faults()

    def step(self, until: float) -> bool:
        """Process the next event if it is due by ``until``; False when there is none."""
        if not self._events or self._events[0][0] > until or self.violations:
            return False
        when, _, kind, payload = heapq.heappop(self._events)
        self.now = when
        self.events += 1
        try:
            self._handle(kind, payload)
        except Violation:
            return False
        return True

    def run_until(self, done: Any, timeout: float) -> bool:
        """Step until ``done()`` holds (True) or ``timeout`` simulated seconds pass."""
        until = self.now + timeout
        while not done():
            if not self.step(until):
                return bool(done())
        return True

    def finish(self) -> SimResult:
        """End the run: open operations are indeterminate, the history is checked."""
        p = self.params
        for op in list(self.pending.values()):
            self._finish(op, None, indeterminate=True)
        result = SimResult(
            seed=self.seed,
            params=p,
            violations=list(self.violations),
            operations=len(self.history),
            completed=sum(1 for op in self.history if not op.indeterminate),
            indeterminate=sum(1 for op in self.history if op.indeterminate),
            failed=self.failed_ops,
            committed=len(self.committed),
            events=self.events,
            sim_time=self.now,
            faults=dict(self.faults),
            leaders=len(self.leaders_by_term),
        )
        if not self.violations:
            check = check_history(self.history)
            result.linearizability = check
            if not check.ok:
                result.violations.append(f"history of key {check.key!r} is not linearizable")
        result.wall = time.perf_counter() - self._started
        return result

    def run(self) -> SimResult:
        self.start()
        end = self.params.duration + self.params.settle
        while self.step(end):
            pass
        return self.finish()

    # ------------------------------------------------------------------ scripted control

    def leader(self) -> SimNode | None:
        """The node that leads the highest term, if any."""
        return self._leader()

    def isolate(self, *groups: Sequence[str]) -> None:
        """Cut every link between different groups (nodes in no group keep their links)."""
        for i, left in enumerate(groups):
            for right in groups[i + 1 :]:
                for a in left:
                    for b in right:
                        self.blocked.add((a, b))
                        self.blocked.add((b, a))

    def heal(self) -> None:
        self.blocked.clear()

    def crash(self, node_id: str) -> None:
        self._crash(self.nodes[node_id])

    def restart(self, node_id: str) -> None:
        self._restart(self.nodes[node_id])

    def propose(self, node_id: str, command: bytes) -> int:
        node = self.nodes[node_id]
        assert node.core is not None
        proposal = node.core.propose(self.now, command)
        self._drain(node)
        return proposal

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "deliver":
            self._deliver(payload)
        elif kind == "timer":
            node_id, token = payload
            node = self.nodes[node_id]
            if node.core is not None and token == node.timer_token:
                node.timer_at = float("inf")
                node.core.tick(self.now)
                self._drain(node)
        elif kind == "disk":
            node_id, gen = payload
            node = self.nodes[node_id]
            if node.core is not None and gen == node.gen:
                self._disk_done(node)
        elif kind in ("snapshot_stored", "snapshot_written"):
            node = self.nodes[payload[0]]
            core = node.core
            if core is None or node.gen != payload[1]:
                return  # crashed before the file was durable: it never existed
            if kind == "snapshot_stored":
                _, _, token, stored, data = payload
                node.disk.add_snapshot(stored, data)
                core.snapshot_received(self.now, token, stored.id)
            else:
                _, _, meta, data = payload
                node.disk.add_snapshot(meta, data)
                core.snapshot_taken(self.now, meta)
            self._drain(node)
        elif kind == "client":
            self._client_step(payload)
        elif kind == "client_deadline":
            pending: PendingOp = payload
            if self.pending.get((pending.node, pending.gen, pending.proposal)) is pending:
                self._finish(pending, None, indeterminate=True)
        elif kind == "crash":
            self._crash(self.nodes[payload])
        elif kind == "power":
            self._count("power_failure")
            for node in self.nodes.values():
                self._crash(node)
                self._at(self.now + self.rng.uniform(*self.params.downtime), "restart", node.id)
        elif kind == "restart":
            self._restart(self.nodes[payload])
        elif kind == "partition":
            self._partition()
        elif kind == "heal":
            self.blocked.clear()
        elif kind == "membership":
            self._membership_step()
        elif kind == "transfer":
            self._transfer_step()
        elif kind == "settle":
            self.blocked.clear()
            for node in self.nodes.values():
                if node.core is None:
                    self._restart(node)

    # ------------------------------------------------------------------ faults

    def _plan_faults(self) -> None:
        p = self.params
        rng = self.rng

        def times(rate: float) -> list[float]:
            out: list[float] = []
            t = 0.0
            while rate > 0:
                t += rng.expovariate(rate)
                if t >= p.duration:
                    return out
                out.append(t)
            return out

        for t in times(p.crashes):
            node_id = rng.choice(list(self.nodes))
            self._at(t, "crash", node_id)
            self._at(t + rng.uniform(*p.downtime), "restart", node_id)
        for t in times(p.power_failures):
            self._at(t, "power", None)
        for t in times(p.partitions):
            self._at(t, "partition", None)
            self._at(t + rng.uniform(*p.heal_after), "heal", None)
        if p.membership:
            for t in times(0.5):
                self._at(t, "membership", None)
        for t in times(p.transfers):
            self._at(t, "transfer", None)
        self._at(p.duration, "settle", None)

    def _crash(self, node: SimNode) -> None:
        if node.core is None:
            return
        self._count("crash")
        node.core = None
        node.gen += 1
        node.pending_ops.clear()
        node.disk_busy = False
        node.timer_token += 1
        node.timer_at = float("inf")
        for op in list(self.pending.values()):
            if op.node == node.id:
                self._finish(op, None, indeterminate=True)

    def _restart(self, node: SimNode) -> None:
        if node.core is not None:
            return
        self._count("restart")
        node.core = self._new_core(node)
        self._drain(node)

    def _partition(self) -> None:
        ids = list(self.nodes)
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) - 1)
        left, right = ids[:cut], ids[cut:]
        self._count("partition")
        for a in left:
            for b in right:
                self.blocked.add((a, b))
                self.blocked.add((b, a))

    def _leader(self) -> SimNode | None:
        best = None
        for node in self.nodes.values():
            core = node.core
            if core is not None and core.is_leader and (best is None or core.term > best.core.term):  # type: ignore[union-attr]
                best = node
        return best

    def _membership_step(self) -> None:
        leader = self._leader()
        if leader is None or leader.core is None:
            return
        core = leader.core
        config = core.configuration
        voters = {s.id for s in config.voters()}
        outside = [n for n in self.by_raft_id if n not in voters]
        try:
            if outside and (len(voters) < 3 or self.rng.random() < 0.5):
                node = self.by_raft_id[self.rng.choice(outside)]
                core.add_voter(self.now, self.raft_id(node), node.address)
                self._count("add_voter")
            elif len(voters) > 3 or (len(voters) == 3 and not outside and self.rng.random() < 0.3):
                victim = self.rng.choice(sorted(voters))
                core.remove_server(self.now, victim)
                self._count("remove_server")
        except RaftError:
            return
        self._drain(leader)

    def _transfer_step(self) -> None:
        leader = self._leader()
        if leader is None or leader.core is None:
            return
        try:
            leader.core.transfer_leadership(self.now)
        except RaftError:
            return
        self._count("transfer")
        self._drain(leader)

    # ------------------------------------------------------------------ network

    def _send(self, message: Message) -> None:
        p = self.params
        rng = self.rng
        if rng.random() < p.drop:
            self._count("drop")
            if message.request is not None and rng.random() < 0.5:
                # The sender notices (connection reset) instead of waiting for the timeout.
                reply = Message(
                    message.dst,
                    message.src,
                    message.dst_gen or 0,
                    message.src_gen,
                    message.request_id,
                    error="connection reset",
                )
                self._at(self.now + rng.uniform(*p.latency), "deliver", reply)
            return
        copies = 2 if rng.random() < p.duplicate else 1
        if copies == 2:
            self._count("duplicate")
        for _ in range(copies):
            if rng.random() < p.slow:
                delay = rng.uniform(*p.slow_latency)
            else:
                delay = rng.uniform(*p.latency)
            self._at(self.now + delay, "deliver", message)

    def _deliver(self, message: Message) -> None:
        if (message.src, message.dst) in self.blocked:
            if message.request is not None:
                self._count("partitioned")
            return
        node = self.nodes[message.dst]
        core = node.core
        if core is None:
            return
        if message.request is not None:
            token = (message.src, message.src_gen, message.request_id)
            core.handle_request(self.now, token, message.request)
            if isinstance(message.request, InstallSnapshotRequest):
                self._drain(node, snapshot_bytes={token: message.snapshot or b""})
            else:
                self._drain(node)
            return
        if message.dst_gen != node.gen:
            return
        if message.error or message.response is None:
            core.request_failed(self.now, message.request_id, message.error or "nil response")
        else:
            core.handle_response(self.now, message.request_id, message.response)
        self._drain(node)

    # ------------------------------------------------------------------ disk

    def _disk_done(self, node: SimNode) -> None:
        core = node.core
        assert core is not None
        last_seq = 0
        reads: list[tuple[int, list[LogEntry]]] = []
        while node.pending_ops:
            op = node.pending_ops.popleft()
            if isinstance(op, ReadEntries):
                reads.append((op.seq, node.disk.get_range(op.first, op.last)))
            else:
                node.disk.apply(op)
            last_seq = op.seq
        node.disk_busy = False
        if not self.params.lying_disk:
            core.persisted(self.now, last_seq)
        for seq, entries in reads:
            core.entries_read(self.now, seq, entries)
        self._drain(node)

    # ------------------------------------------------------------------ outputs

    def _drain(self, node: SimNode, snapshot_bytes: dict[Any, bytes] | None = None) -> None:
        core = node.core
        rounds = 0
        while core is not None:
            outputs = core.take_outputs()
            if not outputs:
                break
            rounds += 1
            if rounds > 1000:
                self._violate(f"{node.id}: outputs never settle")
            for output in outputs:
                self._output(node, core, output, snapshot_bytes)
                if node.core is not core:
                    return
        if node.core is None:
            return
        self._check_node(node)
        deadline = node.core.next_deadline()
        if deadline is not None and deadline < node.timer_at:
            node.timer_token += 1
            node.timer_at = max(deadline, self.now)
            self._at(node.timer_at, "timer", (node.id, node.timer_token))

    def _output(
        self,
        node: SimNode,
        core: RaftNode,
        output: Any,
        snapshot_bytes: dict[Any, bytes] | None,
    ) -> None:
        if isinstance(output, (StoreEntries, DeleteEntries, SetTerm, SetVote, ReadEntries)):
            if isinstance(output, StoreEntries):
                self._check_entries(node, core, output.entries)
            elif isinstance(output, ReadEntries):
                self._count("read")
            node.pending_ops.append(output)
            if self.params.lying_disk and not isinstance(output, ReadEntries):
                core.persisted(self.now, output.seq)
            if not node.disk_busy:
                node.disk_busy = True
                self._at(
                    self.now + self.rng.uniform(*self.params.disk_latency),
                    "disk",
                    (node.id, node.gen),
                )
        elif isinstance(output, SendRequest):
            dst = self.by_address[output.address]
            self._send(
                Message(node.id, dst.id, node.gen, None, output.request_id, request=output.request)
            )
        elif isinstance(output, SendSnapshot):
            found = node.disk.snapshot(output.snapshot_id)
            if found is None:
                core.request_failed(self.now, output.request_id, "snapshot not found")
                return
            dst = self.by_address[output.address]
            self._send(
                Message(
                    node.id,
                    dst.id,
                    node.gen,
                    None,
                    output.request_id,
                    request=output.request,
                    snapshot=found[1],
                )
            )
        elif isinstance(output, SendResponse):
            token: tuple[str, int, int] = output.token  # type: ignore[assignment]
            src, src_gen, request_id = token
            self._send(
                Message(
                    node.id,
                    src,
                    node.gen,
                    src_gen,
                    request_id,
                    response=output.response,
                    error=output.error,
                )
            )
        elif isinstance(output, ReceiveSnapshot):
            data = (snapshot_bytes or {}).get(output.token)
            if data is None or len(data) != output.meta.size:
                core.snapshot_failed(self.now, output.token, "short read")
                return
            meta = output.meta
            snapshot_id = f"{node.id}-recv-{meta.index}-{meta.term}-{self.events}"
            stored = SnapshotMeta(
                snapshot_id,
                meta.index,
                meta.term,
                meta.configuration,
                meta.configuration_index,
                meta.size,
                meta.version,
            )
            # Writing the file takes a while; the node goes on meanwhile.
            delay = self.rng.uniform(*self.params.disk_latency) * self.rng.uniform(1, 5)
            self._at(
                self.now + delay, "snapshot_stored", (node.id, node.gen, output.token, stored, data)
            )
        elif isinstance(output, Apply):
            self._apply(node, output)
        elif isinstance(output, RestoreSnapshot):
            found = node.disk.snapshot(output.meta.id)
            if found is None:
                self._violate(f"{node.id}: restore of unknown snapshot {output.meta.id}")
            assert found is not None
            if output.meta.index <= node.applied:
                self._violate(f"{node.id}: restore to {output.meta.index} after {node.applied}")
            self._check_snapshot(output.meta, found[1])
            self._count("install")
            node.fsm.restore(_Reader(found[1]))
            node.applied = output.meta.index
        elif isinstance(output, TakeSnapshot):
            if output.index != node.applied:
                self._violate(f"{node.id}: snapshot at {output.index}, applied {node.applied}")
            data = node.fsm.snapshot().data
            node.snapshots_taken += 1
            meta = SnapshotMeta(
                f"{node.id}-{output.index}-{node.snapshots_taken}",
                output.index,
                output.term,
                output.configuration,
                output.configuration_index,
                len(data),
            )
            self._check_snapshot(meta, data)
            self._count("snapshot")
            # Captured now, persisted later (the node goes on applying meanwhile).
            delay = self.rng.uniform(*self.params.disk_latency) * self.rng.uniform(1, 5)
            self._at(self.now + delay, "snapshot_written", (node.id, node.gen, meta, data))
        elif isinstance(output, ProposalFailed):
            op = self.pending.get((node.id, node.gen, output.proposal))
            if op is not None:
                # Lost leadership or overtaken by a snapshot: it may have been applied.
                maybe = output.error in (ERR_LEADERSHIP_LOST, ERR_ABORTED_BY_RESTORE)
                self._finish(op, None, indeterminate=maybe)
        elif isinstance(output, (TransferDone, VerifyDone, StateChanged, LogLine)):
            pass
        else:
            raise AssertionError(f"unexpected output {output!r}")

    def _apply(self, node: SimNode, output: Apply) -> None:
        for entry, proposal in zip(output.entries, output.proposals, strict=True):
            if entry.index != node.applied + 1:
                self._violate(f"{node.id}: applied {entry.index} after {node.applied}")
            known = self.applied_global.setdefault(
                entry.index, (entry.term, entry.type, entry.data)
            )
            if known != (entry.term, entry.type, entry.data):
                self._violate(f"state machine safety: index {entry.index} differs on {node.id}")
            result = apply_entry(node.fsm, entry)
            node.applied = entry.index
            if proposal is not None:
                op = self.pending.get((node.id, node.gen, proposal))
                if op is not None:
                    self._finish(op, result)

    # ------------------------------------------------------------------ safety checks

    def _violate(self, message: str) -> None:
        self.violations.append(f"t={self.now:.4f}: {message}")
        raise Violation(message)

    def _check_entries(self, node: SimNode, core: RaftNode, entries: Sequence[LogEntry]) -> None:
        for entry in entries:
            prev_term = core.term_at(entry.index - 1) if entry.index > 1 else 0
            value = (prev_term, entry.type, entry.data)
            known = self.entries.setdefault((entry.index, entry.term), value)
            if known != value and not (known[0] is None or prev_term is None):
                self._violate(f"log matching: ({entry.index}, {entry.term}) differs on {node.id}")
            if known[1:] != value[1:]:
                self._violate(
                    f"log matching: ({entry.index}, {entry.term}) content differs on {node.id}"
                )

    def _check_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        known = self.snapshot_data.setdefault((meta.index, meta.term), data)
        if known != data:
            self._violate(f"snapshots at index {meta.index} differ")

    def _check_node(self, node: SimNode) -> None:
        core = node.core
        assert core is not None
        if core.state == NodeState.LEADER:
            owner = self.leaders_by_term.setdefault(core.term, node.id)
            if owner != node.id:
                self._violate(f"election safety: {owner} and {node.id} lead term {core.term}")
            if node.led_term != core.term:
                node.led_term = core.term
                self._check_completeness(node, core, self.committed)
        if core.commit_index > node.seen_commit:
            new: dict[int, tuple[int, int, bytes, int]] = {}
            for index in range(node.seen_commit + 1, core.commit_index + 1):
                term = core.term_at(index)
                if term is None:
                    continue  # inside an installed snapshot
                known = self.entries.get((index, term))
                if known is None:
                    self._violate(f"{node.id} committed an entry never written: {index}")
                assert known is not None
                value = (term, known[1], known[2], core.term)
                old = self.committed.get(index)
                if old is None:
                    self.committed[index] = value
                    new[index] = value
                elif old[:3] != value[:3]:
                    self._violate(f"commit safety: index {index} committed twice differently")
            node.seen_commit = core.commit_index
            if new:
                for other in self.nodes.values():
                    oc = other.core
                    if oc is not None and oc.is_leader:
                        self._check_completeness(other, oc, new)

    def _check_completeness(
        self, node: SimNode, core: RaftNode, committed: dict[int, tuple[int, int, bytes, int]]
    ) -> None:
        snapshot_index = core.snapshot.index if core.snapshot else 0
        for index, (term, _type, _data, commit_term) in committed.items():
            if commit_term >= core.term or index <= snapshot_index:
                continue
            if core.term_at(index) != term:
                self._violate(
                    f"leader completeness: {node.id} leads term {core.term} without "
                    f"committed entry {index} (term {term})"
                )

    # ------------------------------------------------------------------ clients

    def _client_step(self, client: int) -> None:
        p = self.params
        rng = self.rng
        if self.client_pending.get(client) is not None:
            return
        if self.now >= p.duration + p.settle - p.client_timeout:
            return
        key = f"k{rng.randrange(p.keys)}"
        self.op_counter += 1
        value = f"v{self.op_counter}"
        roll = rng.random()
        args: tuple[str | None, ...]
        if roll < 0.4:
            kind, args, command = GET, (), get_command(key)
        elif roll < 0.7:
            kind, args, command = SET, (value,), set_command(key, value)
        elif roll < 0.9:
            expected = rng.choice([None, *self._recent_values(key)])
            kind, args, command = CAS, (expected, value), cas_command(key, expected, value)
        else:
            kind, args, command = DELETE, (), delete_command(key)
        target = self.nodes[self.client_target[client]]
        core = target.core
        if core is None:
            self.failed_ops += 1
            self.client_target[client] = rng.choice(list(self.nodes))
            self._at(self.now + rng.uniform(0.01, 0.1), "client", client)
            return
        if kind == GET and p.local_reads:
            # The injected bug: answer from whatever this node has applied.
            self.history.append(
                Operation(client, GET, key, (), self.now, self.now, target.fsm.data.get(key))
            )
            self._at(self.now + rng.uniform(*p.think), "client", client)
            return
        try:
            proposal = core.propose(self.now, command)
        except RaftError:
            self.failed_ops += 1
            known = self.by_raft_id.get(core.leader_id)
            self.client_target[client] = known.id if known else rng.choice(list(self.nodes))
            self._at(self.now + rng.uniform(0.01, 0.1), "client", client)
            return
        pending = PendingOp(
            client,
            target.id,
            target.gen,
            proposal,
            kind,
            key,
            args,
            self.now,
            self.now + p.client_timeout,
        )
        self.pending[(target.id, target.gen, proposal)] = pending
        self.client_pending[client] = pending
        self._at(pending.deadline, "client_deadline", pending)
        self._drain(target)

    def _recent_values(self, key: str) -> list[str]:
        values = [
            op.args[-1] for op in self.history[-20:] if op.key == key and op.kind in (SET, CAS)
        ]
        return [v for v in values if v is not None][-3:]

    def _finish(self, op: PendingOp, result: object, *, indeterminate: bool = False) -> None:
        key = (op.node, op.gen, op.proposal)
        if self.pending.pop(key, None) is None:
            return
        if self.client_pending.get(op.client) is op:
            self.client_pending[op.client] = None
            self._at(self.now + self.rng.uniform(*self.params.think), "client", op.client)
        if result is not None and not indeterminate and op.kind in (SET, DELETE):
            self._violate(f"unexpected result {result!r} for {op.kind}")
        self.history.append(
            Operation(
                client=op.client,
                kind=op.kind,
                key=op.key,
                args=op.args,
                invoke=op.invoke,
                complete=None if indeterminate else self.now,
                result=None if indeterminate else result,
            )
        )


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, size: int = -1) -> bytes:
        data, self._data = self._data, b""
        return data


def run_schedule(seed: int, params: SimParams | None = None) -> SimResult:
    return Simulation(seed, params).run()
