"""Gossip timing profiles (LAN, WAN, LOCAL) and the formulas that scale them with cluster size.

A `GossipProfile` holds every timing and tuning knob of the gossip layer, with durations in
float seconds. The three presets carry the defaults of hashicorp/memberlist's
`DefaultLANConfig`, `DefaultWANConfig` and `DefaultLocalConfig`, so a pool built on them
behaves like a real serf agent on the same network.

The module-level functions are the cluster-size formulas of memberlist's util.go. They are
pure; the suspicion timeout reproduces Go's integer-nanosecond arithmetic so that the values
match a Go peer's to the nanosecond.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

__all__ = [
    "LAN",
    "LOCAL",
    "PROFILES",
    "PUSH_PULL_SCALE_THRESHOLD",
    "WAN",
    "GossipProfile",
    "push_pull_scale",
    "retransmit_limit",
    "suspicion_timeout",
]

# Cluster size above which the push/pull interval starts to grow (memberlist's
# pushPullScaleThreshold): the 33rd node doubles it, the 65th triples it.
PUSH_PULL_SCALE_THRESHOLD: Final = 32

_NS_PER_SECOND: Final = 1_000_000_000


def _to_ns(seconds: float) -> int:
    return round(seconds * _NS_PER_SECOND)


def _suspicion_timeout_ns(suspicion_mult: int, n: int, interval: float) -> int:
    node_scale = max(1.0, math.log10(max(1, n)))
    # Go keeps three decimals of the scale, then works in integer nanoseconds.
    return suspicion_mult * int(node_scale * 1000) * _to_ns(interval) // 1000


def suspicion_timeout(suspicion_mult: int, n: int, interval: float) -> float:
    """Minimum suspicion timeout, in seconds, for a cluster of `n` nodes.

    `suspicion_mult * max(1, log10(max(1, n))) * interval`: 4 s on LAN up to 10 nodes.
    """
    return _suspicion_timeout_ns(suspicion_mult, n, interval) / _NS_PER_SECOND


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many times a broadcast is sent in a cluster of `n` nodes.

    `retransmit_mult * ceil(log10(n + 1))`: 4 on LAN for 1 to 9 nodes, 8 for 10 to 99.
    """
    return retransmit_mult * math.ceil(math.log10(max(0, n) + 1))


def push_pull_scale(interval: float, n: int) -> float:
    """The push/pull interval for `n` nodes: unchanged up to 32, then multiplied by
    `ceil(log2(n) - log2(32)) + 1` (x2 for 33-64 nodes, x3 for 65-128, ...)."""
    if n <= PUSH_PULL_SCALE_THRESHOLD:
        return interval
    multiplier = math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1
    return multiplier * interval


@dataclass(frozen=True, slots=True, kw_only=True)
class GossipProfile:
    """Timing and tuning of one gossip pool; durations are float seconds."""

    name: str
    # Failure detection.
    probe_interval: float
    probe_timeout: float
    indirect_checks: int
    suspicion_mult: int
    suspicion_max_timeout_mult: int
    awareness_max_multiplier: int = 8
    disable_tcp_pings: bool = False
    # Dissemination. A zero gossip or push/pull interval disables that loop.
    gossip_interval: float
    gossip_nodes: int
    gossip_to_the_dead_time: float
    retransmit_mult: int
    push_pull_interval: float
    # Transport and buffers.
    tcp_timeout: float
    handoff_queue_depth: int = 1024
    udp_buffer_size: int = 1400
    enable_compression: bool = True
    # Zero means a dead node's name can never be taken over by another address.
    dead_node_reclaim_time: float = 0.0

    def __post_init__(self) -> None:
        positive = {
            "probe_interval": self.probe_interval,
            "probe_timeout": self.probe_timeout,
            "tcp_timeout": self.tcp_timeout,
            "suspicion_mult": self.suspicion_mult,
            "suspicion_max_timeout_mult": self.suspicion_max_timeout_mult,
            "awareness_max_multiplier": self.awareness_max_multiplier,
            "handoff_queue_depth": self.handoff_queue_depth,
            "udp_buffer_size": self.udp_buffer_size,
        }
        non_negative = {
            "gossip_interval": self.gossip_interval,
            "gossip_nodes": self.gossip_nodes,
            "gossip_to_the_dead_time": self.gossip_to_the_dead_time,
            "retransmit_mult": self.retransmit_mult,
            "push_pull_interval": self.push_pull_interval,
            "indirect_checks": self.indirect_checks,
            "dead_node_reclaim_time": self.dead_node_reclaim_time,
        }
        for field, value in positive.items():
            if not value > 0:
                raise ValueError(f"{field} must be positive, got {value!r}")
        for field, value in non_negative.items():
            if not value >= 0:
                raise ValueError(f"{field} must not be negative, got {value!r}")

    def suspicion_timeouts(self, n: int) -> tuple[float, float]:
        """(min, max) suspicion timeouts in seconds for a cluster of `n` nodes."""
        min_ns = _suspicion_timeout_ns(self.suspicion_mult, n, self.probe_interval)
        max_ns = self.suspicion_max_timeout_mult * min_ns
        return min_ns / _NS_PER_SECOND, max_ns / _NS_PER_SECOND

    def retransmit_limit(self, n: int) -> int:
        """How many times each broadcast is sent in a cluster of `n` nodes."""
        return retransmit_limit(self.retransmit_mult, n)

    def push_pull_interval_for(self, n: int) -> float:
        """The push/pull interval scaled for a cluster of `n` nodes."""
        return push_pull_scale(self.push_pull_interval, n)


LAN: Final = GossipProfile(
    name="lan",
    probe_interval=1.0,
    probe_timeout=0.5,
    indirect_checks=3,
    suspicion_mult=4,
    suspicion_max_timeout_mult=6,
    gossip_interval=0.2,
    gossip_nodes=3,
    gossip_to_the_dead_time=30.0,
    retransmit_mult=4,
    push_pull_interval=30.0,
    tcp_timeout=10.0,
)

WAN: Final = GossipProfile(
    name="wan",
    probe_interval=5.0,
    probe_timeout=3.0,
    indirect_checks=3,
    suspicion_mult=6,
    suspicion_max_timeout_mult=6,
    gossip_interval=0.5,
    gossip_nodes=4,
    gossip_to_the_dead_time=60.0,
    retransmit_mult=4,
    push_pull_interval=60.0,
    tcp_timeout=30.0,
)

LOCAL: Final = GossipProfile(
    name="local",
    probe_interval=1.0,
    probe_timeout=0.2,
    indirect_checks=1,
    suspicion_mult=3,
    suspicion_max_timeout_mult=6,
    gossip_interval=0.1,
    gossip_nodes=3,
    gossip_to_the_dead_time=15.0,
    retransmit_mult=2,
    push_pull_interval=15.0,
    tcp_timeout=1.0,
)

PROFILES: Final[Mapping[str, GossipProfile]] = MappingProxyType(
    {profile.name: profile for profile in (LAN, WAN, LOCAL)}
)
