"""Lifeguard local health awareness: how much to distrust our own timeliness.

The score runs from 0 (healthy) to `max_multiplier - 1`. Failed probes and self-refutations
raise it, successful probes lower it, and the probe interval and timeouts are stretched by
`score + 1`, so that a node that is itself slow stops accusing healthy peers.
"""

from __future__ import annotations

__all__ = ["Awareness"]


class Awareness:
    """The local node's health score."""

    __slots__ = ("_max", "_score")

    def __init__(self, max_multiplier: int = 8) -> None:
        if max_multiplier < 1:
            raise ValueError(f"max_multiplier must be at least 1, got {max_multiplier}")
        self._max = max_multiplier
        self._score = 0

    @property
    def max_multiplier(self) -> int:
        return self._max

    @property
    def score(self) -> int:
        """Current score, 0 (healthy) to `max_multiplier - 1`."""
        return self._score

    def apply_delta(self, delta: int) -> None:
        """Add `delta` to the score, clamped to 0 .. `max_multiplier - 1`."""
        self._score = min(self._max - 1, max(0, self._score + delta))

    def scale_timeout(self, duration: float) -> float:
        """`duration * (score + 1)`."""
        return duration * (self._score + 1)
