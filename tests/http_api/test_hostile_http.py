"""Hostile HTTP clients against the server: huge headers, slowloris heads and bodies, chunked
bodies without an end, 10k idle keep-alive connections, a cap with nothing idle; each bounded,
each closing only its own connection while others are answered. Plus the engine's normal
life: keep-alive, pipelining, Expect: 100-continue, HEAD, shutdown with requests in flight."""

from __future__ import annotations

import socket
import tracemalloc

import trio
import trio.testing
from http_helpers import TrioHTTP, blocking, cluster

from agentrpc.http_api.messages import Request, Response, json_response
from agentrpc.http_api.server import HTTPLimits, HTTPServer
from agentrpc.log_protocol import CaptureLog
from agentrpc.transports import MemoryNetwork, parse_address


async def echo_handler(request: Request) -> Response:
    if request.path == "/slow":
        await trio.sleep(3600)
    return json_response({"path": request.path, "body": len(request.body)})


def raw_exchange(host: str, port: int, data: bytes, *, read_until_close: bool = True) -> bytes:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close:
                break
        return b"".join(chunks)


async def served(limits: HTTPLimits | None = None, network: MemoryNetwork | None = None):
    log = CaptureLog()
    bind = "memory://http" if network is not None else "127.0.0.1:0"
    kwargs = {"network": network} if network is not None else {}
    return HTTPServer(bind, echo_handler, log, limits, **kwargs), log


