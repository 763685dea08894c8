"""What the Raft core and engine need of durable storage (hashicorp/raft's LogStore and
StableStore, shaped for Python). Back ends: SQLite (the embedded default) and memory (``--dev``
and the simulation). Calls are synchronous and may block: the Trio engine runs them off the
event loop (``trio.to_thread.run_sync``), the simulation calls them directly.

Durability contract: when ``store_entries`` / ``set_*`` return, the data is on disk (fsync'd
for the SQLite store); a crash at any point leaves either the whole call's effect or none."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .log import LogEntry

# The stable store's keys, as hashicorp/raft names them (raft.go): term and vote.
KEY_CURRENT_TERM = b"CurrentTerm"
KEY_LAST_VOTE_TERM = b"LastVoteTerm"
KEY_LAST_VOTE_CAND = b"LastVoteCand"


class LogStore(Protocol):
    def first_index(self) -> int:
        """The index of the first stored entry, 0 when the log is empty."""
        ...

    def last_index(self) -> int:
        """The index of the last stored entry, 0 when the log is empty."""
        ...

    def get_entry(self, index: int) -> LogEntry | None:
        """The entry at ``index``, or None when it is not stored (compacted or never written)."""
        ...

    def get_range(self, first: int, last: int) -> list[LogEntry]:
        """Entries ``first..last`` inclusive that are stored, in index order."""
        ...

    def store_entries(self, entries: Sequence[LogEntry]) -> None:
        """Store the entries (overwriting any with the same index) atomically and durably."""
        ...

    def delete_range(self, first: int, last: int) -> None:
        """Delete entries ``first..last`` inclusive, atomically and durably."""
        ...


class StableStore(Protocol):
    def set_bytes(self, key: bytes, value: bytes) -> None: ...

    def get_bytes(self, key: bytes) -> bytes | None:
        """The value, or None when the key was never set."""
        ...

    def set_uint64(self, key: bytes, value: int) -> None: ...

    def get_uint64(self, key: bytes) -> int | None: ...
