"""The embedded durable store of a Raft server: log and stable store in one SQLite database.

:class:`SQLiteStore` implements :class:`~agentrpc.raft.store_api.LogStore` and
:class:`~agentrpc.raft.store_api.StableStore` over the stdlib's :mod:`sqlite3`, in one file
(``data_dir/raft/raft.db`` by convention, :data:`DB_FILE_NAME`, the name Consul gives its
raft-boltdb file).

Durability. The database runs in WAL mode with ``synchronous=FULL``. In WAL mode SQLite's
``NORMAL`` level fsyncs only at checkpoints, so a transaction that returned may still be lost
to a power cut (kill -9 alone would not show it: the page cache survives a process). Raft may
not forget what it acknowledged: a forgotten vote lets a node vote twice in one term, a
forgotten entry can lose a committed write. ``FULL`` fsyncs the WAL at every commit, so when a
write method returns, its effect is on disk. A crash at any point leaves each write whole or
absent: SQLite's WAL recovery ignores frames after the last complete, checksummed commit (the
torn last transaction is rolled back; ``tests/raft/test_sqlite_store.py`` cuts a WAL in the
middle of a transaction and kills writers with SIGKILL to show it).

Group commit. Every write (``store_entries``, ``delete_range``, ``set_bytes``/``set_uint64``)
is queued; whichever calling thread finds no commit in progress becomes the writer, takes the
queued writes (at most :data:`MAX_BATCH_WRITES` writes or :data:`MAX_BATCH_BYTES` bytes),
applies them in queue order in one transaction and commits it with one fsync, while later
writes queue up for the next round. Each caller returns once the transaction holding its
write is committed, or raises what made it fail. No timer: a lone writer commits at once,
concurrent writers share the fsync that is already due. :attr:`SQLiteStore.commits` and
:attr:`SQLiteStore.writes` count transactions and the writes they held.
``group_commit=False`` gives each write its own transaction (for the benchmark).

Threads. The store is safe to call from any thread (it is meant to be called from worker
threads: see :mod:`agentrpc.raft.store_thread`). It holds two connections, opened with
``check_same_thread=False`` and never used by two threads at once: the writer connection,
used only by the thread that is the writer of the current round (the round is the lock), and a
reader connection under its own lock. WAL lets the reader run while the writer commits, and it
sees committed (so durable) data only. ``first_index``/``last_index`` come from memory,
read back from the table at open and inside each transaction that touches the log (two
index lookups, whatever the log's length), so they stay right across appends, deletes of any
range (a compacted prefix, a truncated suffix, a gap) and reopening.

Values. Indexes and terms are Go uint64s; SQLite's INTEGER is signed, so they are stored
biased by ``2**63`` (order-preserving), which keeps the whole uint64 range valid. Stable
uint64s are 8-byte big-endian blobs, as raft-boltdb stores them.

Errors. Invalid arguments raise ``TypeError``/``ValueError`` before anything is queued. A
write that SQLite refuses without harm (the disk is full, the database is locked by another
process past the busy timeout) raises :class:`StoreError` and the store stays usable. Any
other failure of a write (an I/O error, corruption, a failed rollback) makes the store
*failed*: that write and every later one raise :class:`StoreFailed` (reads still work), since
after a failed fsync nothing says what reached the disk. Opening a file that is damaged or is
not a Raft store raises :class:`StoreCorrupt`; an unknown schema version raises
:class:`StoreError`. At open, ``PRAGMA quick_check`` runs by default (``check="quick"``; see
``docs/raft-storage.md`` for its cost), ``"full"`` runs ``integrity_check``, ``"none"`` skips.

Resources. Two connections and their caches (SQLite's default 2 MiB each); the WAL file is cut
back to :data:`WAL_SIZE_LIMIT` after checkpoints; the write queue holds at most one write per
calling thread (each caller waits for its own write).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal

from ..log_protocol import LogLike, NullLog, clip
from .durable_files import make_private_dir, touch_private
from .log import LogEntry
from .store_common import (
    StoreBase,
    StoreClosed,
    StoreCorrupt,
    StoreError,
    StoreFailed,
    check_entries,
    check_index,
    check_key,
    check_value,
)

__all__ = [
    "DB_FILE_NAME",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_WRITES",
    "SCHEMA_VERSION",
    "WAL_SIZE_LIMIT",
    "SQLiteStore",
]

DB_FILE_NAME: Final = "raft.db"
"""The database's file name under ``data_dir/raft/``."""
SCHEMA_VERSION: Final = 1
"""The layout this module writes, kept in the ``meta`` table; any other version is refused."""
MAX_BATCH_WRITES: Final = 256
"""Writes one group-commit transaction may hold."""
MAX_BATCH_BYTES: Final = 16 * 1024 * 1024
"""Bytes (entry data and extensions, keys and values) one transaction may hold; a single
write larger than this still gets a transaction of its own."""
WAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
"""The WAL file is truncated to this size after a checkpoint (``journal_size_limit``)."""
DEFAULT_BUSY_TIMEOUT: Final = 10.0
"""Seconds a statement waits for a lock held by another process before failing."""

