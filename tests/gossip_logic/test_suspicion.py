"""The Lifeguard suspicion timer: confirmations, deadlines, and k for a cluster size."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from agentrpc.gossip.profiles import LAN, LOCAL, WAN
from agentrpc.gossip.suspicion import Suspicion, expected_confirmations

START = 100.0


@pytest.mark.parametrize(
    ("mult", "n", "k"),
    [
        (4, 0, 0),
        (4, 1, 0),
        (4, 3, 0),
        (4, 4, 2),
        (4, 1000, 2),
        (6, 5, 0),
        (6, 6, 4),
        (3, 2, 0),
        (3, 3, 1),
        (2, 100, 0),
        (1, 100, 0),
        (0, 0, 0),
    ],
)
def test_expected_confirmations(mult: int, n: int, k: int) -> None:
    assert expected_confirmations(mult, n) == k


def test_lan_without_enough_peers_uses_min() -> None:
    s = Suspicion.for_cluster(LAN, 3, "a", START)
    assert s.k == 0
    assert (s.min_timeout, s.max_timeout) == (4.0, 24.0)
    assert s.deadline == START + 4.0
    assert not s.confirm("b", START + 1.0)
    assert s.deadline == START + 4.0


def test_lan_confirmations_shrink_to_min() -> None:
    s = Suspicion.for_cluster(LAN, 5, "a", START)
    assert s.k == 2
    assert s.deadline == START + 24.0
    assert s.remaining(START + 2.0) == 22.0
    assert s.confirm("b", START + 1.0)
    assert s.confirmations == 1
    # 24 - log(2)/log(3) * 20 = 11.3814..., rounded down to the millisecond.
    assert s.deadline - START == pytest.approx(11.381, abs=1e-9)
    assert s.confirm("c", START + 2.0)
    assert s.deadline == START + 4.0
    # k reached: further confirmations are not news.
    assert not s.confirm("d", START + 3.0)
    assert s.confirmations == 2
    assert s.deadline == START + 4.0


def test_wan_confirmation_steps() -> None:
    s = Suspicion.for_cluster(WAN, 10, "a", START)
    assert (s.k, s.min_timeout, s.max_timeout) == (4, 30.0, 180.0)
    steps = [s.deadline - START]
    for peer in "bcde":
        assert s.confirm(peer, START)
        steps.append(s.deadline - START)
    assert steps == pytest.approx([180.0, 115.398, 77.609, 50.797, 30.0], abs=1e-9)


def test_local_single_confirmation() -> None:
    s = Suspicion.for_cluster(LOCAL, 3, "a", START)
    assert (s.k, s.deadline) == (1, START + 18.0)
    assert s.confirm("b", START)
    assert s.deadline == START + 3.0


def test_duplicates_and_originator_do_not_count() -> None:
    s = Suspicion.for_cluster(LAN, 10, "origin", START)
    assert not s.confirm("origin", START)
    assert s.confirm("b", START)
    assert not s.confirm("b", START + 0.5)
    assert s.confirmations == 1
    assert s.deadline - START == pytest.approx(11.381, abs=1e-9)


def test_elapsed_time_counts_against_the_new_timeout() -> None:
    s = Suspicion.for_cluster(LAN, 10, "a", START)
    assert s.confirm("b", START + 5.0)
    assert s.remaining(START + 5.0) == pytest.approx(6.381, abs=1e-9)
    assert s.confirm("c", START + 5.0)
    # The minimum already passed from the start: the caller fires at once.
    assert s.remaining(START + 5.0) == -1.0
    assert s.expired(START + 5.0)


def test_no_confirmation_after_expiry() -> None:
    s = Suspicion.for_cluster(LAN, 10, "a", START)
    assert s.expired(START + 24.0)
    assert not s.expired(START + 23.999)
    assert not s.confirm("b", START + 24.0)
    assert s.confirmations == 0
    assert s.deadline == START + 24.0


def test_direct_construction_and_validation() -> None:
    s = Suspicion("a", 3, 2.0, 10.0, 0.0)
    assert (s.start, s.k, s.deadline) == (0.0, 3, 10.0)
    assert s.confirm("b", 0.0)
    assert s.deadline == 6.0  # 10 - log 2 / log 4 * 8 = 10 - 0.5 * 8
    with pytest.raises(ValueError):
        Suspicion("a", -1, 1.0, 2.0, 0.0)
    with pytest.raises(ValueError):
        Suspicion("a", 1, 3.0, 2.0, 0.0)
    with pytest.raises(ValueError):
        Suspicion("a", 1, -1.0, 2.0, 0.0)


def test_equal_min_and_max() -> None:
    s = Suspicion("a", 2, 5.0, 5.0, 0.0)
    assert s.deadline == 5.0
    assert s.confirm("b", 1.0)
    assert s.deadline == 5.0


@given(
    k=st.integers(min_value=0, max_value=8),
    min_timeout=st.floats(min_value=0.001, max_value=100.0),
    stretch=st.integers(min_value=1, max_value=10),
    confirmers=st.lists(st.sampled_from("abcdefghijkl"), max_size=30),
)
def test_deadline_never_rises_and_stays_in_bounds(
    k: int, min_timeout: float, stretch: int, confirmers: list[str]
) -> None:
    max_timeout = min_timeout * stretch
    s = Suspicion("a", k, min_timeout, max_timeout, START)
    previous = s.deadline
    assert previous == START + (max_timeout if k else min_timeout)
    for peer in confirmers:
        s.confirm(peer, START)
        assert s.deadline <= previous
        assert s.deadline >= START + min_timeout
        previous = s.deadline
    distinct = len(set(confirmers) - {"a"})
    assert s.confirmations == min(k, distinct)
    if k and distinct >= k:
        assert s.deadline == START + min_timeout
