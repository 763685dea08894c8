"""The Python client: typed results, concurrency over one connection, monitor streams."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
import trio
from rpc_helpers import client_for, running_agent

from agentrpc import Client
from agentrpc.client import AgentConnectionError, AgentGoneError, JoinError, RPCError


async def test_commands_give_typed_results(transport: str) -> None:
    async with running_agent(transport) as agent, client_for(agent) as client:
        (member,) = await client.members_lan()
        assert member.name == "node1"
        assert member.addr == ipaddress.ip_address("127.0.0.1")
        assert member.address == "127.0.0.1:8301"
        assert member.tags["role"] == "consul"
        assert (member.protocol_min, member.protocol_max, member.protocol_cur) == (1, 5, 2)
        (wan,) = await client.members(wan=True)
        assert wan.name == "node1.dc1"
        stats = await client.stats()
        assert stats["agent"]["name"] == "node1"
        assert stats["rpc"]["connections"] == "1"
        await client.force_leave("ghost")
        await client.reload()
        assert await client.join([]) == 0
        with pytest.raises(JoinError) as info:
            await client.join(["127.0.0.1:1"])
        assert info.value.num == 0
        assert "Failed to join 127.0.0.1" in str(info.value)


async def test_in_process_client_uses_the_same_engine() -> None:
    async with running_agent("tcp") as agent, Client(stream=await agent.connect()) as client:
        assert [m.name for m in await client.members_lan()] == ["node1"]
        stats = await client.stats()
        assert stats["rpc"]["connections"] == "1"


async def test_many_concurrent_calls_share_one_connection(transport: str) -> None:
    async with running_agent(transport) as agent, client_for(agent) as client:
        results: list[object] = []

        async def call(i: int) -> None:
            if i % 2:
                results.append(f"members {len(await client.members_lan())}")
            else:
                results.append(f"stats {sorted(await client.stats())[0]}")

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(call, i)
        assert results.count("members 1") == 100
        assert results.count("stats agent") == 100
        assert agent.rpc_stats.connections_total == 1


async def test_monitor_context_sends_stop_on_exit(transport: str) -> None:
    async with running_agent(transport) as agent, client_for(agent) as client:
        agent.hub.logger("test").warn("before the monitor")
        async with client.monitor("warn") as lines:
            # The replay holds the line, among the server's own (its election, at WARN).
            with trio.fail_after(10):
                while not (await lines.__anext__()).endswith("[WARN] test: before the monitor"):
                    pass
                agent.hub.logger("test").error("live error")
                while "test:" not in (line := await lines.__anext__()):
                    pass
            assert "[ERR] test: live error" in line
        assert agent.rpc_stats.monitors == 0
        # No stray frame desyncs the client: later calls still work, a new monitor too.
        agent.hub.logger("test").warn("after the stop")
        assert len(await client.members_lan()) == 1
        async with client.monitor("warn") as lines:
            async for line in lines:
                if "after the stop" in line:
                    break


async def test_monitor_with_a_bad_level_raises() -> None:
    async with running_agent("memory") as agent, client_for(agent) as client:
        with pytest.raises(RPCError, match="Unknown log level: NOISY"):
            async with client.monitor("noisy"):
                pass
        assert len(await client.members_lan()) == 1


async def test_agent_going_away_fails_pending_calls_at_once(transport: str) -> None:
    async with running_agent(transport) as agent, client_for(agent) as client:
        seen: list[str] = []
        async with client.monitor("info") as lines:
            agent.shutdown()
            with trio.fail_after(5), pytest.raises(AgentGoneError):
                async for line in lines:
                    seen.append(line)
            assert any("shutdown complete" in line for line in seen)
        with trio.fail_after(5), pytest.raises(AgentGoneError):
            await client.members_lan()
        assert client.closed


async def test_reload_error_is_raised(tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text('log_level = "INFO"\n')
    async with running_agent("memory", files=[str(config)]) as agent, client_for(agent) as client:
        config.write_text("log_level = [\n")
        with pytest.raises(RPCError, match="Failed to reload configs"):
            await client.reload()
        config.write_text(json.dumps({}))  # not TOML any more: still an error
        with pytest.raises(RPCError):
            await client.reload()


async def test_leave_shuts_the_agent_down() -> None:
    async with running_agent("tcp") as agent:
        async with client_for(agent) as client:
            await client.leave()
        with trio.fail_after(5):
            await agent.wait_stopped()


async def test_connection_refused_is_a_clear_error() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with pytest.raises(AgentConnectionError, match="connection refused"):
        async with Client(f"127.0.0.1:{port}"):
            pass
    with pytest.raises(AgentConnectionError, match="no such file"):
        async with Client("unix:///nonexistent/agentrpc.sock"):
            pass


async def test_errors_in_the_body_are_not_wrapped_in_groups() -> None:
    async with running_agent("memory") as agent:
        with pytest.raises(KeyError):
            async with client_for(agent):
                raise KeyError("mine")