_BIAS: Final = 1 << 63
_ENTRY_OVERHEAD: Final = 40
"""Bytes counted per entry or key besides its blobs, for :data:`MAX_BATCH_BYTES`."""

# SQLite primary result codes after which a write failed without harm: nothing was written
# and the database is as it was (see https://www.sqlite.org/rescode.html).
_HARMLESS_CODES: Final = frozenset({5, 6, 13, 18})  # BUSY, LOCKED, FULL, TOOBIG

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS entries (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL,"
    " type INTEGER NOT NULL, data BLOB NOT NULL, extensions BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
)
_SELECT_ENTRY: Final = "SELECT idx, term, type, data, extensions FROM entries"
_SELECT_BOUNDS: Final = "SELECT (SELECT min(idx) FROM entries), (SELECT max(idx) FROM entries)"
"""The first and last stored index, each a lookup at one end of the primary key's b-tree.
One ``SELECT min(idx), max(idx)`` would be a full scan: SQLite's min/max optimisation applies
only to a query with a single aggregate, and this runs in every write transaction."""

Check = Literal["quick", "full", "none"]

_ENTRIES: Final = 0
_DELETE: Final = 1
_SET: Final = 2
_WRITE_SQL: Final = (
    "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)",
    "DELETE FROM entries WHERE idx BETWEEN ? AND ?",
    "INSERT OR REPLACE INTO kv VALUES (?, ?)",
)
"""The statement of each kind of write, run over the write's rows."""


class _Failure:
    """Why a write failed: raised as ``kind(message)`` from ``cause`` in each caller."""

    __slots__ = ("cause", "kind", "message")

    def __init__(self, kind: type[StoreError], message: str, cause: BaseException | None) -> None:
        self.kind = kind
        self.message = message
        self.cause = cause

    def throw(self) -> None:
        raise self.kind(self.message) from self.cause


class _Write:
    """One queued write and, once done, its outcome."""

    __slots__ = ("done", "failure", "kind", "rows", "size")

    def __init__(self, kind: int, rows: Sequence[tuple[object, ...]], size: int) -> None:
        self.kind = kind
        self.rows = rows
        self.size = size
        self.done = False
        self.failure: _Failure | None = None


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


