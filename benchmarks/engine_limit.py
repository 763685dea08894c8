"""Issue 17's measurement: the agent RPC engine against serf and the best bare Trio servers.

``python -m benchmarks.engine_limit`` (5 rounds, about 10 minutes; ``--quick``: 3 short
rounds) measures, in one run and under one noise, requests per second for ``stop`` with the
Go load generator (``benchmarks/go/loadgen``, built once per run by
:mod:`benchmarks.go_build`) pinned to one CPU and each server to the other:

* ``agentrpc``: the CLI ``serve``, as :mod:`benchmarks.servers` starts it;
* ``serf``: Debian's Go agent;
* ``trio-streams``, ``trio-raw``: :mod:`benchmarks.bare_servers`, the best bare Trio servers;
* ``go-bare``: the generator's own trivial Go server, which shows the generator's ceiling;
* ``baseline`` with ``--baseline REV``: agentrpc at that git revision, beside this tree.

Cells: pipelined at depths 1, 2, 4, 10, 100 and 1,000 on one connection; depth 1 with the
generator moved onto the server's CPU; sequential round trips (blocking reads) on either CPU.
Every server is started fresh each round and they take turns cell by cell, the order rotating
every cell and every round; figures are medians over rounds (min and max kept). The server's
CPU time over each window (all its threads, from /proc) gives CPU per request; the CPU used by
processes outside the benchmark over the window is recorded as *other load*.

Writes ``benchmarks/results/<date>-engine-limit/`` (``--out DIR`` to choose): ``report.md`` and
``results.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final, TextIO

import msgpack

from . import go_build, report, servers, suite
from .servers import HOST, REPO_ROOT, Server
from .suite import BenchError, Recorder, fmt_rate, say
from .wire import COMMANDS

SCHEMA: Final = 1
RESULTS: Final = REPO_ROOT / "benchmarks" / "results"
AGENTS: Final = ("agentrpc", servers.BASELINE)
"""The servers the ratios are about: this tree and, with ``--baseline``, an older revision."""
SERVERS: Final = ("agentrpc", "serf", servers.BARE_STREAMS, servers.BARE_RAW, servers.GO_BARE)
DRAIN_TIMEOUT: Final = 30.0


@dataclass(frozen=True)
class LimitPlan:
    """What one run measures, and for how long."""

    mode: str
    rounds: int
    warmup: float
    """Seconds of load before the clock starts, per measurement."""
    duration: float
    """Seconds the clock runs, per measurement."""
    max_requests: int
    """Cap of requests per connection per measurement (all encoded before the clock)."""
    sequential_max_requests: int = 400_000
    """The same for the sequential cells: round trips on loopback stay far below 200k/s."""
    servers: tuple[str, ...] = SERVERS
    command: str = "stop"
    depths: tuple[int, ...] = (1, 2, 4, 10, 100, 1_000)
    same_cpu_depths: tuple[int, ...] = (1,)
    sequential: bool = True
    """Also the sequential cells (blocking round trips), on the other CPU and on the same."""
    cpu_depth: int = 100
    """The depth whose server CPU per request the report leads with."""
    server_warmup: float = 0.5
    selfcheck_copies: int = 1_000_000
    pin: bool = True
    """Server on the first CPU, generator on the second (when there are two or more)."""
    quiet_wait: float = 60.0
    """Before each round, wait up to this long for other processes to go (nearly) idle."""


PLANS: Final = {
    "full": LimitPlan(mode="full", rounds=5, warmup=0.3, duration=1.5, max_requests=1_500_000),
    "quick": LimitPlan(
        mode="quick", rounds=3, warmup=0.1, duration=0.35, max_requests=500_000, quiet_wait=5.0
    ),
}


def smoke_plan(servers_: tuple[str, ...]) -> LimitPlan:
    """Tiny counts: every part of the run in seconds (used by the smoke test)."""
    return LimitPlan(
        mode="smoke",
        rounds=1,
        warmup=0.0,
        duration=0.2,
        max_requests=300,
        sequential_max_requests=300,
        servers=servers_,
        depths=(10,),
        cpu_depth=10,
        server_warmup=0.05,
        selfcheck_copies=1_000,
        quiet_wait=0.0,
    )


# ----------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    key: str
    mode: str
    """The generator's mode: ``pipelined`` or ``sequential``."""
    depth: int
    same_cpu: bool


