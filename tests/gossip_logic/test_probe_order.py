"""Probe target round-robin and random peer selection."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, strategies as st

from agentrpc.gossip.probe_order import ProbeOrder, ProbeStep, k_random_nodes

NODES = [f"n{i}" for i in range(10)]


def never(_: str) -> bool:
    return False


def test_empty_order() -> None:
    order: ProbeOrder[str] = ProbeOrder(random.Random(1))
    assert order.next_target(never) == ProbeStep(None)
    assert len(order) == 0


def test_a_pass_visits_every_probeable_node_once() -> None:
    order = ProbeOrder(random.Random(1), NODES)
    assert sorted(order) == NODES
    skipped = {"n0", "n3", "n7"}  # say ourselves, a dead node and a left node
    targets = [order.next_target(lambda n: n in skipped).target for _ in range(7)]
    assert sorted(t for t in targets if t is not None) == sorted(set(NODES) - skipped)
    assert [t for t in targets if t is not None] == [n for n in order if n not in skipped]


def test_reshuffle_at_end_of_pass_uses_the_injected_random() -> None:
    rng = random.Random(42)
    order = ProbeOrder(rng, NODES)
    first_pass = list(order)
    assert [order.next_target(never).target for _ in NODES] == first_pass
    assert order.position == len(NODES)
    mirror = random.Random()
    mirror.setstate(rng.getstate())
    expected = first_pass[:]
    mirror.shuffle(expected)
    step = order.next_target(never)
    assert step.new_pass
    assert list(order) == expected
    assert step.target == expected[0]
    assert expected != first_pass


def test_same_seed_same_sequence() -> None:
    def run(seed: int) -> list[str | None]:
        order = ProbeOrder(random.Random(seed), NODES)
        return [order.next_target(never).target for _ in range(35)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_all_skipped_gives_no_target() -> None:
    order = ProbeOrder(random.Random(3), ["self", "dead"])
    step = order.next_target(lambda n: True)
    assert step.target is None
    assert not step.new_pass
    step = order.next_target(lambda n: True)
    assert step.target is None
    assert step.new_pass


def test_wrap_mid_scan_finds_a_node_before_the_position() -> None:
    order = ProbeOrder(random.Random(3), NODES)
    listing = list(order)
    for _ in range(5):
        order.next_target(never)
    # Only a node already passed in this pass is probeable: the walk wraps to find it.
    wanted = listing[0]
    step = order.next_target(lambda n: n != wanted)
    assert step.target == wanted
    assert step.new_pass


def test_reap_at_end_of_pass() -> None:
    order = ProbeOrder(random.Random(9), NODES)
    gone = {"n2", "n5"}
    skip = gone.__contains__
    steps = [order.next_target(skip, reap=skip) for _ in range(8)]
    assert all(not s.reaped and not s.new_pass for s in steps)
    step = order.next_target(skip, reap=skip)
    assert step.new_pass
    assert sorted(step.reaped) == ["n2", "n5"]
    assert sorted(order) == sorted(set(NODES) - gone)
    assert "n2" not in order
    assert step.target is not None and step.target not in gone


def test_reap_can_empty_the_order() -> None:
    order = ProbeOrder(random.Random(9), ["a", "b"])
    order.next_target(never)
    order.next_target(never)
    step = order.next_target(never, reap=lambda n: True)
    assert step == ProbeStep(None, ("a", "b"), True) or step == ProbeStep(None, ("b", "a"), True)
    assert len(order) == 0


def test_add_places_new_node_at_random_and_rejects_duplicates() -> None:
    rng = random.Random(11)
    order = ProbeOrder(rng, ["a", "b", "c"])
    before = list(order)
    mirror = random.Random()
    mirror.setstate(rng.getstate())
    offset = mirror.randrange(4)
    assert order.add("d")
    expected = [*before, "d"]
    expected[offset], expected[3] = expected[3], expected[offset]
    assert list(order) == expected
    assert not order.add("a")
    assert len(order) == 4


def test_node_added_mid_pass_is_probed_by_the_end_of_the_next() -> None:
    order = ProbeOrder(random.Random(2), NODES)
    for _ in range(5):
        order.next_target(never)
    order.add("late")
    targets = [order.next_target(never).target for _ in range(2 * (len(NODES) + 1))]
    assert "late" in targets


def test_discard_keeps_the_walk_in_place() -> None:
    order = ProbeOrder(random.Random(4), NODES)
    listing = list(order)
    visited = [order.next_target(never).target for _ in range(4)]
    assert visited == listing[:4]
    assert order.discard(listing[1])  # behind us
    assert order.discard(listing[6])  # ahead of us
    assert not order.discard("missing")
    rest = [order.next_target(never).target for _ in range(4)]
    assert rest == [listing[4], listing[5], listing[7], listing[8]]
    assert order.next_target(never).target == listing[9]
    assert order.next_target(never).new_pass


@given(
    count=st.integers(min_value=1, max_value=40),
    skipped=st.sets(st.integers(min_value=0, max_value=39)),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_first_passes_cover_every_probeable_node_exactly_once(
    count: int, skipped: set[int], seed: int
) -> None:
    nodes = list(range(count))
    order = ProbeOrder(random.Random(seed), nodes)
    probeable = [n for n in nodes if n not in skipped]
    for _ in range(3):
        targets = [order.next_target(skipped.__contains__).target for _ in probeable]
        assert sorted(t for t in targets if t is not None) == probeable
    if not probeable:
        assert order.next_target(skipped.__contains__).target is None


# --- k random nodes ---------------------------------------------------------------------------


def test_k_random_nodes_basic_rules() -> None:
    rng = random.Random(1)
    picked = k_random_nodes(3, NODES, lambda n: n == "n0", rng=rng)
    assert len(picked) == 3
    assert len(set(picked)) == 3
    assert "n0" not in picked
    assert k_random_nodes(0, NODES, None, rng=rng) == []
    assert k_random_nodes(3, [], None, rng=rng) == []


def test_k_random_nodes_is_exhaustive() -> None:
    rng = random.Random(1)
    eligible = {"n4", "n9"}
    for _ in range(20):
        picked = k_random_nodes(3, NODES, lambda n: n not in eligible, rng=rng)
        assert sorted(picked) == ["n4", "n9"]
    assert sorted(k_random_nodes(50, NODES, None, rng=rng)) == NODES


def test_k_random_nodes_is_deterministic() -> None:
    a = k_random_nodes(4, NODES, None, rng=random.Random(77))
    b = k_random_nodes(4, NODES, None, rng=random.Random(77))
    assert a == b


def test_k_random_nodes_is_uniform() -> None:
    rng = random.Random(2024)
    counts: Counter[str] = Counter()
    for _ in range(10_000):
        counts.update(k_random_nodes(2, NODES, None, rng=rng))
    # 20000 picks over 10 nodes: 2000 each; a uniform sampler stays well within 10%.
    assert set(counts) == set(NODES)
    assert all(1800 < c < 2200 for c in counts.values())


def test_gossip_filter_example() -> None:
    """memberlist's gossip filter: alive, suspect and recently dead nodes are candidates."""
    now = 1000.0
    gossip_to_the_dead = 30.0
    states = {
        "me": ("alive", 0.0),
        "alive": ("alive", 0.0),
        "suspect": ("suspect", 990.0),
        "dead-recent": ("dead", 980.0),
        "dead-old": ("dead", 960.0),
        "left": ("left", 999.0),
    }

    def exclude(name: str) -> bool:
        state, changed = states[name]
        if name == "me":
            return True
        if state in ("alive", "suspect"):
            return False
        if state == "dead":
            return now - changed > gossip_to_the_dead
        return True

    picked = k_random_nodes(10, list(states), exclude, rng=random.Random(0))
    assert sorted(picked) == ["alive", "dead-recent", "suspect"]


@given(
    k=st.integers(min_value=0, max_value=12),
    count=st.integers(min_value=0, max_value=30),
    excluded=st.sets(st.integers(min_value=0, max_value=29)),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_k_random_nodes_properties(k: int, count: int, excluded: set[int], seed: int) -> None:
    nodes = list(range(count))
    picked = k_random_nodes(k, nodes, excluded.__contains__, rng=random.Random(seed))
    eligible = [n for n in nodes if n not in excluded]
    assert len(picked) == min(k, len(eligible))
    assert len(set(picked)) == len(picked)
    assert not set(picked) & excluded
