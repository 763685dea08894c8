"""Serf's Lamport clock: a logical clock ordering events, intents and queries in a cluster."""

from __future__ import annotations

__all__ = ["LamportClock"]


class LamportClock:
    """A Lamport clock with serf's rules.

    `increment` advances it and returns the new time; `witness` moves it to one past any
    time seen from another node that is not older than ours.
    """

    __slots__ = ("_counter",)

    def __init__(self, start: int = 0) -> None:
        if start < 0:
            raise ValueError(f"a Lamport time is never negative, got {start}")
        self._counter = start

    def time(self) -> int:
        """The current value."""
        return self._counter

    def increment(self) -> int:
        """Advance by one and return the new value."""
        self._counter += 1
        return self._counter

    def witness(self, other: int) -> None:
        """Take in a time received from another node: if it is not older than ours, we move
        to one past it."""
        if other < 0:
            raise ValueError(f"a Lamport time is never negative, got {other}")
        if other >= self._counter:
            self._counter = other + 1

    def __repr__(self) -> str:
        return f"LamportClock({self._counter})"
