"""The server port: one TCP port, several protocols chosen by the connection's first byte.

Layers, bottom up: :mod:`.rpc_codec` and :mod:`.yamux` are sans-I/O codecs; :mod:`.tls` builds
SSL contexts; :mod:`.yamux_session` (the multiplexer), :mod:`.endpoints` (the byte-0 RPC
server), :mod:`.router` (the first-byte table) and :mod:`.pool` (outgoing calls) are trio
engines; :mod:`.server` ties a listener to the router; :mod:`.proxy` is the developer proxy.
"""

from __future__ import annotations

from .endpoints import (
    STATUS_PING,
    CallTimeout,
    EndpointError,
    Endpoints,
    Handler,
    RemoteError,
    RPCCallError,
    RPCServer,
    call_in_process,
    call_on_stream,
)
from .pool import ConnectionPool, open_connection_pool
from .proxy import PROTOCOLS, serve_proxy
from .router import (
    DEFAULT_FIRST_BYTE_TIMEOUT,
    DEFAULT_MAX_CONNS_PER_CLIENT,
    GossipStreamHandler,
    Router,
    RouterLimits,
)
from .rpc_codec import DEFAULT_SERVER_PORT, RPCType
from .server import (
    MEMBERS_WAN_ENDPOINT,
    ServerPort,
    forward_members_wan,
    members_wan_endpoint,
    server_addresses,
)
from .tls import TLSConfig, TLSConfigError
from .yamux_session import YamuxConfig, YamuxSession, YamuxStream

__all__ = [
    "DEFAULT_FIRST_BYTE_TIMEOUT",
    "DEFAULT_MAX_CONNS_PER_CLIENT",
    "DEFAULT_SERVER_PORT",
    "MEMBERS_WAN_ENDPOINT",
    "PROTOCOLS",
    "STATUS_PING",
    "CallTimeout",
    "ConnectionPool",
    "EndpointError",
    "Endpoints",
    "GossipStreamHandler",
    "Handler",
    "RPCCallError",
    "RPCServer",
    "RPCType",
    "RemoteError",
    "Router",
    "RouterLimits",
    "ServerPort",
    "TLSConfig",
    "TLSConfigError",
    "YamuxConfig",
    "YamuxSession",
    "YamuxStream",
    "call_in_process",
    "call_on_stream",
    "forward_members_wan",
    "members_wan_endpoint",
    "open_connection_pool",
    "serve_proxy",
    "server_addresses",
]
