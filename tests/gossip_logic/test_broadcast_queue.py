"""The transmit-limited broadcast queue."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings, strategies as st

from agentrpc.gossip.broadcast_queue import Broadcast, BroadcastQueue


class Cluster:
    """A mutable cluster size for the queue's num_nodes callable."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self) -> int:
        return self.n


def make_queue(n: int = 1, mult: int = 4) -> tuple[BroadcastQueue, Cluster]:
    cluster = Cluster(n)
    return BroadcastQueue(mult, cluster), cluster


class Finished:
    """Records which broadcasts were reported finished."""

    def __init__(self) -> None:
        self.done: list[bytes] = []

    def broadcast(self, payload: bytes, name: str | None = None) -> Broadcast:
        return Broadcast(payload, name, lambda: self.done.append(payload))


def test_empty_queue() -> None:
    q, _ = make_queue()
    assert len(q) == 0
    assert q.get_broadcasts(0, 1400) == []
    q.prune(0)
    q.reset()


def test_largest_first_then_newest() -> None:
    q, _ = make_queue()
    q.queue(Broadcast(b"aaa"))
    q.queue(Broadcast(b"bbbbb"))
    q.queue(Broadcast(b"ccc"))
    q.queue(Broadcast(b"d"))
    assert q.get_broadcasts(0, 1400) == [b"bbbbb", b"ccc", b"aaa", b"d"]


def test_byte_budget_with_overhead() -> None:
    q, _ = make_queue()
    for payload in (b"1" * 4, b"2" * 5, b"3" * 2, b"4" * 1):
        q.queue(Broadcast(payload))
    # Budget 12, overhead 2: 5+2 leaves 3 free after the next overhead -> only "33" (2)
    # fits (cost 4), leaving 12-7-4-2 = -1 free.
    assert q.get_broadcasts(2, 12) == [b"22222", b"33"]
    # The other two are still at zero transmits, so they go first next time; then 1 byte
    # is left, too little for anything.
    assert q.get_broadcasts(2, 12) == [b"1111", b"4"]
    # All four have been sent once: largest first again.
    assert q.get_broadcasts(2, 12) == [b"22222", b"33"]
    assert q.get_broadcasts(2, 12) == [b"1111", b"4"]


def test_exact_fit_and_nothing_fits() -> None:
    q, _ = make_queue()
    q.queue(Broadcast(b"x" * 10))
    assert q.get_broadcasts(3, 12) == []
    assert q.get_broadcasts(3, 13) == [b"x" * 10]
    assert q.get_broadcasts(13, 13) == []
    assert q.get_broadcasts(0, 0) == []


def test_fresh_broadcasts_go_before_sent_ones() -> None:
    q, _ = make_queue()
    q.queue(Broadcast(b"old-and-long"))
    assert q.get_broadcasts(0, 100) == [b"old-and-long"]
    q.queue(Broadcast(b"new"))
    assert q.get_broadcasts(0, 100) == [b"new", b"old-and-long"]
    # With room for one only, the least transmitted wins, whatever its size.
    q.queue(Broadcast(b"z"))
    assert q.get_broadcasts(0, 12) == [b"z", b"new"]


def test_each_broadcast_sent_retransmit_limit_times() -> None:
    # n = 1 and mult 4: limit 4.
    q, _ = make_queue(n=1, mult=4)
    seen = Finished()
    q.queue(seen.broadcast(b"a"))
    q.queue(seen.broadcast(b"b"))
    sends = []
    while len(q):
        sends.append(q.get_broadcasts(0, 1400))
    assert sends == [[b"b", b"a"]] * 4
    assert seen.done == [b"b", b"a"]


def test_limit_follows_cluster_size() -> None:
    q, cluster = make_queue(n=10, mult=4)
    assert q.transmit_limit() == 8
    q.queue(Broadcast(b"a"))
    for _ in range(3):
        assert q.get_broadcasts(0, 100) == [b"a"]
    cluster.n = 2  # limit drops to 4: the fourth send is the last
    assert q.get_broadcasts(0, 100) == [b"a"]
    assert len(q) == 0
    # An item already past a lower limit is sent once more, then dropped.
    q.queue(Broadcast(b"b"))
    cluster.n = 100
    for _ in range(6):
        q.get_broadcasts(0, 100)
    cluster.n = 1
    assert q.get_broadcasts(0, 100) == [b"b"]
    assert len(q) == 0


