"""What the catalog needs of consensus, as three small interfaces, and their lone-server
implementations (``--dev``, a single server, tests) until the Raft engine provides its own.

- :class:`Applier`, the write path: ``apply(msg_type, body)`` makes the command a Raft log entry
  (``bytes([msg_type]) + msgpack(body)``), waits for it to commit and returns the FSM's answer.
  It raises :class:`ApplyError` when the write could not be committed (no leader, shutdown,
  timeout); a write the state store refused is an answer (an
  :class:`~agentrpc.catalog.fsm.FSMError` value), not an exception.
- :class:`ConsensusFacts`, what reads report and check: am I the leader, who is, when was the
  leader last heard from, the peers, and a leadership check for consistent reads.
- :class:`Forwarder`, the hook that sends a request to the leader or to another datacenter
  (real forwarding arrives with the connection pool and the server router).

:class:`LocalApplier` applies straight to the FSM through the hub (indexes from 2 up: index 1 is
Raft's own first entry, and a blocking query's "index 1" for an empty table must stay below the
first write). :class:`LoneServer` is the leader of a one-server cluster and knows no other
datacenter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import trio

from ..raft.log import LogEntry, LogType
from ..serverport.endpoints import EndpointError
from .constants import ERR_NO_DC_PATH, ERR_NO_LEADER
from .fsm import encode_command
from .hub import StateHub
from .structs import Wire

__all__ = [
    "Applier",
    "ApplyError",
    "ConsensusFacts",
    "Forwarder",
    "LocalApplier",
    "LoneServer",
    "NotLeader",
]

FIRST_LOCAL_INDEX = 2


class ApplyError(Exception):
    """A write that was not committed; the text goes to the caller as the RPC error."""


class NotLeader(EndpointError):
    """A consistent read on a server that could not confirm its leadership."""


class Applier(Protocol):
    async def apply(self, msg_type: int, body: Wire) -> Any:
        """Commit the command and return the FSM's response; :class:`ApplyError` if it could
        not be committed."""
        ...


class ConsensusFacts(Protocol):
    def is_leader(self) -> bool: ...

    def leader(self) -> str:
        """The leader's server address (``host:port``), "" when none is known."""
        ...

    def last_contact(self) -> float | None:
        """When (Trio clock) this server last heard from a leader; None for never."""
        ...

    def peers(self) -> list[str]:
        """The server addresses of the Raft configuration."""
        ...

    async def verify_leader(self) -> None:
        """Confirm leadership with a quorum (``raft.VerifyLeader``); :class:`NotLeader`
        otherwise."""
        ...


class Forwarder(Protocol):
    async def forward_leader(self, method: str, body: Any) -> Any:
        """Call ``method`` on the leader; the reply body, or an ``EndpointError``."""
        ...

    async def forward_datacenter(self, datacenter: str, method: str, body: Any) -> Any:
        """Call ``method`` on a server of ``datacenter``; ``No path to datacenter`` when none
        is known."""
        ...

    def datacenters(self) -> list[str]:
        """Known datacenters, nearest first (``Catalog.ListDatacenters``)."""
        ...


class LocalApplier:
    """Applies every write directly to the FSM, as a one-server Raft would after commit."""

    def __init__(self, hub: StateHub, *, term: int = 1) -> None:
        self._hub = hub
        self._term = term
        self.applied = 0

    async def apply(self, msg_type: int, body: Wire) -> Any:
        await trio.lowlevel.checkpoint()
        index = max(self._hub.fsm.last_index + 1, FIRST_LOCAL_INDEX)
        entry = LogEntry(index, self._term, LogType.COMMAND, encode_command(msg_type, body))
        self.applied += 1
        return self._hub.apply(entry)


class LoneServer:
    """The consensus facts and forwarding of a one-server datacenter: always the leader."""

    def __init__(self, datacenter: str, address: Callable[[], str]) -> None:
        self._datacenter = datacenter
        self._address = address

    def is_leader(self) -> bool:
        return True

    def leader(self) -> str:
        return self._address()

    def last_contact(self) -> float | None:
        return trio.current_time()

    def peers(self) -> list[str]:
        address = self._address()
        return [address] if address else []

    async def verify_leader(self) -> None:
        await trio.lowlevel.checkpoint()

    async def forward_leader(self, method: str, body: Any) -> Any:
        await trio.lowlevel.checkpoint()
        raise EndpointError(ERR_NO_LEADER)

    async def forward_datacenter(self, datacenter: str, method: str, body: Any) -> Any:
        await trio.lowlevel.checkpoint()
        raise EndpointError(ERR_NO_DC_PATH)

    def datacenters(self) -> list[str]:
        return [self._datacenter]
