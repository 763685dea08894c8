"""The HTTP API's KV path: requests per second over keep-alive, and long-poll wake-up latency.

``python -m benchmarks.http_kv`` (about 30 s; ``--seconds`` per cell) starts an agent-like
server in a child process (a lone server's catalog, the in-process RPC, the HTTP API on
loopback) and measures from this process, with pre-encoded requests on raw keep-alive
connections (one request in flight per connection):

* ``GET /v1/kv/bench`` and ``PUT /v1/kv/bench`` (a 64-byte value) at 1 and 64 concurrent
  clients: requests per second, and the median and p99 latency per request;
* long-poll wake-up: a ``GET ?index=N&wait=1m`` blocked on the key, then a ``PUT`` on another
  connection; the time from sending the PUT to receiving the woken GET's answer (median, p99
  over ``--samples``), with 0 and 200 other long-polls parked on other keys.

The machine is shared (2 cores): the figures are medians of what one run saw; the server and
the load generator share the cores, as an agent and its clients on one host do.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import trio

VALUE: Final = b"v" * 64


# ------------------------------------------------------------------ the server (child process)


def serve() -> None:
    from agentrpc.catalog.service import install
    from agentrpc.http_api.api import build_http_server
    from agentrpc.http_api.events import UserEventLog
    from agentrpc.http_api.host import AgentInfo, KeyringResult
    from agentrpc.local_state.agent_state import LocalAgent
    from agentrpc.local_state.state import LocalState
    from agentrpc.log_protocol import NullLog
    from agentrpc.logs import LogHub, LogSubscription
    from agentrpc.protocol.bodies import Member
    from agentrpc.serverport.endpoints import Endpoints
    from agentrpc.serverport.server import ServerPort

    class BenchAgent:
        def __init__(self, port: ServerPort) -> None:
            self.port = port
            self.info = AgentInfo(node_name="bench", datacenter="dc1", server=True)
            self.local = LocalAgent(LocalState("bench", datacenter="dc1"), self.call)
            self.events = UserEventLog()
            self.hub = LogHub()

        async def call(self, method: str, args: Any) -> Any:
            return await self.port.call_local(method, args)

        def members(self, wan: bool) -> Sequence[Member]:
            return []

        def local_member(self) -> Member:
            import ipaddress

            return Member("bench", ipaddress.ip_address("127.0.0.1"), 8301)

        def stats(self) -> Mapping[str, Mapping[str, str]]:
            return {}

        def coordinate(self) -> Mapping[str, Any] | None:
            return None

        def coordinates(self, wan: bool) -> Sequence[tuple[str, Mapping[str, Any]]]:
            return []

        async def join(self, addresses: Sequence[str], wan: bool) -> tuple[int, str]:
            return 0, "not supported"

        async def force_leave(self, node: str) -> str:
            return ""

        async def leave(self) -> str:
            return ""

        def shutdown(self) -> None:
            pass

        async def reload(self) -> str:
            return ""

        def subscribe_log(self, min_level: int, queue_size: int) -> LogSubscription:
            return self.hub.subscribe(min_level, queue_size)

        async def keyring(
            self, operation: str, key: str, relay_factor: int
        ) -> Sequence[KeyringResult]:
            return []

        async def fire_user_event(self, datacenter: str, name: str, payload: bytes) -> None:
            raise ValueError("not supported")

    async def main() -> None:
        endpoints = Endpoints()
        install(endpoints, datacenter="dc1", node_name="bench", server_address=lambda: "x:8300")
        port = ServerPort("127.0.0.1:0", endpoints, None, NullLog())
        server = build_http_server("127.0.0.1:0", BenchAgent(port), NullLog())
        async with trio.open_nursery() as nursery:
            address = await nursery.start(server.run)
            print(address.port, flush=True)
            await trio.sleep_forever()

    trio.run(main)


# ------------------------------------------------------------------ the load (this process)


def _request(method: str, target: str, body: bytes = b"") -> bytes:
    return (
        f"{method} {target} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


class Conn:
    """A keep-alive connection reading responses by Content-Length (no chunking here)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def exchange(self, request: bytes) -> tuple[bytes, bytes]:
        await self.stream.send_all(request)
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buffer[:end])
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                total = end + 4 + length
                if len(self.buffer) >= total:
                    body = bytes(self.buffer[end + 4 : total])
                    del self.buffer[:total]
                    return head, body
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("server closed")
            self.buffer += data


