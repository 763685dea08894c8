"""Clusters of whole agents over an in-process gossip network, driven through the RPC client
(trio's autojump clock makes the protocol's seconds instant)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio
from rpc_helpers import client_for, running_agent

from agentrpc.agent import Agent
from agentrpc.gossip.transport import MemoryGossipNetwork


async def statuses(agent: Agent, *, wan: bool = False) -> dict[str, str]:
    async with client_for(agent) as client:
        return {m.name: m.status for m in await client.members(wan=wan)}


async def wait_for_statuses(agent: Agent, expected: dict[str, str], *, wan: bool = False) -> float:
    """Poll (on the autojump clock) until the agent reports ``expected``; returns when."""
    while await statuses(agent, wan=wan) != expected:  # noqa: ASYNC110 - virtual time
        await trio.sleep(0.1)
    return trio.current_time()


@asynccontextmanager
async def agent_on(
    network: MemoryGossipNetwork, index: int, **settings: object
) -> AsyncIterator[Agent]:
    async with running_agent(
        "memory",
        gossip_network=network,
        node_name=f"node{index}",
        serf_lan_addr=f"127.0.0.{index}:8301",
        serf_wan_addr=f"127.0.0.{index}:8302",
        **settings,
    ) as agent:
        yield agent


async def test_five_agents_join_fail_force_leave_and_leave(autojump_clock: trio.abc.Clock) -> None:
    network = MemoryGossipNetwork()
    async with AsyncExitStack() as stack:
        agents = [await stack.enter_async_context(agent_on(network, i)) for i in range(1, 6)]
        async with client_for(agents[0]) as client:
            joined = await client.join([f"127.0.0.{i}:8301" for i in range(2, 6)])
            assert joined == 4
            assert await client.join([f"127.0.0.{i}:8302" for i in range(2, 6)], wan=True) == 4
        everyone = {f"node{i}": "alive" for i in range(1, 6)}
        with trio.fail_after(120):
            for agent in agents:
                await wait_for_statuses(agent, everyone)
            await wait_for_statuses(agents[4], {f"{n}.dc1": "alive" for n in everyone}, wan=True)

        # node5 dies without a word: the others mark it failed within the Lifeguard bound
        # (probe interval + 4 s suspicion minimum, stretched by confirmations up to 24 s).
        victim = agents.pop()
        died_at = trio.current_time()
        victim.shutdown()
        await victim.wait_stopped()
        failed = {**everyone, "node5": "failed"}
        with trio.fail_after(60):
            marked = [await wait_for_statuses(agent, failed) for agent in agents]
        assert max(marked) - died_at < 30

        wan_everyone = {f"{name}.dc1": "alive" for name in everyone}
        with trio.fail_after(120):
            await wait_for_statuses(agents[0], {**wan_everyone, "node5.dc1": "failed"}, wan=True)
        async with client_for(agents[0]) as client:
            await client.force_leave("node5")
        forced = {**everyone, "node5": "left"}
        with trio.fail_after(120):
            for agent in agents:
                await wait_for_statuses(agent, forced)
            # The bare name also reached the WAN pool, where the member is node5.dc1.
            await wait_for_statuses(agents[0], {**wan_everyone, "node5.dc1": "left"}, wan=True)

        # A graceful leave is "left" everywhere, never "failed".
        async with client_for(agents[3]) as client:
            await client.leave()
        await agents[3].wait_stopped()
        after_leave = {**forced, "node4": "left"}
        with trio.fail_after(120):
            for agent in agents[:3]:
                await wait_for_statuses(agent, after_leave)


async def test_a_restarted_node_rejoins_alive(autojump_clock: trio.abc.Clock) -> None:
    network = MemoryGossipNetwork()
    async with agent_on(network, 1) as first:
        async with agent_on(network, 2) as second:
            async with client_for(second) as client:
                assert await client.join(["127.0.0.1:8301"]) == 1
            with trio.fail_after(120):
                await wait_for_statuses(first, {"node1": "alive", "node2": "alive"})
        with trio.fail_after(60):
            await wait_for_statuses(first, {"node1": "alive", "node2": "failed"})
        async with agent_on(network, 2) as again:
            async with client_for(again) as client:
                assert await client.join(["127.0.0.1:8301"]) == 1
            with trio.fail_after(120):
                await wait_for_statuses(first, {"node1": "alive", "node2": "alive"})
                await wait_for_statuses(again, {"node1": "alive", "node2": "alive"})


async def test_client_agents_list_no_wan_but_ask_a_server(autojump_clock: trio.abc.Clock) -> None:
    network = MemoryGossipNetwork()
    async with agent_on(network, 1) as server, agent_on(network, 2, server=False) as client_agent:
        async with client_for(client_agent) as client:
            assert await client.join(["127.0.0.1:8301"]) == 1
            with trio.fail_after(120):
                await wait_for_statuses(client_agent, {"node1": "alive", "node2": "alive"})
            # The client agent has no WAN pool; it asks the server it learned from gossip.
            assert [m.name for m in await client.members_wan()] == ["node1.dc1"]
        stats = await _stats(server)
        assert stats["serf_lan"]["members"] == "2"
        assert stats["serf_wan"]["members"] == "1"


async def _stats(agent: Agent) -> dict[str, dict[str, str]]:
    async with client_for(agent) as client:
        return await client.stats()
