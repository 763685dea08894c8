"""Serf's network coordinates riding on memberlist's pings (serf's ping_delegate.go and its
coordinate cache).

:class:`SerfCoordinates` is a pool's :class:`~agentrpc.gossip.contract.PingDelegate`: memberlist
asks it for the payload of every ack it sends (our coordinate, as serf encodes it) and tells it
about every direct probe acked in time (the peer's name, the RTT and the ack's payload). From
that it keeps, as serf does:

* our own coordinate, in a :class:`~agentrpc.gossip.coordinate.CoordinateClient` fed with every
  acceptable observation;
* a cache of each peer's latest coordinate as the peer itself sent it, and ours under our own
  name, for ``get-coordinate`` / ``rtt``.

Wiring (memberlist's ``Config.Ping``; serf leaves it unset when ``DisableCoordinates``)::

    coordinates = SerfCoordinates(name, logger=hub.logger("serf"), max_nodes=max_members)
    MemberlistConfig(..., ping=coordinates)
    # and when serf reaps a member: coordinates.forget(name)  (or on_member_event)

Bounds: the cache and the client's per-node RTT samples hold at most ``max_nodes`` peers (the
pool's ``gossip_max_members``; :meth:`SerfCoordinates.set_max_nodes` changes it); a new peer
past it takes the place of the one heard from longest ago. Reaped members are dropped
(:meth:`SerfCoordinates.forget`, :meth:`SerfCoordinates.on_member_event`). Only coordinates
the client accepted are cached, so every cached one is finite and of our dimensionality.

Errors: nothing a peer sends raises. An unsupported version, an undecodable coordinate and a
refused observation are logged as serf logs them (``Unsupported ping version: 2``, ``Failed to
decode coordinate from ping: ...``, ``Rejected coordinate from NODE: ...``), through the
throttle (``serf.coordinate-*`` keys) with peer text clipped, and counted in :attr:`stats`.

Pure: no trio, no I/O, no clock (the RTT comes from memberlist); randomness from ``rng``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from agentrpc.gossip.contract import NodeInfo
from agentrpc.gossip.coordinate import (
    Coordinate,
    CoordinateClient,
    CoordinateConfig,
    CoordinateError,
    RandomSource,
    UnsupportedPingVersion,
    decode_ping_payload,
    encode_ping_payload,
)
from agentrpc.gossip.messages import GossipDecodeError
from agentrpc.gossip.node_table import DEFAULT_MAX_MEMBERS
from agentrpc.gossip.serf import MemberEvent, MemberEventType
from agentrpc.log_protocol import ERR, TRACE, LogLike, NullLog, clip

__all__ = ["CoordinateStats", "SerfCoordinates"]


@dataclass(slots=True)
class CoordinateStats:
    """What the coordinate delegate has seen (never reset)."""

    updates: int = 0
    """Observations that moved our coordinate."""
    rejected: int = 0
    """Observations refused: bad version, undecodable, invalid or incompatible coordinate,
    RTT out of range (serf's ``serf.coordinate.rejected`` counts the last three)."""
    evicted: int = 0
    """Peers dropped from the cache to make room for a new one."""


class SerfCoordinates:
    """Our Vivaldi coordinate and the cache of our peers' (see the module docstring)."""

    def __init__(
        self,
        node_name: str,
        *,
        config: CoordinateConfig | None = None,
        logger: LogLike | None = None,
        rng: RandomSource | None = None,
        max_nodes: int = DEFAULT_MAX_MEMBERS,
    ) -> None:
        if max_nodes < 1:
            raise ValueError(f"max_nodes must be positive, got {max_nodes}")
        self._name = node_name
        self._log: LogLike = logger if logger is not None else NullLog()
        self._client = CoordinateClient(config, rng=rng if rng is not None else random.Random())
        self._cache: dict[str, Coordinate] = {}  # oldest update first
        self._max_nodes = max_nodes
        self._payload_of: Coordinate | None = None
        self._payload = b""
        self.stats = CoordinateStats()

    # ------------------------------------------------------------------ views

    @property
    def local_name(self) -> str:
        return self._name

    @property
    def coordinate(self) -> Coordinate:
        """Our coordinate (serf's ``GetCoordinate``)."""
        return self._client.coordinate

    @property
    def resets(self) -> int:
        """How often our coordinate was reset after an invalid computation."""
        return self._client.resets

    @property
    def max_nodes(self) -> int:
        return self._max_nodes

    @property
    def tracked_nodes(self) -> int:
        """Peers whose recent RTTs the client keeps (never more than :attr:`max_nodes`, plus
        a peer that used our own name)."""
        return self._client.tracked_nodes

    def get_cached_coordinate(self, name: str) -> Coordinate | None:
        """The latest coordinate of ``name`` (ours under our own name), or None if we have
        none (serf's ``GetCachedCoordinate``)."""
        if name == self._name:
            return self._client.coordinate
        return self._cache.get(name)

    def cached_coordinates(self) -> dict[str, Coordinate]:
        """Every cached coordinate by node name, ours included."""
        cached = dict(self._cache)
        cached[self._name] = self._client.coordinate
        return cached

    def serf_stats(self) -> dict[str, str]:
        """What serf adds to its stats when coordinates are on."""
        return {"coordinate_resets": str(self._client.resets)}

    # ------------------------------------------------------------------ PingDelegate

    def ack_payload(self) -> bytes:
        """Our coordinate as serf sends it in acks (re-encoded only when it moved)."""
        coord = self._client.coordinate
        if coord is not self._payload_of:
            self._payload = encode_ping_payload(coord)
            self._payload_of = coord
        return self._payload

    def notify_ping_complete(self, node: NodeInfo, rtt: float, payload: bytes) -> None:
        """A direct probe of ``node`` took ``rtt`` seconds and its ack carried ``payload``:
        learn from the peer's coordinate and cache it. An empty payload (a peer without
        coordinates) is ignored, anything unusable is logged and counted."""
        if not payload:
            return
        try:
            other = decode_ping_payload(payload)
        except UnsupportedPingVersion as exc:
            self._reject(ERR, "serf.coordinate-version", str(exc))
            return
        except GossipDecodeError as exc:
            message = f"Failed to decode coordinate from ping: {clip(exc)}"
            self._reject(ERR, "serf.coordinate-decode", message)
            return
        name = node.name
        try:
            self._client.update(name, other, rtt)
        except CoordinateError as exc:
            message = f"Rejected coordinate from {clip(name)}: {clip(exc)}"
            self._reject(TRACE, "serf.coordinate-rejected", message)
            return
        self.stats.updates += 1
        if name == self._name:
            return  # a peer using our name: learn from it, but never cache over our own
        if self._cache.pop(name, None) is None:
            self._make_room(len(self._cache) + 1 - self._max_nodes)
        self._cache[name] = other

    def _reject(self, level: int, key: str, message: str) -> None:
        self.stats.rejected += 1
        self._log.throttled(level, key, message)

    # ------------------------------------------------------------------ forgetting

    def forget(self, name: str) -> None:
        """Drop what is kept about ``name`` (serf does it when it reaps the member)."""
        self._cache.pop(name, None)
        self._client.forget_node(name)

    def on_member_event(self, event: MemberEvent) -> None:
        """A serf member event: a reaped member is forgotten."""
        if event.type is MemberEventType.REAP:
            self.forget(event.member.name)

    def set_max_nodes(self, max_nodes: int) -> None:
        """Change the bound (``reload``); the peers heard from longest ago go at once if the
        cache holds more."""
        if max_nodes < 1:
            raise ValueError(f"max_nodes must be positive, got {max_nodes}")
        self._max_nodes = max_nodes
        self._make_room(len(self._cache) - max_nodes)

    def _make_room(self, excess: int) -> None:
        for _ in range(max(0, excess)):
            oldest = next(iter(self._cache))
            self.forget(oldest)
            self.stats.evicted += 1
