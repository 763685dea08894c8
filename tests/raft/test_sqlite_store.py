"""The SQLite log and stable store: behaviour, model, group commit, and crashes (kill -9)."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from crash_writer import LANES, entry_for, run_and_kill, vote_for
from hypothesis import HealthCheck, settings
from store_model import StoreMachine

from agentrpc.log_protocol import CaptureLog
from agentrpc.raft.log import LogEntry, LogType
from agentrpc.raft.sqlite_store import DB_FILE_NAME, SQLiteStore
from agentrpc.raft.store_api import KEY_CURRENT_TERM, KEY_LAST_VOTE_CAND, LogStore, StableStore
from agentrpc.raft.store_common import (
    MAX_UINT64,
    StoreClosed,
    StoreCorrupt,
    StoreError,
    StoreFailed,
)
from agentrpc.raft.store_thread import StoreRunner


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "raft" / DB_FILE_NAME


@pytest.fixture(name="store")
def open_store(db_path: Path) -> Iterator[SQLiteStore]:
    with SQLiteStore(db_path) as opened:
        yield opened


def entries(first: int, last: int, term: int = 1, size: int = 10) -> list[LogEntry]:
    return [
        LogEntry(i, term, LogType.COMMAND, bytes([i % 256]) * size) for i in range(first, last + 1)
    ]


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll a condition another thread will make true (bounded: 10 s)."""
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


# -- behaviour of every method ---------------------------------------------------------------


def test_satisfies_the_store_protocols(store: SQLiteStore) -> None:
    log_store: LogStore = store
    stable_store: StableStore = store
    assert log_store.last_index() == 0
    assert stable_store.get_bytes(b"x") is None


def test_an_empty_store(store: SQLiteStore) -> None:
    assert (store.first_index(), store.last_index()) == (0, 0)
    assert store.get_entry(1) is None
    assert store.get_range(0, MAX_UINT64) == []
    assert store.get_bytes(KEY_LAST_VOTE_CAND) is None
    assert store.get_uint64(KEY_CURRENT_TERM) is None


def test_store_and_read_back(store: SQLiteStore) -> None:
    batch = [*entries(1, 5), LogEntry(6, 2, LogType.CONFIGURATION, b"cfg", b"ext")]
    store.store_entries(batch)
    assert (store.first_index(), store.last_index()) == (1, 6)
    assert store.get_entry(6) == LogEntry(6, 2, 5, b"cfg", b"ext")
    assert store.get_range(2, 4) == batch[1:4]
    assert store.get_range(4, 2) == []
    assert store.get_range(5, 100) == batch[4:]
    assert store.get_entry(7) is None
    store.store_entries([])
    assert store.commits == 1


def test_overwrite_replaces_the_entry(store: SQLiteStore) -> None:
    store.store_entries(entries(1, 3))
    store.store_entries([LogEntry(2, 7, LogType.NOOP)])
    assert store.get_entry(2) == LogEntry(2, 7, 1, b"", b"")
    assert store.last_index() == 3


def test_delete_range_leaves_gaps_and_moves_the_bounds(store: SQLiteStore) -> None:
    store.store_entries(entries(1, 10))
    store.delete_range(4, 6)
    assert (store.first_index(), store.last_index()) == (1, 10)
    assert [e.index for e in store.get_range(1, 10)] == [1, 2, 3, 7, 8, 9, 10]
    assert store.get_entry(5) is None
    store.delete_range(1, 2)  # compaction of a prefix
    assert store.first_index() == 3
    store.delete_range(9, MAX_UINT64)  # truncation of a suffix
    assert (store.first_index(), store.last_index()) == (3, 8)
    store.delete_range(8, 3)  # empty range: nothing
    assert store.last_index() == 8
    store.delete_range(0, MAX_UINT64)
    assert (store.first_index(), store.last_index()) == (0, 0)
    assert store.get_range(0, MAX_UINT64) == []


