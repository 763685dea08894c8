"""Consul's ``Internal.KeyringOperation``: the structs (field names, go-msgpack's key order, a
msgpack round trip, tolerant decoding), the operation on this server's WAN then LAN pool, the
fan-out to one server of every other datacenter with ``Forwarded`` set (which then does only
its LAN pool), a pool's failure carried in its response, a datacenter that cannot be reached
failing the call, and the agent RPC's reply built from it.

First over server ports that do not listen (``call_local``: the router on memory streams) with
fake pools and a fake forwarder; then two real server agents in two datacenters joined over
WAN gossip, whose server ports the test wires with the endpoint (the agent does not register it
yet: see the test's docstring)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
import trio
from catalog_helpers import assert_go_key_order
from rpc_helpers import RawConnection, client_for, running_agent

from agentrpc.agent import Agent
from agentrpc.agent_http import AgentHTTP
from agentrpc.catalog.constants import ERR_NO_DC_PATH
from agentrpc.catalog.keyring_endpoint import (
    ERR_INVALID_KEYRING_OPERATION,
    KEYRING_OPERATION,
    KeyringRequest,
    KeyringResponse,
    KeyringResponses,
    keyring_endpoint,
)
from agentrpc.catalog.structs import QueryMeta, QueryOptions, WireDecodeError
from agentrpc.commands import keyring_pool_operation, keyring_reply
from agentrpc.gossip.serf_keys import KeyResponse
from agentrpc.gossip.transport import MemoryGossipNetwork
from agentrpc.log_protocol import CaptureLog
from agentrpc.serverport.endpoints import EndpointError, Endpoints, RemoteError
from agentrpc.serverport.server import ServerPort

KEY1 = "cg8StVXbQJ0gPvMd9o7yrg=="
KEY2 = "4le2xwSQgNTAB6Ucyh6Vjw=="


def test_request_wire_shape_and_round_trip() -> None:
    request = KeyringRequest(
        operation="install",
        key=KEY1,
        datacenter="dc1",
        forwarded=True,
        relay_factor=3,
        options=QueryOptions(token="t", allow_stale=True),
    )
    wire = request.to_wire()
    assert wire == {
        "AllowStale": True,
        "Datacenter": "dc1",
        "Forwarded": True,
        "Key": KEY1,
        "MaxQueryTime": 0,
        "MinQueryIndex": 0,
        "Operation": "install",
        "RelayFactor": 3,
        "RequireConsistent": False,
        "Token": "t",
    }
    assert_go_key_order(wire)
    assert KeyringRequest.from_wire(msgpack.unpackb(msgpack.packb(wire))) == request
    # go-msgpack's tolerance: raw strings as bytes, unknown keys, missing fields are zero.
    tolerant = KeyringRequest.from_wire({"Operation": b"use", "Key": b"k", "Extra": [1]})
    assert tolerant == KeyringRequest(operation="use", key="k")
    assert KeyringRequest.from_wire(None) == KeyringRequest(operation="")
    with pytest.raises(WireDecodeError, match="Forwarded"):
        KeyringRequest.from_wire({"Forwarded": "yes"})
    with pytest.raises(WireDecodeError, match="RelayFactor"):
        KeyringRequest.from_wire({"RelayFactor": 256})


def test_responses_wire_shape_and_round_trip() -> None:
    responses = KeyringResponses(
        (
            KeyringResponse(True, "dc1", {}, {KEY1: 2}, 2, ""),
            KeyringResponse(
                False, "dc2", {"n3": "boom"}, {KEY1: 1}, 2, "1/2 nodes reported failure"
            ),
        )
    )
    wire = responses.to_wire()
    assert wire == {
        "Index": 0,
        "KnownLeader": False,
        "LastContact": 0,
        "Responses": [
            {
                "Datacenter": "dc1",
                "Error": "",
                "Keys": {KEY1: 2},
                "Messages": {},
                "NumNodes": 2,
                "WAN": True,
            },
            {
                "Datacenter": "dc2",
                "Error": "1/2 nodes reported failure",
                "Keys": {KEY1: 1},
                "Messages": {"n3": "boom"},
                "NumNodes": 2,
                "WAN": False,
            },
        ],
    }
    assert_go_key_order(wire)
    assert KeyringResponses.from_wire(msgpack.unpackb(msgpack.packb(wire))) == responses
    # No response is nil; nil maps decode as empty ones; the meta survives.
    assert KeyringResponses().to_wire()["Responses"] is None
    decoded = KeyringResponses.from_wire(
        {"Responses": [{"WAN": False, "Keys": None, "Messages": None}], "Index": 4}
    )
    assert decoded.responses == (KeyringResponse(),) and decoded.meta == QueryMeta(index=4)
    assert [r.pool for r in responses.responses] == ["WAN", "LAN"]
    with pytest.raises(WireDecodeError, match="Keys"):
        KeyringResponses.from_wire({"Responses": [{"Keys": {KEY1: "two"}}]})
    with pytest.raises(WireDecodeError, match="Responses"):
        KeyringResponses.from_wire({"Responses": 3})


# ------------------------------------------------------------------ fakes


@dataclass
class FakePool:
    """One pool's key manager: records every operation and answers ``result``."""

    name: str
    calls: list[tuple[str, str, str, int]]
    result: KeyResponse = field(default_factory=lambda: KeyResponse(num_nodes=1, keys={KEY1: 1}))

    async def __call__(self, operation: str, key: str, relay_factor: int) -> KeyResponse:
        await trio.lowlevel.checkpoint()
        self.calls.append((self.name, operation, key, relay_factor))
        return self.result


