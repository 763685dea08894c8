"""The catalog on a server agent, in one call: :func:`install`.

``install`` builds the FSM and its hub, the endpoints (registered on the server port's
:class:`~agentrpc.serverport.endpoints.Endpoints`) and the leader's duties, over the consensus
interfaces it is given, or, by default, those of a lone server (:class:`~agentrpc.catalog.
consensus.LocalApplier`, :class:`~agentrpc.catalog.consensus.LoneServer`). The agent then runs
``catalog.duties.run`` in its nursery while it leads (a lone server: from start to shutdown)
and pushes LAN member changes to ``catalog.duties.member_changed``; every server runs
``catalog.coordinates.run`` (the flush of queued coordinate updates into Raft)::

    catalog = install(endpoints, datacenter=config.datacenter, node_name=config.node_name,
                      members=lambda: self.lan.members(),
                      server_address=lambda: str(self.server_address or ""),
                      logger=self.hub.logger("agent.server.catalog"))
    ...
    await nursery.start(catalog.duties.run)
    await nursery.start(catalog.coordinates.run)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio

from ..gossip.coordinate import Coordinate
from ..log_protocol import LogLike, NullLog
from ..protocol.bodies import Member
from ..serverport.endpoints import Endpoints
from .consensus import Applier, ConsensusFacts, Forwarder, LocalApplier, LoneServer
from .constants import SESSION_TTL_MIN_NS
from .coordinates import COORDINATE_UPDATE_PERIOD_S, CoordinateEndpoints
from .duties import LeaderDuties, ServerChange
from .endpoints import CatalogEndpoints
from .fsm import ConsulFSM
from .hub import StateHub

__all__ = ["Catalog", "install"]


@dataclass
class Catalog:
    """What :func:`install` built."""

    fsm: ConsulFSM
    hub: StateHub
    """Hand this (not the bare FSM) to the Raft engine: it wakes the blocked queries."""
    applier: Applier
    facts: ConsensusFacts
    forwarder: Forwarder
    endpoints: CatalogEndpoints
    duties: LeaderDuties
    coordinates: CoordinateEndpoints
    """``Coordinate.*`` and the update queue (run :meth:`CoordinateEndpoints.run`)."""


def _origin() -> Coordinate | None:
    return Coordinate.origin()


def _no_coordinate(_name: str) -> Coordinate | None:
    return None


def install(
    endpoints: Endpoints,
    *,
    datacenter: str,
    node_name: str,
    members: Callable[[], Iterable[Member]] = tuple,
    server_address: Callable[[], str] = str,
    logger: LogLike | None = None,
    applier: Applier | None = None,
    facts: ConsensusFacts | None = None,
    forwarder: Forwarder | None = None,
    fsm: ConsulFSM | None = None,
    clock: Callable[[], float] = trio.current_time,
    rng: random.Random | None = None,
    session_ttl_min_ns: int = SESSION_TTL_MIN_NS,
    acl_token: str = "",
    on_server_change: ServerChange | None = None,
    lan_coordinate: Callable[[], Coordinate | None] = _origin,
    wan_members: Callable[[], Iterable[Member]] = tuple,
    wan_coordinate: Callable[[str], Coordinate | None] = _no_coordinate,
    coordinate_update_period: float = COORDINATE_UPDATE_PERIOD_S,
) -> Catalog:
    """Build the catalog and register its endpoints on ``endpoints``.

    Without ``applier`` / ``facts`` / ``forwarder`` the server is the lone leader of its
    datacenter: writes apply at once, ``Status.Leader`` is ``server_address()``, and requests
    for another datacenter fail with ``No path to datacenter``."""
    log = logger or NullLog()
    fsm = fsm if fsm is not None else ConsulFSM(clock)
    hub = StateHub(fsm, clock=clock)
    lone = LoneServer(datacenter, server_address)
    applier = applier if applier is not None else LocalApplier(hub)
    facts = facts if facts is not None else lone
    forwarder = forwarder if forwarder is not None else lone
    duties = LeaderDuties(
        hub,
        applier,
        datacenter=datacenter,
        node_name=node_name,
        members=members,
        logger=log,
        token=acl_token,
        clock=clock,
        on_server_change=on_server_change,
    )
    handlers = CatalogEndpoints(
        hub,
        applier,
        facts,
        forwarder,
        datacenter=datacenter,
        timers=duties,
        logger=log,
        clock=clock,
        rng=rng,
        session_ttl_min_ns=session_ttl_min_ns,
    )
    handlers.register(endpoints)
    coordinates = CoordinateEndpoints(
        hub,
        applier,
        facts,
        forwarder,
        datacenter=datacenter,
        lan_coordinate=lan_coordinate,
        wan_members=wan_members,
        wan_coordinate=wan_coordinate,
        update_period=coordinate_update_period,
        logger=log,
        clock=clock,
        rng=rng,
    )
    coordinates.register(endpoints)
    return Catalog(fsm, hub, applier, facts, forwarder, handlers, duties, coordinates)
