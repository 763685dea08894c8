"""Raft on a 3-server loopback cluster: agentrpc's RaftEngine beside Go's hashicorp/raft.

``python -m benchmarks.raft_cluster`` (3 rounds, about 3 minutes; ``--quick``: 1 short round;
``--tiny``: the smoke test's seconds) measures commits per second and commit latency (p50,
p99) with 1, 16 and 64 concurrent writers on the leader, each applying one 256-byte command at
a time and waiting until it is committed and applied:

* ``agentrpc``: three child processes of this module (``--node``), each one
  :class:`~agentrpc.raft.engine.RaftEngine` with :class:`~agentrpc.raft.sqlite_store.SQLiteStore`
  (log and stable store, group commit) and :class:`~agentrpc.raft.snapshots.FileSnapshotStore`
  under a temporary directory, the KV state machine of :mod:`agentrpc.raft.kv_fsm` (a ``set``
  of a 256-byte command), and a real :class:`~agentrpc.serverport.server.ServerPort` on
  127.0.0.1 whose router reads byte 1 and hands the stream to ``engine.handle_connection``, as
  an agent's server port does. The writers are Trio tasks in the leader calling
  ``engine.apply``.
* ``hashicorp``: three processes of ``benchmarks/go/raft_cluster`` (Debian's hashicorp/raft
  1.1.2, raft-boltdb behind a LogCache, a FileSnapshotStore, a TCP NetworkTransport, a
  counting state machine), built by :mod:`benchmarks.go_build`; the writers are goroutines in
  the leader calling ``Apply``. Without Go the run measures agentrpc alone and says so.

Same raft timing on both sides: hashicorp/raft's ``DefaultConfig`` (heartbeat and election 1 s,
lease 0.5 s, commit timeout 50 ms, 64 entries per AppendEntries, snapshot threshold 8192),
which is :class:`~agentrpc.raft.timing.RaftConfig` scaled by a ``raft_multiplier`` of 1. Same
fsync policy: an entry is acknowledged only once durable (SQLite WAL with
``synchronous=FULL``; bolt's fdatasync per transaction), on the leader and on the followers
that make the quorum.

Every cell (implementation, writers) runs on a fresh cluster in a fresh directory under
``--dir`` (default: the temporary directory): start the three processes, bootstrap them with
the three addresses, wait for a leader, warm up, then count the applies completed in a fixed
window. The implementations take turns cell by cell, the order rotating every round; figures
are medians over rounds. The CPU time of each process during the load and the load average
before and after each cell are kept, since the machine is shared.

Writes ``benchmarks/results/<date>-raft-cluster/`` (``--out DIR``): ``report.md`` and
``results.json``. ``--profile`` runs one agentrpc cell with cProfile in every node (enabled
for the load only) and writes ``profile-<writers>.txt`` beside them.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import os
import pstats
import select
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, Final

import trio

from agentrpc.logs import INFO, LogHub
from agentrpc.raft.configuration import Configuration, Server
from agentrpc.raft.engine import RaftEngine
from agentrpc.raft.errors import RaftError
from agentrpc.raft.kv_fsm import KVStateMachine, set_command
from agentrpc.raft.snapshots import FileSnapshotStore
from agentrpc.raft.sqlite_store import SQLiteStore
from agentrpc.raft.timing import RaftConfig
from agentrpc.raft.transport import RaftTransport, tcp_dialer
from agentrpc.serverport.endpoints import Endpoints
from agentrpc.serverport.server import ServerPort

from . import go_build, harness
from .harness import loadavg, percentile, say
from .servers import REPO_ROOT

RESULTS: Final = REPO_ROOT / "benchmarks" / "results"
IMPLEMENTATIONS: Final = ("agentrpc", "hashicorp")
GO_PROGRAM: Final = "raft_cluster"
NODES: Final = 3
ENTRY_BYTES: Final = 256
START_TIMEOUT: Final = 60.0
"""Seconds for a node to listen, and again for the cluster to elect a leader."""
CALL_TIMEOUT: Final = 30.0
"""Seconds past its own length for any control call (a load included) to answer."""
STOP_TIMEOUT: Final = 15.0
TARGET_THROUGHPUT: Final = 1.0
"""Issue 13: commits/s at 64 writers at least this times Go's."""
TARGET_P99: Final = 2.0
"""Issue 13: p99 latency at 1 writer at most this times Go's."""