@dataclass
class FakeForwarder:
    """Forwards to the server port of each datacenter it knows, as ServerForwarder does (a
    remote error comes back as an EndpointError with its text); unknown: no path."""

    local: str
    ports: dict[str, ServerPort] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)
    bodies: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def forward_datacenter(self, datacenter: str, method: str, body: Any) -> Any:
        assert method == KEYRING_OPERATION
        self.bodies.append((datacenter, body))
        port = self.ports.get(datacenter)
        if port is None:
            await trio.lowlevel.checkpoint()
            raise EndpointError(ERR_NO_DC_PATH)
        try:
            return await port.call_local(method, body)
        except RemoteError as exc:
            raise EndpointError(exc.error) from None

    def datacenters(self) -> list[str]:
        return [self.local, *sorted({*self.ports, *self.extra})]


@dataclass
class DC:
    name: str
    calls: list[tuple[str, str, str, int]]
    lan: FakePool
    wan: FakePool
    port: ServerPort
    forwarder: FakeForwarder


def datacenter(name: str, calls: list[tuple[str, str, str, int]], log: CaptureLog) -> DC:
    lan = FakePool(f"{name}-lan", calls)
    wan = FakePool(f"{name}-wan", calls)
    forwarder = FakeForwarder(name)
    endpoints = Endpoints()
    endpoints.register(
        KEYRING_OPERATION,
        keyring_endpoint(lan=lan, wan=wan, datacenter=name, forwarder=forwarder, logger=log),
    )
    port = ServerPort("127.0.0.1:0", endpoints, None, log)
    return DC(name, calls, lan, wan, port, forwarder)


def two_datacenters() -> tuple[DC, DC, CaptureLog]:
    log = CaptureLog()
    calls: list[tuple[str, str, str, int]] = []
    dc1, dc2 = datacenter("dc1", calls, log), datacenter("dc2", calls, log)
    dc1.forwarder.ports["dc2"] = dc2.port
    dc2.forwarder.ports["dc1"] = dc1.port
    return dc1, dc2, log


def request(operation: str = "list", key: str = "", **fields: Any) -> dict[str, Any]:
    return KeyringRequest(operation=operation, key=key, **fields).to_wire()


