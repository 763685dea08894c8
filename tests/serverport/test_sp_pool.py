"""The connection pool over real TCP: the bytes it writes (compared with what Consul's pool
writes, built by hand from the yamux spec and the msgpack codec), reuse, redial, timeouts,
in-process calls to itself, and members-wan forwarding."""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from sp_helpers import (
    ACK,
    DATA,
    RST,
    SYN,
    WINDOW_UPDATE,
    data_frame,
    frame,
    read_exactly,
    running_port,
)

from agentrpc.consul_servers import (
    MEMBERS_WAN_ENDPOINT,
    forward_members_wan,
    members_wan_endpoint,
    server_addresses,
)
from agentrpc.protocol.bodies import Member
from agentrpc.serverport.endpoints import (
    CallTimeout,
    EndpointError,
    Endpoints,
    RemoteError,
    RPCCallError,
)
from agentrpc.serverport.pool import ConnectionPool, open_connection_pool
from agentrpc.transports import Address


async def fake_server(
    handler: Callable[[trio.SocketStream], Awaitable[None]], nursery: trio.Nursery
) -> Address:
    """A raw TCP listener on 127.0.0.1 that runs ``handler`` for each connection."""
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    host, port = listeners[0].socket.getsockname()[:2]
    return Address("tcp", host=host, port=port)


async def test_status_ping_bytes_match_consuls_pool_exactly() -> None:
    """Consul's pool (agent/pool/pool.go) for ``Status.Ping``, without TLS: dial, write the
    byte 4 (RPCMultiplexV2), start yamux as client; ``session.Open()`` sends a window update
    with SYN on stream 1 (delta 0); msgpackrpc's codec then writes the request header
    ``{Seq, ServiceMethod}`` (go-msgpack: keys sorted) and the body ``struct{}{}`` through a
    bufio writer flushed once, so one data frame. The first call's Seq is 1 (CallWithCodec
    starts its counter at 1). No type byte is written inside the stream."""
    request = (
        b"\x82"  # fixmap, 2 entries
        + b"\xa3Seq"
        + b"\x01"  # "Seq": 1
        + b"\xadServiceMethod"
        + b"\xabStatus.Ping"  # "ServiceMethod": "Status.Ping"
    ) + b"\x80"  # the body: struct{}{} -> empty map
    header_syn = bytes([0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0])  # v0, window update, SYN, id 1, 0
    header_data = bytes([0, 0, 0, 0, 0, 0, 0, 1]) + len(request).to_bytes(4, "big")
    expected = b"\x04" + header_syn + header_data + request
    assert len(request) == 33
    response = b"\x83\xa5Error\xa0\xa3Seq\x01\xadServiceMethod\xabStatus.Ping\x80"

    captured: list[bytes] = []
    done = trio.Event()

    second = request.replace(b"\xa3Seq\x01", b"\xa3Seq\x02")
    second_frame = header_data + second

    async def consul_like_server(stream: trio.SocketStream) -> None:
        captured.append(await read_exactly(stream, len(expected)))
        await stream.send_all(frame(WINDOW_UPDATE, ACK, 1, 0) + data_frame(1, response))
        captured.append(await read_exactly(stream, len(second_frame)))
        await stream.send_all(data_frame(1, response.replace(b"\xa3Seq\x01", b"\xa3Seq\x02")))
        done.set()
        await stream.receive_some()  # until the pool closes

    async with trio.open_nursery() as nursery:
        address = await fake_server(consul_like_server, nursery)
        async with open_connection_pool(call_timeout=5) as pool:
            assert await pool.call(address, "Status.Ping", {}) == {}
            assert await pool.call(address, "Status.Ping", {}) == {}
            with trio.fail_after(5):
                await done.wait()
            assert pool.stats.streams == 1
        nursery.cancel_scope.cancel()
    assert captured[0] == expected
    # The stream is kept, as Consul's pool keeps it: the next call is a data frame on stream 1
    # (no SYN, no FIN in between), its Seq the pool's next.
    assert captured[1] == second_frame


