"""The catalog on a lone server agent: its server port (real loopback TCP, byte 0) answers
``KVS.*`` and ``Catalog.*``, and the LAN pool's member events reach the catalog, which lists a
client agent once it joins and marks it critical once it fails."""

from __future__ import annotations

from typing import Any

import trio
from rpc_helpers import client_for, running_agent

from agentrpc.agent import Agent
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
