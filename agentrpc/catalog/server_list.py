"""A client agent's list of its datacenter's servers, pure: which one the next RPC goes to,
what a failure, a membership change and a rebalance do to the order (Consul's
``consul/servers`` manager, as its client agents run it).

- Servers come from the LAN pool (:meth:`ServerList.sync`): known ones keep their place (their
  details refreshed), new ones go to the back, gone ones (left, failed, reaped) are dropped.
- Every RPC goes to the front server (:meth:`ServerList.first`); one that failed is rotated to
  the back (:meth:`ServerList.failed`), so the next call tries another.
- Every :func:`rebalance_interval` the list is shuffled and the new front is pinged
  (:meth:`ServerList.rebalance_order`, then :meth:`ServerList.rebalanced` with the order that
  found a healthy one), so that long-lived clients spread over the servers.

Nothing here reads a clock, draws randomness of its own or does I/O: the random source and the
outcome of each ping come from the caller (:mod:`agentrpc.server_manager`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from .servers import ServerInfo

__all__ = [
    "CLIENT_RPC_JITTER_FRACTION",
    "CLIENT_RPC_MIN_REUSE",
    "NOT_RETRIED",
    "REBALANCE_CONNS_PER_SEC_PER_SERVER",
    "ServerList",
    "SyncChange",
    "rebalance_interval",
]

CLIENT_RPC_MIN_REUSE: Final = 120.0
"""Seconds a client keeps sending to one server at least, before a rebalance may move it."""
CLIENT_RPC_JITTER_FRACTION: Final = 2
"""The rebalance interval gains a random stagger of up to ``MIN_REUSE / JITTER_FRACTION``."""
REBALANCE_CONNS_PER_SEC_PER_SERVER: Final = 64
"""New connections per second that rebalancing may cost each server, cluster-wide."""
NOT_RETRIED: Final = frozenset(
    {
        "KVS.Apply",
        "Session.Apply",
        "Internal.EventFire",
        "Internal.KeyringOperation",
        "Operator.RaftRemovePeerByAddress",
        "Operator.RaftRemovePeerByID",
    }
)
"""Requests that are not sent to a second server once the first may have received them."""


def rebalance_interval(num_servers: int, num_lan_members: int, rng: random.Random) -> float:
    """Seconds until the next rebalance: the minimum reuse time plus a random stagger, or
    longer in a big cluster, so that all the LAN's clients together open at most
    :data:`REBALANCE_CONNS_PER_SEC_PER_SERVER` connections per second on each server."""
    low = CLIENT_RPC_MIN_REUSE + rng.random() * (CLIENT_RPC_MIN_REUSE / CLIENT_RPC_JITTER_FRACTION)
    rate = float(num_servers * REBALANCE_CONNS_PER_SEC_PER_SERVER)
    if rate <= 0.0:
        return low
    return max(low, num_lan_members / rate)


def _key(server: ServerInfo) -> tuple[str, str]:
    return (server.name, server.address)


@dataclass(frozen=True, slots=True)
class SyncChange:
    """What :meth:`ServerList.sync` changed."""

    added: tuple[ServerInfo, ...]
    removed: tuple[ServerInfo, ...]


class ServerList:
    """The known servers in the order RPCs try them, and whether all of them are down."""

    __slots__ = ("_servers", "offline")

    def __init__(self) -> None:
        self._servers: list[ServerInfo] = []
        self.offline = True
        """No server known, or none answered the last rebalance's pings."""

    @property
    def servers(self) -> tuple[ServerInfo, ...]:
        return tuple(self._servers)

    def __len__(self) -> int:
        return len(self._servers)

    def first(self) -> ServerInfo | None:
        """The server the next RPC goes to, or None when none is known."""
        return self._servers[0] if self._servers else None

    def sync(self, current: Iterable[ServerInfo]) -> SyncChange:
        """Take the servers the LAN pool lists now (alive, this datacenter's): known ones keep
        their place with fresh details, new ones are appended, the others are dropped."""
        wanted: dict[tuple[str, str], ServerInfo] = {}
        for server in current:
            wanted.setdefault(_key(server), server)
        kept: list[ServerInfo] = []
        removed: list[ServerInfo] = []
        for server in self._servers:
            fresh = wanted.pop(_key(server), None)
            if fresh is None:
                removed.append(server)
            else:
                kept.append(fresh)
        added = tuple(wanted.values())
        self._servers = kept + list(added)
        if added:
            self.offline = False  # a server just appeared: worth trying
        if not self._servers:
            self.offline = True
        return SyncChange(added, tuple(removed))

    def failed(self, server: ServerInfo) -> None:
        """An RPC to ``server`` failed: if it is still the front one, it goes to the back (a
        failure reported late, after another already rotated it, changes nothing)."""
        servers = self._servers
        if len(servers) > 1 and _key(servers[0]) == _key(server):
            servers.append(servers.pop(0))

    def rebalance_order(self, rng: random.Random) -> list[ServerInfo]:
        """The shuffled order a rebalance pings, front first (the list itself is unchanged
        until :meth:`rebalanced`)."""
        order = list(self._servers)
        rng.shuffle(order)
        return order

    def rebalanced(self, order: Sequence[ServerInfo], healthy: bool) -> bool:
        """The outcome of a rebalance: ``order`` with the server that answered its ping at
        the front (the ones that did not rotated behind it), or ``healthy`` False when none
        answered (the list is left as it is, and marked offline).

        Servers that joined while the pings ran are appended, those that left are dropped.
        If the healthy one left meanwhile, nothing changes (False): the next rebalance tries
        again."""
        if not healthy:
            self.offline = True
            return False
        if not order or not self._servers:
            return False
        known = {_key(server): server for server in self._servers}
        if _key(order[0]) not in known:
            return False
        merged: list[ServerInfo] = []
        for server in order:
            fresh = known.pop(_key(server), None)
            if fresh is not None:
                merged.append(fresh)
        merged.extend(server for server in self._servers if _key(server) in known)
        self._servers = merged
        self.offline = False
        return True
