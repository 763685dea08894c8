"""Consul's ``Internal.EventFire``: the structs (field names, go-msgpack's key order, a msgpack
round trip, tolerant decoding), the event fired here with Consul's prefix and the QueryMeta of
``setQueryMeta``, another datacenter's request forwarded there (``No path to datacenter`` when
none is known), a request without ``AllowStale`` on a follower sent to the leader, serf's
refusal as the endpoint's error, and a bad body refused.

First over server ports that do not listen (``call_local``: the router on memory streams) with
a fake LAN pool, fake consensus facts and a fake forwarder; then real agents: the agent's own
registration (a lone server fires an event through its HTTP side and hears it back), an
unknown datacenter through the HTTP API, and a client agent whose event is fired by its
server."""

from __future__ import annotations

import http.client
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
import trio
from catalog_helpers import assert_go_key_order
from rpc_helpers import client_for, running_agent

from agentrpc.agent import Agent
from agentrpc.catalog.constants import ERR_NO_DC_PATH, ERR_NO_SERVERS, MAX_INT64
from agentrpc.catalog.event_endpoint import (
    EVENT_FIRE,
    USER_EVENT_PREFIX,
    EventFireRequest,
    EventFireResponse,
    event_endpoint,
    user_event_name,
)
from agentrpc.catalog.structs import QueryMeta, QueryOptions, WireDecodeError
from agentrpc.gossip.transport import MemoryGossipNetwork
from agentrpc.http_api.events import EVENT_PREFIX, decode_payload
from agentrpc.log_protocol import CaptureLog
from agentrpc.serverport.endpoints import EndpointError, Endpoints, Handler, RemoteError
from agentrpc.serverport.server import ServerPort

# ------------------------------------------------------------------ structs


def test_request_wire_shape_and_round_trip() -> None:
    request = EventFireRequest(
        datacenter="dc2",
        name="deploy",
        payload=b"\x81\xa2ID\xa1x",
        options=QueryOptions(token="t", allow_stale=True),
    )
    wire = request.to_wire()
    assert wire == {
        "AllowStale": True,
        "Datacenter": "dc2",
        "MaxQueryTime": 0,
        "MinQueryIndex": 0,
        "Name": "deploy",
        "Payload": b"\x81\xa2ID\xa1x",
        "RequireConsistent": False,
        "Token": "t",
    }
    assert_go_key_order(wire)
    packed = msgpack.packb(wire, use_bin_type=True)
    assert EventFireRequest.from_wire(msgpack.unpackb(packed, raw=False)) == request
    # Go's zero struct: nil payload, and a nil body decodes to it.
    assert EventFireRequest().to_wire()["Payload"] is None
    assert EventFireRequest.from_wire(None) == EventFireRequest()
    # Old msgpack (raw strings) carries the payload as a str: read as its bytes.
    assert EventFireRequest.from_wire({"Payload": "abc"}).payload == b"abc"
    with pytest.raises(WireDecodeError, match=r"EventFireRequest\.Name"):
        EventFireRequest.from_wire({"Name": 7})
    with pytest.raises(WireDecodeError, match=r"EventFireRequest\.Payload"):
        EventFireRequest.from_wire({"Payload": [1]})


def test_response_wire_shape_and_round_trip() -> None:
    response = EventFireResponse(QueryMeta(0, 12, True))
    wire = response.to_wire()
    assert wire == {"Index": 0, "KnownLeader": True, "LastContact": 12}
    assert_go_key_order(wire)
    assert EventFireResponse.from_wire(wire) == response
    assert EventFireResponse.from_wire(None) == EventFireResponse()


def test_the_serf_name_is_consuls_prefix_and_the_http_side_uses_the_same() -> None:
    assert USER_EVENT_PREFIX == "consul:event:"
    assert user_event_name("deploy") == "consul:event:deploy"
    assert EVENT_PREFIX == USER_EVENT_PREFIX


# ------------------------------------------------------------------ fakes


