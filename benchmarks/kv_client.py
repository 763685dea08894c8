"""KV through a client agent: writes/s and reads/s over its HTTP API, and blocking-query wake-up.

``python -m benchmarks.kv_client`` (3 rounds, about 2 minutes; ``--quick``: 1 short round)
starts a real cluster of ``agentrpc serve`` processes on 127.0.0.1 (3 servers,
``--bootstrap-expect 3``, ``raft_multiplier`` 1, each with its own ``data_dir``, so every write
is a Raft entry fsynced on a quorum) and 1 client agent (``--client``) whose HTTP API is the
only door: every request goes client -> its server manager -> a server (pooled yamux) -> the
leader when the server is a follower. From this process, on pre-encoded requests over raw
keep-alive connections (one request in flight per connection, as :mod:`benchmarks.http_kv`):

* ``PUT /v1/kv/bench/<caller>`` (a 64-byte value), ``GET /v1/kv/bench/<caller>`` (default
  consistency: answered by the leader) and ``GET ...?stale`` (the client's server answers from
  its own copy), at 1, 16 and 64 concurrent callers: requests per second and the p50 / p99 of
  each request, in a fixed window after a warm-up;
* blocking-query wake-up: ``GET /v1/kv/poll?index=N&wait=1m`` parked on the client, then a
  ``PUT /v1/kv/poll`` on another connection; the time from sending the PUT to receiving the
  woken GET's answer (and, beside it, the PUT's own round trip: the wake-up can be no faster
  than the commit that causes it), and the same PUT after the same 50 ms pause with nothing
  parked (a control: what an idle connection's PUT costs).

Every answer must be a 200 (counted as errors otherwise; a run with errors says so). Figures
are medians over the rounds (min and max kept), on one cluster started once. The machine is
shared: the four agents and this load generator share its cores, so the load average and each
agent's CPU time during the run are recorded. Writes ``benchmarks/results/<date>-kv-client/``
(``--out DIR``): ``report.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio

from benchmarks.harness import loadavg, machine_facts, percentile, say, spread
from benchmarks.http_kv import VALUE, Conn, _index, _request

CLI: Final = [sys.executable, "-m", "agentrpc.cli"]
HOST: Final = "127.0.0.1"
START_TIMEOUT: Final = 90.0
"""Seconds from exec to a client that takes a write (imports take seconds on loaded cores)."""
KINDS: Final = ("put", "get", "get-stale")


@dataclass(frozen=True)
class Plan:
    rounds: int
    window: float
    warmup: float
    samples: int
    callers: tuple[int, ...] = (1, 16, 64)


PLANS: Final = {
    "full": Plan(rounds=3, window=3.0, warmup=0.5, samples=40),
    "quick": Plan(rounds=1, window=1.5, warmup=0.3, samples=15),
    "tiny": Plan(rounds=1, window=0.3, warmup=0.1, samples=4, callers=(1, 4)),
}


def _free_port() -> int:
    """A port free on 127.0.0.1 for TCP and UDP both (gossip binds both)."""
    for _ in range(100):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind((HOST, 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


# ------------------------------------------------------------------ the cluster


@dataclass
class Agent:
    name: str
    argv: list[str]
    log_path: Path
    http_port: int = 0
    server_address: str = ""
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (Linux ``/proc``), 0 if unknown."""
        if self.process is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def cluster_agents(base: Path) -> list[Agent]:
    """Three servers then the client, their argv ready (nothing started)."""
    config = base / "config.json"
    config.write_text(json.dumps({"raft_multiplier": 1, "http_addr": "", "dns_addr": ""}))
    lans = [f"{HOST}:{_free_port()}" for _ in range(3)]
    agents = []
    for number, lan in enumerate(lans, start=1):
        name = f"s{number}"
        joins = [arg for other in lans if other != lan for arg in ("--retry-join", other)]
        argv = [
            *CLI,
            "serve",
            "--node",
            name,
            "--rpc-addr",
            f"{HOST}:{_free_port()}",
            "--serf-lan-addr",
            lan,
            "--serf-wan-addr",
            f"{HOST}:{_free_port()}",
            "--server-addr",
            f"{HOST}:{_free_port()}",
            "--data-dir",
            str(base / name),
            "--bootstrap-expect",
            "3",
            "--config-file",
            str(config),
            "--log-level",
            "WARN",
            *joins,
            "--retry-interval",
            "1s",
        ]
        server_address = argv[argv.index("--server-addr") + 1]
        agents.append(Agent(name, argv, base / f"{name}.log", server_address=server_address))
    http_port = _free_port()
    argv = [
        *CLI,
        "serve",
        "--client",
        "--node",
        "c1",
        "--rpc-addr",
        f"{HOST}:{_free_port()}",
        "--serf-lan-addr",
        f"{HOST}:{_free_port()}",
        "--http-addr",
        f"{HOST}:{http_port}",
        "--data-dir",
        str(base / "c1"),
        "--config-file",
        str(config),
        "--log-level",
        "WARN",
        *[arg for lan in lans for arg in ("--retry-join", lan)],
        "--retry-interval",
        "1s",
    ]
    agents.append(Agent("c1", argv, base / "c1.log", http_port=http_port))
    return agents


