"""The gossip loop sleeps while there is nothing to gossip, and keeps Go's schedule when woken.

Go's memberlist ticks every gossip interval and sends nothing when no broadcast is queued; ours
waits for a queued broadcast instead (an idle node then wakes only for probes and packets), and
on wake-up goes on at the next tick of the same schedule, so what is queued leaves when Go's
ticker would send it. Driven on the autojump clock over the in-memory network.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from ml_support import Node, alive_names, memory_nodes, wait_until

from agentrpc.gossip.memberlist_schedule import Scheduler
from agentrpc.gossip.profiles import LAN
from agentrpc.gossip.transport import MemoryGossipNetwork

INTERVAL = LAN.gossip_interval


@pytest.fixture
def network() -> MemoryGossipNetwork:
    return MemoryGossipNetwork(rng=random.Random(5))


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


@pytest.fixture
def rounds(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[float]]:
    """When each node's gossip loop ran a round, by node name."""
    seen: dict[str, list[float]] = {}
    original = Scheduler._gossip_once

    async def recorded(self: Scheduler) -> bool:
        seen.setdefault(self._name, []).append(trio.current_time())
        return await original(self)

    monkeypatch.setattr(Scheduler, "_gossip_once", recorded)
    return seen


async def converged(nursery: trio.Nursery, nodes: list[Node]) -> list[Node]:
    for node in nodes:
        await node.start(nursery)
    for node in nodes[1:]:
        assert await node.memberlist.join([str(nodes[0].address)]) == (1, [])
    names = {n.name for n in nodes}
    await wait_until(lambda: all(alive_names(n) == names for n in nodes), timeout=10)
    return nodes


def on_grid(times: list[float], first: float) -> bool:
    """Every time is a whole number of gossip intervals after ``first``."""
    return all(abs((t - first) / INTERVAL - round((t - first) / INTERVAL)) < 1e-6 for t in times)


async def test_an_idle_cluster_runs_no_gossip_rounds(
    autojump_clock: trio.testing.MockClock,
    network: MemoryGossipNetwork,
    nursery: trio.Nursery,
    rounds: dict[str, list[float]],
) -> None:
    nodes = await converged(nursery, memory_nodes(network, 4))
    await trio.sleep(10)  # every join's broadcasts sent their retransmit limit
    before = {n.name: n.memberlist.stats.gossip_rounds for n in nodes}
    probes = {n.name: n.memberlist.stats.probes for n in nodes}
    await trio.sleep(60)
    for node in nodes:
        # Go would have ticked 300 times for nothing; the probes went on meanwhile.
        assert node.memberlist.stats.gossip_rounds == before[node.name], node.name
        assert node.memberlist.stats.probes >= probes[node.name] + 50, node.name
    assert all(alive_names(n) == {m.name for m in nodes} for n in nodes)


async def test_a_broadcast_queued_while_asleep_leaves_on_the_next_tick(
    autojump_clock: trio.testing.MockClock,
    network: MemoryGossipNetwork,
    nursery: trio.Nursery,
    rounds: dict[str, list[float]],
) -> None:
    a, b, c = await converged(nursery, memory_nodes(network, 3))
    await trio.sleep(10)
    times = rounds["node1"]
    first = times[0]
    for attempt in range(5):
        already = len(times)
        await trio.sleep(3.0 + 0.037 * (attempt + 1))  # asleep, mid-interval
        assert len(times) == already
        queued_at = trio.current_time()
        payload = f"news-{attempt}".encode()
        a.delegate.outgoing.append(payload)
        a.memberlist.wake_gossip()
        # The fake delegate gives each message once: it reaches one of the two peers, in the
        # woken round or piggybacked on a probe that went first; the woken round runs either way.
        await wait_until(
            lambda p=payload, n=already: (
                (p in b.delegate.messages or p in c.delegate.messages)  # type: ignore[misc]
                and len(times) > n
            ),
            timeout=2,
        )
        woken = times[already]
        # The first tick of the loop's own schedule after the wake-up: never at once, never
        # an interval late.
        assert queued_at < woken <= queued_at + INTERVAL + 1e-9
        assert on_grid(times[already:], first)


async def test_a_node_alone_does_not_tick_for_broadcasts_nobody_can_receive(
    autojump_clock: trio.testing.MockClock,
    network: MemoryGossipNetwork,
    nursery: trio.Nursery,
    rounds: dict[str, list[float]],
) -> None:
    a, b = memory_nodes(network, 2)
    await a.start(nursery)
    a.delegate.outgoing.append(b"for whoever comes")
    a.memberlist.wake_gossip()
    await trio.sleep(30)
    assert a.memberlist.stats.gossip_rounds <= 2  # one round found nobody, then it slept
    await b.start(nursery)
    assert await b.memberlist.join([str(a.address)]) == (1, [])
    # The join queued news of node2 at node1: that woke the loop, which now has a target.
    await wait_until(lambda: b"for whoever comes" in b.delegate.messages, timeout=2)
