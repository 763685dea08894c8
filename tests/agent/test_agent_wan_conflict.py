"""A name conflict on the WAN pool, between whole server agents over the in-process gossip
network (autojump clock): a second server named ``node1`` in ``dc1``, on a LAN of its own,
joins the WAN pool of dc1 and dc2, where ``node1.dc1`` already lives. Serf's resolution runs
on the WAN pool as on the LAN: the newcomer asks ``_serf_conflict``, finds itself in the
minority and its agent stops, saying the WAN pool lost the conflict; the original keeps
running, its address in every WAN member list."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import trio
from rpc_helpers import client_for, running_agent

from agentrpc.agent import Agent
from agentrpc.gossip.transport import MemoryGossipNetwork


@asynccontextmanager
async def server_on(
    network: MemoryGossipNetwork, index: int, datacenter: str, **settings: Any
) -> AsyncIterator[Agent]:
    settings.setdefault("node_name", f"node{index}")
    async with running_agent(
        "memory",
        gossip_network=network,
        datacenter=datacenter,
        serf_lan_addr=f"127.0.0.{index}:8301",
        serf_wan_addr=f"127.0.0.{index}:8302",
        **settings,
    ) as agent:
        yield agent


async def wait_for(predicate: Any, what: str, seconds: float = 60) -> None:
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110 - virtual time
            await trio.sleep(0.1)
    assert predicate(), what


def wan_names(agent: Agent) -> dict[str, str]:
    assert agent.wan is not None
    return {m.name: str(m.addr) for m in agent.wan.members() if m.status == "alive"}


async def test_a_same_named_server_joining_the_wan_loses_and_stops(
    autojump_clock: trio.abc.Clock,
) -> None:
    network = MemoryGossipNetwork()
    async with AsyncExitStack() as stack:
        original = await stack.enter_async_context(server_on(network, 1, "dc1"))
        dc2 = [await stack.enter_async_context(server_on(network, i, "dc2")) for i in (2, 3)]
        async with client_for(dc2[0]) as client:
            assert await client.join(["127.0.0.3:8301"]) == 1
            assert await client.join(["127.0.0.1:8302", "127.0.0.3:8302"], wan=True) == 2
        servers = [original, *dc2]
        expected = {"node1.dc1": "127.0.0.1", "node2.dc2": "127.0.0.2", "node3.dc2": "127.0.0.3"}
        await wait_for(
            lambda: all(wan_names(agent) == expected for agent in servers), "a WAN pool of three"
        )

        # Same node name, same datacenter, its own LAN (nobody joins it): only the WAN meets it.
        impostor = await stack.enter_async_context(server_on(network, 9, "dc1", node_name="node1"))
        async with client_for(impostor) as client:
            assert await client.join(["127.0.0.2:8302"], wan=True) == 1
        with trio.fail_after(60):
            await impostor.wait_stopped()
        assert "the WAN pool lost a name conflict" in impostor.stop_error, impostor.stop_error
        assert "minority in name conflict resolution, quitting" in impostor.stop_error
        # Its LAN pool saw no conflict: it is the WAN's.
        assert "LAN pool" not in impostor.stop_error

        # The original keeps running, and every WAN member still has node1.dc1 at its address.
        for agent in servers:
            assert not agent.stop_error, agent.stop_error
        await wait_for(
            lambda: all(wan_names(agent).get("node1.dc1") == "127.0.0.1" for agent in servers),
            "node1.dc1 at the original's address everywhere",
        )
        assert original.lan is not None
        assert [m.name for m in original.lan.members()] == ["node1"]
