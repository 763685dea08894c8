"""Network coordinates end to end: every agent sends its LAN coordinate to a server (servers
in-process, a client through its server manager), the servers queue and flush them through
Raft, and ``Coordinate.ListNodes`` on any server (and the HTTP API's ``/v1/coordinate/*``,
driven by py-consul on the client) ends up with every node. Three real server agents (Raft on
loopback TCP) and one client agent, with Consul's test-style short periods."""

from __future__ import annotations

import itertools
import random
from contextlib import AsyncExitStack
from typing import Any

import consul
import pytest
import trio
import trio.testing
from rpc_helpers import client_for
from test_agent_raft import eventually, join_all, leaders, server, server_call

from agentrpc.agent import Agent
from agentrpc.coordinate_sender import (
    CoordinateSender,
    random_stagger,
    rate_scaled_interval,
    run_until,
)
from agentrpc.gossip.coordinate import Coordinate
from agentrpc.gossip.transport import MemoryGossipNetwork
from agentrpc.log_protocol import CaptureLog
from agentrpc.serverport.endpoints import RemoteError, RPCCallError

FAST = {"coordinate_update_period": 0.2, "sync_coordinate_interval_min": 0.2}
NODES = ["s1", "s2", "s3", "s4"]


async def listed_nodes(agent: Agent, *, stale: bool = False) -> list[str]:
    reply = await server_call(
        agent, "Coordinate.ListNodes", {"Datacenter": "dc1", "AllowStale": stale}
    )
    return [c["Node"] for c in reply["Coordinates"] or []]


async def blocking(fn: Any, *args: Any) -> Any:
    return await trio.to_thread.run_sync(lambda: fn(*args))


async def test_every_node_of_the_cluster_ends_up_in_coordinate_list_nodes() -> None:
    network = MemoryGossipNetwork()
    async with AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(server(network, i, bootstrap_expect=3, **FAST))
            for i in (1, 2, 3)
        ]
        await join_all(servers)
        for agent in servers[1:]:  # the WAN pool too (Consul 0.7 does not flood-join it)
            async with client_for(agent) as client:
                wan = str(servers[0].gossip_addresses["wan"])
                assert await client.join([wan], wan=True) == 1
        await eventually(lambda: len(leaders(servers)) == 1, "one leader of three")
        client_agent = await stack.enter_async_context(
            server(network, 4, server=False, http_addr="127.0.0.1:0", **FAST)
        )
        async with client_for(client_agent) as client:
            assert await client.join([str(servers[0].gossip_addresses["lan"])]) == 1
        leader = leaders(servers)[0]

        async def complete() -> bool:
            return await listed_nodes(leader) == NODES

        await eventually(complete, "a coordinate of every node in Coordinate.ListNodes")
        # Replicated: every server answers the same from its own store.
        for agent in servers:

            async def replicated(agent: Agent = agent) -> bool:
                return await listed_nodes(agent, stale=True) == NODES

            await eventually(replicated, f"{agent.config.node_name} to hold every coordinate")
        # The client's own update went through its server manager.
        assert client_agent.server_manager is not None
        reply = await server_call(leader, "Coordinate.ListNodes", {"Datacenter": "dc1"})
        coords = {c["Node"]: c["Coord"] for c in reply["Coordinates"]}
        assert all(len(c["Vec"]) == 8 for c in coords.values())

        # ListDatacenters: dc1's three servers, from the WAN pool, names without ".dc1".
        maps = await server_call(leader, "Coordinate.ListDatacenters", {})
        assert [m["Datacenter"] for m in maps] == ["dc1"]

        # Each server answers from its own WAN pool (never forwarded): wait for all of them.
        for agent in servers:

            async def wan_complete(agent: Agent = agent) -> bool:
                maps = await server_call(agent, "Coordinate.ListDatacenters", {})
                return [c["Node"] for c in maps[0]["Coordinates"] or []] == ["s1", "s2", "s3"]

            await eventually(wan_complete, f"{agent.config.node_name}'s WAN coordinates")

        # The HTTP API of the client answers through RPC, as py-consul reads it.
        http = client_agent.http_address
        assert http is not None
        c = consul.Consul(host=http.host, port=http.port)
        index, nodes = await blocking(c.coordinate.nodes)
        assert [n["Node"] for n in nodes] == NODES
        assert int(index) >= reply["Index"]
        assert list(nodes[0]) == ["Node", "Coord"]
        assert list(nodes[0]["Coord"]) == ["Vec", "Error", "Adjustment", "Height"]
        datacenters = await blocking(c.coordinate.datacenters)
        assert [d["Datacenter"] for d in datacenters] == ["dc1"]
        assert [n["Node"] for n in datacenters[0]["Coordinates"]] == ["s1", "s2", "s3"]


