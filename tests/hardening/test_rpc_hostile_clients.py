"""Hostile clients on the agent RPC port, over real TCP: each attack's fate, and a
well-behaved client on the same agent still answered."""

from __future__ import annotations

import contextlib
import gc
import tracemalloc

import msgpack
import pytest
import trio
from rpc_helpers import RawConnection, poll_until, running_agent

from agentrpc.agent import Agent
from agentrpc.logs import TRACE


async def assert_healthy(agent: Agent) -> None:
    good = await RawConnection.open(agent)
    await good.handshake()
    with trio.fail_after(5):
        response = await good.call("members-lan", reply_body=True)
    assert response.error == ""
    assert response.body["Members"][0]["Name"] == "node1"
    await good.aclose()


@pytest.mark.parametrize(
    ("attack", "replies"),
    [
        pytest.param(b"\xc1" * 64, 0, id="garbage"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0, id="http"),
        pytest.param(b"\x91" * 5000 + b"\x01", 0, id="deep-nesting"),
        pytest.param(msgpack.packb({"Command": "stats", "Seq": "one"}), 0, id="seq-not-int"),
        pytest.param(msgpack.packb(12345), 0, id="header-not-a-map"),
        # The Seq is readable: the client is told why before the close.
        pytest.param(msgpack.packb({"Command": ["x"], "Seq": 1}), 1, id="command-not-str"),
    ],
)
async def test_malformed_input_closes_only_that_connection(attack: bytes, replies: int) -> None:
    async with running_agent("tcp") as agent:
        hostile = await RawConnection.open(agent)
        hostile.decoder.expect(1, body=False)
        await hostile.send_bytes(attack)
        with trio.fail_after(5):
            answered = await hostile.read_until_eof()
        assert len(answered) == replies
        assert all(r.error.startswith("Malformed request: ") for r in answered)
        await assert_healthy(agent)
        assert agent.rpc_stats.protocol_errors == 1


async def test_huge_declared_string_is_refused_without_allocating_it() -> None:
    async with running_agent("tcp", max_frame_size=64 * 1024) as agent:
        hostile = await RawConnection.open(agent)
        await hostile.handshake()
        tracemalloc.start()
        try:
            # A header whose Command declares 100 MB, then a trickle of bytes.
            await hostile.send_bytes(b"\x82\xa7Command\xdb" + (100_000_000).to_bytes(4, "big"))
            with trio.move_on_after(5):
                try:
                    for _ in range(1000):
                        await hostile.send_bytes(b"x" * 4096)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            with trio.fail_after(5):
                await hostile.read_until_eof()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 20_000_000
        assert agent.rpc_stats.protocol_errors == 1
        await assert_healthy(agent)


async def test_header_without_its_body_blocks_nobody_else() -> None:
    async with running_agent("tcp") as agent:
        stuck = await RawConnection.open(agent)
        await stuck.handshake()
        await stuck.send_objects({"Command": "join", "Seq": 2, "Token": ""})  # no body, ever
        for _ in range(3):
            await assert_healthy(agent)


async def test_unhandshaken_silent_clients_are_closed_by_the_deadline() -> None:
    async with running_agent("tcp", handshake_timeout=0.3) as agent:
        silent = [await RawConnection.open(agent) for _ in range(10)]
        with trio.fail_after(5):
            for conn in silent:
                assert await conn.read_until_eof() == []
        assert agent.rpc_stats.handshake_timeouts == 10
        await assert_healthy(agent)


async def test_a_client_that_pipelines_without_reading_meets_backpressure() -> None:
    async with running_agent("tcp", send_queue_size=4) as agent:
        greedy = await RawConnection.open(agent)
        await greedy.handshake()
        request = msgpack.packb({"Command": "stats", "Seq": 9, "Token": ""})
        gc.collect()
        tracemalloc.start()
        try:
            with trio.move_on_after(2):
                for _ in range(200_000):  # far more than the socket buffers hold
                    await greedy.send_bytes(request * 100)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # The agent stopped reading instead of buffering every reply.
        assert peak < 60_000_000
        await assert_healthy(agent)


async def test_a_stalled_monitor_at_warn_does_not_start_a_log_storm() -> None:
    """The reference's failure: a WARN-level monitor that stops reading made every drop log a
    WARN line, which fed the same full queue. Here drops are only counted, and once the flood
    ends nothing more is logged or dropped. No clock: the checks follow round trips."""
    with trio.fail_after(60):  # a storm must fail the test, not hang it
        async with running_agent("tcp", monitor_queue_size=16) as agent:
            await _flood_a_stalled_monitor(agent)


async def _flood_a_stalled_monitor(agent: Agent) -> None:
    stalled = await RawConnection.open(agent)
    await stalled.handshake()
    await stalled.request("monitor", {"LogLevel": "warn"})
    other = await RawConnection.open(agent)
    await other.handshake()
    log = agent.hub.logger("load")
    # Big lines, one per round trip, until the socket buffers are full and the monitor's
    # queue with them: the first drop says so (an agent that moved lines would queue this one).
    for _ in range(5000):
        log.warn("x" * 8000)
        assert (await other.call("members-lan", reply_body=True)).error == ""
        if agent.hub.monitor_dropped:
            break
    assert agent.hub.monitor_dropped == 1
    for _ in range(20):
        for i in range(5000):
            log.warn(f"warning {i}")
        # The agent runs between the batches (and answers others at once).
        assert (await other.call("members-lan", reply_body=True)).error == ""
    dropped = agent.hub.monitor_dropped
    assert dropped > 50_000
    assert not any("drop" in line.lower() for line in agent.hub.lines())
    # The stalled queue stays full, so any WARN line from now on is dropped and counted; the
    # spy gets every line of any level. Round trips on new connections let every task of the
    # agent run many times: a self-feeding storm would log or drop meanwhile.
    spy = agent.hub.subscribe(TRACE, queue_size=10_000)
    for _ in range(3):
        await assert_healthy(agent)
    log.debug("end of the quiet part")  # below WARN: the stalled monitor is not offered it
    logged: list[str] = []
    with contextlib.suppress(trio.WouldBlock):
        while True:
            logged.append(spy.lines.receive_nowait())
    spy.close()
    assert logged[-1].endswith("[DEBUG] load: end of the quiet part")  # the spy saw it all
    assert agent.hub.monitor_dropped == dropped
    assert not any("drop" in line.lower() for line in logged)
    assert not any("[WARN]" in line or "[ERR]" in line for line in logged)


async def test_connection_flood_is_capped_and_logged_once() -> None:
    async with running_agent("tcp", max_connections_per_client=20) as agent:
        conns = []
        for _ in range(60):
            conns.append(await RawConnection.open(agent))
        await poll_until(lambda: agent.rpc_stats.refused_connections >= 40)
        refusals = [line for line in agent.hub.lines() if "refusing connection" in line]
        assert len(refusals) == 1
        for conn in conns:
            await conn.aclose()
        await poll_until(lambda: agent.rpc_stats.connections == 0)
        await assert_healthy(agent)