@dataclass(frozen=True)
class Plan:
    rounds: int
    window: float
    warmup: float
    writers: tuple[int, ...] = (1, 16, 64)


PLANS: Final = {
    "full": Plan(rounds=3, window=5.0, warmup=1.0),
    "quick": Plan(rounds=1, window=1.5, warmup=0.5),
    "tiny": Plan(rounds=1, window=0.3, warmup=0.2, writers=(1, 8)),
}


def command_for(slot: int, size: int) -> bytes:
    """A KV ``set`` of key ``w<slot>`` whose msgpack encoding is ``size`` bytes (or as close
    to it as the encoding allows)."""
    key = f"w{slot}"
    base = len(set_command(key, ""))
    best = set_command(key, "")
    for length in range(max(size - base, 0), max(size - base - 8, -1), -1):
        best = set_command(key, "x" * length)
        if len(best) <= size:
            break
    return best


# == the agentrpc child: one server ===============================================================


class CountingStream(trio.abc.Stream):
    """A stream that counts its ``send_all`` calls (one per Raft request sent: the transport
    writes each request, pipelined or not, with one call)."""

    def __init__(self, inner: trio.abc.Stream, counter: list[int]) -> None:
        self.inner = inner
        self.counter = counter

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.counter[0] += 1
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class NodeChild:
    """One agentrpc Raft server driven over stdin/stdout (the Go program's protocol)."""

    def __init__(self, node_id: str, directory: Path, profile: Path | None) -> None:
        self.node_id = node_id
        self.directory = directory
        self.profile_path = profile
        self.profiler: cProfile.Profile | None = None
        self.sends = [0]
        """Requests this node has written to its peers (see :class:`CountingStream`)."""

    async def dial(self, address: str) -> trio.abc.Stream:
        return CountingStream(await tcp_dialer(address), self.sends)

    async def run(self) -> None:
        log = LogHub(INFO, sink=sys.stderr).logger("raft")
        port = ServerPort("127.0.0.1:0", Endpoints(), None, log, drain_timeout=0.5)
        store: SQLiteStore | None = None
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        stdout = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
        try:
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(port.run)
                address = f"127.0.0.1:{bound.port}"
                store = await trio.to_thread.run_sync(SQLiteStore, self.directory / "raft.db")
                snapshots = await trio.to_thread.run_sync(FileSnapshotStore, self.directory)
                engine = RaftEngine(
                    RaftConfig(self.node_id, address).scaled(1),
                    logs=store,
                    stable=store,
                    snapshots=snapshots,
                    fsm=KVStateMachine(),
                    transport=RaftTransport(self.dial, log=log),
                    log=log,
                )
                # What an agent's server port does: byte 1 goes to the engine.
                port.router.set_raft_handler(engine.handle_connection)
                await nursery.start(engine.run)
                await _send(stdout, {"ok": True, "address": address})
                await self.control(engine, store, stdin, stdout)
                nursery.cancel_scope.cancel()
        finally:
            port.shutdown()
            if store is not None:
                store.close()
            with trio.CancelScope(shield=True):
                await stdin.aclose()
                await stdout.aclose()

    async def control(
        self,
        engine: RaftEngine,
        store: SQLiteStore,
        stdin: trio.abc.ReceiveStream,
        stdout: trio.abc.SendStream,
    ) -> None:
        """Answer the parent's requests, a line each, until the parent closes stdin."""
        buffer = b""
        while True:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                try:
                    answer = await self.answer(engine, store, json.loads(line))
                except (
                    RaftError,
                    trio.TooSlowError,
                    OSError,
                    ValueError,
                    KeyError,
                    TypeError,
                ) as exc:
                    answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                await _send(stdout, answer)

    async def answer(
        self, engine: RaftEngine, store: SQLiteStore, request: dict[str, Any]
    ) -> dict[str, Any]:
        op = request.get("op")
        if op == "bootstrap":
            servers = tuple(Server(s["id"], s["address"]) for s in request["servers"])
            engine.bootstrap(Configuration(servers))
            return {"ok": True}
        if op == "wait-leader":
            with trio.move_on_after(float(request.get("timeout", 10.0))):
                while not engine.leader_address:
                    await engine.wait_changed()
            if not engine.leader_address:
                return {"ok": False, "error": "no leader"}
            return {"ok": True, "leader": engine.leader_address, "state": engine.stats()["state"]}
        if op == "load":
            if not engine.is_leader:
                return {"ok": False, "error": "node is not the leader"}
            load = Load(int(request["writers"]), int(request["size"]))
            result = await load.run(
                engine, store, self.sends, float(request["warmup"]), float(request["seconds"])
            )
            return {"ok": True, "result": result}
        if op == "stats":
            stats: dict[str, Any] = dict(engine.stats())
            stats.update(store_commits=store.commits, store_writes=store.writes)
            return {"ok": True, "result": stats}
        if op == "profile":
            return {"ok": True, "result": self.profile(bool(request.get("on")))}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def profile(self, on: bool) -> str:
        if self.profile_path is None:
            return "no --node-profile"
        if on and self.profiler is None:
            self.profiler = cProfile.Profile()
            self.profiler.enable()
            return "on"
        if not on and self.profiler is not None:
            self.profiler.disable()
            self.profiler.dump_stats(self.profile_path)
            self.profiler = None
            return str(self.profile_path)
        return "unchanged"