async def test_one_connection_is_reused_for_many_calls() -> None:
    endpoints = Endpoints()

    async def slow(body: Any) -> Any:
        await trio.sleep(0.05)
        return body

    endpoints.register("Test.Slow", slow)
    async with running_port(endpoints) as running, open_connection_pool(call_timeout=5) as pool:
        results: dict[int, Any] = {}

        async def call(index: int) -> None:
            results[index] = await pool.call(running.address, "Test.Slow", index)

        async with trio.open_nursery() as nursery:
            for index in range(40):
                nursery.start_soon(call, index)
        for _ in range(10):
            assert await pool.call(running.address, "Status.Ping", {}) == {}
        assert results == {index: index for index in range(40)}
        # 40 calls at once took 40 streams; the 10 after them reused kept ones.
        assert pool.stats.streams == 40
        assert pool.stats.dials == 1
        assert pool.connection_count == 1
        assert running.port.router.stats.mux_sessions == 1
        assert running.port.rpc.stats.requests == 50


async def test_an_idle_connection_is_reaped_but_not_one_with_a_call_in_flight() -> None:
    endpoints = Endpoints()

    async def slow(body: Any) -> Any:
        await trio.sleep(1.0)  # twice the idle bound, all of it in flight
        return body

    endpoints.register("Test.Slow", slow)
    async with (
        running_port(endpoints) as running,
        open_connection_pool(call_timeout=5, max_idle=0.5) as pool,
    ):
        assert await pool.call(running.address, "Test.Slow", 1) == 1
        assert pool.stats.reaped == 0 and pool.connection_count == 1
        with trio.fail_after(10):
            while pool.connection_count:  # noqa: ASYNC110 - the reaper runs on its own clock
                await trio.sleep(0.05)
        assert pool.stats.reaped == 1
        assert await pool.call(running.address, "Status.Ping", {}) == {}
        assert pool.stats.dials == 2


async def test_an_empty_pool_arms_no_timer_and_reaps_what_is_pooled_later() -> None:
    """The reaper sleeps while the pool is empty (an idle agent wakes for nothing), and a
    connection pooled after that is still reaped."""
    async with open_connection_pool(call_timeout=5, max_idle=0.5) as pool:
        await trio.testing.wait_all_tasks_blocked()
        assert trio.lowlevel.current_statistics().seconds_to_next_deadline == math.inf
        async with running_port() as running:
            for round_ in (1, 2):
                await pool.ping(running.address)
                with trio.fail_after(10):
                    while pool.connection_count:  # noqa: ASYNC110 - the reaper's own clock
                        await trio.sleep(0.05)
                assert pool.stats.reaped == round_
                await trio.testing.wait_all_tasks_blocked()
                assert pool.connection_count == 0


async def test_broken_connection_is_dropped_and_redialled() -> None:
    async with running_port() as running, open_connection_pool(call_timeout=5) as pool:
        await pool.ping(running.address)
        assert pool.connected(running.address)
        (conn,) = pool._conns.values()
        running.port.router.close_sessions()  # the server ends the session (go-away, EOF)
        with trio.fail_after(5):
            await conn.session.wait_closed()
        assert not pool.connected(running.address)
        assert await pool.call(running.address, "Status.Ping", {}) == {}
        assert pool.stats.dials == 2
        assert pool.connected(running.address)


async def test_redial_when_the_session_is_dead_but_not_yet_noticed() -> None:
    async with running_port() as running, open_connection_pool(call_timeout=5) as pool:
        await pool.ping(running.address)
        # The session went away (e.g. a keep-alive failure) between two calls.
        for conn in list(pool._conns.values()):
            conn.session.close()
        assert await pool.call(running.address, "Status.Ping", {}) == {}
        assert pool.stats.dials == 2


