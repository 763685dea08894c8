"""The Lifeguard suspicion timer, as pure state: when a suspected node is to be declared dead.

A suspicion starts at its maximum timeout when independent confirmations are expected, and
shrinks toward the minimum as other nodes confirm the suspicion:
`max - log(c + 1) / log(k + 1) * (max - min)`, rounded down to the millisecond and never below
`min`. With no confirmations expected (k = 0) it is simply `min`. The caller owns the clock:
it passes `now` in, and fires the dead-node transition once `remaining(now) <= 0`.
"""

from __future__ import annotations

import math

from agentrpc.gossip.profiles import GossipProfile

__all__ = ["Suspicion", "expected_confirmations"]


def expected_confirmations(suspicion_mult: int, n: int) -> int:
    """How many independent confirmations (k) to wait for in a cluster of `n` nodes.

    `suspicion_mult - 2`, so that with k confirmations the timer ends two probe intervals
    short of the nominal timeout; 0 when the cluster lacks that many nodes besides ourselves
    and the suspect (`n - 2 < k`).
    """
    k = suspicion_mult - 2
    if n - 2 < k:
        return 0
    return max(0, k)


class Suspicion:
    """Suspicion timer state for one suspected node."""

    __slots__ = ("_confirmed_by", "_deadline", "_k", "_max", "_min", "_start")

    def __init__(
        self, from_node: str, k: int, min_timeout: float, max_timeout: float, start: float
    ) -> None:
        """`from_node` raised the suspicion and never counts as a confirmation (our own
        suspect message may come back to us by gossip)."""
        if k < 0:
            raise ValueError(f"k must not be negative, got {k}")
        if not 0 <= min_timeout <= max_timeout:
            raise ValueError(f"need 0 <= min <= max, got {min_timeout} and {max_timeout}")
        self._k = k
        self._min = min_timeout
        self._max = max_timeout
        self._start = start
        self._confirmed_by = {from_node}
        self._deadline = start + (max_timeout if k > 0 else min_timeout)

    @classmethod
    def for_cluster(cls, profile: GossipProfile, n: int, from_node: str, start: float) -> Suspicion:
        """A suspicion sized for a cluster of `n` nodes (ourselves included) under `profile`."""
        min_timeout, max_timeout = profile.suspicion_timeouts(n)
        k = expected_confirmations(profile.suspicion_mult, n)
        return cls(from_node, k, min_timeout, max_timeout, start)

    @property
    def k(self) -> int:
        """Confirmations that drive the timer down to its minimum."""
        return self._k

    @property
    def min_timeout(self) -> float:
        return self._min

    @property
    def max_timeout(self) -> float:
        return self._max

    @property
    def start(self) -> float:
        return self._start

    @property
    def confirmations(self) -> int:
        """Independent confirmations counted so far (at most k)."""
        return len(self._confirmed_by) - 1

    @property
    def deadline(self) -> float:
        """Absolute time at which the suspect is to be declared dead."""
        return self._deadline

    def remaining(self, now: float) -> float:
        """Seconds left until the deadline; zero or negative once it has passed."""
        return self._deadline - now

    def expired(self, now: float) -> bool:
        return now >= self._deadline

    def confirm(self, from_node: str, now: float) -> bool:
        """Count `from_node`'s confirmation of the suspicion.

        True if it was new information (the caller then re-gossips the suspect message);
        False for a repeated confirmer, the originator, once k confirmations are in, or once
        the timer has expired.
        """
        if self.confirmations >= self._k or from_node in self._confirmed_by:
            return False
        if self.expired(now):
            return False
        self._confirmed_by.add(from_node)
        self._deadline = self._start + self._timeout(self.confirmations)
        return True

    def _timeout(self, confirmations: int) -> float:
        fraction = math.log(confirmations + 1) / math.log(self._k + 1)
        raw = self._max - fraction * (self._max - self._min)
        timeout = math.floor(raw * 1000) / 1000
        return max(self._min, timeout)
