"""The error texts of hashicorp/raft 1.1.2 (``api.go``, ``replication.go``, ``raft.go``), byte
for byte: the one home of each string the core hands to clients or sends to peers."""

from __future__ import annotations

from typing import Final

ERR_LEADER: Final = "node is the leader"
ERR_NOT_LEADER: Final = "node is not the leader"
ERR_LEADERSHIP_LOST: Final = "leadership lost while committing log"
ERR_ABORTED_BY_RESTORE: Final = "snapshot restored while committing log"
ERR_RAFT_SHUTDOWN: Final = "raft is already shutdown"
ERR_ENQUEUE_TIMEOUT: Final = "timed out enqueuing operation"
ERR_NOTHING_NEW_TO_SNAPSHOT: Final = "nothing new to snapshot"
ERR_UNSUPPORTED_PROTOCOL: Final = "operation not supported with current protocol version"
ERR_CANT_BOOTSTRAP: Final = "bootstrap only works on new clusters"
ERR_LEADERSHIP_TRANSFER_IN_PROGRESS: Final = "leadership transfer in progress"
ERR_LOG_NOT_FOUND: Final = "log not found"
ERR_PIPELINE_REPLICATION_NOT_SUPPORTED: Final = "pipeline replication not supported"
ERR_UNEXPECTED_COMMAND: Final = "unexpected command"

# Transport (net_transport.go).
ERR_TRANSPORT_SHUTDOWN: Final = "transport shutdown"
ERR_PIPELINE_SHUTDOWN: Final = "append pipeline closed"

# Follower and leader texts of raft.go / replication.go.
ERR_SHORT_READ: Final = "short read"
ERR_UNSUPPORTED_SNAPSHOT_VERSION: Final = "unsupported snapshot version {version}"
ERR_NO_SNAPSHOTS: Final = "no snapshots found"
ERR_TRANSFER_TIMEOUT: Final = "leadership transfer timeout"
ERR_TRANSFER_TO_SELF: Final = "cannot transfer leadership to itself"
ERR_TRANSFER_NO_PEER: Final = "cannot find peer"
ERR_TRANSFER_NO_REPLICATION: Final = "cannot find replication state for {id}"
ERR_TIMEOUT_NOW_FAILED: Final = "failed to make TimeoutNow RPC to {id}: {error}"
ERR_SNAPSHOT_CONFIG_PENDING: Final = (
    "cannot take snapshot now, wait until the configuration entry at {committed} has been "
    "applied (have applied {applied})"
)

# Ours: an AppendEntries a correct leader never sends (Go would corrupt its log instead).
ERR_MALFORMED_ENTRIES: Final = "entries are not contiguous after PrevLogEntry"
ERR_COMMITTED_CONFLICT: Final = "refusing to truncate committed log entries"
ERR_BAD_CONFIGURATION_ENTRY: Final = "failed to decode configuration entry"
ERR_RPC_TIMEOUT: Final = "i/o timeout"


class RaftError(Exception):
    """An operation the node refuses; ``str(error)`` is one of the texts above."""