class SQLiteStore(StoreBase):
    """A Raft log store and stable store in the SQLite database at ``path``.

    The parent directory is created (0o700) if missing, the database file (0o600) too. Use as
    a context manager or call :meth:`close`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        check: Check = "quick",
        group_commit: bool = True,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        log: LogLike | None = None,
    ) -> None:
        if check not in ("quick", "full", "none"):
            raise ValueError(f"check must be 'quick', 'full' or 'none', not {check!r}")
        self.path = Path(path).absolute()
        self._log = log if log is not None else NullLog()
        self._batch_writes = MAX_BATCH_WRITES if group_commit else 1
        self._cond = threading.Condition(threading.Lock())
        self._pending: deque[_Write] = deque()
        self._writing = False
        self._closed = False
        self._failed: _Failure | None = None
        self._commits = 0
        self._writes = 0
        self._read_lock = threading.Lock()
        self._bounds = (0, 0)
        make_private_dir(self.path.parent)
        touch_private(self.path)
        self._writer = self._connect(busy_timeout)
        self._reader: sqlite3.Connection | None = None
        try:
            self._prepare(check)
            self._reader = self._connect(busy_timeout)
            self._reader.execute("PRAGMA query_only=ON")
            self._bounds = self._read_bounds(self._writer)
        except BaseException:
            self._writer.close()
            if self._reader is not None:
                self._reader.close()
            raise

    # -- opening ---------------------------------------------------------------------------

    def _connect(self, busy_timeout: float) -> sqlite3.Connection:
        try:
            return sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc

    def _prepare(self, check: Check) -> None:
        conn = self._writer
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"{self.path}: SQLite refused WAL mode (journal_mode={mode})")
            conn.execute("PRAGMA synchronous=FULL")
            if conn.execute("PRAGMA synchronous").fetchone()[0] != 2:
                raise StoreError(f"{self.path}: SQLite refused synchronous=FULL")
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            if check != "none":
                pragma = "quick_check" if check == "quick" else "integrity_check"
                problems = [
                    " ".join(str(row[0]).split()) for row in conn.execute(f"PRAGMA {pragma}(5)")
                ]
                if problems != ["ok"]:
                    raise StoreCorrupt(f"{self.path} failed {pragma}: {clip('; '.join(problems))}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._create_schema(conn)
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        except sqlite3.DatabaseError as exc:
            if _primary_code(exc) in (11, 26):  # CORRUPT, NOTADB
                raise StoreCorrupt(f"{self.path} is damaged or not a database: {exc}") from exc
            raise StoreError(f"cannot open {self.path}: {exc}") from exc

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        tables = {
            str(row[0]) for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if tables and "meta" not in tables:
            names = clip(", ".join(sorted(tables)))
            raise StoreCorrupt(f"{self.path} is not a raft store (tables: {names})")
        for statement in _SCHEMA:
            conn.execute(statement)
        row = conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO meta (name, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
            )
            self._log.info(f"raft store: created {self.path}")
        elif row[0] != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {clip(row[0])}; this build reads version "
                f"{SCHEMA_VERSION}"
            )

    @staticmethod
    def _read_bounds(conn: sqlite3.Connection) -> tuple[int, int]:
        low, high = conn.execute(_SELECT_BOUNDS).fetchone()
        if low is None:
            return (0, 0)
        return (int(low) + _BIAS, int(high) + _BIAS)

    # -- counters and lifecycle ------------------------------------------------------------

    @property
    def commits(self) -> int:
        """Write transactions committed since open."""
        return self._commits

    @property
    def writes(self) -> int:
        """Writes (calls) committed since open; ``writes / commits`` is the group size."""
        return self._writes

    def queued(self) -> int:
        """Writes waiting for a transaction (not counting one being committed)."""
        with self._cond:
            return len(self._pending)

    def close(self) -> None:
        """Refuse new calls, let writes already queued finish, then close the database.
        Idempotent."""
        with self._cond:
            if self._closed and self._reader is None:
                return
            self._closed = True
            while self._writing or self._pending:
                self._cond.wait()
            with self._read_lock:
                reader, self._reader = self._reader, None
                if reader is not None:
                    reader.close()
                self._writer.close()

    # -- LogStore --------------------------------------------------------------------------

    def first_index(self) -> int:
        self._check_open()
        return self._bounds[0]

    def last_index(self) -> int:
        self._check_open()
        return self._bounds[1]

    def get_entry(self, index: int) -> LogEntry | None:
        check_index(index)
        rows = self._read(f"{_SELECT_ENTRY} WHERE idx = ?", (index - _BIAS,))
        return _entry(rows[0]) if rows else None

    def get_range(self, first: int, last: int) -> list[LogEntry]:
        check_index(first, "first")
        check_index(last, "last")
        if first > last:
            return []
        rows = self._read(
            f"{_SELECT_ENTRY} WHERE idx BETWEEN ? AND ? ORDER BY idx", (first - _BIAS, last - _BIAS)
        )
        return [_entry(row) for row in rows]

    def store_entries(self, entries: Sequence[LogEntry]) -> None:
        check_entries(entries)
        if not entries:
            self._check_open()
            return
        rows = [
            (e.index - _BIAS, e.term - _BIAS, int(e.type), e.data, e.extensions) for e in entries
        ]
        size = sum(len(e.data) + len(e.extensions) for e in entries)
        self._submit(_Write(_ENTRIES, rows, size + _ENTRY_OVERHEAD * len(rows)))

    def delete_range(self, first: int, last: int) -> None:
        check_index(first, "first")
        check_index(last, "last")
        if first > last:
            self._check_open()
            return
        self._submit(_Write(_DELETE, [(first - _BIAS, last - _BIAS)], _ENTRY_OVERHEAD))

    # -- StableStore -----------------------------------------------------------------------

    def set_bytes(self, key: bytes, value: bytes) -> None:
        check_key(key)
        check_value(value)
        self._submit(_Write(_SET, [(key, value)], len(key) + len(value) + _ENTRY_OVERHEAD))

    def get_bytes(self, key: bytes) -> bytes | None:
        check_key(key)
        rows = self._read("SELECT value FROM kv WHERE key = ?", (key,))
        if not rows:
            return None
        value = rows[0][0]
        assert isinstance(value, bytes)
        return value

    # -- reading ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"raft store {self.path} is closed")

    def _read(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        with self._read_lock:
            reader = self._reader
            if reader is None or self._closed:
                raise StoreClosed(f"raft store {self.path} is closed")
            try:
                return reader.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"raft store {self.path}: read failed: {exc}") from exc

    # -- writing (group commit) ------------------------------------------------------------

    def _submit(self, write: _Write) -> None:
        cond = self._cond
        with cond:
            self._check_open()
            if self._failed is not None:
                self._failed.throw()
            self._pending.append(write)
            while not write.done:
                if self._writing:
                    cond.wait()
                    continue
                if self._failed is not None:
                    self._finish(list(self._pending), self._failed)
                    self._pending.clear()
                    break
                batch = self._take_batch()
                self._writing = True
                outcome: _Failure | None = _Failure(
                    StoreFailed, f"raft store {self.path}: the writer was interrupted", None
                )
                cond.release()
                try:
                    outcome = self._commit(batch)
                finally:
                    cond.acquire()
                    self._writing = False
                    if outcome is not None and outcome.kind is StoreFailed:
                        self._failed = outcome
                    self._finish(batch, outcome)
        if write.failure is not None:
            write.failure.throw()

    def _take_batch(self) -> list[_Write]:
        pending = self._pending
        batch = [pending.popleft()]
        size = batch[0].size
        while pending and len(batch) < self._batch_writes:
            size += pending[0].size
            if size > MAX_BATCH_BYTES:
                break
            batch.append(pending.popleft())
        return batch

    def _finish(self, batch: list[_Write], outcome: _Failure | None) -> None:
        """Mark ``batch`` done (under the condition's lock) and wake every waiter."""
        for write in batch:
            write.done = True
            write.failure = outcome
        self._cond.notify_all()

    def _commit(self, batch: list[_Write]) -> _Failure | None:
        """Apply ``batch`` in one transaction and commit it; the failure, if any."""
        conn = self._writer
        touches_entries = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            for write in batch:
                touches_entries = touches_entries or write.kind != _SET
                conn.executemany(_WRITE_SQL[write.kind], write.rows)
            bounds = self._read_bounds(conn) if touches_entries else self._bounds
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            return self._failed_write(conn, exc)
        self._bounds = bounds
        self._commits += 1
        self._writes += len(batch)
        return None

    def _failed_write(self, conn: sqlite3.Connection, exc: sqlite3.Error) -> _Failure:
        harmless = _primary_code(exc) in _HARMLESS_CODES
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error as rollback_error:
            harmless = False
            self._log.error(f"raft store {self.path}: rollback failed: {rollback_error}")
        if harmless:
            self._log.warn(f"raft store {self.path}: write failed: {exc}")
            return _Failure(StoreError, f"raft store {self.path}: write failed: {exc}", exc)
        self._log.error(f"raft store {self.path}: write failed, unusable until reopened: {exc}")
        return _Failure(
            StoreFailed, f"raft store {self.path}: write failed, durability unknown: {exc}", exc
        )


def _entry(row: tuple[object, ...]) -> LogEntry:
    index, term, kind, data, extensions = row
    assert isinstance(index, int) and isinstance(term, int) and isinstance(kind, int)
    assert isinstance(data, bytes) and isinstance(extensions, bytes)
    return LogEntry(index + _BIAS, term + _BIAS, kind, data, extensions)
