"""DNS queries per second over UDP, at 1 and 32 concurrent clients.

``python -m benchmarks.dns_qps`` (3 rounds, about 1 minute; ``--quick``: 1 short round)
starts a server process (``--serve``: a lone-server catalog behind a server port, the DNS
interface answering from it through the in-process call, as the agent wires it), fills the
catalog (one node, a service of 3 healthy instances and one of 100), and measures from a
separate load-generator process:

* ``node A``: ``web-1.node.consul`` (``Catalog.NodeServices``);
* ``service A``: ``web.service.consul`` (``Health.ServiceNodes``, 3 instances);
* ``service SRV``: the same as SRV, with the additional section;
* ``big SRV``: ``big.service.consul`` SRV, 100 instances (plain UDP: 3 answers, TC);
* ``core``: the resolver alone in the generator process (decode, resolve with a canned
  catalog reply, render) for a service A query: the ceiling without sockets or the catalog.

Clients: each one is a UDP socket with one query in flight (send, wait for the answer, send
the next); 1 client gives the round-trip rate, 32 the throughput. The generator is one epoll
loop over its sockets, queries pre-encoded, every answer's ID and RCODE checked. Each cell
warms up 0.3 s and counts answers over a fixed window (1.5 s; quick: 0.5 s); figures are
medians over rounds. On a machine with two or more CPUs the server is pinned to the first,
the generator to the second. The load average before and after is kept (the machine may be
shared).

Writes ``benchmarks/results/<date>-dns/`` (``--out DIR``): ``report.md`` and
``results.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import select
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

from .servers import REPO_ROOT

HOST: Final = "127.0.0.1"
CONCURRENCY: Final = (1, 32)
QUERIES: Final = {
    "node A": ("web-1.node.consul.", "A"),
    "service A": ("web.service.consul.", "A"),
    "service SRV": ("web.service.consul.", "SRV"),
    "big SRV": ("big.service.consul.", "SRV"),
}
TIMEOUT: Final = 2.0
"""Seconds a single answer may take before the cell counts it as lost and resends."""


# ------------------------------------------------------------------ the server process


async def _fill(call: Any) -> None:
    def register(node: str, address: str, service: str) -> dict[str, Any]:
        return {
            "Datacenter": "dc1",
            "Node": node,
            "Address": address,
            "Service": {"ID": service, "Service": service, "Port": 8080},
            "Checks": [{"Node": node, "CheckID": "serfHealth", "Status": "passing"}],
        }

    for i in range(1, 4):
        await call("Catalog.Register", register(f"web-{i}", f"10.0.0.{i}", "web"))
    for i in range(100):
        await call("Catalog.Register", register(f"big-{i}", f"10.1.0.{i + 1}", "big"))


def serve() -> None:
    """The child: catalog + DNS server on a free port; prints the port, serves until killed."""
    import trio

    from agentrpc.catalog.service import install
    from agentrpc.dns.server import DNSServer
    from agentrpc.dns.settings import DNSConfig
    from agentrpc.log_protocol import NullLog
    from agentrpc.serverport.endpoints import Endpoints
    from agentrpc.serverport.server import ServerPort

    async def main() -> None:
        endpoints = Endpoints()
        install(endpoints, datacenter="dc1", node_name="bench", logger=NullLog())
        port = ServerPort(f"{HOST}:0", endpoints, None, NullLog())
        await _fill(port.call_local)
        server = DNSServer(
            DNSConfig(enable_truncate=True),
            datacenter="dc1",
            call=port.call_local,
            logger=NullLog(),
        )
        async with trio.open_nursery() as nursery:
            address = await nursery.start(server.run, f"{HOST}:0")
            print(address.port, flush=True)

    trio.run(main)


# ------------------------------------------------------------------ the load generator


def _encoded(name: str, rdtype: str, count: int) -> list[bytes]:
    import dns.message

    wire = dns.message.make_query(name, rdtype).to_wire()
    return [i.to_bytes(2, "big") + wire[2:] for i in range(count)]


MIN_ANSWERS_BOUND: Final = 30.0
"""Seconds a window may stretch to count its ``min_answers`` (a loaded machine, smoke runs)."""


def measure(
    port: int,
    query: tuple[str, str],
    clients: int,
    warmup: float,
    window: float,
    min_answers: int = 0,
) -> float:
    """Answers per second with ``clients`` sockets, one query in flight each. The window
    stretches (up to :data:`MIN_ANSWERS_BOUND`) until ``min_answers`` were counted, and the
    rate is over the time it really took."""
    templates = _encoded(*query, 65536)
    sockets = []
    poller = select.epoll()
    for _ in range(clients):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect((HOST, port))
        sockets.append(sock)
        poller.register(sock.fileno(), select.EPOLLIN)
    by_fd = {sock.fileno(): sock for sock in sockets}
    pending: dict[int, tuple[int, float]] = {}
    next_id = 0

    def send(sock: socket.socket) -> None:
        nonlocal next_id
        qid = next_id
        next_id = (next_id + 1) & 0xFFFF
        sock.send(templates[qid])
        pending[sock.fileno()] = (qid, time.perf_counter())

    try:
        for sock in sockets:
            send(sock)
        start = time.perf_counter()
        counting_from = start + warmup
        end = counting_from + window
        bound = counting_from + max(window, MIN_ANSWERS_BOUND)
        counted = 0
        errors = 0
        while (now := time.perf_counter()) < end or (counted < min_answers and now < bound):
            for fd, _ in poller.poll(0.05):
                sock = by_fd[fd]
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                qid, _sent = pending[fd]
                if len(data) < 12 or int.from_bytes(data[:2], "big") != qid:
                    continue  # a late answer to a query already given up on
                if data[3] & 0x0F:
                    errors += 1
                if time.perf_counter() >= counting_from:
                    counted += 1
                send(sock)
            for fd, (_qid, sent) in list(pending.items()):
                if now - sent > TIMEOUT:
                    send(by_fd[fd])  # lost: ask again
        if errors:
            raise RuntimeError(f"{errors} answers had an error RCODE")
        return counted / (max(now, end) - counting_from)
    finally:
        poller.close()
        for sock in sockets:
            sock.close()


def core_rate(window: float) -> float:
    """Service A queries per second through the pure core alone (no sockets, no catalog)."""
    from agentrpc.catalog.structs import HealthCheck, Node, NodeService
    from agentrpc.dns.resolver import CatalogCall, Resolution
    from agentrpc.dns.settings import DNSConfig
    from agentrpc.dns.wire import Query, decode_query

    wire = _encoded("web.service.consul.", "A", 1)[0]
    reply = {
        "LastContact": 0,
        "Nodes": [
            {
                "Checks": [HealthCheck(f"web-{i}", "serfHealth", status="passing").to_wire()],
                "Node": Node(f"web-{i}", f"10.0.0.{i}").to_wire(),
                "Service": NodeService("web", "web", port=8080).to_wire(),
            }
            for i in range(1, 4)
        ],
    }
    config = DNSConfig()
    rng = random.Random(1)
    done = 0
    end = time.perf_counter() + window
    while time.perf_counter() < end:
        decoded = decode_query(wire)
        assert isinstance(decoded, Query)
        resolution = Resolution(
            decoded.message, config=config, datacenter="dc1", transport="udp", now=0.0, rng=rng
        )
        action = resolution.start()
        assert isinstance(action, CatalogCall)
        resolution.receive(reply)
        done += 1
    return done / window


# ------------------------------------------------------------------ the run


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {cpu})


def _start_server() -> tuple[subprocess.Popen[str], int]:
    pin = (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity")
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.dns_qps", "--serve"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, {0})) if pin else None,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip():
        process.kill()
        raise RuntimeError("the DNS server process did not start")
    return process, int(line)


def run(rounds: int, warmup: float, window: float, min_answers: int = 0) -> dict[str, Any]:
    _pin(1)
    load_before = os.getloadavg()
    cells: dict[str, dict[str, list[float]]] = {}
    for round_index in range(rounds):
        process, port = _start_server()
        try:
            order = list(QUERIES.items())
            if round_index % 2:
                order.reverse()
            for label, query in order:
                for clients in CONCURRENCY:
                    rate = measure(port, query, clients, warmup, window, min_answers)
                    cells.setdefault(label, {}).setdefault(str(clients), []).append(rate)
        finally:
            process.kill()
            process.wait()
        cells.setdefault("core", {}).setdefault("1", []).append(core_rate(window))
    return {
        "schema": 1,
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "python": platform.python_version(),
        "rounds": rounds,
        "warmup_s": warmup,
        "window_s": window,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "cells": cells,
    }


def report(results: dict[str, Any]) -> str:
    lines = [
        "# DNS queries per second (UDP)",
        "",
        f"{results['when']}, {results['machine']['cpu_count']} CPUs, Python "
        f"{results['python']}, {results['rounds']} round(s) of {results['window_s']} s; "
        f"load average {results['load_before'][0]:.2f} before, "
        f"{results['load_after'][0]:.2f} after.",
        "",
        "| query | 1 client (q/s) | 32 clients (q/s) |",
        "|---|---|---|",
    ]
    for label, by_clients in results["cells"].items():
        row = [label]
        for clients in ("1", "32"):
            values = by_clients.get(clients)
            if not values:
                row.append("-")
                continue
            median = statistics.median(values)
            row.append(f"{median:,.0f} ({min(values):,.0f}-{max(values):,.0f})")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Medians over rounds (min-max). `core`: the resolver alone, no I/O."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="1 short round")
    parser.add_argument("--smoke", action="store_true", help="tiny windows (tests)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return 0
    min_answers = 0
    if args.smoke:  # every cell must answer, however loaded the machine
        rounds, warmup, window, min_answers = 1, 0.05, 0.1, 3
    elif args.quick:
        rounds, warmup, window = 1, 0.3, 0.5
    else:
        rounds, warmup, window = 3, 0.3, 1.5
    results = run(rounds, warmup, window, min_answers)
    text = report(results)
    print(text)
    out = args.out
    if out is None:
        stamp = dt.date.today().isoformat()
        out = REPO_ROOT / "benchmarks" / "results" / f"{stamp}-dns"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