def cells(plan: LimitPlan) -> list[Cell]:
    command = plan.command
    out = [Cell(f"{command} depth {depth}", "pipelined", depth, False) for depth in plan.depths]
    out += [
        Cell(f"{command} depth {depth}, same CPU", "pipelined", depth, True)
        for depth in plan.same_cpu_depths
    ]
    if plan.sequential:
        out += [
            Cell(f"{command} sequential", "sequential", 1, False),
            Cell(f"{command} sequential, same CPU", "sequential", 1, True),
        ]
    return out


def rotated(names: Sequence[str], turn: int) -> list[str]:
    """``names`` starting at ``turn`` (mod its length): every server goes first in turn."""
    shift = turn % len(names) if names else 0
    return [*names[shift:], *names[:shift]]


# ----------------------------------------------------------------------------- the generator


class Generator:
    """The Go load generator: one process per measurement, one JSON result line."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def run(
        self,
        mode: str,
        args: dict[str, Any],
        *,
        cpus: tuple[int, ...] | None,
        timeout: float,
    ) -> dict[str, Any]:
        argv = [str(self.binary), mode]
        for flag, value in args.items():
            if isinstance(value, bool):
                argv.append(f"-{flag}={'true' if value else 'false'}")
            else:
                argv += [f"-{flag}", str(value)]
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                preexec_fn=servers.pinned(cpus),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"the generator took over {timeout:.0f} s") from exc
        lines = done.stdout.strip().splitlines()
        try:
            result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
        except ValueError:
            result = {}
        if not result.get("ok"):
            detail = result.get("error") or done.stderr.strip()[-500:] or f"exit {done.returncode}"
            raise BenchError(f"generator: {detail}")
        return result


def request_body(command: str) -> str:
    """The command's request body as the generator takes it (hex msgpack; "" for none)."""
    body = COMMANDS["agentrpc"][command].body
    return "" if body is None else bytes(msgpack.packb(body, use_bin_type=True)).hex()


# ----------------------------------------------------------------------------- the run


