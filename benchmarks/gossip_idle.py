"""Idle gossip CPU: a mixed loopback cluster, serf beside agentrpc, CPU per node while idle.

``python -m benchmarks.gossip_idle [--seconds 60]`` starts 4 ``serf agent`` and 4 agentrpc
(the CLI ``serve``, as users run it) nodes on 127.0.0.1, each with its own ports, joins them
into one LAN cluster (every node through the first serf node, over the agent RPC), waits until
every node lists every other alive, lets the joins settle, then reads each process's CPU time
(every thread, ``/proc/PID/task/*/schedstat``) and context switches over ``--seconds`` of
idleness. Nothing is pinned. The cluster is checked again at the end (still all alive).

The report gives CPU per node (milliseconds per second and seconds in total) and wake-ups
per second for each kind, the ratio agentrpc/serf, and the CPU that processes outside the
cluster used meanwhile (*other load*). ``--client`` runs the agents in client mode (no WAN
pool, no server port), ``--baseline REV`` adds a second cluster with agentrpc at that git
revision, measured after this tree's in the same run (``--rounds`` alternates them), and
``--agents-at REV`` measures that revision alone instead of this tree.

Writes ``benchmarks/results/<date>-gossip-idle/`` (``--out DIR``): ``report.md`` and
``results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import msgpack

from . import report, servers, suite
from .servers import HOST, REPO_ROOT
from .suite import say
from .wire import READ_SIZE, connect, encode_request

RESULTS: Final = REPO_ROOT / "benchmarks" / "results"
SERF: Final = "serf"
AGENT: Final = "agentrpc"
MEMBERS_COMMAND: Final = {SERF: "members", AGENT: "members-lan", servers.BASELINE: "members-lan"}
"""Serf answers ``members`` where Consul's agent (and agentrpc) answer ``members-lan``."""
JOIN_TIMEOUT: Final = 60.0
RPC_TIMEOUT: Final = 10.0


@dataclass
class Node:
    kind: str
    """``serf``, ``agentrpc`` or ``baseline``."""
    name: str
    process: subprocess.Popen[bytes]
    rpc_port: int
    gossip_port: int
    before: tuple[float, int] = (0.0, 0)
    after: tuple[float, int] = (0.0, 0)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid


# ----------------------------------------------------------------------------- /proc


def cpu_and_switches(pid: int) -> tuple[float, int]:
    """CPU seconds and context switches of every live thread of ``pid``."""
    base = Path(f"/proc/{pid}/task")
    cpu_ns = 0
    switches = 0
    for task in base.iterdir():
        with contextlib.suppress(OSError, ValueError):
            cpu_ns += int((task / "schedstat").read_text().split()[0])
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
    return cpu_ns / 1e9, switches


# ----------------------------------------------------------------------------- agent RPC


def call(port: int, command: str, body: Any = None, *, reply_body: bool = True) -> tuple[str, Any]:
    """One request on a fresh handshaken connection: returns (Error, reply body or None)."""
    with connect(HOST, port, timeout=RPC_TIMEOUT) as sock:
        sock.sendall(encode_request(command, 2, body))
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 * READ_SIZE)
        wanted = 2 if reply_body else 1
        objects: list[Any] = []
        deadline = time.monotonic() + RPC_TIMEOUT
        while len(objects) < wanted:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{command}: no whole reply within {RPC_TIMEOUT:.0f} s")
            data = sock.recv(READ_SIZE)
            if not data:
                raise ConnectionError(f"{command}: the agent closed the connection")
            unpacker.feed(data)
            objects.extend(unpacker)
    header = objects[0]
    return str(header.get("Error") or ""), objects[1] if reply_body else None


def alive_members(node: Node) -> set[str]:
    error, body = call(node.rpc_port, MEMBERS_COMMAND[node.kind])
    if error:
        raise ConnectionError(f"members on {node.name}: {error}")
    return {str(member["Name"]) for member in body["Members"] if member.get("Status") == "alive"}


def join(node: Node, address: str) -> None:
    body: dict[str, Any] = {"Existing": [address]}
    body.update({"Replay": False} if node.kind == SERF else {"WAN": False})
    error, reply = call(node.rpc_port, "join", body)
    if error or not reply.get("Num"):
        raise ConnectionError(f"{node.name} could not join {address}: {error or reply}")


