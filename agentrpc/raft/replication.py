"""A leader's bookkeeping per follower and its commitment rule, pure (hashicorp/raft 1.1.2
``replication.go`` and ``commitment.go``, as state instead of goroutines).

Each follower starts in *probe* mode: one AppendEntries at a time, from ``next_index`` (the
leader's last index + 1 when it took office). A rejection moves ``next_index`` back
(``max(min(prev, LastLog + 1), 1)``, never below ``match_index + 1``) and, unless the follower set
``NoRetryBackoff``, waits ``backoff(10 ms, failures, 12)`` first. The first success switches to
*pipeline* mode (Go's ``AppendEntriesPipeline``): requests go out back to back, up to
``max_pipeline`` in flight, ``next_index`` advancing as they are sent; any failure or rejection
aborts the pipeline (the requests still in flight are forgotten) and falls back to probe mode
from ``match_index + 1``. When the entries a follower needs were compacted away, it gets the
newest snapshot instead (InstallSnapshot), one at a time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .configuration import Server


class Mode(enum.Enum):
    PROBE = "probe"
    PIPELINE = "pipeline"


@dataclass(slots=True)
class PeerReplication:
    server: Server
    next_index: int
    last_contact: float
    """When the follower last answered anything (the leader lease counts these)."""
    match_index: int = 0
    mode: Mode = Mode.PROBE
    epoch: int = 0
    """Bumped when a pipeline aborts: answers to requests of an older epoch are ignored."""
    inflight: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Replication AppendEntries in flight: request id -> (prev index, last index)."""
    failures: int = 0
    retry_at: float = 0.0
    """No replication request before this time (backoff after failures)."""
    commit_sent: int = 0
    """The highest commit index sent to this follower."""
    commit_only_at: float = 0.0
    """An AppendEntries with nothing but a newer commit index waits until then."""
    heartbeat_at: float = 0.0
    heartbeat_inflight: int | None = None
    heartbeat_failures: int = 0
    snapshot_inflight: int | None = None
    read_seq: int | None = None
    """A ReadEntries of the entries this follower needs is outstanding."""
    stop_after: int | None = None
    """Removed from the configuration: replicate through this index (the change that removed
    it), then stop."""


def next_after_reject(peer: PeerReplication, prev_index: int, last_log: int) -> int:
    """Go's ``max(min(nextIndex-1, LastLog+1), 1)``, kept above what the follower matched."""
    return max(min(prev_index, last_log + 1), peer.match_index + 1, 1)


def quorum_match(matches: list[int]) -> int:
    """The highest index a majority of voters store (``commitment.recalculate``): the middle
    of the sorted match indexes, rounding down."""
    if not matches:
        return 0
    ordered = sorted(matches)
    return ordered[(len(ordered) - 1) // 2]
