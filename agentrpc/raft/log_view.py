"""The core's picture of its log, pure: which indexes it holds, their terms, the snapshot
before them, and a byte-bounded cache of recent entries.

Terms are kept for every stored index (8 bytes each, in an ``array``), so consistency checks,
votes and conflict detection never touch the store. Entry contents are kept for recent entries
only, up to ``cache_bytes``; the rest are read back from the store on demand
(:class:`~agentrpc.raft.actions.ReadEntries`), which keeps a node's memory bounded whatever the
peers send and however far a follower lags.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence

from .log import LogEntry

ENTRY_OVERHEAD = 96
"""Bytes an entry costs in the cache beyond its data (object, dict slot)."""


class LogView:
    __slots__ = (
        "_cache",
        "_cache_bytes",
        "_first",
        "_terms",
        "cache_limit",
        "snapshot_index",
        "snapshot_term",
    )

    def __init__(
        self,
        first_index: int = 0,
        terms: Iterable[int] = (),
        *,
        snapshot_index: int = 0,
        snapshot_term: int = 0,
        cache_bytes: int = 8 << 20,
    ) -> None:
        self._terms = array("Q", terms)
        self._first = first_index if self._terms else 0
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term
        self.cache_limit = cache_bytes
        self._cache: dict[int, LogEntry] = {}
        self._cache_bytes = 0

    # ---------------------------------------------------------------- indexes and terms

    @property
    def first_index(self) -> int:
        """The first index in the log store, 0 when it holds nothing."""
        return self._first

    @property
    def log_last_index(self) -> int:
        """The last index in the log store, 0 when it holds nothing."""
        return self._first + len(self._terms) - 1 if self._terms else 0

    @property
    def last_index(self) -> int:
        """Go's ``getLastIndex``: the last index of the log or of the snapshot."""
        return max(self.log_last_index, self.snapshot_index)

    def last_entry(self) -> tuple[int, int]:
        """Go's ``getLastEntry``: (index, term) of the newest entry, log or snapshot."""
        last = self.log_last_index
        if last and last >= self.snapshot_index:
            return last, self._terms[-1]
        return self.snapshot_index, self.snapshot_term

    def term_at(self, index: int) -> int | None:
        """The term of ``index`` (0 for index 0), or None when neither the log nor the
        snapshot knows it."""
        if index == 0:
            return 0
        offset = index - self._first
        if self._terms and 0 <= offset < len(self._terms):
            return self._terms[offset]
        if index == self.snapshot_index:
            return self.snapshot_term
        return None

    def has_entry(self, index: int) -> bool:
        """The log store holds ``index``."""
        return bool(self._terms) and self._first <= index <= self.log_last_index

    # ---------------------------------------------------------------- changes

    def append(self, entries: Sequence[LogEntry]) -> None:
        """Entries that follow the log's last index (or start an empty log)."""
        if not entries:
            return
        if not self._terms:
            self._first = entries[0].index
        elif entries[0].index != self.log_last_index + 1:
            raise ValueError(
                f"entries from {entries[0].index} do not follow the log's {self.log_last_index}"
            )
        self._terms.extend(entry.term for entry in entries)
        self.cache_put(entries)

    def truncate_from(self, index: int) -> tuple[int, int] | None:
        """Drop ``index`` and everything after it; the (first, last) deleted, if any."""
        last = self.log_last_index
        if not self._terms or index > last:
            return None
        start = max(index, self._first)
        del self._terms[start - self._first :]
        if not self._terms:
            self._first = 0
        for i in range(last, start - 1, -1):
            entry = self._cache.pop(i, None)
            if entry is not None:
                self._cache_bytes -= _cost(entry)
        return start, last

    def compact_through(self, index: int) -> tuple[int, int] | None:
        """Drop the log prefix through ``index``; the (first, last) deleted, if any."""
        if not self._terms or index < self._first:
            return None
        last = min(index, self.log_last_index)
        first = self._first
        del self._terms[: last - first + 1]
        self._first = last + 1 if self._terms else 0
        for i in range(first, last + 1):
            entry = self._cache.pop(i, None)
            if entry is not None:
                self._cache_bytes -= _cost(entry)
        return first, last

    def set_snapshot(self, index: int, term: int) -> None:
        self.snapshot_index, self.snapshot_term = index, term

    # ---------------------------------------------------------------- entry cache

    def cache_get(self, index: int) -> LogEntry | None:
        return self._cache.get(index)

    def cache_put(self, entries: Sequence[LogEntry]) -> None:
        """Remember appended entries (newest last), evicting the oldest beyond the limit."""
        cache = self._cache
        for entry in entries:
            old = cache.pop(entry.index, None)
            if old is not None:
                self._cache_bytes -= _cost(old)
            cache[entry.index] = entry
            self._cache_bytes += _cost(entry)
        while self._cache_bytes > self.cache_limit and cache:
            oldest = next(iter(cache))
            self._cache_bytes -= _cost(cache.pop(oldest))

    @property
    def cache_bytes(self) -> int:
        return self._cache_bytes


def _cost(entry: LogEntry) -> int:
    return len(entry.data) + len(entry.extensions) + ENTRY_OVERHEAD
