"""agentrpc: a cluster agent on Trio speaking the Consul/Serf agent RPC protocol.

The public faces are :class:`Client` (the async client library), :class:`SerfClient` (the
same for Serf's own agent RPC dialect) and :class:`Agent` (run one in your own process); the
``agentrpc`` command line wraps them. The client's exceptions form one tree under
:class:`ClientError` (see :mod:`agentrpc.client_errors`).

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
        Client,
        EventStream,
        KeyOperationError,
        KeyringResult,
        MonitorStream,
        QueryAck,
        QueryResponse,
        QueryStream,
        SerfClient,
        SerfKeyResult,
    )
    from .client_errors import (
        AgentConnectionError,
        AgentGoneError,
        AgentTimeoutError,
        ClientError,
        InvalidAddressError,
        JoinError,
        NotAnAgentError,
        PermissionDeniedError,
        RPCError,
    )
    from .config import AgentConfig, ConfigError, load_config
    from .protocol.bodies import Member

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentConnectionError",
    "AgentGoneError",
    "AgentTimeoutError",
    "Client",
    "ClientError",
    "ConfigError",
    "EventStream",
    "InvalidAddressError",
    "JoinError",
    "KeyOperationError",
    "KeyringResult",
    "Member",
    "MonitorStream",
    "NotAnAgentError",
    "PermissionDeniedError",
    "QueryAck",
    "QueryResponse",
    "QueryStream",
    "RPCError",
    "SerfClient",
    "SerfKeyResult",
    "__version__",
    "load_config",
]

_LAZY: Final = {
    "Agent": (".agent", "Agent"),
    "AgentConfig": (".config", "AgentConfig"),
    "AgentConnectionError": (".client_errors", "AgentConnectionError"),
    "AgentGoneError": (".client_errors", "AgentGoneError"),
    "AgentTimeoutError": (".client_errors", "AgentTimeoutError"),
    "Client": (".client", "Client"),
    "ClientError": (".client_errors", "ClientError"),
    "ConfigError": (".config", "ConfigError"),
    "InvalidAddressError": (".client_errors", "InvalidAddressError"),
    "JoinError": (".client_errors", "JoinError"),
    "Member": (".protocol.bodies", "Member"),
    "MonitorStream": (".client", "MonitorStream"),
    "NotAnAgentError": (".client_errors", "NotAnAgentError"),
    "PermissionDeniedError": (".client_errors", "PermissionDeniedError"),
    "RPCError": (".client_errors", "RPCError"),
    "EventStream": (".client", "EventStream"),
    "KeyOperationError": (".client", "KeyOperationError"),
    "KeyringResult": (".client", "KeyringResult"),
    "QueryAck": (".client", "QueryAck"),
    "QueryResponse": (".client", "QueryResponse"),
    "QueryStream": (".client", "QueryStream"),
    "SerfClient": (".client", "SerfClient"),
    "SerfKeyResult": (".client", "SerfKeyResult"),
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
