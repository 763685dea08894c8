"""The agent RPC port bounded in bytes: queued output per connection and per agent, replies that
never echo much of what a peer sent, config files refused past 1 MiB and reloaded off the event
loop, and commands cut short by a shutdown answered with an error."""

from __future__ import annotations

import gc
import json
import socket
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from rpc_helpers import RawConnection, poll_until, running_agent

import agentrpc.agent
from agentrpc.agent import Agent
from agentrpc.config import MAX_CONFIG_FILE_SIZE, ConfigError, load_config
from agentrpc.gossip.contract import GossipAddress
from agentrpc.gossip.transport import MemoryGossipNetwork, MemoryGossipTransport
from agentrpc.protocol.constants import ERR_SHUTTING_DOWN
from agentrpc.rpc_connection import FLUSH_BYTES

STATS = msgpack.packb({"Command": "stats", "Seq": 9, "Token": ""})


async def greedy_client(agent: Agent) -> RawConnection:
    """A handshaken connection with a tiny receive buffer that will never read again."""
    conn = await RawConnection.open(agent)
    sock = getattr(conn.stream, "socket", None)
    assert sock is not None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await conn.handshake()
    return conn


async def pipeline_until_stuck(conn: RawConnection, seconds: float) -> int:
    """Send pipelined ``stats`` requests until the agent stops reading (or time runs out)."""
    sent = 0
    with trio.move_on_after(seconds):
        while sent < 50_000_000:
            await conn.send_bytes(STATS * 1000)
            sent += len(STATS) * 1000
    return sent


async def good_stats(agent: Agent) -> None:
    good = await RawConnection.open(agent)
    await good.handshake()
    with trio.fail_after(5):
        response = await good.call("stats", reply_body=True)
    assert response.error == ""
    assert "rpc" in response.body
    await good.aclose()


async def test_one_client_that_never_reads_holds_at_most_its_byte_budget() -> None:
    # Many items fit the (item-counted) channel; only the byte budget holds the reader back.
    async with running_agent("tcp", send_queue_size=100_000) as agent:
        greedy = await greedy_client(agent)
        gc.collect()
        tracemalloc.start()
        try:
            sent = await pipeline_until_stuck(greedy, 3)
            await good_stats(agent)  # answered while the greedy connection is stuck
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        budget = agent.send_budget
        assert sent > 100_000
        assert budget.peak > agent.config.send_queue_bytes // 2, "the attack never got going"
        # What the agent holds for it: the 1 MiB budget (one flush batch may pass it only when
        # nothing else is queued), not every reply to every request it read.
        assert budget.peak <= agent.config.send_queue_bytes + FLUSH_BYTES
        assert budget.waits == 0  # one connection never reaches the agent-wide budget
        assert peak < 12_000_000, f"the agent allocated {peak / 1e6:.1f} MB"
        await greedy.aclose()


async def test_the_agent_budget_bounds_the_sum_and_a_good_client_is_still_answered() -> None:
    async with running_agent(
        "tcp", send_queue_size=100_000, agent_send_bytes=2 << 20, send_queue_bytes=1 << 20
    ) as agent:
        greedy = [await greedy_client(agent) for _ in range(6)]
        async with trio.open_nursery() as nursery:
            for conn in greedy:
                nursery.start_soon(pipeline_until_stuck, conn, 3)
        budget = agent.send_budget
        # Six connections with 1 MiB each would hold 6 MiB; the agent-wide 2 MiB bounds them,
        # plus the 64 KiB that an empty connection may always queue.
        assert budget.peak <= (2 << 20) + len(greedy) * budget.reserve
        assert budget.waits > 0
        await good_stats(agent)
        for conn in greedy:
            await conn.aclose()
        await poll_until(lambda: budget.used == 0)  # closed connections give their bytes back


