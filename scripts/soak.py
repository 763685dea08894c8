"""A bounded soak of one agent: many clients mixing every command, stalled monitors, drops.

    .venv/bin/python scripts/soak.py --seconds 300 --clients 50

Starts ``agentrpc serve`` on free loopback ports and runs ``--clients`` client tasks for
``--seconds``: each loops over handshaken connections issuing members-lan, members-wan,
stats, force-leave of an unknown node, a join to a closed port (an expected error), reload,
and short monitors; some monitors stall (stop reading) and some connections are dropped
mid-stream. It reports unexpected errors (must be 0), the agent's RSS before and after (growth
must stay under ``--max-growth-mb``), and requests per second. Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import trio
import trio.lowlevel

from agentrpc import Client
from agentrpc.client import ClientError, JoinError


@dataclass
class Tally:
    requests: int = 0
    expected_errors: int = 0
    dropped_connections: int = 0
    stalled_monitors: int = 0
    unexpected: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def one_session(rpc_addr: str, rng: random.Random, tally: Tally, closed_port: int) -> None:
    async with Client(rpc_addr) as client:
        for _ in range(rng.randint(5, 40)):
            choice = rng.random()
            if choice < 0.3:
                await client.members_lan()
            elif choice < 0.45:
                await client.members_wan()
            elif choice < 0.6:
                await client.stats()
            elif choice < 0.65:
                await client.force_leave(f"nobody-{rng.randrange(1000)}")
            elif choice < 0.68:
                try:
                    await client.join([f"127.0.0.1:{closed_port}"])
                except JoinError:
                    tally.expected_errors += 1
            elif choice < 0.7:
                await client.reload()
            elif choice < 0.8:
                async with client.monitor(rng.choice(["debug", "info", "warn"])) as lines:
                    with trio.move_on_after(0.05):
                        async for _ in lines:
                            pass
            elif choice < 0.85:
                # A monitor whose reader stalls: the agent must drop and count, not slow down.
                tally.stalled_monitors += 1
                async with client.monitor("trace"):
                    await trio.sleep(rng.uniform(0.1, 0.5))
            else:
                # Drop the connection abruptly with calls in flight.
                tally.dropped_connections += 1
                async with trio.open_nursery() as nursery:
                    for _ in range(5):
                        nursery.start_soon(_swallow, client.stats)
                    await trio.lowlevel.checkpoint()
                    await client.aclose()
                return
            tally.requests += 1


async def _swallow(call: object) -> None:
    with contextlib.suppress(ClientError):
        await call()  # type: ignore[operator]


async def client_loop(
    rpc_addr: str, seed: int, deadline: float, tally: Tally, closed_port: int
) -> None:
    rng = random.Random(seed)
    while trio.current_time() < deadline:
        try:
            await one_session(rpc_addr, rng, tally, closed_port)
        except ClientError as exc:
            tally.unexpected.append(f"client {seed}: {type(exc).__name__}: {exc}")
            if len(tally.unexpected) > 100:
                return


async def soak(seconds: float, clients: int, max_growth_mb: float) -> int:
    rpc_port = free_port()
    rpc_addr = f"127.0.0.1:{rpc_port}"
    argv = [sys.executable, "-m", "agentrpc.cli", "serve", "--node", "soak",
            "--rpc-addr", rpc_addr, "--serf-lan-addr", "127.0.0.1:0",
            "--serf-wan-addr", "127.0.0.1:0", "--server-addr", "127.0.0.1:0",
            "--http-addr", "", "--dns-addr", "", "--log-level", "info"]  # fmt: skip
    process = await trio.lowlevel.open_process(argv, stderr=subprocess.PIPE)
    assert process.stderr is not None
    tally = Tally()
    try:
        seen = b""
        with trio.fail_after(20):
            while not re.search(rb"agent started|RPC listening", seen):
                seen += await process.stderr.receive_some(4096)

        async def drain() -> None:
            assert process.stderr is not None
            while await process.stderr.receive_some(65536):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            await trio.sleep(1)
            before = rss_bytes(process.pid)
            start = time.perf_counter()
            deadline = trio.current_time() + seconds
            async with trio.open_nursery() as workers:
                for seed in range(clients):
                    workers.start_soon(client_loop, rpc_addr, seed, deadline, tally, free_port())
            elapsed = time.perf_counter() - start
            await trio.sleep(2)
            after = rss_bytes(process.pid)
            async with Client(rpc_addr) as client:
                stats = await client.stats()
            nursery.cancel_scope.cancel()
    finally:
        process.terminate()
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
    growth_mb = (after - before) / 1e6
    print(f"duration: {elapsed:.0f} s, clients: {clients}")
    print(f"requests: {tally.requests} ({tally.requests / elapsed:,.0f}/s)")
    print(
        f"expected errors: {tally.expected_errors}, dropped connections: "
        f"{tally.dropped_connections}, stalled monitors: {tally.stalled_monitors}"
    )
    print(f"monitor lines dropped by the agent: {stats['rpc']['monitor_dropped']}")
    print(f"RSS before: {before / 1e6:.1f} MB, after: {after / 1e6:.1f} MB ({growth_mb:+.1f} MB)")
    print(f"unexpected errors: {len(tally.unexpected)}")
    for line in tally.unexpected[:10]:
        print("  " + line)
    ok = not tally.unexpected and growth_mb <= max_growth_mb and process.returncode in (0, -15)
    print("result:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--max-growth-mb", type=float, default=30.0)
    args = parser.parse_args()
    return trio.run(soak, args.seconds, args.clients, args.max_growth_mb)


if __name__ == "__main__":
    sys.exit(main())