# ------------------------------------------------------------------ the endpoint


async def test_a_local_operation_does_the_wan_pool_then_the_lan_pool() -> None:
    calls: list[tuple[str, str, str, int]] = []
    dc1 = datacenter("dc1", calls, CaptureLog())
    reply = await dc1.port.call_local(KEYRING_OPERATION, request("install", KEY2, relay_factor=2))
    assert calls == [("dc1-wan", "install", KEY2, 2), ("dc1-lan", "install", KEY2, 2)]
    assert_go_key_order(reply)
    decoded = KeyringResponses.from_wire(reply)
    assert [(r.wan, r.datacenter, dict(r.keys), r.num_nodes) for r in decoded.responses] == [
        (True, "dc1", {KEY1: 1}, 1),
        (False, "dc1", {KEY1: 1}, 1),
    ]
    assert decoded.meta == QueryMeta()  # the endpoint never sets it, as the reference


async def test_fan_out_reaches_every_other_datacenter_with_forwarded_set() -> None:
    dc1, dc2, _log = two_datacenters()
    dc2.lan.result = KeyResponse(num_nodes=3, keys={KEY1: 3, KEY2: 1})
    reply = await dc1.port.call_local(KEYRING_OPERATION, request("list"))
    decoded = KeyringResponses.from_wire(reply)
    assert [(r.pool, r.datacenter, r.num_nodes) for r in decoded.responses] == [
        ("WAN", "dc1", 1),
        ("LAN", "dc1", 1),
        ("LAN", "dc2", 3),
    ]
    # dc2 got one forwarded request and did only its LAN pool; nobody forwarded further.
    assert [(dc, body["Forwarded"]) for dc, body in dc1.forwarder.bodies] == [("dc2", True)]
    assert dc2.forwarder.bodies == []
    assert sorted(name for name, *_ in dc1.calls) == ["dc1-lan", "dc1-wan", "dc2-lan"]
    assert dc1.calls[0][0] == "dc1-wan"  # the WAN pool first, before the fan-out
    # The agent RPC reply built from it: an Info entry per pool, keys per pool, dc by dc.
    body = keyring_reply(decoded)
    assert body["Info"] == [
        {"Datacenter": "dc1", "Error": "", "NumNodes": 1, "Pool": "WAN"},
        {"Datacenter": "dc1", "Error": "", "NumNodes": 1, "Pool": "LAN"},
        {"Datacenter": "dc2", "Error": "", "NumNodes": 3, "Pool": "LAN"},
    ]
    assert [(k["Datacenter"], k["Pool"], k["Key"], k["Count"]) for k in body["Keys"]] == [
        ("dc1", "WAN", KEY1, 1),
        ("dc1", "LAN", KEY1, 1),
        ("dc2", "LAN", KEY1, 3),
        ("dc2", "LAN", KEY2, 1),
    ]
    assert body["Messages"] is None
    assert_go_key_order(body)


async def test_forwarded_true_does_only_the_lan_pool() -> None:
    dc1, dc2, _log = two_datacenters()
    reply = await dc2.port.call_local(KEYRING_OPERATION, request("use", KEY2, forwarded=True))
    decoded = KeyringResponses.from_wire(reply)
    assert [(r.pool, r.datacenter) for r in decoded.responses] == [("LAN", "dc2")]
    assert dc2.calls == [("dc2-lan", "use", KEY2, 0)]
    assert dc2.forwarder.bodies == [] and dc1.forwarder.bodies == []


