"""The catalog's wire constants, once: Raft message types, operation names, health statuses,
error texts and limits, as Consul 0.7 defines them (``consul/structs/structs.go``,
``consul/state``, ``consul/rpc.go``, ``consul/leader.go``, ``consul/config.go``).

Durations are int64 nanoseconds, as ``time.Duration`` is on the wire; ``*_S`` names are the
seconds the Trio layer sleeps. Pure: no I/O, no trio.
"""

from __future__ import annotations

import enum
from typing import Final

from ..protocol.constants import ERR_PERMISSION_DENIED

__all__ = [
    "ERR_PERMISSION_DENIED",
    "MessageType",
]

SECOND_NS: Final = 1_000_000_000
MINUTE_NS: Final = 60 * SECOND_NS
HOUR_NS: Final = 60 * MINUTE_NS
MAX_INT64: Final = (1 << 63) - 1


class MessageType(enum.IntEnum):
    """``structs.MessageType``: the first byte of every Raft command and snapshot record.
    Values must never be renumbered (they are in logs and snapshots)."""

    REGISTER = 0
    DEREGISTER = 1
    KVS = 2
    SESSION = 3
    ACL = 4
    TOMBSTONE = 5
    COORDINATE_BATCH_UPDATE = 6
    PREPARED_QUERY = 7
    TXN = 8


IGNORE_UNKNOWN_TYPE_FLAG: Final = 128
"""Set on a message type that an older server may skip when it does not know it."""

# ------------------------------------------------------------------ operations

KVS_SET: Final = "set"
KVS_DELETE: Final = "delete"
KVS_DELETE_CAS: Final = "delete-cas"
KVS_DELETE_TREE: Final = "delete-tree"
KVS_CAS: Final = "cas"
KVS_LOCK: Final = "lock"
KVS_UNLOCK: Final = "unlock"
KVS_OPS: Final = frozenset(
    {KVS_SET, KVS_DELETE, KVS_DELETE_CAS, KVS_DELETE_TREE, KVS_CAS, KVS_LOCK, KVS_UNLOCK}
)

SESSION_CREATE: Final = "create"
SESSION_DESTROY: Final = "destroy"
SESSION_RELEASE: Final = "release"
"""Behavior: an invalidated session's locks are released (the default)."""
SESSION_DELETE: Final = "delete"
"""Behavior: an invalidated session's locked keys are deleted."""

TOMBSTONE_REAP: Final = "reap"

HEALTH_ANY: Final = "any"
HEALTH_PASSING: Final = "passing"
HEALTH_WARNING: Final = "warning"
HEALTH_CRITICAL: Final = "critical"
HEALTH_MAINTENANCE: Final = "maintenance"
"""Not a stored status: the aggregate of a node or service under maintenance (agent side)."""
NODE_MAINTENANCE_CHECK_ID: Final = "_node_maintenance"
SERVICE_MAINTENANCE_PREFIX: Final = "_service_maintenance:"

# ------------------------------------------------------------------ the leader's registrations

SERF_CHECK_ID: Final = "serfHealth"
SERF_CHECK_NAME: Final = "Serf Health Status"
SERF_CHECK_ALIVE_OUTPUT: Final = "Agent alive and reachable"
SERF_CHECK_FAILED_OUTPUT: Final = "Agent not live or unreachable"
CONSUL_SERVICE_ID: Final = "consul"
CONSUL_SERVICE_NAME: Final = "consul"

# ------------------------------------------------------------------ limits and timings

MAX_LOCK_DELAY_NS: Final = 60 * SECOND_NS
"""``structs.MaxLockDelay``: a session's LockDelay above this is not respected."""
SESSION_TTL_MAX_NS: Final = 24 * HOUR_NS
SESSION_TTL_MIN_NS: Final = 10 * SECOND_NS
"""``config.SessionTTLMin``'s default."""
SESSION_TTL_MULTIPLIER: Final = 2
"""The leader expires a session after TTL x this (the client's grace period)."""

MAX_QUERY_TIME_NS: Final = 600 * SECOND_NS
"""``maxQueryTime``: a blocking query's MaxQueryTime is clamped to this."""
DEFAULT_QUERY_TIME_NS: Final = 300 * SECOND_NS
"""``defaultQueryTime``: a MaxQueryTime of 0 (or less) means this."""
JITTER_FRACTION: Final = 16
"""A blocking query waits up to MaxQueryTime / 16 longer (``lib.RandomStagger``)."""

TOMBSTONE_TTL_S: Final = 15 * 60.0
"""``config.TombstoneTTL``: how long a KV tombstone is kept before the leader reaps it."""
TOMBSTONE_GRANULARITY_S: Final = 30.0
"""``config.TombstoneTTLGranularity``: expirations are bucketed to this."""
RECONCILE_INTERVAL_S: Final = 60.0
"""``config.ReconcileInterval``: the leader's full serf-to-catalog reconciliation period."""

# ------------------------------------------------------------------ tables

TABLE_NODES: Final = "nodes"
TABLE_SERVICES: Final = "services"
TABLE_CHECKS: Final = "checks"
TABLE_KVS: Final = "kvs"
TABLE_TOMBSTONES: Final = "tombstones"
TABLE_SESSIONS: Final = "sessions"
TABLES: Final = (
    TABLE_NODES,
    TABLE_SERVICES,
    TABLE_CHECKS,
    TABLE_KVS,
    TABLE_TOMBSTONES,
    TABLE_SESSIONS,
)

# ------------------------------------------------------------------ error texts

ERR_NO_LEADER: Final = "No cluster leader"
ERR_NO_DC_PATH: Final = "No path to datacenter"
ERR_NO_SERVERS: Final = "No known Consul servers"

# state store
ERR_MISSING_NODE: Final = "Missing node registration"
ERR_MISSING_SERVICE: Final = "Missing service registration"
ERR_MISSING_SESSION_ID: Final = "Missing session ID"

# endpoints
ERR_MUST_PROVIDE_NODE_AND_ADDRESS: Final = "Must provide node and address"
ERR_MUST_PROVIDE_SERVICE_NAME_WITH_ID: Final = "Must provide service name with ID"
ERR_MUST_PROVIDE_NODE: Final = "Must provide node"
ERR_MUST_PROVIDE_SERVICE_NAME: Final = "Must provide service name"
ERR_TAG_FILTERING: Final = "Tag filtering is not supported"
ERR_MUST_PROVIDE_KEY: Final = "Must provide key"
ERR_MUST_PROVIDE_ID: Final = "Must provide ID"
ERR_MUST_PROVIDE_SESSION_NODE: Final = "Must provide Node"
