"""A client agent's server list (pure): sync, failure rotation, rebalance, the interval."""

from __future__ import annotations

import random

from hypothesis import given, strategies as st

from agentrpc.catalog.server_list import (
    CLIENT_RPC_MIN_REUSE,
    ServerList,
    rebalance_interval,
)
from agentrpc.catalog.servers import ServerInfo


def server(name: str, port: int = 8300) -> ServerInfo:
    return ServerInfo(
        name=name,
        datacenter="dc1",
        address=f"127.0.0.1:{port}",
        raft_id=name,
        expect=0,
        bootstrap=False,
        status="alive",
    )


A, B, C, D = (server(n, 8300 + i) for i, n in enumerate("abcd"))


def names(servers: ServerList) -> list[str]:
    return [s.name for s in servers.servers]


def test_sync_keeps_order_appends_new_and_drops_gone() -> None:
    servers = ServerList()
    assert servers.offline and servers.first() is None
    change = servers.sync([A, B, C])
    assert change.added == (A, B, C) and not change.removed
    assert not servers.offline
    servers.failed(A)
    assert names(servers) == ["b", "c", "a"]
    change = servers.sync([D, C, A])  # b left, d joined
    assert change.added == (D,) and change.removed == (B,)
    assert names(servers) == ["c", "a", "d"]
    servers.sync([])
    assert servers.first() is None and servers.offline


def test_sync_refreshes_details_in_place() -> None:
    servers = ServerList()
    servers.sync([A, B])
    newer = ServerInfo("a", "dc1", A.address, "a", 3, False, "alive")
    servers.sync([B, newer])
    assert servers.servers == (newer, B)


def test_a_failure_rotates_only_the_front_server() -> None:
    servers = ServerList()
    servers.sync([A, B, C])
    servers.failed(C)  # not in front: reported late, nothing to do
    assert names(servers) == ["a", "b", "c"]
    servers.failed(A)
    servers.failed(A)  # the second report of the same failure changes nothing
    assert names(servers) == ["b", "c", "a"]
    lone = ServerList()
    lone.sync([A])
    lone.failed(A)
    assert names(lone) == ["a"]


def test_rebalance_keeps_the_pinged_order_and_merges_changes() -> None:
    servers = ServerList()
    servers.sync([A, B, C])
    order = servers.rebalance_order(random.Random(7))
    assert sorted(s.name for s in order) == ["a", "b", "c"]
    assert names(servers) == ["a", "b", "c"]  # unchanged until the outcome
    servers.sync([A, B, C, D])  # d joined while the pings ran
    assert servers.rebalanced(order, True)
    assert names(servers) == [s.name for s in order] + ["d"]


def test_rebalance_freezes_when_the_healthy_server_left_meanwhile() -> None:
    servers = ServerList()
    servers.sync([A, B])
    order = [B, A]
    servers.sync([A])
    assert not servers.rebalanced(order, True)
    assert names(servers) == ["a"]


def test_a_rebalance_with_no_answer_marks_the_list_offline() -> None:
    servers = ServerList()
    servers.sync([A, B])
    assert not servers.rebalanced(servers.rebalance_order(random.Random(1)), False)
    assert servers.offline
    assert names(servers) == ["a", "b"]
    servers.sync([A, B, C])  # a new server: worth trying again
    assert not servers.offline


def test_rebalance_interval_has_a_floor_a_stagger_and_scales_with_the_lan() -> None:
    rng = random.Random(3)
    small = [rebalance_interval(3, 10, rng) for _ in range(200)]
    assert all(CLIENT_RPC_MIN_REUSE <= x <= CLIENT_RPC_MIN_REUSE * 1.5 for x in small)
    assert max(small) - min(small) > 30  # the stagger spreads clients out
    # 100,000 members over 5 servers at 64 connections/s each: 312.5 s.
    assert rebalance_interval(5, 100_000, rng) == 100_000 / (5 * 64)
    assert CLIENT_RPC_MIN_REUSE <= rebalance_interval(0, 100_000, rng) <= 180


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("sync"), st.sets(st.sampled_from("abcdef"))),
            st.tuples(st.just("fail"), st.integers(0, 5)),
            st.tuples(st.just("rebalance"), st.integers(0, 2**32)),
        ),
        max_size=40,
    )
)
def test_the_list_is_always_the_synced_set_without_duplicates(
    ops: list[tuple[str, object]],
) -> None:
    by_name = {n: server(n, 8300 + i) for i, n in enumerate("abcdef")}
    servers = ServerList()
    current: set[str] = set()
    for op, arg in ops:
        if op == "sync":
            assert isinstance(arg, set)
            current = set(arg)
            servers.sync(by_name[n] for n in sorted(current))
        elif op == "fail":
            assert isinstance(arg, int)
            listed = servers.servers
            if listed:
                before = names(servers)
                servers.failed(listed[arg % len(listed)])
                after = names(servers)
                assert sorted(after) == sorted(before)
                if arg % len(listed) == 0 and len(listed) > 1:
                    assert after == before[1:] + before[:1]
        else:
            assert isinstance(arg, int)
            order = servers.rebalance_order(random.Random(arg))
            servers.rebalanced(order, True)
        assert sorted(names(servers)) == sorted(current)
        assert len(set(names(servers))) == len(servers)
        assert (servers.first() is None) == (not current)
