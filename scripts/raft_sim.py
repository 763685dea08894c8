"""The long run of the Raft simulation (tests/raft/raft_harness.py): seeded random schedules of
crashes, power cuts, partitions, drops, delays, duplicates, membership changes and leadership
transfers, each checked for Raft's safety properties after every event and for a linearizable
client history at the end.

    .venv/bin/python scripts/raft_sim.py --schedules 10000 --workers 2

Every schedule is reproducible from its seed (``--start SEED --schedules 1 --verbose``). Exits
with status 1 if any schedule found a violation. ``--bug`` runs with an injected bug instead
(lying_disk, local_reads, commit_old_terms) to see the checks fire.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "raft"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raft_harness import SimParams, SimResult, run_schedule

BUGS: dict[str, dict[str, Any]] = {
    "lying_disk": {"lying_disk": True},
    "local_reads": {"local_reads": True},
    "commit_old_terms": {"node_bug": "commit_old_terms"},
}


def one(job: tuple[int, str]) -> dict[str, Any]:
    seed, bug = job
    params = None
    if bug:
        params = dataclasses.replace(SimParams.random(random.Random(seed)), **BUGS[bug])
    result: SimResult = run_schedule(seed, params)
    p = result.params
    return {
        "seed": seed,
        "violations": result.violations,
        "operations": result.operations,
        "completed": result.completed,
        "indeterminate": result.indeterminate,
        "committed": result.committed,
        "events": result.events,
        "sim_time": result.sim_time,
        "wall": result.wall,
        "faults": result.faults,
        "leaders": result.leaders,
        "nodes": p.nodes,
        "protocol_version": p.protocol_version,
        "membership": p.membership,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--bug", choices=sorted(BUGS), default="")
    parser.add_argument("--json", type=Path, help="write the per-schedule results here")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()

    jobs = [(seed, args.bug) for seed in range(args.start, args.start + args.schedules)]
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    if args.workers > 1:
        with multiprocessing.Pool(args.workers) as pool:
            for item in pool.imap_unordered(one, jobs, chunksize=8):
                results.append(item)
                _progress(item, len(results), args)
    else:
        for job in jobs:
            item = one(job)
            results.append(item)
            _progress(item, len(results), args)
    elapsed = time.perf_counter() - started

    faults: Counter[str] = Counter()
    for item in results:
        faults.update(item["faults"])
    bad = sorted((r for r in results if r["violations"]), key=lambda r: r["seed"])
    summary = {
        "schedules": len(results),
        "seconds": round(elapsed, 1),
        "cpu_seconds": round(sum(r["wall"] for r in results), 1),
        "violations": len(bad),
        "operations": sum(r["operations"] for r in results),
        "completed": sum(r["completed"] for r in results),
        "indeterminate": sum(r["indeterminate"] for r in results),
        "committed_entries": sum(r["committed"] for r in results),
        "events": sum(r["events"] for r in results),
        "simulated_seconds": round(sum(r["sim_time"] for r in results), 1),
        "elections_won": sum(r["leaders"] for r in results),
        "five_node": sum(1 for r in results if r["nodes"] == 5),
        "protocol_2": sum(1 for r in results if r["protocol_version"] == 2),
        "membership_schedules": sum(1 for r in results if r["membership"]),
        "faults": dict(sorted(faults.items())),
        "bug": args.bug or None,
    }
    print(json.dumps(summary, indent=2))
    for item in bad[:20]:
        print(f"seed {item['seed']}: {item['violations'][0]}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "results": results}, indent=1))
    return 1 if bad else 0


def _progress(item: dict[str, Any], done: int, args: argparse.Namespace) -> None:
    if args.verbose or item["violations"]:
        print(f"seed {item['seed']}: {item['violations'] or 'ok'} "
              f"({item['completed']} ops, {item['wall']:.2f} s)", flush=True)  # fmt: skip
    elif done % 500 == 0:
        print(f"{done} schedules", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
