"""The servers of a datacenter as Raft sees them (pure): tags parsed into server facts,
``bootstrap_expect`` decisions, voter changes on join and leave, and autopilot's dead-server
cleanup, which never removes a majority."""

from __future__ import annotations

import ipaddress

from hypothesis import given, strategies as st

from agentrpc.catalog.leader import ServerJoin, ServerLeave, raft_server_id, reconcile_member
from agentrpc.catalog.servers import (
    AddVoter,
    RemoveServer,
    bootstrap_configuration,
    bootstrap_plan,
    dead_servers,
    join_changes,
    leave_changes,
    parse_server,
)
from agentrpc.catalog.state_store import StateStore
from agentrpc.protocol.bodies import Member
from agentrpc.raft.configuration import Configuration, Server, Suffrage


def server(
    name: str,
    index: int,
    *,
    status: str = "alive",
    dc: str = "dc1",
    **tags: str,
) -> Member:
    all_tags = {
        "role": "consul",
        "dc": dc,
        "port": "8300",
        "vsn": "2",
        "raft_vsn": "3",
        "id": f"id-{name}",
        **tags,
    }
    return Member(name, ipaddress.ip_address(f"10.0.0.{index}"), 8301, all_tags, status)


def client(name: str, index: int) -> Member:
    tags = {"role": "node", "dc": "dc1"}
    return Member(name, ipaddress.ip_address(f"10.0.1.{index}"), 8301, tags, "alive")


def config_of(*members: Member) -> Configuration:
    infos = [parse_server(m) for m in members]
    return Configuration.of(Server(i.raft_id, i.address) for i in infos if i is not None)


def test_server_facts_come_from_the_tags() -> None:
    info = parse_server(server("s1", 1, expect="3"))
    assert info is not None
    assert (info.address, info.raft_id, info.expect, info.bootstrap) == (
        "10.0.0.1:8300",
        "id-s1",
        3,
        False,
    )
    # Raft protocol below 3: the address is the ID.
    old = parse_server(server("s2", 2, raft_vsn="2"))
    assert old is not None and old.raft_id == "10.0.0.2:8300"
    assert raft_server_id(server("s2", 2, raft_vsn="2")) == ""
    assert parse_server(client("c1", 1)) is None
    assert parse_server(server("bad", 3, expect="x")) is None


def test_bootstrap_waits_for_expect_servers_then_all_build_the_same_configuration() -> None:
    members = [server("s2", 2, expect="3"), client("c", 1), server("s1", 1, expect="3")]
    waiting = bootstrap_plan(members, datacenter="dc1", expect=3)
    assert waiting.servers is None and not waiting.disable
    members.append(server("s3", 3, expect="3"))
    plans = [
        bootstrap_plan(order, datacenter="dc1", expect=3) for order in (members, members[::-1])
    ]
    assert all(plan.servers is not None for plan in plans)
    configurations = [bootstrap_configuration(plan.servers or ()) for plan in plans]
    assert configurations[0] == configurations[1]
    assert [s.id for s in configurations[0].servers] == ["id-s1", "id-s2", "id-s3"]


def test_bootstrap_ignores_other_datacenters_and_dead_servers() -> None:
    members = [
        server("s1", 1, expect="2"),
        server("s2", 2, expect="2", status="failed"),
        server("x1", 3, expect="2", dc="dc2"),
    ]
    assert bootstrap_plan(members, datacenter="dc1", expect=2).servers is None


def test_bootstrap_refuses_conflicting_expect_and_stops_for_a_bootstrap_node() -> None:
    conflict = bootstrap_plan(
        [server("s1", 1, expect="3"), server("s2", 2, expect="5")], datacenter="dc1", expect=3
    )
    assert conflict.servers is None and "conflicting expect value" in conflict.reason
    assert not conflict.disable
    boot = bootstrap_plan(
        [server("s1", 1, expect="3"), server("s2", 2, bootstrap="1")], datacenter="dc1", expect=3
    )
    assert boot.disable and boot.reason == "Member s2 has bootstrap mode. Expect disabled."