def test_zero_limit_sends_once() -> None:
    q, _ = make_queue(n=0, mult=4)
    q.queue(Broadcast(b"a"))
    assert q.get_broadcasts(0, 100) == [b"a"]
    assert len(q) == 0


def test_named_broadcast_replaces_the_queued_one() -> None:
    q, _ = make_queue()
    seen = Finished()
    q.queue(seen.broadcast(b"alive-1", "node-a"))
    q.queue(seen.broadcast(b"other", "node-b"))
    q.queue(seen.broadcast(b"alive-2", "node-a"))
    assert len(q) == 2
    assert seen.done == [b"alive-1"]
    assert q.get_broadcasts(0, 100) == [b"alive-2", b"other"]


def test_named_replacement_of_a_sent_broadcast() -> None:
    q, _ = make_queue()
    seen = Finished()
    q.queue(seen.broadcast(b"suspect", "node-a"))
    assert q.get_broadcasts(0, 100) == [b"suspect"]
    q.queue(seen.broadcast(b"dead", "node-a"))
    assert seen.done == [b"suspect"]
    assert len(q) == 1
    for _ in range(4):
        assert q.get_broadcasts(0, 100) == [b"dead"]
    assert len(q) == 0
    assert seen.done == [b"suspect", b"dead"]
    # The name is free again once the broadcast is finished.
    q.queue(seen.broadcast(b"alive", "node-a"))
    assert seen.done == [b"suspect", b"dead"]


def test_unnamed_broadcasts_never_replace() -> None:
    q, _ = make_queue()
    q.queue(Broadcast(b"same"))
    q.queue(Broadcast(b"same"))
    q.queue(Broadcast(b"same", ""))
    assert len(q) == 3
    assert q.get_broadcasts(0, 100) == [b"same"] * 3


def test_prune_keeps_what_would_be_sent_first() -> None:
    q, _ = make_queue()
    seen = Finished()
    q.queue(seen.broadcast(b"sent-once-long"))
    q.get_broadcasts(0, 100)
    q.queue(seen.broadcast(b"x", "x"))
    q.queue(seen.broadcast(b"yy"))
    q.queue(seen.broadcast(b"z"))
    q.prune(2)
    assert len(q) == 2
    assert sorted(seen.done) == [b"sent-once-long", b"x"]
    assert q.get_broadcasts(0, 100) == [b"yy", b"z"]
    q.queue(seen.broadcast(b"x2", "x"))  # the pruned name no longer blocks anything
    assert len(q) == 3
    q.prune(5)
    assert len(q) == 3
    with pytest.raises(ValueError):
        q.prune(-1)


def test_reset_finishes_everything() -> None:
    q, _ = make_queue()
    seen = Finished()
    q.queue(seen.broadcast(b"a", "a"))
    q.queue(seen.broadcast(b"b"))
    q.get_broadcasts(0, 2)
    q.queue(seen.broadcast(b"c"))
    q.reset()
    assert len(q) == 0
    assert sorted(seen.done) == [b"a", b"b", b"c"]
    assert q.get_broadcasts(0, 100) == []
    q.queue(seen.broadcast(b"a2", "a"))
    assert len(q) == 1
    assert sorted(seen.done) == [b"a", b"b", b"c"]


def test_finished_callback_may_queue_again() -> None:
    q, _ = make_queue(n=1, mult=1)
    calls: list[str] = []

    def requeue() -> None:
        calls.append("finished")
        q.queue(Broadcast(b"follow-up", "n"))

    q.queue(Broadcast(b"first", "n", requeue))
    assert q.get_broadcasts(0, 100) == [b"first"]
    assert calls == ["finished"]
    assert len(q) == 1
    assert q.get_broadcasts(0, 100) == [b"follow-up"]
    assert len(q) == 0


