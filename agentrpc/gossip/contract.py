"""The seams of the gossip layer: what memberlist offers, what Serf plugs into it, how bytes move.

Three parts, as in hashicorp/memberlist and hashicorp/serf:

* :class:`GossipTransport` moves datagrams and opens/accepts streams. The UDP+TCP transport binds
  one port for both; the in-memory transport lets a test or a simulation run many nodes in one
  process (with trio's autojump clock).
* :class:`MemberlistDelegate` and :class:`MemberlistEvents` are what the membership layer (Serf)
  gives memberlist: node meta, user messages, piggybacked broadcasts, push/pull user state, and
  join / leave / update notifications.
* :class:`MemberlistHandle` is what the membership layer may call on memberlist.
* :class:`PingDelegate` (optional, memberlist's ``PingDelegate``) puts a payload in our acks
  and hears how each direct probe went: serf carries its network coordinates this way.

Everything here is types only: no behaviour, no trio tasks, and trio itself is imported only
for type checking (the stream types in the annotations), so the sans-I/O rules that name these
types stay trio-free.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from agentrpc.hostport import join_host_port

from .messages import NodeState, Vsn

if TYPE_CHECKING:  # annotations only: the contract must stay importable without trio
    import trio

__all__ = [
    "GossipAddress",
    "GossipTransport",
    "MemberlistDelegate",
    "MemberlistEvents",
    "MemberlistHandle",
    "NodeInfo",
    "NodeState",
    "PacketConnection",
    "PingDelegate",
    "StreamListener",
    "Vsn",
]


@dataclass(frozen=True, slots=True)
class GossipAddress:
    """Where a node's gossip port is: an IP literal (v4 or v6) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return join_host_port(self.host, self.port)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A snapshot of one node as memberlist knows it."""

    name: str
    addr: bytes
    """4 (IPv4) or 16 (IPv6) raw bytes, as on the wire."""
    port: int
    meta: bytes
    incarnation: int
    state: NodeState
    vsn: Vsn
    state_change: float
    """trio.current_time() of the last state change."""

    @property
    def address(self) -> GossipAddress:
        return GossipAddress(str(ipaddress.ip_address(self.addr)), self.port)


class PacketConnection(Protocol):
    """The datagram side of a transport (UDP, or an in-memory queue)."""

    @property
    def local_address(self) -> GossipAddress: ...

    async def send_to(self, data: bytes, address: GossipAddress) -> None:
        """Best effort: never raises for an unreachable peer (the packet is simply lost)."""
        ...

    async def receive_from(self) -> tuple[bytes, GossipAddress]: ...

    def close(self) -> None: ...


class GossipTransport(Protocol):
    """Binds one address for packets and streams; dials other nodes' streams."""

    async def bind(self, address: GossipAddress) -> tuple[PacketConnection, StreamListener]:
        """Bind packets and streams to one port (port 0 picks one free for both)."""
        ...

    async def dial(self, address: GossipAddress) -> trio.abc.Stream:
        """A stream to ``address``; raises ``OSError`` on failure (callers bound the time)."""
        ...


class StreamListener(Protocol):
    async def accept(self) -> tuple[trio.abc.Stream, GossipAddress]: ...

    async def aclose(self) -> None: ...


class MemberlistDelegate(Protocol):
    """What memberlist asks of the layer above it (serf's delegate.go)."""

    def node_meta(self, limit: int) -> bytes:
        """This node's Meta (at most ``limit`` bytes), sent in alive messages."""
        ...

    def notify_message(self, payload: bytes) -> None:
        """A user message (memberlist type 8) arrived, by packet or stream."""
        ...

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        """User messages to piggyback, each to be sent as a type-8 message."""
        ...

    def has_broadcasts(self) -> bool:
        """Whether :meth:`get_broadcasts` would give anything now. While it and memberlist's
        own queue are empty the gossip loop sleeps: a delegate that gains broadcasts calls
        the memberlist's ``wake_gossip`` (serf's pool does, from ``on_broadcast``)."""
        ...

    def local_state(self, join: bool) -> bytes:
        """The user state for a push/pull (serf: type byte 2 + msgpack)."""
        ...

    def merge_remote_state(self, state: bytes, join: bool) -> None:
        """The user state received in a push/pull (not called when it is empty)."""
        ...


class PingDelegate(Protocol):
    """Payloads on acks and the outcome of probes (memberlist's ``PingDelegate``).

    Both calls are synchronous, on the probe and packet paths: keep them short, and never
    raise for what a peer sent (log it and return)."""

    def ack_payload(self) -> bytes:
        """The payload of every ack we send to a UDP ping (not to TCP fallback pings, nor
        the acks we forward for indirect probes, as memberlist does)."""
        ...

    def notify_ping_complete(self, node: NodeInfo, rtt: float, payload: bytes) -> None:
        """A direct UDP probe of ``node`` was acked within the probe timeout, ``rtt``
        seconds after the ping was sent; ``payload`` is the ack's (``b""`` if it had none)."""
        ...


class MemberlistEvents(Protocol):
    """Node notifications (memberlist's EventDelegate), called synchronously."""

    def notify_join(self, node: NodeInfo) -> None: ...

    def notify_leave(self, node: NodeInfo) -> None:
        """The node is dead or left (``node.state`` says which)."""
        ...

    def notify_update(self, node: NodeInfo) -> None:
        """Meta or address changed for a live node."""
        ...


class MemberlistHandle(Protocol):
    """What the membership layer may call on a running memberlist."""

    @property
    def local_name(self) -> str: ...

    @property
    def advertise_address(self) -> GossipAddress: ...

    def members(self) -> list[NodeInfo]:
        """Every known node, in any state, the local one included."""
        ...

    def num_alive(self) -> int: ...

    @property
    def health_score(self) -> int: ...

    async def join(self, addresses: Sequence[str]) -> tuple[int, list[str]]:
        """Push/pull with each address (``host:port``; port defaults to the local port);
        returns how many succeeded and one error text per failure."""
        ...

    async def leave(self) -> None:
        """Broadcast our own dead{Node=self, From=self} and wait until it has been sent (to
        enough peers, as memberlist does); callers bound the wait with a cancel scope."""
        ...

    def update_meta(self) -> None:
        """Re-read ``node_meta`` and broadcast a new alive with a higher incarnation."""
        ...

    async def send_reliable(self, node: str, payload: bytes) -> None:
        """A user message over a stream to one node (raises ``OSError`` on failure)."""
        ...

    def set_max_members(self, max_members: int) -> None:
        """Change how many nodes the node table holds at most (``reload``)."""
        ...
