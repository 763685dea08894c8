"""Proposals that arrive together share one drain of the engine (agentrpc.raft.engine).

Three engines over in-memory streams on the autojump clock. The followers' inbound streams are
tapped with a :class:`~agentrpc.raft.wire.RequestDecoder` that counts the AppendEntries they
receive, and the stores count their ``store_entries`` calls, so the tests see what goes out:
concurrent applies must share AppendEntries and log writes (far fewer than one per entry), and
still each get its own result, in the order the calls were made, with the engine's
cancellation and leadership-loss semantics intact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
import trio
import trio.testing

from agentrpc.raft.configuration import Configuration, Server
from agentrpc.raft.engine import RaftEngine
from agentrpc.raft.errors import RaftError
from agentrpc.raft.kv_fsm import KVStateMachine, get_command, set_command
from agentrpc.raft.log import LogEntry, LogType
from agentrpc.raft.memory_store import MemoryStore
from agentrpc.raft.snapshots import FileSnapshotStore
from agentrpc.raft.store_thread import InlineRunner
from agentrpc.raft.timing import RaftConfig
from agentrpc.raft.transport import RaftTransport
from agentrpc.raft.wire import AppendEntriesRequest, RequestDecoder, RequestReceived

BOUND = 60.0
"""Simulated seconds any wait here may take (the autojump clock makes them fast)."""


@pytest.fixture
def jump_clock() -> trio.testing.MockClock:
    # The memory stores run inline (InlineRunner), so the clock may jump whenever every task
    # waits: the schedules are deterministic and simulated time is exact.
    return trio.testing.MockClock(autojump_threshold=0)


@dataclass
class Tally:
    """AppendEntries that carried entries, and the command entries in them."""

    requests: int = 0
    commands: int = 0
    largest: int = 0

    def reset(self) -> None:
        self.requests = self.commands = self.largest = 0


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.appends = 0
        self.appended = 0

    def store_entries(self, entries: Sequence[LogEntry]) -> None:
        super().store_entries(entries)
        if entries:
            self.appends += 1
            self.appended += len(entries)


class RecordingFSM(KVStateMachine):
    """The KV machine, remembering the commands in the order they were applied."""

    __slots__ = ("order",)

    def __init__(self) -> None:
        super().__init__()
        self.order: list[bytes] = []

    def apply(self, entry: LogEntry) -> object:
        self.order.append(entry.data)
        return super().apply(entry)


class TappedStream(trio.abc.Stream):
    """An inbound stream whose bytes are also decoded, to count the requests on it."""

    def __init__(self, inner: trio.abc.Stream, tally: Tally) -> None:
        self.inner = inner
        self.tally = tally
        self.decoder = RequestDecoder()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.decoder.feed(data)
        while isinstance(event := self.decoder.next_event(), RequestReceived):
            request = event.request
            if isinstance(request, AppendEntriesRequest) and request.entries:
                commands = sum(1 for e in request.entries if e.type == LogType.COMMAND)
                self.tally.requests += 1
                self.tally.commands += commands
                self.tally.largest = max(self.tally.largest, len(request.entries))
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        await self.inner.aclose()


class Node:
    def __init__(self, cluster: Cluster, node_id: str, base: Path, **overrides: Any) -> None:
        self.cluster = cluster
        self.id = node_id
        self.address = f"{node_id}:8300"
        self.store = CountingStore()
        self.fsm = RecordingFSM()
        self.tally = Tally()
        self.scope = trio.CancelScope()
        self.nursery: trio.Nursery | None = None
        self.running = False
        values: dict[str, Any] = dict(
            local_id=node_id,
            local_address=self.address,
            heartbeat_timeout=1.0,
            election_timeout=1.0,
            leader_lease_timeout=0.5,
            commit_timeout=0.05,
            shutdown_on_remove=False,
        )
        values.update(overrides)
        self.engine = RaftEngine(
            RaftConfig(**values),
            logs=self.store,
            stable=self.store,
            snapshots=FileSnapshotStore(base / node_id),
            fsm=self.fsm,
            transport=RaftTransport(cluster.dial),
            runner=InlineRunner(),
        )

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            try:
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    await nursery.start(self.engine.run)
                    self.running = True
                    task_status.started()
            finally:
                self.running = False
                self.nursery = None

    async def serve(self, stream: trio.abc.Stream) -> None:
        try:
            assert await stream.receive_some(1) == b"\x01"  # the router's type byte
            await self.engine.handle_connection(TappedStream(stream, self.tally), "memory")
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


class Cluster:
    def __init__(self, base: Path, size: int, **overrides: Any) -> None:
        self.nodes = [Node(self, f"n{i}", base, **overrides) for i in range(1, size + 1)]
        self.by_address = {node.address: node for node in self.nodes}

    async def dial(self, address: str) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        node = self.by_address.get(address)
        if node is None or not node.running or node.nursery is None:
            raise OSError(f"connection refused: {address}")
        client, server = trio.testing.memory_stream_pair()
        node.nursery.start_soon(node.serve, server)
        return client

    def leader(self) -> Node | None:
        found = [n for n in self.nodes if n.running and n.engine.leader_ready]
        return found[0] if len(found) == 1 else None

    def followers(self, leader: Node) -> list[Node]:
        return [n for n in self.nodes if n is not leader]


async def poll(predicate: Callable[[], bool], what: str) -> None:
    """Wait (bounded, in simulated time) until ``predicate`` holds."""
    with trio.move_on_after(BOUND):
        while not predicate():  # noqa: ASYNC110 - virtual time; FSMs and roles have no event
            await trio.sleep(0.001)
        return
    raise AssertionError(f"no {what} within {BOUND} s")


@asynccontextmanager
async def cluster_of(base: Path, size: int = 3, **overrides: Any) -> AsyncIterator[Cluster]:
    cluster = Cluster(base, size, **overrides)
    configuration = Configuration(tuple(Server(n.id, n.address) for n in cluster.nodes))
    async with trio.open_nursery() as nursery:
        for node in cluster.nodes:
            await nursery.start(node.run)
        for node in cluster.nodes:
            node.engine.bootstrap(configuration)
        await poll(lambda: cluster.leader() is not None, "a leader")
        yield cluster
        nursery.cancel_scope.cancel()


def the_leader(cluster: Cluster) -> Node:
    leader = cluster.leader()
    assert leader is not None
    return leader


async def caught_up(cluster: Cluster, leader: Node) -> None:
    index = leader.engine.applied_index
    for node in cluster.nodes:
        if node.running:
            with trio.fail_after(BOUND):
                await node.engine.wait_applied(index)


async def test_concurrent_applies_share_append_entries_and_log_writes(
    tmp_path: Path, jump_clock: trio.testing.MockClock
) -> None:
    writers, rounds = 64, 4
    async with cluster_of(tmp_path) as cluster:
        leader = the_leader(cluster)
        followers = cluster.followers(leader)
        for node in cluster.nodes:
            node.tally.reset()
        appends_before = leader.store.appends
        results: dict[tuple[int, int], tuple[object, object]] = {}

        async def writer(w: int) -> None:
            for r in range(rounds):
                value = f"v{w}.{r}"
                stored = await leader.engine.apply(set_command(f"k{w}", value))
                read = await leader.engine.apply(get_command(f"k{w}"))
                results[w, r] = (stored, read)

        with trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:
                for w in range(writers):
                    nursery.start_soon(writer, w)

        # Every proposal got its own result: a set answers None, the get after it its value.
        assert results == {
            (w, r): (None, f"v{w}.{r}") for w in range(writers) for r in range(rounds)
        }
        commands = writers * rounds * 2
        await caught_up(cluster, leader)
        for follower in followers:
            assert (
                follower.fsm.data
                == leader.fsm.data
                == {f"k{w}": f"v{w}.{rounds - 1}" for w in range(writers)}
            )
            # Each command reached the follower once, in far fewer AppendEntries than entries.
            assert follower.tally.commands == commands
            assert follower.tally.requests * 8 <= commands, follower.tally
        # The leader wrote its log in groups too, not one store_entries per proposal.
        leader_writes = leader.store.appends - appends_before
        assert leader_writes * 8 <= commands, leader_writes


async def test_the_log_keeps_the_order_of_the_calls(
    tmp_path: Path, jump_clock: trio.testing.MockClock
) -> None:
    """Each task writes down its command right before it calls ``apply`` (no checkpoint in
    between): the state machines must apply them in exactly that order."""
    async with cluster_of(tmp_path) as cluster:
        leader = the_leader(cluster)
        start = len(leader.fsm.order)
        called: list[bytes] = []

        async def writer(w: int) -> None:
            for r in range(5):
                command = set_command(f"k{w % 7}", f"{w}.{r}")
                called.append(command)
                await leader.engine.apply(command)

        with trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:
                for w in range(40):
                    nursery.start_soon(writer, w)
        await caught_up(cluster, leader)
        for node in cluster.nodes:
            assert node.fsm.order[start:] == called


async def test_a_group_never_exceeds_max_append_entries(
    tmp_path: Path, jump_clock: trio.testing.MockClock
) -> None:
    async with cluster_of(tmp_path, max_append_entries=8) as cluster:
        leader = the_leader(cluster)
        for node in cluster.nodes:
            node.tally.reset()
        results: list[object] = []

        async def writer(w: int) -> None:
            results.append(await leader.engine.apply(set_command(f"k{w}", "x")))

        with trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:
                for w in range(100):
                    nursery.start_soon(writer, w)
        assert results == [None] * 100
        await caught_up(cluster, leader)
        for follower in cluster.followers(leader):
            assert follower.tally.commands == 100
            assert 0 < follower.tally.largest <= 8
            assert follower.tally.requests >= 100 // 8


async def test_a_cancelled_caller_abandons_its_wait_not_its_entry(
    tmp_path: Path, jump_clock: trio.testing.MockClock
) -> None:
    """As before grouping: an apply whose caller is cancelled once it has been called is
    still in the log, so it commits and applies everywhere (Go's abandoned ApplyFuture); the
    group it joined is flushed by the engine, not by the cancelled caller."""
    async with cluster_of(tmp_path) as cluster:
        leader = the_leader(cluster)
        outcomes: dict[int, object] = {}

        async def writer(w: int, cancelled: bool) -> None:
            with trio.CancelScope() as scope:
                if cancelled:
                    scope.cancel()  # takes effect at the apply's first checkpoint
                outcomes[w] = await leader.engine.apply(set_command(f"k{w}", f"v{w}"))
            if scope.cancelled_caught:
                outcomes[w] = "cancelled"

        with trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:
                for w in range(16):
                    nursery.start_soon(writer, w, w % 4 == 0)
        assert outcomes == {w: "cancelled" if w % 4 == 0 else None for w in range(16)}
        # A barrier after them: by then every entry, abandoned ones included, is applied.
        with trio.fail_after(BOUND):
            await leader.engine.barrier()
        await caught_up(cluster, leader)
        expected = {f"k{w}": f"v{w}" for w in range(16)}
        for node in cluster.nodes:
            assert node.fsm.data == expected


# Heartbeats every 1-2 s: in the 20 ms the next test allows, nothing but the flusher drains.
SLOW_TIMERS: Final[dict[str, Any]] = dict(
    heartbeat_timeout=10.0, election_timeout=10.0, leader_lease_timeout=5.0
)


async def test_a_lone_apply_goes_out_at_once(
    tmp_path: Path, jump_clock: trio.testing.MockClock
) -> None:
    async with cluster_of(tmp_path, **SLOW_TIMERS) as cluster:
        leader = the_leader(cluster)
        await trio.sleep(3.0)  # past the election's traffic
        with trio.fail_after(0.02):
            assert await leader.engine.apply(get_command("none")) is None


async def test_a_lone_cancelled_apply_is_flushed_by_the_engine(
    tmp_path: Path, jump_clock: trio.testing.MockClock
) -> None:
    """The only proposal of its group, and its caller gone at once: the flusher still drains
    it (nothing else would: no other apply, no response, until the next heartbeat)."""
    async with cluster_of(tmp_path, **SLOW_TIMERS) as cluster:
        leader = the_leader(cluster)
        await trio.sleep(3.0)
        with trio.CancelScope() as scope:
            scope.cancel()
            await leader.engine.apply(set_command("alone", "yes"))
        assert scope.cancelled_caught
        with trio.fail_after(0.02):
            await poll(lambda: leader.fsm.data.get("alone") == "yes", "the abandoned entry")
        await caught_up(cluster, leader)
        assert all(node.fsm.data == {"alone": "yes"} for node in cluster.nodes)


async def test_leadership_lost_mid_group_ends_every_call_and_loses_no_acknowledged_write(
    tmp_path: Path, jump_clock: trio.testing.MockClock
) -> None:
    async with cluster_of(tmp_path) as cluster:
        leader = the_leader(cluster)
        acknowledged: dict[str, str] = {}
        errors: list[str] = []
        writes = [0]
        busy = trio.Event()

        async def writer(w: int) -> None:
            for r in range(1000):
                try:
                    await leader.engine.apply(set_command(f"k{w}", f"{r}"))
                except RaftError as exc:
                    errors.append(str(exc))
                    return
                acknowledged[f"k{w}"] = f"{r}"
                writes[0] += 1
                if writes[0] == 200:
                    busy.set()

        with trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:
                for w in range(32):
                    nursery.start_soon(writer, w)
                await busy.wait()
                leader.scope.cancel()  # kill the leader in the middle of the load
        # Every writer ended (none hangs), each with the engine's text.
        assert len(errors) == 32
        assert set(errors) <= {"raft is already shutdown", "leadership lost while committing log"}
        survivors = cluster.followers(leader)
        await poll(lambda: cluster.leader() is not None, "a new leader")
        new_leader = the_leader(cluster)
        with trio.fail_after(BOUND):
            await new_leader.engine.barrier()
        await caught_up(cluster, new_leader)
        for node in survivors:
            for key, value in acknowledged.items():
                # Acknowledged writes survive (a later, unacknowledged one may have committed).
                assert int(node.fsm.data[key]) >= int(value)


async def test_a_lone_leader_answers_every_grouped_apply(
    tmp_path: Path, jump_clock: trio.testing.MockClock
) -> None:
    async with cluster_of(tmp_path, size=1) as cluster:
        leader = the_leader(cluster)
        before = leader.store.appends
        results: list[object] = []

        async def writer(w: int) -> None:
            for _ in range(4):
                results.append(await leader.engine.apply(get_command("missing")))

        with trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:
                for w in range(32):
                    nursery.start_soon(writer, w)
        assert results == [None] * 128
        assert (leader.store.appends - before) * 8 <= 128
