"""A transmit-limited broadcast queue: which gossip messages ride on the next packet.

Behaves like hashicorp/memberlist's TransmitLimitedQueue. Every queued broadcast is sent
`retransmit_limit(mult, n)` times and then dropped. Each call to `get_broadcasts` fills a byte
budget starting with the least-transmitted broadcasts; within the same transmit count it takes
the largest that still fits, and among equal sizes the newest. A named broadcast (memberlist
names its alive/suspect/dead messages after the node they are about) replaces any queued one
with the same name; unnamed broadcasts never replace anything.

Broadcasts are opaque bytes here. `finished` callbacks run when a broadcast leaves the queue
(sent for the last time, replaced, pruned or reset), after the queue is consistent again, so a
callback may queue new broadcasts. The `on_queued` callback runs after every `queue`, also with
the queue consistent: it is how a gossip loop that sleeps while nothing is queued learns that
there is something to send.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

from agentrpc.gossip.profiles import retransmit_limit

__all__ = ["Broadcast", "BroadcastQueue"]


@dataclass(frozen=True, slots=True)
class Broadcast:
    """One message to gossip.

    `name` (usually the node the message is about) makes it replace any queued broadcast of the
    same name; None or an empty name means it replaces nothing. `finished` is called once when
    the queue lets go of it.
    """

    payload: bytes
    name: str | None = None
    finished: Callable[[], None] | None = field(default=None, compare=False)


@dataclass(slots=True, eq=False)
class _Entry:
    broadcast: Broadcast
    size: int
    seq: int
    transmits: int
    queued: bool = True  # False once replaced or pruned while still in a heap


class _Bucket:
    """Entries of one transmit count and one size: a max-heap on seq, with lazy deletion."""

    __slots__ = ("heap", "live")

    def __init__(self) -> None:
        self.heap: list[tuple[int, _Entry]] = []
        self.live = 0


class _Tier:
    """Entries of one transmit count, bucketed by size; `sizes` is sorted."""

    __slots__ = ("buckets", "sizes")

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.buckets: dict[int, _Bucket] = {}


def _order_key(entry: _Entry) -> tuple[int, int, int]:
    """Sending order: fewest transmits, then largest, then newest."""
    return (entry.transmits, -entry.size, -entry.seq)


class BroadcastQueue:
    """Broadcasts waiting to be piggybacked on gossip and probe packets."""

    __slots__ = (
        "_count",
        "_names",
        "_num_nodes",
        "_on_queued",
        "_retransmit_mult",
        "_seq",
        "_tiers",
    )

    def __init__(
        self,
        retransmit_mult: int,
        num_nodes: Callable[[], int],
        *,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        """`num_nodes` gives the current cluster size estimate, read on each
        `get_broadcasts` to compute the retransmit limit; `on_queued` is called after each
        `queue` (it must not raise)."""
        if retransmit_mult < 0:
            raise ValueError(f"retransmit_mult must not be negative, got {retransmit_mult}")
        self._retransmit_mult = retransmit_mult
        self._on_queued = on_queued
        self._num_nodes = num_nodes
        self._tiers: dict[int, _Tier] = {}
        self._names: dict[str, _Entry] = {}
        self._count = 0
        self._seq = 0

    def __len__(self) -> int:
        return self._count

    def transmit_limit(self) -> int:
        """How many times each broadcast is sent at the current cluster size."""
        return retransmit_limit(self._retransmit_mult, self._num_nodes())

    def queue(self, broadcast: Broadcast) -> None:
        """Add a broadcast, replacing a queued one with the same name."""
        self._seq += 1
        entry = _Entry(broadcast, len(broadcast.payload), self._seq, 0)
        replaced: _Entry | None = None
        if broadcast.name:
            replaced = self._names.get(broadcast.name)
            if replaced is not None:
                self._detach(replaced)
            self._names[broadcast.name] = entry
        self._insert(entry)
        if replaced is not None:
            _notify([replaced])
        if self._on_queued is not None:
            self._on_queued()

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        """Payloads to send now, each costing `len(payload) + overhead` out of `limit` bytes.

        Each one returned has been counted as transmitted once more; those that reached the
        transmit limit have left the queue.
        """
        if self._count == 0:
            return []
        transmit_limit = self.transmit_limit()
        chosen: list[bytes] = []
        used = 0
        promoted: list[_Entry] = []
        done: list[_Entry] = []
        # Entries moved to the next tier are held back until the end, so no broadcast is
        # returned twice by one call.
        for transmits in sorted(self._tiers):
            tier = self._tiers.get(transmits)
            while tier is not None:
                free = limit - used - overhead
                if free <= 0:
                    break
                index = bisect.bisect_right(tier.sizes, free) - 1
                if index < 0:
                    break
                entry = self._take(tier, tier.sizes[index])
                chosen.append(entry.broadcast.payload)
                used += overhead + entry.size
                if entry.transmits + 1 >= transmit_limit:
                    self._forget_name(entry)
                    done.append(entry)
                else:
                    entry.transmits += 1
                    promoted.append(entry)
                tier = self._tiers.get(transmits)
            if limit - used - overhead <= 0:
                break
        for entry in promoted:
            self._insert(entry)
        _notify(done)
        return chosen

    def prune(self, max_retain: int) -> None:
        """Keep only the `max_retain` broadcasts that would be sent first; drop the rest."""
        if max_retain < 0:
            raise ValueError(f"max_retain must not be negative, got {max_retain}")
        if self._count <= max_retain:
            return
        ordered = sorted(self._live_entries(), key=_order_key)
        dropped = ordered[max_retain:]
        for entry in dropped:
            self._detach(entry)
            self._forget_name(entry)
        _notify(dropped)

    def reset(self) -> None:
        """Drop every broadcast, calling their `finished` callbacks."""
        dropped = sorted(self._live_entries(), key=_order_key)
        self._tiers.clear()
        self._names.clear()
        self._count = 0
        self._seq = 0
        _notify(dropped)

    def _live_entries(self) -> list[_Entry]:
        return [
            entry
            for tier in self._tiers.values()
            for bucket in tier.buckets.values()
            for _, entry in bucket.heap
            if entry.queued
        ]

    def _insert(self, entry: _Entry) -> None:
        tier = self._tiers.get(entry.transmits)
        if tier is None:
            tier = self._tiers[entry.transmits] = _Tier()
        bucket = tier.buckets.get(entry.size)
        if bucket is None:
            bucket = tier.buckets[entry.size] = _Bucket()
            bisect.insort(tier.sizes, entry.size)
        heapq.heappush(bucket.heap, (-entry.seq, entry))
        bucket.live += 1
        entry.queued = True
        self._count += 1

    def _take(self, tier: _Tier, size: int) -> _Entry:
        """Remove and return the newest queued entry of `size` in `tier`."""
        bucket = tier.buckets[size]
        while True:
            _, entry = heapq.heappop(bucket.heap)
            if entry.queued:
                break
        bucket.live -= 1
        self._count -= 1
        if bucket.live == 0:
            self._drop_bucket(entry.transmits, tier, size)
        return entry

    def _detach(self, entry: _Entry) -> None:
        """Remove a queued entry wherever it sits; its heap slot is reclaimed lazily."""
        tier = self._tiers[entry.transmits]
        bucket = tier.buckets[entry.size]
        entry.queued = False
        bucket.live -= 1
        self._count -= 1
        if bucket.live == 0:
            self._drop_bucket(entry.transmits, tier, entry.size)
        elif len(bucket.heap) > 2 * bucket.live + 16:
            bucket.heap = [item for item in bucket.heap if item[1].queued]
            heapq.heapify(bucket.heap)

    def _drop_bucket(self, transmits: int, tier: _Tier, size: int) -> None:
        del tier.buckets[size]
        del tier.sizes[bisect.bisect_left(tier.sizes, size)]
        if not tier.sizes:
            del self._tiers[transmits]

    def _forget_name(self, entry: _Entry) -> None:
        name = entry.broadcast.name
        if name and self._names.get(name) is entry:
            del self._names[name]


def _notify(entries: list[_Entry]) -> None:
    for entry in entries:
        if entry.broadcast.finished is not None:
            entry.broadcast.finished()
