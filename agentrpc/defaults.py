"""The agent's default addresses and connection limits: each value named once, here.

``AgentConfig``'s defaults, the agent RPC engine's :class:`~agentrpc.rpc_connection.EngineLimits`,
the server port's :class:`~agentrpc.serverport.router.RouterLimits` and the command line's
default addresses all read these names, so a default changes in one place.

Pure constants: no I/O, no trio; importable from any layer. Defaults that belong to one
subsystem and are read nowhere else (the byte budgets in :mod:`agentrpc.budget`, the log
ring in :mod:`agentrpc.logs`, the frame size in :mod:`agentrpc.protocol.constants`) stay there.
"""

from __future__ import annotations

from typing import Final

from .hostport import join_host_port
from .protocol.constants import DEFAULT_RPC_PORT

LOOPBACK_HOST: Final = "127.0.0.1"
"""Every listener binds loopback unless told otherwise."""

SERVER_PORT: Final = 8300
"""The Consul server port (the server-port RPC codec's ``DEFAULT_SERVER_PORT`` names it)."""
SERF_LAN_PORT: Final = 8301
SERF_WAN_PORT: Final = 8302
DNS_PORT: Final = 8600
"""Consul's DNS port (``ports.dns``)."""
HTTP_PORT: Final = 8500
"""Consul's HTTP API port (``ports.http``)."""

DEFAULT_RPC_ADDR: Final = join_host_port(LOOPBACK_HOST, DEFAULT_RPC_PORT)
"""``127.0.0.1:8400``: where the agent listens for, and the CLI and client dial, agent RPC."""
DEFAULT_SERVER_ADDR: Final = join_host_port(LOOPBACK_HOST, SERVER_PORT)
DEFAULT_SERF_LAN_ADDR: Final = join_host_port(LOOPBACK_HOST, SERF_LAN_PORT)
DEFAULT_SERF_WAN_ADDR: Final = join_host_port(LOOPBACK_HOST, SERF_WAN_PORT)
DEFAULT_DNS_ADDR: Final = join_host_port(LOOPBACK_HOST, DNS_PORT)
"""``127.0.0.1:8600``: where the agent answers DNS over UDP and TCP (``dns_addr``)."""
DEFAULT_HTTP_ADDR: Final = join_host_port(LOOPBACK_HOST, HTTP_PORT)
"""``127.0.0.1:8500``: where the agent serves Consul's HTTP API (``http_addr``)."""

# ------------------------------------------------------------------ agent RPC connections

HANDSHAKE_TIMEOUT: Final = 10.0
"""Seconds a new agent RPC connection has to send its handshake."""
IDLE_TIMEOUT: Final = 0.0
"""Seconds a handshaken connection with nothing in flight may stay quiet (0: for ever)."""
SEND_QUEUE: Final = 256
"""Frames queued for one connection's writer."""
MAX_INFLIGHT: Final = 64
"""Commands that wait (join, leave, ...) running at once on one connection."""
MONITOR_QUEUE: Final = 512
"""Log lines queued for one monitor stream."""
DRAIN_TIMEOUT: Final = 2.0
"""Seconds a closing connection (or server port) has to send what it has queued."""
MAX_CONNECTIONS: Final = 4096
"""Agent RPC connections at once, in total."""
MAX_CONNECTIONS_PER_CLIENT: Final = 256
"""Agent RPC connections at once from one IP address."""

# ------------------------------------------------------------------ server port connections

FIRST_BYTE_TIMEOUT: Final = 5.0
"""Seconds a server-port connection (or mux stream) has to send its type byte."""
SERVER_MAX_CONNS_PER_CLIENT: Final = 100
"""Server-port connections at once from one IP address (0: no limit), as the reference."""

__all__ = [
    "DEFAULT_DNS_ADDR",
    "DEFAULT_HTTP_ADDR",
    "DEFAULT_RPC_ADDR",
    "DEFAULT_SERF_LAN_ADDR",
    "DEFAULT_SERF_WAN_ADDR",
    "DEFAULT_SERVER_ADDR",
    "DNS_PORT",
    "DRAIN_TIMEOUT",
    "FIRST_BYTE_TIMEOUT",
    "HANDSHAKE_TIMEOUT",
    "HTTP_PORT",
    "IDLE_TIMEOUT",
    "LOOPBACK_HOST",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_CLIENT",
    "MAX_INFLIGHT",
    "MONITOR_QUEUE",
    "SEND_QUEUE",
    "SERF_LAN_PORT",
    "SERF_WAN_PORT",
    "SERVER_MAX_CONNS_PER_CLIENT",
    "SERVER_PORT",
]
