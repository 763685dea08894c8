"""The leader's pure decisions: serf member reconciliation (servers, skipping writes the
catalog already agrees with, never deregistering itself), session timers and the tombstone GC
buckets."""

from __future__ import annotations

import ipaddress

from catalog_helpers import Driver
from hypothesis import given, strategies as st

from agentrpc.catalog.leader import (
    CatalogWrite,
    ServerJoin,
    ServerLeave,
    SessionTimers,
    TombstoneGC,
    consul_server_port,
    reconcile_member,
    reconcile_reaped,
)
from agentrpc.catalog.structs import DeregisterRequest, RegisterRequest
from agentrpc.protocol.bodies import Member

SECOND = 1_000_000_000


def member(name: str, status: str = "alive", address: str = "10.0.0.7", **tags: str) -> Member:
    all_tags = {"dc": "dc1", "role": "node", **tags}
    return Member(name, ipaddress.ip_address(address), 8301, all_tags, status)


def server(name: str, status: str = "alive", address: str = "10.0.0.1") -> Member:
    return member(name, status, address, role="consul", port="8300", vsn="2")


def apply(d: Driver, decisions: list[object]) -> None:
    for decision in decisions:
        if isinstance(decision, CatalogWrite):
            request = decision.request
            if isinstance(request, RegisterRequest):
                d.store.ensure_registration(d.next(), request, d.now)
            else:
                assert isinstance(request, DeregisterRequest)
                d.store.delete_node(d.next(), request.node, d.now)


def test_server_tags_parse_as_is_consul_server() -> None:
    assert consul_server_port(server("s")) == 8300
    assert consul_server_port(member("c")) is None
    assert consul_server_port(member("s", role="consul", vsn="2")) is None  # no port
    assert consul_server_port(member("s", role="consul", port="x", vsn="2")) is None
    assert consul_server_port(member("s", role="consul", port="1", vsn="2", expect="y")) is None
    assert consul_server_port(member("s", role="consul", port="1", vsn="2", expect="3")) == 1


def test_alive_server_is_registered_with_the_consul_service_then_left_alone() -> None:
    d = Driver()
    first = reconcile_member(d.store, server("s2"), datacenter="dc1", local_node="s1")
    assert first[0] == ServerJoin("s2", "10.0.0.1:8300")
    write = first[1]
    assert isinstance(write, CatalogWrite) and isinstance(write.request, RegisterRequest)
    assert write.request.service is not None and write.request.service.port == 8300
    assert write.request.checks is not None
    [check] = write.request.checks
    assert (check.check_id, check.status, check.output) == (
        "serfHealth",
        "passing",
        "Agent alive and reachable",
    )
    apply(d, first)
    again = reconcile_member(d.store, server("s2"), datacenter="dc1", local_node="s1")
    assert again == [ServerJoin("s2", "10.0.0.1:8300")]  # the catalog agrees: no write
    # The local server registers itself too, without joining itself.
    mine = reconcile_member(d.store, server("s1"), datacenter="dc1", local_node="s1")
    assert [type(x) for x in mine] == [CatalogWrite]


