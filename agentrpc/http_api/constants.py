"""The HTTP API's constants, once: the default address, header names, the reference's error
texts (Consul 0.7/0.8 ``command/agent/*_endpoint.go``, byte for byte) and the server's limits.

Pure: no I/O, no trio.
"""

from __future__ import annotations

from typing import Final

from ..defaults import DEFAULT_HTTP_ADDR, HTTP_PORT
from ..protocol.constants import (
    ERR_PERMISSION_DENIED,
    ERR_UNKNOWN_LOG_LEVEL,
    ERR_WAN_JOIN_CLIENT,
)

__all__ = [
    "DEFAULT_HTTP_ADDR",
    "HTTP_PORT",
    "ERR_PERMISSION_DENIED",
    "ERR_UNKNOWN_LOG_LEVEL",
    "ERR_WAN_JOIN_CLIENT",
]


ENV_HTTP_ADDR: Final = "CONSUL_HTTP_ADDR"
ENV_HTTP_TOKEN: Final = "CONSUL_HTTP_TOKEN"

# ------------------------------------------------------------------ headers

HEADER_INDEX: Final = "X-Consul-Index"
HEADER_KNOWN_LEADER: Final = "X-Consul-KnownLeader"
HEADER_LAST_CONTACT: Final = "X-Consul-LastContact"
HEADER_TOKEN: Final = "X-Consul-Token"
CONTENT_JSON: Final = "application/json"
CONTENT_TEXT: Final = "text/plain; charset=utf-8"

# ------------------------------------------------------------------ limits

MAX_KV_SIZE: Final = 512 * 1024
"""``maxKVSize``: a KV value (a PUT body) above this is refused with 413."""
MAX_BODY_BYTES: Final = MAX_KV_SIZE
"""Any request body above this is refused with 413 (the largest body an endpoint takes)."""
MAX_HEADER_BYTES: Final = 64 * 1024
"""The request line and headers together (h11's ``max_incomplete_event_size``); past it 431."""
MAX_CONNECTIONS: Final = 4096
"""HTTP connections at once; past it the oldest idle keep-alive one is closed to make room,
and when none is idle the new connection is refused."""
HEADER_TIMEOUT: Final = 10.0
"""Seconds a request has, from its first byte (or from the connection's start), to send its
request line and headers (slowloris)."""
BODY_TIMEOUT: Final = 30.0
"""Seconds a request has to send its whole body once its headers are in."""
IDLE_TIMEOUT: Final = 120.0
"""Seconds a keep-alive connection may wait between requests."""
SEND_TIMEOUT: Final = 30.0
"""Seconds one write to a client may take (a client that does not read is dropped)."""
DRAIN_TIMEOUT: Final = 2.0
"""Seconds in-flight requests get to finish at shutdown before they are cancelled."""
PIPELINE_BYTES: Final = MAX_HEADER_BYTES
"""Bytes of a pipelined next request read ahead while a request is served."""
READ_SIZE: Final = 64 * 1024
MONITOR_QUEUE: Final = 512
"""Log lines queued for one ``/v1/agent/monitor`` stream (the reference's buffer)."""

# ------------------------------------------------------------------ error texts

ERR_MISSING_KEY: Final = "Missing key name"
ERR_VALUE_TOO_LARGE: Final = f"Value exceeds {MAX_KV_SIZE} byte limit"
ERR_BODY_TOO_LARGE: Final = f"Request body exceeds {MAX_BODY_BYTES} byte limit"
ERR_CONFLICTING_FLAGS: Final = "Conflicting flags: "
ERR_INVALID_WAIT: Final = "Invalid wait time"
ERR_INVALID_INDEX: Final = "Invalid index"
ERR_STALE_CONSISTENT: Final = "Cannot specify ?stale with ?consistent, conflicting semantics."
ERR_DECODE_FAILED: Final = "Request decode failed: "
ERR_MISSING_SERVICE_NAME: Final = "Missing service name"
ERR_MISSING_NODE_NAME: Final = "Missing node name"
ERR_MISSING_CHECK_STATE: Final = "Missing check state"
ERR_MISSING_SESSION: Final = "Missing session"
ERR_MISSING_NAME: Final = "Missing name"
ERR_MISSING_CHECK_NAME: Final = "Missing check name"
ERR_MISSING_SERVICE_ID: Final = "Missing service ID"
ERR_MISSING_ENABLE: Final = "Missing value for enable"
ERR_SESSION_NOT_FOUND: Final = "Session id '{}' not found"
ERR_INVALID_CHECK_STATE: Final = "Invalid check state"
ERR_ACL_NOT_FOUND: Final = "ACL not found"
ERR_NOT_FOUND: Final = "404 page not found"
"""Go's ``http.NotFound`` body for a path no endpoint serves."""
ERR_TIMEOUT: Final = "Request timeout"
ERR_TOO_MANY_CONNECTIONS: Final = "Too many connections"
ERR_NOT_IMPLEMENTED: Final = "{} is not implemented by this agent"

CONSUL_INDEX_PAGE: Final = b"Consul Agent"
"""What ``GET /`` answers without a UI."""
