"""Consul 0.7's keyring commands through the agent RPC, on clusters of whole agents over the
in-process gossip network (autojump clock): the reply's shape (``Info``, ``Keys``,
``Messages`` entries naming datacenter and pool, WAN first), a rotation that ends with every
node of both pools on the new key alone, the keyring files under ``data_dir`` (a restart keeps
the rotated key, in place of ``encrypt``), a client agent's refusal, and a lost name conflict
that stops the agent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from rpc_helpers import RawConnection, client_for, running_agent

from agentrpc.agent import Agent, AgentStartError
from agentrpc.client import Client, KeyringResult
from agentrpc.client_errors import RPCError
from agentrpc.gossip.transport import MemoryGossipNetwork

KEY1 = "cg8StVXbQJ0gPvMd9o7yrg=="
KEY2 = "4le2xwSQgNTAB6Ucyh6Vjw=="


@asynccontextmanager
async def agent_on(
    network: MemoryGossipNetwork, index: int, **settings: Any
) -> AsyncIterator[Agent]:
    settings.setdefault("node_name", f"node{index}")
    async with running_agent(
        "memory",
        gossip_network=network,
        serf_lan_addr=f"127.0.0.{index}:8301",
        serf_wan_addr=f"127.0.0.{index}:8302",
        **settings,
    ) as agent:
        yield agent


async def join_all(agents: list[Agent]) -> None:
    count = len(agents)
    async with client_for(agents[0]) as client:
        others = range(2, count + 1)
        assert await client.join([f"127.0.0.{i}:8301" for i in others]) == count - 1
        if all(agent.wan is not None for agent in agents):
            assert await client.join([f"127.0.0.{i}:8302" for i in others], wan=True) == count - 1
    with trio.fail_after(60):
        for agent in agents:
            while len(agent.lan.members()) < count:  # noqa: ASYNC110 - virtual time
                await trio.sleep(0.1)


def keys_by_pool(result: KeyringResult) -> dict[str, dict[str, str]]:
    return {
        pool: {e.key: f"{e.count}/{e.num_nodes}" for e in result.keys if e.pool == pool}
        for pool in ("LAN", "WAN")
    }


async def test_list_install_use_remove_rotate_both_pools_and_persist(tmp_path: Path) -> None:
    """On the real clock: every key change is written to disk (in a worker thread) before
    its node answers, which a virtual clock would jump past."""
    network = MemoryGossipNetwork()
    async with AsyncExitStack() as stack:
        agents = [
            await stack.enter_async_context(
                agent_on(network, i, encrypt=KEY1, data_dir=str(tmp_path / f"n{i}"))
            )
            for i in (1, 2, 3)
        ]
        await join_all(agents)
        async with client_for(agents[0]) as client:
            listed = await client.list_keys()
            assert [(i.pool, i.datacenter, i.num_nodes, i.error) for i in listed.info] == [
                ("WAN", "dc1", 3, ""),
                ("LAN", "dc1", 3, ""),
            ]
            assert keys_by_pool(listed) == {"LAN": {KEY1: "3/3"}, "WAN": {KEY1: "3/3"}}
            assert listed.messages == []

            for step in (client.install_key(KEY2), client.use_key(KEY2), client.remove_key(KEY1)):
                result = await step
                assert result.failed == [], result
                assert [info.pool for info in result.info] == ["WAN", "LAN"]
            assert keys_by_pool(await client.list_keys()) == {
                "LAN": {KEY2: "3/3"},
                "WAN": {KEY2: "3/3"},
            }
            # The primary key cannot be removed: every node says why, in that pool's entries.
            refused = await client.remove_key(KEY2)
            assert [(i.pool, i.error) for i in refused.failed] == [
                ("WAN", "3/3 nodes reported failure"),
                ("LAN", "3/3 nodes reported failure"),
            ]
            assert {(m.pool, m.node) for m in refused.messages} == {
                ("LAN", f"node{i}") for i in (1, 2, 3)
            } | {("WAN", f"node{i}.dc1") for i in (1, 2, 3)}
            bad = await client.install_key("not base64!")
            assert {i.error for i in bad.failed} == {"illegal base64 data at input byte 3"}
        # Every node persisted the rotated keyring, both pools, Consul's file names.
        for index in (1, 2, 3):
            for name in ("local.keyring", "remote.keyring"):
                saved = json.loads((tmp_path / f"n{index}" / "serf" / name).read_text())
                assert saved == [KEY2], (index, name)


async def test_a_restart_keeps_the_rotated_key_in_place_of_encrypt(tmp_path: Path) -> None:
    network = MemoryGossipNetwork()
    data = str(tmp_path / "n1")
    async with agent_on(network, 1, encrypt=KEY1, data_dir=data) as agent:
        # A missing file is created from encrypt, as Consul does.
        assert json.loads((tmp_path / "n1" / "serf" / "local.keyring").read_text()) == [KEY1]
        async with client_for(agent) as client:
            await client.install_key(KEY2)
            await client.use_key(KEY2)
            await client.remove_key(KEY1)
    async with agent_on(network, 1, encrypt=KEY1, data_dir=data) as again:
        async with client_for(again) as client:
            assert keys_by_pool(await client.list_keys()) == {
                "LAN": {KEY2: "1/1"},
                "WAN": {KEY2: "1/1"},
            }
        # And it gossips with that key: a node that only knows KEY2 joins it.
        async with agent_on(network, 2, encrypt=KEY2) as other, client_for(other) as client:
            assert await client.join(["127.0.0.1:8301"]) == 1


async def test_an_unreadable_keyring_file_stops_the_start(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    (tmp_path / "serf").mkdir()
    (tmp_path / "serf" / "local.keyring").write_text("[not json")
    with pytest.RaisesGroup(
        pytest.RaisesExc(AgentStartError, match=r"serf LAN keyring: keyring file .*local.keyring"),
        flatten_subgroups=True,
    ):
        async with agent_on(MemoryGossipNetwork(), 1, data_dir=str(tmp_path)):
            pass


async def test_the_reply_shape_byte_for_byte_fields_and_a_client_refusal(
    autojump_clock: trio.abc.Clock,
) -> None:
    network = MemoryGossipNetwork()
    async with (
        agent_on(network, 1, encrypt=KEY1) as server,
        agent_on(network, 2, encrypt=KEY1, server=False) as client_agent,
    ):
        connection = await RawConnection.open(server)
        await connection.handshake()
        reply = await connection.call("list-keys", reply_body=True)
        assert reply.error == ""
        assert reply.body == {
            "Info": [
                {"Datacenter": "dc1", "Error": "", "NumNodes": 1, "Pool": "WAN"},
                {"Datacenter": "dc1", "Error": "", "NumNodes": 1, "Pool": "LAN"},
            ],
            "Keys": [
                {"Count": 1, "Datacenter": "dc1", "Key": KEY1, "Pool": "WAN"},
                {"Count": 1, "Datacenter": "dc1", "Key": KEY1, "Pool": "LAN"},
            ],
            "Messages": None,
        }
        # go-msgpack's field order (sorted), as Consul's reply.
        assert list(reply.body) == ["Info", "Keys", "Messages"]
        assert list(reply.body["Info"][0]) == ["Datacenter", "Error", "NumNodes", "Pool"]
        installed = await connection.call("install-key", {"Key": KEY2}, reply_body=True)
        assert installed.body["Keys"] is None and installed.error == ""

        async with client_for(client_agent) as client:
            with pytest.raises(RPCError) as info:
                await client.list_keys()
            assert info.value.error == "keyring operations must run against a server node"
        raw_client = await RawConnection.open(client_agent)
        await raw_client.handshake()
        refused = await raw_client.call("use-key", {"Key": KEY2}, reply_body=True)
        assert refused.error == "keyring operations must run against a server node"
        assert refused.body == {"Info": None, "Keys": None, "Messages": None}


async def test_losing_a_name_conflict_stops_the_agent(autojump_clock: trio.abc.Clock) -> None:
    network = MemoryGossipNetwork()
    async with AsyncExitStack() as stack:
        agents = [await stack.enter_async_context(agent_on(network, i)) for i in (1, 2, 3)]
        await join_all(agents)
        impostor = await stack.enter_async_context(agent_on(network, 9, node_name="node1"))
        async with Client(stream=await impostor.connect()) as client:
            await client.join(["127.0.0.2:8301"])
        with trio.fail_after(60):
            await impostor.wait_stopped()
        assert "lost a name conflict" in impostor.stop_error
        assert "minority in name conflict resolution, quitting [0 / 2]" in impostor.stop_error
        # The original keeps running, its name and address everywhere.
        assert not agents[0].stop_error
        lan = {m.name: m for m in agents[1].lan.members()}
        assert str(lan["node1"].addr) == "127.0.0.1"