class EngineLimit:
    def __init__(self, plan: LimitPlan, out: TextIO | None = sys.stderr) -> None:
        self.plan = plan
        self.out = out
        self.recorder = Recorder()
        self.notes: list[str] = []
        cpus = sorted(os.sched_getaffinity(0))
        self.pinned = plan.pin and len(cpus) >= 2
        self.server_cpus = (cpus[0],) if self.pinned else None
        self.client_cpus = (cpus[1],) if self.pinned else None
        self.generator: Generator | None = None
        self.selfchecks: list[dict[str, Any]] = []

    def base_args(self, server: Server) -> dict[str, Any]:
        wire = COMMANDS["agentrpc"][self.plan.command]
        return {
            "addr": f"{HOST}:{server.port}",
            "command": wire.name,
            "body": request_body(self.plan.command),
            "reply-body": wire.reply_body,
            "cpu-pid": server.pid,
            "drain-timeout": DRAIN_TIMEOUT,
        }

    def measure(self, server: Server, cell: Cell) -> dict[str, Any]:
        assert self.generator is not None
        plan = self.plan
        args = {
            **self.base_args(server),
            "warmup": plan.warmup,
            "duration": plan.duration,
            "max-requests": plan.max_requests,
        }
        if cell.mode == "pipelined":
            args.update(depth=cell.depth, conns=1)
        else:
            args["max-requests"] = min(plan.max_requests, plan.sequential_max_requests)
        cpus = self.server_cpus if cell.same_cpu else self.client_cpus
        timeout = plan.warmup + plan.duration + DRAIN_TIMEOUT + 60
        return self.generator.run(cell.mode, args, cpus=cpus, timeout=timeout)

    def warm(self, server: Server) -> None:
        assert self.generator is not None
        args = {
            **self.base_args(server),
            "warmup": 0.0,
            "duration": self.plan.server_warmup,
            "max-requests": max(self.plan.max_requests // 4, 100),
            "depth": 10,
        }
        self.generator.run("pipelined", args, cpus=self.client_cpus, timeout=120)

    def selfcheck(self, server: Server) -> None:
        assert self.generator is not None
        args = {**self.base_args(server), "copies": self.plan.selfcheck_copies}
        del args["cpu-pid"], args["drain-timeout"]
        try:
            result = self.generator.run("selfcheck", args, cpus=self.client_cpus, timeout=120)
        except BenchError as exc:
            self.notes.append(f"selfcheck against {server.name} failed: {exc}")
            return
        result["server"] = server.name
        self.selfchecks.append(result)

    def record(self, run: int, name: str, cell: Cell, result: dict[str, Any]) -> None:
        params = {
            "command": self.plan.command,
            "mode": cell.mode,
            "depth": cell.depth,
            "connections": 1,
            "same_cpu": cell.same_cpu,
        }
        entry = self.recorder.entry("throughput", cell.key, name, "rate", "replies/s", params)
        result["run"] = run + 1
        problems = []
        if result["errors"]:
            problems.append(f"{result['errors']} error replies: {result['first_error']}")
        if not result["in_order"]:
            problems.append(f"{result['out_of_order']} replies out of order")
        for problem in problems:
            entry.failures.append(f"run {run + 1}: {problem}")
        entry.runs.append(result)
        entry.values.append(result["rate"])
        per_request = result.get("server_cpu_per_request_us")
        if per_request is not None:
            cpu = self.recorder.entry(
                "cpu", cell.key, name, "server_cpu_per_request_us", "us", params,
                higher_is_better=False,
            )  # fmt: skip
            cpu.values.append(per_request)
            cpu.runs.append({"run": run + 1, "server_cores": result.get("server_cores")})
        if cell.mode == "sequential":
            for pct in ("p50", "p99"):
                latency = self.recorder.entry(
                    "latency", f"{cell.key} {pct}", name, f"{pct}_us", "us", params,
                    higher_is_better=False,
                )  # fmt: skip
                latency.values.append(result[f"{pct}_us"])
                latency.runs.append({"run": run + 1, "samples": result["samples"]})

    def round(self, run: int) -> None:
        plan = self.plan
        started: dict[str, Server] = {}
        try:
            for name in rotated(plan.servers, run):
                started[name] = servers.start(name, cpus=self.server_cpus)
            for name in plan.servers:
                self.warm(started[name])
            if run == 0:  # the reply is the same bytes from every server: one is enough
                self.selfcheck(started[plan.servers[0]])
            for index, cell in enumerate(cells(plan)):
                shown = []
                for name in rotated(plan.servers, run + index):
                    try:
                        result = self.measure(started[name], cell)
                    except BenchError as exc:
                        entry = self.recorder.entry(
                            "throughput", cell.key, name, "rate", "replies/s", {}
                        )
                        entry.failures.append(f"run {run + 1}: {exc}")
                        shown.append(f"{name} FAILED ({exc})")
                        continue
                    self.record(run, name, cell, result)
                    shown.append(f"{name} {fmt_rate(result['rate'])}/s")
                say(self.out, f"  round {run + 1}: {cell.key:<28} " + ", ".join(shown))
        finally:
            for server in started.values():
                servers.stop(server)

    def run(self) -> dict[str, Any]:
        plan = self.plan
        began = time.time()
        root = servers.snapshot_sources()
        binary = go_build.loadgen_binary(root)
        self.generator = Generator(binary)
        info = suite.environment(
            suite.Plan(
                mode=plan.mode,
                runs=plan.rounds,
                warmup=plan.warmup,
                duration=plan.duration,
                max_requests=plan.max_requests,
            )
        )
        info["mode"] = f"engine-limit {plan.mode}"
        info["versions"]["agentrpc_snapshot_sha256"] = suite.source_fingerprint(root)
        info["versions"]["go"] = go_version()
        info["versions"]["loadgen_sha256"] = tree_fingerprint(
            go_build.program_dir(root, go_build.LOADGEN)
        )
        info["placement"] = {
            "pinned": self.pinned,
            "server_cpus": self.server_cpus,
            "generator_cpus": self.client_cpus,
        }
        for run in range(plan.rounds):
            waited, busy = suite.wait_for_quiet(plan.quiet_wait)
            info.setdefault("loadavg_per_run", []).append(os.getloadavg()[0])
            info.setdefault("quiet_wait_per_run", []).append(
                {"waited_s": waited, "other_cores": busy}
            )
            if waited:
                say(self.out, f"waited {waited:.0f} s for a quieter machine ({busy:.2f} cores)")
            say(self.out, f"round {run + 1} of {plan.rounds}")
            self.round(run)
        finished = time.time()
        info["finished_at"] = dt.datetime.fromtimestamp(finished).astimezone().isoformat()
        info["duration_s"] = finished - began
        info["loadavg_end"] = os.getloadavg()
        if suite.source_fingerprint() != info["versions"]["agentrpc_sources_sha256"]:
            self.notes.append(
                "agentrpc's sources in the working tree changed while this ran; every round "
                "measured the snapshot taken at the start (fingerprint in results.json)"
            )
        entries = [entry.summary() for entry in self.recorder.entries.values()]
        results: dict[str, Any] = {
            "schema": SCHEMA,
            **info,
            "plan": asdict(plan),
            "entries": entries,
            "selfcheck": self.selfchecks,
            "notes": self.notes,
        }
        results["comparisons"] = comparisons(entries)
        results["targets"] = evaluate_targets(results)
        return results


def go_version() -> str:
    go = go_build.go_command()
    if go is None:
        return "not installed"
    done = subprocess.run([go, "version"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def tree_fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.go")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def run_limit(plan: LimitPlan, out: TextIO | None = sys.stderr) -> dict[str, Any]:
    """Run ``plan`` (serf dropped with a note when it is not installed) and return results."""
    notes = []
    if "serf" in plan.servers and servers.serf_binary() is None:
        plan = replace(plan, servers=tuple(name for name in plan.servers if name != "serf"))
        notes.append("serf is not installed (apt-get install serf): measured without it")
    limit = EngineLimit(plan, out)
    limit.notes.extend(notes)
    return limit.run()


# ----------------------------------------------------------------------------- analysis


def _medians(entries: list[dict[str, Any]], group: str) -> dict[str, dict[str, float]]:
    """``{key: {server: median}}`` of a group (entries without a median left out)."""
    table: dict[str, dict[str, float]] = {}
    for entry in entries:
        if entry["group"] == group and entry["median"] is not None:
            table.setdefault(entry["key"], {})[entry["server"]] = float(entry["median"])
    return table


def best_bare(row: dict[str, float]) -> tuple[str, float] | None:
    """The faster bare Trio server of a row, and its median."""
    bare = [(row[name], name) for name in servers.BARE_TRIO if name in row]
    if not bare:
        return None
    value, name = max(bare)
    return name, value


def comparisons(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every throughput key, each agent over serf, over the best bare Trio server, over
    the raw-socket one, and (with a baseline) this tree over the baseline."""
    rows = []
    for key, row in _medians(entries, "throughput").items():
        bare = best_bare(row)
        for agent in AGENTS:
            ours = row.get(agent)
            if not ours:
                continue
            out: dict[str, Any] = {"key": key, "server": agent}
            out["serf_ratio"] = ours / row["serf"] if row.get("serf") else None
            out["best_bare"] = bare[0] if bare else None
            out["best_bare_ratio"] = ours / bare[1] if bare and bare[1] else None
            raw = row.get(servers.BARE_RAW)
            out["raw_ratio"] = ours / raw if raw else None
            if agent == "agentrpc" and row.get(servers.BASELINE):
                out["baseline_ratio"] = ours / row[servers.BASELINE]
            rows.append(out)
    return rows


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 17's required figures, each met or missed (this run's medians), for every agent
    measured (this tree, and the baseline revision when there is one)."""
    command = results["plan"]["command"]
    by_key = {(row["key"], row["server"]): row for row in results["comparisons"]}
    wanted = [
        (f"{command} depth 10", "best_bare_ratio", 0.9, ">= 0.9x the best bare Trio server"),
        (f"{command} depth 100", "best_bare_ratio", 0.9, ">= 0.9x the best bare Trio server"),
        (f"{command} depth 10", "serf_ratio", 1.0, ">= 1.0x serf across CPUs"),
        (
            f"{command} depth 1, same CPU",
            "raw_ratio",
            0.9,
            ">= 0.9x the bare Trio raw-socket server",
        ),
    ]
    targets = []
    for agent in AGENTS:
        if agent not in results["plan"]["servers"]:
            continue
        for key, field, required, text in wanted:
            ratio = by_key.get((key, agent), {}).get(field)
            target: dict[str, Any] = {
                "target": f"{key}: {text}",
                "server": agent,
                "key": key,
                "ratio": ratio,
                "required": required,
            }
            if ratio is None:
                target.update(met=None, verdict="not measured")
            elif ratio >= required:
                target.update(met=True, verdict="met")
            else:
                shortfall = (1 - ratio / required) * 100
                target.update(met=False, verdict=f"missed by {shortfall:.0f}% ({ratio:.2f}x)")
            targets.append(target)
    return targets


# ----------------------------------------------------------------------------- report


def _entry_map(results: dict[str, Any], group: str) -> dict[str, dict[str, dict[str, Any]]]:
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in results["entries"]:
        if entry["group"] == group:
            table.setdefault(entry["key"], {})[entry["server"]] = entry
    return table


def _number(value: float, unit: str) -> str:
    if unit == "us":
        return f"{value:,.2f}" if value < 10 else f"{value:,.1f}"
    return f"{value:,.0f}"


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "–"
    if entry["median"] is None:
        return "failed" if entry["failures"] else "–"
    unit = entry["unit"]
    text = _number(entry["median"], unit)
    if len(entry["values"]) > 1:
        text += f" ({_number(entry['min'], unit)}–{_number(entry['max'], unit)})"
    if any(run.get("capped") for run in entry["runs"]):
        text += " ᶜ"
    if entry["failures"]:
        text += " ⚠"
    return text


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _label(results: dict[str, Any], name: str) -> str:
    if name == servers.BASELINE:
        revision = results["versions"].get("baseline_revision") or ""
        return f"agentrpc @ {revision[:12]}"
    if name == "agentrpc":
        return f"agentrpc @ {results['versions']['agentrpc_revision'][:12]}" + (
            "+" if results["versions"]["agentrpc_tree_modified"] else ""
        )
    return name


def _short(results: dict[str, Any], name: str) -> str:
    """An agent's name for ratio columns: ``agentrpc`` or ``@`` and the baseline's commit."""
    if name == servers.BASELINE:
        return f"@{(results['versions'].get('baseline_revision') or '')[:7]}"
    return name


def _other_load(results: dict[str, Any]) -> str:
    values = sorted(
        run["other_cores"]
        for entry in results["entries"]
        if entry["group"] == "throughput"
        for run in entry["runs"]
        if "other_cores" in run
    )
    if not values:
        return "not measured"
    return (
        f"median {statistics.median(values):.2f} cores, max {values[-1]:.2f}; "
        f"{sum(v > 0.1 for v in values)} of {len(values)} measurements above 0.1"
    )


def _row_noise(pair: dict[str, dict[str, Any]]) -> str:
    values = [
        run["other_cores"] for e in pair.values() for run in e["runs"] if "other_cores" in run
    ]
    return f"{max(values):.2f}" if values else "–"


def render_markdown(results: dict[str, Any]) -> str:
    plan, versions = results["plan"], results["versions"]
    names = list(plan["servers"])
    agents = [name for name in AGENTS if name in names]
    ratios = {(row["key"], row["server"]): row for row in results["comparisons"]}
    placement = results["placement"]
    lines = [
        f"# Engine limit (issue 17), {results['date']} ({plan['mode']} mode)",
        "",
        f"Requests per second for `{plan['command']}`, **median of {plan['rounds']} "
        f"round{'s' if plan['rounds'] != 1 else ''}** "
        "(min–max in brackets; every round in `results.json`), with the Go load generator "
        "(`benchmarks/go/loadgen`) "
        + (
            f"pinned to CPU {placement['generator_cpus'][0]} and every server to CPU "
            f"{placement['server_cpus'][0]}"
            if placement["pinned"]
            else "and the servers unpinned (fewer than two CPUs)"
        )
        + ". Every server is started fresh each round; they take turns cell by cell, the order "
        "rotating every cell and every round.",
        "",
        *report.environment_lines(
            results,
            f", {versions['go']}; {report.snapshot_text(versions)}",
        ),
        f"- Other processes' CPU over the measured windows: {_other_load(results)}; seconds "
        "waited before each round for other processes to use under 0.1 cores: "
        + ", ".join(f"{w['waited_s']:.0f}" for w in results.get("quiet_wait_per_run", [])),
        f"- Per measurement: {plan['warmup']} s warm-up, {plan['duration']} s on the clock, at "
        f"most {plan['max_requests']:,} requests; took {results['duration_s'] / 60:.1f} min.",
        "",
    ]
    if results["targets"]:
        lines += ["## Targets (issue 17)", ""]
        rows = []
        for target in results["targets"]:
            mark = "✅" if target["met"] else ("❌" if target["met"] is False else "–")
            rows.append(
                [
                    _label(results, target["server"]),
                    target["target"],
                    _ratio(target["ratio"]),
                    f"{mark} {target['verdict']}",
                ]
            )
        lines += [*_table(["server", "target", "ratio", "verdict"], rows), ""]
    lines += [
        "## Requests per second",
        "",
        "*depth N*: N requests in flight on one connection (epoll loop); *sequential*: one "
        "blocking round trip at a time; *same CPU*: the generator moved onto the server's CPU. "
        "Ratios: each agent's median over serf's, and over the faster bare Trio server's (for "
        "same-CPU rows also over the raw-socket server's). ᶜ: the request cap was reached "
        "before the window closed (the rate is then over every request). *other load*: the "
        "most CPU that processes outside the benchmark used in any window of the row.",
        "",
    ]
    header = ["cell", *(_label(results, name) for name in names)]
    for agent in agents:
        short = _short(results, agent)
        header += [f"{short} / serf", f"{short} / bare Trio"]
    header.append("other load")
    rows = []
    for key, pair in _entry_map(results, "throughput").items():
        row = [key, *(_cell(pair.get(name)) for name in names)]
        for agent in agents:
            comparison = ratios.get((key, agent), {})
            bare = comparison.get("best_bare_ratio")
            bare_text = _ratio(bare)
            if comparison.get("best_bare"):
                bare_text += f" ({comparison['best_bare'].removeprefix('trio-')})"
            if "same CPU" in key and comparison.get("raw_ratio") is not None:
                bare_text += f"; raw {_ratio(comparison['raw_ratio'])}"
            row += [_ratio(comparison.get("serf_ratio")), bare_text]
        row.append(_row_noise(pair))
        rows.append(row)
    lines += _table(header, rows)
    if any(ratios.get((key, "agentrpc"), {}).get("baseline_ratio") for key, _ in ratios):
        lines += ["", "### This tree over the baseline", ""]
        rows = [
            [key, _ratio(row.get("baseline_ratio"))]
            for (key, server), row in ratios.items()
            if server == "agentrpc" and row.get("baseline_ratio") is not None
        ]
        lines += _table(["cell", f"agentrpc / {_short(results, servers.BASELINE)}"], rows)
    lines += [
        "",
        "## Server CPU per request (microseconds)",
        "",
        "The server's CPU time over the window (every thread, `/proc/PID/task/*/schedstat`, "
        "read by the generator at the window's edges) divided by the replies counted in it. "
        f"Depth {plan['cpu_depth']} is the issue's figure.",
        "",
    ]
    rows = []
    for key, pair in _entry_map(results, "cpu").items():
        label = f"**{key}**" if key == f"{plan['command']} depth {plan['cpu_depth']}" else key
        rows.append([label, *(_cell(pair.get(name)) for name in names)])
    lines += _table(["cell", *(_label(results, name) for name in names)], rows)
    latency = _entry_map(results, "latency")
    if latency:
        lines += ["", "## Round-trip latency, sequential (microseconds)", ""]
        rows = [[key, *(_cell(pair.get(name)) for name in names)] for key, pair in latency.items()]
        lines += _table(["cell", *(_label(results, name) for name in names)], rows)
    lines += ["", "## The generator's ceiling", ""]
    lines += _ceiling(results)
    failures = [
        f"- {entry['group']} / {entry['key']} / {entry['server']}: {failure}"
        for entry in results["entries"]
        for failure in entry["failures"]
    ]
    if failures:
        lines += ["", "## Failures", "", *failures]
    if results["notes"]:
        lines += ["", "## Notes", "", *(f"- {note}" for note in results["notes"])]
    return "\n".join(lines) + "\n"


def _ceiling(results: dict[str, Any]) -> list[str]:
    lines = []
    fastest: dict[str, tuple[float, str]] = {}
    for key, row in _medians(results["entries"], "throughput").items():
        for name, value in row.items():
            if value > fastest.get(name, (0.0, ""))[0]:
                fastest[name] = (value, key)
    go = fastest.get(servers.GO_BARE)
    python = [(value, name, key) for name, (value, key) in fastest.items() if name != "go-bare"]
    if go and python:
        value, name, key = max(python)
        headroom = go[0] / value
        lines.append(
            f"- Against the trivial Go server (`loadgen serve`) the same generator reached "
            f"**{go[0]:,.0f} replies/s** ({go[1]}), {headroom:.1f}x the fastest other "
            f"server's best ({name}, {value:,.0f}/s at {key})"
            + (
                ": no other server's figure is bound by the generator."
                if headroom >= 1.5
                else ": too little headroom to rule the generator out as the bound."
            )
        )
    for check in results.get("selfcheck", []):
        lines.append(
            f"- Parsing a captured `{check['command']}` reply of {check['reply_bytes']} bytes "
            f"from memory (from {check['server']}): {check['rate']:,.0f} replies/s."
        )
    cores = [
        (run.get("client_cores", 0.0), entry["server"], entry["key"])
        for entry in results["entries"]
        if entry["group"] == "throughput" and entry["server"] != servers.GO_BARE
        for run in entry["runs"]
        if not entry["params"].get("same_cpu")
    ]
    if cores:
        value, name, key = max(cores)
        lines.append(
            f"- The generator's own CPU in any window against the other servers: at most "
            f"{value:.2f} cores ({name}, {key})."
        )
    return lines or ["not measured"]


def write_all(results: dict[str, Any], directory: Path) -> list[Path]:
    return report.write_results(results, directory, render_markdown)


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine_limit", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="seconds to wait before each round for other processes to go idle (full: 60)",
    )
    parser.add_argument("--out", type=Path, help="results directory")
    parser.add_argument(
        "--servers", help=f"comma-separated, from {','.join(SERVERS)},{servers.BASELINE}"
    )
    parser.add_argument(
        "--depths", help="comma-separated pipeline depths (default 1,2,4,10,100,1000)"
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure agentrpc at git revision REV, cell by cell beside this tree",
    )
    args = parser.parse_args(argv)
    plan = PLANS[args.mode or "full"]
    changes: dict[str, Any] = {}
    if args.rounds:
        changes["rounds"] = args.rounds
    if args.quiet_wait is not None:
        changes["quiet_wait"] = args.quiet_wait
    if args.servers:
        changes["servers"] = tuple(args.servers.split(","))
    if args.depths:
        changes["depths"] = tuple(int(depth) for depth in args.depths.split(","))
    plan = replace(plan, **changes)
    if args.baseline:
        commit = servers.prepare_baseline(args.baseline)
        say(sys.stderr, f"engine limit: baseline {args.baseline} = {commit[:12]}")
        if servers.BASELINE not in plan.servers:
            plan = replace(plan, servers=(*plan.servers, servers.BASELINE))
    elif servers.BASELINE in plan.servers:
        parser.error("the baseline server needs --baseline REV")
    date = dt.date.today().isoformat()
    suffix = "engine-limit" if plan.mode == "full" else f"engine-limit-{plan.mode}"
    out = args.out or RESULTS / f"{date}-{suffix}"
    say(sys.stderr, f"engine limit: {plan.mode} mode, {plan.rounds} rounds -> {out}")
    results = run_limit(plan)
    for path in write_all(results, out):
        print(path)
    missed = [target for target in results["targets"] if target["met"] is False]
    say(
        sys.stderr,
        f"done in {results['duration_s'] / 60:.1f} min; targets missed: {len(missed)} of "
        f"{len(results['targets'])}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
