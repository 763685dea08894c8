"""The servers under test, started as real processes on loopback, and their resource usage.

* ``agentrpc``: the installed CLI, ``python -m agentrpc.cli serve`` (TCP, log level WARN).
* ``serf``: Debian's Go agent, ``serf agent`` (same agent RPC framing; ``members`` instead of
  ``members-lan``).
Servers may be pinned to CPUs (``cpus``): the suite gives the server and the load generator
a core each, because on a small VM a round trip between two cores costs a wake-up of an idle
virtual CPU and the scheduler's placement otherwise flips between runs.

* ``monitor``: :mod:`benchmarks.inproc`'s monitor server, an in-process ``Agent`` whose hub a
  task feeds with log lines (agentrpc only).
* ``trio-streams``, ``trio-raw``: :mod:`benchmarks.bare_servers`, the best bare Trio servers
  (``handshake`` and ``stop`` only), the reference points of :mod:`benchmarks.engine_limit`.
* ``go-bare``: the Go load generator's trivial server (``loadgen serve``, built by
  :mod:`benchmarks.go_build`), against which the generator's ceiling is shown.

Ports are chosen by binding port 0 first. A server counts as up once its RPC port accepts a
connection. Memory and CPU come from ``/proc`` (Linux), so no extra package is needed.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from . import go_build

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
HOST: Final = "127.0.0.1"
PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
SERVERS: Final = ("agentrpc", "serf")
BASELINE: Final = "baseline"
"""agentrpc at an older revision (``run.py --baseline REV``), measured cell by cell beside
the current one."""
NO_HTTP_NO_DNS_FLAGS: Final = ("--http-addr", "", "--dns-addr", "")
"""Today's agent serves HTTP on 8500 and DNS on 8600 by default: off for benchmarked agents
(several run at once); a baseline revision may predate the flags (and had both off)."""
BARE_STREAMS: Final = "trio-streams"
BARE_RAW: Final = "trio-raw"
BARE_TRIO: Final = (BARE_STREAMS, BARE_RAW)
"""The bare Trio servers (:mod:`benchmarks.bare_servers`): ``handshake`` and ``stop`` only."""
GO_BARE: Final = "go-bare"
"""The Go generator's trivial server (``handshake`` and ``stop`` only)."""
AGENT_LIMITS: Final = {"max_connections": 30_000, "max_connections_per_client": 30_000}
"""agentrpc's connection caps (defaults 4096 and 256 per client IP) raised, through its config
file, above the 10,000 idle connections of the memory test; serf has no caps at all."""


def agent_config_file() -> str:
    """A JSON config file with :data:`AGENT_LIMITS` (written once per process)."""
    path = Path(tempfile.gettempdir()) / f"agentrpc-bench-{os.getpid()}.json"
    if not path.exists():
        path.write_text(json.dumps(AGENT_LIMITS))
        atexit.register(path.unlink, True)
    return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


_snapshot: Path | None = None


def snapshot_sources() -> Path:
    """Copy the package as it installs (``agentrpc/`` with ``transports/`` and ``cli/`` mapped
    into it, as pyproject's package-dir does) and ``benchmarks/`` to a temporary directory,
    once per process, and run every subprocess from there.

    The working tree may be edited while a suite runs (ours is, by other sessions): without a
    snapshot, later runs would measure other code than earlier ones.
    """
    global _snapshot
    if _snapshot is None:
        root = Path(tempfile.mkdtemp(prefix="agentrpc-bench-src-"))
        skip = shutil.ignore_patterns("__pycache__", "results", "*.pyc")
        shutil.copytree(REPO_ROOT / "agentrpc", root / "agentrpc", ignore=skip)
        for sub in ("transports", "cli"):
            if not (root / "agentrpc" / sub).exists():  # older trees linked them in
                shutil.copytree(REPO_ROOT / sub, root / "agentrpc" / sub, ignore=skip)
        shutil.copytree(REPO_ROOT / "benchmarks", root / "benchmarks", ignore=skip)
        atexit.register(shutil.rmtree, root, True)
        _snapshot = root
        global _snapshot_revision
        _snapshot_revision = git_revision()
    return _snapshot


_snapshot_revision = ""
_baseline: Path | None = None
_baseline_revision = ""


def prepare_baseline(revision: str) -> str:
    """Extract agentrpc at ``revision`` (``git archive``) into a temporary directory laid out
    as the package installs, for the ``baseline`` server; returns the full commit id."""
    global _baseline, _baseline_revision
    commit = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--verify", f"{revision}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tree = Path(tempfile.mkdtemp(prefix="agentrpc-bench-baseline-tree-"))
    root = Path(tempfile.mkdtemp(prefix="agentrpc-bench-baseline-"))
    atexit.register(shutil.rmtree, tree, True)
    atexit.register(shutil.rmtree, root, True)
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", commit],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    # copytree follows symlinks: older trees linked transports/ and cli/ into agentrpc/.
    shutil.copytree(tree / "agentrpc", root / "agentrpc", ignore=skip)
    for sub in ("transports", "cli"):
        if not (root / "agentrpc" / sub).exists():
            shutil.copytree(tree / sub, root / "agentrpc" / sub, ignore=skip)
    _baseline = root
    _baseline_revision = commit
    return commit


