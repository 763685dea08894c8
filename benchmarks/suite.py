"""The benchmark plan and its runner: which measurements, in which order, how many times.

One run measures every cell once on freshly started servers; a suite is several runs, and
each figure quoted is the median over runs (min and max kept). Only one measurement runs at
a time: the load generator (one separate process, :mod:`benchmarks.loadgen`) drives one
server while the other sits idle, and the two servers take turns cell by cell, the order
flipping every cell and every run, so that drift on a noisy machine hits both alike.

The result is a plain dict (written as ``results.json`` by :mod:`benchmarks.report`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TextIO

import msgpack
import trio

from . import servers
from .servers import HOST, REPO_ROOT, Server, python_env
from .wire import COMMANDS

SCHEMA: Final = 1


@dataclass(frozen=True)
class Plan:
    """What one suite measures, and for how long."""

    mode: str
    runs: int
    warmup: float
    """Seconds of load before the clock starts, per measurement."""
    duration: float
    """Seconds the clock runs, per measurement."""
    max_requests: int
    """Cap of requests per connection per measurement (pre-encoded up front)."""
    servers: tuple[str, ...] = servers.SERVERS
    commands: tuple[str, ...] = ("stop", "members", "stats")
    depths: tuple[int, ...] = (1, 10, 100, 1_000, 10_000)
    connection_counts: tuple[int, ...] = (4, 16)
    connection_depth: int = 100
    headline_depth: int = 100
    idle_counts: tuple[int, ...] = (1_000, 10_000)
    idle_settle: float = 1.0
    monitor_lines: int = 300_000
    monitor_batch: int = 128
    engine_cases: tuple[tuple[str, int], ...] = (
        ("stop", 1),
        ("stop", 100),
        ("stop", 1_000),
        ("members", 100),
        ("members", 1_000),
    )
    server_warmup: float = 0.5
    selfcheck_copies: int = 100_000
    pin: bool = True
    """Server on CPU 0, generator on CPU 1 (when there are two or more CPUs)."""
    quiet_wait: float = 20.0
    """Before each run, wait up to this long for other processes to go (nearly) idle."""


PLANS: Final = {
    "quick": Plan(
        mode="quick", runs=3, warmup=0.1, duration=0.35, max_requests=400_000, quiet_wait=5.0
    ),
    "full": Plan(
        mode="full",
        runs=5,
        quiet_wait=60.0,
        warmup=0.3,
        duration=1.5,
        max_requests=1_500_000,
        monitor_lines=1_000_000,
    ),
}


def smoke_plan(servers_: tuple[str, ...] = ("agentrpc",)) -> Plan:
    """Tiny counts: the whole machinery in seconds (used by the smoke test)."""
    return Plan(
        mode="smoke",
        runs=1,
        warmup=0.0,
        duration=0.2,
        max_requests=300,
        servers=servers_,
        depths=(1, 100),
        connection_counts=(4,),
        idle_counts=(50,),
        idle_settle=0.1,
        monitor_lines=3_000,
        engine_cases=(("stop", 100), ("members", 100)),
        server_warmup=0.05,
        selfcheck_copies=1_000,
        quiet_wait=0.0,
    )


# ----------------------------------------------------------------------------- the generator


class BenchError(RuntimeError):
    pass


class LoadGen:
    """The load generator process, driven by JSON lines."""

    def __init__(self, cpus: tuple[int, ...] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.loadgen"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=servers.source_root(),
            env=python_env(),
            preexec_fn=servers.pinned(cpus),
        )

    def run(self, timeout: float = 120.0, **job: Any) -> dict[str, Any]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps(job) + "\n")
        stdin.flush()
        ready, _, _ = select.select([stdout], [], [], timeout)
        if not ready:
            self.close()
            raise BenchError(f"the load generator did not answer {job['kind']} in {timeout} s")
        line = stdout.readline()
        if not line:
            raise BenchError("the load generator exited")
        result: dict[str, Any] = json.loads(line)
        if not result.pop("ok"):
            raise BenchError(result["error"])
        return result

    def close(self) -> None:
        process = self.process
        if process.poll() is None:
            try:
                assert process.stdin is not None
                process.stdin.write('{"kind": "exit"}\n')
                process.stdin.close()
                process.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


# ----------------------------------------------------------------------------- records


@dataclass
class Entry:
    """One quantity measured once per run (e.g. agentrpc, stop, depth 100, replies/s)."""

    group: str
    key: str
    server: str
    metric: str
    unit: str
    params: dict[str, Any]
    higher_is_better: bool = True
    values: list[float] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        if self.values:
            data.update(
                median=statistics.median(self.values),
                min=min(self.values),
                max=max(self.values),
            )
        else:
            data.update(median=None, min=None, max=None)
        return data


class Recorder:
    def __init__(self) -> None:
        self.entries: dict[tuple[str, str, str], Entry] = {}

    def entry(
        self,
        group: str,
        key: str,
        server: str,
        metric: str,
        unit: str,
        params: dict[str, Any],
        *,
        higher_is_better: bool = True,
    ) -> Entry:
        ident = (group, key, server)
        if ident not in self.entries:
            self.entries[ident] = Entry(
                group, key, server, metric, unit, params, higher_is_better=higher_is_better
            )
        return self.entries[ident]


def throughput_cells(plan: Plan, *, pinned: bool) -> list[dict[str, Any]]:
    """Every throughput cell: (command, kind, depth, connections) with its report key."""
    cells: list[dict[str, Any]] = []
    for command in plan.commands:
        cells.append(
            {
                "command": command,
                "kind": "sequential",
                "depth": 1,
                "connections": 1,
                "key": f"{command} sequential",
                "same_cpu": False,
            }
        )
        if pinned:
            cells.append(
                {
                    "command": command,
                    "kind": "sequential",
                    "depth": 1,
                    "connections": 1,
                    "key": f"{command} sequential, same CPU",
                    "same_cpu": True,
                }
            )
        for depth in plan.depths:
            cells.append(
                {
                    "command": command,
                    "kind": "pipelined",
                    "depth": depth,
                    "connections": 1,
                    "key": f"{command} depth {depth}",
                }
            )
        for count in plan.connection_counts:
            cells.append(
                {
                    "command": command,
                    "kind": "pipelined",
                    "depth": plan.connection_depth,
                    "connections": count,
                    "key": f"{command} {count} conns x depth {plan.connection_depth}",
                }
            )
    for cell in cells:
        cell.setdefault("same_cpu", False)
    return cells


def say(out: TextIO | None, message: str) -> None:
    if out is not None:
        out.write(message + "\n")
        out.flush()


def fmt_rate(value: float) -> str:
    return f"{value / 1e3:,.1f}k" if value >= 1e3 else f"{value:,.0f}"


# ----------------------------------------------------------------------------- the runner


class Suite:
    def __init__(
        self, plan: Plan, out: TextIO | None = sys.stderr, *, snapshot: bool = True
    ) -> None:
        self.plan = plan
        self.snapshot = snapshot
        self.out = out
        self.recorder = Recorder()
        self.notes: list[str] = []
        cpus = sorted(os.sched_getaffinity(0))
        self.pinned = plan.pin and len(cpus) >= 2
        self.server_cpus = (cpus[0],) if self.pinned else None
        self.client_cpus = (cpus[1],) if self.pinned else None

    # -- helpers

    def job(self, loadgen: LoadGen, server: Server, command: str, **extra: Any) -> dict[str, Any]:
        wire = COMMANDS[server.name][command]
        return {
            "host": HOST,
            "port": server.port,
            "command": wire.name,
            "body": wire.body,
            "reply_body": wire.reply_body,
            **extra,
        }

    def measured(
        self, loadgen: LoadGen, server: Server, job: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """Run one job, adding the CPU time of the server, and of everything else, over it.

        ``other_cores`` is the machine's busy CPU time minus the server's and the generator's,
        over the job's wall time: load from processes that are not part of the benchmark.
        """
        generator = loadgen.process.pid
        busy_before = servers.machine_busy_seconds()
        cpu_before = server.cpu_seconds()
        generator_before = servers.process_cpu_seconds(generator)
        wall_before = time.perf_counter()
        result = loadgen.run(timeout=timeout, **job)
        wall = time.perf_counter() - wall_before
        cpu = server.cpu_seconds() - cpu_before
        generator_cpu = servers.process_cpu_seconds(generator) - generator_before
        other = servers.machine_busy_seconds() - busy_before - cpu - generator_cpu
        result.update(
            server_cpu_s=cpu,
            job_wall_s=wall,
            server_cores=cpu / wall if wall else 0.0,
            other_cores=max(0.0, other / wall) if wall else 0.0,
        )
        return result

    def order(self, index: int, names: Iterable[str]) -> list[str]:
        names = list(names)
        return names if index % 2 == 0 else names[::-1]

    # -- parts of a run

    def warm_server(self, loadgen: LoadGen, server: Server) -> None:
        for command in ("stop", "stats"):
            loadgen.run(
                **self.job(
                    loadgen,
                    server,
                    command,
                    kind="pipelined",
                    depth=10,
                    connections=1,
                    max_requests=max(self.plan.max_requests // 4, 100),
                    warmup=0.0,
                    duration=self.plan.server_warmup / 2,
                )
            )

    def throughput(self, run: int, loadgen: LoadGen, running: dict[str, Server]) -> None:
        plan = self.plan
        timeout = plan.warmup + plan.duration + 90
        for index, cell in enumerate(throughput_cells(plan, pinned=self.pinned)):
            shown = []
            for name in self.order(run + index, running):
                server = running[name]
                params = {
                    k: cell[k] for k in ("command", "kind", "depth", "connections", "same_cpu")
                }
                entry = self.recorder.entry(
                    "throughput", cell["key"], name, "rate", "replies/s", params
                )
                job = self.job(
                    loadgen,
                    server,
                    cell["command"],
                    kind=cell["kind"],
                    depth=cell["depth"],
                    connections=cell["connections"],
                    max_requests=plan.max_requests,
                    warmup=plan.warmup,
                    duration=plan.duration,
                )
                try:
                    if cell["same_cpu"]:
                        loadgen.run(kind="affinity", cpus=list(self.server_cpus or ()))
                    try:
                        result = self.measured(loadgen, server, job, timeout)
                    finally:
                        if cell["same_cpu"]:
                            loadgen.run(kind="affinity", cpus=list(self.client_cpus or ()))
                except BenchError as exc:
                    entry.failures.append(f"run {run + 1}: {exc}")
                    shown.append(f"{name} FAILED ({exc})")
                    continue
                result["run"] = run + 1
                if result["errors"]:
                    entry.failures.append(
                        f"run {run + 1}: {result['errors']} error replies: {result['first_error']}"
                    )
                entry.runs.append(result)
                entry.values.append(result["rate"])
                shown.append(f"{name} {fmt_rate(result['rate'])}/s")
                if cell["kind"] == "sequential":
                    where = ", same CPU" if cell["same_cpu"] else ""
                    for pct in ("p50", "p99"):
                        latency = self.recorder.entry(
                            "latency",
                            f"{cell['command']} {pct}{where}",
                            name,
                            f"{pct}_us",
                            "us",
                            params,
                            higher_is_better=False,
                        )
                        latency.values.append(result[f"{pct}_us"])
                        latency.runs.append({"run": run + 1, "samples": result["samples"]})
            say(self.out, f"  run {run + 1}: {cell['key']:<32} " + ", ".join(shown))

    def selfcheck(self, loadgen: LoadGen, running: dict[str, Server]) -> None:
        for name, server in running.items():
            for command in self.plan.commands:
                entry = self.recorder.entry(
                    "client",
                    f"{command} reply parsing",
                    name,
                    "rate",
                    "replies/s",
                    {"command": command},
                )
                try:
                    result = loadgen.run(
                        **self.job(
                            loadgen,
                            server,
                            command,
                            kind="selfcheck",
                            copies=self.plan.selfcheck_copies,
                        )
                    )
                except BenchError as exc:
                    entry.failures.append(str(exc))
                    continue
                entry.runs.append(result)
                entry.values.append(result["rate"])

    def idle(self, run: int, loadgen: LoadGen) -> None:
        plan = self.plan
        for index, count in enumerate(plan.idle_counts):
            for name in self.order(run + index, plan.servers):
                entry = self.recorder.entry(
                    "idle",
                    f"{count} idle connections",
                    name,
                    "bytes_per_connection",
                    "bytes",
                    {"connections": count},
                    higher_is_better=False,
                )
                try:
                    with servers.running(name, cpus=self.server_cpus) as server:
                        # One short burst first, so lazily built state is in the baseline.
                        loadgen.run(
                            **self.job(
                                loadgen,
                                server,
                                "stats",
                                kind="pipelined",
                                depth=10,
                                connections=1,
                                max_requests=200,
                                warmup=0.0,
                                duration=0.1,
                            )
                        )
                        time.sleep(plan.idle_settle / 2)
                        before = server.rss()
                        opened = loadgen.run(
                            timeout=300, kind="idle_open", host=HOST, port=server.port, count=count
                        )
                        time.sleep(plan.idle_settle)
                        after = server.rss()
                        threads = server.threads()
                        loadgen.run(kind="idle_release")
                except BenchError as exc:
                    entry.failures.append(f"run {run + 1}: {exc}")
                    with_release(loadgen)
                    continue
                per_connection = (after - before) / count
                entry.values.append(per_connection)
                entry.runs.append(
                    {
                        "run": run + 1,
                        "rss_before": before,
                        "rss_after": after,
                        "bytes_per_connection": per_connection,
                        "open_seconds": opened["elapsed"],
                        "server_threads": threads,
                    }
                )
                say(
                    self.out,
                    f"  run {run + 1}: {count} idle connections: {name} "
                    f"{per_connection / 1024:,.1f} KiB each "
                    f"(RSS {before / 2**20:,.1f} -> {after / 2**20:,.1f} MiB)",
                )

    def monitor(self, run: int, loadgen: LoadGen) -> None:
        plan = self.plan
        entry = self.recorder.entry(
            "monitor",
            "monitor lines to one fast reader",
            "agentrpc",
            "rate",
            "lines/s",
            {"level": "INFO", "lines": plan.monitor_lines, "producer_batch": plan.monitor_batch},
        )
        extra = ("--lines", str(plan.monitor_lines), "--batch", str(plan.monitor_batch))
        try:
            with servers.running("monitor", *extra, cpus=self.server_cpus) as server:
                result = self.measured(
                    loadgen,
                    server,
                    {"kind": "monitor", "host": HOST, "port": server.port, "level": "INFO"},
                    120,
                )
                assert server.process.stdout is not None
                ready, _, _ = select.select([server.process.stdout], [], [], 30)
                producer = json.loads(server.process.stdout.readline()) if ready else {}
        except (BenchError, ValueError) as exc:
            entry.failures.append(f"run {run + 1}: {exc}")
            return
        result.update(run=run + 1, producer=producer)
        if producer.get("dropped"):
            entry.failures.append(f"run {run + 1}: the hub dropped {producer['dropped']} lines")
        entry.runs.append(result)
        entry.values.append(result["rate"])
        say(
            self.out,
            f"  run {run + 1}: monitor: {fmt_rate(result['rate'])} lines/s "
            f"(dropped {producer.get('dropped', '?')})",
        )

    def engine(self, run: int) -> None:
        plan = self.plan
        cases = []
        for command, depth in plan.engine_cases:
            wire = COMMANDS["agentrpc"][command]
            cases.append(
                {
                    "name": command,
                    "command": wire.name,
                    "body": wire.body,
                    "reply_body": wire.reply_body,
                    "depth": depth,
                    "max_requests": plan.max_requests,
                    "warmup": plan.warmup,
                    "duration": plan.duration,
                }
            )
        timeout = len(cases) * (plan.warmup + plan.duration + 60) + 30
        try:
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.inproc", "engine", "--spec", json.dumps(cases)],
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=servers.source_root(),
                env=python_env(),
                check=True,
                preexec_fn=servers.pinned(self.server_cpus),
            )
            results = json.loads(done.stdout)
        except (subprocess.SubprocessError, ValueError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            self.notes.append(f"in-memory run {run + 1} failed: {exc} {detail[-500:]}")
            return
        for result in results:
            entry = self.recorder.entry(
                "engine",
                f"{result['name']} depth {result['depth']}",
                "agentrpc",
                "rate",
                "replies/s",
                {"command": result["name"], "depth": result["depth"], "transport": "memory"},
            )
            result["run"] = run + 1
            entry.runs.append(result)
            entry.values.append(result["rate"])
        say(
            self.out,
            f"  run {run + 1}: in-memory: "
            + ", ".join(f"{r['name']} d{r['depth']} {fmt_rate(r['rate'])}/s" for r in results),
        )

    # -- the whole suite

    def run(self) -> dict[str, Any]:
        plan = self.plan
        started = time.time()
        info = environment(plan)
        if self.snapshot:
            root = servers.snapshot_sources()
            info["versions"]["agentrpc_snapshot_sha256"] = source_fingerprint(root)
        info["placement"] = {
            "pinned": self.pinned,
            "server_cpus": self.server_cpus,
            "generator_cpus": self.client_cpus,
        }
        loadgen = LoadGen(self.client_cpus)
        try:
            for run in range(plan.runs):
                waited, busy = wait_for_quiet(plan.quiet_wait)
                info.setdefault("loadavg_per_run", []).append(os.getloadavg()[0])
                info.setdefault("quiet_wait_per_run", []).append(
                    {"waited_s": waited, "other_cores": busy}
                )
                if waited:
                    say(self.out, f"waited {waited:.0f} s for a quieter machine ({busy:.2f} cores)")
                say(self.out, f"run {run + 1} of {plan.runs}: throughput")
                started_servers: dict[str, Server] = {}
                try:
                    for name in self.order(run, plan.servers):
                        started_servers[name] = servers.start(name, cpus=self.server_cpus)
                    running = {name: started_servers[name] for name in plan.servers}
                    for server in running.values():
                        self.warm_server(loadgen, server)
                    if run == 0:
                        self.selfcheck(loadgen, running)
                    self.throughput(run, loadgen, running)
                finally:
                    for server in started_servers.values():
                        servers.stop(server)
                say(self.out, f"run {run + 1} of {plan.runs}: idle connections, monitor, engine")
                self.idle(run, loadgen)
                if "agentrpc" in plan.servers:
                    self.monitor(run, loadgen)
                    self.engine(run)
        finally:
            loadgen.close()
        finished = time.time()
        info["finished_at"] = dt.datetime.fromtimestamp(finished).astimezone().isoformat()
        info["duration_s"] = finished - started
        info["loadavg_end"] = os.getloadavg()
        if source_fingerprint() != info["versions"]["agentrpc_sources_sha256"]:
            self.notes.append(
                "agentrpc's sources in the working tree changed while the suite ran; every run "
                "measured the snapshot taken at the start (fingerprint in results.json)"
                if self.snapshot
                else "agentrpc's sources changed while the suite ran: later runs measured "
                "other code"
            )
        entries = [entry.summary() for entry in self.recorder.entries.values()]
        results: dict[str, Any] = {
            "schema": SCHEMA,
            **info,
            "plan": asdict(plan),
            "entries": entries,
            "notes": self.notes,
        }
        results["comparisons"] = comparisons(entries)
        results["targets"] = evaluate_targets(results)
        return results


QUIET_CORES: Final = 0.1


def wait_for_quiet(limit: float) -> tuple[float, float]:
    """Wait (at most ``limit`` seconds) until the machine's busy CPU is below
    :data:`QUIET_CORES` over one second; returns (seconds waited, last busy cores)."""
    start = time.monotonic()
    busy = 0.0
    while True:
        before = servers.machine_busy_seconds()
        time.sleep(1.0 if limit else 0.0)
        if not limit:
            return 0.0, 0.0
        busy = servers.machine_busy_seconds() - before
        waited = time.monotonic() - start
        if busy < QUIET_CORES or waited >= limit:
            return (0.0 if waited < 1.5 else waited), busy


def with_release(loadgen: LoadGen) -> None:
    with contextlib.suppress(BenchError):
        loadgen.run(kind="idle_release")


# ----------------------------------------------------------------------------- environment


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _output(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def source_fingerprint(root: Path = REPO_ROOT) -> str:
    """A hash of agentrpc's Python sources under ``root`` (``transports/`` and ``cli/``
    included, whether linked into ``agentrpc/`` as in older trees or beside it)."""
    digest = hashlib.sha256()
    base = root / "agentrpc"
    paths = list(base.rglob("*.py"))  # does not descend into linked directories
    for sub in ("transports", "cli"):
        if (base / sub).is_symlink():
            paths += (base / sub).rglob("*.py")
        elif not (base / sub).exists():
            paths += (root / sub).rglob("*.py")
    for path in sorted(paths, key=lambda path: str(path.relative_to(root))):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def environment(plan: Plan) -> dict[str, Any]:
    import agentrpc.build_info

    now = dt.datetime.now().astimezone()
    revision = _output(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"]) or "unknown"
    dirty = _output(
        [
            "git",
            "-C",
            str(REPO_ROOT),
            "status",
            "--porcelain",
            "--",
            "agentrpc",
            "transports",
            "cli",
        ]
    )
    serf = servers.serf_binary()
    serf_version = _output([serf, "version"]).splitlines()[0] if serf else "not installed"
    serf_package = _output(["dpkg-query", "-W", "-f", "${Version}", "serf"]) if serf else ""
    return {
        "date": now.date().isoformat(),
        "started_at": now.isoformat(),
        "mode": plan.mode,
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "memory_bytes": _mem_total(),
            "platform": platform.platform(),
            "loadavg_start": os.getloadavg(),
        },
        "versions": {
            "python": platform.python_version(),
            "trio": trio.__version__,
            "msgpack": ".".join(str(part) for part in msgpack.version),
            "serf": serf_version,
            "serf_package": serf_package,
            "agentrpc": agentrpc.build_info.VERSION,
            "agentrpc_revision": revision,
            "baseline_revision": servers.baseline_revision() or None,
            "agentrpc_tree_modified": bool(dirty),
            "agentrpc_tree_changes": dirty.splitlines(),
            "agentrpc_sources_sha256": source_fingerprint(),
        },
        "agentrpc_config": servers.AGENT_LIMITS,
    }


# ----------------------------------------------------------------------------- analysis


def comparisons(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """agentrpc / serf for every key both measured: the ratio of medians, and of each run;
    agentrpc / baseline too when a baseline revision was measured."""
    by_key: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for entry in entries:
        by_key.setdefault((entry["group"], entry["key"]), {})[entry["server"]] = entry
    rows = []
    for (group, key), pair in by_key.items():
        ours, theirs = pair.get("agentrpc"), pair.get("serf")
        row: dict[str, Any] = {"group": group, "key": key, "ratio": None, "run_ratios": []}
        if ours and theirs and ours["median"] and theirs["median"]:
            row["ratio"] = ours["median"] / theirs["median"]
            row["run_ratios"] = [
                a / b for a, b in zip(ours["values"], theirs["values"], strict=False) if b
            ]
        baseline = pair.get(servers.BASELINE)
        if ours and baseline and ours["median"] and baseline["median"]:
            row["baseline_ratio"] = ours["median"] / baseline["median"]
        rows.append(row)
    return rows


def _median_of(results: dict[str, Any], group: str, key: str, server: str) -> float | None:
    for entry in results["entries"]:
        if (entry["group"], entry["key"], entry["server"]) == (group, key, server):
            value = entry["median"]
            return None if value is None else float(value)
    return None


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each met or missed by how much (medians of this suite)."""
    plan = results["plan"]
    targets: list[dict[str, Any]] = []

    def ratio_target(name: str, group: str, key: str, required: float, below: bool) -> None:
        ours = _median_of(results, group, key, "agentrpc")
        theirs = _median_of(results, group, key, "serf")
        row: dict[str, Any] = {
            "target": name,
            "group": group,
            "key": key,
            "agentrpc": ours,
            "serf": theirs,
            "required": required,
            "kind": "ratio",
        }
        if ours is None or theirs is None or not theirs:
            row.update(ratio=None, met=None, verdict="not measured")
        else:
            ratio = ours / theirs
            met = ratio < required if below else ratio >= required
            if met:
                verdict = "met"
            elif below:
                verdict = f"missed: {ratio:.2f}x serf, {(ratio / required - 1) * 100:.0f}% too high"
            else:
                verdict = (
                    f"missed by {(1 - ratio / required) * 100:.0f}% ({ratio:.2f}x of {required}x)"
                )
            row.update(ratio=ratio, met=met, verdict=verdict)
        targets.append(row)

    depth, conns = plan["headline_depth"], plan["connection_depth"]
    for command in plan["commands"]:
        ratio_target(
            f"pipelined, 1 connection (depth {depth}): >= 2x serf",
            "throughput",
            f"{command} depth {depth}",
            2.0,
            False,
        )
    if 4 in plan["connection_counts"]:
        for command in plan["commands"]:
            ratio_target(
                f"pipelined, 4 connections (depth {conns} each): >= 1.5x serf",
                "throughput",
                f"{command} 4 conns x depth {conns}",
                1.5,
                False,
            )
    for command in plan["commands"]:
        ratio_target(
            "sequential round trips: >= 1x serf", "throughput", f"{command} sequential", 1.0, False
        )
    if results["placement"]["pinned"]:
        for command in plan["commands"]:
            ratio_target(
                "sequential round trips, client on the server's CPU: >= 1x serf",
                "throughput",
                f"{command} sequential, same CPU",
                1.0,
                False,
            )
    monitor = _median_of(results, "monitor", "monitor lines to one fast reader", "agentrpc")
    required = 100_000.0
    row: dict[str, Any] = {
        "target": "monitor: >= 100k lines/s to one fast reader",
        "group": "monitor",
        "key": "monitor lines to one fast reader",
        "agentrpc": monitor,
        "serf": None,
        "required": required,
        "kind": "absolute",
        "ratio": None,
    }
    if monitor is None:
        row.update(met=None, verdict="not measured")
    elif monitor >= required:
        row.update(met=True, verdict="met")
    else:
        row.update(met=False, verdict=f"missed by {(1 - monitor / required) * 100:.0f}%")
    targets.append(row)
    for count in plan["idle_counts"]:
        ratio_target(
            "idle connection bytes: below serf's", "idle", f"{count} idle connections", 1.0, True
        )
    return targets


def run_suite(plan: Plan, out: TextIO | None = sys.stderr) -> dict[str, Any]:
    """Run ``plan`` (serf dropped with a note when it is not installed) and return results."""
    notes = []
    if "serf" in plan.servers and servers.serf_binary() is None:
        plan = replace(plan, servers=tuple(name for name in plan.servers if name != "serf"))
        notes.append("serf is not installed (apt-get install serf): agentrpc measured alone")
    suite = Suite(plan, out)
    suite.notes.extend(notes)
    return suite.run()
