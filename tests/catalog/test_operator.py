"""Consul's ``Operator.Raft*`` endpoints: the configuration of a three-server cluster with the
servers' serf names, removal by address and by ID, the reference's errors, forwarding from a
follower to the leader (and to another datacenter), a stale read served by a follower.

First over the in-memory transport (three servers' endpoints behind server ports that do not
listen, their Raft a fake sharing one configuration); then three real server agents on
127.0.0.x with Raft on byte 1 (``raft_multiplier`` 1).
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from catalog_helpers import assert_go_key_order, in_process
from rpc_helpers import client_for, log_of, running_agent

from agentrpc.agent import Agent
from agentrpc.catalog.constants import ERR_NO_DC_PATH, ERR_NO_LEADER
from agentrpc.catalog.operator import (
    RAFT_GET_CONFIGURATION,
    RAFT_REMOVE_PEER_BY_ADDRESS,
    RAFT_REMOVE_PEER_BY_ID,
    OperatorEndpoints,
    install_operator,
)
from agentrpc.gossip.transport import MemoryGossipNetwork
from agentrpc.log_protocol import CaptureLog
from agentrpc.protocol.bodies import Member
from agentrpc.raft.errors import RaftError
from agentrpc.serverport.endpoints import EndpointError, Endpoints, RemoteError, call_on_stream
from agentrpc.serverport.server import ServerPort

DC = "dc1"
IDS = {
    "s1": "8b4a6f5e-0000-4000-8000-000000000001",
    "s2": "8b4a6f5e-0000-4000-8000-000000000002",
    "s3": "8b4a6f5e-0000-4000-8000-000000000003",
}


def server_member(name: str, host: str, *, dc: str = DC, status: str = "alive") -> Member:
    tags = {
        "role": "consul",
        "dc": dc,
        "port": "8300",
        "vsn": "2",
        "raft_vsn": "3",
        "id": IDS.get(name, name),
    }
    return Member(name, ipaddress.ip_address(host), 8301, tags, status)


@dataclass
class SharedRaft:
    """The cluster's one configuration, as every server's Raft would report it."""

    servers: list[dict[str, Any]]
    index: int = 7


@dataclass
class FakeRaft:
    """One server's Raft: reads the shared configuration; removes from it when asked."""

    shared: SharedRaft
    reads: int = 0
    removals: list[tuple[str, str]] = field(default_factory=list)
    refuse: str = ""

    def configuration(self) -> list[dict[str, Any]]:
        self.reads += 1
        return [dict(server) for server in self.shared.servers]

    def configuration_index(self) -> int:
        return self.shared.index

    async def remove_peer(self, *, address: str = "", server_id: str = "") -> None:
        await trio.lowlevel.checkpoint()
        if self.refuse:
            raise RaftError(self.refuse)
        self.removals.append((address, server_id))
        self.shared.servers = [
            s
            for s in self.shared.servers
            if not (s["Address"] == address if address else s["ID"] == server_id)
        ]
        self.shared.index += 1


class Facts:
    """ConsensusFacts of one server: whether it leads, who does."""

    def __init__(self, leading: bool, leader: str) -> None:
        self.leading = leading
        self.leader_address = leader

    def is_leader(self) -> bool:
        return self.leading

    def leader(self) -> str:
        return self.leader_address

    def last_contact(self) -> float | None:
        return trio.current_time()

    def peers(self) -> list[str]:
        return []

    async def verify_leader(self) -> None:
        await trio.lowlevel.checkpoint()


class PortForwarder:
    """Forwarding through the other servers' (not listening) server ports."""

    def __init__(self) -> None:
        self.leader: ServerPort | None = None
        self.datacenters_: dict[str, ServerPort] = {}
        self.forwarded: list[str] = []

    async def _call(self, port: ServerPort, method: str, body: Any) -> Any:
        self.forwarded.append(method)
        try:
            return await port.call_local(method, body)
        except RemoteError as exc:
            raise EndpointError(exc.error) from None

    async def forward_leader(self, method: str, body: Any) -> Any:
        if self.leader is None:
            await trio.lowlevel.checkpoint()
            raise EndpointError(ERR_NO_LEADER)
        return await self._call(self.leader, method, body)

    async def forward_datacenter(self, datacenter: str, method: str, body: Any) -> Any:
        port = self.datacenters_.get(datacenter)
        if port is None:
            await trio.lowlevel.checkpoint()
            raise EndpointError(ERR_NO_DC_PATH)
        return await self._call(port, method, body)

    def datacenters(self) -> list[str]:
        return [DC, *sorted(self.datacenters_)]


