"""Consul's ``Operator.Raft*`` server-port endpoints (0.8's ``operator_raft_endpoint.go``).

- ``Operator.RaftGetConfiguration`` (a ``DCSpecificRequest``, a read): the latest Raft
  configuration as ``RaftConfigurationResponse`` ``{Index, Servers: [{Address, ID, Leader,
  Node, Voter}]}``. ``Node`` is the serf name of the LAN member that is a Consul server at that
  address (its IP and ``port`` tag), else ``(unknown)``; ``Leader`` compares the address with
  Raft's leader address, as the reference does; ``Index`` is the configuration's log index.
- ``Operator.RaftRemovePeerByAddress`` / ``Operator.RaftRemovePeerByID`` (a
  ``RaftRemovePeerRequest`` ``{Datacenter, Address, ID, Token}``, writes): the server leaves the
  configuration. One that is not there is refused with the reference's text
  (``address "X" was not found in the Raft configuration``, ``id "X" was not found in the Raft
  configuration``); Raft's own refusals come back with Raft's text.

Both follow the reference's order: forward first (another datacenter through the forwarder; a
read that allows stale data stays here, so a follower answers without a leader; anything else
goes to the leader), then the token (accepted, not enforced: ACLs are not implemented, as in
the rest of the catalog), then the work.

The Raft side is whatever has :class:`OperatorRaft`'s two methods (the server's
:class:`~agentrpc.server_raft.ServerRaft`), or, for a catalog with no Raft (a lone server in
tests), :class:`LoneRaft`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import trio

from ..log_protocol import WARN, LogLike, NullLog, clip
from ..protocol.bodies import Member
from ..raft.configuration import Configuration, ConfigurationError, check_configuration
from ..raft.errors import ERR_ENQUEUE_TIMEOUT, RaftError
from ..serverport.endpoints import EndpointError, Endpoints
from .consensus import ConsensusFacts, Forwarder
from .forwarding import ForwardingEndpoints
from .go_text import go_quote
from .servers import parse_server
from .structs import (
    DCSpecificRequest,
    Wire,
    as_map,
    get_str,
)

__all__ = [
    "ERR_ADDRESS_NOT_FOUND",
    "ERR_ID_NOT_FOUND",
    "RAFT_GET_CONFIGURATION",
    "RAFT_REMOVE_PEER_BY_ADDRESS",
    "RAFT_REMOVE_PEER_BY_ID",
    "UNKNOWN_NODE",
    "LoneRaft",
    "OperatorEndpoints",
    "OperatorRaft",
    "RaftRemovePeerRequest",
    "configuration_reply",
    "install_operator",
    "server_names",
]

RAFT_GET_CONFIGURATION: Final = "Operator.RaftGetConfiguration"
RAFT_REMOVE_PEER_BY_ADDRESS: Final = "Operator.RaftRemovePeerByAddress"
RAFT_REMOVE_PEER_BY_ID: Final = "Operator.RaftRemovePeerByID"

UNKNOWN_NODE: Final = "(unknown)"
"""``Node`` of a server no LAN member claims."""
ERR_ADDRESS_NOT_FOUND: Final = "address {address} was not found in the Raft configuration"
ERR_ID_NOT_FOUND: Final = "id {id} was not found in the Raft configuration"
"""The reference's texts; the value is Go-quoted (``%q``)."""


class OperatorRaft(Protocol):
    """What the operator endpoints need of the server's Raft."""

    def configuration(self) -> list[dict[str, Any]]:
        """The latest configuration's servers: ``ID``, ``Address``, ``Voter`` (and ``Leader``,
        which these endpoints recompute); ``[]`` when Raft does not run."""
        ...

    def configuration_index(self) -> int:
        """The latest configuration's log index (0 when Raft does not run)."""
        ...

    async def remove_peer(self, *, address: str = "", server_id: str = "") -> None:
        """On the leader: remove the server with that address (or ID). Raises
        :class:`~agentrpc.raft.errors.RaftError` with the reason it was not removed."""
        ...


class LoneRaft:
    """The Raft side of a catalog with no Raft (a lone server's ``LocalApplier``): one voter
    whose ID is its address (as Raft protocol 2 names servers), configuration index 0.
    Removing it is Raft's refusal of a configuration without voters."""

    def __init__(self, address: Callable[[], str]) -> None:
        self._address = address

    def configuration(self) -> list[dict[str, Any]]:
        address = self._address()
        if not address:
            return []
        return [{"ID": address, "Address": address, "Voter": True, "Leader": True}]

    def configuration_index(self) -> int:
        return 0

    async def remove_peer(self, *, address: str = "", server_id: str = "") -> None:
        await trio.lowlevel.checkpoint()
        own = self._address()
        if address and address != own:
            raise RaftError(ERR_ADDRESS_NOT_FOUND.format(address=go_quote(address)))
        if not address and server_id != own:
            raise RaftError(ERR_ID_NOT_FOUND.format(id=go_quote(server_id)))
        try:
            check_configuration(Configuration.of([]))  # what is left: no voter
        except ConfigurationError as exc:
            raise RaftError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class RaftRemovePeerRequest:
    """``structs.RaftRemovePeerRequest`` (0.8; 0.7's ``RaftPeerByAddressRequest`` is the same
    without ``ID``): ``Datacenter``, ``Address``, ``ID`` and the inlined ``WriteRequest``."""

    datacenter: str = ""
    address: str = ""
    id: str = ""
    token: str = ""

    def to_wire(self) -> Wire:
        return {
            "Address": self.address,
            "Datacenter": self.datacenter,
            "ID": self.id,
            "Token": self.token,
        }

    @classmethod
    def from_wire(cls, obj: object) -> RaftRemovePeerRequest:
        what = "RaftRemovePeerRequest"
        m = as_map(obj, what)
        return cls(
            get_str(m, "Datacenter", what),
            get_str(m, "Address", what),
            get_str(m, "ID", what),
            get_str(m, "Token", what),
        )


