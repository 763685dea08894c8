"""The Raft log store on this disk: agentrpc's SQLite store beside Go's raft-boltdb.

``python -m benchmarks.raft_store`` (3 rounds, about 1 minute; ``--quick``: 1 short round)
measures appends per second and append latency (p50, p99) with 1, 16 and 64 concurrent
appenders, each appending one 256-byte entry at a time and waiting until it is durable:

* ``sqlite-group``: :class:`agentrpc.raft.sqlite_store.SQLiteStore` with group commit
  (concurrent appends share one transaction and one fsync);
* ``sqlite-single``: the same store with ``group_commit=False`` (a transaction per append);
* ``raft-boltdb``: Debian's ``github.com/hashicorp/raft-boltdb`` (the store Consul uses),
  ``StoreLog`` from as many goroutines (``benchmarks/go/raft_store``, built by
  :mod:`benchmarks.go_build`). Without Go the run measures SQLite alone and says so.

Same fsync policy: every append returns only once durable (SQLite WAL with
``synchronous=FULL``, bolt's fdatasync per transaction). Each cell runs in a fresh process on
a fresh database in ``--dir`` (default: the temporary directory, same disk as the checkout
here), after a 0.3 s warm-up, over a fixed window; the stores take turns cell by cell, the
order rotating every round; figures are medians over rounds. The load average before and after
each cell is kept, since the machine is shared.

It also measures what opening costs (``check="none"``, ``"quick"``, ``"full"``) for stores
of 10,000 and 100,000 entries.

Writes ``benchmarks/results/<date>-raft-store/`` (``--out DIR``): ``report.md`` and
``results.json``. ``--cell`` is the child mode that measures one SQLite cell.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from . import go_build
from .harness import loadavg, percentile, say
from .servers import REPO_ROOT

RESULTS: Final = REPO_ROOT / "benchmarks" / "results"
STORES: Final = ("sqlite-group", "sqlite-single", "raft-boltdb")
ENTRY_BYTES: Final = 256
WARMUP: Final = 0.3
CELL_TIMEOUT: Final = 120.0


@dataclass(frozen=True)
class Plan:
    rounds: int
    window: float
    writers: tuple[int, ...] = (1, 16, 64)
    open_sizes: tuple[int, ...] = (10_000, 100_000)


PLANS: Final = {
    "full": Plan(rounds=3, window=2.0),
    "quick": Plan(rounds=1, window=0.5, open_sizes=(10_000,)),
}


# -- the child: one SQLite cell ----------------------------------------------------------------


def measure_sqlite(directory: Path, writers: int, window: float, group: bool) -> dict[str, Any]:
    """``writers`` threads appending one entry at a time for ``window`` seconds."""
    from agentrpc.raft.log import LogEntry, LogType
    from agentrpc.raft.sqlite_store import SQLiteStore

    data = bytes(range(256)) * (ENTRY_BYTES // 256)
    store = SQLiteStore(directory / "raft.db", group_commit=group)
    indexes = itertools.count(1)
    measuring = threading.Event()
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(writers)]
    counts: dict[str, int] = {}

    def append(slot: int) -> None:
        mine = latencies[slot]
        while not stop.is_set():
            entry = LogEntry(next(indexes), 1, LogType.COMMAND, data)
            started = time.perf_counter()
            store.store_entries([entry])
            if measuring.is_set() and not stop.is_set():
                mine.append(time.perf_counter() - started)

    threads = [threading.Thread(target=append, args=(slot,)) for slot in range(writers)]
    for thread in threads:
        thread.start()
    time.sleep(WARMUP)
    before = (store.commits, store.writes)
    measuring.set()
    window_start = time.perf_counter()
    time.sleep(window)
    stop.set()
    elapsed = time.perf_counter() - window_start
    counts = {"commits": store.commits - before[0], "writes": store.writes - before[1]}
    for thread in threads:
        thread.join(CELL_TIMEOUT)
    store.close()
    done = [value for per_thread in latencies for value in per_thread]
    return {
        "store": "sqlite-group" if group else "sqlite-single",
        "writers": writers,
        "appends": len(done),
        "seconds": elapsed,
        "per_second": len(done) / elapsed,
        "p50_us": percentile(done, 0.50) * 1e6,
        "p99_us": percentile(done, 0.99) * 1e6,
        "writes_per_commit": counts["writes"] / max(counts["commits"], 1),
    }


# -- the parent ----------------------------------------------------------------------------------


def run_cell(store: str, writers: int, plan: Plan, base: Path, go: Path | None) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix=f"raft-store-{store}-", dir=base))
    try:
        if store == "raft-boltdb":
            assert go is not None
            argv = [str(go), "-dir", str(directory), "-writers", str(writers),
                    "-seconds", str(plan.window), "-warmup", str(WARMUP),
                    "-size", str(ENTRY_BYTES)]  # fmt: skip
        else:
            argv = [sys.executable, "-m", "benchmarks.raft_store", "--cell", store,
                    "--cell-dir", str(directory), "--writers", str(writers),
                    "--window", str(plan.window)]  # fmt: skip
        load_before = loadavg()
        done = subprocess.run(
            argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=CELL_TIMEOUT, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{store} cell failed: {done.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        result["load_before"] = load_before
        result["load_after"] = loadavg()
        return result
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def measure_open(size: int, base: Path, repeats: int = 3) -> dict[str, Any]:
    """Seconds to open a store of ``size`` entries, by check."""
    from agentrpc.raft.log import LogEntry, LogType
    from agentrpc.raft.sqlite_store import SQLiteStore

    directory = Path(tempfile.mkdtemp(prefix="raft-store-open-", dir=base))
    try:
        path = directory / "raft.db"
        data = bytes(range(256)) * (ENTRY_BYTES // 256)
        with SQLiteStore(path, check="none") as store:
            for first in range(1, size + 1, 1000):
                store.store_entries(
                    [LogEntry(i, 1, LogType.COMMAND, data) for i in range(first, first + 1000)]
                )
        result: dict[str, Any] = {"entries": size, "bytes": path.stat().st_size}
        for check in ("none", "quick", "full"):
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                SQLiteStore(path, check=check).close()
                times.append(time.perf_counter() - started)
            result[f"{check}_ms"] = statistics.median(times) * 1e3
        return result
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def median_cells(cells: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("per_second", "p50_us", "p99_us", "writes_per_commit")
    out: dict[str, Any] = {"rounds": len(cells)}
    for key in keys:
        values = [cell[key] for cell in cells if key in cell]
        if values:
            out[key] = statistics.median(values)
            out[f"{key}_min"], out[f"{key}_max"] = min(values), max(values)
    return out


def report(results: dict[str, Any]) -> str:
    lines = [
        "# Raft log store: SQLite (agentrpc) and raft-boltdb (Go)",
        "",
        f"{results['date']}, {results['machine']}, {results['mode']} mode, "
        f"{results['rounds']} rounds of {results['window']} s windows, "
        f"{ENTRY_BYTES}-byte entries, one entry per append.",
        "",
        "| writers | store | appends/s | p50 ms | p99 ms | appends per commit |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for writers in results["writers"]:
        for store in results["stores"]:
            cell = results["medians"].get(f"{store}/{writers}")
            if cell is None:
                continue
            group = cell.get("writes_per_commit")
            lines.append(
                f"| {writers} | {store} | {cell['per_second']:,.0f} "
                f"({cell['per_second_min']:,.0f}–{cell['per_second_max']:,.0f}) | "
                f"{cell['p50_us'] / 1e3:.2f} | {cell['p99_us'] / 1e3:.2f} | "
                f"{'' if group is None else f'{group:.1f}'} |"
            )
    if "raft-boltdb" in results["stores"]:
        lines += [
            "",
            "| writers | sqlite-group / boltdb appends/s | p99 ratio |",
            "|---:|---:|---:|",
        ]
        for writers in results["writers"]:
            ours = results["medians"].get(f"sqlite-group/{writers}")
            theirs = results["medians"].get(f"raft-boltdb/{writers}")
            if ours and theirs:
                lines.append(
                    f"| {writers} | {ours['per_second'] / theirs['per_second']:.2f}x | "
                    f"{ours['p99_us'] / theirs['p99_us']:.2f}x |"
                )
    lines += ["", "Open cost (median of 3):", "", "| entries | file MB | none ms | quick_check ms "
              "| integrity_check ms |", "|---:|---:|---:|---:|---:|"]  # fmt: skip
    for cell in results["open"]:
        lines.append(
            f"| {cell['entries']:,} | {cell['bytes'] / 1e6:.1f} | {cell['none_ms']:.1f} | "
            f"{cell['quick_ms']:.1f} | {cell['full_ms']:.1f} |"
        )
    loads = [
        load
        for cells in results["cells"].values()
        for cell in cells
        for load in (cell["load_before"], cell["load_after"])
    ]
    if loads:
        lines += [
            "",
            f"Load average (1 min) around the cells: {min(loads):.2f} to {max(loads):.2f} "
            f"on {os.cpu_count()} CPUs (the machine is shared).",
        ]
    if results.get("note"):
        lines += ["", results["note"]]
    return "\n".join(lines) + "\n"


def run(plan: Plan, mode: str, base: Path, out: Path) -> dict[str, Any]:
    note = ""
    go: Path | None = None
    stores = list(STORES)
    try:
        go = go_build.build(go_build.program_dir(REPO_ROOT, "raft_store"), "raft_store")
    except go_build.GoBuildError as exc:
        note = f"raft-boltdb not measured: {exc}"
        stores.remove("raft-boltdb")
        say(note)
    cells: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(plan.rounds):
        for position, writers in enumerate(plan.writers):
            shift = (round_ + position) % len(stores)
            for store in stores[shift:] + stores[:shift]:
                cell = run_cell(store, writers, plan, base, go)
                say(
                    f"round {round_ + 1} {store} x{writers}: {cell['per_second']:,.0f}/s "
                    f"p50 {cell['p50_us'] / 1e3:.2f} ms p99 {cell['p99_us'] / 1e3:.2f} ms"
                )
                cells.setdefault(f"{store}/{writers}", []).append(cell)
    opened = [measure_open(size, base) for size in plan.open_sizes]
    results: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "mode": mode,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"SQLite {sqlite3.sqlite_version}, Python {platform.python_version()}",
        "rounds": plan.rounds,
        "window": plan.window,
        "writers": list(plan.writers),
        "stores": stores,
        "cells": cells,
        "medians": {key: median_cells(value) for key, value in cells.items()},
        "open": opened,
        "note": note,
        "dir": str(base),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "report.md").write_text(report(results))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.raft_store", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cell", choices=("sqlite-group", "sqlite-single"))
    parser.add_argument("--cell-dir", type=Path)
    parser.add_argument("--writers", type=int, default=1)
    parser.add_argument("--window", type=float, default=2.0)
    args = parser.parse_args(argv)
    if args.cell:
        result = measure_sqlite(
            args.cell_dir, args.writers, args.window, args.cell == "sqlite-group"
        )
        print(json.dumps(result))
        return 0
    mode = "quick" if args.quick else "full"
    out = args.out or RESULTS / f"{dt.date.today().isoformat()}-raft-store"
    plan = PLANS[mode]
    if args.rounds:
        plan = replace(plan, rounds=args.rounds)
    results = run(plan, mode, args.dir, out)
    sys.stdout.write(report(results))
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
