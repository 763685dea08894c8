"""A hypothesis state machine holding a Raft store to a dict model (both back ends use it).

Subclasses say how to make the store (:meth:`StoreMachine.make_store`) and what a restart is
(:meth:`StoreMachine.restart`: reopen the file, or crash the memory store); every rule applies
the same call to the store and to the model, every invariant compares them, and restarts
check that what was stored survives.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agentrpc.raft.log import LogEntry
from agentrpc.raft.store_api import KEY_CURRENT_TERM, KEY_LAST_VOTE_CAND, KEY_LAST_VOTE_TERM
from agentrpc.raft.store_common import MAX_UINT64, StoreError

# Small indexes collide (overwrites, gaps, deletes that hit); the top of the uint64 range
# checks that order and values survive SQLite's signed integers.
indexes = st.one_of(
    st.integers(1, 30),
    st.integers((1 << 63) - 2, (1 << 63) + 2),
    st.integers(MAX_UINT64 - 2, MAX_UINT64),
)
bounds = st.one_of(st.just(0), indexes)
uint64s = st.one_of(st.integers(0, 1000), st.integers(0, MAX_UINT64))
entries = st.builds(
    LogEntry,
    index=indexes,
    term=uint64s,
    type=st.integers(0, 255),
    data=st.binary(max_size=64),
    extensions=st.one_of(st.just(b""), st.binary(max_size=8)),
)
keys = st.sampled_from([KEY_CURRENT_TERM, KEY_LAST_VOTE_TERM, KEY_LAST_VOTE_CAND, b"other"])


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[int, LogEntry] = {}
        self.stable: dict[bytes, bytes] = {}
        self.store: Any = self.make_store()

    def make_store(self) -> Any:
        raise NotImplementedError

    def restart(self) -> None:
        raise NotImplementedError

    @rule(batch=st.lists(entries, max_size=6))
    def store_entries(self, batch: list[LogEntry]) -> None:
        self.store.store_entries(batch)
        for entry in batch:
            self.entries[entry.index] = entry

    @rule(first=bounds, last=bounds)
    def delete_range(self, first: int, last: int) -> None:
        self.store.delete_range(first, last)
        for index in [i for i in self.entries if first <= i <= last]:
            del self.entries[index]

    @rule(key=keys, value=st.binary(max_size=16))
    def set_bytes(self, key: bytes, value: bytes) -> None:
        self.store.set_bytes(key, value)
        self.stable[key] = value

    @rule(key=keys, value=uint64s)
    def set_uint64(self, key: bytes, value: int) -> None:
        self.store.set_uint64(key, value)
        self.stable[key] = value.to_bytes(8, "big")

    @rule(index=st.sampled_from([0, -1, MAX_UINT64 + 1]))
    def invalid_entry_is_refused_whole(self, index: int) -> None:
        good = LogEntry(3, 1, 0, b"good")
        with pytest.raises(ValueError):
            self.store.store_entries([good, LogEntry(index, 1, 0)])

    @precondition(lambda self: self.entries or self.stable)
    @rule()
    def restart_keeps_everything(self) -> None:
        self.restart()

    @rule(key=keys)
    def get_uint64(self, key: bytes) -> None:
        raw = self.stable.get(key)
        if raw is None:
            assert self.store.get_uint64(key) is None
        elif len(raw) == 8:
            assert self.store.get_uint64(key) == int.from_bytes(raw, "big")
        else:
            with pytest.raises(StoreError):
                self.store.get_uint64(key)

    @rule(first=bounds, last=bounds)
    def get_range(self, first: int, last: int) -> None:
        expected = [self.entries[i] for i in sorted(self.entries) if first <= i <= last]
        assert self.store.get_range(first, last) == expected

    @invariant()
    def same_contents(self) -> None:
        model = self.entries
        assert self.store.first_index() == (min(model) if model else 0)
        assert self.store.last_index() == (max(model) if model else 0)
        assert self.store.get_range(0, MAX_UINT64) == [model[i] for i in sorted(model)]
        for index in (1, 2, 3, MAX_UINT64):
            assert self.store.get_entry(index) == model.get(index)
        for key in (KEY_CURRENT_TERM, KEY_LAST_VOTE_TERM, KEY_LAST_VOTE_CAND, b"other"):
            assert self.store.get_bytes(key) == self.stable.get(key)