def test_oversized_broadcast_waits_while_others_flow() -> None:
    q, _ = make_queue(n=1, mult=1)
    q.queue(Broadcast(b"x" * 2000))
    q.queue(Broadcast(b"small"))
    assert q.get_broadcasts(2, 1400) == [b"small"]
    assert len(q) == 1
    assert q.get_broadcasts(2, 1400) == []
    assert q.get_broadcasts(2, 3000) == [b"x" * 2000]


def test_invalid_mult() -> None:
    with pytest.raises(ValueError):
        BroadcastQueue(-1, lambda: 1)


def test_thousands_of_broadcasts_drain_in_order() -> None:
    rng = random.Random(5)
    q, _ = make_queue(n=50, mult=4)  # limit 8
    payloads = [bytes([i % 256]) * rng.randint(1, 300) + i.to_bytes(4, "big") for i in range(5000)]
    for i, payload in enumerate(payloads):
        q.queue(Broadcast(payload, f"node-{i % 3000}"))
    assert len(q) == 3000
    counts: Counter[bytes] = Counter()
    rounds = 0
    while len(q):
        batch = q.get_broadcasts(3, 1400)
        assert sum(len(p) + 3 for p in batch) <= 1400
        counts.update(batch)
        rounds += 1
    assert set(counts.values()) == {8}
    assert set(counts) == set(payloads[2000:])


# --- against a reference model ----------------------------------------------------------------


@dataclass
class RefItem:
    transmits: int
    size: int
    seq: int
    payload: bytes
    name: str | None


class ReferenceQueue:
    """Memberlist's queue semantics written the slow, obvious way: one list kept in send
    order (fewest transmits, largest, newest)."""

    def __init__(self, mult: int, cluster: Cluster) -> None:
        self.mult = mult
        self.cluster = cluster
        self.items: list[RefItem] = []
        self.seq = 0

    def queue(self, payload: bytes, name: str | None) -> None:
        self.seq += 1
        if name:
            self.items = [i for i in self.items if i.name != name]
        self.items.append(RefItem(0, len(payload), self.seq, payload, name))

    def get(self, overhead: int, limit: int) -> list[bytes]:
        if not self.items:
            return []
        n = self.cluster()
        tl = self.mult * len(str(n)) if n > 0 else 0  # ceil(log10(n + 1)) for n >= 1
        out: list[bytes] = []
        used = 0
        held: list[RefItem] = []
        tiers = sorted({i.transmits for i in self.items})
        for t in tiers:
            while True:
                free = limit - used - overhead
                if free <= 0:
                    break
                fits = [i for i in self.items if i.transmits == t and i.size <= free]
                if not fits:
                    break
                best = min(fits, key=lambda i: (-i.size, -i.seq))
                self.items.remove(best)
                out.append(best.payload)
                used += overhead + best.size
                if best.transmits + 1 < tl:
                    best.transmits += 1
                    held.append(best)
            if limit - used - overhead <= 0:
                break
        self.items.extend(held)
        return out

    def prune(self, keep: int) -> None:
        self.items.sort(key=lambda i: (i.transmits, -i.size, -i.seq))
        del self.items[keep:]


