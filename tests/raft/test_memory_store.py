"""The memory store: the same behaviour as the SQLite store, and crashes as the simulation
models them (what was stored survives, nothing else; the crashed store is dead)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings
from store_model import StoreMachine

from agentrpc.raft.log import LogEntry, LogType
from agentrpc.raft.memory_store import MemoryStore, StoreContents
from agentrpc.raft.store_api import KEY_CURRENT_TERM, KEY_LAST_VOTE_CAND, LogStore, StableStore
from agentrpc.raft.store_common import MAX_UINT64, StoreClosed, StoreError


def entries(first: int, last: int, term: int = 1) -> list[LogEntry]:
    return [LogEntry(i, term, LogType.COMMAND, b"d%d" % i) for i in range(first, last + 1)]


def test_satisfies_the_store_protocols() -> None:
    store = MemoryStore()
    log_store: LogStore = store
    stable_store: StableStore = store
    assert (log_store.first_index(), log_store.last_index()) == (0, 0)
    assert stable_store.get_uint64(KEY_CURRENT_TERM) is None
    assert log_store.get_entry(1) is None
    assert log_store.get_range(0, MAX_UINT64) == []


def test_store_overwrite_and_ranges() -> None:
    store = MemoryStore()
    store.store_entries(entries(5, 9))
    assert (store.first_index(), store.last_index()) == (5, 9)
    store.store_entries([LogEntry(7, 3, LogType.NOOP), LogEntry(2, 1, 0, b"gap")])
    assert store.get_entry(7) == LogEntry(7, 3, 1)
    assert store.first_index() == 2
    assert [e.index for e in store.get_range(0, 8)] == [2, 5, 6, 7, 8]
    assert store.get_range(9, 8) == []
    store.store_entries([])
    assert store.writes == 2


def test_delete_range_leaves_gaps_and_moves_the_bounds() -> None:
    store = MemoryStore()
    store.store_entries(entries(1, 10))
    store.delete_range(4, 6)
    assert [e.index for e in store.get_range(1, 10)] == [1, 2, 3, 7, 8, 9, 10]
    store.delete_range(1, 2)
    store.delete_range(9, MAX_UINT64)
    assert (store.first_index(), store.last_index()) == (3, 8)
    store.delete_range(8, 3)
    store.delete_range(0, MAX_UINT64)
    assert (store.first_index(), store.last_index()) == (0, 0)


def test_stable_values_as_raft_boltdb_keeps_them() -> None:
    store = MemoryStore()
    store.set_uint64(KEY_CURRENT_TERM, 258)
    assert store.get_bytes(KEY_CURRENT_TERM) == b"\x00\x00\x00\x00\x00\x00\x01\x02"
    store.set_bytes(KEY_LAST_VOTE_CAND, b"10.0.0.1:8300")
    assert store.get_bytes(KEY_LAST_VOTE_CAND) == b"10.0.0.1:8300"
    with pytest.raises(StoreError, match="not a uint64"):
        store.get_uint64(KEY_LAST_VOTE_CAND)


@pytest.mark.parametrize(
    "bad",
    [LogEntry(0, 1, 0), LogEntry(1, 1 << 64, 0), LogEntry(1, 1, -1), LogEntry(1, 1, 0, "x")],  # type: ignore[arg-type]
)
def test_invalid_entries_are_refused_whole(bad: Any) -> None:
    store = MemoryStore()
    with pytest.raises((TypeError, ValueError)):
        store.store_entries([LogEntry(5, 1, 0), bad])
    assert store.last_index() == 0
    with pytest.raises(ValueError):
        store.set_bytes(b"", b"v")


def test_crash_keeps_what_was_stored_and_kills_the_old_store() -> None:
    store = MemoryStore()
    store.store_entries(entries(1, 4))
    store.set_uint64(KEY_CURRENT_TERM, 2)
    restarted = store.crash()
    assert restarted.get_range(0, MAX_UINT64) == entries(1, 4)
    assert restarted.get_uint64(KEY_CURRENT_TERM) == 2
    # A task of the crashed node that still runs cannot touch the restarted node's store.
    calls: list[Callable[[], object]] = [
        lambda: store.store_entries(entries(5, 5)),
        lambda: store.delete_range(1, 1),
        lambda: store.set_uint64(KEY_CURRENT_TERM, 3),
        store.last_index,
        lambda: store.get_entry(1),
        store.durable_view,
    ]
    for call in calls:
        with pytest.raises(StoreClosed):
            call()
    assert restarted.last_index() == 4
    assert restarted.get_uint64(KEY_CURRENT_TERM) == 2


def test_a_durable_view_is_a_copy() -> None:
    store = MemoryStore()
    store.store_entries(entries(1, 2))
    view = store.durable_view()
    store.store_entries(entries(3, 3))
    store.set_bytes(b"k", b"v")
    assert sorted(view.entries) == [1, 2]
    assert dict(view.stable) == {}
    with pytest.raises(TypeError):
        view.entries[9] = LogEntry(9, 1, 0)  # type: ignore[index]
    again = MemoryStore(view)
    assert again.get_range(0, MAX_UINT64) == entries(1, 2)
    again.store_entries(entries(3, 4))
    assert sorted(view.entries) == [1, 2]
    assert MemoryStore(StoreContents()).last_index() == 0


def test_threads_may_share_it() -> None:
    store = MemoryStore()

    def work(t: int) -> None:
        for n in range(200):
            store.store_entries([LogEntry(1 + n * 8 + t, t, 0)])

    workers = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    assert [e.index for e in store.get_range(0, MAX_UINT64)] == list(range(1, 1601))


class MemoryMachine(StoreMachine):
    def make_store(self) -> MemoryStore:
        return MemoryStore()

    def restart(self) -> None:
        self.store = self.store.crash()


MemoryMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_memory_store_matches_the_model = MemoryMachine.TestCase
