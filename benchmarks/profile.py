"""Profile the agentrpc server process under pipelined load, with py-spy.

``python -m benchmarks.profile [--out DIR] [--seconds 8]`` starts ``agentrpc serve`` exactly as
the suite does, drives it from the load generator (one connection, depth 100) with ``stop``
and then ``stats``, and meanwhile samples the server with ``py-spy record`` (speedscope
format, kept as ``profile-<command>.speedscope.json``: open it at speedscope.app or any
speedscope viewer). ``profile.md`` lists, per load, the functions by own (self) time, by
inclusive time, and the self time per source file. py-spy comes with the ``bench`` extra.

py-spy stops the process for each sample (100 per second by default), so the throughput
printed next to each profile is a little below the suite's; the proportions are what count.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from pathlib import Path
from typing import Any

from . import servers
from .servers import HOST, REPO_ROOT
from .suite import LoadGen, source_fingerprint
from .wire import COMMANDS

LOADS = (("stop", 100), ("stats", 100))
TOP = 25


def py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def _short(path: str) -> str:
    for prefix in (
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["stdlib"],
        str(servers.source_root()),
        str(REPO_ROOT),
    ):
        if path.startswith(prefix):
            return path[len(prefix) :].lstrip("/")
    return path


def aggregate(speedscope: dict[str, Any]) -> dict[str, Any]:
    """Self and inclusive sample counts per function and self counts per file."""
    frames = speedscope["shared"]["frames"]
    names = [f"{frame['name']} ({_short(frame.get('file', '?'))})" for frame in frames]
    files = [_short(frame.get("file", "?")) for frame in frames]
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    per_file: Counter[str] = Counter()
    total = 0
    for profile in speedscope["profiles"]:
        for stack in profile["samples"]:  # one sample each (the weights are 1/rate seconds)
            if not stack:
                continue
            weight = 1
            total += weight
            leaf = stack[-1]
            own[names[leaf]] += weight
            per_file[files[leaf]] += weight
            for name in {names[index] for index in stack}:
                inclusive[name] += weight
    return {"total": total, "self": own, "inclusive": inclusive, "files": per_file}


def _top(counter: Counter[str], total: int, limit: int = TOP) -> list[str]:
    lines = ["| % | samples | function (file) |", "|---:|---:|---|"]
    for name, count in counter.most_common(limit):
        lines.append(f"| {100 * count / total:.1f} | {count} | `{name}` |")
    return lines


def _section(
    command: str,
    depth: int,
    data: dict[str, Any],
    rate: int,
    seconds: float,
    result: dict[str, Any],
    target: Path,
) -> str:
    total = data["total"] or 1
    lines = [
        f"## Pipelined `{command}`, one connection, depth {depth}",
        "",
        f"{data['total']} samples of the server's thread at {rate} Hz over {seconds:.0f} s "
        "(py-spy leaves out samples where the thread is idle, waiting in epoll); "
        f"{result['rate']:,.0f} replies/s while sampled. Full profile: `{target.name}`.",
        "",
        "### By own time (self)",
        "",
        *_top(data["self"], total),
        "",
        "### By inclusive time (frames present in every sample left out)",
        "",
        *_top(Counter({k: v for k, v in data["inclusive"].items() if v < total}), total),
        "",
        "### Own time per source file",
        "",
        "| % | file |",
        "|---:|---|",
    ]
    lines += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in data["files"].most_common(15)]
    return "\n".join([*lines, ""])


def profile_to(out: Path, seconds: float = 8.0, rate: int = 100) -> list[Path]:
    """Profile each load in :data:`LOADS`; write ``profile.md`` and speedscope files to ``out``."""
    spy = py_spy()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "profile.md"
    if spy is None:
        path.write_text("# Profile\n\npy-spy is not installed (pip install -e '.[bench]').\n")
        return [path]
    written = []
    sections = []
    snapshot = servers.snapshot_sources()  # the code profiled cannot change under the profile
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, client_cpus = ((cpus[0],), (cpus[1],)) if len(cpus) >= 2 else (None, None)
    loadgen = LoadGen(client_cpus)
    try:
        with servers.running("agentrpc", cpus=server_cpus) as server:
            for command, depth in LOADS:
                wire = COMMANDS["agentrpc"][command]
                target = out / f"profile-{command}.speedscope.json"
                job = {
                    "kind": "pipelined",
                    "host": HOST,
                    "port": server.port,
                    "command": wire.name,
                    "body": wire.body,
                    "reply_body": wire.reply_body,
                    "depth": depth,
                    "connections": 1,
                    "max_requests": int(600_000 * (seconds + 2)),
                    "warmup": 0.0,
                    "duration": 0.2,
                }
                loadgen.run(timeout=300, **job)  # encodes the requests before py-spy starts
                job.update(warmup=0.5, duration=seconds + 1.0)
                spy_process = subprocess.Popen(
                    [
                        spy,
                        "record",
                        "--pid",
                        str(server.pid),
                        "--duration",
                        str(int(seconds)),
                        "--rate",
                        str(rate),
                        "--format",
                        "speedscope",
                        "--output",
                        str(target),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                time.sleep(0.3)  # py-spy attaches while the generator warms up
                result = loadgen.run(timeout=seconds + 120, **job)
                _, errors = spy_process.communicate(timeout=60)
                if spy_process.returncode != 0 or not target.exists():
                    sections.append(f"## `{command}`\n\npy-spy failed: {errors.strip()}\n")
                    continue
                written.append(target)
                data = aggregate(json.loads(target.read_text()))
                sections.append(_section(command, depth, data, rate, seconds, result, target))
    finally:
        loadgen.close()
    version = subprocess.run([spy, "--version"], capture_output=True, text=True, check=False)
    revision = servers.snapshot_revision()
    header = [
        "# Profile of the agentrpc server under pipelined load",
        "",
        f"{dt.datetime.now().astimezone().isoformat(timespec='seconds')}, "
        f"{version.stdout.strip()}, agentrpc at `{revision}` (sources sha256 "
        f"`{source_fingerprint(snapshot)}`, as in `results.json` when run with "
        "`benchmarks.run --profile`), server started as in the suite "
        "(`python -m agentrpc.cli serve --log-level warn`), load from the suite's generator "
        "in its own process. Regenerate with `python -m benchmarks.profile --out DIR`.",
        "",
    ]
    path.write_text("\n".join(header) + "\n" + "\n".join(sections))
    return [*written, path]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args(argv)
    out = args.out or REPO_ROOT / "benchmarks" / "results" / dt.date.today().isoformat()
    for path in profile_to(out, args.seconds):
        print(path)


if __name__ == "__main__":
    main()
