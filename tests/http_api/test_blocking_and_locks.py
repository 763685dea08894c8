"""Blocking queries and locks through the HTTP API: a KV wait on one agent woken by a PUT on
another, the wait's timeout, hundreds of long-polls at once, a client that leaves cancelling
its long-poll, CAS races between two clients, a session's TTL expiring and releasing its lock,
and a TTL check going critical (invalidating the session that names it)."""

from __future__ import annotations

import json

import consul
import trio
import trio.testing
from consul.callback import CB
from http_helpers import SERVER, TrioHTTP, blocking, cluster

from agentrpc.transports import MemoryNetwork


def client(env, position: int = 0) -> consul.Consul:
    host, port = env.url(position)
    return consul.Consul(host=host, port=port)


async def test_a_kv_wait_on_one_agent_is_woken_by_a_put_on_another() -> None:
    async with cluster([SERVER, "client-1"]) as env:
        writer, waiter = client(env, 0), client(env, 1)
        await blocking(writer.kv.put, "leader", "a")
        index, _ = await blocking(waiter.kv.get, "leader")
        got: list[tuple[str, dict]] = []

        async def wait() -> None:
            got.append(await blocking(waiter.kv.get, "leader", index=index, wait="30s"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            with trio.fail_after(10):
                await env.catalog.hub.until_waiting(1)
            assert not got  # still blocked
            assert await blocking(writer.kv.put, "leader", "b") is True
        new_index, entry = got[0]
        assert int(new_index) > int(index) and entry["Value"] == b"b"


async def test_a_wait_that_times_out_answers_the_same_index() -> None:
    async with cluster() as env:
        c = client(env)
        await blocking(c.kv.put, "k", "v")
        index, _ = await blocking(c.kv.get, "k")
        again, entry = await blocking(c.kv.get, "k", index=index, wait="50ms")
        assert again == index and entry["Value"] == b"v"


async def test_hundreds_of_long_polls_all_woken_by_one_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    async with cluster(network=network) as env:
        address = env.addresses[0]
        writer = await TrioHTTP.connect(network, address)
        assert (await writer.request("PUT", "/v1/kv/k", b"1")).json() is True
        index = (await writer.request("GET", "/v1/kv/k")).index
        results: list[int] = []

        async def poll() -> None:
            conn = await TrioHTTP.connect(network, address)
            reply = await conn.request("GET", f"/v1/kv/k?index={index}&wait=5m")
            results.append(reply.index)
            await conn.aclose()

        async with trio.open_nursery() as nursery:
            for _ in range(300):
                nursery.start_soon(poll)
            await env.catalog.hub.until_waiting(300)
            assert env.servers[0].stats.connections == 301
            assert (await writer.request("PUT", "/v1/kv/k", b"2")).json() is True
        assert len(results) == 300 and all(r > index for r in results)
        # Unwoken, a long-poll lasts its wait (plus up to 1/16 of jitter), then answers the
        # same index.
        start = trio.current_time()
        reply = await writer.request("GET", f"/v1/kv/k?index={results[0]}&wait=2m")
        assert reply.index == results[0] and 120 <= trio.current_time() - start <= 120 * 17 / 16


async def test_a_client_that_goes_away_cancels_its_long_poll(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    async with cluster(network=network) as env:
        conn = await TrioHTTP.connect(network, env.addresses[0])
        index = (await conn.request("GET", "/v1/kv/k")).index
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.request, "GET", f"/v1/kv/k?index={index}&wait=10m")
            await env.catalog.hub.until_waiting(1)
            nursery.cancel_scope.cancel()
        await conn.stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert env.catalog.hub.waiting == 0
        assert env.servers[0].stats.cancelled_by_client == 1
        assert env.servers[0].stats.connections == 0


async def test_cas_races_between_two_clients_lose_no_update() -> None:
    async with cluster([SERVER, "client-1"]) as env:
        clients = [client(env, 0), client(env, 1)]
        await blocking(clients[0].kv.put, "counter", "0")
        attempts = [0, 0]

        def increment(position: int, times: int) -> None:
            c = clients[position]
            for _ in range(times):
                for _ in range(1000):  # bounded retries
                    _, entry = c.kv.get("counter")
                    attempts[position] += 1
                    value = int(entry["Value"]) + 1
                    if c.kv.put("counter", str(value), cas=entry["ModifyIndex"]):
                        break
                else:
                    raise AssertionError("CAS never succeeded")

        async with trio.open_nursery() as nursery:
            for position in (0, 1):
                nursery.start_soon(blocking, increment, position, 40)
        _, entry = await blocking(clients[0].kv.get, "counter")
        assert entry["Value"] == b"80"
        assert sum(attempts) >= 80


async def test_a_session_ttl_expiry_releases_its_lock() -> None:
    async with cluster(session_ttl_min_ns=1_000_000_000) as env:
        c = client(env)
        create = json.dumps({"ttl": "1s", "lockdelay": "0s", "name": "short"})
        sid = await blocking(c.http.put, CB.json(is_id=True), "/v1/session/create", data=create)
        keep = await blocking(
            c.http.put,
            CB.json(is_id=True),
            "/v1/session/create",
            data=json.dumps({"ttl": "1s", "lockdelay": "0s"}),
        )
        assert await blocking(c.kv.put, "lock", "holder", acquire=sid) is True
        assert await blocking(c.kv.put, "other", "holder", acquire=keep) is True
        index, entry = await blocking(c.kv.get, "lock")
        assert entry["Session"] == sid
        start = trio.current_time()
        while "Session" in entry:  # blocking reads until the leader expired the session
            assert trio.current_time() - start < 20
            await blocking(c.session.renew, keep)
            index, entry = await blocking(c.kv.get, "lock", index=index, wait="500ms")
        assert trio.current_time() - start >= 1.0  # never before the TTL
        assert entry["Value"] == b"holder" and entry["LockIndex"] == 1
        assert (await blocking(c.session.info, sid))[1] is None
        assert (await blocking(c.kv.get, "other"))[1]["Session"] == keep  # renewed: still held


async def test_a_ttl_check_going_critical_invalidates_the_session_that_names_it() -> None:
    async with cluster([SERVER, "client-1"]) as env:
        agent = client(env, 1)
        assert await blocking(
            agent.agent.check.register, "app", check=consul.Check.ttl("1s"), check_id="app"
        )
        assert await blocking(agent.agent.check.ttl_pass, "app", "alive")
        sid = await blocking(agent.session.create, checks=["serfHealth", "app"], lock_delay=0)
        assert await blocking(agent.kv.put, "service/leader", "client-1", acquire=sid) is True
        other = client(env, 0)
        index, checks = await blocking(other.health.node, "client-1")
        start = trio.current_time()
        status = {c["CheckID"]: c for c in checks}["app"]
        assert status["Status"] == "passing"
        while status["Status"] != "critical":
            assert trio.current_time() - start < 20
            index, checks = await blocking(other.health.node, "client-1", index=index, wait="2s")
            status = {c["CheckID"]: c for c in checks}["app"]
        assert status["Output"] == "TTL expired (last output before timeout follows): alive"
        assert (await blocking(agent.agent.checks))["app"]["Status"] == "critical"
        assert (await blocking(other.session.info, sid))[1] is None
        assert "Session" not in (await blocking(other.kv.get, "service/leader"))[1]