async def test_huge_headers_get_431_and_close_only_that_connection() -> None:
    server, _ = await served(HTTPLimits(max_header_bytes=16 * 1024))
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        head = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
        reply = await blocking(raw_exchange, address.host, address.port, head)
        assert reply.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        assert b"Connection: close" in reply
        ok = await blocking(
            raw_exchange,
            address.host,
            address.port,
            b"GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        assert ok.startswith(b"HTTP/1.1 200 OK") and b'"path":"/ok"' in ok
        garbage = await blocking(
            raw_exchange, address.host, address.port, b"NOT HTTP AT ALL\r\n\r\n"
        )
        assert garbage.startswith(b"HTTP/1.1 400 ")
        assert server.stats.bad_requests == 2 and server.stats.connections == 0
        server.shutdown()


async def test_slowloris_head_and_body_time_out_with_408(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    server, _ = await served(HTTPLimits(header_timeout=10, body_timeout=30), network)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        slow = await network.connect("http")
        start = trio.current_time()
        await slow.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        for _ in range(100):  # a byte every 5 s: the head never completes in time
            try:
                await slow.send_all(b"X")
            except trio.BrokenResourceError:
                break
            data = b""
            with trio.move_on_after(5):
                data = await slow.receive_some(65536)
            if data:
                assert data.startswith(b"HTTP/1.1 408 Request Timeout")
                break
        assert 10 <= trio.current_time() - start <= 16
        # A body that stops arriving.
        body = await network.connect("http")
        await body.send_all(b"PUT /k HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n12345")
        start = trio.current_time()
        data = await body.receive_some(65536)
        assert data.startswith(b"HTTP/1.1 408") and 30 <= trio.current_time() - start <= 31
        # Meanwhile anyone else is answered.
        good = await TrioHTTP.connect(network, parse_address("memory://http"))
        assert (await good.request("GET", "/fine")).status == 200
        assert server.stats.timeouts == 2
        server.shutdown()


async def test_a_chunked_body_without_end_is_bounded_413_or_408(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    server, _ = await served(HTTPLimits(max_body_bytes=64 * 1024, body_timeout=30), network)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        stream = await network.connect("http")
        await stream.send_all(b"PUT /k HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"1000\r\n" + b"z" * 0x1000 + b"\r\n"
        sent = 0
        reply = b""
        for _ in range(1000):  # far more than the limit, if the server let it
            try:
                await stream.send_all(chunk)
            except trio.BrokenResourceError:
                break
            sent += 0x1000
            with trio.move_on_after(0.01):
                reply = await stream.receive_some(65536)
            if reply:
                break
        with trio.move_on_after(1):
            while not reply.endswith(b"limit"):
                data = await stream.receive_some(65536)
                if not data:
                    break
                reply += data
        assert reply.startswith(b"HTTP/1.1 413 ")
        assert sent <= 64 * 1024 + 2 * 0x1000
        # Chunks that stop without the final one: the body timeout closes it.
        stuck = await network.connect("http")
        await stuck.send_all(
            b"PUT /k HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        assert (await stuck.receive_some(65536)).startswith(b"HTTP/1.1 408")
        good = await TrioHTTP.connect(network, parse_address("memory://http"))
        assert (await good.request("GET", "/fine")).status == 200
        server.shutdown()


async def test_ten_thousand_idle_keep_alive_connections_stay_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    server, _ = await served(HTTPLimits(max_connections=1000), network)
    address = parse_address("memory://http")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        idle = []
        for _ in range(10_000):
            conn = await TrioHTTP.connect(network, address)
            assert (await conn.request("GET", "/hello")).status == 200
            idle.append(conn)
        await trio.testing.wait_all_tasks_blocked()
        assert server.stats.connections <= 1000
        assert server.stats.evicted >= 9000
        # A new client is answered (an idle one makes room).
        fresh = await TrioHTTP.connect(network, address)
        assert (await fresh.request("GET", "/new")).status == 200
        server.shutdown()


async def test_an_idle_keep_alive_connection_costs_little_memory(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    server, _ = await served(network=network)
    address = parse_address("memory://http")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        clients = []
        for _ in range(50):  # warm up: first-use allocations are not per connection
            conn = await TrioHTTP.connect(network, address)
            await conn.request("GET", "/warm")
            clients.append(conn)
        await trio.testing.wait_all_tasks_blocked()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for _ in range(500):
            conn = await TrioHTTP.connect(network, address)
            await conn.request("GET", "/idle")
            clients.append(conn)
        await trio.testing.wait_all_tasks_blocked()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        # Both ends counted (the test's h11 client and memory stream too): a few KiB each.
        assert grown / 500 < 24 * 1024, grown / 500
        assert server.stats.connections == 550
        server.shutdown()


async def test_at_the_cap_with_nothing_idle_a_new_connection_gets_503(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    server, _ = await served(HTTPLimits(max_connections=2), network)
    address = parse_address("memory://http")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        busy = [await TrioHTTP.connect(network, address) for _ in range(2)]
        for conn in busy:
            nursery.start_soon(conn.request, "GET", "/slow")
        await trio.testing.wait_all_tasks_blocked()
        refused = await TrioHTTP.connect(network, address)
        reply = await refused.request("GET", "/x")
        assert reply.status == 503 and reply.body == b"Too many connections"
        assert server.stats.refused == 1
        nursery.cancel_scope.cancel()


async def test_keep_alive_pipelining_continue_and_head(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    server, _ = await served(network=network)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        stream = await network.connect("http")
        pipelined = (
            b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
            b"PUT /two HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            b"HEAD /three HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        await stream.send_all(pipelined)
        data = b""
        while data.count(b"HTTP/1.1 200 OK") < 3:
            data += await stream.receive_some(65536)
        assert data.index(b'"path":"/one"') < data.index(b'"path":"/two","body":3')
        assert b'"path":"/three"' not in data  # HEAD: headers only
        await stream.send_all(
            b"PUT /four HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 100 ")
        await stream.send_all(b"ok")
        data = b""
        while b'"body":2' not in data:
            data += await stream.receive_some(65536)
        assert server.stats.connections == 1
        server.shutdown()


async def test_shutdown_closes_idle_connections_and_cancels_long_requests_after_the_drain(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    server, _ = await served(HTTPLimits(drain_timeout=2.0), network)
    address = parse_address("memory://http")
    async with trio.open_nursery() as nursery:
        stopped = trio.Event()

        async def run_until_stopped() -> None:
            await server.run()
            stopped.set()

        nursery.start_soon(run_until_stopped)
        await trio.testing.wait_all_tasks_blocked()
        idle = await TrioHTTP.connect(network, address)
        assert (await idle.request("GET", "/a")).status == 200
        slow = await TrioHTTP.connect(network, address)
        nursery.start_soon(slow.request, "GET", "/slow")
        await trio.testing.wait_all_tasks_blocked()
        assert server.stats.connections == 2
        start = trio.current_time()
        server.shutdown()
        with trio.fail_after(5):
            await stopped.wait()
        assert 2.0 <= trio.current_time() - start <= 2.5  # the drain, then cancelled
        assert server.stats.connections == 0
        assert await idle.stream.receive_some(10) == b""
        nursery.cancel_scope.cancel()


async def test_the_api_answers_while_a_peer_misbehaves() -> None:
    async with cluster() as env:
        host, port = env.url()
        head = b"GET /v1/kv/x HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 20_000 + b"\r\n"
        reply = await blocking(raw_exchange, host, port, head)
        assert reply.startswith(b"HTTP/1.1 431")
        ok = await blocking(
            raw_exchange,
            host,
            port,
            b"GET /v1/status/leader HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        assert ok.startswith(b"HTTP/1.1 200 OK") and ok.endswith(b'"127.0.0.1:8300"')