def test_join_adds_a_voter_once_and_replaces_a_stale_entry() -> None:
    s1, s2 = server("s1", 1), server("s2", 2)
    join = ServerJoin("s2", "10.0.0.2:8300", "id-s2")
    changes, refusal = join_changes(config_of(s1), join, local_bootstrap=False)
    assert changes == [AddVoter("id-s2", "10.0.0.2:8300")] and refusal == ""
    assert join_changes(config_of(s1, s2), join, local_bootstrap=False) == ([], "")
    # The same address under an old ID (a server that lost its data_dir): replaced.
    stale = Configuration.of([Server("id-s1", "10.0.0.1:8300"), Server("old", "10.0.0.2:8300")])
    changes, _ = join_changes(stale, join, local_bootstrap=False)
    assert [type(c) for c in changes] == [RemoveServer, AddVoter]
    assert isinstance(changes[0], RemoveServer) and changes[0].id == "old"


def test_two_bootstrap_nodes_are_refused() -> None:
    join = ServerJoin("s2", "10.0.0.2:8300", "id-s2", bootstrap=True)
    changes, refusal = join_changes(config_of(server("s1", 1)), join, local_bootstrap=True)
    assert changes == [] and refusal.startswith("Two nodes are in bootstrap mode")
    changes, refusal = join_changes(
        config_of(server("s1", 1)), join, local_bootstrap=False, bootstrap_members=["s3"]
    )
    assert changes == [] and refusal


def test_reconcile_reports_the_raft_id_and_bootstrap_mode_of_a_joining_server() -> None:
    store = StateStore()
    decisions = reconcile_member(
        store, server("s2", 2, bootstrap="1"), datacenter="dc1", local_node="s1"
    )
    assert decisions[0] == ServerJoin("s2", "10.0.0.2:8300", "id-s2", True)


def test_leave_removes_the_server_but_never_the_local_one() -> None:
    configuration = config_of(server("s1", 1), server("s2", 2))
    leave = ServerLeave("s2", "10.0.0.2:8300", "id-s2")
    assert leave_changes(configuration, leave, local_id="id-s1") == [
        RemoveServer("id-s2", "s2 left")
    ]
    assert leave_changes(configuration, leave, local_id="id-s2") == []
    gone = ServerLeave("s9", "10.0.0.9:8300", "id-s9")
    assert leave_changes(configuration, gone, local_id="id-s1") == []


def test_dead_servers_follow_consuls_minority_rule() -> None:
    three = [server(f"s{i}", i) for i in (1, 2, 3)]
    three[2] = server("s3", 3, status="failed")
    assert dead_servers(config_of(*three), three, datacenter="dc1", local_id="id-s1") == []
    five = [server(f"s{i}", i) for i in range(1, 6)]
    five[4] = server("s5", 5, status="failed")
    removed = dead_servers(config_of(*five), five, datacenter="dc1", local_id="id-s1")
    assert [r.id for r in removed] == ["id-s5"]
    five[3] = server("s4", 4, status="failed")
    assert dead_servers(config_of(*five), five, datacenter="dc1", local_id="id-s1") == []


@given(
    statuses=st.lists(st.sampled_from(["alive", "failed", "left"]), min_size=1, max_size=9),
    local=st.integers(min_value=0, max_value=8),
)
def test_dead_server_cleanup_never_removes_the_leader_or_a_majority(
    statuses: list[str], local: int
) -> None:
    members = [server(f"s{i}", i + 1, status=status) for i, status in enumerate(statuses)]
    configuration = config_of(*members)
    local_id = f"id-s{local % len(members)}"
    removed = dead_servers(configuration, members, datacenter="dc1", local_id=local_id)
    voters = [s for s in configuration.servers if s.suffrage == Suffrage.VOTER]
    assert all(r.id != local_id for r in removed)
    assert len(removed) * 2 < len(voters) or not removed
    failed = {f"id-{m.name}" for m in members if m.status == "failed"}
    assert {r.id for r in removed} <= failed
