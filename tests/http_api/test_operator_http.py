"""``/v1/operator/raft/configuration`` and ``/v1/operator/raft/peer`` over loopback HTTP: the
reference's JSON (Go's field order, no query headers), its 400s, 405s and 500s, the token and
``?stale`` reaching the RPC, ``?address`` and ``?id`` choosing the endpoint; py-consul against
a real server agent."""

from __future__ import annotations

from typing import Any

import consul
import pytest
import trio
from http_helpers import DC, SERVER, Cluster, TrioHTTP, blocking, cluster, member
from rpc_helpers import running_agent

from agentrpc.catalog.operator import (
    RAFT_GET_CONFIGURATION,
    RAFT_REMOVE_PEER_BY_ADDRESS,
    RAFT_REMOVE_PEER_BY_ID,
    install_operator,
)
from agentrpc.gossip.transport import MemoryGossipNetwork
from agentrpc.http_api.operator_endpoints import ERR_PEER_BOTH, ERR_PEER_NEITHER
from agentrpc.raft.errors import RaftError

SERVERS = [
    {"ID": "id-1", "Address": "127.0.0.1:8300", "Voter": True},
    {"ID": "id-2", "Address": "127.0.0.2:8300", "Voter": True},
    {"ID": "id-3", "Address": "127.0.0.3:8300", "Voter": False},
]


class FakeRaft:
    def __init__(self) -> None:
        self.servers = [dict(s) for s in SERVERS]
        self.removed: list[tuple[str, str]] = []

    def configuration(self) -> list[dict[str, Any]]:
        return [dict(s) for s in self.servers]

    def configuration_index(self) -> int:
        return 42

    async def remove_peer(self, *, address: str = "", server_id: str = "") -> None:
        if address == "127.0.0.2:8300":
            raise RaftError("leadership lost while committing log")
        self.removed.append((address, server_id))
        self.servers = [s for s in self.servers if s["Address"] != address and s["ID"] != server_id]


def with_operator(env: Cluster) -> tuple[FakeRaft, list[tuple[str, Any]]]:
    """The operator endpoints on the cluster's server port, over a fake Raft; a spy records
    every operator call's method and arguments as the server receives them."""
    raft = FakeRaft()
    endpoints = env.port.endpoints
    install_operator(
        endpoints,
        raft,
        facts=env.catalog.facts,
        forwarder=env.catalog.forwarder,
        datacenter=DC,
        members=lambda: [member(SERVER, server=True)],
    )
    calls: list[tuple[str, Any]] = []
    for name in (RAFT_GET_CONFIGURATION, RAFT_REMOVE_PEER_BY_ADDRESS, RAFT_REMOVE_PEER_BY_ID):
        handler = endpoints.get(name)
        assert handler is not None

        async def spy(body: Any, _name: str = name, _handler: Any = handler) -> Any:
            calls.append((_name, body))
            return await _handler(body)

        endpoints.register(name, spy)
    return raft, calls


async def connect(env: Cluster) -> TrioHTTP:
    return await TrioHTTP.connect(None, env.addresses[0])


async def test_the_configuration_in_go_field_order_without_query_headers() -> None:
    async with cluster() as env:
        _raft, calls = with_operator(env)
        http = await connect(env)
        reply = await http.request("GET", "/v1/operator/raft/configuration")
        assert reply.status == 200
        assert reply.headers["content-type"] == "application/json"
        assert "x-consul-index" not in reply.headers
        body = reply.json()
        assert list(body) == ["Servers", "Index"]
        assert body["Index"] == 42
        assert [list(s) for s in body["Servers"]] == [
            ["ID", "Node", "Address", "Leader", "Voter"]
        ] * 3
        assert body["Servers"] == [
            {
                "ID": "id-1",
                "Node": SERVER,
                "Address": "127.0.0.1:8300",
                "Leader": True,
                "Voter": True,
            },
            {
                "ID": "id-2",
                "Node": "(unknown)",
                "Address": "127.0.0.2:8300",
                "Leader": False,
                "Voter": True,
            },
            {
                "ID": "id-3",
                "Node": "(unknown)",
                "Address": "127.0.0.3:8300",
                "Leader": False,
                "Voter": False,
            },
        ]
        assert calls[-1][1]["Datacenter"] == DC and calls[-1][1]["AllowStale"] is False

        reply = await http.request("GET", "/v1/operator/raft/configuration?stale&token=t1&pretty")
        assert reply.status == 200 and b"\n    " in reply.body
        assert calls[-1][1]["AllowStale"] is True and calls[-1][1]["Token"] == "t1"

        reply = await http.request("GET", "/v1/operator/raft/configuration?stale&consistent")
        assert reply.status == 400
        assert reply.body == b"Cannot specify ?stale with ?consistent, conflicting semantics."
        reply = await http.request("PUT", "/v1/operator/raft/configuration")
        assert (reply.status, reply.body) == (405, b"")

        reply = await http.request("GET", "/v1/operator/raft/configuration?dc=dc9")
        assert (reply.status, reply.body) == (500, b"No path to datacenter")


