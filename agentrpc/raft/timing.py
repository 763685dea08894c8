"""Raft's configuration and timing rules, pure (hashicorp/raft 1.1.2 ``config.go``, ``util.go``,
``replication.go``; Consul's scaling of them).

Durations are seconds (floats), as the caller's clock. :class:`RaftConfig` holds Go's
``DefaultConfig`` values and :meth:`RaftConfig.validate` refuses what ``ValidateConfig`` refuses,
with its texts. :meth:`RaftConfig.scaled` is Consul's ``ScaleRaft``: HeartbeatTimeout,
ElectionTimeout and LeaderLeaseTimeout times the ``raft_multiplier`` (CommitTimeout is not
scaled). Consul's default multiplier is 5 and its maximum 10: ``DefaultRaftMultiplier uint = 5``
and ``MaxRaftMultiplier uint = 10`` in hashicorp/consul ``consul/config.go`` (read at commit
0139bbb9634065a4cbed283d8e5826bfb1e2a135, whose ``DefaultConfig`` ends with
``conf.ScaleRaft(DefaultRaftMultiplier)``), which gives 5 s / 5 s / 2.5 s.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Final

PROTOCOL_VERSION_MIN: Final = 0
PROTOCOL_VERSION_MAX: Final = 3
SNAPSHOT_VERSION_MIN: Final = 0
SNAPSHOT_VERSION_MAX: Final = 1
SNAPSHOT_VERSION: Final = 1
"""What the library writes (``getSnapshotVersion``)."""

CONSUL_DEFAULT_RAFT_MULTIPLIER: Final = 5
CONSUL_MAX_RAFT_MULTIPLIER: Final = 10

FAILURE_WAIT: Final = 0.010
"""``failureWait``: the base of the replication backoff."""
MAX_FAILURE_SCALE: Final = 12
MIN_CHECK_INTERVAL: Final = 0.010
"""``minCheckInterval``: the shortest wait between two leader lease checks."""
MAX_PIPELINE: Final = 128
"""``rpcMaxPipeline``: AppendEntries a leader keeps in flight to one follower."""
DEFAULT_TIMEOUT_SCALE: Final = 256 * 1024
"""``DefaultTimeoutScale``: an InstallSnapshot's deadline grows by one RPC timeout per this
many bytes."""
CONSUL_RPC_TIMEOUT: Final = 10.0
"""The NetworkTransport timeout Consul builds its transport with."""


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """The node's configuration: Go's ``raft.Config`` fields that the core uses, plus the
    transport's RPC timeout and the core's own memory bound."""

    local_id: str
    local_address: str
    protocol_version: int = PROTOCOL_VERSION_MAX
    heartbeat_timeout: float = 1.0
    election_timeout: float = 1.0
    commit_timeout: float = 0.050
    max_append_entries: int = 64
    shutdown_on_remove: bool = True
    trailing_logs: int = 10240
    snapshot_interval: float = 120.0
    snapshot_threshold: int = 8192
    leader_lease_timeout: float = 0.5
    rpc_timeout: float = CONSUL_RPC_TIMEOUT
    """How long a request to a peer may stay unanswered before it counts as failed."""
    max_pipeline: int = MAX_PIPELINE
    entry_cache_bytes: int = 8 << 20
    """Log entry data kept in memory for replication and application; older entries are read
    back from the log store on demand."""
    max_append_bytes: int = 4 << 20
    """Entry data one AppendEntries carries at most (at least one entry)."""
    max_pending_changes: int = 64
    """Membership changes a leader queues while an earlier one is not committed yet."""

    def scaled(self, multiplier: int) -> RaftConfig:
        """Consul's ``ScaleRaft``: Go's default heartbeat, election and lease timeouts times
        ``multiplier`` (1..10)."""
        if not 1 <= multiplier <= CONSUL_MAX_RAFT_MULTIPLIER:
            raise ValueError(
                f"raft_multiplier cannot be {multiplier}; must be between 1 and "
                f"{CONSUL_MAX_RAFT_MULTIPLIER}"
            )
        default = RaftConfig(self.local_id, self.local_address)
        return dataclasses.replace(
            self,
            heartbeat_timeout=default.heartbeat_timeout * multiplier,
            election_timeout=default.election_timeout * multiplier,
            leader_lease_timeout=default.leader_lease_timeout * multiplier,
        )

    def validate(self) -> None:
        """``ValidateConfig``: :class:`ValueError` with Go's text."""
        if not 1 <= self.protocol_version <= PROTOCOL_VERSION_MAX:
            raise ValueError(
                f"Protocol version {self.protocol_version} must be >= 1 and "
                f"<= {PROTOCOL_VERSION_MAX}"
            )
        if not self.local_id:
            raise ValueError("LocalID cannot be empty")
        if self.heartbeat_timeout < 0.005:
            raise ValueError("Heartbeat timeout is too low")
        if self.election_timeout < 0.005:
            raise ValueError("Election timeout is too low")
        if self.commit_timeout < 0.001:
            raise ValueError("Commit timeout is too low")
        if self.max_append_entries <= 0:
            raise ValueError("MaxAppendEntries must be positive")
        if self.max_append_entries > 1024:
            raise ValueError("MaxAppendEntries is too large")
        if self.snapshot_interval < 0.005:
            raise ValueError("Snapshot interval is too low")
        if self.leader_lease_timeout < 0.005:
            raise ValueError("Leader lease timeout is too low")
        if self.leader_lease_timeout > self.heartbeat_timeout:
            raise ValueError("Leader lease timeout cannot be larger than heartbeat timeout")
        if self.election_timeout < self.heartbeat_timeout:
            raise ValueError("Election timeout must be equal or greater than Heartbeat Timeout")
        if self.protocol_version < 3 and self.local_id != self.local_address:
            raise ValueError(
                "when running with ProtocolVersion < 3, LocalID must be set to the network address"
            )
        if self.rpc_timeout <= 0 or self.max_pipeline < 1 or self.max_pending_changes < 1:
            raise ValueError("rpc_timeout, max_pipeline and max_pending_changes must be positive")


def random_timeout(rng: random.Random, minimum: float) -> float:
    """``randomTimeout``: a duration from ``minimum`` up to twice it."""
    return minimum + rng.random() * minimum


def backoff(base: float, round_: int, limit: int) -> float:
    """``backoff``: ``base`` doubled for every round above 2, rounds capped at ``limit``."""
    power = min(round_, limit)
    return base * (1 << max(power - 2, 0))


def snapshot_rpc_timeout(timeout: float, size: int) -> float:
    """The InstallSnapshot deadline: ``timeout`` per :data:`DEFAULT_TIMEOUT_SCALE` bytes, never
    less than ``timeout``."""
    return max(timeout, timeout * (size // DEFAULT_TIMEOUT_SCALE))