def test_the_whole_uint64_range_sorts_and_survives(db_path: Path) -> None:
    top = [LogEntry(MAX_UINT64, MAX_UINT64, 255, b"top"), LogEntry(1 << 63, 0, 0, b"mid")]
    with SQLiteStore(db_path) as store:
        store.store_entries([*entries(1, 2), *top])
        store.set_uint64(KEY_CURRENT_TERM, MAX_UINT64)
        assert (store.first_index(), store.last_index()) == (1, MAX_UINT64)
    with SQLiteStore(db_path) as store:
        assert [e.index for e in store.get_range(0, MAX_UINT64)] == [1, 2, 1 << 63, MAX_UINT64]
        assert store.get_entry(MAX_UINT64) == top[0]
        assert store.get_uint64(KEY_CURRENT_TERM) == MAX_UINT64


def test_stable_values(store: SQLiteStore) -> None:
    store.set_bytes(KEY_LAST_VOTE_CAND, b"10.0.0.1:8300")
    assert store.get_bytes(KEY_LAST_VOTE_CAND) == b"10.0.0.1:8300"
    store.set_bytes(KEY_LAST_VOTE_CAND, b"")
    assert store.get_bytes(KEY_LAST_VOTE_CAND) == b""
    store.set_uint64(KEY_CURRENT_TERM, 258)
    # 8 bytes big-endian, as raft-boltdb keeps a uint64.
    assert store.get_bytes(KEY_CURRENT_TERM) == b"\x00\x00\x00\x00\x00\x00\x01\x02"
    assert store.get_uint64(KEY_CURRENT_TERM) == 258
    with pytest.raises(StoreError, match="not a uint64"):
        store.get_uint64(KEY_LAST_VOTE_CAND)


@pytest.mark.parametrize(
    "bad",
    [
        LogEntry(0, 1, 0),
        LogEntry(-1, 1, 0),
        LogEntry(MAX_UINT64 + 1, 1, 0),
        LogEntry(1, -1, 0),
        LogEntry(1, 1, 256),
        LogEntry(1, 1, 0, "text"),  # type: ignore[arg-type]
        LogEntry(1, 1, 0, b"", None),  # type: ignore[arg-type]
        (1, 1, 0, b""),
    ],
)
def test_invalid_entries_are_refused_before_anything_is_written(
    store: SQLiteStore, bad: Any
) -> None:
    with pytest.raises((TypeError, ValueError)):
        store.store_entries([LogEntry(5, 1, 0, b"good"), bad])
    assert store.get_range(0, MAX_UINT64) == []
    assert store.writes == 0


