"""In-memory clusters under trio's autojump clock: join, failure detection, leave, restart,
partitions, and the Lifeguard bound on detection time."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from ml_support import Node, alive_names, memory_nodes, wait_until

from agentrpc.gossip.contract import GossipAddress, NodeState
from agentrpc.gossip.profiles import LAN
from agentrpc.gossip.suspicion import expected_confirmations
from agentrpc.gossip.transport import MemoryGossipNetwork

NAMES5 = {f"node{i}" for i in range(1, 6)}
PUSH_PULL_CATCH_UP = 2 * LAN.push_pull_interval + 10
"""Gossip may miss a node; the periodic push/pull then repairs its view. A node's first
push/pull comes after a random stagger of up to one interval plus one interval."""


@pytest.fixture
def network() -> MemoryGossipNetwork:
    return MemoryGossipNetwork(rng=random.Random(7))


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


async def start_cluster(nursery: trio.Nursery, nodes: list[Node]) -> None:
    """Start every node, join each to the first, and wait until all see all alive."""
    for node in nodes:
        await node.start(nursery)
    seed = str(nodes[0].address)
    for node in nodes[1:]:
        assert await node.memberlist.join([seed]) == (1, [])
    names = {node.name for node in nodes}
    await wait_until(lambda: all(alive_names(node) == names for node in nodes), timeout=5)


def lifeguard_detection_bound(n: int) -> float:
    """Worst case, on LAN with healthy survivors, from a crash until every survivor has
    marked the node dead.

    Each survivor walks the other n - 1 nodes in shuffled passes, one per probe interval, so
    it starts a probe of the victim within 2(n - 1) - 1 intervals of the crash, and that
    probe fails one interval later. With at least k = SuspicionMult - 2 survivors besides the
    first suspecter (n - 2 >= k), all k confirmations are in by then, which drives each
    suspicion timer down to its minimum (4 s up to 10 nodes) counted from its start, and the
    first node to declare the death gossips it to the others. One more second covers gossip
    hops (200 ms each).
    """
    interval = LAN.probe_interval
    min_timeout, _ = LAN.suspicion_timeouts(n)
    assert expected_confirmations(LAN.suspicion_mult, n) <= n - 3
    return 2 * (n - 1) * interval + min_timeout + 1.0


async def test_five_nodes_join_and_all_see_five_alive(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    nodes = memory_nodes(network, 5)
    await start_cluster(nursery, nodes)
    for node in nodes:
        assert node.memberlist.num_alive() == 5
        assert {n.name for _, n in node.events.joins} == NAMES5
        assert len(node.events.joins) == 5
        member = {n.name: n for n in node.memberlist.members()}["node3"]
        assert member.address == GossipAddress("127.0.0.3", 7946)
        assert member.meta.startswith(b"\xff")
        assert member.vsn == (1, 5, 2, 2, 5, 4)
    # Quiet afterwards: nobody suspects anybody while everyone is healthy.
    await trio.sleep(30)
    for node in nodes:
        assert node.events.leaves == []
        assert node.memberlist.health_score == 0
        assert "Suspect" not in node.log_text()


async def test_killed_node_is_marked_dead_within_the_lifeguard_bound(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    nodes = memory_nodes(network, 5)
    await start_cluster(nursery, nodes)
    await trio.sleep(3.3)  # let the probe loops get going at arbitrary phases
    victim, survivors = nodes[4], nodes[:4]
    await victim.kill()
    killed_at = trio.current_time()
    bound = lifeguard_detection_bound(5)
    assert bound == pytest.approx(13.0)

    await wait_until(
        lambda: all(node.state_of("node5") == NodeState.DEAD for node in survivors),
        timeout=bound + 5,
    )
    delays = []
    for node in survivors:
        leave = node.events.first_leave("node5")
        assert leave is not None and leave[1].state == NodeState.DEAD
        delays.append(leave[0] - killed_at)
    min_timeout, _ = LAN.suspicion_timeouts(5)
    assert min_timeout <= min(delays)
    print("detection delays", delays)
    assert max(delays) <= bound, delays
    logs = "".join(node.log_text() for node in survivors)
    assert "Suspect node5 has failed, no acks received" in logs
    assert "Marking node5 as failed, suspect timeout reached" in logs
    # Nobody else was accused, and the survivors stay a healthy cluster of four.
    await trio.sleep(20)
    for node in survivors:
        assert [n.name for _, n in node.events.leaves] == ["node5"]
        assert alive_names(node) == NAMES5 - {"node5"}


async def test_lone_survivor_marks_its_peer_dead_after_the_minimum_suspicion(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    """Two nodes: k = 0, so the suspicion is the minimum (4 s) from the failed probe, as
    observed with real serf agents (about 6 s from the crash)."""
    a, b = memory_nodes(network, 2)
    await start_cluster(nursery, [a, b])
    await b.kill()
    killed_at = trio.current_time()
    await wait_until(lambda: a.state_of("node2") == NodeState.DEAD, timeout=20)
    leave = a.events.first_leave("node2")
    assert leave is not None
    delay = leave[0] - killed_at
    # First probe within 2 intervals (1 target per pass), fails after 1, then 4 s.
    assert 4.0 <= delay <= 2 + 1 + 4 + 0.5
    # Failed probes without nack-capable helpers cost health.
    assert a.memberlist.health_score > 0


async def test_graceful_leave_is_seen_as_left_everywhere(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    nodes = memory_nodes(network, 5)
    await start_cluster(nursery, nodes)
    leaver, others = nodes[2], [n for i, n in enumerate(nodes) if i != 2]
    with trio.fail_after(5):
        await leaver.memberlist.leave()
    await wait_until(
        lambda: all(node.state_of("node3") == NodeState.LEFT for node in others), timeout=5
    )
    await leaver.kill()
    await trio.sleep(40)  # long past any suspicion: still left, never failed
    for node in others:
        assert node.state_of("node3") == NodeState.LEFT
        assert [(n.name, n.state) for _, n in node.events.leaves] == [("node3", NodeState.LEFT)]
    assert leaver.state_of("node3") == NodeState.LEFT


async def test_leave_without_peers_returns_at_once(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    (lonely,) = memory_nodes(network, 1)
    await lonely.start(nursery)
    start = trio.current_time()
    await lonely.memberlist.leave()
    await lonely.memberlist.leave()
    assert trio.current_time() == start
    assert lonely.state_of("node1") == NodeState.LEFT


async def test_restarted_node_rejoins_with_a_higher_incarnation(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    nodes = memory_nodes(network, 5)
    await start_cluster(nursery, nodes)
    old = nodes[0].memberlist.node("node5")
    assert old is not None
    await nodes[4].kill()
    await wait_until(
        lambda: all(node.state_of("node5") == NodeState.DEAD for node in nodes[:4]), timeout=20
    )
    dead_incarnation = max(n.memberlist.node("node5").incarnation for n in nodes[:4])  # type: ignore[union-attr]

    reborn = Node("node5", network.transport(), GossipAddress("127.0.0.5", 7946), seed=55)
    await reborn.start(nursery)
    assert reborn.memberlist.node("node5").incarnation == 1  # type: ignore[union-attr]
    assert await reborn.memberlist.join([str(nodes[1].address)]) == (1, [])
    everyone = [*nodes[:4], reborn]
    await wait_until(lambda: all(alive_names(node) == NAMES5 for node in everyone), timeout=10)
    own = reborn.memberlist.node("node5")
    assert own is not None and own.incarnation > dead_incarnation
    for node in nodes[:4]:
        seen = node.memberlist.node("node5")
        assert seen is not None and seen.incarnation == own.incarnation
        assert [n.name for _, n in node.events.joins].count("node5") == 2
    assert "Refuting" in reborn.log_text()


async def test_partition_heals_through_a_join(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    nodes = memory_nodes(network, 5)
    await start_cluster(nursery, nodes)
    left_side, right_side = nodes[:2], nodes[2:]
    network.partition(["127.0.0.1", "127.0.0.2"], ["127.0.0.3", "127.0.0.4", "127.0.0.5"])

    def sides_declared_each_other_dead() -> bool:
        # Dead, or already forgotten (dead nodes are reaped after gossip_to_the_dead_time).
        return all(
            node.state_of(other.name) in (NodeState.DEAD, None)
            for side, others in ((left_side, right_side), (right_side, left_side))
            for node in side
            for other in others
        )

    # Slow on the two-node side: its probes fail whatever the target, the missing nacks
    # stretch its probe interval up to 8 s (Lifeguard), and a suspicion there can get at
    # most one confirmation, so its timer runs close to its 24 s maximum.
    await wait_until(sides_declared_each_other_dead, timeout=120, nodes=nodes)
    for side in (left_side, right_side):
        for node in side:
            assert alive_names(node) == {n.name for n in side}
    network.heal()
    # What serf's reconnect does with failed members: a join across the former divide. The
    # refutations it provokes travel by gossip (dead nodes are still gossiped to for a
    # while); a node that missed them catches up at its next push/pull.
    assert await nodes[0].memberlist.join([str(nodes[2].address)]) == (1, [])
    await wait_until(
        lambda: all(alive_names(node) == NAMES5 for node in nodes),
        timeout=PUSH_PULL_CATCH_UP,
        nodes=nodes,
    )
    await trio.sleep(10)
    for node in nodes:
        assert alive_names(node) == NAMES5


async def test_short_partition_heals_by_itself(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    """Suspicions raised during a partition shorter than the suspicion timeout are refuted
    once packets flow again (or, for a node that missed a refutation, by push/pull)."""
    nodes = memory_nodes(network, 5)
    await start_cluster(nursery, nodes)
    network.partition(["127.0.0.1"], ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"])
    await wait_until(
        lambda: any(node.state_of("node1") == NodeState.SUSPECT for node in nodes[1:]),
        timeout=10,
        nodes=nodes,
    )
    network.heal()
    await wait_until(
        lambda: all(alive_names(node) == NAMES5 for node in nodes),
        timeout=PUSH_PULL_CATCH_UP,
        nodes=nodes,
    )
    own = nodes[0].memberlist.node("node1")
    assert own is not None and own.incarnation > 1  # refuted


async def test_udp_loss_between_two_nodes_is_covered_by_indirect_probes(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    nodes = memory_nodes(network, 4)
    await start_cluster(nursery, nodes)
    network.block("127.0.0.1", "127.0.0.2", streams=False)
    await trio.sleep(30)
    for node in nodes:
        assert node.events.leaves == []
        assert "Suspect" not in node.log_text()
    assert "Failed ping: node2" in nodes[0].log_text()


async def test_node_cut_off_from_udp_stays_alive_through_tcp_fallback_pings(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    nodes = memory_nodes(network, 3)
    await start_cluster(nursery, nodes)
    for other in ("127.0.0.2", "127.0.0.3"):
        network.block("127.0.0.1", other, streams=False)
    await trio.sleep(20)
    for node in nodes:
        assert node.events.leaves == []
        assert alive_names(node) == {"node1", "node2", "node3"}
    assert "Was able to connect to node1 but other probes failed" in nodes[1].log_text()


async def test_cancelling_run_stops_everything_and_frees_the_address(
    autojump_clock: trio.testing.MockClock, network: MemoryGossipNetwork, nursery: trio.Nursery
) -> None:
    a, b = memory_nodes(network, 2)
    await start_cluster(nursery, [a, b])
    # A peer in the middle of a stream when the node goes away.
    stream = await network.transport().dial(GossipAddress("127.0.0.2", 7946))
    await stream.send_all(b"\x06")
    await trio.sleep(0.01)
    with trio.fail_after(1):
        await b.kill()
    with trio.fail_after(1):
        assert await stream.receive_some(100) == b""
    # Nothing of b is left: its address can be bound again and nobody listens on it.
    packets, listener = await network.transport().bind(GossipAddress("127.0.0.2", 7946))
    packets.close()
    await listener.aclose()
    with pytest.raises(OSError):
        await network.transport().dial(GossipAddress("127.0.0.2", 7946))
    with pytest.raises(RuntimeError):
        await b.memberlist.run()