async def test_replies_never_echo_more_than_a_bounded_part_of_the_request() -> None:
    async with running_agent("tcp") as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        await conn.request("monitor", {"LogLevel": "x" * 500_000})
        with trio.fail_after(5):
            [reply] = await conn.read(1)
        assert reply.error.startswith("Unknown log level: XXXX")
        assert len(reply.error) < 300
        await conn.aclose()


async def test_a_huge_command_name_before_the_handshake_is_logged_cut() -> None:
    async with running_agent("tcp") as agent:
        for _ in range(20):
            conn = await RawConnection.open(agent)
            conn.decoder.expect(1, body=False)
            await conn.send_objects({"Command": "y" * 1_000_000, "Seq": 1, "Token": ""})
            with trio.fail_after(5):
                [reply] = await conn.read_until_eof()
            assert reply.error == "Handshake required"
        lines = [line for line in agent.hub.lines() if "before handshake" in line]
        assert 1 <= len(lines) <= 2  # throttled: one line per second for the whole flood
        assert all(len(line) < 400 for line in lines)
        assert "1000000 characters" in lines[0]


async def test_a_command_in_flight_at_shutdown_is_answered_with_an_error(
    autojump_clock: trio.abc.Clock,
) -> None:
    network = MemoryGossipNetwork()
    _packets, listener = await MemoryGossipTransport(network).bind(GossipAddress("127.0.0.9", 8301))
    held: list[trio.abc.Stream] = []
    join_started = trio.Event()

    async def accept_and_ignore() -> None:
        while True:
            stream, _ = await listener.accept()
            held.append(stream)  # the join's push/pull waits here until its timeout
            join_started.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_and_ignore)
        async with running_agent("memory", gossip_network=network, drain_timeout=0.5) as agent:
            conn = await RawConnection.open(agent)
            await conn.handshake()
            seq = await conn.request(
                "join", {"Existing": ["127.0.0.9:8301"], "WAN": False}, reply_body=True
            )
            await join_started.wait()
            leaver = await RawConnection.open(agent)
            await leaver.handshake()
            with trio.fail_after(5):  # well before the join's own 10 s timeout
                left = await leaver.call("leave")
                answered = await conn.read_until_eof()
            assert left.error == ""
            assert [(r.seq, r.error) for r in answered] == [(seq, ERR_SHUTTING_DOWN)]
            assert answered[0].body == {"Num": 0}  # join's body is always sent
        nursery.cancel_scope.cancel()


def write_config(path: Path, settings: dict[str, Any], pad_to: int = 0) -> None:
    text = json.dumps(settings)
    if pad_to > len(text):
        text = text[:-1] + " " * (pad_to - len(text)) + "}"
    path.write_text(text)


def test_a_config_file_above_1_mib_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    write_config(big, {"datacenter": "dc2"}, pad_to=MAX_CONFIG_FILE_SIZE + 1)
    with pytest.raises(ConfigError, match=r"big\.json is larger than 1024 KiB"):
        load_config([big])
    write_config(big, {"datacenter": "dc2"}, pad_to=MAX_CONFIG_FILE_SIZE)
    assert load_config([big]).datacenter == "dc2"


async def test_reload_refuses_a_config_file_that_grew_past_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "agent.json"
    write_config(path, {"datacenter": "dc1"})
    async with running_agent("tcp", files=[str(path)]) as agent:
        write_config(path, {"datacenter": "dc1", "log_level": "WARN"}, pad_to=2 << 20)
        error = await agent.reload()
        assert "is larger than 1024 KiB" in error
        assert agent.config.log_level == "TRACE"  # the old config stays
        await good_stats(agent)


