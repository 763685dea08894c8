"""Two datacenters of real ``agentrpc serve`` processes on loopback (issue 14, "done means").

dc1 and dc2 each have 3 servers (``--bootstrap-expect 3``, ``raft_multiplier`` 1) and 2 clients
agent (``--client``, an HTTP API on its own 127.0.0.x address); every server
``--retry-join-wan``s the other datacenter's servers (:mod:`cluster_support`). Everything below
goes through the dc1 client's HTTP API, so through its server manager, then a dc1 server, then
(for ``?dc=dc2``) WAN forwarding to a dc2 server:

* the catalog of dc2 (``/v1/catalog/nodes?dc=dc2``) lists dc2's nodes and none of dc1's;
* a KV write to dc2 (``PUT /v1/kv/x?dc=dc2``) reads back through the dc1 client and through
  dc2's own client, and is not in dc1's KV;
* kill -9 of dc1's leader: a write through the dc1 client succeeds within the hold timeout
  plus an election (a bounded retry loop; the time is printed);
* kill -9 of the server the dc1 client talks to (seen from ``/proc``: the one server port its
  process holds a connection to): its next requests go to the last dc1 server (a stale read,
  and dc2's catalog, which needs no dc1 leader);
* kill -9 of dc2's leader: a write to dc2 through the dc1 client (so through dc1's last
  server and the WAN) succeeds within the hold timeout plus an election, and dc2's client
  reads it.

One client per datacenter (the issue says two): two shared cores run the eight processes.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
from cluster_support import (
    CallErrors,
    Cluster,
    ClusterError,
    Server,
    http,
    kv_get,
    loopback_block,
    process_peers,
    running_clusters,
)

from agentrpc.catalog.raft_consensus import RPC_HOLD_TIMEOUT

T = TypeVar("T")

ELECTION_BOUND: float = 15.0
"""Seconds for the survivors to notice and elect (as tests/cluster/test_raft_servers.py)."""
WAN_BOUND: float = 30.0
"""Seconds from start to each datacenter seeing the other (WAN retry-join every second)."""


async def eventually(
    what: str, attempt: Callable[[], Awaitable[T | None]], *, within: float
) -> tuple[T, float]:
    """Retry ``attempt`` (None, :class:`ClusterError` or one of :data:`CallErrors`: not yet;
    say, a follower's 500 while it still forwards to the dead leader) every 0.2 s until it
    returns a value; that value and the seconds it took. The last failure is in the error."""
    began = trio.current_time()
    last: object = None
    while True:
        try:
            result = await attempt()
        except (*CallErrors, ClusterError) as exc:  # no answer, or an error answer (a 500)
            last = exc
        else:
            if result is not None:
                return result, trio.current_time() - began
            last = "not yet"
        if trio.current_time() - began > within:
            raise ClusterError(f"{what}: not within {within:g} s; last: {last!r}")
        await trio.sleep(0.2)


async def get_json(agent: Server, target: str) -> Any:
    reply = await http(agent, "GET", target)
    if reply.status != 200:
        raise ClusterError(f"GET {target} on {agent.name}: {reply.status} {reply.body[:200]!r}")
    return reply.json()


async def put_kv(agent: Server, target: str, value: bytes, *, within: float = 10.0) -> None:
    reply = await http(agent, "PUT", target, value, within=within)
    if reply.status != 200 or reply.body.strip() != b"true":
        raise ClusterError(f"PUT {target} on {agent.name}: {reply.status} {reply.body[:200]!r}")


async def kv_value(agent: Server, target: str) -> bytes | None:
    """The value at ``target`` (``/v1/kv/KEY?...``); None on 404."""
    reply = await http(agent, "GET", target)
    if reply.status == 404:
        return None
    if reply.status != 200:
        raise ClusterError(f"GET {target} on {agent.name}: {reply.status} {reply.body[:200]!r}")
    entries = reply.json()
    return base64.b64decode(entries[0]["Value"] or "")


async def current_server(client: Server, cluster: Cluster) -> Server:
    """The server the client's manager talks to: after a request through it, the one live
    server port its process holds a connection to."""
    await get_json(client, "/v1/catalog/nodes?stale")
    peers = await trio.to_thread.run_sync(process_peers, client)
    found = [s for s in cluster.live if s.address in peers]
    if len(found) != 1:
        raise ClusterError(f"{client.name} holds connections to {sorted(peers)}; servers {found}")
    return found[0]


async def test_two_datacenters_forward_and_survive_kill_9(tmp_path: Path) -> None:
    ips = loopback_block(10)
    specs = [
        {"size": 3, "clients": 2, "datacenter": dc, "ips": ips[5 * n : 5 * n + 5], "prefix": dc}
        for n, dc in enumerate(("dc1", "dc2"))
    ]
    began = trio.current_time()
    async with running_clusters(tmp_path, specs) as (dc1, dc2):
        dc1.join_wan(dc2)
        dc2.join_wan(dc1)
        for cluster in (dc1, dc2):
            for agent in cluster.servers:
                await cluster.start(agent)
        for cluster in (dc1, dc2):
            await cluster.wait_started(cluster.servers)
            for agent in cluster.clients:
                await cluster.start(agent)
        for cluster in (dc1, dc2):
            await cluster.wait_started(cluster.clients)
        leader1, _ = await dc1.wait_leader(within=30)
        leader2, _ = await dc2.wait_leader(within=30)
        client1, client2 = dc1.clients[0], dc2.clients[0]
        started = trio.current_time() - began

        # The dc1 client knows both datacenters, and reads dc2's catalog.
        async def both_dcs() -> list[str] | None:
            seen = await get_json(client1, "/v1/catalog/datacenters")
            return seen if seen == ["dc1", "dc2"] else None

        await eventually("dc1 sees dc2 over the WAN", both_dcs, within=WAN_BOUND)
        dc2_names = {agent.name for agent in dc2.agents}

        async def dc2_catalog() -> set[str] | None:
            nodes = await get_json(client1, "/v1/catalog/nodes?dc=dc2")
            names = {node["Node"] for node in nodes}
            return names if names == dc2_names else None

        await eventually("dc2's catalog through the dc1 client", dc2_catalog, within=20)
        local = {node["Node"] for node in await get_json(client1, "/v1/catalog/nodes")}
        assert local == {agent.name for agent in dc1.agents}

        # KV of dc2 through the dc1 client: written there, not here.
        await put_kv(client1, "/v1/kv/x?dc=dc2", b"from-dc1")
        assert await kv_value(client1, "/v1/kv/x?dc=dc2") == b"from-dc1"
        assert await kv_value(client2, "/v1/kv/x") == b"from-dc1"
        assert await kv_value(client1, "/v1/kv/x") is None
        # The other client of each datacenter sees the same (routed through its own server).
        assert await kv_value(dc1.clients[1], "/v1/kv/x?dc=dc2") == b"from-dc1"
        assert await kv_value(dc2.clients[1], "/v1/kv/x") == b"from-dc1"

        # kill -9 dc1's leader: a write through the dc1 client goes through after an election.
        await dc1.kill(leader1)
        took_dc1 = await put_kv_after(client1, "dc1-leader")

        # kill -9 the server the dc1 client talks to: it moves to the last one. First both
        # survivors apply that write (a follower learns it is committed from the leader's next
        # append: were the leader killed before that, the last server could not know).
        async def applied_on_both() -> bool | None:
            values = [await kv_get(s, "after-dc1-leader", consistent=False) for s in dc1.live]
            return True if values == [b"written", b"written"] else None

        await eventually("the write applied on both survivors", applied_on_both, within=10)
        current = await current_server(client1, dc1)
        await dc1.kill(current)
        (last,) = dc1.live

        async def stale_read() -> bytes | None:
            return await kv_value(client1, "/v1/kv/after-dc1-leader?stale")

        value, took = await eventually("a stale read after failover", stale_read, within=10)
        assert value == b"written"
        assert await current_server(client1, dc1) is last
        await eventually("dc2's catalog after failover", dc2_catalog, within=10)

        # kill -9 dc2's leader: a write to dc2 through the dc1 client (the last dc1 server
        # forwards over the WAN) goes through after dc2's election.
        await dc2.kill(leader2)
        took_dc2 = await put_kv_after(client1, "dc2-leader", "&dc=dc2")
        assert await kv_value(client2, "/v1/kv/after-dc2-leader") == b"written"
        assert await kv_value(client1, "/v1/kv/after-dc2-leader?stale") is None
        print(
            f"started in {started:.1f} s; writes after the leader kills {took_dc1:.2f} s (dc1), "
            f"{took_dc2:.2f} s (dc2); failover to {last.name} {took:.2f} s; "
            f"whole test {trio.current_time() - began:.1f} s"
        )


async def put_kv_after(client: Server, what: str, query: str = "") -> float:
    """Retry a write through ``client`` (``query``: say ``&dc=dc2``) until it is
    acknowledged, within the hold timeout plus an election from now; reads it back
    (consistent) and returns the seconds it took."""
    bound = RPC_HOLD_TIMEOUT + ELECTION_BOUND
    target = f"/v1/kv/after-{what}?x=1{query}"

    async def write() -> bool | None:
        await put_kv(client, target, b"written", within=RPC_HOLD_TIMEOUT + 3)
        return True

    _, took = await eventually(f"a write after the {what} kill", write, within=bound)
    print(f"write through {client.name} acknowledged {took:.2f} s after the {what} kill")
    assert took < bound

    # Read back (consistent), at the first try: a server that forwards to a dead server of
    # dc2 rotates it to the back and moves on within the same call (a read may be retried).
    value = await kv_value(client, f"{target}&consistent")
    assert value == b"written"
    return took