async def test_delete_a_peer_by_address_or_id() -> None:
    async with cluster() as env:
        raft, calls = with_operator(env)
        http = await connect(env)
        reply = await http.request(
            "DELETE",
            "/v1/operator/raft/peer?address=127.0.0.3:8300",
            headers=[("X-Consul-Token", "secret")],
        )
        assert (reply.status, reply.body) == (200, b"")
        assert raft.removed == [("127.0.0.3:8300", "")]
        method, args = calls[-1]
        assert method == RAFT_REMOVE_PEER_BY_ADDRESS
        assert args == {
            "Datacenter": DC,
            "Address": "127.0.0.3:8300",
            "ID": "",
            "Token": "secret",
        }

        reply = await http.request("DELETE", "/v1/operator/raft/peer?id=id-1")
        assert (reply.status, reply.body) == (200, b"")
        assert calls[-1][0] == RAFT_REMOVE_PEER_BY_ID and raft.removed[-1] == ("", "id-1")


async def test_peer_errors_as_the_reference() -> None:
    async with cluster() as env:
        raft, _calls = with_operator(env)
        http = await connect(env)
        reply = await http.request("DELETE", "/v1/operator/raft/peer")
        assert (reply.status, reply.body) == (400, ERR_PEER_NEITHER.encode())
        reply = await http.request("DELETE", "/v1/operator/raft/peer?id=a&address=b")
        assert (reply.status, reply.body) == (400, ERR_PEER_BOTH.encode())
        reply = await http.request("GET", "/v1/operator/raft/peer?address=x")
        assert (reply.status, reply.body) == (405, b"")
        reply = await http.request("DELETE", "/v1/operator/raft/peer?address=10.1.1.1:8300")
        assert reply.status == 500
        assert reply.body == b'address "10.1.1.1:8300" was not found in the Raft configuration'
        reply = await http.request("DELETE", "/v1/operator/raft/peer?id=ghost")
        assert (reply.status, reply.body) == (
            500,
            b'id "ghost" was not found in the Raft configuration',
        )
        reply = await http.request("DELETE", "/v1/operator/raft/peer?address=127.0.0.2:8300")
        assert (reply.status, reply.body) == (500, b"leadership lost while committing log")
        assert raft.removed == []


async def test_pyconsul_reads_and_changes_the_raft_configuration_of_a_real_server() -> None:
    async with running_agent(
        "tcp",
        gossip_network=MemoryGossipNetwork(),
        node_name="op1",
        http_addr="127.0.0.1:0",
        raft_multiplier=1,
    ) as agent:
        assert agent.http_address is not None
        c = consul.Consul(host=agent.http_address.host, port=agent.http_address.port)
        with trio.fail_after(20):  # a lone server leads within an election timeout
            while True:
                config = await blocking(c.operator.raft_config)
                if config["Servers"] and config["Servers"][0]["Leader"]:
                    break
                await trio.sleep(0.05)
        assert config["Servers"] == [
            {
                "ID": agent.node_id,
                "Node": "op1",
                "Address": agent.raft_address(),
                "Leader": True,
                "Voter": True,
            }
        ]
        assert config["Index"] >= 1
        with pytest.raises(consul.ConsulException, match="was not found in the Raft"):
            await blocking(c.operator.raft_remove_peer, address="127.0.0.9:8300")
        with pytest.raises(consul.ConsulException, match=r'id \\?"nope\\?" was not found'):
            await blocking(c.operator.raft_remove_peer, peer_id="nope")
