"""Serf's Lamport clock."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from agentrpc.gossip.lamport import LamportClock


def test_increment_returns_the_new_time() -> None:
    clock = LamportClock()
    assert clock.time() == 0
    assert clock.increment() == 1
    assert clock.increment() == 2
    assert clock.time() == 2


def test_witness_rules() -> None:
    clock = LamportClock()
    clock.witness(5)
    assert clock.time() == 6
    clock.witness(3)  # older: ignored
    assert clock.time() == 6
    clock.witness(6)  # equal: we move one past it
    assert clock.time() == 7
    clock.witness(0)
    assert clock.time() == 7
    assert clock.increment() == 8


def test_start_value_and_repr() -> None:
    clock = LamportClock(41)
    assert clock.increment() == 42
    assert repr(clock) == "LamportClock(42)"


def test_negative_times_are_rejected() -> None:
    with pytest.raises(ValueError):
        LamportClock(-1)
    with pytest.raises(ValueError):
        LamportClock().witness(-1)


@given(st.lists(st.one_of(st.none(), st.integers(min_value=0, max_value=2**64 - 1))))
def test_clock_moves_forward_and_past_what_it_saw(ops: list[int | None]) -> None:
    clock = LamportClock()
    seen = -1
    for op in ops:
        before = clock.time()
        if op is None:
            assert clock.increment() == before + 1
        else:
            clock.witness(op)
            seen = max(seen, op)
        assert clock.time() >= before
        assert clock.time() > seen