async def test_a_pool_that_failed_is_in_its_response_and_counted_in_the_reply() -> None:
    dc1, dc2, _log = two_datacenters()
    dc2.lan.result = KeyResponse(
        num_nodes=3,
        num_resp=3,
        num_err=1,
        messages={"dc2-node3": "key is not installed"},
        keys={KEY1: 2},
        error="1/3 nodes reported failure",
    )
    reply = await dc1.port.call_local(KEYRING_OPERATION, request("use", KEY2))
    body = keyring_reply(KeyringResponses.from_wire(reply))
    failed = [info for info in body["Info"] if info["Error"]]
    assert failed == [
        {"Datacenter": "dc2", "Error": "1/3 nodes reported failure", "NumNodes": 3, "Pool": "LAN"}
    ]
    assert len(body["Info"]) == 3
    assert body["Messages"] == [
        {"Datacenter": "dc2", "Message": "key is not installed", "Node": "dc2-node3", "Pool": "LAN"}
    ]


async def test_a_datacenter_without_a_path_fails_the_whole_call() -> None:
    dc1, _dc2, log = two_datacenters()
    dc1.forwarder.extra.append("dc3")  # known by name, no server to reach
    with pytest.raises(RemoteError) as info:
        await dc1.port.call_local(KEYRING_OPERATION, request("list"))
    assert info.value.error == ERR_NO_DC_PATH
    # Every pool still ran (nothing half-cancelled); the failure is logged once.
    assert sorted(name for name, *_ in dc1.calls) == ["dc1-lan", "dc1-wan", "dc2-lan"]
    assert any("DC 'dc3' failed: No path to datacenter" in line for _, line in log.records)


async def test_a_bad_operation_or_body_is_refused() -> None:
    calls: list[tuple[str, str, str, int]] = []
    dc1 = datacenter("dc1", calls, CaptureLog())
    with pytest.raises(RemoteError) as info:
        await dc1.port.call_local(KEYRING_OPERATION, request("rotate"))
    assert info.value.error == ERR_INVALID_KEYRING_OPERATION
    with pytest.raises(RemoteError) as info:
        await dc1.port.call_local(KEYRING_OPERATION, {"Forwarded": 7})
    assert "Forwarded" in info.value.error
    assert calls == []


async def test_no_wan_pool_and_no_forwarder_means_this_lan_pool_only() -> None:
    calls: list[tuple[str, str, str, int]] = []
    lan = FakePool("lan", calls)
    handler = keyring_endpoint(lan=lan, wan=None, datacenter="dc1", forwarder=None)
    reply = await handler(request("list"))
    assert [r.pool for r in KeyringResponses.from_wire(reply).responses] == ["LAN"]
    wan = FakePool("wan", calls)
    handler = keyring_endpoint(lan=lan, wan=wan, datacenter="dc1", forwarder=None)
    reply = await handler(request("list"))
    assert [r.pool for r in KeyringResponses.from_wire(reply).responses] == ["WAN", "LAN"]


# ------------------------------------------------------------------ real agents


@asynccontextmanager
async def agent_at(
    network: MemoryGossipNetwork, index: int, dc: str, **settings: Any
) -> AsyncIterator[Agent]:
    async with running_agent(
        "memory",
        gossip_network=network,
        node_name=f"node{index}",
        datacenter=dc,
        encrypt=KEY1,
        serf_lan_addr=f"127.0.0.{index}:8301",
        serf_wan_addr=f"127.0.0.{index}:8302",
        server_addr=f"127.0.0.{index}:0",
        **settings,
    ) as agent:
        yield agent


async def wait_for(predicate: Any, what: str, seconds: float = 30) -> None:
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110 - a bounded poll of gossip state
            await trio.sleep(0.05)
    assert predicate(), what