def baseline_revision() -> str:
    return _baseline_revision


def git_revision() -> str:
    """HEAD of the repository, plus a mark when agentrpc's sources differ from it."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "agentrpc", "transports", "cli")
    return head + (" + uncommitted changes" if dirty else "")


def snapshot_revision() -> str:
    """The revision the snapshot was taken at (the current one when there is no snapshot)."""
    return _snapshot_revision or git_revision()


def source_root() -> Path:
    """Where subprocesses import agentrpc and the benchmarks from (the snapshot, if taken)."""
    return _snapshot or REPO_ROOT


def python_env(root: Path | None = None) -> dict[str, str]:
    """The environment for our Python subprocesses: the sources (``root``, by default
    :func:`source_root`) first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(root or source_root()), env.get("PYTHONPATH", "")) if part
    )
    return env


def server_root(name: str) -> Path:
    """Where the server ``name`` runs from: the baseline's tree for ``baseline``."""
    if name == BASELINE:
        if _baseline is None:
            raise RuntimeError("no baseline prepared (run.py --baseline REV)")
        return _baseline
    return source_root()


def faces_off_flags(name: str) -> tuple[str, ...]:
    """:data:`NO_HTTP_NO_DNS_FLAGS` for agentrpc at ``name``'s revision when its CLI knows
    them (a revision before the HTTP API and DNS had neither, nor their flags)."""
    serve = server_root(name) / "agentrpc" / "cli" / "serve_command.py"  # as installed
    if name != BASELINE or (serve.exists() and "--http-addr" in serve.read_text()):
        return NO_HTTP_NO_DNS_FLAGS
    return ()


def serf_binary() -> str | None:
    return shutil.which("serf")


@dataclass
class Server:
    """A running server process and where its RPC listens."""

    name: str
    process: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss(self) -> int:
        """Resident set size in bytes (``/proc/PID/statm``)."""
        with open(f"/proc/{self.pid}/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU time spent by everything on the machine so far, all CPUs (``/proc/stat``)."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def wait_listening(process: subprocess.Popen[bytes], port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout} s")


def command_for(name: str, rpc_port: int) -> list[str]:
    if name in ("agentrpc", BASELINE):
        return [
            sys.executable,
            "-m",
            "agentrpc.cli",
            "serve",
            "--node",
            "bench",
            "--rpc-addr",
            f"{HOST}:{rpc_port}",
            "--serf-lan-addr",
            f"{HOST}:0",
            "--serf-wan-addr",
            f"{HOST}:0",
            "--server-addr",
            f"{HOST}:0",
            "--log-level",
            "warn",
            "--config-file",
            agent_config_file(),
            *faces_off_flags(name),
        ]
    if name == "serf":
        serf = serf_binary()
        if serf is None:
            raise RuntimeError("serf is not installed (apt-get install serf)")
        return [
            serf,
            "agent",
            "-node=bench",
            f"-bind={HOST}:{free_port()}",
            f"-rpc-addr={HOST}:{rpc_port}",
            "-log-level=warn",
        ]
    if name in BARE_TRIO:
        kind = "streams" if name == BARE_STREAMS else "raw"
        return [sys.executable, "-m", "benchmarks.bare_servers", kind, "--port", str(rpc_port)]
    if name == GO_BARE:
        binary = go_build.loadgen_binary(source_root())
        return [str(binary), "serve", "-addr", f"{HOST}:{rpc_port}"]
    if name == "monitor":
        return [
            sys.executable,
            "-m",
            "benchmarks.inproc",
            "monitor-server",
            "--port",
            str(rpc_port),
        ]
    raise ValueError(f"unknown server {name!r}")


def pinned(cpus: tuple[int, ...] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child (and every thread it starts) to ``cpus``."""
    if not cpus:
        return None
    chosen = set(cpus)

    def pin() -> None:
        os.sched_setaffinity(0, chosen)

    return pin


def start(name: str, *extra: str, cpus: tuple[int, ...] | None = None) -> Server:
    port = free_port()
    process = subprocess.Popen(
        [*command_for(name, port), *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if name == "monitor" else subprocess.DEVNULL,
        stderr=None,  # warnings and errors of the server show up in the run's output
        cwd=server_root(name),
        env=python_env(server_root(name)),
        preexec_fn=pinned(cpus),
    )
    try:
        wait_listening(process, port)
    except BaseException:
        stop(Server(name, process, port))
        raise
    return Server(name, process, port)


def stop(server: Server) -> None:
    """Terminate (then kill) the server's process and reap it."""
    stop_process(server.process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate (then kill) ``process``, reap it and close its stdout pipe, if any."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()


@contextlib.contextmanager
def running(name: str, *extra: str, cpus: tuple[int, ...] | None = None) -> Iterator[Server]:
    server = start(name, *extra, cpus=cpus)
    try:
        yield server
    finally:
        stop(server)