async def _send(stream: trio.abc.SendStream, answer: dict[str, Any]) -> None:
    await stream.send_all(json.dumps(answer).encode() + b"\n")


class Load:
    """``writers`` tasks on the leader, each applying its ``size``-byte command one at a time
    and waiting for the result; only the applies completed inside the window count (the Go
    program's ``load``)."""

    def __init__(self, writers: int, size: int) -> None:
        self.writers = writers
        self.commands = [command_for(slot, size) for slot in range(writers)]
        self.latencies: list[list[float]] = [[] for _ in range(writers)]
        self.failures: list[str] = []
        self.measuring = False
        self.stopping = False

    async def writer(self, engine: RaftEngine, slot: int) -> None:
        mine = self.latencies[slot]
        data = self.commands[slot]
        while not self.stopping:
            started = time.perf_counter()
            try:
                await engine.apply(data)
            except RaftError as exc:
                self.failures.append(str(exc))
                return
            if self.measuring and not self.stopping:
                mine.append(time.perf_counter() - started)

    async def run(
        self,
        engine: RaftEngine,
        store: SQLiteStore,
        sends: list[int],
        warmup: float,
        seconds: float,
    ) -> dict[str, Any]:
        with trio.fail_after(warmup + seconds + CALL_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for slot in range(self.writers):
                    nursery.start_soon(self.writer, engine, slot)
                await trio.sleep(warmup)
                before = (store.commits, engine.core.commit_index, sends[0])
                self.measuring = True
                window_start = time.perf_counter()
                await trio.sleep(seconds)
                self.stopping = True
                elapsed = time.perf_counter() - window_start
                after = (store.commits, engine.core.commit_index, sends[0])
        done = [value for per_writer in self.latencies for value in per_writer]
        transactions = after[0] - before[0]
        committed = max(after[1] - before[1], 1)
        return {
            "writers": self.writers,
            "commits": len(done),
            "seconds": elapsed,
            "per_second": len(done) / elapsed,
            "p50_us": percentile(done, 0.50) * 1e6,
            "p99_us": percentile(done, 0.99) * 1e6,
            "max_us": percentile(done, 1.0) * 1e6,
            "errors": len(self.failures),
            "error": self.failures[-1] if self.failures else "",
            "last_index": engine.core.last_index,
            "command_bytes": len(self.commands[0]),
            "leader_transactions": transactions,
            "leader_entries_per_transaction": committed / max(transactions, 1),
            "leader_sends_per_entry": (after[2] - before[2]) / committed,
        }


def run_node(node_id: str, directory: Path, profile: Path | None) -> None:
    trio.run(NodeChild(node_id, directory, profile).run)


# == the parent ====================================================================================


class CellError(RuntimeError):
    """A node failed, did not answer in time, or refused a request."""


class Node:
    """One server process and its line-per-message control channel."""

    def __init__(self, argv: list[str], directory: Path) -> None:
        self.directory = directory
        self.log_path = directory / "node.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            bufsize=0,
        )
        self._buffer = b""
        self.address = ""

    def log_tail(self, size: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""

    def read(self, timeout: float) -> dict[str, Any]:
        stdout = self.proc.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CellError(f"{self.directory.name}: no answer in {timeout:.0f} s")
            ready, _, _ = select.select([stdout], [], [], left)
            if ready:
                chunk = os.read(stdout.fileno(), 65536)
                if not chunk:
                    raise CellError(f"{self.directory.name} exited: {self.log_tail()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, request: dict[str, Any], timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(request).encode() + b"\n")
        answer = self.read(timeout)
        if not answer.get("ok"):
            raise CellError(f"{self.directory.name} {request.get('op')}: {answer.get('error')}")
        return answer

    def cpu_seconds(self) -> float:
        """User and system time of the process (every thread) so far."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """End of input: the node shuts down; killed if it has not after a while."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def node_argv(
    implementation: str, node_id: str, directory: Path, go: Path | None, profile: bool
) -> list[str]:
    if implementation == "hashicorp":
        assert go is not None
        return [str(go), "-id", node_id, "-dir", str(directory)]
    argv = [
        sys.executable,
        "-m",
        "benchmarks.raft_cluster",
        "--node",
        node_id,
        "--node-dir",
        str(directory),
    ]
    if profile:
        argv += ["--node-profile", str(directory / "profile.pstats")]
    return argv


def start_cluster(
    implementation: str, base: Path, go: Path | None, profile: bool = False
) -> tuple[list[Node], Node]:
    """Three bootstrapped servers and the one that leads."""
    nodes: list[Node] = []
    try:
        for number in range(1, NODES + 1):
            directory = base / f"n{number}"
            directory.mkdir()
            argv = node_argv(implementation, f"n{number}", directory, go, profile)
            nodes.append(Node(argv, directory))
        for node in nodes:
            node.address = str(node.read(START_TIMEOUT)["address"])
        servers = [{"id": f"n{i}", "address": n.address} for i, n in enumerate(nodes, 1)]
        for node in nodes:
            node.call({"op": "bootstrap", "servers": servers})
        leader = nodes[0].call({"op": "wait-leader", "timeout": START_TIMEOUT}, START_TIMEOUT + 5)
        by_address = {node.address: node for node in nodes}
        if leader["leader"] not in by_address:
            raise CellError(f"leader {leader['leader']!r} is none of {sorted(by_address)}")
        return nodes, by_address[leader["leader"]]
    except BaseException:
        for node in nodes:
            node.stop()
        raise


def run_cell(
    implementation: str,
    writers: int,
    plan: Plan,
    base: Path,
    go: Path | None,
    profile: bool = False,
) -> dict[str, Any]:
    """One measurement on a fresh cluster in a fresh directory."""
    directory = Path(tempfile.mkdtemp(prefix=f"raft-cluster-{implementation}-", dir=base))
    load_before = loadavg()
    try:
        started = time.monotonic()
        nodes, leader = start_cluster(implementation, directory, go, profile)
        elected = time.monotonic() - started
        try:
            if profile:
                for node in nodes:
                    node.call({"op": "profile", "on": True})
            cpu_before = [node.cpu_seconds() for node in nodes]
            wall_start = time.monotonic()
            request = {
                "op": "load",
                "writers": writers,
                "seconds": plan.window,
                "warmup": plan.warmup,
                "size": ENTRY_BYTES,
            }
            answer = leader.call(request, plan.warmup + plan.window + CALL_TIMEOUT)
            wall = time.monotonic() - wall_start
            cpu = [
                node.cpu_seconds() - before for node, before in zip(nodes, cpu_before, strict=True)
            ]
            profiles: dict[str, str] = {}
            if profile:
                for node in nodes:
                    path = node.call({"op": "profile", "on": False})["result"]
                    role = "leader" if node is leader else f"follower-{node.directory.name}"
                    profiles[role] = path
            stats = leader.call({"op": "stats"})["result"]
        except BaseException:
            for node in nodes:
                node.stop()
            raise
        for node in nodes:
            node.stop()
        result: dict[str, Any] = dict(answer["result"])
        followers = [c for node, c in zip(nodes, cpu, strict=True) if node is not leader]
        result.update(
            implementation=implementation,
            election_seconds=elected,
            load_wall_seconds=wall,
            leader_cpu_cores=cpu[nodes.index(leader)] / wall,
            followers_cpu_cores=sum(followers) / wall,
            leader_stats={
                k: stats[k]
                for k in (
                    "term",
                    "last_log_index",
                    "commit_index",
                    "applied_index",
                    "last_snapshot_index",
                )
                if k in stats
            },
            load_before=load_before,
            load_after=loadavg(),
        )
        if profile:
            result["profiles"] = {
                role: profile_summary(Path(path)) for role, path in profiles.items()
            }
        if result["errors"]:
            raise CellError(
                f"{implementation} x{writers}: {result['errors']} writers failed: {result['error']}"
            )
        return result
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def profile_summary(path: Path, top: int = 30) -> str:
    """The functions of a node's profile by own time, then by cumulative time."""
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def median_cells(cells: list[dict[str, Any]]) -> dict[str, Any]:
    keys = (
        "per_second",
        "p50_us",
        "p99_us",
        "leader_cpu_cores",
        "followers_cpu_cores",
        "leader_entries_per_transaction",
        "leader_sends_per_entry",
    )
    out: dict[str, Any] = {"rounds": len(cells)}
    for key in keys:
        values = [cell[key] for cell in cells if key in cell]
        if values:
            out[key] = statistics.median(values)
            out[f"{key}_min"], out[f"{key}_max"] = min(values), max(values)
    return out


def comparisons(results: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Ratios agentrpc / hashicorp per writer count, and the issue's two targets."""
    rows: list[dict[str, Any]] = []
    medians = results["medians"]
    for writers in results["writers"]:
        ours = medians.get(f"agentrpc/{writers}")
        theirs = medians.get(f"hashicorp/{writers}")
        if ours and theirs:
            rows.append(
                {
                    "writers": writers,
                    "throughput_ratio": ours["per_second"] / theirs["per_second"],
                    "p50_ratio": ours["p50_us"] / theirs["p50_us"],
                    "p99_ratio": ours["p99_us"] / theirs["p99_us"],
                }
            )
    by_writers = {row["writers"]: row for row in rows}
    targets = []
    for writers, key, limit, text in (
        (64, "throughput_ratio", TARGET_THROUGHPUT, "commits/s at 64 writers >= 1.0x Go's"),
        (1, "p99_ratio", TARGET_P99, "p99 latency at 1 writer <= 2x Go's"),
    ):
        row = by_writers.get(writers)
        value = None if row is None else row[key]
        met = None
        if value is not None:
            met = value >= limit if key == "throughput_ratio" else value <= limit
        targets.append({"target": text, "value": value, "met": met})
    return rows, targets


def machine_facts(base: Path) -> dict[str, Any]:
    facts = harness.machine_facts() | {"sqlite": sqlite3.sqlite_version, "dir": str(base)}
    probes = {
        "filesystem": ["stat", "-f", "-c", "%T", str(base)],
        "go": ["go", "version"],
        "debian_packages": [
            "dpkg-query",
            "-W",
            "golang-github-hashicorp-raft-dev",
            "golang-github-hashicorp-raft-boltdb-dev",
            "golang-github-boltdb-bolt-dev",
        ],
    }
    for name, argv in probes.items():
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
            facts[name] = " ".join(done.stdout.split()) or done.stderr.strip()[:200]
        except (OSError, subprocess.TimeoutExpired) as exc:
            facts[name] = f"unknown ({exc})"
    return facts


def _ms(us: float) -> str:
    return f"{us / 1e3:.2f}"


def report(results: dict[str, Any]) -> str:
    facts = results["machine"]
    lines = [
        "# Raft cluster: agentrpc's RaftEngine and Go's hashicorp/raft, 3 servers on loopback",
        "",
        f"{results['date']}, {results['mode']} mode: {results['rounds']} round(s), a fresh "
        f"cluster per cell, {results['warmup']} s warm-up then a {results['window']} s window; "
        f"{ENTRY_BYTES}-byte commands, each writer one apply at a time; medians over rounds "
        "(min-max in brackets). Raft timing: hashicorp/raft DefaultConfig on both sides "
        "(raft_multiplier 1). Every acknowledged entry is fsynced (SQLite WAL synchronous=FULL "
        "with group commit; bolt fdatasync per transaction).",
        "",
        f"Machine: {facts['machine']}, {facts['cpu_count']} CPUs ({facts['cpu_model']}), "
        f"kernel {facts['kernel']}, Python {facts['python']}, SQLite {facts['sqlite']}, "
        f"{facts.get('go', '')}; Debian {facts.get('debian_packages', '')}; stores under "
        f"{facts['dir']} ({facts.get('filesystem', '?')}).",
        "",
        "| writers | implementation | commits/s | p50 ms | p99 ms | leader CPU (cores) "
        "| followers CPU (cores) | entries per leader fsync | leader sends per entry |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for writers in results["writers"]:
        for implementation in results["implementations"]:
            cell = results["medians"].get(f"{implementation}/{writers}")
            if cell is None:
                continue
            per_txn = cell.get("leader_entries_per_transaction")
            sends = cell.get("leader_sends_per_entry")
            lines.append(
                f"| {writers} | {implementation} | {cell['per_second']:,.0f} "
                f"({cell['per_second_min']:,.0f}-{cell['per_second_max']:,.0f}) | "
                f"{_ms(cell['p50_us'])} | {_ms(cell['p99_us'])} "
                f"({_ms(cell['p99_us_min'])}-{_ms(cell['p99_us_max'])}) | "
                f"{cell['leader_cpu_cores']:.2f} | {cell['followers_cpu_cores']:.2f} | "
                f"{'' if per_txn is None else f'{per_txn:.1f}'} | "
                f"{'' if sends is None else f'{sends:.2f}'} |"
            )
    if results["comparisons"]:
        lines += [
            "",
            "| writers | agentrpc / hashicorp commits/s | p50 ratio | p99 ratio |",
            "|---:|---:|---:|---:|",
        ]
        for row in results["comparisons"]:
            lines.append(
                f"| {row['writers']} | {row['throughput_ratio']:.2f}x | "
                f"{row['p50_ratio']:.2f}x | {row['p99_ratio']:.2f}x |"
            )
        lines += ["", "Issue 13's targets:", ""]
        for target in results["targets"]:
            value = target["value"]
            verdict = {True: "met", False: "**missed**", None: "not measured"}[target["met"]]
            shown = "" if value is None else f"{value:.2f}x, "
            lines.append(f"- {target['target']}: {shown}{verdict}")
    loads = [
        load
        for cells in results["cells"].values()
        for cell in cells
        for load in (cell["load_before"], cell["load_after"])
    ]
    if loads:
        lines += [
            "",
            f"Load average (1 min) around the cells: {min(loads):.2f} to {max(loads):.2f} on "
            f"{facts['cpu_count']} CPUs (the machine is shared). CPU columns: user+system time "
            "of each process over the load call (warm-up included) divided by its wall time.",
        ]
    if results.get("note"):
        lines += ["", results["note"]]
    return "\n".join(lines) + "\n"


def build_go() -> tuple[Path | None, str]:
    try:
        return go_build.build(go_build.program_dir(REPO_ROOT, GO_PROGRAM), GO_PROGRAM), ""
    except go_build.GoBuildError as exc:
        return None, f"hashicorp/raft not measured: {exc}"


def run(
    plan: Plan,
    mode: str,
    base: Path,
    out: Path | None,
    implementations: Sequence[str] = IMPLEMENTATIONS,
) -> dict[str, Any]:
    """Every cell of ``plan``; the results dict, also written to ``out`` when given."""
    chosen = list(implementations)
    go: Path | None = None
    note = ""
    if "hashicorp" in chosen:
        go, note = build_go()
        if go is None:
            chosen.remove("hashicorp")
            say(note)
    cells: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(plan.rounds):
        for position, writers in enumerate(plan.writers):
            shift = (round_ + position) % len(chosen)
            for implementation in chosen[shift:] + chosen[:shift]:
                cell = run_cell(implementation, writers, plan, base, go)
                say(
                    f"round {round_ + 1} {implementation} x{writers}: "
                    f"{cell['per_second']:,.0f} commits/s p50 {_ms(cell['p50_us'])} ms "
                    f"p99 {_ms(cell['p99_us'])} ms, leader CPU {cell['leader_cpu_cores']:.2f}"
                )
                cells.setdefault(f"{implementation}/{writers}", []).append(cell)
    results: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "mode": mode,
        "machine": machine_facts(base),
        "rounds": plan.rounds,
        "window": plan.window,
        "warmup": plan.warmup,
        "writers": list(plan.writers),
        "entry_bytes": ENTRY_BYTES,
        "implementations": chosen,
        "cells": cells,
        "medians": {key: median_cells(value) for key, value in cells.items()},
        "note": note,
    }
    results["comparisons"], results["targets"] = comparisons(results)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        (out / "report.md").write_text(report(results))
    return results


def profile_run(writers: int, plan: Plan, base: Path, out: Path) -> Path:
    """One agentrpc cell with cProfile in every node during the load."""
    cell = run_cell("agentrpc", writers, plan, base, None, profile=True)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"profile-{writers}.txt"
    parts = [
        f"agentrpc x{writers} under cProfile: {cell['per_second']:,.0f} commits/s, p50 "
        f"{_ms(cell['p50_us'])} ms, p99 {_ms(cell['p99_us'])} ms, leader CPU "
        f"{cell['leader_cpu_cores']:.2f} cores, followers {cell['followers_cpu_cores']:.2f}, "
        f"{cell['leader_entries_per_transaction']:.1f} entries per leader transaction "
        "(the profiler slows the nodes down: read the proportions)\n"
    ]
    for role, text in sorted(cell["profiles"].items()):
        parts.append(f"\n==== {role} ====\n{text}")
    path.write_text("".join(parts))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.raft_cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="1 short round")
    size.add_argument("--tiny", action="store_true", help="the smoke test's seconds")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--only", choices=IMPLEMENTATIONS, help="measure one implementation")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--profile",
        type=int,
        metavar="WRITERS",
        help="profile one agentrpc cell with this many writers",
    )
    parser.add_argument("--node", help=argparse.SUPPRESS)
    parser.add_argument("--node-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--node-profile", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.node:
        run_node(args.node, args.node_dir, args.node_profile)
        return 0
    mode = "quick" if args.quick else "tiny" if args.tiny else "full"
    plan = PLANS[mode]
    if args.rounds:
        plan = replace(plan, rounds=args.rounds)
    out = args.out or RESULTS / f"{dt.date.today().isoformat()}-raft-cluster"
    if args.profile:
        say(f"wrote {profile_run(args.profile, plan, args.dir, out)}")
        return 0
    implementations = (args.only,) if args.only else IMPLEMENTATIONS
    results = run(plan, mode, args.dir, out, implementations)
    sys.stdout.write(report(results))
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