@dataclass
class Node:
    name: str
    address: str
    raft: FakeRaft
    facts: Facts
    forwarder: PortForwarder
    port: ServerPort
    handlers: OperatorEndpoints

    async def call(self, method: str, args: Any) -> Any:
        return await self.port.call_local(method, args)


@dataclass
class Cluster:
    nodes: list[Node]
    shared: SharedRaft
    members: list[Member]
    log: CaptureLog

    @property
    def leader(self) -> Node:
        return self.nodes[0]

    @property
    def follower(self) -> Node:
        return self.nodes[1]


def three_servers(*, datacenter: str = DC, extra_servers: int = 0) -> Cluster:
    """s1 (the leader), s2 and s3 at 10.0.0.1-3:8300, all three in serf and in Raft; with
    ``extra_servers``, Raft also holds servers serf does not know (10.0.0.9x)."""
    hosts = {"s1": "10.0.0.1", "s2": "10.0.0.2", "s3": "10.0.0.3"}
    servers = [
        {"ID": IDS[name], "Address": f"{host}:8300", "Voter": True, "Leader": False}
        for name, host in hosts.items()
    ]
    servers += [
        {"ID": f"ghost-{n}", "Address": f"10.0.0.9{n}:8300", "Voter": False, "Leader": False}
        for n in range(extra_servers)
    ]
    shared = SharedRaft(servers)
    members = [server_member(name, host, dc=datacenter) for name, host in hosts.items()]
    members.append(Member("client-1", ipaddress.ip_address("10.0.0.50"), 8301, {"role": "node"}))
    log = CaptureLog()
    leader_address = "10.0.0.1:8300"
    nodes = []
    for name, host in hosts.items():
        endpoints = Endpoints()
        raft = FakeRaft(shared)
        facts = Facts(name == "s1", leader_address)
        forwarder = PortForwarder()
        handlers = install_operator(
            endpoints,
            raft,
            facts=facts,
            forwarder=forwarder,
            datacenter=datacenter,
            members=lambda: members,
            logger=log,
        )
        port = ServerPort("127.0.0.1:0", endpoints, None, log)
        nodes.append(Node(name, f"{host}:8300", raft, facts, forwarder, port, handlers))
    for node in nodes[1:]:
        node.forwarder.leader = nodes[0].port
    return Cluster(nodes, shared, members, log)


def dc_request(**fields: Any) -> dict[str, Any]:
    return {"Datacenter": DC, "AllowStale": False, "Token": "", **fields}


def remove_request(**fields: Any) -> dict[str, Any]:
    return {"Datacenter": DC, "Address": "", "ID": "", "Token": "", **fields}


# ------------------------------------------------------------------ in memory


async def test_the_configuration_of_three_servers_names_them_from_serf() -> None:
    env = three_servers(extra_servers=1)
    reply = await env.leader.call(RAFT_GET_CONFIGURATION, dc_request())
    assert_go_key_order(reply)
    assert reply["Index"] == 7
    assert reply["Servers"] == [
        {
            "Address": "10.0.0.1:8300",
            "ID": IDS["s1"],
            "Leader": True,
            "Node": "s1",
            "Voter": True,
        },
        {
            "Address": "10.0.0.2:8300",
            "ID": IDS["s2"],
            "Leader": False,
            "Node": "s2",
            "Voter": True,
        },
        {
            "Address": "10.0.0.3:8300",
            "ID": IDS["s3"],
            "Leader": False,
            "Node": "s3",
            "Voter": True,
        },
        {
            "Address": "10.0.0.90:8300",
            "ID": "ghost-0",
            "Leader": False,
            "Node": "(unknown)",
            "Voter": False,
        },
    ]


async def test_a_follower_forwards_to_the_leader_and_answers_stale_reads_itself() -> None:
    env = three_servers()
    follower, leader = env.follower, env.leader
    reply = await follower.call(RAFT_GET_CONFIGURATION, dc_request())
    assert follower.forwarder.forwarded == [RAFT_GET_CONFIGURATION]
    assert (follower.raft.reads, leader.raft.reads) == (0, 1)
    assert [s["Node"] for s in reply["Servers"]] == ["s1", "s2", "s3"]

    stale = await follower.call(RAFT_GET_CONFIGURATION, dc_request(AllowStale=True))
    assert follower.forwarder.forwarded == [RAFT_GET_CONFIGURATION]  # not forwarded again
    assert follower.raft.reads == 1
    assert stale == reply

    # A follower that knows no leader: the forwarder's error, unless the read is stale.
    follower.forwarder.leader = None
    with pytest.raises(RemoteError) as caught:
        await follower.call(RAFT_GET_CONFIGURATION, dc_request())
    assert caught.value.error == ERR_NO_LEADER
    assert (await follower.call(RAFT_GET_CONFIGURATION, dc_request(AllowStale=True)))["Servers"]