# ----------------------------------------------------------------------------- processes


def udp_and_tcp_free_port() -> int:
    """A port free for both TCP and UDP on the loopback (gossip binds both)."""
    for _ in range(100):
        port = servers.free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((HOST, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both TCP and UDP")


def start_serf(name: str) -> Node:
    serf = servers.serf_binary()
    if serf is None:
        raise RuntimeError("serf is not installed (apt-get install serf)")
    gossip, rpc = udp_and_tcp_free_port(), servers.free_port()
    argv = [
        serf,
        "agent",
        f"-node={name}",
        f"-bind={HOST}:{gossip}",
        f"-rpc-addr={HOST}:{rpc}",
        "-log-level=warn",
    ]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    node = Node(SERF, name, process, rpc, gossip)
    return _started(node)


def start_agent(kind: str, name: str, *, client: bool) -> Node:
    gossip, rpc = udp_and_tcp_free_port(), servers.free_port()
    root = servers.server_root(kind)
    argv = [
        sys.executable,
        "-m",
        "agentrpc.cli",
        "serve",
        "--node",
        name,
        "--rpc-addr",
        f"{HOST}:{rpc}",
        "--serf-lan-addr",
        f"{HOST}:{gossip}",
        "--serf-wan-addr",
        f"{HOST}:0",
        "--server-addr",
        f"{HOST}:0",
        "--log-level",
        "warn",
    ]
    if client:
        argv.append("--client")
    argv.extend(servers.faces_off_flags(kind))
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        cwd=root,
        env=servers.python_env(root),
    )
    return _started(Node(kind, name, process, rpc, gossip))


def _started(node: Node) -> Node:
    try:
        servers.wait_listening(node.process, node.rpc_port)
    except BaseException:
        stop(node)
        raise
    return node


def stop(node: Node) -> None:
    servers.stop_process(node.process)


@contextlib.contextmanager
def cluster(
    agent_kind: str, serf_nodes: int, agent_nodes: int, *, client: bool, out: TextIO | None
) -> Iterator[list[Node]]:
    """Start and join the cluster; yields its nodes once every node lists all alive."""
    nodes: list[Node] = []
    try:
        for index in range(serf_nodes):
            nodes.append(start_serf(f"serf-{index + 1}"))
        for index in range(agent_nodes):
            nodes.append(start_agent(agent_kind, f"{agent_kind}-{index + 1}", client=client))
        seed = f"{HOST}:{nodes[0].gossip_port}"
        for node in nodes[1:]:
            join(node, seed)
        names = {node.name for node in nodes}
        deadline = time.monotonic() + JOIN_TIMEOUT
        pending = list(nodes)
        while pending:
            pending = [node for node in pending if alive_members(node) != names]
            if pending and time.monotonic() > deadline:
                raise TimeoutError(
                    f"after {JOIN_TIMEOUT:.0f} s, {', '.join(n.name for n in pending)} did not "
                    "list every node alive"
                )
            if pending:
                time.sleep(0.2)
        say(out, f"  {len(nodes)} nodes joined, every one lists all {len(names)} alive")
        yield nodes
    finally:
        for node in nodes:
            stop(node)


# ----------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class IdlePlan:
    seconds: float = 60.0
    settle: float = 10.0
    """Seconds between the cluster converging and the clock starting."""
    serf_nodes: int = 4
    agent_nodes: int = 4
    client: bool = False
    rounds: int = 1
    kinds: tuple[str, ...] = (AGENT,)
    """Which agentrpc trees, one cluster each: ``agentrpc`` (this tree), ``baseline``."""
    quiet_wait: float = 30.0
    """Before each cluster, wait up to this long for other processes to go (nearly) idle."""


def measure(plan: IdlePlan, agent_kind: str, round_: int, out: TextIO | None) -> dict[str, Any]:
    waited, busy = suite.wait_for_quiet(plan.quiet_wait)
    if waited:
        say(out, f"waited {waited:.0f} s for a quieter machine ({busy:.2f} cores)")
    say(out, f"round {round_ + 1}: {plan.serf_nodes} serf + {plan.agent_nodes} {agent_kind}")
    with cluster(
        agent_kind, plan.serf_nodes, plan.agent_nodes, client=plan.client, out=out
    ) as nodes:
        time.sleep(plan.settle)
        busy_before = servers.machine_busy_seconds()
        wall_before = time.monotonic()
        for node in nodes:
            node.before = cpu_and_switches(node.pid)
        time.sleep(plan.seconds)
        for node in nodes:
            node.after = cpu_and_switches(node.pid)
        wall = time.monotonic() - wall_before
        busy = servers.machine_busy_seconds() - busy_before
        names = {node.name for node in nodes}
        still = all(alive_members(node) == names for node in nodes)
    rows: list[dict[str, Any]] = []
    for node in nodes:
        cpu = node.after[0] - node.before[0]
        switches = node.after[1] - node.before[1]
        rows.append(
            {
                "kind": node.kind,
                "name": node.name,
                "cpu_s": cpu,
                "cpu_ms_per_s": cpu / wall * 1e3,
                "switches_per_s": switches / wall,
            }
        )
    cluster_cpu = sum(row["cpu_s"] for row in rows)
    result: dict[str, Any] = {
        "round": round_ + 1,
        "agent_kind": agent_kind,
        "wall_s": wall,
        "nodes": rows,
        "all_alive_at_end": still,
        "quiet_wait": {"waited_s": waited, "other_cores": busy},
        "other_cores": max(0.0, (busy - cluster_cpu) / wall),
    }
    for kind in {row["kind"] for row in rows}:
        mine = [row for row in rows if row["kind"] == kind]
        result[kind] = {
            "cpu_ms_per_s": statistics.mean(row["cpu_ms_per_s"] for row in mine),
            "switches_per_s": statistics.mean(row["switches_per_s"] for row in mine),
        }
    serf = result[SERF]["cpu_ms_per_s"]
    result["ratio"] = result[agent_kind]["cpu_ms_per_s"] / serf if serf else None
    say(
        out,
        f"  {agent_kind} {result[agent_kind]['cpu_ms_per_s']:.2f} ms/s per node, serf "
        f"{serf:.2f} ms/s: ratio {result['ratio'] or 0:.2f} (other load "
        f"{result['other_cores']:.2f} cores)",
    )
    return result


def run_idle(plan: IdlePlan, out: TextIO | None = sys.stderr) -> dict[str, Any]:
    began = time.time()
    root = servers.snapshot_sources()
    info = suite.environment(
        suite.Plan(mode="gossip-idle", runs=plan.rounds, warmup=0, duration=0, max_requests=0)
    )
    info["versions"]["agentrpc_snapshot_sha256"] = suite.source_fingerprint(root)
    kinds = list(plan.kinds)
    measurements = []
    for round_ in range(plan.rounds):
        order = kinds if round_ % 2 == 0 else kinds[::-1]
        for kind in order:
            measurements.append(measure(plan, kind, round_, out))
    info["finished_at"] = dt.datetime.now().astimezone().isoformat()
    info["duration_s"] = time.time() - began
    info["loadavg_end"] = os.getloadavg()
    summary = {}
    for kind in kinds:
        mine = [m for m in measurements if m["agent_kind"] == kind]
        summary[kind] = {
            "cpu_ms_per_s": statistics.median(m[kind]["cpu_ms_per_s"] for m in mine),
            "serf_cpu_ms_per_s": statistics.median(m[SERF]["cpu_ms_per_s"] for m in mine),
            "switches_per_s": statistics.median(m[kind]["switches_per_s"] for m in mine),
            "serf_switches_per_s": statistics.median(m[SERF]["switches_per_s"] for m in mine),
            "ratio": statistics.median(m["ratio"] for m in mine if m["ratio"] is not None),
        }
    return {**info, "plan": asdict(plan), "measurements": measurements, "summary": summary}


# ----------------------------------------------------------------------------- report


def render_markdown(results: dict[str, Any]) -> str:
    plan, machine, versions = results["plan"], results["machine"], results["versions"]
    mode = "client" if plan["client"] else "server"
    lines = [
        f"# Idle gossip CPU, {results['date']}",
        "",
        f"{plan['serf_nodes']} `serf agent` and {plan['agent_nodes']} agentrpc nodes (CLI "
        f"`serve`, {mode} mode) in one LAN cluster on 127.0.0.1, idle for {plan['seconds']:.0f} "
        f"s after converging and {plan['settle']:.0f} s of settling; CPU time of every thread "
        "of every node from `/proc/PID/task/*/schedstat`, wake-ups as context switches. "
        f"Nothing pinned. {plan['rounds']} round(s); medians over rounds.",
        "",
        f"- Machine: {machine['cpu_count']} CPUs, {machine['cpu_model']}, {machine['platform']}",
        f"- Versions: Python {versions['python']}, trio {versions['trio']}, serf "
        f"{versions['serf']} (Debian package {versions['serf_package'] or '-'}), "
        + report.snapshot_text(versions),
        "- Other processes' CPU during each window: "
        + ", ".join(f"{m['other_cores']:.2f}" for m in results["measurements"])
        + " cores",
        "",
        "| agents | CPU per agent node (ms/s) | CPU per serf node (ms/s) | agentrpc / serf "
        "| wake-ups/s per agent node | per serf node |",
        "|---|---|---|---|---|---|",
    ]
    for kind, row in results["summary"].items():
        label = kind
        if kind == servers.BASELINE:
            label = f"agentrpc @ {(versions.get('baseline_revision') or '')[:12]}"
        lines.append(
            f"| {label} | {row['cpu_ms_per_s']:.2f} | {row['serf_cpu_ms_per_s']:.2f} | "
            f"{row['ratio']:.2f}x | {row['switches_per_s']:.0f} | "
            f"{row['serf_switches_per_s']:.0f} |"
        )
    lines += [
        "",
        "## Every node",
        "",
        "| round | node | CPU s | ms/s | wake-ups/s |",
        "|---|---|---|---|---|",
    ]
    for measurement in results["measurements"]:
        for node in measurement["nodes"]:
            lines.append(
                f"| {measurement['round']} | {node['name']} | {node['cpu_s']:.3f} | "
                f"{node['cpu_ms_per_s']:.2f} | {node['switches_per_s']:.0f} |"
            )
    if not all(m["all_alive_at_end"] for m in results["measurements"]):
        lines += ["", "⚠ Some node did not list every node alive at the end of its window."]
    return "\n".join(lines) + "\n"


def write_all(results: dict[str, Any], directory: Path) -> list[Path]:
    return report.write_results(results, directory, render_markdown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gossip_idle", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="idle seconds measured")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before the clock")
    parser.add_argument("--serf", type=int, default=4, help="serf nodes")
    parser.add_argument("--agents", type=int, default=4, help="agentrpc nodes")
    parser.add_argument("--client", action="store_true", help="agents in client mode")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--quiet-wait", type=float, default=30.0, help="seconds to wait for an idle machine"
    )
    revision = parser.add_mutually_exclusive_group()
    revision.add_argument("--baseline", metavar="REV", help="also agentrpc at git revision REV")
    revision.add_argument("--agents-at", metavar="REV", help="agentrpc at REV, not this tree")
    parser.add_argument("--out", type=Path, help="results directory")
    args = parser.parse_args(argv)
    if args.serf < 1 or args.agents < 1:
        parser.error("the cluster needs at least one serf node and one agentrpc node")
    kinds: tuple[str, ...] = (AGENT,)
    if args.baseline or args.agents_at:
        commit = servers.prepare_baseline(args.baseline or args.agents_at)
        say(sys.stderr, f"gossip idle: agentrpc at {commit[:12]} as 'baseline'")
        kinds = (AGENT, servers.BASELINE) if args.baseline else (servers.BASELINE,)
    plan = IdlePlan(
        seconds=args.seconds,
        settle=args.settle,
        serf_nodes=args.serf,
        agent_nodes=args.agents,
        client=args.client,
        rounds=args.rounds,
        kinds=kinds,
        quiet_wait=args.quiet_wait,
    )
    out = args.out or RESULTS / f"{dt.date.today().isoformat()}-gossip-idle"
    results = run_idle(plan)
    for path in write_all(results, out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