async def test_call_times_out_against_a_peer_that_never_answers() -> None:
    received = bytearray()
    reset_seen = trio.Event()

    async def silent(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some():
            received.extend(data)
            if frame(WINDOW_UPDATE, RST, 1, 0) in received:
                reset_seen.set()

    async with trio.open_nursery() as nursery:
        address = await fake_server(silent, nursery)
        async with open_connection_pool(call_timeout=0.3) as pool:
            start = trio.current_time()
            with pytest.raises(CallTimeout, match=r"no answer within 0\.3 s"):
                await pool.call(address, "Status.Ping", {})
            assert 0.25 <= trio.current_time() - start < 3
            assert pool.stats.timeouts == 1
            # The timed-out stream was reset (RST) so that the connection stays usable.
            with trio.fail_after(5):
                await reset_seen.wait()
        nursery.cancel_scope.cancel()
    assert received.startswith(b"\x04" + frame(WINDOW_UPDATE, SYN, 1, 0) + frame(DATA, 0, 1, 33))


async def test_remote_error_text_and_refused_connections() -> None:
    endpoints = Endpoints()

    def refuse(_body: Any) -> Any:
        raise EndpointError("ACL not found")

    endpoints.register("Test.Refuse", refuse)
    async with running_port(endpoints) as running, open_connection_pool(call_timeout=5) as pool:
        with pytest.raises(RemoteError) as unknown:
            await pool.call(running.address, "Catalog.Nothing", {})
        assert unknown.value.error == "rpc: can't find service Catalog.Nothing"
        assert "rpc: can't find service Catalog.Nothing" in str(unknown.value)
        with pytest.raises(RemoteError) as refused:
            await pool.call(running.address, "Test.Refuse", {})
        assert refused.value.error == "ACL not found"
        assert await pool.call(running.address, "Status.Ping", {}) == {}
        assert pool.stats.dials == 1  # errors from the remote side never drop the connection
        closed = Address("tcp", host="127.0.0.1", port=running.address.port)
    async with open_connection_pool(call_timeout=5) as pool:
        with pytest.raises(RPCCallError, match="failed to connect"):
            await pool.call(closed, "Status.Ping", {})


async def test_calls_to_the_local_address_go_in_process() -> None:
    async with running_port() as running, open_connection_pool(call_timeout=5) as pool:
        pool.set_local([running.address], running.port.call_local)
        assert await pool.call(str(running.address), "Status.Ping", {}) == {}
        with pytest.raises(RemoteError, match="can't find service"):
            await pool.call(running.address, "No.Such", {})
        assert pool.stats.local_calls == 2
        assert pool.stats.dials == 0
        assert running.port.router.stats.mux_sessions == 0


async def test_cancelled_call_leaves_the_pool_usable() -> None:
    endpoints = Endpoints()

    async def forever(_body: Any) -> Any:
        await trio.sleep_forever()

    endpoints.register("Test.Forever", forever)
    async with running_port(endpoints) as running, open_connection_pool(call_timeout=5) as pool:
        with trio.move_on_after(0.1) as scope:
            await pool.call(running.address, "Test.Forever", {})
        assert scope.cancelled_caught
        assert await pool.call(running.address, "Status.Ping", {}) == {}
        assert pool.stats.dials == 1


def _member(name: str, host: str, port: int, tags: dict[str, str] | None = None) -> Member:
    return Member(name=name, addr=ipaddress.ip_address(host), port=port, tags=tags or {})


async def test_members_wan_forwarding_with_fallback() -> None:
    wan = [_member("s1.dc1", "10.0.0.1", 8302), _member("s2.dc2", "::1", 8302)]
    endpoints = Endpoints()
    endpoints.register(MEMBERS_WAN_ENDPOINT, members_wan_endpoint(lambda: wan))
    async with running_port(endpoints) as running:
        dead = "127.0.0.1:1"
        async with open_connection_pool(call_timeout=2) as pool:
            members = await forward_members_wan(pool, [dead, str(running.address)])
            assert members is not None
            assert [Member.from_wire(m) for m in members] == wan
            assert members[0]["Addr"] == b"\x0a\x00\x00\x01"
            assert await forward_members_wan(pool, [dead]) is None
            assert await forward_members_wan(pool, []) is None
    lan = [
        _member("srv", "10.0.0.5", 8301, {"role": "consul", "port": "8300"}),
        _member("client", "10.0.0.6", 8301, {"role": "node"}),
        _member("srv6", "fe80::1", 8301, {"role": "consul", "port": "8300"}),
        Member(
            name="gone",
            addr=ipaddress.ip_address("10.0.0.7"),
            port=8301,
            tags={"role": "consul", "port": "8300"},
            status="failed",
        ),
    ]
    assert server_addresses(lan) == ["10.0.0.5:8300", "[fe80::1]:8300"]


async def test_pool_requires_run_and_stops_cleanly(autojump_clock: trio.testing.MockClock) -> None:
    pool = ConnectionPool()
    with pytest.raises(RuntimeError, match="not running"):
        await pool.call("memory://nowhere", "Status.Ping", {})
    with pytest.raises(ValueError):
        ConnectionPool(call_timeout=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        closed_at = trio.current_time()
        pool.close()
    # At once: nothing (the idle reaper included) waits out the sessions' grace period.
    assert trio.current_time() == closed_at
    with pytest.raises(RPCCallError, match="closed"):
        await pool.call("127.0.0.1:1", "Status.Ping", {})
