"""Choosing peers: the probe round-robin and random peer selection for gossip.

`ProbeOrder` walks the known nodes in a shuffled order, one probe target per probe interval,
skipping nodes the caller says not to probe (ourselves, dead and left nodes). When a pass ends
the list is reshuffled, and nodes the caller wants forgotten (dead longer than the
gossip-to-the-dead time) are removed, as memberlist's resetNodes does. A node that joins is
put at a random place in the list, so that a burst of joins does not delay the next probe of
everyone else.

`k_random_nodes` picks up to k distinct random nodes that a predicate does not exclude, for
indirect pings, gossip and push/pull. memberlist's filters are:

- indirect ping helpers: exclude ourselves, the probe target, and any node not alive;
- gossip targets: exclude ourselves, left nodes, and dead nodes whose state changed more than
  the gossip-to-the-dead time ago (alive, suspect and recently dead nodes are candidates);
- push/pull partner (k = 1): exclude ourselves and any node not alive.

All randomness comes from the `random.Random` passed in.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["ProbeOrder", "ProbeStep", "k_random_nodes"]

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


def k_random_nodes(
    k: int,
    nodes: Sequence[T],
    exclude: Callable[[T], bool] | None,
    *,
    rng: random.Random,
) -> list[T]:
    """Up to `k` distinct entries of `nodes`, in random order, for which `exclude` is false.

    The search is exhaustive: fewer than `k` come back only when fewer than `k` qualify. It
    draws a random permutation lazily, so the cost grows with the entries examined, not with
    `len(nodes)`.
    """
    chosen: list[T] = []
    n = len(nodes)
    # Partial Fisher-Yates shuffle over the indices, storing only the displaced ones.
    displaced: dict[int, int] = {}
    for i in range(n):
        if len(chosen) >= k:
            break
        j = rng.randrange(i, n)
        picked = displaced.get(j, j)
        displaced[j] = displaced.get(i, i)
        node = nodes[picked]
        if exclude is None or not exclude(node):
            chosen.append(node)
    return chosen


@dataclass(frozen=True, slots=True)
class ProbeStep(Generic[K]):
    """Outcome of `ProbeOrder.next_target`.

    `target` is the node to probe now, or None when no node may be probed. `reaped` are the
    nodes removed from the order at the end of a pass; the caller forgets them too.
    `new_pass` says the order was reshuffled during this step.
    """

    target: K | None
    reaped: tuple[K, ...] = ()
    new_pass: bool = False


class ProbeOrder(Generic[K]):
    """The shuffled round-robin of probe targets."""

    __slots__ = ("_index", "_members", "_nodes", "_rng")

    def __init__(self, rng: random.Random, nodes: Iterable[K] = ()) -> None:
        self._rng = rng
        self._nodes: list[K] = []
        self._members: set[K] = set()
        self._index = 0
        for node in nodes:
            self.add(node)

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node: object) -> bool:
        return node in self._members

    def __iter__(self) -> Iterator[K]:
        """The current order (a snapshot)."""
        return iter(list(self._nodes))

    @property
    def position(self) -> int:
        """Index in the current order of the next node to consider."""
        return self._index

    def add(self, node: K) -> bool:
        """Put a new node at a random place in the order; False if it is already there.

        The node that held that place moves to the end of the list.
        """
        if node in self._members:
            return False
        self._members.add(node)
        self._nodes.append(node)
        last = len(self._nodes) - 1
        offset = self._rng.randrange(last + 1)
        self._nodes[offset], self._nodes[last] = self._nodes[last], self._nodes[offset]
        return True

    def discard(self, node: K) -> bool:
        """Remove a node; False if it was not there. The walk continues where it was."""
        if node not in self._members:
            return False
        self._members.remove(node)
        at = self._nodes.index(node)
        del self._nodes[at]
        if at < self._index:
            self._index -= 1
        return True

    def next_target(
        self, skip: Callable[[K], bool], reap: Callable[[K], bool] | None = None
    ) -> ProbeStep[K]:
        """Advance to the next node that `skip` does not reject.

        At the end of a pass the nodes for which `reap` is true are removed and the order is
        reshuffled. The target is None only when no node in the order may be probed: every
        node has then been considered, with at most one reshuffle per call.
        """
        if not self._nodes:
            return ProbeStep(None)
        reaped: list[K] = []
        new_pass = False
        if self._index >= len(self._nodes):
            self._start_pass(reap, reaped)
            new_pass = True
        from_start = self._index == 0
        target = self._scan(skip)
        if target is None and not from_start:
            self._start_pass(reap, reaped)
            new_pass = True
            target = self._scan(skip)
        return ProbeStep(target, tuple(reaped), new_pass)

    def _scan(self, skip: Callable[[K], bool]) -> K | None:
        while self._index < len(self._nodes):
            node = self._nodes[self._index]
            self._index += 1
            if not skip(node):
                return node
        return None

    def _start_pass(self, reap: Callable[[K], bool] | None, reaped: list[K]) -> None:
        if reap is not None:
            kept: list[K] = []
            for node in self._nodes:
                if reap(node):
                    reaped.append(node)
                    self._members.discard(node)
                else:
                    kept.append(node)
            self._nodes = kept
        self._rng.shuffle(self._nodes)
        self._index = 0