class CellError(RuntimeError):
    pass


async def wait_ready(agents: Sequence[Agent], port: int) -> float:
    """Until a PUT through the client is acknowledged; the seconds it took."""
    began = time.perf_counter()
    last = ""
    while time.perf_counter() - began < START_TIMEOUT:
        for agent in agents:
            if agent.process is not None and agent.process.poll() is not None:
                raise CellError(f"{agent.name} exited:\n{agent.log_tail()}")
        try:
            with trio.fail_after(10):
                conn = Conn(await trio.open_tcp_stream(HOST, port))
                head, body = await conn.exchange(_request("PUT", "/v1/kv/bench/ready", b"1"))
                await conn.stream.aclose()
            if head.startswith(b"HTTP/1.1 200"):
                return time.perf_counter() - began
            last = (head.split(b"\r\n")[0] + b" " + body[:100]).decode(errors="replace")
        except (OSError, trio.TooSlowError, ConnectionError) as exc:
            last = repr(exc)
        await trio.sleep(0.2)
    raise CellError(f"the client took no write within {START_TIMEOUT:g} s: {last}")


# ------------------------------------------------------------------ the load


def _requests(kind: str, caller: int) -> bytes:
    key = f"/v1/kv/bench/{caller}"
    if kind == "put":
        return _request("PUT", key, VALUE)
    if kind == "get":
        return _request("GET", key)
    return _request("GET", key + "?stale")


async def rate_cell(port: int, kind: str, callers: int, plan: Plan) -> dict[str, Any]:
    """``callers`` connections sending ``kind`` one at a time: counted in the window only."""
    latencies: list[float] = []
    errors: list[str] = []
    start_at = time.perf_counter() + plan.warmup
    end_at = start_at + plan.window

    async def caller(number: int) -> None:
        request = _requests(kind, number)
        conn = Conn(await trio.open_tcp_stream(HOST, port))
        try:
            while True:
                sent = time.perf_counter()
                if sent >= end_at:
                    break
                head, body = await conn.exchange(request)
                done = time.perf_counter()
                if not head.startswith(b"HTTP/1.1 200"):
                    errors.append(head.split(b"\r\n")[0].decode() + " " + body[:80].decode())
                elif sent >= start_at:
                    latencies.append(done - sent)
        finally:
            await conn.stream.aclose()

    with trio.fail_after(plan.warmup + plan.window + 30):
        async with trio.open_nursery() as nursery:
            for number in range(callers):
                nursery.start_soon(caller, number)
    return {
        "kind": kind,
        "callers": callers,
        "requests": len(latencies),
        "per_second": len(latencies) / plan.window,
        "p50_ms": 1000 * percentile(latencies, 0.5),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "errors": len(errors),
        "error": errors[0] if errors else "",
    }