def server_names(members: Iterable[Member]) -> dict[str, str]:
    """Raft address (``ip:port`` of a Consul server's IP and ``port`` tag) -> member name, for
    every LAN member that is a Consul server (``IsConsulServer``), whatever its status."""
    names: dict[str, str] = {}
    for member in members:
        info = parse_server(member)
        if info is not None:
            names[info.address] = info.name
    return names


def configuration_reply(
    servers: Iterable[dict[str, Any]], *, leader: str, names: dict[str, str], index: int
) -> Wire:
    """``RaftConfigurationResponse`` as go-msgpack writes it (keys sorted; no servers: nil)."""
    entries = [
        {
            "Address": str(server.get("Address", "")),
            "ID": str(server.get("ID", "")),
            "Leader": bool(leader) and server.get("Address") == leader,
            "Node": names.get(str(server.get("Address", "")), UNKNOWN_NODE),
            "Voter": bool(server.get("Voter", False)),
        }
        for server in servers
    ]
    return {"Index": index, "Servers": entries or None}


class OperatorEndpoints(ForwardingEndpoints):
    """The handlers, over the server's Raft, its consensus facts and its forwarder."""

    def __init__(
        self,
        raft: OperatorRaft,
        *,
        facts: ConsensusFacts,
        forwarder: Forwarder,
        datacenter: str,
        members: Callable[[], Iterable[Member]],
        logger: LogLike | None = None,
    ) -> None:
        self.raft = raft
        self.facts = facts
        self.forwarder = forwarder
        self.datacenter = datacenter
        self._members = members
        self._log: LogLike = logger or NullLog()

    def handlers(self) -> dict[str, Callable[[Any], Any]]:
        return {
            RAFT_GET_CONFIGURATION: self.raft_get_configuration,
            RAFT_REMOVE_PEER_BY_ADDRESS: self.raft_remove_peer_by_address,
            RAFT_REMOVE_PEER_BY_ID: self.raft_remove_peer_by_id,
        }

    async def raft_get_configuration(self, body: Any) -> Any:
        _, done, reply = await self._forward_read(
            RAFT_GET_CONFIGURATION, body, DCSpecificRequest.from_wire
        )
        if done:
            return reply
        # The token would be checked for operator read access here (no ACLs yet).
        servers = self.raft.configuration()
        return configuration_reply(
            servers,
            leader=self.facts.leader(),
            names=server_names(self._members()),
            index=self.raft.configuration_index(),
        )

    async def raft_remove_peer_by_address(self, body: Any) -> Wire:
        return await self._remove(RAFT_REMOVE_PEER_BY_ADDRESS, body, by_id=False)

    async def raft_remove_peer_by_id(self, body: Any) -> Wire:
        return await self._remove(RAFT_REMOVE_PEER_BY_ID, body, by_id=True)

    async def _remove(self, method: str, body: Any, *, by_id: bool) -> Wire:
        request, done, reply = await self._forward_write(
            method, body, RaftRemovePeerRequest.from_wire
        )
        if done:
            return reply if isinstance(reply, dict) else {}
        # The token would be checked for operator write access here (no ACLs yet).
        what = f"with id {go_quote(request.id)}" if by_id else go_quote(request.address)
        servers = self.raft.configuration()
        if by_id:
            if not any(s.get("ID") == request.id for s in servers):
                await trio.lowlevel.checkpoint()
                raise EndpointError(ERR_ID_NOT_FOUND.format(id=go_quote(request.id)))
        elif not any(s.get("Address") == request.address for s in servers):
            await trio.lowlevel.checkpoint()
            raise EndpointError(ERR_ADDRESS_NOT_FOUND.format(address=go_quote(request.address)))
        try:
            if by_id:
                await self.raft.remove_peer(server_id=request.id)
            else:
                await self.raft.remove_peer(address=request.address)
        except (RaftError, trio.TooSlowError) as exc:
            text = str(exc) or ERR_ENQUEUE_TIMEOUT
            self._log.throttled(
                WARN,
                f"operator:remove-failed:{method}",
                f"consul.operator: Failed to remove Raft peer {clip(what)}: {clip(text)}",
            )
            raise EndpointError(text) from None
        self._log.warn(f"consul.operator: Removed Raft peer {clip(what)}")
        return {}


def install_operator(
    endpoints: Endpoints,
    raft: OperatorRaft | None,
    *,
    facts: ConsensusFacts,
    forwarder: Forwarder,
    datacenter: str,
    members: Callable[[], Iterable[Member]],
    logger: LogLike | None = None,
) -> OperatorEndpoints:
    """Register the ``Operator.Raft*`` endpoints on ``endpoints``.

    ``raft`` is the server's Raft (``ServerRaft``); None for a catalog without Raft, whose one
    server is ``facts.leader()`` (:class:`LoneRaft`). ``members`` are the LAN pool's members
    (node names come from their server tags)."""
    side: OperatorRaft = raft if raft is not None else LoneRaft(facts.leader)
    handlers = OperatorEndpoints(
        side,
        facts=facts,
        forwarder=forwarder,
        datacenter=datacenter,
        members=members,
        logger=logger,
    )
    handlers.register(endpoints)
    return handlers
