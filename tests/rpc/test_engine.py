"""Connection engine behaviour: pipelining, concurrency, monitor streams, closing."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import msgpack
import pytest
import trio
import trio.testing
from rpc_helpers import RawConnection, running_agent

from agentrpc.logs import INFO, WARN
from agentrpc.membership.pool import LocalPool
from agentrpc.protocol.bodies import Member
from agentrpc.protocol.codec import Response


class SlowJoinPool(LocalPool):
    """A LAN pool whose join blocks until released (or is cancelled)."""

    def __init__(self) -> None:
        super().__init__("lan", Member("node1", ipaddress.ip_address("127.0.0.1"), 8301))
        self.release = trio.Event()
        self.started = trio.Event()
        self.cancelled = False
        self.cancelled_event = trio.Event()

    async def join(self, addresses: Sequence[str]) -> tuple[int, str]:
        self.started.set()
        try:
            await self.release.wait()
        except trio.Cancelled:
            self.cancelled = True
            self.cancelled_event.set()
            raise
        return len(addresses), ""


async def test_pipelining_10000_requests_on_one_connection(transport: str) -> None:
    async with running_agent(transport) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        commands = ["stop", "members-lan", "stats", "members-wan"]
        frames = []
        for i in range(10_000):
            seq = i + 2
            command = commands[i % 4]
            conn.decoder.expect(seq, body=command != "stop")
            frames.append(msgpack.packb({"Command": command, "Seq": seq, "Token": ""}))
            if command == "stop":
                frames.append(msgpack.packb({"Stop": 1}))
        payload = b"".join(frames)

        async def send() -> None:
            await conn.send_bytes(payload)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            responses = await conn.read(10_000)
        assert [r.seq for r in responses] == list(range(2, 10_002))
        assert all(r.error == "" for r in responses)
        assert responses[1].body["Members"][0]["Name"] == "node1"
        assert "rpc" in responses[2].body


async def test_a_slow_handler_does_not_delay_a_fast_one(transport: str) -> None:
    pool = SlowJoinPool()
    async with running_agent(transport, lan=pool) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        join_seq = await conn.request(
            "join", {"Existing": ["10.0.0.1:8301"], "WAN": False}, reply_body=True
        )
        await pool.started.wait()
        members_seq = await conn.request("members-lan", reply_body=True)
        (first,) = await conn.read(1)
        assert first.seq == members_seq
        pool.release.set()
        (second,) = await conn.read(1)
        assert second == Response(join_seq, "", {"Num": 1})


async def test_closing_the_connection_cancels_its_handlers(
    autojump_clock: trio.abc.Clock,
) -> None:
    pool = SlowJoinPool()
    async with running_agent("memory", lan=pool) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        await conn.request("join", {"Existing": ["10.0.0.1:1"], "WAN": False}, reply_body=True)
        await pool.started.wait()
        await conn.aclose()
        with trio.fail_after(5):
            await pool.cancelled_event.wait()
        assert pool.cancelled


async def test_stop_reply_is_never_followed_by_a_line_of_that_stream(transport: str) -> None:
    async with running_agent(transport) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        monitor_seq = await conn.request("monitor", {"LogLevel": "trace"})
        (ack,) = await conn.read(1)
        assert ack == Response(monitor_seq, "", None)
        log = agent.hub.logger("test")
        for round_ in range(20):
            for i in range(200):
                log.info(f"burst {round_} line {i}")
            await trio.lowlevel.checkpoint()
        stop_seq = await conn.request("stop", {"Stop": monitor_seq})
        for i in range(500):
            log.info(f"after stop {i}")
        stats_seq = await conn.request("stats", reply_body=True)
        seen: list[int] = []
        while stats_seq not in seen:
            (response,) = await conn.read(1)
            seen.append(response.seq)
        after_stop = seen[seen.index(stop_seq) + 1 :]
        assert monitor_seq not in after_stop
        assert after_stop == [stats_seq]


async def test_monitor_replays_the_ring_filtered_then_streams_live_lines(transport: str) -> None:
    # A client agent: a server's election lines would land in the ring at any moment.
    async with running_agent(transport, server=False) as agent:
        log = agent.hub.logger("test")
        for i in range(600):
            log.log(INFO if i % 3 else WARN, f"backlog {i}")
        conn = await RawConnection.open(agent)
        await conn.handshake()
        # At WARN: only WARN lines of the last 512 in the ring (all levels are kept).
        seq = await conn.request("monitor", {"LogLevel": "warn"})
        assert (await conn.read(1))[0] == Response(seq, "", None)
        ring_warns = agent.hub.lines(WARN)
        replay = [r.body["Log"] for r in await conn.read(len(ring_warns))]
        assert replay == ring_warns
        assert all("[WARN] test: backlog" in line for line in replay)
        # The ring keeps the last 512 lines: the oldest backlog lines are gone.
        assert 86 <= int(replay[0].rsplit(" ", 1)[1]) <= 90
        assert replay[-1].endswith("backlog 597")
        log.info("live info is filtered out")
        log.warn("live warning")
        (live,) = await conn.read(1)
        assert live.seq == seq
        assert live.body["Log"].endswith("[WARN] test: live warning")


async def test_monitor_replays_everything_at_trace(transport: str) -> None:
    # A client agent: a server's election lines would land in the ring at any moment.
    async with running_agent(transport, server=False) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        ring = agent.hub.lines()
        seq = await conn.request("monitor", {"LogLevel": "TRACE"})
        (ack, *replay) = await conn.read(1 + len(ring))
        assert ack == Response(seq, "", None)
        lines = [r.body["Log"] for r in replay]
        assert lines == ring
        assert any("[INFO] agent.rpc: RPC listening on" in line for line in lines)
        assert "[DEBUG] agent.rpc: Accepted client:" in lines[-1]
        assert all(" [" in line and not line.endswith("\n") for line in lines)


async def test_a_stalled_monitor_reader_drops_and_counts_without_slowing_anyone() -> None:
    async with running_agent("memory", monitor_queue_size=8, send_queue_size=2) as agent:
        stalled = await RawConnection.open(agent)
        await stalled.handshake()
        monitor_seq = await stalled.request("monitor", {"LogLevel": "info"})
        await trio.testing.wait_all_tasks_blocked()
        log = agent.hub.logger("flood")
        other = await RawConnection.open(agent)
        await other.handshake()
        for round_ in range(50):
            for i in range(1000):
                log.info(f"flood {round_}.{i}")
            # Another client is answered at once although the monitor reader is stalled.
            assert (await other.call("members-lan", reply_body=True)).error == ""
        stats = (await other.call("stats", reply_body=True)).body
        dropped = int(stats["rpc"]["monitor_dropped"])
        assert dropped > 40_000
        # The drop was counted, never logged per line: the ring holds no "Dropping" storm.
        assert not any("drop" in line.lower() for line in agent.hub.lines())
        # When the reader resumes it gets what was queued plus one summary line.
        log.info("after the flood")
        lines: list[str] = []
        while not any("after the flood" in line for line in lines):
            (response,) = await stalled.read(1)
            if response.seq == monitor_seq and response.body:
                lines.append(response.body["Log"])
        summaries = [line for line in lines if "monitor dropped" in line]
        assert len(summaries) == 1
        assert len(lines) < 1000  # what the transport buffered, not the 50,000 produced


async def test_connection_without_handshake_is_closed_after_the_deadline(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running_agent("memory", handshake_timeout=3.0) as agent:
        idle = await RawConnection.open(agent)
        start = trio.current_time()
        assert await idle.read_until_eof() == []
        assert 3.0 <= trio.current_time() - start < 4.0
        assert agent.rpc_stats.handshake_timeouts == 1
        # After a handshake there is no such deadline.
        conn = await RawConnection.open(agent)
        await conn.handshake()
        await trio.sleep(60)
        assert (await conn.call("members-lan", reply_body=True)).error == ""


async def test_half_closed_client_still_gets_its_replies() -> None:
    pool = SlowJoinPool()
    async with running_agent("memory", lan=pool) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        seq = await conn.request("join", {"Existing": ["a:1"], "WAN": False}, reply_body=True)
        await pool.started.wait()
        await conn.stream.send_eof()  # type: ignore[attr-defined]
        pool.release.set()
        assert await conn.read_until_eof() == [Response(seq, "", {"Num": 1})]


async def test_shutdown_cancels_everything_within_the_drain_deadline(
    autojump_clock: trio.abc.Clock,
) -> None:
    pool = SlowJoinPool()
    with trio.fail_after(30):
        async with running_agent("memory", lan=pool, drain_timeout=1.0, server=False) as agent:
            conn = await RawConnection.open(agent)
            await conn.handshake()
            await conn.request("join", {"Existing": ["a:1"], "WAN": False}, reply_body=True)
            await pool.started.wait()
            agent.shutdown()
            await agent.wait_stopped()
        assert pool.cancelled


@pytest.mark.parametrize("level", ["trace", "DEBUG", "Info", "warn", "ERR"])
async def test_monitor_levels_are_case_insensitive(level: str) -> None:
    async with running_agent("memory") as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        seq = await conn.request("monitor", {"LogLevel": level})
        (ack,) = await conn.read(1)
        assert ack == Response(seq, "", None)
