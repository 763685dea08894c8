"""agentrpc: a cluster agent on Trio speaking the Consul/Serf agent RPC protocol.

The public faces are :class:`Client` (the async client library) and :class:`Agent` (run one in
your own process); the ``agentrpc`` command line wraps both.
"""

from .agent import Agent
from .build_info import VERSION as __version__
from .client import AgentConnectionError, Client, ClientError, JoinError, MonitorStream, RPCError
from .config import AgentConfig, ConfigError, load_config
from .protocol.bodies import Member

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentConnectionError",
    "Client",
    "ClientError",
    "ConfigError",
    "JoinError",
    "Member",
    "MonitorStream",
    "RPCError",
    "__version__",
    "load_config",
]
