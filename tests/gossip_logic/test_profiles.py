"""Gossip profiles: memberlist's preset values and the cluster-size formulas."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, strategies as st

from agentrpc.gossip.profiles import (
    LAN,
    LOCAL,
    PROFILES,
    PUSH_PULL_SCALE_THRESHOLD,
    WAN,
    GossipProfile,
    push_pull_scale,
    retransmit_limit,
    suspicion_timeout,
)

# (field, LAN, WAN, LOCAL), from the spec's timing table.
TABLE = [
    ("probe_interval", 1.0, 5.0, 1.0),
    ("probe_timeout", 0.5, 3.0, 0.2),
    ("suspicion_mult", 4, 6, 3),
    ("suspicion_max_timeout_mult", 6, 6, 6),
    ("gossip_interval", 0.2, 0.5, 0.1),
    ("gossip_nodes", 3, 4, 3),
    ("gossip_to_the_dead_time", 30.0, 60.0, 15.0),
    ("push_pull_interval", 30.0, 60.0, 15.0),
    ("tcp_timeout", 10.0, 30.0, 1.0),
    ("indirect_checks", 3, 3, 1),
    ("retransmit_mult", 4, 4, 2),
]

COMMON = {
    "awareness_max_multiplier": 8,
    "handoff_queue_depth": 1024,
    "udp_buffer_size": 1400,
    "enable_compression": True,
    "disable_tcp_pings": False,
    "dead_node_reclaim_time": 0.0,
}


@pytest.mark.parametrize(("field", "lan", "wan", "local"), TABLE)
def test_preset_timing_table(field: str, lan: float, wan: float, local: float) -> None:
    assert getattr(LAN, field) == lan
    assert getattr(WAN, field) == wan
    assert getattr(LOCAL, field) == local


@pytest.mark.parametrize("profile", [LAN, WAN, LOCAL], ids=lambda p: p.name)
def test_preset_common_values(profile: GossipProfile) -> None:
    for field, value in COMMON.items():
        assert getattr(profile, field) == value, field


def test_every_field_is_in_the_tests() -> None:
    names = {f.name for f in dataclasses.fields(GossipProfile)}
    assert names == {"name"} | {row[0] for row in TABLE} | set(COMMON)


def test_profiles_by_name() -> None:
    assert dict(PROFILES) == {"lan": LAN, "wan": WAN, "local": LOCAL}
    with pytest.raises(TypeError):
        PROFILES["other"] = LAN  # type: ignore[index]


def test_profile_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        LAN.probe_interval = 2.0  # type: ignore[misc]


def test_replace_keeps_the_rest() -> None:
    fast = dataclasses.replace(LAN, name="fast", probe_interval=0.1)
    assert fast.probe_interval == 0.1
    assert fast.suspicion_mult == 4
    assert LAN.probe_interval == 1.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("probe_interval", 0.0),
        ("probe_timeout", -1.0),
        ("tcp_timeout", 0.0),
        ("suspicion_mult", 0),
        ("suspicion_max_timeout_mult", 0),
        ("awareness_max_multiplier", 0),
        ("handoff_queue_depth", 0),
        ("udp_buffer_size", 0),
        ("gossip_interval", -0.1),
        ("gossip_nodes", -1),
        ("gossip_to_the_dead_time", -1.0),
        ("retransmit_mult", -1),
        ("push_pull_interval", -1.0),
        ("indirect_checks", -1),
        ("dead_node_reclaim_time", -1.0),
        ("probe_interval", float("nan")),
    ],
)
def test_invalid_values_are_rejected(field: str, value: float) -> None:
    changes: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(LAN, **changes)


def test_zero_disables_gossip_and_push_pull() -> None:
    quiet = dataclasses.replace(LAN, gossip_interval=0.0, push_pull_interval=0.0)
    assert quiet.gossip_interval == 0.0
    assert quiet.push_pull_interval == 0.0


# --- suspicion timeout -----------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 10])
def test_lan_suspicion_small_cluster(n: int) -> None:
    assert suspicion_timeout(4, n, 1.0) == 4.0
    assert LAN.suspicion_timeouts(n) == (4.0, 24.0)


@pytest.mark.parametrize("n", [1, 4, 10])
def test_wan_suspicion_small_cluster(n: int) -> None:
    assert suspicion_timeout(6, n, 5.0) == 30.0
    assert WAN.suspicion_timeouts(n) == (30.0, 180.0)


def test_local_suspicion_small_cluster() -> None:
    assert LOCAL.suspicion_timeouts(10) == (3.0, 18.0)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (11, 4.164),  # log10(11) = 1.04139..., Go keeps 1.041
        (50, 6.792),  # log10(50) = 1.69897...
        (100, 8.0),
        (1000, 12.0),
    ],
)
def test_lan_suspicion_scales_with_log10(n: int, expected: float) -> None:
    assert suspicion_timeout(4, n, 1.0) == expected


def test_suspicion_max_is_mult_times_min() -> None:
    assert LAN.suspicion_timeouts(50) == (6.792, 40.752)
    assert WAN.suspicion_timeouts(100) == (60.0, 360.0)
    assert WAN.suspicion_timeouts(11) == (31.23, 187.38)


@given(st.integers(min_value=0, max_value=100_000))
def test_suspicion_timeout_grows_with_n(n: int) -> None:
    assert suspicion_timeout(4, n, 1.0) <= suspicion_timeout(4, n + 1, 1.0)
    assert suspicion_timeout(4, n, 1.0) >= 4.0


# --- retransmit limit ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mult", "n", "expected"),
    [
        (4, 0, 0),
        (4, 1, 4),
        (4, 2, 4),
        (4, 9, 4),
        (4, 10, 8),
        (4, 99, 8),
        (4, 100, 12),
        (4, 999, 12),
        (4, 1000, 16),
        (4, 9999, 16),
        (4, 10_000, 20),
        (2, 3, 2),
        (2, 10, 4),
    ],
)
def test_retransmit_limit(mult: int, n: int, expected: int) -> None:
    assert retransmit_limit(mult, n) == expected


def test_profile_retransmit_limit() -> None:
    assert LAN.retransmit_limit(5) == 4
    assert WAN.retransmit_limit(50) == 8
    assert LOCAL.retransmit_limit(5) == 2


@given(st.integers(min_value=0, max_value=1_000_000))
def test_retransmit_limit_is_monotone(n: int) -> None:
    assert retransmit_limit(4, n) <= retransmit_limit(4, n + 1)


# --- push/pull scaling -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, 30.0),
        (1, 30.0),
        (32, 30.0),
        (33, 60.0),
        (64, 60.0),
        (65, 90.0),
        (128, 90.0),
        (129, 120.0),
        (256, 120.0),
        (1000, 180.0),
    ],
)
def test_push_pull_scale_lan(n: int, expected: float) -> None:
    assert push_pull_scale(30.0, n) == expected
    assert LAN.push_pull_interval_for(n) == expected


def test_push_pull_scale_wan_and_local() -> None:
    assert WAN.push_pull_interval_for(33) == 120.0
    assert WAN.push_pull_interval_for(128) == 180.0
    assert LOCAL.push_pull_interval_for(64) == 30.0
    assert PUSH_PULL_SCALE_THRESHOLD == 32


@given(st.integers(min_value=0, max_value=1_000_000))
def test_push_pull_scale_is_a_whole_multiple(n: int) -> None:
    scaled = push_pull_scale(30.0, n)
    assert scaled >= 30.0
    assert scaled % 30.0 == 0.0
    assert scaled <= push_pull_scale(30.0, n + 1)
