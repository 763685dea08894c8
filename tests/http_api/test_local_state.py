"""The agent's local state: anti-entropy repairs the catalog (full sync and sync on change),
output-only changes are deferred, the agent's HTTP and TCP checks run bounded, a service whose
check stays critical is reaped; and the pure state's rules by property."""

from __future__ import annotations

import contextlib
import functools
import random
from typing import Any

import h11
import pytest
import trio
import trio.testing
from http_helpers import SERVER, cluster
from hypothesis import given, strategies as st

from agentrpc.catalog.structs import HealthCheck, NodeService, RegisterRequest
from agentrpc.local_state.agent_state import LocalAgent
from agentrpc.local_state.definitions import parse_check, parse_service
from agentrpc.local_state.probes import check_timeout, http_probe, tcp_probe
from agentrpc.local_state.state import Deregister, LocalState, Register, RemoteState, ae_scale


def catalog_services(env, node: str) -> dict[str, NodeService]:
    found = env.catalog.hub.store.node_services(node)[1]
    return dict(found[1]) if found is not None else {}


def catalog_checks(env, node: str) -> dict[str, HealthCheck]:
    return {c.check_id: c for c in env.catalog.hub.store.node_checks(node)[1]}


async def test_anti_entropy_repairs_what_was_changed_behind_the_agents_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cluster([SERVER, "client-1"], network=_network(), ae_interval=60.0) as env:
        local = env.agents[1].local
        local.add_service(parse_service({"name": "web", "port": 80, "check": {"ttl": "1h"}}))
        await local.sync_changes()
        assert set(catalog_services(env, "client-1")) == {"web"}
        # Someone deregisters our service and registers a stranger on our node, directly.
        await env.agents[0].call("Catalog.Deregister", {"Node": "client-1", "ServiceID": "web"})
        stranger = RegisterRequest(
            node="client-1", address="127.0.0.1", service=NodeService("stranger", "stranger")
        )
        await env.agents[0].call("Catalog.Register", stranger.to_wire())
        assert set(catalog_services(env, "client-1")) == {"stranger"}
        syncs = local.full_syncs
        await trio.sleep(60 * 2 + 1)  # the next full sync: interval plus up to as much stagger
        assert local.full_syncs == syncs + 1
        assert set(catalog_services(env, "client-1")) == {"web"}
        assert "service:web" in catalog_checks(env, "client-1")
        assert "serfHealth" in catalog_checks(env, "client-1")  # the leader's, never removed