@dataclass
class FakeFacts:
    leading: bool = True
    leader_address: str = "127.0.0.1:8300"
    contact: float | None = None

    def is_leader(self) -> bool:
        return self.leading

    def leader(self) -> str:
        return self.leader_address

    def last_contact(self) -> float | None:
        return self.contact

    def peers(self) -> list[str]:
        return [self.leader_address]

    async def verify_leader(self) -> None:
        await trio.lowlevel.checkpoint()


@dataclass
class FakeLAN:
    """The LAN pool's user event: records what it sent; ``refuse`` is serf's refusal."""

    fired: list[tuple[str, bytes]] = field(default_factory=list)
    refuse: str = ""

    async def __call__(self, name: str, payload: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self.refuse:
            raise ValueError(self.refuse)
        self.fired.append((name, payload))


@dataclass
class FakeForwarder:
    """Forwards to the server port of each datacenter it knows, as ServerForwarder does (a
    remote error comes back as an EndpointError with its text); unknown: no path. The
    leader is ``leader`` (a server port) when set."""

    ports: dict[str, ServerPort] = field(default_factory=dict)
    leader: ServerPort | None = None
    sent: list[tuple[str, str, Any]] = field(default_factory=list)

    async def forward_datacenter(self, datacenter: str, method: str, body: Any) -> Any:
        self.sent.append((datacenter, method, body))
        port = self.ports.get(datacenter)
        if port is None:
            await trio.lowlevel.checkpoint()
            raise EndpointError(ERR_NO_DC_PATH)
        return await self._call(port, method, body)

    async def forward_leader(self, method: str, body: Any) -> Any:
        self.sent.append(("leader", method, body))
        assert self.leader is not None
        return await self._call(self.leader, method, body)

    def datacenters(self) -> list[str]:
        return sorted(self.ports)

    @staticmethod
    async def _call(port: ServerPort, method: str, body: Any) -> Any:
        try:
            return await port.call_local(method, body)
        except RemoteError as exc:
            raise EndpointError(exc.error) from None


@dataclass
class DC:
    name: str
    lan: FakeLAN
    facts: FakeFacts
    forwarder: FakeForwarder
    port: ServerPort
    handler: Handler


def datacenter(name: str, log: CaptureLog, *, now: float = 100.0) -> DC:
    lan = FakeLAN()
    facts = FakeFacts()
    forwarder = FakeForwarder()
    handler = event_endpoint(
        fire=lan,
        datacenter=name,
        facts=facts,
        forwarder=forwarder,
        clock=lambda: now,
        logger=log,
    )
    endpoints = Endpoints()
    endpoints.register(EVENT_FIRE, handler)
    port = ServerPort("127.0.0.1:0", endpoints, None, log)
    return DC(name, lan, facts, forwarder, port, handler)


def fire_request(dc: str = "dc1", name: str = "deploy", *, stale: bool = True) -> dict[str, Any]:
    return EventFireRequest(
        datacenter=dc, name=name, payload=b"event", options=QueryOptions(allow_stale=stale)
    ).to_wire()


# ------------------------------------------------------------------ the endpoint


async def test_a_local_request_fires_the_prefixed_event_in_the_lan_pool() -> None:
    dc1 = datacenter("dc1", CaptureLog())
    reply = await dc1.port.call_local(EVENT_FIRE, fire_request())
    assert dc1.lan.fired == [("consul:event:deploy", b"event")]
    assert reply == {"Index": 0, "KnownLeader": True, "LastContact": 0}
    # An empty datacenter is this one; a nil payload is an empty one.
    await dc1.port.call_local(EVENT_FIRE, {"Name": "x", "AllowStale": True})
    assert dc1.lan.fired[-1] == ("consul:event:x", b"")
    assert dc1.forwarder.sent == []


async def test_a_follower_sets_the_query_meta_of_its_last_contact() -> None:
    dc1 = datacenter("dc1", CaptureLog(), now=100.0)
    dc1.facts.leading = False
    dc1.facts.contact = 99.5
    reply = await dc1.port.call_local(EVENT_FIRE, fire_request())
    assert reply == {"Index": 0, "KnownLeader": True, "LastContact": 500_000_000}
    dc1.facts.contact = None
    dc1.facts.leader_address = ""
    reply = await dc1.port.call_local(EVENT_FIRE, fire_request())
    assert reply == {"Index": 0, "KnownLeader": False, "LastContact": MAX_INT64}
    assert len(dc1.lan.fired) == 2  # a stale request needs no leader


async def test_another_datacenters_request_is_fired_there_and_not_here() -> None:
    log = CaptureLog()
    dc1, dc2 = datacenter("dc1", log), datacenter("dc2", log)
    dc2.facts.leading = False
    dc2.facts.contact = 99.0
    dc1.forwarder.ports["dc2"] = dc2.port
    body = fire_request("dc2")
    reply = await dc1.port.call_local(EVENT_FIRE, body)
    assert dc1.lan.fired == []
    assert dc2.lan.fired == [("consul:event:deploy", b"event")]
    assert dc1.forwarder.sent == [("dc2", EVENT_FIRE, body)]  # forwarded unchanged
    # dc2's reply, its QueryMeta, comes back as it is.
    assert reply == {"Index": 0, "KnownLeader": True, "LastContact": 1_000_000_000}
    assert dc2.forwarder.sent == []


async def test_an_unknown_datacenter_has_no_path_and_fires_nothing() -> None:
    dc1 = datacenter("dc1", CaptureLog())
    with pytest.raises(RemoteError) as info:
        await dc1.port.call_local(EVENT_FIRE, fire_request("dc9"))
    assert info.value.error == ERR_NO_DC_PATH
    assert dc1.lan.fired == []


async def test_a_request_without_allow_stale_goes_to_the_leader() -> None:
    log = CaptureLog()
    follower, leader = datacenter("dc1", log), datacenter("dc1", log)
    follower.facts.leading = False
    follower.forwarder.leader = leader.port
    await follower.port.call_local(EVENT_FIRE, fire_request(stale=False))
    assert follower.lan.fired == []
    assert leader.lan.fired == [("consul:event:deploy", b"event")]
    assert [where for where, *_ in follower.forwarder.sent] == ["leader"]
    # The leader itself serves it.
    await leader.port.call_local(EVENT_FIRE, fire_request(stale=False))
    assert len(leader.lan.fired) == 2


async def test_serfs_refusal_is_the_endpoints_error() -> None:
    log = CaptureLog()
    dc1 = datacenter("dc1", log)
    dc1.lan.refuse = "user event exceeds limit of 512 bytes"
    with pytest.raises(RemoteError) as info:
        await dc1.port.call_local(EVENT_FIRE, fire_request())
    assert info.value.error == "user event exceeds limit of 512 bytes"
    assert any("not fired: user event exceeds limit" in line for _, line in log.records)
    # A forwarded call carries the remote refusal back with its text.
    other = datacenter("dc0", log)
    other.forwarder.ports["dc1"] = dc1.port
    with pytest.raises(RemoteError) as info:
        await other.port.call_local(EVENT_FIRE, fire_request("dc1"))
    assert info.value.error == "user event exceeds limit of 512 bytes"


async def test_a_body_that_does_not_decode_is_refused() -> None:
    dc1 = datacenter("dc1", CaptureLog())
    with pytest.raises(RemoteError) as info:
        await dc1.port.call_local(EVENT_FIRE, {"Name": ["x"]})
    assert "EventFireRequest.Name" in info.value.error
    with pytest.raises(RemoteError) as info:
        await dc1.port.call_local(EVENT_FIRE, [1, 2])
    assert "EventFireRequest" in info.value.error
    assert dc1.lan.fired == []


# ------------------------------------------------------------------ real agents


@asynccontextmanager
async def agent_at(
    network: MemoryGossipNetwork, index: int, **settings: Any
) -> AsyncIterator[Agent]:
    async with running_agent(
        "memory",
        gossip_network=network,
        node_name=f"node{index}",
        serf_lan_addr=f"127.0.0.{index}:8301",
        serf_wan_addr=f"127.0.0.{index}:8302",
        server_addr=f"127.0.0.{index}:0",
        http_addr="127.0.0.1:0",
        **settings,
    ) as agent:
        yield agent


def _put(agent: Agent, target: str) -> tuple[int, bytes]:
    """One blocking HTTP PUT to the agent's API (run in a thread)."""
    address = agent.http_address
    assert address is not None
    connection = http.client.HTTPConnection(address.host, address.port, timeout=10)
    try:
        connection.request("PUT", target, body=b"payload")
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


async def put(agent: Agent, target: str) -> tuple[int, bytes]:
    return await trio.to_thread.run_sync(_put, agent, target)


async def wait_for(predicate: Any, what: str, seconds: float = 20) -> None:
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110 - a bounded poll of gossip state
            await trio.sleep(0.05)
    assert predicate(), what


def event_names(agent: Agent) -> list[str]:
    assert agent.http_agent is not None
    return [event.name for event in agent.http_agent.events.events()]


async def test_a_lone_server_fires_through_its_own_endpoint_and_hears_it() -> None:
    """The agent registers ``Internal.EventFire``: the HTTP API's fire goes through it
    (in-process on a server) and the event comes back through the LAN pool."""
    async with agent_at(MemoryGossipNetwork(), 1) as agent:
        assert agent.server_port is not None
        seen: list[Any] = []
        own = agent.server_port.endpoints
        handler = own.get(EVENT_FIRE)  # the agent's own registration
        assert handler is not None

        async def spy(body: Any) -> Any:
            seen.append(body)
            return await handler(body)

        own.register(EVENT_FIRE, spy)
        status, body = await put(agent, "/v1/event/fire/deploy")
        assert status == 200, body
        fired = json.loads(body)
        assert fired["Name"] == "deploy" and fired["Version"] == 1
        assert [b["Name"] for b in seen] == ["deploy"]  # the event's own name
        assert seen[0]["Datacenter"] == "dc1" and seen[0]["AllowStale"] is True
        assert decode_payload(seen[0]["Payload"]).id == fired["ID"]
        await wait_for(lambda: event_names(agent) == ["deploy"], "the event back from gossip")

        status, body = await put(agent, "/v1/event/fire/deploy?dc=dc9")
        assert (status, body) == (500, ERR_NO_DC_PATH.encode())
        assert [b["Datacenter"] for b in seen] == ["dc1", "dc9"]


async def test_a_client_agents_event_is_fired_by_its_server() -> None:
    network = MemoryGossipNetwork()
    async with AsyncExitStack() as stack:
        client_agent = await stack.enter_async_context(agent_at(network, 2, server=False))
        # No server known yet: the event has nowhere to go.
        status, body = await put(client_agent, "/v1/event/fire/early")
        assert (status, body) == (500, ERR_NO_SERVERS.encode())
        server_agent = await stack.enter_async_context(agent_at(network, 1))
        assert server_agent.server_port is not None
        endpoints = server_agent.server_port.endpoints
        handler = endpoints.get(EVENT_FIRE)
        assert handler is not None
        served: list[str] = []

        async def spy(body: Any) -> Any:
            served.append(body["Name"])
            return await handler(body)

        endpoints.register(EVENT_FIRE, spy)
        async with client_for(client_agent) as client:
            assert await client.join(["127.0.0.1:8301"]) == 1
        assert client_agent.server_manager is not None
        manager = client_agent.server_manager
        await wait_for(lambda: manager.servers.first() is not None, "the client finds the server")
        status, body = await put(client_agent, "/v1/event/fire/deploy")
        assert status == 200, body
        assert served == ["deploy"]
        await wait_for(lambda: event_names(client_agent) == ["deploy"], "the client hears it")
        await wait_for(lambda: event_names(server_agent) == ["deploy"], "the server hears it")
