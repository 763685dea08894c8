"""A client agent routes its server RPCs through its server manager: it learns the servers of
its datacenter from LAN gossip, sends every call to the front one, fails over when that one
dies (a read moves on to the next server within the same call; the dead one goes to the back
and leaves the list when serf declares it failed), and says ``No known Consul servers`` when it
knows none. Three real server agents (Raft on loopback TCP) and one client agent."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
from rpc_helpers import client_for, log_of
from test_agent_raft import eventually, join_all, kv_set, leaders, server

from agentrpc.gossip.transport import MemoryGossipNetwork
from agentrpc.serverport.endpoints import RPCCallError


async def test_a_client_agent_with_no_server_says_so() -> None:
    network = MemoryGossipNetwork()
    async with server(network, 9, server=False) as client_agent:
        assert client_agent.server_port is None
        manager = client_agent.server_manager
        assert manager is not None
        with pytest.raises(RPCCallError, match=r"^No known Consul servers$"):
            await manager.call("Status.Leader", {})
        assert await manager.rebalance() is False


async def test_the_client_follows_its_servers_and_fails_over() -> None:
    network = MemoryGossipNetwork()
    async with AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(server(network, i, bootstrap_expect=3))
            for i in (1, 2, 3)
        ]
        await join_all(servers)
        await eventually(lambda: len(leaders(servers)) == 1, "one leader of three")
        client_agent = await stack.enter_async_context(server(network, 4, server=False))
        async with client_for(client_agent) as client:
            assert await client.join([str(servers[0].gossip_addresses["lan"])]) == 1
        manager = client_agent.server_manager
        assert manager is not None
        await eventually(lambda: len(manager.servers) == 3, "the client to learn 3 servers")
        addresses = {s.raft_address() for s in servers}
        assert {s.address for s in manager.servers.servers} == addresses
        async with client_for(client_agent) as client:
            stats = await client.stats()
        assert stats["consul"] == {"server": "false", "known_servers": "3"}
        assert "raft" not in stats

        # Writes and reads go to the front server, which forwards to the leader.
        leader_address = leaders(servers)[0].raft_address()
        assert await manager.call("Status.Leader", {}) == leader_address
        await manager.call("KVS.Apply", kv_set("routed", b"through the client"))
        reply = await manager.call("KVS.Get", {"Datacenter": "dc1", "Key": "routed"})
        assert reply["Entries"][0]["Value"] == b"through the client"

        # A rebalance pings the new front server and keeps every server.
        assert await manager.rebalance() is True
        assert {s.address for s in manager.servers.servers} == addresses

        # The front server dies: the next read fails over within the same call.
        front = manager.servers.first()
        assert front is not None
        victim = next(s for s in servers if s.raft_address() == front.address)
        victim_info = front
        victim.shutdown()
        await victim.wait_stopped()
        survivors = [s for s in servers if s is not victim]
        await eventually(lambda: len(leaders(survivors)) == 1, "a leader among the survivors")
        reply = await manager.call("KVS.Get", {"Datacenter": "dc1", "Key": "routed"})
        assert reply["Entries"][0]["Value"] == b"through the client"
        first = manager.servers.first()
        assert first is not None and first.address != victim.raft_address()
        # A write whose connection cannot even be set up moves on too (nothing was sent).
        listed = manager.servers
        listed.sync([*listed.servers, victim_info])
        while listed.first() != victim_info:  # bounded: one rotation per entry
            current = listed.first()
            assert current is not None
            listed.failed(current)
        await manager.call("KVS.Apply", kv_set("after", b"the failover"))
        assert listed.first() != victim_info and len(listed) == 3
        reply = await manager.call("KVS.Get", {"Datacenter": "dc1", "Key": "after"})
        assert reply["Entries"][0]["Value"] == b"the failover"
        assert f"consul: RPC failed to server {victim.raft_address()}" in log_of(client_agent)
        # And once serf declares it failed, it leaves the list.
        await eventually(lambda: len(manager.servers) == 2, "the dead server to leave the list")
        assert f"consul: removing server {victim.config.node_name}" in log_of(client_agent)