def _index(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"x-consul-index:"):
            return int(line.split(b":")[1])
    raise ValueError("no index")


async def _rate(port: int, clients: int, request: bytes, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def one() -> None:
        conn = Conn(await trio.open_tcp_stream("127.0.0.1", port))
        while True:
            start = time.perf_counter()
            if start >= deadline:
                break
            await conn.exchange(request)
            latencies.append(time.perf_counter() - start)
        await conn.stream.aclose()

    begin = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(one)
    elapsed = time.perf_counter() - begin
    latencies.sort()
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
    }


async def _wait(conn: Conn, index: int, woken: trio.Event, done: list[float]) -> None:
    await conn.exchange(_request("GET", f"/v1/kv/poll?index={index}&wait=1m"))
    done[0] = time.perf_counter()
    woken.set()


async def _wakeups(port: int, samples: int, parked: int) -> dict[str, float]:
    writer = Conn(await trio.open_tcp_stream("127.0.0.1", port))
    waiter = Conn(await trio.open_tcp_stream("127.0.0.1", port))
    others = []
    async with trio.open_nursery() as nursery:
        for n in range(parked):
            conn = Conn(await trio.open_tcp_stream("127.0.0.1", port))
            others.append(conn)
            nursery.start_soon(
                conn.exchange, _request("GET", f"/v1/kv/other{n}?index=999999&wait=10m")
            )
        await trio.sleep(0.5)
        times = []
        for _ in range(samples):
            head, _ = await writer.exchange(_request("GET", "/v1/kv/poll"))
            index = _index(head)
            woken = trio.Event()
            sent = [0.0]
            done = [0.0]
            nursery.start_soon(_wait, waiter, index, woken, done)
            await trio.sleep(0.02)  # let the GET park on the server
            sent[0] = time.perf_counter()
            await writer.exchange(_request("PUT", "/v1/kv/poll", VALUE))
            await woken.wait()
            times.append(done[0] - sent[0])
        nursery.cancel_scope.cancel()
    times.sort()
    return {
        "p50_ms": 1000 * statistics.median(times),
        "p99_ms": 1000 * times[int(len(times) * 0.99)],
    }


async def measure(port: int, seconds: float, samples: int) -> dict[str, Any]:
    first = Conn(await trio.open_tcp_stream("127.0.0.1", port))
    await first.exchange(_request("PUT", "/v1/kv/bench", VALUE))
    results: dict[str, Any] = {}
    for clients in (1, 64):
        results[f"GET x{clients}"] = await _rate(
            port, clients, _request("GET", "/v1/kv/bench"), seconds
        )
        results[f"PUT x{clients}"] = await _rate(
            port, clients, _request("PUT", "/v1/kv/bench", VALUE), seconds
        )
    for parked in (0, 200):
        results[f"wake-up, {parked} parked"] = await _wakeups(port, samples, parked)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per rate cell")
    parser.add_argument("--samples", type=int, default=50, help="wake-up samples per cell")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return 0
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.http_kv", "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        results = trio.run(measure, port, args.seconds, args.samples)
    finally:
        child.terminate()
        child.wait(timeout=10)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print("| cell | req/s | p50 ms | p99 ms |\n|---|---|---|---|")
    for name, cell in results.items():
        rate = f"{cell['requests_per_s']:.0f}" if "requests_per_s" in cell else "-"
        print(f"| {name} | {rate} | {cell['p50_ms']:.2f} | {cell['p99_ms']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
