"""What every storage back end of the Raft log shares (pure: no I/O, no trio).

The SQLite store (:mod:`agentrpc.raft.sqlite_store`) and the memory store
(:mod:`agentrpc.raft.memory_store`) must behave identically (the simulation runs on one, a
real server on the other), so the rules that decide what they accept and what they raise live
here once:

* the errors: :class:`StoreError` and its kinds :class:`StoreClosed`, :class:`StoreCorrupt`
  and :class:`StoreFailed`;
* what a valid call is: :func:`check_entries`, :func:`check_index`, :func:`check_key` and
  :func:`check_value` raise ``TypeError``/``ValueError`` before anything is written, so a bad
  call never reaches the disk and never half-applies;
* how a stable store keeps a uint64 (:func:`encode_uint64` / :func:`decode_uint64`: 8 bytes
  big-endian, as raft-boltdb's ``uint64ToBytes`` does, so a value set with ``set_uint64`` reads
  back through ``get_bytes`` the same way in Go and here);
* :class:`StoreBase`: what a back end gets from its bytes calls and ``close`` alone (the
  uint64 calls, the context manager).

Indexes and terms are Go ``uint64``: any ``int`` in ``0 .. 2**64-1`` is accepted (an index
must be at least 1: Raft numbers entries from 1 and 0 means "none" in ``first_index``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Self

from ..protocol.msgpack_wire import MAX_UINT64
from .log import LogEntry

__all__ = [
    "MAX_LOG_TYPE",
    "MAX_UINT64",
    "StoreBase",
    "StoreClosed",
    "StoreCorrupt",
    "StoreError",
    "StoreFailed",
    "check_entries",
    "check_index",
    "check_key",
    "check_value",
    "decode_uint64",
    "encode_uint64",
]

MAX_LOG_TYPE: Final = 0xFF
"""``raft.LogType`` is a uint8."""


class StoreError(Exception):
    """A storage operation failed; the message says which and why."""


class StoreClosed(StoreError):
    """The store was closed (or, for the memory store, crashed): no call may use it."""


class StoreCorrupt(StoreError):
    """The store's files are damaged or are not a store of this kind: it cannot be opened."""


class StoreFailed(StoreError):
    """An I/O error during a write left the store's durability unknown. Every later write
    fails with this error: the process must reopen the store (after a restart) rather than
    acknowledge anything it cannot be sure was written."""


def check_index(index: object, name: str = "index") -> int:
    """``index`` as a uint64; ``TypeError``/``ValueError`` otherwise."""
    if type(index) is not int:
        raise TypeError(f"{name} must be an int, not {type(index).__name__}")
    if not 0 <= index <= MAX_UINT64:
        raise ValueError(f"{name} {index} is outside the uint64 range")
    return index


def check_entries(entries: Sequence[LogEntry]) -> None:
    """Refuse (before anything is stored) a batch holding a value no store can keep."""
    for entry in entries:
        if not isinstance(entry, LogEntry):
            raise TypeError(f"expected LogEntry, got {type(entry).__name__}")
        check_index(entry.index)
        if entry.index == 0:
            raise ValueError("log entry index 0 is reserved (Raft numbers entries from 1)")
        check_index(entry.term, "term")
        if isinstance(entry.type, bool) or not isinstance(entry.type, int):
            raise TypeError(f"log type must be an int, not {type(entry.type).__name__}")
        if not 0 <= entry.type <= MAX_LOG_TYPE:
            raise ValueError(f"log type {entry.type} is outside the uint8 range")
        if type(entry.data) is not bytes:
            raise TypeError(f"log data must be bytes, not {type(entry.data).__name__}")
        if type(entry.extensions) is not bytes:
            raise TypeError(f"log extensions must be bytes, not {type(entry.extensions).__name__}")


def check_key(key: object) -> bytes:
    """A stable-store key: non-empty bytes."""
    if type(key) is not bytes:
        raise TypeError(f"stable key must be bytes, not {type(key).__name__}")
    if not key:
        raise ValueError("stable key must not be empty")
    return key


def check_value(value: object) -> bytes:
    """A stable-store value: bytes (empty allowed)."""
    if type(value) is not bytes:
        raise TypeError(f"stable value must be bytes, not {type(value).__name__}")
    return value


def encode_uint64(value: int) -> bytes:
    """A uint64 as the stable store keeps it: 8 bytes, big-endian."""
    return check_index(value, "value").to_bytes(8, "big")


def decode_uint64(raw: bytes, key: bytes) -> int:
    """The uint64 a stable value holds; ``StoreError`` when it is not 8 bytes (the key was set
    with ``set_bytes`` to something else)."""
    if len(raw) != 8:
        raise StoreError(f"stable key {key!r} holds {len(raw)} bytes, not a uint64")
    return int.from_bytes(raw, "big")


class StoreBase:
    """The calls a store derives from ``set_bytes``/``get_bytes`` and ``close``."""

    __slots__ = ()

    def set_bytes(self, key: bytes, value: bytes) -> None:
        raise NotImplementedError

    def get_bytes(self, key: bytes) -> bytes | None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def set_uint64(self, key: bytes, value: int) -> None:
        self.set_bytes(key, encode_uint64(value))

    def get_uint64(self, key: bytes) -> int | None:
        raw = self.get_bytes(key)
        return None if raw is None else decode_uint64(raw, key)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
