"""Limits and auth on the agent RPC port: token, connection caps, in-flight bound, idle."""

from __future__ import annotations

import trio
import trio.testing
from rpc_helpers import RawConnection, client_for, poll_until, running_agent
from test_engine import SlowJoinPool

from agentrpc import Client
from agentrpc.client import RPCError
from agentrpc.protocol.codec import Response


async def test_token_is_required_for_every_command_but_handshake(transport: str) -> None:
    async with running_agent(transport, rpc_token="s3cret") as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()  # no token needed
        denied = await conn.call("members-lan", reply_body=True)
        assert denied == Response(denied.seq, "Permission denied", {"Members": []})
        join = await conn.call("join", {"Existing": ["a:1"], "WAN": False}, reply_body=True)
        assert (join.error, join.body) == ("Permission denied", {"Num": 0})
        monitor_seq = await conn.request("monitor", {"LogLevel": "info"})
        assert await conn.read(1) == [Response(monitor_seq, "Permission denied", None)]
        conn.decoder.forget(monitor_seq)
        assert (await conn.call("leave")).error == "Permission denied"
        # Still open; the right token works, a wrong one does not.
        seq = conn.next_seq()
        conn.decoder.expect(seq, body=True)
        await conn.send_objects({"Command": "members-lan", "Seq": seq, "Token": "s3cret"})
        (ok,) = await conn.read(1)
        assert ok.error == ""
        assert ok.body["Members"][0]["Name"] == "node1"
        seq = conn.next_seq()
        await conn.send_objects({"Command": "reload", "Seq": seq, "Token": "s3cre"})
        assert await conn.read(1) == [Response(seq, "Permission denied", None)]
        assert agent.rpc_stats.permission_denied == 5
        assert agent.lan.members()[0].status == "alive"  # the denied leave did nothing


async def test_client_sends_its_token() -> None:
    async with running_agent("memory", rpc_token="t") as agent:
        async with client_for(agent, token="t") as client:
            assert len(await client.members_lan()) == 1
        async with client_for(agent) as client:
            try:
                await client.stats()
            except RPCError as exc:
                assert exc.error == "Permission denied"
            else:
                raise AssertionError("stats without a token was answered")


async def test_per_client_connection_cap() -> None:
    async with running_agent("tcp", max_connections_per_client=2) as agent:
        first = await RawConnection.open(agent)
        second = await RawConnection.open(agent)
        await first.handshake()
        await second.handshake()
        third = await RawConnection.open(agent)
        assert await third.read_until_eof() == []  # closed at once, nothing said
        assert agent.rpc_stats.refused_connections == 1
        await first.aclose()
        await poll_until(lambda: agent.rpc_stats.connections == 1)
        again = await RawConnection.open(agent)
        await again.handshake()


async def test_total_connection_cap_counts_every_transport() -> None:
    async with running_agent("memory", max_connections=2) as agent:
        a = await RawConnection.open(agent)
        await a.handshake()
        async with Client(stream=await agent.connect()):
            refused = await RawConnection.open(agent)
            assert await refused.read_until_eof() == []


async def test_in_flight_commands_are_bounded() -> None:
    pool = SlowJoinPool()
    async with running_agent("memory", lan=pool, max_inflight=2) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        joins = [
            await conn.request("join", {"Existing": [f"a:{i}"], "WAN": False}, reply_body=True)
            for i in range(5)
        ]
        await pool.started.wait()
        await trio.testing.wait_all_tasks_blocked()
        # Two joins run; the reader waits for a free slot before reading on.
        assert len(_join_tasks()) == 2
        pool.release.set()
        responses = await conn.read(5)
        assert sorted(r.seq for r in responses) == joins
        assert all(r.body == {"Num": 1} for r in responses)


def _join_tasks() -> list[trio.lowlevel.Task]:
    root = trio.lowlevel.current_root_task()
    assert root is not None
    found: list[trio.lowlevel.Task] = []
    stack = [root]
    while stack:
        task = stack.pop()
        if task.name.endswith("RPCConnection._run_handler"):
            found.append(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found


async def test_in_flight_bound_really_holds(autojump_clock: trio.abc.Clock) -> None:
    pool = SlowJoinPool()
    async with running_agent("memory", lan=pool, max_inflight=2) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        for i in range(5):
            await conn.request("join", {"Existing": [f"a:{i}"], "WAN": False}, reply_body=True)
        await trio.sleep(1)
        assert len(_join_tasks()) == 2
        pool.release.set()
        assert len(await conn.read(5)) == 5


async def test_idle_connections_are_closed_but_monitors_are_not(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running_agent("memory", idle_timeout=30.0) as agent:
        idle = await RawConnection.open(agent)
        await idle.handshake()
        watching = await RawConnection.open(agent)
        await watching.handshake()
        monitor_seq = await watching.request("monitor", {"LogLevel": "err"})
        start = trio.current_time()
        assert await idle.read_until_eof() == []
        assert 30 <= trio.current_time() - start < 31
        assert agent.rpc_stats.idle_timeouts == 1
        await trio.sleep(120)
        agent.hub.logger("t").error("still streaming")
        frames = await watching.read(2)
        assert frames[0] == Response(monitor_seq, "", None)
        assert frames[1].body["Log"].endswith("still streaming")