async def test_a_change_is_synced_without_waiting_for_the_full_sync(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cluster([SERVER, "client-1"], network=_network()) as env:
        local = env.agents[1].local
        local.add_service(parse_service({"name": "db", "tags": ["primary"], "port": 5432}))
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() < 1  # at once, not at the next full sync
        assert catalog_services(env, "client-1")["db"].tags == ("primary",)
        local.remove_service("db")
        await trio.testing.wait_all_tasks_blocked()
        assert "db" not in catalog_services(env, "client-1")


async def test_output_only_changes_are_deferred_status_changes_are_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cluster([SERVER, "client-1"], network=_network()) as env:
        local = env.agents[1].local
        local.add_check(parse_check({"name": "app", "ttl": "1h"}))
        local.update_ttl("app", "passing", "one")
        await local.sync_changes()
        assert catalog_checks(env, "client-1")["app"].output == "one"
        local.update_ttl("app", "passing", "two")
        await local.sync_changes()
        assert catalog_checks(env, "client-1")["app"].output == "one"  # deferred
        await trio.sleep(300 * 1.5 + 1)  # half the interval plus up to all of it
        assert catalog_checks(env, "client-1")["app"].output == "two"
        local.update_ttl("app", "warning", "three")
        await local.sync_changes()
        assert catalog_checks(env, "client-1")["app"].status == "warning"


class _Target:
    """A loopback HTTP server whose answer the test sets."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b"fine"
        self.requests: list[h11.Request] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError):  # the probe read what it keeps
            await self._handle(stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                self.requests.append(event)
            if isinstance(event, h11.EndOfMessage):
                headers = [("Content-Length", str(len(self.body)))]
                await stream.send_all(
                    conn.send(h11.Response(status_code=self.status, headers=headers))
                    + conn.send(h11.Data(data=self.body))
                    + conn.send(h11.EndOfMessage())
                )
                return


async def test_http_and_tcp_probes_bounded_in_time_and_bytes() -> None:
    target = _Target()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, target.handle, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        url = f"http://127.0.0.1:{port}/health?x=1"
        status, output = await http_probe(url, 5, headers={"X-Probe": ["yes"]})
        assert (status, output) == ("passing", f"HTTP GET {url}: 200 OK Output: fine")
        assert target.requests[0].target == b"/health?x=1"
        headers = dict(target.requests[0].headers)
        assert headers[b"user-agent"] == b"Consul Health Check" and headers[b"x-probe"] == b"yes"
        target.status, target.body = 429, b"slow down"
        assert (await http_probe(url, 5))[0] == "warning"
        target.status, target.body = 503, b"x" * 100_000
        status, output = await http_probe(url, 5)
        assert status == "critical" and len(output) < 4096 + 200
        assert (await tcp_probe(f"127.0.0.1:{port}", 5)) == (
            "passing",
            f"TCP connect 127.0.0.1:{port}: Success",
        )
        nursery.cancel_scope.cancel()
    status, output = await tcp_probe(f"127.0.0.1:{port}", 5)
    assert status == "critical" and "connection refused" in output
    status, output = await http_probe(f"http://127.0.0.1:{port}/", 5)
    assert status == "critical" and output.startswith(f"GET http://127.0.0.1:{port}/: dial tcp")
    assert check_timeout(30, 0) == 10 and check_timeout(5, 0) == 5 and check_timeout(30, 2) == 2


async def test_tcp_probe_reads_a_bracketed_ipv6_target() -> None:
    """``[::1]:port`` dials ::1 (the brackets are not part of the host); a target without a
    port, or with an unclosed bracket, is critical without dialling."""
    accepted = trio.Event()

    async def handle(stream: trio.SocketStream) -> None:
        accepted.set()
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        try:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, handle, 0, host="::1")
            )
        except OSError:
            pytest.skip("no IPv6 loopback on this machine")
        port = listeners[0].socket.getsockname()[1]
        target = f"[::1]:{port}"
        assert await tcp_probe(target, 5) == ("passing", f"TCP connect {target}: Success")
        with trio.fail_after(5):
            await accepted.wait()
        nursery.cancel_scope.cancel()
    for bad in ("[::1]", "[::1", "::1", "[::1]:http"):
        assert await tcp_probe(bad, 5) == (
            "critical",
            f"dial tcp {bad}: missing port in address",
        )


async def until_status(env, check_id: str, status: str) -> None:
    """A blocking health query on client-1's checks until ``check_id`` has ``status`` (the
    check runs in real time, over real sockets)."""
    index = 1
    with trio.fail_after(15):
        while True:
            reply = await env.agents[0].call(
                "Health.NodeChecks",
                {
                    "Datacenter": "dc1",
                    "Node": "client-1",
                    "MinQueryIndex": index,
                    "MaxQueryTime": 5_000_000_000,
                },
            )
            index = reply["Index"]
            checks = {c["CheckID"]: c for c in reply["HealthChecks"] or ()}
            if check_id in checks and checks[check_id]["Status"] == status:
                return


async def test_the_agent_runs_http_checks_and_reaps_a_service_critical_too_long() -> None:
    target = _Target()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, target.handle, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        async with cluster([SERVER, "client-1"]) as env:
            local = env.agents[1].local
            definition = parse_service(
                {
                    "name": "api",
                    "check": {
                        "http": f"http://127.0.0.1:{port}/",
                        "interval": "1s",
                        "DeregisterCriticalServiceAfter": "1s",
                    },
                }
            )
            local.add_service(definition)
            await until_status(env, "service:api", "passing")
            target.status = 500
            await until_status(env, "service:api", "critical")
            since = local.state.critical_since["service:api"]
            assert local.reap(since + 0.5) == []  # not yet past DeregisterCriticalServiceAfter
            assert local.reap(since + 1.1) == ["api"]
            assert "api" not in local.services()
            await local.sync_changes()
            assert "api" not in catalog_services(env, "client-1")
        nursery.cancel_scope.cancel()


async def test_local_agent_run_is_cancelled_cleanly(autojump_clock: trio.testing.MockClock) -> None:
    calls: list[str] = []

    async def call(method: str, args: object) -> object:
        await trio.lowlevel.checkpoint()
        calls.append(method)
        if method == "Catalog.NodeServices":
            return {"NodeServices": None}
        if method == "Health.NodeChecks":
            return {"HealthChecks": None}
        return {}

    local = LocalAgent(LocalState("n1", datacenter="dc1", address="10.0.0.1"), call)
    local.add_check(parse_check({"name": "t", "ttl": "10s"}))
    async with trio.open_nursery() as nursery:
        await nursery.start(local.run)
        await trio.sleep(11)
        assert local.checks()["t"].status == "critical"
        assert local.checks()["t"].output == "TTL expired"
        nursery.cancel_scope.cancel()
    assert calls[:2] == ["Catalog.NodeServices", "Health.NodeChecks"]
    assert "Catalog.Register" in calls


def _network():
    from agentrpc.transports import MemoryNetwork

    return MemoryNetwork()


# ------------------------------------------------------------------ the pure state, by property

names = st.sampled_from(["a", "b", "c", "d"])


@given(
    local=st.sets(names),
    remote=st.sets(names),
    changed=st.sets(names),
)
def test_a_plan_brings_the_catalog_in_line_and_done_settles_it(
    local: set[str], remote: set[str], changed: set[str]
) -> None:
    state = LocalState("n1", datacenter="dc1", address="10.0.0.1")
    for name in sorted(local):
        state.add_service(NodeService(name, name, port=1))
    remote_services = {
        name: NodeService(name, name, port=1 if name not in changed else 2) for name in remote
    }
    state.set_sync_state(RemoteState(None, remote_services, []))
    plan = state.plan()
    registered = {
        a.request.service.id for a in plan if isinstance(a, Register) and a.request.service
    }
    deregistered = {a.service_id for a in plan if isinstance(a, Deregister)}
    assert registered == {name for name in local if name not in remote or name in changed}
    assert deregistered == remote - local
    if not registered:  # the node record is missing remotely: registered on its own
        assert any(isinstance(a, Register) and a.request.service is None for a in plan)
    for action in plan:
        state.done(action)
    assert state.in_sync() and state.plan() == []


@given(st.sets(names, min_size=1))
def test_a_change_during_a_write_keeps_its_entry_out_of_sync(services: set[str]) -> None:
    state = LocalState("n1", datacenter="dc1", address="10.0.0.1")
    for name in sorted(services):
        state.add_service(NodeService(name, name))
    plan = state.plan()
    changed = sorted(services)[0]
    state.add_service(NodeService(changed, changed, port=9))  # while the writes are in flight
    for action in plan:
        state.done(action)
    again = state.plan()
    assert [
        a.request.service.id for a in again if isinstance(a, Register) and a.request.service
    ] == [changed]


@given(st.integers(min_value=1, max_value=100_000))
def test_ae_scale_grows_by_one_interval_per_doubling_past_128(members: int) -> None:
    scaled = ae_scale(60.0, members)
    if members <= 128:
        assert scaled == 60.0
    else:
        assert scaled / 60.0 == int(scaled / 60.0) >= 2
        assert ae_scale(60.0, members * 2) == scaled + 60.0 or members * 2 > 100_000 * 2


async def test_a_deferred_output_syncs_when_due_even_behind_a_later_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The deferral loop sleeps until the earliest deferral and is woken by new ones, so an
    output change due sooner than the one pending is not held back until the later one."""
    registered: list[tuple[float, str]] = []

    async def call(method: str, args: Any) -> object:
        await trio.lowlevel.checkpoint()
        if method == "Catalog.NodeServices":
            return {"NodeServices": None}
        if method == "Health.NodeChecks":
            return {"HealthChecks": None}
        if method == "Catalog.Register":
            for check in args.get("Checks") or ():
                registered.append((trio.current_time(), check["Output"]))
        return {}

    class Staggers(random.Random):
        """Gives the test's staggers, in order, then 0.5."""

        values: tuple[float, ...] = ()

        def random(self) -> float:
            if self.values:
                first, *rest = self.values
                self.values = tuple(rest)
                return first
            return 0.5

    state = LocalState("n1", datacenter="dc1", address="10.0.0.1", check_update_interval=10.0)
    staggers = Staggers(0)
    local = LocalAgent(state, call, ae_interval=1e6, rng=staggers)
    local.add_check(parse_check({"name": "late", "ttl": "1h"}))
    local.add_check(parse_check({"name": "soon", "ttl": "1h"}))
    async with trio.open_nursery() as nursery:
        await nursery.start(local.run)
        await trio.sleep(30)  # the first sync is done
        start = trio.current_time()
        staggers.values = (0.9, 0.0)
        local.update_ttl("late", "critical", "late output")  # due in 5 + 0.9 * 10 s
        await trio.sleep(2)  # the loop now waits for that one
        local.update_ttl("soon", "critical", "soon output")  # due in 5 s: at 7
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    when = {output: at - start for at, output in registered}
    assert 7 <= when["soon output"] < 7.5
    assert 14 <= when["late output"] < 14.5