def test_invalid_keys_values_and_bounds(store: SQLiteStore) -> None:
    with pytest.raises(ValueError):
        store.set_bytes(b"", b"x")
    with pytest.raises(TypeError):
        store.set_bytes("CurrentTerm", b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.set_bytes(b"k", "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.set_uint64(b"k", 1 << 64)
    with pytest.raises(ValueError):
        store.get_range(-1, 3)
    with pytest.raises(TypeError):
        store.get_entry("1")  # type: ignore[arg-type]


def test_reopen_keeps_everything(db_path: Path) -> None:
    with SQLiteStore(db_path) as store:
        store.store_entries(entries(1, 100))
        store.delete_range(1, 10)
        store.set_uint64(KEY_CURRENT_TERM, 4)
    with SQLiteStore(db_path) as store:
        assert (store.first_index(), store.last_index()) == (11, 100)
        assert store.get_range(0, MAX_UINT64) == entries(11, 100)
        assert store.get_uint64(KEY_CURRENT_TERM) == 4


def test_bounds_follow_a_sliding_log_across_compaction_truncation_and_reopen(
    db_path: Path,
) -> None:
    """A Raft log's life: appends at the end, a conflicting suffix truncated and rewritten, the
    prefix compacted behind snapshots, reopens in between; the in-memory bounds always equal
    the rows' (read back from the table) and survive each reopen."""
    rng = random.Random(13)
    store = SQLiteStore(db_path)
    try:
        first, last = 0, 0
        for round_ in range(40):
            count = rng.randint(1, 50)
            store.store_entries(entries(last + 1, last + count, term=round_ + 1))
            first, last = first or 1, last + count
            if round_ % 3 == 1 and last - first > 5:  # a conflicting suffix
                cut = rng.randint(first + 1, last)
                store.delete_range(cut, last)
                last = cut - 1
            if round_ % 4 == 3:  # compaction behind a snapshot, trailing logs kept
                through = max(first, last - rng.randint(0, 20))
                store.delete_range(first, through)
                first = through + 1 if through < last else 0
                last = last if first else 0
            rows = store.get_range(0, MAX_UINT64)
            expected = (rows[0].index, rows[-1].index) if rows else (0, 0)
            assert (store.first_index(), store.last_index()) == expected == (first, last)
            if round_ % 5 == 4:
                store.close()
                store = SQLiteStore(db_path)
                assert (store.first_index(), store.last_index()) == (first, last)
    finally:
        store.close()


def _vm_steps(store: SQLiteStore, write: Callable[[], None]) -> int:
    """SQLite virtual-machine steps (in thousands) of one write on the writer connection."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    conn = store._writer
    conn.set_progress_handler(count, 1000)
    try:
        write()
    finally:
        conn.set_progress_handler(None, 0)
    return steps[0]


def test_a_write_costs_the_same_whatever_the_length_of_the_log(db_path: Path) -> None:
    """Each transaction reads the bounds back; a query that scans the table (as one
    ``SELECT min(idx), max(idx)`` does) would cost every commit a step per stored entry."""
    with SQLiteStore(db_path, check="none") as store:
        store.store_entries(entries(1, 10))
        small = _vm_steps(store, lambda: store.store_entries(entries(11, 11)))
        store.store_entries(entries(12, 60_000, size=1))
        large = _vm_steps(store, lambda: store.store_entries(entries(60_001, 60_001)))
        compact = _vm_steps(store, lambda: store.delete_range(1, 100))
        assert (store.first_index(), store.last_index()) == (101, 60_001)
    # A scan of 60,000 rows takes hundreds of thousands of steps; two lookups take a few.
    assert large <= small + 5, (small, large)
    assert compact <= small + 5, (small, compact)


def test_files_are_private_and_wal_is_fsynced(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / DB_FILE_NAME
    with SQLiteStore(path) as store:
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o700
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        store.store_entries(entries(1, 1))
        assert stat.S_IMODE(os.stat(f"{path}-wal").st_mode) == 0o600
        writer = store._writer
        assert writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_closed_store_refuses_every_call(store: SQLiteStore) -> None:
    store.store_entries(entries(1, 1))
    store.close()
    store.close()
    calls: list[Callable[[], object]] = [
        store.first_index,
        store.last_index,
        lambda: store.get_entry(1),
        lambda: store.get_range(1, 2),
        lambda: store.store_entries(entries(2, 2)),
        lambda: store.store_entries([]),
        lambda: store.delete_range(1, 1),
        lambda: store.set_bytes(b"k", b"v"),
        lambda: store.get_bytes(b"k"),
        lambda: store.set_uint64(b"k", 1),
        lambda: store.get_uint64(b"k"),
    ]
    for call in calls:
        with pytest.raises(StoreClosed):
            call()


# -- opening damaged or foreign files ----------------------------------------------------------


def test_a_file_that_is_not_a_database(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not sqlite\n" * 300)
    with pytest.raises(StoreCorrupt, match="not a database"):
        SQLiteStore(db_path)


def test_a_foreign_sqlite_database(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    conn.close()
    with pytest.raises(StoreCorrupt, match="not a raft store"):
        SQLiteStore(db_path)


def test_an_unknown_schema_version(db_path: Path) -> None:
    SQLiteStore(db_path).close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE meta SET value = 99 WHERE name = 'schema_version'")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        SQLiteStore(db_path)


def test_damaged_pages_are_found_at_open(db_path: Path) -> None:
    with SQLiteStore(db_path) as store:
        store.store_entries(entries(1, 2000, size=300))
    raw = bytearray(db_path.read_bytes())  # closing checkpointed everything into the file
    page_size = int.from_bytes(raw[16:18], "big")
    raw[2 * page_size : 2 * page_size + 100] = b"\xff" * 100  # the b-tree header of page 3
    db_path.write_bytes(bytes(raw))
    with pytest.raises(StoreCorrupt, match=r"quick_check.*Page 3"):
        SQLiteStore(db_path)
    with pytest.raises(StoreCorrupt):
        SQLiteStore(db_path, check="full")


def _wal_commits(wal: bytes) -> list[int]:
    """The offsets just past each commit frame of a WAL file (frames: 24-byte header + page;
    a commit frame records the database size in pages, other frames record 0)."""
    page_size = int.from_bytes(wal[8:12], "big")
    salts = wal[16:24]
    frame = 24 + page_size
    ends = []
    for offset in range(32, len(wal) - frame + 1, frame):
        if wal[offset + 8 : offset + 16] != salts:
            break
        if int.from_bytes(wal[offset + 4 : offset + 8], "big") != 0:
            ends.append(offset + frame)
    return ends


@pytest.mark.parametrize("damage", ["cut", "garbled"])
def test_a_torn_last_transaction_is_rolled_back(tmp_path: Path, damage: str) -> None:
    live = tmp_path / "live" / DB_FILE_NAME
    with SQLiteStore(live) as store:
        store.store_entries(entries(1, 50))
        store.set_uint64(KEY_CURRENT_TERM, 3)
        store.store_entries(entries(51, 80, term=2, size=1000))  # many pages, one transaction
        # A crash copy: the database and its WAL as they are on disk now (no checkpoint yet).
        wal = Path(f"{live}-wal").read_bytes()
        main = live.read_bytes()
    commits = _wal_commits(wal)
    assert len(commits) >= 4
    previous, last = commits[-2], commits[-1]
    assert last - previous > 4 * 4096, "the last transaction spans several frames"
    if damage == "cut":
        torn = wal[: (previous + last) // 2]
    else:
        garbled = bytearray(wal[:last])
        garbled[last - 100] ^= 0x01  # the commit frame's page no longer matches its checksum
        torn = bytes(garbled)
    crashed = tmp_path / "crashed" / DB_FILE_NAME
    crashed.parent.mkdir()
    crashed.write_bytes(main)
    Path(f"{crashed}-wal").write_bytes(torn)
    with SQLiteStore(crashed, check="full") as store:
        assert store.get_range(0, MAX_UINT64) == entries(1, 50)
        assert store.get_uint64(KEY_CURRENT_TERM) == 3
        store.store_entries(entries(51, 51))  # and it writes on
    with SQLiteStore(crashed) as store:
        assert store.last_index() == 51


# -- failures while writing --------------------------------------------------------------------


def test_a_full_disk_fails_the_write_and_the_store_goes_on(store: SQLiteStore) -> None:
    store.store_entries(entries(1, 5))
    pages = store._writer.execute("PRAGMA page_count").fetchone()[0]
    store._writer.execute(f"PRAGMA max_page_count={pages + 2}")
    with pytest.raises(StoreError, match="full") as caught:
        store.store_entries(entries(6, 200, size=2000))
    assert not isinstance(caught.value, StoreFailed)
    assert store.last_index() == 5
    assert store.get_entry(6) is None
    store.store_entries(entries(6, 6))
    assert store.last_index() == 6


def test_a_database_locked_by_another_process_fails_the_write(db_path: Path) -> None:
    with SQLiteStore(db_path, busy_timeout=0.05) as store:
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match="locked") as caught:
            store.set_uint64(KEY_CURRENT_TERM, 1)
        assert not isinstance(caught.value, StoreFailed)
        blocker.execute("ROLLBACK")
        blocker.close()
        store.set_uint64(KEY_CURRENT_TERM, 2)
        assert store.get_uint64(KEY_CURRENT_TERM) == 2


class _FailingCommit:
    """The writer connection, except that COMMIT fails with an I/O error (as a failed fsync
    would)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            error = sqlite3.OperationalError("disk I/O error")
            error.sqlite_errorcode = 10
            raise error
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_an_io_error_fails_the_store_until_reopened(db_path: Path) -> None:
    log = CaptureLog()
    store = SQLiteStore(db_path, log=log)
    store.store_entries(entries(1, 3))
    real = store._writer
    store._writer = _FailingCommit(real)  # type: ignore[assignment]
    with pytest.raises(StoreFailed, match="durability unknown"):
        store.store_entries(entries(4, 4))
    store._writer = real
    # Every later write is refused without touching the disk; reads still work.
    with pytest.raises(StoreFailed):
        store.set_uint64(KEY_CURRENT_TERM, 9)
    assert store.get_range(0, MAX_UINT64) == entries(1, 3)
    assert store.last_index() == 3
    assert log.has("ERR")
    store.close()
    with SQLiteStore(db_path) as reopened:
        assert reopened.get_range(0, MAX_UINT64) == entries(1, 3)
        assert reopened.get_uint64(KEY_CURRENT_TERM) is None
        reopened.store_entries(entries(4, 4))


# -- group commit ------------------------------------------------------------------------------


@pytest.mark.parametrize("group_commit", [True, False])
def test_concurrent_writes_share_one_transaction(db_path: Path, group_commit: bool) -> None:
    """Another connection holds the write lock, so the first writer waits in BEGIN while the
    other threads queue; once released, group commit takes the 31 queued writes in one
    transaction (without group commit: one each)."""
    threads = 32
    with SQLiteStore(db_path, group_commit=group_commit) as store:
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        workers = [
            threading.Thread(target=store.store_entries, args=(entries(t * 10 + 1, t * 10 + 10),))
            for t in range(threads)
        ]
        for worker in workers:
            worker.start()
        wait_until(lambda: store.queued() == threads - 1, "the writes to queue")
        blocker.execute("ROLLBACK")
        blocker.close()
        for worker in workers:
            worker.join(10)
        assert store.writes == threads
        assert store.commits == (2 if group_commit else threads)
        assert store.get_range(0, MAX_UINT64) == entries(1, threads * 10)


def test_a_writer_returns_only_once_its_transaction_is_committed(db_path: Path) -> None:
    """Each COMMIT is held at a gate (SQLite's trace hook runs as the statement starts): while
    it is held, no write of that transaction may have returned to its caller."""
    threads = 8
    returned: list[int] = []
    gates = [threading.Event(), threading.Event()]
    arrived = [threading.Event(), threading.Event()]
    commits_seen = 0

    def trace(sql: str) -> None:
        nonlocal commits_seen
        if sql == "COMMIT" and commits_seen < len(gates):
            round_ = commits_seen
            commits_seen += 1
            arrived[round_].set()
            assert gates[round_].wait(10)

    def write(t: int) -> None:
        store.store_entries(entries(t, t))
        returned.append(t)

    with SQLiteStore(db_path) as store:
        store._writer.set_trace_callback(trace)
        first = threading.Thread(target=write, args=(1,))
        first.start()
        assert arrived[0].wait(10)  # the first write is committing, alone
        others = [threading.Thread(target=write, args=(t,)) for t in range(2, threads + 1)]
        for worker in others:
            worker.start()
        wait_until(lambda: store.queued() == threads - 1, "the writes to queue")
        assert returned == []
        gates[0].set()
        assert arrived[1].wait(10)  # the seven queued writes are committing, together
        first.join(10)
        assert returned == [1]
        gates[1].set()
        for worker in others:
            worker.join(10)
        assert sorted(returned) == list(range(1, threads + 1))
        assert (store.commits, store.writes) == (2, threads)


def test_many_threads_append_and_vote_at_once(db_path: Path) -> None:
    threads, per_thread = 16, 40
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for n in range(per_thread):
                index = 1 + n * threads + t
                store.store_entries([entry_for(index, t)])
                if n % 10 == 0:
                    store.set_uint64(b"lane-%d" % t, n)
                assert store.get_entry(index) == entry_for(index, t)
                assert store.last_index() >= index
        except BaseException as exc:
            errors.append(exc)

    with SQLiteStore(db_path) as store:
        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        assert errors == []
        total = threads * per_thread
        stored = store.get_range(0, MAX_UINT64)
        assert [e.index for e in stored] == list(range(1, total + 1))
        assert stored == [entry_for(e.index, (e.index - 1) % threads) for e in stored]
        assert store.writes == total + threads * (per_thread // 10)
        assert store.commits <= store.writes
        assert store.get_uint64(b"lane-3") == 30


def test_close_waits_for_queued_writes(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    workers = [
        threading.Thread(target=store.store_entries, args=(entries(t, t),)) for t in (1, 2, 3)
    ]
    for worker in workers:
        worker.start()
    wait_until(lambda: store.queued() == 2, "the writes to queue")
    closer = threading.Thread(target=store.close)
    closer.start()
    wait_until(lambda: store._closed, "close to begin")
    with pytest.raises(StoreClosed):
        store.store_entries(entries(4, 4))
    blocker.execute("ROLLBACK")
    blocker.close()
    closer.join(10)
    for worker in workers:
        worker.join(10)
    with SQLiteStore(db_path) as reopened:
        assert reopened.get_range(0, MAX_UINT64) == entries(1, 3)


# -- from trio ---------------------------------------------------------------------------------


async def test_trio_tasks_share_commits_through_the_runner(db_path: Path) -> None:
    runner = StoreRunner()
    tasks = 20
    with SQLiteStore(db_path) as store:
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        async with trio.open_nursery() as nursery:
            for t in range(tasks):
                nursery.start_soon(runner.run, store.store_entries, entries(t + 1, t + 1))
            await runner.run(wait_until, lambda: store.queued() == tasks - 1, "the writes")
            blocker.execute("ROLLBACK")
            blocker.close()
        assert (store.writes, store.commits) == (tasks, 2)
        assert await runner.run(store.get_range, 1, tasks) == entries(1, tasks)


async def test_a_cancelled_caller_waits_for_its_write(db_path: Path) -> None:
    runner = StoreRunner()
    started = trio.Event()

    def write() -> None:
        trio.from_thread.run_sync(started.set)
        store.store_entries(entries(1, 1))

    with SQLiteStore(db_path) as store:
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        returned = after_checkpoint = False
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:

                async def caller() -> None:
                    nonlocal returned, after_checkpoint
                    await runner.run(write)
                    returned = True
                    await trio.lowlevel.checkpoint()  # the cancellation lands here
                    after_checkpoint = True

                nursery.start_soon(caller)
                await started.wait()
                scope.cancel()
                blocker.execute("ROLLBACK")
                blocker.close()
        # The write was not abandoned: it finished, durably, and its caller learnt so before
        # the cancellation unwound it.
        assert returned and not after_checkpoint and scope.cancelled_caught
        assert store.get_range(0, MAX_UINT64) == entries(1, 1)
        assert store.commits == 1


async def test_a_caller_cancelled_before_it_starts_writes_nothing(db_path: Path) -> None:
    runner = StoreRunner()
    with SQLiteStore(db_path) as store:
        with trio.CancelScope() as scope:
            scope.cancel()
            await runner.run(store.store_entries, entries(1, 1))
        assert scope.cancelled_caught
        assert store.writes == 0


# -- model -------------------------------------------------------------------------------------


class SQLiteMachine(StoreMachine):
    def make_store(self) -> SQLiteStore:
        self.directory = tempfile.mkdtemp(prefix="raft-model-")
        return SQLiteStore(Path(self.directory) / DB_FILE_NAME)

    def restart(self) -> None:
        self.store.close()
        self.store = SQLiteStore(Path(self.directory) / DB_FILE_NAME)

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)


SQLiteMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_sqlite_store_matches_the_model = SQLiteMachine.TestCase


# -- crashes: kill -9 at random moments ----------------------------------------------------


class OpsModel:
    """What the ops writer's acknowledged writes left: entries (index -> term) and votes."""

    def __init__(self) -> None:
        self.terms: dict[int, int] = {}
        self.current_term: int | None = None
        self.vote: bytes | None = None

    def copy(self) -> OpsModel:
        other = OpsModel()
        other.terms = dict(self.terms)
        other.current_term, other.vote = self.current_term, self.vote
        return other

    def apply(self, op: str) -> None:
        kind, *values = op.split()
        args = [int(v) for v in values]
        if kind == "A":
            for index in range(args[0], args[1] + 1):
                self.terms[index] = args[2]
        elif kind == "D":
            for index in [i for i in self.terms if args[0] <= i <= args[1]]:
                del self.terms[index]
        elif kind == "S":
            self.current_term = args[0]
        else:
            self.vote = vote_for(args[0])

    def matches(self, store: SQLiteStore) -> bool:
        expected = [entry_for(index, self.terms[index]) for index in sorted(self.terms)]
        return bool(
            store.get_range(0, MAX_UINT64) == expected
            and store.get_uint64(KEY_CURRENT_TERM) == self.current_term
            and store.get_bytes(KEY_LAST_VOTE_CAND) == self.vote
        )


def test_kill_9_loses_no_acknowledged_write_and_tears_none(tmp_path: Path) -> None:
    """Ten SIGKILLs at random moments of a writer appending, truncating, compacting and voting:
    after each, the store opens (quick_check passes) and holds exactly what was acknowledged,
    plus the one write in flight either whole or not at all."""
    rng = random.Random(1313)
    path = tmp_path / "raft" / DB_FILE_NAME
    model = OpsModel()
    acknowledged = 0
    for round_ in range(10):
        lines = run_and_kill(["ops", str(path), str(rng.randrange(10**9))], rng)
        in_flight: str | None = None
        for line in lines:
            if line.startswith("B "):
                assert in_flight is None
                in_flight = line[2:]
            else:
                assert line == "K" and in_flight is not None
                model.apply(in_flight)
                acknowledged += 1
                in_flight = None
        with SQLiteStore(path, check="full") as store:
            if model.matches(store):
                continue
            assert in_flight is not None, f"round {round_}: acknowledged writes differ"
            model.apply(in_flight)
            assert model.matches(store), f"round {round_}: torn write {in_flight}"
    assert acknowledged > 20, "the writer barely ran"


def test_kill_9_with_concurrent_appenders_loses_no_acknowledged_entry(tmp_path: Path) -> None:
    rng = random.Random(1314)
    path = tmp_path / "raft" / DB_FILE_NAME
    acked: dict[int, int] = {}
    for round_ in range(10):
        term = round_ + 1
        lines = run_and_kill(["lanes", str(path), str(term)], rng)
        for line in lines:
            kind, text = line.split()
            assert kind == "A"
            acked[int(text)] = term
        with SQLiteStore(path) as store:
            assert store.last_index() >= max(acked)
            for index, acked_term in acked.items():
                assert store.get_entry(index) == entry_for(index, acked_term), index
            for entry in store.get_range(0, MAX_UINT64):
                assert entry in (entry_for(entry.index, t) for t in range(1, term + 1))
            assert store.commits == 0
    assert len(acked) > 2 * LANES


def test_the_benchmark_cell_measures_group_commit(tmp_path: Path) -> None:
    """``benchmarks/raft_store.py`` cannot rot: one short cell of it, with 8 appenders."""
    from benchmarks.raft_store import measure_sqlite

    cell = measure_sqlite(tmp_path, writers=8, window=0.1, group=True)
    assert cell["appends"] > 0 and cell["per_second"] > 0
    assert 0 < cell["p50_us"] <= cell["p99_us"]
    assert cell["writes_per_commit"] >= 1
