"""Wire constants of the agent RPC protocol: command names, error strings, levels, limits.

One place per fact: every other module imports these names instead of spelling the strings.
Two families are defined below this layer and re-exported here, because the RPC only carries
them: the log level names the ``monitor`` command takes (:mod:`agentrpc.log_protocol`, the
log's own home) and the member statuses of a Member (:mod:`agentrpc.member_status`, serf's).
Both are pure modules, so this one stays trio-free.
"""

from __future__ import annotations

from typing import Final

from ..log_protocol import LEVEL_INDEX as LEVEL_INDEX, LOG_LEVELS as LOG_LEVELS
from ..member_status import (
    STATUS_ALIVE as STATUS_ALIVE,
    STATUS_FAILED as STATUS_FAILED,
    STATUS_LEAVING as STATUS_LEAVING,
    STATUS_LEFT as STATUS_LEFT,
    STATUS_NONE as STATUS_NONE,
)

RPC_VERSION: Final = 1
"""The only handshake version the protocol knows."""

DEFAULT_RPC_PORT: Final = 8400
DEFAULT_MAX_FRAME_SIZE: Final = 1 << 20
"""Largest single msgpack object (header or body) a peer may send, in bytes."""

# Command names, exactly as they travel in the request header.
HANDSHAKE: Final = "handshake"
MEMBERS_LAN: Final = "members-lan"
MEMBERS_WAN: Final = "members-wan"
JOIN: Final = "join"
FORCE_LEAVE: Final = "force-leave"
MONITOR: Final = "monitor"
STOP: Final = "stop"
LEAVE: Final = "leave"
STATS: Final = "stats"
RELOAD: Final = "reload"
INSTALL_KEY: Final = "install-key"
USE_KEY: Final = "use-key"
REMOVE_KEY: Final = "remove-key"
LIST_KEYS: Final = "list-keys"
"""The keyring commands (Consul 0.7's and Serf's names are the same; the replies differ)."""

# Serf's own agent RPC dialect ("IPC"), beside the names it shares with Consul's.
AUTH: Final = "auth"
EVENT: Final = "event"
MEMBERS: Final = "members"
MEMBERS_FILTERED: Final = "members-filtered"
STREAM: Final = "stream"
TAGS: Final = "tags"
QUERY: Final = "query"
RESPOND: Final = "respond"
GET_COORDINATE: Final = "get-coordinate"

KEYRING_COMMANDS: Final = frozenset({INSTALL_KEY, USE_KEY, REMOVE_KEY, LIST_KEYS})

COMMANDS: Final = frozenset(
    {HANDSHAKE, MEMBERS_LAN, MEMBERS_WAN, JOIN, FORCE_LEAVE, MONITOR, STOP, LEAVE, STATS, RELOAD}
    | KEYRING_COMMANDS
)
"""Consul 0.7's agent RPC commands."""
SERF_COMMANDS: Final = frozenset(
    {HANDSHAKE, AUTH, EVENT, FORCE_LEAVE, JOIN, MEMBERS, MEMBERS_FILTERED, STREAM, STOP,
     MONITOR, LEAVE, TAGS, QUERY, RESPOND, STATS, GET_COORDINATE}
    | KEYRING_COMMANDS
)  # fmt: skip
"""Serf's agent RPC commands (``cmd/serf/command/agent/ipc.go``)."""
COMMANDS_WITH_BODY: Final = frozenset(
    {HANDSHAKE, JOIN, FORCE_LEAVE, MONITOR, STOP, INSTALL_KEY, USE_KEY, REMOVE_KEY,
     AUTH, EVENT, MEMBERS_FILTERED, STREAM, TAGS, QUERY, RESPOND, GET_COORDINATE}
)  # fmt: skip
"""Commands whose request header is followed by exactly one body object, in either dialect:
the two never disagree on a name they share (``list-keys``, ``members``, ``stats`` and
``leave`` carry none in both), so one decoder serves both listeners. A name only the other
dialect knows is refused after its body is read."""

# Error strings, byte for byte as the reference sends them.
ERR_HANDSHAKE_REQUIRED: Final = "Handshake required"
ERR_UNSUPPORTED_COMMAND: Final = "Unsupported command"
ERR_UNSUPPORTED_VERSION: Final = "Unsupported RPC version"
ERR_DUPLICATE_HANDSHAKE: Final = "Handshake already performed"
ERR_MONITOR_EXISTS: Final = "Monitor already exists"
ERR_UNKNOWN_LOG_LEVEL: Final = "Unknown log level: "
ERR_WAN_JOIN_CLIENT: Final = "Must be a server to join WAN cluster"
ERR_PERMISSION_DENIED: Final = "Permission denied"
ERR_KEYRING_CLIENT: Final = "keyring operations must run against a server node"
"""Consul's answer to a keyring command on a client agent."""

# Serf's error strings (``ipc.go``), where they differ from Consul's or Consul has none.
ERR_UNSUPPORTED_IPC_VERSION: Final = "Unsupported IPC version"
ERR_INVALID_FILTER: Final = "Invalid event filter"
ERR_STREAM_EXISTS: Final = "Stream with given sequence exists"
ERR_INVALID_QUERY_ID: Final = "No pending queries matching ID"
ERR_AUTH_REQUIRED: Final = "Authentication required"
ERR_INVALID_AUTH_TOKEN: Final = "Invalid authentication token"
ERR_INTERNAL_QUERY_PREFIX: Final = "Queries cannot contain the '_serf_' prefix"
"""Serf's agent refuses user queries named like its internal ones (``_serf_ping`` aside)."""

QUERY_RECORD_ACK: Final = "ack"
QUERY_RECORD_RESPONSE: Final = "response"
QUERY_RECORD_DONE: Final = "done"
"""The ``Type`` of the records a Serf ``query`` stream sends."""

DEFAULT_SERF_RPC_PORT: Final = 7373
"""Serf's agent RPC port (``serf agent -rpc-addr`` defaults to ``127.0.0.1:7373``)."""

_NO_KEYRING: Final = {"Keys": None, "Messages": None, "Info": None}
ERROR_BODIES: Final = {
    MEMBERS_LAN: {"Members": []},
    MEMBERS_WAN: {"Members": []},
    JOIN: {"Num": 0},
    STATS: {},
    INSTALL_KEY: _NO_KEYRING,
    USE_KEY: _NO_KEYRING,
    REMOVE_KEY: _NO_KEYRING,
    LIST_KEYS: _NO_KEYRING,
}
"""Commands whose reply body is sent even when Error is set: the Go client always reads one."""

ERR_SHUTTING_DOWN: Final = "Agent is shutting down"
"""The reply to a command still running when the agent stops (instead of a bare EOF)."""
