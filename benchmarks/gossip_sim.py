"""Gossip simulation: N nodes (memberlist + serf, as the agent builds them) in one process.

    .venv/bin/python -m benchmarks.gossip_sim --nodes 50 100 --runs 3

Every node runs over the in-process gossip network (no sockets) on trio's mock clock, so the
times reported are protocol time (what a real cluster on the LAN profile would take), not the
speed of this machine; the wall-clock cost of simulating is reported beside them. Per run:

* **converge**: every node joins node 0 at t=0; time until every node lists all N alive;
* **failure**: one node dies silently (its tasks are cancelled, no leave); time until each
  other node marks it ``failed`` (first, median, last);
* **left**: another node leaves gracefully; time until every other node lists it ``left``.

Every loop is bounded: a phase that does not finish within ``--limit`` simulated seconds is
reported as a timeout.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import trio
import trio.testing

from agentrpc.config import AgentConfig
from agentrpc.gossip.contract import GossipAddress
from agentrpc.gossip.transport import MemoryGossipNetwork, MemoryGossipTransport
from agentrpc.logs import ERR, LogHub
from agentrpc.membership.gossip_pool import GossipPool
from agentrpc.membership.gossip_setup import PoolSpec, start_pool

POLL = 0.1


@dataclass
class RunResult:
    nodes: int
    seed: int
    converge_s: float | None
    failure_first_s: float | None
    failure_median_s: float | None
    failure_last_s: float | None
    left_last_s: float | None
    wall_s: float


async def _run_node(
    network: MemoryGossipNetwork,
    index: int,
    hub: LogHub,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[GossipPool],
) -> None:
    name = f"node{index}"
    config = AgentConfig(node_name=name)
    spec = PoolSpec("lan", name, _address(index), "lan")
    with scope:
        async with trio.open_nursery() as nursery:
            pool, _, _ = await start_pool(
                nursery, spec, config, {"role": "node"}, hub, MemoryGossipTransport(network)
            )
            task_status.started(pool)
            await trio.sleep_forever()


def _address(index: int) -> GossipAddress:
    return GossipAddress(f"10.{index // 65536}.{(index // 256) % 256}.{index % 256}", 8301)


async def _until(predicate: Callable[[], bool], limit: float) -> float | None:
    """Simulated seconds until ``predicate`` holds (checked every POLL), or None."""
    start = trio.current_time()
    with trio.move_on_after(limit):
        while not predicate():  # noqa: ASYNC110 - simulated time on the mock clock
            await trio.sleep(POLL)
        return trio.current_time() - start
    return None


def _status_of(pool: GossipPool, name: str) -> str:
    for member in pool.members():
        if member.name == name:
            return member.status
    return ""


async def simulate(nodes: int, seed: int, limit: float) -> RunResult:
    wall = time.perf_counter()
    network = MemoryGossipNetwork(rng=random.Random(seed))
    hub = LogHub(ERR + 1, sink=io.StringIO(), ring_size=1)
    scopes = [trio.CancelScope() for _ in range(nodes)]
    async with trio.open_nursery() as nursery:
        pools: list[GossipPool] = []
        for index in range(nodes):
            pools.append(await nursery.start(_run_node, network, index, hub, scopes[index]))
        target = [str(_address(0))]
        async with trio.open_nursery() as joins:
            for pool in pools[1:]:
                joins.start_soon(pool.join, target)

        def converged() -> bool:
            return all(
                sum(1 for m in pool.members() if m.status == "alive") == nodes for pool in pools
            )

        converge = await _until(converged, limit)

        # A silent death.
        victim = nodes - 1
        victim_name = f"node{victim}"
        scopes[victim].cancel()
        died = trio.current_time()
        marked: dict[int, float] = {}
        survivors = [i for i in range(nodes) if i != victim]

        def all_marked() -> bool:
            now = trio.current_time() - died
            for i in survivors:
                if i not in marked and _status_of(pools[i], victim_name) == "failed":
                    marked[i] = now
            return len(marked) == len(survivors)

        await _until(all_marked, limit)
        times = sorted(marked.values())

        # A graceful leave.
        leaver = nodes - 2
        leaver_name = f"node{leaver}"
        left_at = trio.current_time()
        with trio.move_on_after(limit):
            await pools[leaver].leave()
        rest = [i for i in survivors if i != leaver]
        left = await _until(
            lambda: all(_status_of(pools[i], leaver_name) == "left" for i in rest),
            limit - (trio.current_time() - left_at),
        )
        if left is not None:
            left += 0.0
        nursery.cancel_scope.cancel()
    return RunResult(
        nodes=nodes,
        seed=seed,
        converge_s=converge,
        failure_first_s=times[0] if len(times) == len(survivors) else None,
        failure_median_s=statistics.median(times) if len(times) == len(survivors) else None,
        failure_last_s=times[-1] if len(times) == len(survivors) else None,
        left_last_s=(trio.current_time() - left_at) if left is not None else None,
        wall_s=time.perf_counter() - wall,
    )


def run_once(nodes: int, seed: int, limit: float) -> RunResult:
    clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(simulate, nodes, seed, limit, clock=clock)


def _fmt(value: float | None) -> str:
    return "timeout" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit", type=float, default=120.0, help="simulated seconds per phase")
    parser.add_argument("--json", type=Path, help="write every run's numbers here")
    args = parser.parse_args(argv)
    results: list[RunResult] = []
    print("| nodes | converge (s) | failed: first / median / last (s) | left (s) | wall (s) |")
    print("|---|---|---|---|---|")
    for nodes in args.nodes:
        runs = [run_once(nodes, seed, args.limit) for seed in range(1, args.runs + 1)]
        results.extend(runs)

        def median(field: str, runs: list[RunResult] = runs) -> float | None:
            values = [getattr(r, field) for r in runs if getattr(r, field) is not None]
            return statistics.median(values) if len(values) == len(runs) else None

        print(
            f"| {nodes} | {_fmt(median('converge_s'))} | {_fmt(median('failure_first_s'))} / "
            f"{_fmt(median('failure_median_s'))} / {_fmt(median('failure_last_s'))} | "
            f"{_fmt(median('left_last_s'))} | {_fmt(median('wall_s'))} |"
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    timed_out = any(
        value is None for r in results for value in (r.converge_s, r.failure_last_s, r.left_last_s)
    )
    return 1 if timed_out else 0


if __name__ == "__main__":
    raise SystemExit(main())
