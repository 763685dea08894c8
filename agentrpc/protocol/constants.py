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

COMMANDS: Final = frozenset(
    {HANDSHAKE, MEMBERS_LAN, MEMBERS_WAN, JOIN, FORCE_LEAVE, MONITOR, STOP, LEAVE, STATS, RELOAD}
)
COMMANDS_WITH_BODY: Final = frozenset({HANDSHAKE, JOIN, FORCE_LEAVE, MONITOR, STOP})
"""Commands whose request header is followed by exactly one body object."""

# Error strings, byte for byte as the reference sends them.
ERR_HANDSHAKE_REQUIRED: Final = "Handshake required"
ERR_UNSUPPORTED_COMMAND: Final = "Unsupported command"
ERR_UNSUPPORTED_VERSION: Final = "Unsupported RPC version"
ERR_DUPLICATE_HANDSHAKE: Final = "Handshake already performed"
ERR_MONITOR_EXISTS: Final = "Monitor already exists"
ERR_UNKNOWN_LOG_LEVEL: Final = "Unknown log level: "
ERR_WAN_JOIN_CLIENT: Final = "Must be a server to join WAN cluster"
ERR_PERMISSION_DENIED: Final = "Permission denied"

ERROR_BODIES: Final = {
    MEMBERS_LAN: {"Members": []},
    MEMBERS_WAN: {"Members": []},
    JOIN: {"Num": 0},
    STATS: {},
}
"""Commands whose reply body is sent even when Error is set: the Go client always reads one."""

ERR_SHUTTING_DOWN: Final = "Agent is shutting down"
"""The reply to a command still running when the agent stops (instead of a bare EOF)."""