async def test_a_server_with_coordinates_disabled_refuses_updates() -> None:
    network = MemoryGossipNetwork()
    async with server(network, 5, disable_coordinates=True, **FAST) as agent:
        assert agent.raft is not None
        await eventually(agent.raft.facts.is_leader, "the lone server to lead")
        update = {
            "Datacenter": "dc1",
            "Node": "s5",
            "Coord": {"Adjustment": 0.0, "Error": 1.5, "Height": 1e-05, "Vec": [0.0] * 8},
        }
        with pytest.raises(RemoteError, match=r"Coordinate.Update: Coordinates are disabled$"):
            await server_call(agent, "Coordinate.Update", update)
        assert await listed_nodes(agent) == []


# ------------------------------------------------------------------ the sender alone


def test_the_interval_is_rate_scaled_with_a_floor() -> None:
    assert rate_scaled_interval(64.0, 15.0, 3) == 15.0
    assert rate_scaled_interval(64.0, 15.0, 960) == 15.0
    assert rate_scaled_interval(64.0, 15.0, 6400) == 100.0
    assert random_stagger(100.0, 0.25) == 25.0


class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


async def test_the_sender_sends_every_interval_and_logs_failures(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent: list[tuple[str, Any, float]] = []
    denied = RemoteError("Coordinate.Update", "Permission denied")
    answers: list[BaseException | None] = [None, denied, RPCCallError("No known Consul servers")]
    members = [5]
    current: list[Coordinate | None] = [None]
    three = trio.Event()

    async def call(method: str, args: Any) -> Any:
        await trio.lowlevel.checkpoint()
        sent.append((method, args, trio.current_time()))
        if len(sent) == 3:
            three.set()
        answer = answers.pop(0) if answers else None
        if answer is not None:
            raise answer
        return {}

    log = CaptureLog()
    sender = CoordinateSender(
        call,
        lambda: current[0],
        lambda: members[0],
        datacenter="dc1",
        node_name="n1",
        token="t",
        logger=log,
        rng=FixedRandom(0.5),
    )
    assert sender.interval() == 22.5  # 15 s, plus half of it
    members[0] = 6400
    assert sender.interval() == 150.0
    members[0] = 5
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_until, stop, sender.run)
        await trio.sleep(30)  # one round, skipped: no coordinate yet
        assert sent == []
        current[0] = Coordinate((0.5,) + (0.0,) * 7, 1.5, 0.0, 1e-05)
        with trio.fail_after(120):
            await three.wait()
        stop.set()
    assert [method for method, _, _ in sent] == ["Coordinate.Update"] * 3
    assert sent[0][1] == {
        "Coord": {"Adjustment": 0.0, "Error": 1.5, "Height": 1e-05, "Vec": [0.5] + [0.0] * 7},
        "Datacenter": "dc1",
        "Node": "n1",
        "Token": "t",
    }
    gaps = [b[2] - a[2] for a, b in itertools.pairwise(sent)]
    assert gaps == [22.5, 22.5]
    assert sender.sent == 1 and sender.failed == 2
    assert "coordinate update error: Permission denied" in log.text()