async def test_two_datacenters_of_real_agents_list_and_rotate_through_dc1() -> None:
    """dc1: node1 (server); dc2: node2 (server) and node3 (client). node1 and node2 join over
    WAN; the agent RPC's keyring commands on node1 reach dc2's LAN pool through
    ``Internal.KeyringOperation`` forwarded to node2. Real clock: the server ports are loopback
    TCP sockets."""
    network = MemoryGossipNetwork()
    async with AsyncExitStack() as stack:
        node1 = await stack.enter_async_context(agent_at(network, 1, "dc1"))
        node2 = await stack.enter_async_context(agent_at(network, 2, "dc2"))
        node3 = await stack.enter_async_context(agent_at(network, 3, "dc2", server=False))
        assert node1.catalog is not None
        forwarder = node1.catalog.forwarder
        async with client_for(node3) as client:
            assert await client.join(["127.0.0.2:8301"]) == 1
        async with client_for(node1) as client:
            assert await client.join(["127.0.0.2:8302"], wan=True) == 1
        await wait_for(lambda: "dc2" in forwarder.datacenters(), "dc2 known over WAN")
        await wait_for(lambda: len(node2.lan.members()) == 2, "node3 in dc2's LAN")

        async with client_for(node1) as client:
            listed = await client.list_keys()
            assert [(i.pool, i.datacenter, i.num_nodes, i.error) for i in listed.info] == [
                ("WAN", "dc1", 2, ""),
                ("LAN", "dc1", 1, ""),
                ("LAN", "dc2", 2, ""),
            ]
            assert {(k.datacenter, k.pool, k.key, k.count) for k in listed.keys} == {
                ("dc1", "WAN", KEY1, 2),
                ("dc1", "LAN", KEY1, 1),
                ("dc2", "LAN", KEY1, 2),
            }
            for step in (client.install_key(KEY2), client.use_key(KEY2), client.remove_key(KEY1)):
                result = await step
                assert result.failed == [], result
                assert [(i.pool, i.datacenter) for i in result.info] == [
                    ("WAN", "dc1"),
                    ("LAN", "dc1"),
                    ("LAN", "dc2"),
                ]
            # The HTTP API's /v1/operator/keyring goes the same way.
            http = AgentHTTP(node1, logger=CaptureLog())
            pools = await http.keyring("list", "", 0)
            assert [(r.wan, r.datacenter, r.num_nodes, r.error) for r in pools] == [
                (True, "dc1", 2, ""),
                (False, "dc1", 1, ""),
                (False, "dc2", 2, ""),
            ]
            rotated = await client.list_keys()
            assert {(k.datacenter, k.pool, k.key, k.count) for k in rotated.keys} == {
                ("dc1", "WAN", KEY2, 2),
                ("dc1", "LAN", KEY2, 1),
                ("dc2", "LAN", KEY2, 2),
            }
        # The dc2 client holds the new key alone (reached only through dc2's server).
        keyring = node3.memberlists["lan"].keyring
        assert keyring is not None
        assert keyring.keys == (base64.b64decode(KEY2),)


async def test_an_unreachable_datacenter_is_the_agent_rpc_and_http_error() -> None:
    """One real server agent whose endpoint's forwarder knows a datacenter with no server:
    the agent RPC's reply carries the error and no entries (as Consul's in-process call
    leaves the reply empty), the HTTP keyring one failed result."""
    async with agent_at(MemoryGossipNetwork(), 1, "dc1") as agent:
        assert agent.server_port is not None
        forwarder = FakeForwarder("dc1", extra=["dc9"])
        agent.server_port.endpoints.register(  # in place of the agent's own
            KEYRING_OPERATION,
            keyring_endpoint(
                lan=keyring_pool_operation(lambda: agent.lan),
                wan=keyring_pool_operation(lambda: agent.wan),
                datacenter="dc1",
                forwarder=forwarder,
            ),
        )
        connection = await RawConnection.open(agent)
        await connection.handshake()
        reply = await connection.call("install-key", {"Key": KEY2}, reply_body=True)
        assert reply.error == ERR_NO_DC_PATH
        assert reply.body == {"Info": None, "Keys": None, "Messages": None}
        assert [dc for dc, _ in forwarder.bodies] == ["dc9"]
        results = await AgentHTTP(agent, logger=CaptureLog()).keyring("list", "", 0)
        assert [(r.wan, r.error) for r in results] == [(False, ERR_NO_DC_PATH)]
