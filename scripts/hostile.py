"""Attack a real agent process the ways issue 9 lists, and report what each attack cost it.

    .venv/bin/python scripts/hostile.py --attack all --seconds 30 --clients 50

For each attack a fresh ``agentrpc serve`` is started on free 127.0.0.1 ports (log level
INFO) and killed at the end, whatever happens. While the attack runs (timed ones for
``--seconds``), a well-behaved client in a separate process calls ``stats`` every 10 ms.
Printed per attack: the agent's RSS before / at its peak / after (``/proc/<pid>/status``
VmRSS and VmHWM), its CPU seconds (``/proc/<pid>/stat``), the log lines it wrote to stderr
(and the longest), the good client's round trips (p50 / p99 / max), facts of the attack, and
PASS or FAIL against each bound. Exit status 1 when any bound fails.

The attack code lives in ``tests/hardening/hostile_support.py``, shared with
``tests/hardening/test_hostile_process.py`` (which runs the same attacks smaller).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "hardening"))

from hostile_support import ROWS, Outcome, Size, use_agent_tree


def bounds_help() -> str:
    lines = ["attacks and their bounds (every one also: the good client's stats all "
             "answered, no error, each within 2 s):"]  # fmt: skip
    for row in ROWS.values():
        lines.append(f"  {row.name}: {row.summary}")
        lines.append(f"      bounds: {row.bounds}")
    return "\n".join(lines)


async def run(names: list[str], size: Size) -> int:
    failed: list[str] = []
    for name in names:
        print(f"running {name} ...", flush=True)
        outcome: Outcome = await ROWS[name].run(size)
        print(outcome.describe(), flush=True)
        print(flush=True)
        if not outcome.passed:
            failed.append(name)
    print(f"result: {'PASS' if not failed else 'FAIL (' + ', '.join(failed) + ')'}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=bounds_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--attack",
        default="all",
        choices=["all", *ROWS],
        help="which attack to run (default: all, one after the other)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=30.0,
        help="duration of the timed attacks: pipelining, wrong-node pings (default 30)",
    )
    parser.add_argument(
        "--clients", type=int, default=50, help="pipelining clients that never read (50)"
    )
    parser.add_argument(
        "--agent-tree",
        type=Path,
        default=None,
        help="run the agent from this checkout instead (e.g. `git archive` of an older "
        "commit, for before/after figures); the attackers keep this tree's code",
    )
    args = parser.parse_args()
    use_agent_tree(args.agent_tree)
    size = replace(Size(), seconds=args.seconds, clients=args.clients)
    names = list(ROWS) if args.attack == "all" else [args.attack]
    return trio.run(run, names, size)


if __name__ == "__main__":
    sys.exit(main())