def test_failed_then_left_then_self() -> None:
    d = Driver()
    apply(d, reconcile_member(d.store, member("c1"), datacenter="dc1", local_node="s1"))
    failed = reconcile_member(d.store, member("c1", "failed"), datacenter="dc1", local_node="s1")
    assert len(failed) == 1 and isinstance(failed[0], CatalogWrite)
    apply(d, failed)
    assert d.store.node_checks("c1")[1][0].status == "critical"
    assert (
        reconcile_member(d.store, member("c1", "failed"), datacenter="dc1", local_node="s1") == []
    )
    # A new address means a new registration even when the status already agrees.
    moved = member("c1", "failed", address="10.0.0.8")
    assert reconcile_member(d.store, moved, datacenter="dc1", local_node="s1")
    left = reconcile_member(d.store, member("c1", "left"), datacenter="dc1", local_node="s1")
    assert [x.request.node for x in left if isinstance(x, CatalogWrite)] == ["c1"]
    apply(d, left)
    assert reconcile_member(d.store, member("c1", "left"), datacenter="dc1", local_node="s1") == []
    # A server that left is also a Raft peer to drop; the leader never deregisters itself.
    apply(d, reconcile_member(d.store, server("s2"), datacenter="dc1", local_node="s1"))
    gone = reconcile_member(d.store, server("s2", "left"), datacenter="dc1", local_node="s1")
    assert gone[0] == ServerLeave("s2", "10.0.0.1:8300") and isinstance(gone[1], CatalogWrite)
    assert reconcile_member(d.store, server("s1", "left"), datacenter="dc1", local_node="s1") == []
    # Other datacenters and other statuses are not ours to reconcile.
    assert reconcile_member(d.store, member("x", dc="dc2"), datacenter="dc1", local_node="s1") == []
    leaving = member("c9", "leaving")
    assert reconcile_member(d.store, leaving, datacenter="dc1", local_node="s1") == []


def test_reaped_nodes_are_those_with_serf_health_serf_forgot() -> None:
    d = Driver()
    for name in ("c1", "c2"):
        apply(d, reconcile_member(d.store, member(name), datacenter="dc1", local_node="s1"))
    apply(d, reconcile_member(d.store, server("s2"), datacenter="dc1", local_node="s1"))
    d.node("external")  # no serfHealth: registered by hand, never reaped
    decisions = reconcile_reaped(d.store, ["c1"], datacenter="dc1", local_node="s1")
    assert ServerLeave("s2", "10.0.0.1:8300") in decisions
    written = sorted(x.request.node for x in decisions if isinstance(x, CatalogWrite))
    assert written == ["c2", "s2"]


def test_session_timers() -> None:
    timers = SessionTimers()
    timers.reset("a", 10 * SECOND, now=0.0)
    timers.reset("b", 15 * SECOND, now=0.0)
    assert timers.next_deadline() == 20.0
    assert timers.reset("a", 10 * SECOND, now=15.0) == 35.0  # renewed
    assert timers.expire(29.9) == []
    assert timers.expire(30.0) == ["b"]
    timers.clear("a")
    assert timers.next_deadline() is None and timers.expire(100.0) == []
    for renewal in range(500):  # renewals never grow the heap without bound
        timers.reset("c", SECOND, now=float(renewal))
    assert len(timers._heap) < 100
    assert timers.expire(1000.0) == ["c"] and len(timers) == 0


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(1, 5), st.floats(0, 50))))
def test_session_timers_expire_exactly_the_due_ones(resets: list[tuple[str, int, float]]) -> None:
    timers = SessionTimers()
    deadlines: dict[str, float] = {}
    for sid, ttl, now in resets:
        deadlines[sid] = timers.reset(sid, ttl * SECOND, now)
    assert sorted(timers.expire(30.0)) == sorted(s for s, t in deadlines.items() if t <= 30.0)
    assert all(timers.deadline(s) == t for s, t in deadlines.items() if t > 30.0)


def test_tombstone_gc_buckets_and_enable() -> None:
    gc = TombstoneGC(ttl=900.0, granularity=30.0)
    gc.hint(5, now=0.0)
    assert gc.pending() == 0  # disabled: only the leader keeps a GC clock
    gc.set_enabled(True)
    gc.hint(5, now=0.0)
    gc.hint(7, now=14.0)  # rounds to the same bucket (900)
    gc.hint(9, now=16.0)  # rounds up to 930
    assert gc.pending() == 2 and gc.next_deadline() == 900.0
    assert gc.expire(899.0) == []
    assert gc.expire(930.0) == [7, 9]
    gc.hint(11, now=1000.0)
    gc.set_enabled(False)
    assert gc.pending() == 0 and gc.next_deadline() is None
