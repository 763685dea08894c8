"""A child process that writes to a Raft store until it is killed (SIGKILL) by the crash tests.

Run as ``python crash_writer.py MODE PATH SEED``; it prints ``R`` once the store is open, then
one line per step to stdout, each flushed before the next step starts:

* ``ops`` (SQLite log and stable store, one thread): ``B <op>`` before each write and ``K``
  once it returned (acknowledged). Ops: ``A first last term`` (append, data from
  :func:`entry_for`), ``D first last`` (delete_range: compaction of a prefix, or truncation of
  a suffix before re-appending it in a new term), ``S value`` (CurrentTerm), ``V value``
  (LastVoteCand). At most one op is unacknowledged when the process dies.
* ``lanes`` (SQLite log, four threads appending at once, so that group commits are cut):
  thread ``t`` appends indexes ``base + 4n + t`` one by one and prints ``A <index>`` after each.
* ``snapshots``: snapshots of growing index, state from :func:`snapshot_bytes`, written in
  chunks; ``S <id>`` after each close.

The tests (through :func:`run_and_kill`) read these lines to know what was acknowledged, kill
the process at a random moment, reopen the store and check that nothing acknowledged was lost
and nothing half-written shows.
"""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from agentrpc.raft.log import LogEntry, LogType
from agentrpc.raft.snapshots import FileSnapshotStore
from agentrpc.raft.sqlite_store import SQLiteStore
from agentrpc.raft.store_api import KEY_CURRENT_TERM, KEY_LAST_VOTE_CAND

LANES = 4
MAX_LOG = 1500
"""Entries kept before the ops writer compacts a prefix (keeps every check small)."""
_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def entry_for(index: int, term: int) -> LogEntry:
    """The entry the writers store at ``index`` in ``term`` (sizes from 32 bytes to 3 KiB, so
    that a transaction spans pages and sometimes many)."""
    seed = hashlib.sha256(f"{index}:{term}".encode()).digest()
    data = seed * (1 + (index * 7 + term) % 100)
    extensions = seed[:5] if index % 5 == 0 else b""
    return LogEntry(index, term, LogType.COMMAND, data, extensions)


def vote_for(value: int) -> bytes:
    return f"127.0.0.1:{8300 + value % 1000}".encode()


def snapshot_size(index: int) -> int:
    return (index * 7919) % 3_000_000


def snapshot_bytes(index: int) -> bytes:
    """The state of the snapshot at ``index``: deterministic, 0 to 3 MB."""
    block = hashlib.sha256(f"snapshot {index}".encode()).digest() * 2048  # 64 KiB
    size = snapshot_size(index)
    return (block * (size // len(block) + 1))[:size]


def run_ops(path: str, seed: int) -> None:
    rng = random.Random(seed)
    with SQLiteStore(path) as store:
        term = (store.get_uint64(KEY_CURRENT_TERM) or 0) + 1
        say("R")
        while True:
            first, last = store.first_index(), store.last_index()
            roll = rng.random()
            args: tuple[int, ...]
            if last - first > MAX_LOG:
                op, args = "D", (first, last - MAX_LOG // 2)
            elif roll < 0.08 and last > first:
                op, args = "D", (max(first, last - rng.randint(1, 30)), last)
                term += 1
            elif roll < 0.16:
                term += 1
                op, args = "S", (term,)
            elif roll < 0.2:
                op, args = "V", (rng.randint(0, 10**6),)
            else:
                start = last + 1
                op, args = "A", (start, start + rng.randint(0, 63), term)
            say("B " + " ".join([op, *map(str, args)]))
            if op == "A":
                store.store_entries([entry_for(i, args[2]) for i in range(args[0], args[1] + 1)])
            elif op == "D":
                store.delete_range(args[0], args[1])
            elif op == "S":
                store.set_uint64(KEY_CURRENT_TERM, args[0])
            else:
                store.set_bytes(KEY_LAST_VOTE_CAND, vote_for(args[0]))
            say("K")


def run_lanes(path: str, seed: int) -> None:
    store = SQLiteStore(path)
    base = store.last_index() + 1
    say("R")

    def lane(offset: int) -> None:
        index = base + offset
        while True:
            store.store_entries([entry_for(index, seed)])
            say(f"A {index}")
            index += LANES

    threads = [threading.Thread(target=lane, args=(t,), daemon=True) for t in range(LANES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run_snapshots(path: str, seed: int) -> None:
    rng = random.Random(seed)
    snapshots = FileSnapshotStore(path)
    listed = snapshots.list()
    index = listed[0].index if listed else 0
    say("R")
    while True:
        index += rng.randint(1, 50)
        state = snapshot_bytes(index)
        sink = snapshots.create(index, 1 + index // 100, b"config", index)
        position = 0
        while position < len(state):
            step = rng.randint(1, 256 * 1024)
            sink.write(state[position : position + step])
            position += step
        meta = sink.close()
        say(f"S {meta.id}")


# -- the test's side ---------------------------------------------------------------------


def run_and_kill(argv: list[str], rng: random.Random) -> list[str]:
    """Start a crash writer, let it run 50-500 ms after it is ready, SIGKILL it; the complete
    lines it printed."""
    err = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    argv = [sys.executable, str(Path(__file__).resolve()), *argv]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err)
    assert child.stdout is not None
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert child.stdout is not None
        for raw in child.stdout:
            if raw.endswith(b"\n"):
                lines.append(raw.decode().rstrip("\n"))
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def failed(what: str) -> AssertionError:
        err.seek(0)
        return AssertionError(f"the crash writer {what}: {err.read().decode()[-2000:]}")

    try:
        if not ready.wait(20):
            raise failed("did not start")
        assert lines[0] == "R"
        time.sleep(rng.uniform(0.05, 0.5))
        if child.poll() is not None:
            raise failed("died")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        reader.join(10)
        child.stdout.close()
        err.close()
    assert child.returncode == -signal.SIGKILL
    return lines[1:]


# -- the child's side --------------------------------------------------------------------


def main() -> None:
    mode, path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    {"ops": run_ops, "lanes": run_lanes, "snapshots": run_snapshots}[mode](path, seed)


if __name__ == "__main__":
    main()