async def wakeup_cell(port: int, plan: Plan) -> dict[str, Any]:
    """``plan.samples`` blocking GETs, each woken by a PUT of the key it watches."""
    writer = Conn(await trio.open_tcp_stream(HOST, port))
    waiter = Conn(await trio.open_tcp_stream(HOST, port))
    wakeups: list[float] = []
    puts: list[float] = []
    stale_answers = 0
    with trio.fail_after(30 + plan.samples * 5):
        await writer.exchange(_request("PUT", "/v1/kv/poll", VALUE))
        for _ in range(plan.samples):
            head, _ = await writer.exchange(_request("GET", "/v1/kv/poll"))
            index = _index(head)
            woken_at: list[float] = []
            answer: list[int] = []

            async def wait(
                index: int = index, out: list[float] = woken_at, answer: list[int] = answer
            ) -> None:
                got, _ = await waiter.exchange(
                    _request("GET", f"/v1/kv/poll?index={index}&wait=1m")
                )
                out.append(time.perf_counter())
                answer.append(_index(got))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait)
                await trio.sleep(0.05)  # the GET parks on the client, then on a server
                sent = time.perf_counter()
                put_head, _ = await writer.exchange(_request("PUT", "/v1/kv/poll", VALUE))
                puts.append(time.perf_counter() - sent)
                if not put_head.startswith(b"HTTP/1.1 200"):
                    raise CellError(f"PUT /v1/kv/poll: {put_head[:80]!r}")
            wakeups.append(woken_at[0] - sent)
            if answer[0] <= index:
                stale_answers += 1  # woken without the change (a timeout or a spurious wake)
        # The control: the same PUT after the same pause, with nothing parked.
        idle_puts: list[float] = []
        for _ in range(plan.samples):
            await trio.sleep(0.05)
            sent = time.perf_counter()
            await writer.exchange(_request("PUT", "/v1/kv/poll", VALUE))
            idle_puts.append(time.perf_counter() - sent)
    await writer.stream.aclose()
    await waiter.stream.aclose()
    return {
        "idle_put_p50_ms": 1000 * statistics.median(idle_puts),
        "samples": len(wakeups),
        "wakeup_p50_ms": 1000 * statistics.median(wakeups),
        "wakeup_p99_ms": 1000 * percentile(wakeups, 0.99),
        "put_p50_ms": 1000 * statistics.median(puts),
        "unchanged_answers": stale_answers,
    }


async def measure(agents: Sequence[Agent], plan: Plan) -> dict[str, Any]:
    port = agents[-1].http_port
    ready = await wait_ready(agents, port)
    say(f"cluster ready in {ready:.1f} s")
    conn = Conn(await trio.open_tcp_stream(HOST, port))
    _, body = await conn.exchange(_request("GET", "/v1/status/leader"))
    await conn.stream.aclose()
    address = json.loads(body)
    leader = next((a.name for a in agents if a.server_address == address), address)
    rounds: list[dict[str, Any]] = []
    for number in range(plan.rounds):
        cpu_before = {a.name: a.cpu_seconds() for a in agents}
        began = time.perf_counter()
        load_before = loadavg()
        cells = []
        for callers in plan.callers:
            for kind in KINDS:
                cell = await rate_cell(port, kind, callers, plan)
                say(
                    f"round {number + 1}: {kind} x{callers}: {cell['per_second']:.0f}/s, "
                    f"p50 {cell['p50_ms']:.2f} ms, p99 {cell['p99_ms']:.2f} ms"
                    + (f", {cell['errors']} errors ({cell['error']})" if cell["errors"] else "")
                )
                cells.append(cell)
        wakeup = await wakeup_cell(port, plan)
        say(f"round {number + 1}: wake-up p50 {wakeup['wakeup_p50_ms']:.2f} ms")
        wall = time.perf_counter() - began
        cpu = {a.name: (a.cpu_seconds() - cpu_before[a.name]) / wall for a in agents}
        rounds.append(
            {
                "cells": cells,
                "wakeup": wakeup,
                "wall_seconds": wall,
                "cpu_cores": cpu,
                "loadavg_before": load_before,
                "loadavg_after": loadavg(),
            }
        )
    return {"ready_seconds": ready, "leader": leader, "rounds": rounds}


# ------------------------------------------------------------------ results


