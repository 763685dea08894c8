"""The Raft log store and stable store in memory, for ``--dev`` and for the simulation.

:class:`MemoryStore` implements :class:`~agentrpc.raft.store_api.LogStore` and
:class:`~agentrpc.raft.store_api.StableStore` with exactly the semantics of the SQLite store
(:mod:`agentrpc.raft.sqlite_store`): the same arguments accepted, the same errors
(:mod:`agentrpc.raft.store_common`), the same results. The model-based tests hold both to one
dict model.

Crashes. Every write is whole and immediate, so "durable" means "stored": what a node
restarting after a crash finds is everything its store holds, and nothing it kept elsewhere.
:meth:`MemoryStore.durable_view` copies that out (:class:`StoreContents`, immutable);
``MemoryStore(contents)`` starts a store from it. :meth:`MemoryStore.crash` does both and
closes the old store, so that a task of the crashed node that is still running cannot write
to the restarted node's store (its calls raise :class:`StoreClosed`).

Pure: no I/O, no clock, no trio. Thread-safe (one lock), so that an engine may call it from
worker threads as it calls the SQLite store. Memory is bounded by what is stored.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from .log import LogEntry
from .store_common import (
    StoreBase,
    StoreClosed,
    check_entries,
    check_index,
    check_key,
    check_value,
)

__all__ = ["MemoryStore", "StoreContents"]


@dataclass(frozen=True)
class StoreContents:
    """What a store holds: its log entries by index and its stable keys."""

    entries: Mapping[int, LogEntry] = field(default_factory=lambda: MappingProxyType({}))
    stable: Mapping[bytes, bytes] = field(default_factory=lambda: MappingProxyType({}))


class MemoryStore(StoreBase):
    """A log store and stable store held in dicts. ``contents`` (from :meth:`durable_view`)
    starts it with what a crashed store held."""

    def __init__(self, contents: StoreContents | None = None) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, LogEntry] = {}
        self._order: list[int] = []
        """The stored indexes, ascending."""
        self._stable: dict[bytes, bytes] = {}
        self._closed = False
        self._writes = 0
        if contents is not None:
            self._entries = dict(contents.entries)
            self._order = sorted(self._entries)
            self._stable = dict(contents.stable)

    # -- counters and lifecycle ------------------------------------------------------------

    @property
    def commits(self) -> int:
        """Writes applied (each is its own "transaction" here)."""
        return self._writes

    @property
    def writes(self) -> int:
        """Writes applied since the store was made."""
        return self._writes

    def close(self) -> None:
        """Refuse every later call. Idempotent."""
        with self._lock:
            self._closed = True

    def durable_view(self) -> StoreContents:
        """An immutable copy of everything stored: what a restart after a crash finds."""
        with self._lock:
            self._check_open()
            return StoreContents(
                MappingProxyType(dict(self._entries)), MappingProxyType(dict(self._stable))
            )

    def crash(self) -> MemoryStore:
        """Model a crash: close this store and return a new one holding what it had stored."""
        contents = self.durable_view()
        self.close()
        return MemoryStore(contents)

    # -- LogStore --------------------------------------------------------------------------

    def first_index(self) -> int:
        with self._lock:
            self._check_open()
            return self._order[0] if self._order else 0

    def last_index(self) -> int:
        with self._lock:
            self._check_open()
            return self._order[-1] if self._order else 0

    def get_entry(self, index: int) -> LogEntry | None:
        check_index(index)
        with self._lock:
            self._check_open()
            return self._entries.get(index)

    def get_range(self, first: int, last: int) -> list[LogEntry]:
        check_index(first, "first")
        check_index(last, "last")
        with self._lock:
            self._check_open()
            if first > last:
                return []
            order = self._order
            low = bisect.bisect_left(order, first)
            high = bisect.bisect_right(order, last)
            return [self._entries[index] for index in order[low:high]]

    def store_entries(self, entries: Sequence[LogEntry]) -> None:
        check_entries(entries)
        with self._lock:
            self._check_open()
            if not entries:
                return
            stored = self._entries
            order = self._order
            for entry in entries:
                if entry.index not in stored:
                    if not order or entry.index > order[-1]:
                        order.append(entry.index)
                    else:
                        bisect.insort(order, entry.index)
                stored[entry.index] = entry
            self._writes += 1

    def delete_range(self, first: int, last: int) -> None:
        check_index(first, "first")
        check_index(last, "last")
        with self._lock:
            self._check_open()
            if first > last:
                return
            order = self._order
            low = bisect.bisect_left(order, first)
            high = bisect.bisect_right(order, last)
            for index in order[low:high]:
                del self._entries[index]
            del order[low:high]
            self._writes += 1

    # -- StableStore -----------------------------------------------------------------------

    def set_bytes(self, key: bytes, value: bytes) -> None:
        check_key(key)
        check_value(value)
        with self._lock:
            self._check_open()
            self._stable[key] = value
            self._writes += 1

    def get_bytes(self, key: bytes) -> bytes | None:
        check_key(key)
        with self._lock:
            self._check_open()
            return self._stable.get(key)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("raft memory store is closed")