async def test_remove_by_address_from_a_follower_is_done_by_the_leader() -> None:
    env = three_servers()
    follower, leader = env.follower, env.leader
    reply = await follower.call(
        RAFT_REMOVE_PEER_BY_ADDRESS, remove_request(Address="10.0.0.3:8300")
    )
    assert reply == {}
    assert follower.forwarder.forwarded == [RAFT_REMOVE_PEER_BY_ADDRESS]
    assert (follower.raft.removals, leader.raft.removals) == ([], [("10.0.0.3:8300", "")])
    after = await leader.call(RAFT_GET_CONFIGURATION, dc_request())
    assert [s["Address"] for s in after["Servers"]] == ["10.0.0.1:8300", "10.0.0.2:8300"]
    assert after["Index"] == 8
    assert 'consul.operator: Removed Raft peer "10.0.0.3:8300"' in env.log.text()


async def test_remove_by_id() -> None:
    env = three_servers()
    reply = await env.leader.call(RAFT_REMOVE_PEER_BY_ID, remove_request(ID=IDS["s2"]))
    assert reply == {}
    assert env.leader.raft.removals == [("", IDS["s2"])]
    assert [s["ID"] for s in env.shared.servers] == [IDS["s1"], IDS["s3"]]
    assert f'Removed Raft peer with id "{IDS["s2"]}"' in env.log.text()


async def test_an_unknown_peer_is_refused_with_the_reference_texts() -> None:
    env = three_servers()
    with pytest.raises(RemoteError) as caught:
        await env.follower.call(
            RAFT_REMOVE_PEER_BY_ADDRESS, remove_request(Address="10.9.9.9:8300")
        )
    assert caught.value.error == 'address "10.9.9.9:8300" was not found in the Raft configuration'
    with pytest.raises(RemoteError) as caught:
        await env.leader.call(RAFT_REMOVE_PEER_BY_ID, remove_request(ID="nope"))
    assert caught.value.error == 'id "nope" was not found in the Raft configuration'
    with pytest.raises(RemoteError) as caught:
        await env.leader.call(RAFT_REMOVE_PEER_BY_ADDRESS, remove_request())
    assert caught.value.error == 'address "" was not found in the Raft configuration'
    assert env.leader.raft.removals == [] and len(env.shared.servers) == 3


async def test_a_removal_raft_refuses_comes_back_with_raft_text() -> None:
    env = three_servers()
    env.leader.raft.refuse = "node is not the leader"
    with pytest.raises(RemoteError) as caught:
        await env.leader.call(RAFT_REMOVE_PEER_BY_ADDRESS, remove_request(Address="10.0.0.2:8300"))
    assert caught.value.error == "node is not the leader"
    assert (
        'consul.operator: Failed to remove Raft peer "10.0.0.2:8300": node is not the leader'
        in env.log.text()
    )


async def test_another_datacenter_is_asked_through_the_forwarder() -> None:
    env = three_servers()
    remote = three_servers(datacenter="dc2")
    env.leader.forwarder.datacenters_["dc2"] = remote.leader.port
    reply = await env.leader.call(RAFT_GET_CONFIGURATION, dc_request(Datacenter="dc2"))
    assert remote.leader.raft.reads == 1 and env.leader.raft.reads == 0
    assert [s["Node"] for s in reply["Servers"]] == ["s1", "s2", "s3"]
    await env.leader.call(RAFT_REMOVE_PEER_BY_ID, remove_request(Datacenter="dc2", ID=IDS["s3"]))
    assert remote.leader.raft.removals == [("", IDS["s3"])] and env.leader.raft.removals == []
    with pytest.raises(RemoteError) as caught:
        await env.leader.call(RAFT_GET_CONFIGURATION, dc_request(Datacenter="dc9"))
    assert caught.value.error == ERR_NO_DC_PATH


async def test_a_body_that_does_not_decode_is_an_error() -> None:
    env = three_servers()
    with pytest.raises(RemoteError) as caught:
        await env.leader.call(RAFT_REMOVE_PEER_BY_ADDRESS, {"Address": 5})
    assert "RaftRemovePeerRequest" in caught.value.error and "Address" in caught.value.error
    with pytest.raises(RemoteError):
        await env.leader.call(RAFT_GET_CONFIGURATION, ["not", "a", "map"])