def medians(rounds: list[dict[str, Any]], plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for callers in plan.callers:
        for kind in KINDS:
            cells = [
                c
                for r in rounds
                for c in r["cells"]
                if (c["kind"], c["callers"]) == (kind, callers)
            ]
            out[f"{kind}/{callers}"] = {
                "per_second": spread([c["per_second"] for c in cells]),
                "p50_ms": statistics.median(c["p50_ms"] for c in cells),
                "p99_ms": statistics.median(c["p99_ms"] for c in cells),
                "errors": sum(c["errors"] for c in cells),
            }
    wakeups = [r["wakeup"] for r in rounds]
    out["wakeup"] = {
        "wakeup_p50_ms": spread([w["wakeup_p50_ms"] for w in wakeups]),
        "wakeup_p99_ms": statistics.median(w["wakeup_p99_ms"] for w in wakeups),
        "put_p50_ms": statistics.median(w["put_p50_ms"] for w in wakeups),
        "idle_put_p50_ms": statistics.median(w["idle_put_p50_ms"] for w in wakeups),
        "samples": sum(w["samples"] for w in wakeups),
        "unchanged_answers": sum(w["unchanged_answers"] for w in wakeups),
    }
    return out


def report(results: dict[str, Any]) -> str:
    plan = results["plan"]
    lines = [
        "# KV through a client agent",
        "",
        f"Mode `{results['mode']}`: {plan['rounds']} round(s), {plan['window']:g} s windows "
        f"after {plan['warmup']:g} s of warm-up, {plan['samples']} wake-up samples per round; "
        f"3 servers (`raft_multiplier` 1, fsync on a quorum) and 1 client agent on 127.0.0.1, "
        f"every request through the client's HTTP API (keep-alive, one request in flight per "
        f"connection). {results['machine']['cpu_count']} CPUs "
        f"({results['machine']['cpu_model']}), shared with the load generator. Started "
        f"{results['started']}; cluster ready in {results['ready_seconds']:.1f} s.",
        "",
        "| callers | request | per second (min-max) | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for callers in plan["callers"]:
        for kind in KINDS:
            m = results["medians"][f"{kind}/{callers}"]
            rate = m["per_second"]
            lines.append(
                f"| {callers} | {kind} | {rate['median']:.0f} ({rate['min']:.0f}-"
                f"{rate['max']:.0f}) | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['errors']} |"
            )
    w = results["medians"]["wakeup"]
    lines += [
        "",
        "| blocking query | p50 ms (min-max) | p99 ms | the waking PUT's p50 ms "
        "| the same PUT, nothing parked | samples |",
        "|---|---|---|---|---|---|",
        f"| GET ?index= woken by a PUT | {w['wakeup_p50_ms']['median']:.2f} "
        f"({w['wakeup_p50_ms']['min']:.2f}-{w['wakeup_p50_ms']['max']:.2f}) | "
        f"{w['wakeup_p99_ms']:.2f} | {w['put_p50_ms']:.2f} | {w['idle_put_p50_ms']:.2f} | "
        f"{w['samples']} |",
        "",
        f"CPU (cores) and load average per round (the leader: {results['leader']}):",
        "",
        "| round | " + " | ".join(results["rounds"][0]["cpu_cores"]) + " | load before, after |",
        "|---|" + "---|" * (len(results["rounds"][0]["cpu_cores"]) + 1),
    ]
    for number, r in enumerate(results["rounds"], start=1):
        cores = " | ".join(f"{v:.2f}" for v in r["cpu_cores"].values())
        lines.append(
            f"| {number} | {cores} | {r['loadavg_before']:.2f}, {r['loadavg_after']:.2f} |"
        )
    if w["unchanged_answers"]:
        lines += ["", f"{w['unchanged_answers']} blocking GETs answered without the change."]
    return "\n".join(lines) + "\n"


def run(plan: Plan, mode: str, base: Path, out: Path) -> dict[str, Any]:
    """One benchmark run on a fresh cluster under ``base`` (removed after); writes ``out``."""
    directory = Path(tempfile.mkdtemp(prefix="kv-client-", dir=base))
    agents = cluster_agents(directory)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    try:
        for agent in agents:
            agent.start()
        measured = trio.run(measure, agents, plan)
    except BaseException:
        for agent in agents:
            say(f"----- {agent.name} {agent.log_path}\n{agent.log_tail()}")
        raise
    finally:
        for agent in agents:
            if agent.process is not None and agent.process.poll() is None:
                agent.process.kill()
                agent.process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)
    results = {
        "mode": mode,
        "started": started,
        "plan": {
            "rounds": plan.rounds,
            "window": plan.window,
            "warmup": plan.warmup,
            "samples": plan.samples,
            "callers": list(plan.callers),
        },
        "machine": machine_facts(),
        "ready_seconds": measured["ready_seconds"],
        "leader": measured["leader"],
        "rounds": measured["rounds"],
        "medians": medians(measured["rounds"], plan),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "report.md").write_text(report(results))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 short round")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    default_out = Path(__file__).parent / "results" / f"{dt.date.today():%Y-%m-%d}-kv-client"
    parser.add_argument("--out", type=Path, default=None, help=f"default {default_out}")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    out: Path = args.out or (
        default_out.with_name(default_out.name + "-quick") if args.quick else default_out
    )
    results = run(PLANS[mode], mode, args.dir, out)
    sys.stdout.write(report(results))
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
