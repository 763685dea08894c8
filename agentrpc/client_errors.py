"""The exceptions of the Python client, one tree under :class:`ClientError`.

::

    ClientError
    ├── InvalidAddressError      the address cannot be parsed (also a transports AddressError,
    │                            so also a ValueError)
    ├── AgentConnectionError     no working connection to an agent
    │   ├── AgentTimeoutError    connecting or the handshake took longer than the deadline
    │   │                        (also a TimeoutError)
    │   ├── NotAnAgentError      the peer does not speak the agent RPC (a gossip port, the
    │   │                        server port, another service)
    │   └── AgentGoneError       the connection was lost after the handshake: mid-call,
    │                            mid-stream, or the client was used after it closed
    └── RPCError                 the agent answered with an Error; ``error`` is its exact text
        ├── PermissionDeniedError  the agent wants an RPC token (``Client(token=...)``)
        └── JoinError              a join failed; ``num`` nodes were contacted nevertheless

Nothing the client raises for these is wrapped in an exception group.
"""

from __future__ import annotations

from typing import Final

from .protocol.constants import ERR_PERMISSION_DENIED
from .transports import AddressError

NOT_AN_AGENT_HINT: Final = (
    "is it a gossip port or the server port? The RPC port is the one `agentrpc serve` logs "
    "as 'RPC listening on'"
)
"""What to check when a peer does not speak the agent RPC (said by every such error)."""

SERF_NOT_AN_AGENT_HINT: Final = (
    "is it a gossip port, the server port or Consul's agent RPC port? Serf's RPC port is the "
    "one `agentrpc serve --serf-rpc-addr` logs as 'Serf RPC listening on' (`serf agent`'s "
    "-rpc-addr)"
)
"""The same for :class:`~agentrpc.client.SerfClient`, whose port is another listener."""


class ClientError(Exception):
    """Base of the client's errors."""


class InvalidAddressError(ClientError, AddressError):
    """The address cannot be parsed or used (a bad scheme, no port, a port out of range)."""


class AgentConnectionError(ClientError):
    """No working connection to an agent: refused, no such socket, unreachable, or one of the
    more precise subclasses."""

    def __init__(self, message: str, *, address: str = "") -> None:
        super().__init__(message)
        self.address = address
        """The address dialled, as text ("" for a stream handed to the client)."""


class AgentTimeoutError(AgentConnectionError, TimeoutError):
    """Connecting, or the handshake, did not finish within its deadline."""

    def __init__(self, message: str, *, address: str = "", timeout: float = 0.0) -> None:
        super().__init__(message, address=address)
        self.timeout = timeout
        """The deadline that passed, in seconds."""


class NotAnAgentError(AgentConnectionError):
    """The peer answered, or hung up, without speaking the agent RPC handshake."""


class AgentGoneError(AgentConnectionError):
    """The connection to the agent was lost after the handshake (the agent stopped, crashed or
    closed it), or the client was used after it closed. Pending calls and open monitor
    streams all raise it."""


class RPCError(ClientError):
    """The agent answered with an Error; ``error`` holds its exact text."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class PermissionDeniedError(RPCError):
    """The agent has an ``rpc_token`` and the client sent none, or another one."""


class JoinError(RPCError):
    """A join failed; ``num`` says how many addresses were contacted nevertheless."""

    def __init__(self, error: str, num: int) -> None:
        super().__init__(error)
        self.num = num


def rpc_error(error: str) -> RPCError:
    """The exception for an Error text from the agent: the most precise class it fits."""
    if error == ERR_PERMISSION_DENIED:
        return PermissionDeniedError(error)
    return RPCError(error)


__all__ = [
    "NOT_AN_AGENT_HINT",
    "AgentConnectionError",
    "AgentGoneError",
    "AgentTimeoutError",
    "ClientError",
    "InvalidAddressError",
    "JoinError",
    "NotAnAgentError",
    "PermissionDeniedError",
    "RPCError",
    "rpc_error",
]
