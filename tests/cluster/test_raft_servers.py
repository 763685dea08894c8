"""Real ``agentrpc serve`` server processes under ``kill -9`` (issue 13, "done means").

Each server is its own process on its own 127.0.0.x address with its own ``data_dir`` under
``tmp_path`` and ``raft_multiplier`` 1 (:mod:`cluster_support`). Writers send ``KVS.Apply``
over the server port's msgpack RPC to random servers (followers forward to the leader) and
record each write acknowledged, or indeterminate when it failed. Then:

* 3 servers: kill -9 the leader mid-writes; a new leader within the bound; every acknowledged
  write readable on both survivors; the killed server restarted on its data_dir rejoins and
  catches up to the same contents.
* 5 servers: kill -9 two (the leader and a follower); writes go on with three; both restarted,
  all five converge.
* 3 servers: kill -9 all three at once during writes; restarted, the stores open, a leader is
  elected and every acknowledged write is there.
"""

from __future__ import annotations

import random
from pathlib import Path

import trio
from cluster_support import (
    Cluster,
    ClusterError,
    Server,
    WriteLog,
    call,
    error_lines_of,
    running_cluster,
    wait_converged,
    wait_holding,
    writer,
)

WRITERS = 4
NEW_LEADER_BOUND = 15.0
"""Seconds from the leader's kill -9 to a new leader taking writes. At multiplier 1 a follower
notices after 1-2 s (HeartbeatTimeout, randomized) and an election takes 1-2 s more; split votes
and two loaded cores get the rest."""


async def wait_acked(log: WriteLog, count: int, *, within: float = 20.0) -> None:
    """Until ``count`` more writes were acknowledged than now (the writers make progress)."""
    target = len(log.acked) + count
    with trio.move_on_after(within):
        await log.wait_acked(target)
    if len(log.acked) < target:
        raise ClusterError(
            f"writers stalled: {len(log.acked)} acknowledged, wanted {target} within "
            f"{within:g} s; errors {log.errors}"
        )


def assert_no_errors(cluster: Cluster) -> None:
    """No server logged an error about Raft, its store or snapshots, and no traceback
    (:data:`cluster_support.FATAL_TOPICS`)."""
    for server in cluster.servers:
        bad = error_lines_of(server)
        assert not bad, f"{server.name}'s log: {bad[0]}\n{server.log_tail()}"


def assert_restarted_from_store(server: Server) -> None:
    """The restarted server opened the store it had (not a new one) and did not bootstrap."""
    last_start = server.log_text().rsplit("==== start", 1)[-1]
    assert "raft: log and snapshots under" in last_start, server.log_tail()
    assert "raft store: created" not in last_start, server.log_tail()
    assert "bootstrapped a cluster" not in last_start, server.log_tail()


def start_writers(
    nursery: trio.Nursery, cluster: Cluster, log: WriteLog, count: int = WRITERS
) -> None:
    for number in range(count):
        nursery.start_soon(writer, number, lambda: cluster.live, log)


async def test_three_servers_survive_kill_9_of_the_leader(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, 3) as cluster:
        await cluster.start_all()
        leader, _ = await cluster.wait_leader(within=30)
        log = WriteLog()
        async with trio.open_nursery() as nursery:
            start_writers(nursery, cluster, log)
            await wait_acked(log, 60 + random.randrange(60))
            await cluster.kill(leader)
            acked_before = len(log.acked)
            survivors = cluster.live
            new_leader, took = await cluster.wait_leader(survivors, within=NEW_LEADER_BOUND)
            assert new_leader is not leader
            await wait_acked(log, 60)
            nursery.cancel_scope.cancel()
        print(f"new leader after {took:.2f} s; acked {acked_before} then {len(log.acked)}")

        # Every acknowledged write is on both survivors (their own copies).
        await wait_converged(survivors, log)

        # The killed server, restarted on its data_dir, rejoins and catches up.
        await cluster.start(leader)
        await cluster.wait_started([leader])
        await cluster.wait_leader(cluster.servers)
        contents = await wait_converged(cluster.servers, log)
        assert len(contents) >= len(log.acked) > acked_before
        peers = await call(new_leader, "Status.Peers", {})
        assert sorted(peers) == sorted(s.address for s in cluster.servers)
        assert_restarted_from_store(leader)
        assert_no_errors(cluster)


async def test_five_servers_lose_two_keep_writing_and_converge(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, 5) as cluster:
        await cluster.start_all()
        leader, _ = await cluster.wait_leader(within=30)
        follower = random.choice([s for s in cluster.servers if s is not leader])
        log = WriteLog()
        async with trio.open_nursery() as nursery:
            start_writers(nursery, cluster, log)
            await wait_acked(log, 40 + random.randrange(40))
            await cluster.kill_together([leader, follower])
            three = cluster.live
            _, took = await cluster.wait_leader(three, within=NEW_LEADER_BOUND)
            acked_with_three = len(log.acked)
            await wait_acked(log, 60)  # a quorum of three keeps taking writes
            await wait_holding(three, dict(log.acked))
            await cluster.start(leader)
            await cluster.start(follower)
            await cluster.wait_started([leader, follower])
            await wait_acked(log, 20)
            nursery.cancel_scope.cancel()
        print(f"new leader after {took:.2f} s; {acked_with_three} then {len(log.acked)} acked")

        await cluster.wait_leader(cluster.servers)
        await wait_converged(cluster.servers, log)
        for server in (leader, follower):
            assert_restarted_from_store(server)
        assert_no_errors(cluster)


async def test_kill_9_of_all_three_during_writes_loses_no_acknowledged_write(
    tmp_path: Path,
) -> None:
    async with running_cluster(tmp_path, 3) as cluster:
        await cluster.start_all()
        await cluster.wait_leader(within=30)
        log = WriteLog()
        async with trio.open_nursery() as nursery:
            start_writers(nursery, cluster, log, count=2 * WRITERS)
            await wait_acked(log, 100 + random.randrange(100))
            await cluster.kill_together(cluster.servers)
            nursery.cancel_scope.cancel()
        acked = len(log.acked)

        await cluster.start_all()
        await cluster.wait_leader(within=30)
        await wait_converged(cluster.servers, log)
        for server in cluster.servers:
            assert_restarted_from_store(server)
        assert_no_errors(cluster)
        print(f"{acked} acknowledged, {len(log.indeterminate)} indeterminate, all kept")
