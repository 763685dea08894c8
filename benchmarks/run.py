"""Run the benchmark suite and write its report: ``python -m benchmarks.run --quick``.

``--quick`` (3 runs, short windows, about 3 minutes) or ``--full`` (5 runs, the default,
under 20 minutes). Results go to ``benchmarks/results/<date>/`` (full) or
``benchmarks/results/<date>-quick/`` unless ``--out`` says otherwise. ``--profile`` also
profiles the agentrpc server (see :mod:`benchmarks.profile`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import sys
from dataclasses import replace
from pathlib import Path

from . import report, servers, suite
from .servers import REPO_ROOT

RESULTS: Path = REPO_ROOT / "benchmarks" / "results"


def raise_fd_limit(needed: int = 25_000) -> None:
    """Servers and the generator inherit this: 10,000 idle connections need the room."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    parser.add_argument("--runs", type=int, help="override the number of runs")
    parser.add_argument("--out", type=Path, help="results directory")
    parser.add_argument("--servers", default=None, help="comma-separated: agentrpc,serf")
    parser.add_argument("--profile", action="store_true", help="also profile agentrpc (py-spy)")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure agentrpc at git revision REV, cell by cell beside this tree",
    )
    args = parser.parse_args(argv)
    plan = suite.PLANS[args.mode or "full"]
    if args.runs:
        plan = replace(plan, runs=args.runs)
    if args.servers:
        plan = replace(plan, servers=tuple(args.servers.split(",")))
    if args.baseline:
        commit = servers.prepare_baseline(args.baseline)
        print(f"benchmarks: baseline {args.baseline} = {commit[:12]}", file=sys.stderr)
        if servers.BASELINE not in plan.servers:
            plan = replace(plan, servers=(*plan.servers, servers.BASELINE))
    raise_fd_limit(2 * max(plan.idle_counts) + 1_000)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < max(plan.idle_counts) + 500:
        parser.error(f"RLIMIT_NOFILE hard limit {hard} is too low for the idle-connection test")
    date = dt.date.today().isoformat()
    out = args.out or RESULTS / (date if plan.mode == "full" else f"{date}-{plan.mode}")
    print(f"benchmarks: {plan.mode} mode, {plan.runs} runs -> {out}", file=sys.stderr)
    results = suite.run_suite(plan)
    written = report.write_all(results, out)
    if args.profile:
        from . import profile

        written += profile.profile_to(out)
    for path in written:
        print(path)
    failed = [target for target in results["targets"] if target["met"] is False]
    print(
        f"done in {results['duration_s'] / 60:.1f} min; targets missed: {len(failed)} of "
        f"{len(results['targets'])}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
