"""What the HTTP API needs of the agent that serves it: :class:`HTTPAgent`, a narrow protocol
the agent implements (so this package imports nothing above it), and the plain records it
passes (:class:`AgentInfo`, :class:`KeyringResult`).

``call`` is the agent's in-process RPC: the same router and handlers a socket client gets
(``ServerPort.call_local`` on a server, the connection pool to a server on a client). It
returns the reply body or raises :class:`~agentrpc.serverport.endpoints.RemoteError` (the
endpoint's error text) or :class:`~agentrpc.serverport.endpoints.RPCCallError` (no answer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..catalog.constants import SESSION_TTL_MIN_NS
from ..local_state.agent_state import LocalAgent
from ..logs import LogSubscription
from ..protocol.bodies import Member
from .events import UserEventLog

__all__ = ["AgentInfo", "HTTPAgent", "KeyringResult"]


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """What ``/v1/agent/self`` and the endpoints' defaults say of the agent."""

    node_name: str
    datacenter: str
    server: bool
    version: str = ""
    revision: str = ""
    version_prerelease: str = ""
    node_id: str = ""
    bind_addr: str = ""
    advertise_addr: str = ""
    ports: Mapping[str, int] = field(default_factory=dict)
    """``DNS``, ``HTTP``, ``RPC``, ``SerfLan``, ``SerfWan``, ``Server`` as the reference names
    them."""
    session_ttl_min_ns: int = SESSION_TTL_MIN_NS
    acl_token: str = ""
    """The token a request without one is made with (``acl_token``)."""
    log_level: str = "INFO"
    data_dir: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """More ``Config`` fields for ``/v1/agent/self`` (Go field names)."""


@dataclass(frozen=True, slots=True)
class KeyringResult:
    """One pool's answer to a keyring operation (``structs.KeyringResponse``)."""

    wan: bool
    datacenter: str
    keys: Mapping[str, int] = field(default_factory=dict)
    num_nodes: int = 0
    error: str = ""


class HTTPAgent(Protocol):
    """The agent as the HTTP API drives it."""

    @property
    def info(self) -> AgentInfo: ...

    @property
    def local(self) -> LocalAgent:
        """The agent's local services and checks (their anti-entropy runs in the agent)."""
        ...

    @property
    def events(self) -> UserEventLog:
        """The user events this agent received (the agent feeds serf's to ``ingest``)."""
        ...

    async def call(self, method: str, args: Any) -> Any:
        """An RPC in-process; raises ``RemoteError`` / ``RPCCallError``."""
        ...

    def members(self, wan: bool) -> Sequence[Member]:
        """The LAN (or WAN) pool's members; empty for the WAN of a client."""
        ...

    def local_member(self) -> Member: ...

    def stats(self) -> Mapping[str, Mapping[str, str]]:
        """The sections ``agentrpc info`` prints (``agent``, ``serf_lan``, ...)."""
        ...

    def coordinate(self) -> Mapping[str, Any] | None:
        """This node's network coordinate (``Vec``, ``Error``, ``Adjustment``, ``Height``),
        None when coordinates are off."""
        ...

    async def join(self, addresses: Sequence[str], wan: bool) -> tuple[int, str]:
        """Join through ``addresses``: (how many answered, the error or "")."""
        ...

    async def force_leave(self, node: str) -> str: ...

    async def leave(self) -> str:
        """Leave the cluster gracefully (the HTTP API then calls :meth:`shutdown`)."""
        ...

    def shutdown(self) -> None: ...

    async def reload(self) -> str: ...

    def subscribe_log(self, min_level: int, queue_size: int) -> LogSubscription: ...

    async def keyring(self, operation: str, key: str, relay_factor: int) -> Sequence[KeyringResult]:
        """``list``, ``install``, ``use`` or ``remove`` on every pool (WAN first on a server)."""
        ...

    async def fire_user_event(self, datacenter: str, name: str, payload: bytes) -> None:
        """Broadcast a serf user event (the encoded Consul event) in ``datacenter``; raises
        ``ValueError`` (or an RPC error) with the reason it was not sent."""
        ...