operation = st.one_of(
    st.tuples(
        st.just("queue"),
        st.integers(min_value=0, max_value=40),
        st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d"])),
    ),
    st.tuples(
        st.just("get"),
        st.integers(min_value=0, max_value=5),
        st.integers(min_value=0, max_value=120),
    ),
    st.tuples(st.just("nodes"), st.integers(min_value=1, max_value=120), st.none()),
    st.tuples(st.just("prune"), st.integers(min_value=0, max_value=10), st.none()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(operation, max_size=60))
def test_matches_reference_model(ops: list[tuple[str, int, object]]) -> None:
    cluster = Cluster(3)
    q = BroadcastQueue(2, cluster)
    ref = ReferenceQueue(2, cluster)
    for step, (kind, a, b) in enumerate(ops):
        if kind == "queue":
            payload = step.to_bytes(2, "big") + b"p" * a
            name = b if isinstance(b, str) else None
            q.queue(Broadcast(payload, name))
            ref.queue(payload, name)
        elif kind == "get":
            assert isinstance(b, int)
            assert q.get_broadcasts(a, b) == ref.get(a, b)
        elif kind == "nodes":
            cluster.n = a
        else:
            q.prune(a)
            ref.prune(a)
        assert len(q) == len(ref.items)


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=200), min_size=1, max_size=40),
    overhead=st.integers(min_value=0, max_value=10),
    limit=st.integers(min_value=0, max_value=600),
    n=st.integers(min_value=1, max_value=200),
)
def test_never_exceeds_the_budget(sizes: list[int], overhead: int, limit: int, n: int) -> None:
    q, _ = make_queue(n=n)
    for i, size in enumerate(sizes):
        q.queue(Broadcast(i.to_bytes(1, "big") * size))
    for _ in range(5):
        batch = q.get_broadcasts(overhead, limit)
        assert sum(len(p) + overhead for p in batch) <= limit


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=200), min_size=1, max_size=40),
    overhead=st.integers(min_value=0, max_value=10),
    n=st.integers(min_value=1, max_value=2000),
    mult=st.integers(min_value=1, max_value=5),
)
def test_drained_queue_sent_each_exactly_limit_times(
    sizes: list[int], overhead: int, n: int, mult: int
) -> None:
    q, _ = make_queue(n=n, mult=mult)
    seen = Finished()
    payloads = [i.to_bytes(2, "big") + b"x" * size for i, size in enumerate(sizes)]
    for payload in payloads:
        q.queue(seen.broadcast(payload))
    limit_bytes = 202 + overhead  # every broadcast fits on its own
    counts: Counter[bytes] = Counter()
    for _ in range(len(payloads) * q.transmit_limit() + 1):
        if not len(q):
            break
        batch = q.get_broadcasts(overhead, limit_bytes)
        assert batch
        assert len(batch) == len(set(batch))
        counts.update(batch)
    assert len(q) == 0
    assert counts == dict.fromkeys(payloads, q.transmit_limit())
    assert sorted(seen.done) == sorted(payloads)


@given(st.lists(st.tuples(st.sampled_from("abcde"), st.binary(max_size=20)), max_size=40))
def test_one_queued_broadcast_per_name(entries: list[tuple[str, bytes]]) -> None:
    q, _ = make_queue()
    seen = Finished()
    for name, payload in entries:
        q.queue(seen.broadcast(payload, name))
    latest = {name: payload for name, payload in entries}
    assert len(q) == len(latest)
    assert len(seen.done) == len(entries) - len(latest)
    assert sorted(q.get_broadcasts(0, 10_000)) == sorted(latest.values())


def test_many_replacements_in_one_bucket() -> None:
    q, _ = make_queue(n=1, mult=1)
    seen = Finished()
    for i in range(60):
        q.queue(seen.broadcast(b"old%02d" % i, f"n{i}"))
    for i in range(50):
        q.queue(seen.broadcast(b"newer%02d" % i, f"n{i}"))
    assert len(q) == 60
    assert len(seen.done) == 50
    sent = q.get_broadcasts(0, 10_000)
    assert sent == [b"newer%02d" % i for i in reversed(range(50))] + [
        b"old%02d" % i for i in reversed(range(50, 60))
    ]
    assert len(q) == 0


def test_on_queued_runs_after_every_queue_with_the_queue_consistent() -> None:
    """The gossip loop sleeps until this hook: it must fire for every queue (a replacement
    too), and only then, seeing the new broadcast already counted."""
    seen: list[int] = []
    finished = Finished()
    queue = BroadcastQueue(4, Cluster(3), on_queued=lambda: seen.append(len(queue)))
    queue.queue(finished.broadcast(b"a", "node1"))
    queue.queue(finished.broadcast(b"b"))
    queue.queue(finished.broadcast(b"a2", "node1"))  # replaces the first
    assert seen == [1, 2, 2]
    assert finished.done == [b"a"]
    queue.get_broadcasts(0, 1000)
    queue.prune(0)
    queue.reset()
    assert seen == [1, 2, 2]  # taking, pruning and resetting queue nothing
