"""The Lifeguard health score."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from agentrpc.gossip.awareness import Awareness


def test_starts_healthy() -> None:
    a = Awareness()
    assert (a.score, a.max_multiplier) == (0, 8)
    assert a.scale_timeout(1.0) == 1.0


def test_score_rails_at_both_ends() -> None:
    a = Awareness(8)
    for _ in range(10):
        a.apply_delta(1)
    assert a.score == 7
    assert a.scale_timeout(1.0) == 8.0
    a.apply_delta(-3)
    assert a.score == 4
    a.apply_delta(-20)
    assert a.score == 0


def test_score_five_stretches_the_probe_interval_to_six_seconds() -> None:
    # Observed on a real serf agent: health_score 5 with the LAN 1 s probe interval.
    a = Awareness(8)
    a.apply_delta(5)
    assert a.scale_timeout(1.0) == 6.0
    assert a.scale_timeout(0.5) == 3.0


def test_multiplier_one_never_scales() -> None:
    a = Awareness(1)
    a.apply_delta(4)
    assert a.score == 0
    assert a.scale_timeout(2.5) == 2.5


def test_invalid_max() -> None:
    with pytest.raises(ValueError):
        Awareness(0)


@given(
    max_multiplier=st.integers(min_value=1, max_value=16),
    deltas=st.lists(st.integers(min_value=-10, max_value=10), max_size=50),
)
def test_score_matches_clamped_model(max_multiplier: int, deltas: list[int]) -> None:
    a = Awareness(max_multiplier)
    model = 0
    for delta in deltas:
        a.apply_delta(delta)
        model = min(max_multiplier - 1, max(0, model + delta))
        assert a.score == model
        assert a.scale_timeout(3.0) == 3.0 * (model + 1)