async def test_a_catalog_without_raft_reports_its_one_server() -> None:
    env = in_process()
    install_operator(
        env.endpoints,
        None,
        facts=env.catalog.facts,
        forwarder=env.catalog.forwarder,
        datacenter=DC,
        members=lambda: [server_member("server-1", "127.0.0.1")],
    )
    reply = await env.call(RAFT_GET_CONFIGURATION, dc_request())
    assert reply == {
        "Index": 0,
        "Servers": [
            {
                "Address": "127.0.0.1:8300",
                "ID": "127.0.0.1:8300",
                "Leader": True,
                "Node": "server-1",
                "Voter": True,
            }
        ],
    }
    with pytest.raises(RemoteError) as caught:
        await env.call(RAFT_REMOVE_PEER_BY_ADDRESS, remove_request(Address="127.0.0.1:8300"))
    assert caught.value.error.startswith("Need at least one voter in configuration")
    with pytest.raises(RemoteError) as caught:
        await env.call(RAFT_REMOVE_PEER_BY_ID, remove_request(ID="other"))
    assert caught.value.error == 'id "other" was not found in the Raft configuration'


# ------------------------------------------------------------------ real servers

BOUND = 30.0
"""Seconds any one wait may take (elections take 1-2 s at raft_multiplier 1)."""


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
    with trio.move_on_after(BOUND) as scope:
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await trio.sleep(0.05)
    assert not scope.cancelled_caught, f"timed out waiting for {what}"


@asynccontextmanager
async def real_server(network: MemoryGossipNetwork, index: int) -> AsyncIterator[Agent]:
    host = f"127.0.0.{index}"
    async with running_agent(
        "memory",
        gossip_network=network,
        node_name=f"s{index}",
        serf_lan_addr=f"{host}:8301",
        serf_wan_addr=f"{host}:8302",
        server_addr=f"{host}:0",
        raft_multiplier=1,
        bootstrap_expect=3,
        log_level="DEBUG",
    ) as agent:
        yield agent


def leaders(agents: list[Agent]) -> list[Agent]:
    return [a for a in agents if a.raft is not None and a.raft.facts.is_leader()]


async def test_three_real_servers_list_and_remove_peers() -> None:
    network = MemoryGossipNetwork()
    async with AsyncExitStack() as stack:
        agents = [await stack.enter_async_context(real_server(network, i)) for i in (1, 2, 3)]
        for agent in agents[1:]:
            async with client_for(agent) as client:
                assert await client.join([str(agents[0].gossip_addresses["lan"])]) == 1
        await eventually(lambda: len(leaders(agents)) == 1, "one leader of three")
        leader = leaders(agents)[0]
        follower = next(a for a in agents if a is not leader)

        async def all_three() -> bool:
            reply = await server_call(follower, RAFT_GET_CONFIGURATION, dc_request())
            return len(reply["Servers"] or []) == 3

        await eventually(all_three, "three servers in the configuration")
        # From a follower: forwarded to the leader, which names each server from serf.
        reply = await server_call(follower, RAFT_GET_CONFIGURATION, dc_request())
        assert follower.catalog is not None
        assert getattr(follower.catalog.forwarder, "forwarded", 0) >= 1
        assert reply["Index"] > 0
        by_node = {s["Node"]: s for s in reply["Servers"]}
        assert sorted(by_node) == ["s1", "s2", "s3"]
        for agent in agents:
            entry = by_node[agent.config.node_name]
            assert entry["ID"] == agent.node_id
            assert entry["Address"] == agent.raft_address()
            assert entry["Voter"] is True
            assert entry["Leader"] is (agent is leader)
        stale = await server_call(follower, RAFT_GET_CONFIGURATION, dc_request(AllowStale=True))
        assert sorted(s["ID"] for s in stale["Servers"]) == sorted(a.node_id for a in agents)

        with pytest.raises(RemoteError) as caught:
            await server_call(
                follower, RAFT_REMOVE_PEER_BY_ADDRESS, remove_request(Address="127.0.0.9:1")
            )
        assert caught.value.error == 'address "127.0.0.9:1" was not found in the Raft configuration'

        # Remove the other follower by address, asked of a follower: the leader removes it.
        other = next(a for a in agents if a is not leader and a is not follower)
        await server_call(
            follower, RAFT_REMOVE_PEER_BY_ADDRESS, remove_request(Address=other.raft_address())
        )
        assert "consul.operator: Removed Raft peer" in log_of(leader)
        peers = await server_call(leader, "Status.Peers", {})
        assert other.raft_address() not in peers and len(peers) == 2
