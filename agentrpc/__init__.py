"""agentrpc: a cluster agent on Trio speaking the Consul/Serf agent RPC protocol.

The public faces are :class:`Client` (the async client library) and :class:`Agent` (run one in
your own process); the ``agentrpc`` command line wraps both.

The names below are loaded on first use (PEP 562), so importing one of the package's pure
modules (a codec, the gossip rules, :mod:`agentrpc.log_protocol`) does not load the agent, the
client or trio. ``from agentrpc import Client`` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .agent import Agent
    from .build_info import VERSION as __version__
    from .client import (
        AgentConnectionError,
        Client,
        ClientError,
        JoinError,
        MonitorStream,
        RPCError,
    )
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

_LAZY: Final = {
    "Agent": (".agent", "Agent"),
    "AgentConfig": (".config", "AgentConfig"),
    "AgentConnectionError": (".client", "AgentConnectionError"),
    "Client": (".client", "Client"),
    "ClientError": (".client", "ClientError"),
    "ConfigError": (".config", "ConfigError"),
    "JoinError": (".client", "JoinError"),
    "Member": (".protocol.bodies", "Member"),
    "MonitorStream": (".client", "MonitorStream"),
    "RPCError": (".client", "RPCError"),
    "__version__": (".build_info", "VERSION"),
    "load_config": (".config", "load_config"),
}
"""Each public name: the module that defines it and its name there."""


if not TYPE_CHECKING:  # mypy sees the imports above, so a misspelt name stays an error

    def __getattr__(name: str) -> Any:
        try:
            module_name, attribute = _LAZY[name]
        except KeyError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module_name, __name__), attribute)
        globals()[name] = value  # later lookups find it without coming here
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
