"""Server agents on Raft: a lone server bootstraps and leads at once and keeps its writes in
``data_dir``; servers started with ``bootstrap_expect`` find each other through serf, bootstrap
one cluster, forward writes to the leader, hand leadership over when the leader leaves; two
servers in bootstrap mode refuse each other; a server joining an existing cluster is added as
a voter instead of bootstrapping anew.

Gossip runs over an in-process network; every server port (and so Raft, byte 1) is real
loopback TCP on the server's own 127.0.0.x address. Raft runs with ``raft_multiplier`` 1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from rpc_helpers import client_for, log_of, running_agent

from agentrpc.agent import Agent
from agentrpc.gossip.transport import MemoryGossipNetwork
from agentrpc.serverport.endpoints import RemoteError, call_on_stream

BOUND = 30.0
"""Seconds any one wait of these tests may take (elections are 1-2 s at multiplier 1)."""


async def server_call(agent: Agent, method: str, args: Any) -> Any:
    address = agent.server_address
    assert address is not None
    stream = await trio.open_tcp_stream(address.host, address.port)
    try:
        await stream.send_all(b"\x00")
        return await call_on_stream(stream, method, args, seq=1)
    finally:
        await stream.aclose()


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Wait for a condition of real agents (Raft and gossip run on real time): bounded."""
    with trio.move_on_after(BOUND) as scope:
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await trio.sleep(0.05)
    assert not scope.cancelled_caught, f"timed out waiting for {what}"


def kv_set(key: str, value: bytes) -> dict[str, Any]:
    return {"Datacenter": "dc1", "Op": "set", "DirEnt": {"Key": key, "Value": value}}


async def kv_get(agent: Agent, key: str, *, stale: bool = False) -> bytes | None:
    reply = await server_call(
        agent, "KVS.Get", {"Datacenter": "dc1", "Key": key, "AllowStale": stale}
    )
    entries = reply.get("Entries") or []
    return entries[0]["Value"] if entries else None


def leaders(agents: list[Agent]) -> list[Agent]:
    return [a for a in agents if a.raft is not None and a.raft.facts.is_leader()]


@asynccontextmanager
async def server(network: MemoryGossipNetwork, index: int, **settings: Any) -> AsyncIterator[Agent]:
    host = f"127.0.0.{index}"
    async with running_agent(
        "memory",
        gossip_network=network,
        node_name=f"s{index}",
        serf_lan_addr=f"{host}:8301",
        serf_wan_addr=f"{host}:8302",
        server_addr=f"{host}:0",
        raft_multiplier=1,
        log_level="DEBUG",
        **settings,
    ) as agent:
        yield agent


async def join_all(agents: list[Agent]) -> None:
    first = agents[0]
    for agent in agents[1:]:
        async with client_for(agent) as client:
            assert await client.join([f"{first.gossip_addresses['lan']}"]) == 1


async def test_a_lone_server_leads_at_once_and_keeps_its_writes_in_data_dir(
    tmp_path: Path,
) -> None:
    network = MemoryGossipNetwork()
    data_dir = str(tmp_path / "s1")
    async with server(network, 1, data_dir=data_dir) as agent:
        assert agent.raft is not None
        await eventually(agent.raft.facts.is_leader, "the lone server to lead")
        assert await server_call(agent, "Status.Leader", {}) == agent.raft_address()
        assert await server_call(agent, "Status.Peers", {}) == [agent.raft_address()]
        await server_call(agent, "KVS.Apply", kv_set("kept", b"on disk"))
        async with client_for(agent) as client:
            stats = await client.stats()
        assert stats["raft"]["state"] == "Leader"
        assert stats["raft"]["num_peers"] == "0"
        assert stats["consul"]["leader"] == "true" and stats["consul"]["bootstrap"] == "true"
        node_id = agent.node_id
        assert agent.own_member(False).tags["id"] == node_id
        assert agent.own_member(False).tags["raft_vsn"] == "3"
    assert (tmp_path / "s1" / "raft" / "raft.db").exists()
    assert (tmp_path / "s1" / "node-id").read_text().strip() == node_id

    # Restarted on the same data_dir: same ID, the old log, no second bootstrap.
    async with server(network, 1, data_dir=data_dir) as again:
        assert again.node_id == node_id
        assert again.raft is not None
        await eventually(again.raft.facts.is_leader, "the restarted server to lead")
        assert await kv_get(again, "kept") == b"on disk"
        assert not again.raft.bootstrapped
        assert "bootstrap only works on new clusters" not in log_of(again)


