"""The catalog on a lone server agent: its server port (real loopback TCP, byte 0) answers
``KVS.*`` and ``Catalog.*``, and the LAN pool's member events reach the catalog, which lists a
client agent once it joins and marks it critical once it fails."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from rpc_helpers import client_for, running_agent

from agentrpc.agent import Agent, AgentStartError
from agentrpc.config import ConfigError, load_config
from agentrpc.gossip.transport import MemoryGossipNetwork
from agentrpc.serverport.endpoints import call_on_stream


async def server_call(agent: Agent, method: str, args: Any, seq: int = 1) -> Any:
    address = agent.server_address
    assert address is not None
    stream = await trio.open_tcp_stream(address.host, address.port)
    try:
        await stream.send_all(b"\x00")  # msgpack-rpc
        return await call_on_stream(stream, method, args, seq=seq)
    finally:
        await stream.aclose()


async def nodes(agent: Agent) -> dict[str, str]:
    reply = await server_call(agent, "Catalog.ListNodes", {"Datacenter": "dc1"})
    return {node["Node"]: node["Address"] for node in reply["Nodes"] or []}


async def test_a_lone_server_answers_kvs_and_catalog_and_follows_member_events() -> None:
    network = MemoryGossipNetwork()
    async with running_agent(
        "memory", gossip_network=network, node_name="server1", serf_lan_addr="127.0.0.1:8301"
    ) as server:
        assert server.catalog is not None
        await server_call(
            server,
            "KVS.Apply",
            {"Datacenter": "dc1", "Op": "set", "DirEnt": {"Key": "k", "Value": b"v"}},
        )
        got = await server_call(server, "KVS.Get", {"Datacenter": "dc1", "Key": "k"}, seq=2)
        assert got["Entries"][0]["Value"] == b"v"
        with trio.fail_after(20):
            while "server1" not in await nodes(server):  # noqa: ASYNC110 - reconcile, real time
                await trio.sleep(0.05)

        async with running_agent(
            "memory",
            gossip_network=network,
            node_name="client1",
            server=False,
            serf_lan_addr="127.0.0.2:8301",
        ) as client_agent:
            assert client_agent.catalog is None  # only servers hold the catalog
            async with client_for(client_agent) as client:
                assert await client.join(["127.0.0.1:8301"]) == 1
            with trio.fail_after(20):
                while (await nodes(server)).get("client1") != "127.0.0.2":  # noqa: ASYNC110
                    await trio.sleep(0.05)


async def test_an_agent_registers_its_lan_and_wan_tagged_addresses() -> None:
    """Consul 0.7's ``TaggedAddresses``: ``lan`` and ``wan`` (a server's WAN advertise
    address; a client, with no WAN pool, gives its LAN one), which DNS's
    ``translate_wan_addrs`` answers with for another datacenter's nodes."""
    network = MemoryGossipNetwork()
    async with running_agent(
        "memory",
        gossip_network=network,
        node_name="server1",
        serf_lan_addr="127.0.0.1:8301",
        serf_wan_addr="127.0.0.3:8302",
        translate_wan_addrs=True,
        node_meta={"rack": "r1"},
    ) as server:
        assert server._dns_settings.translate_wan_addrs  # the top-level key reaches DNS

        async def node_record(node: str) -> Any:
            reply = await server_call(
                server, "Catalog.NodeServices", {"Datacenter": "dc1", "Node": node}
            )
            found = reply["NodeServices"]
            return None if found is None else found["Node"]

        async def tagged(node: str) -> Any:
            record = await node_record(node)
            return None if record is None else record["TaggedAddresses"]

        with trio.fail_after(20):
            while await tagged("server1") != {"lan": "127.0.0.1", "wan": "127.0.0.3"}:  # noqa: ASYNC110 - anti-entropy, real time
                await trio.sleep(0.05)
        # Consul 0.8's node ID (the server's Raft ID too) and node_meta, synced with it.
        record = await node_record("server1")
        assert (record["ID"], record["Meta"]) == (server.node_id, {"rack": "r1"})
        assert len(server.node_id) == 36
        async with running_agent(
            "memory",
            gossip_network=network,
            node_name="client1",
            server=False,
            serf_lan_addr="127.0.0.2:8301",
        ) as client_agent:
            async with client_for(client_agent) as client:
                assert await client.join(["127.0.0.1:8301"]) == 1
            with trio.fail_after(10):
                # Within the 15 s retry of the failed first sync: the server's arrival
                # triggers it (Consul's ServerUp).
                while await tagged("client1") != {"lan": "127.0.0.2", "wan": "127.0.0.2"}:  # noqa: ASYNC110 - anti-entropy, real time
                    await trio.sleep(0.05)


async def test_node_id_and_node_meta_are_checked_at_start() -> None:
    with pytest.raises(ConfigError, match="node_id: 'n1' is not a UUID"):
        load_config(overrides={"node_id": "n1"})
    with pytest.raises(AgentStartError, match=r"node_meta: .*consul-"):
        Agent(load_config(overrides={"node_meta": {"consul-x": "1"}}))
    node_id = "8e3f1b2a-0c4d-4e5f-9a6b-7c8d9e0f1a2b"
    async with running_agent("memory", node_id=node_id) as agent:
        assert agent.node_id == node_id
        assert agent.http_agent is not None
        assert agent.http_agent.info.node_id == node_id  # /v1/agent/self's Config.NodeID