async def test_reload_reads_and_parses_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "agent.json"
    write_config(path, {"datacenter": "dc1"})
    started, release = threading.Event(), threading.Event()
    real_load = agentrpc.agent.load_config

    def slow_load(*args: Any) -> Any:
        started.set()
        release.wait(10)  # a huge or slow file: blocks whoever runs it
        return real_load(*args)

    monkeypatch.setattr(agentrpc.agent, "load_config", slow_load)
    async with running_agent("tcp", files=[str(path)]) as agent, trio.open_nursery() as nursery:
        reloaded = trio.Event()

        async def reload() -> None:
            assert await agent.reload() == ""
            reloaded.set()

        nursery.start_soon(reload)
        await trio.to_thread.run_sync(started.wait, 10)
        await good_stats(agent)  # the event loop is free while the reload reads
        assert not reloaded.is_set()
        release.set()
        with trio.fail_after(10):
            await reloaded.wait()


async def _garbage(agent: Agent) -> None:
    conn = await RawConnection.open(agent)
    await conn.send_bytes(b"\xc1" * 64)
    await conn.read_until_eof()


async def _before_handshake(agent: Agent) -> None:
    conn = await RawConnection.open(agent)
    conn.decoder.expect(1, body=False)
    await conn.send_objects({"Command": "members-lan", "Seq": 1, "Token": ""})
    await conn.read_until_eof()


async def _unsupported(agent: Agent) -> None:
    conn = await RawConnection.open(agent)
    await conn.handshake()
    conn.decoder.expect(2, body=False)
    await conn.send_objects({"Command": "z" * 5000, "Seq": 2, "Token": ""})
    await conn.read_until_eof()


async def _malformed_body(agent: Agent) -> None:
    conn = await RawConnection.open(agent)
    await conn.handshake()
    conn.decoder.expect(2, body=True)
    await conn.send_objects({"Command": "join", "Seq": 2, "Token": ""}, {"Existing": 7})
    await conn.read_until_eof()


async def _silent(agent: Agent) -> None:
    conn = await RawConnection.open(agent)
    await conn.read_until_eof()  # closed by the handshake deadline


async def _idle(agent: Agent) -> None:
    conn = await RawConnection.open(agent)
    await conn.handshake()
    await conn.read_until_eof()  # closed by the idle deadline


async def _connect_and_drop(agent: Agent) -> None:
    conn = await RawConnection.open(agent)
    await conn.aclose()


@pytest.mark.parametrize(
    "attack",
    [_garbage, _before_handshake, _unsupported, _malformed_body, _silent, _idle, _connect_and_drop],
)
async def test_a_flood_of_one_kind_logs_at_most_a_couple_of_lines(attack: Any) -> None:
    """30 connections of one hostile kind within a second: the agent logs (at any level) at
    most two lines about them. A new line that a client can trigger without the throttle
    makes this fail. A client agent: a server's own election and catalog lines would be
    counted too."""
    async with running_agent("tcp", handshake_timeout=0.2, idle_timeout=0.2, server=False) as agent:
        now = [0.0]
        agent.hub._monotonic = lambda: now[0]  # the throttle's clock stands still
        before = len(agent.hub.lines())
        for _ in range(30):
            with trio.fail_after(5):
                await attack(agent)
        await poll_until(lambda: agent.rpc_stats.connections == 0)
        lines = agent.hub.lines()[before:]
        assert len(lines) <= 3, "\n".join(lines)  # "accepted" and the kind, one each
        await good_stats(agent)


async def test_a_token_that_is_not_utf8_is_denied_not_dropped() -> None:
    async with running_agent("tcp", rpc_token="secret") as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        # As go-msgpack writes a Go string holding bytes that are not UTF-8: a raw str.
        header = b"\x83\xa7Command\xa5stats\xa3Seq\x02\xa5Token\xa2\xff\xfe"
        conn.decoder.expect(2, body=True)
        conn.decoder.expect(3, body=True)
        await conn.send_bytes(header + header.replace(b"Seq\x02", b"Seq\x03"))
        with trio.fail_after(5):
            replies = await conn.read(2)
        assert [(r.seq, r.error) for r in replies] == [
            (2, "Permission denied"),
            (3, "Permission denied"),
        ]
