"""A user event fired for another datacenter (issue 15): ``PUT /v1/event/fire/<name>?dc=dc2``
on a dc1 client agent goes to a dc1 server (``Internal.EventFire`` through the client's server
manager), which forwards it over the WAN to dc2's server, which fires it in dc2's LAN pool.

Real ``agentrpc serve`` processes on loopback (:mod:`cluster_support`): one server and one
client agent per datacenter (servers have no HTTP API there; the clients do), the servers
``--retry-join-wan`` each other. The event shows up in ``/v1/event/list`` of dc2's client with
the ID, name and payload the fire answered, and never in dc1's; an event fired without ``?dc``
stays in dc1; an unknown datacenter is Consul's 500 ``No path to datacenter``.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
from cluster_support import CallErrors, ClusterError, Server, http, loopback_block, running_clusters

from agentrpc.catalog.constants import ERR_NO_DC_PATH

T = TypeVar("T")

WAN_BOUND: float = 30.0
"""Seconds from start to each datacenter seeing the other (WAN retry-join every second)."""
GOSSIP_BOUND: float = 10.0
"""Seconds for a user event to reach every member of a two-member LAN pool."""


async def eventually(what: str, attempt: Callable[[], Awaitable[T | None]], *, within: float) -> T:
    """Retry ``attempt`` (None or an error answer: not yet) every 0.2 s, bounded: real
    processes, nothing to wait on."""
    deadline = trio.current_time() + within
    last: object = None
    while True:
        try:
            result = await attempt()
        except (*CallErrors, ClusterError) as exc:
            last = exc
        else:
            if result is not None:
                return result
            last = "not yet"
        if trio.current_time() > deadline:
            raise ClusterError(f"{what}: not within {within:g} s; last: {last!r}")
        await trio.sleep(0.2)


async def get_json(agent: Server, target: str) -> Any:
    reply = await http(agent, "GET", target)
    if reply.status != 200:
        raise ClusterError(f"GET {target} on {agent.name}: {reply.status} {reply.body[:200]!r}")
    return reply.json()


async def fire(agent: Server, target: str, payload: bytes) -> dict[str, Any]:
    reply = await http(agent, "PUT", target, payload)
    if reply.status != 200:
        raise ClusterError(f"PUT {target} on {agent.name}: {reply.status} {reply.body[:200]!r}")
    event: dict[str, Any] = reply.json()
    return event


async def events_named(agent: Server, name: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = await get_json(agent, f"/v1/event/list?name={name}")
    return listed


async def test_an_event_for_dc2_fired_on_dc1_reaches_dc2_only(tmp_path: Path) -> None:
    ips = loopback_block(4)
    specs = [
        {"size": 1, "clients": 1, "datacenter": dc, "ips": ips[2 * n : 2 * n + 2], "prefix": dc}
        for n, dc in enumerate(("dc1", "dc2"))
    ]
    async with running_clusters(tmp_path, specs) as (dc1, dc2):
        dc1.join_wan(dc2)
        dc2.join_wan(dc1)
        for cluster in (dc1, dc2):
            await cluster.start(cluster.servers[0])
        for cluster in (dc1, dc2):
            await cluster.wait_started(cluster.servers)
            await cluster.start(cluster.clients[0])
        for cluster in (dc1, dc2):
            await cluster.wait_started(cluster.clients)
        client1, client2 = dc1.clients[0], dc2.clients[0]

        async def both_dcs() -> list[str] | None:
            seen = await get_json(client1, "/v1/catalog/datacenters")
            return seen if seen == ["dc1", "dc2"] else None

        await eventually("dc1 sees dc2 over the WAN", both_dcs, within=WAN_BOUND)

        # Fired on the dc1 client for dc2 (retried until the client's manager has its server).
        async def fire_remote() -> dict[str, Any]:
            return await fire(client1, "/v1/event/fire/deploy?dc=dc2", b"to-dc2")

        fired = await eventually("the fire for dc2 answered", fire_remote, within=20)
        assert fired["Name"] == "deploy" and fired["Version"] == 1
        assert base64.b64decode(fired["Payload"]) == b"to-dc2"

        async def in_dc2() -> list[dict[str, Any]] | None:
            return await events_named(client2, "deploy") or None

        (seen,) = await eventually("dc2's client hears the event", in_dc2, within=GOSSIP_BOUND)
        assert seen["ID"] == fired["ID"]
        assert base64.b64decode(seen["Payload"]) == b"to-dc2"
        assert seen["LTime"] >= 1

        # An event of dc1 itself: dc1's client hears it (so its LAN pool delivers events),
        # and by then it has not heard dc2's, nor has dc2 heard dc1's.
        local = await fire(client1, "/v1/event/fire/local", b"")

        async def in_dc1() -> list[dict[str, Any]] | None:
            return await events_named(client1, "local") or None

        (heard,) = await eventually("dc1's client hears its event", in_dc1, within=GOSSIP_BOUND)
        assert heard["ID"] == local["ID"]
        assert await events_named(client1, "deploy") == []
        assert [e["Name"] for e in await get_json(client1, "/v1/event/list")] == ["local"]
        assert [e["Name"] for e in await get_json(client2, "/v1/event/list")] == ["deploy"]

        # A datacenter nobody knows: the reference's error, nothing fired.
        reply = await http(client1, "PUT", "/v1/event/fire/lost?dc=dc3")
        assert (reply.status, reply.body) == (500, ERR_NO_DC_PATH.encode())