async def test_three_servers_bootstrap_expect_forward_writes_and_hand_over_on_leave() -> None:
    network = MemoryGossipNetwork()
    async with AsyncExitStack() as stack:
        agents = [
            await stack.enter_async_context(server(network, i, bootstrap_expect=3))
            for i in (1, 2, 3)
        ]
        assert all(a.raft is not None and not a.raft.bootstrapped for a in agents)
        await join_all(agents)
        await eventually(lambda: len(leaders(agents)) == 1, "one leader of three")
        addresses = sorted(a.raft_address() for a in agents)
        for agent in agents:
            assert sorted(await server_call(agent, "Status.Peers", {})) == addresses
        leader = leaders(agents)[0]
        for agent in agents:
            assert await server_call(agent, "Status.Leader", {}) == leader.raft_address()

        # A write sent to a follower is forwarded to the leader; every server applies it.
        follower = next(a for a in agents if a is not leader)
        await server_call(follower, "KVS.Apply", kv_set("k", b"v1"))
        assert await kv_get(leader, "k") == b"v1"
        for agent in agents:

            async def applied(agent: Agent = agent) -> bool:
                return await kv_get(agent, "k", stale=True) == b"v1"

            await eventually(applied, f"{agent.config.node_name} to apply the write")
        assert follower.catalog is not None and follower.catalog.forwarder.forwarded >= 1

        # The leader reconciles serf into the catalog: three nodes with the consul service.
        async def catalog_complete() -> bool:
            reply = await server_call(
                leader, "Catalog.ServiceNodes", {"Datacenter": "dc1", "ServiceName": "consul"}
            )
            return sorted(n["Node"] for n in reply["ServiceNodes"] or []) == ["s1", "s2", "s3"]

        await eventually(catalog_complete, "the consul service on the three servers")

        # The leader leaves: it hands leadership over, the new leader removes it from Raft.
        async with client_for(leader) as client:
            await client.leave()
        rest = [a for a in agents if a is not leader]
        await eventually(lambda: len(leaders(rest)) == 1, "a new leader among the other two")
        assert "leadership transferred before leaving" in log_of(leader)

        async def leaver_removed() -> bool:
            peers = await server_call(rest[0], "Status.Peers", {})
            return sorted(peers) == sorted(a.raft_address() for a in rest)

        await eventually(leaver_removed, "the leaver's removal from the Raft configuration")
        await server_call(rest[0], "KVS.Apply", kv_set("k", b"v2"))
        assert await kv_get(rest[1], "k") == b"v2"


async def test_two_servers_in_bootstrap_mode_refuse_each_other() -> None:
    network = MemoryGossipNetwork()
    async with server(network, 1) as first, server(network, 2) as second:
        agents = [first, second]
        await eventually(lambda: len(leaders(agents)) == 2, "each lone server to lead")
        await join_all(agents)
        await eventually(
            lambda: all("Two nodes are in bootstrap mode" in log_of(a) for a in agents),
            "both leaders to refuse the other",
        )
        for agent in agents:
            assert await server_call(agent, "Status.Peers", {}) == [agent.raft_address()]


async def test_a_server_joining_an_existing_cluster_is_added_not_bootstrapped() -> None:
    network = MemoryGossipNetwork()
    async with AsyncExitStack() as stack:
        agents = [
            await stack.enter_async_context(server(network, i, bootstrap_expect=3))
            for i in (1, 2, 3)
        ]
        await join_all(agents)
        await eventually(lambda: len(leaders(agents)) == 1, "one leader of three")
        await server_call(agents[0], "KVS.Apply", kv_set("before", b"x"))

        late = await stack.enter_async_context(server(network, 4, bootstrap_expect=3))
        await join_all([agents[0], late])
        assert late.raft is not None

        async def four_peers() -> bool:
            peers = await server_call(leaders(agents)[0], "Status.Peers", {})
            return len(peers) == 4

        await eventually(four_peers, "the late server to be added as a voter")
        await eventually(
            lambda: (
                "Existing Raft peers reported by server" in log_of(late)
                or (
                    late.raft is not None
                    and not late.raft.bootstrapped
                    and late.raft.facts.leader() != ""
                )
            ),
            "the late server to follow the leader",
        )
        assert late.raft is not None and not late.raft.bootstrapped

        async def caught_up() -> bool:
            return await kv_get(late, "before", stale=True) == b"x"

        await eventually(caught_up, "the late server to catch up")


async def test_a_write_without_a_leader_fails_after_the_hold_time() -> None:
    network = MemoryGossipNetwork()
    async with server(network, 1, bootstrap_expect=3) as alone:
        # Waiting for two more servers: no cluster, so no leader.
        with trio.fail_after(BOUND):
            try:
                await server_call(alone, "KVS.Apply", kv_set("k", b"v"))
            except RemoteError as exc:
                assert exc.error == "No cluster leader"
            else:
                raise AssertionError("a write without a leader succeeded")
