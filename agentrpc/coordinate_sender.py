"""The agent's side of Consul's network coordinates: every agent sends its LAN coordinate to a
server, periodically (``sendCoordinate`` of Consul 0.7's ``command/agent/agent.go``).

The interval targets an aggregate rate across the cluster, not a per-node period: with ``n``
LAN members and a target of ``SyncCoordinateRateTarget`` (64) updates a second, each agent
waits ``n / 64`` seconds, but never less than ``SyncCoordinateIntervalMin`` (15 s)
(``lib.RateScaledInterval``), plus a random stagger of up to as much again
(``lib.RandomStagger``). Then it sends ``Coordinate.Update`` ``{Coord, Datacenter, Node,
Token}``: a server agent through its own server port in-process, a client agent through its
server manager. A failed update is logged (``coordinate update error: ...``, on the
``agent`` logger) and the next one comes at the next interval. The agent does not start this
loop when coordinates are disabled, and skips a round while its LAN pool has no coordinate yet.

Consul 0.7 also skips rounds while some server speaks a protocol below 3; every server this
project talks to speaks 3, so there is no such check here.

:func:`run_until` runs a loop until an event is set, so that the agent's shutdown ends it at
once rather than at the background nursery's drain deadline.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from .catalog.coordinates import COORDINATE_UPDATE, CoordinateUpdateRequest
from .gossip.coordinate import Coordinate
from .log_protocol import ERR, LogLike, NullLog, clip
from .membership import GossipPool, MembershipPool
from .serverport.endpoints import RemoteError, RPCCallError

__all__ = [
    "SYNC_COORDINATE_INTERVAL_MIN_S",
    "SYNC_COORDINATE_RATE_TARGET",
    "CoordinateSender",
    "lan_coordinate",
    "pool_coordinate",
    "random_stagger",
    "rate_scaled_interval",
    "run_until",
]

SYNC_COORDINATE_RATE_TARGET: Final = 64.0
"""``SyncCoordinateRateTarget``: coordinate updates a second, across the whole cluster."""
SYNC_COORDINATE_INTERVAL_MIN_S: Final = 15.0
"""``SyncCoordinateIntervalMin``: the shortest interval between two updates of one agent."""

Call = Callable[[str, Any], Awaitable[Any]]


def rate_scaled_interval(rate: float, minimum: float, members: int) -> float:
    """``lib.RateScaledInterval``: ``members / rate`` seconds, at least ``minimum``."""
    interval = members / rate
    return minimum if interval < minimum else interval


def random_stagger(interval: float, draw: float) -> float:
    """``lib.RandomStagger``: a random part of ``interval``, ``draw`` in [0, 1)."""
    return interval * draw


def pool_coordinate(pool: MembershipPool | None, name: str | None = None) -> Coordinate | None:
    """A gossip pool's coordinate of ``name`` (its own with None); None when the pool keeps
    no coordinates (disabled, or not a gossip pool) or has none for that node."""
    coordinates = pool.coordinates if isinstance(pool, GossipPool) else None
    if coordinates is None:
        return None
    if name is None:
        return coordinates.coordinate
    return coordinates.get_cached_coordinate(name)


def lan_coordinate(pool: Callable[[], MembershipPool | None]) -> Callable[[], Coordinate | None]:
    """The own coordinate of the pool ``pool()`` returns at each call (the agent replaces its
    pools when gossip starts)."""
    return lambda: pool_coordinate(pool())


class CoordinateSender:
    """Sends this agent's LAN coordinate to a server every interval (see the module)."""

    def __init__(
        self,
        call: Call,
        coordinate: Callable[[], Coordinate | None],
        members: Callable[[], int],
        *,
        datacenter: str,
        node_name: str,
        token: str = "",
        interval_min: float = SYNC_COORDINATE_INTERVAL_MIN_S,
        rate_target: float = SYNC_COORDINATE_RATE_TARGET,
        logger: LogLike | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if interval_min <= 0 or rate_target <= 0:
            raise ValueError("the minimum interval and the rate target must be positive")
        self._call = call
        self._coordinate = coordinate
        self._members = members
        self.datacenter = datacenter
        self.node_name = node_name
        self.token = token
        self.interval_min = interval_min
        self.rate_target = rate_target
        self._log: LogLike = logger or NullLog()
        self._rng = rng or random.Random()
        self.sent = 0
        """Updates a server accepted so far."""
        self.failed = 0
        """Updates that failed (no server, an error answer)."""

    def interval(self) -> float:
        """The wait before the next update: the rate-scaled interval plus its stagger."""
        base = rate_scaled_interval(self.rate_target, self.interval_min, self._members())
        return base + random_stagger(base, self._rng.random())

    async def send_once(self) -> bool:
        """Send the current coordinate; False when there was none or the update failed."""
        coord = self._coordinate()
        if coord is None:
            await trio.lowlevel.checkpoint()
            return False
        request = CoordinateUpdateRequest(
            datacenter=self.datacenter, node=self.node_name, coord=coord, token=self.token
        )
        try:
            await self._call(COORDINATE_UPDATE, request.to_wire())
        except RemoteError as exc:
            text = exc.error
        except RPCCallError as exc:
            text = str(exc)
        else:
            self.sent += 1
            return True
        self.failed += 1
        self._log.throttled(
            ERR, "agent:coordinate-update", f"coordinate update error: {clip(text)}"
        )
        return False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send every :meth:`interval`, until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self.interval())
            await self.send_once()


async def run_until(
    stop: trio.Event,
    loop: Callable[..., Awaitable[None]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``loop`` (a ``task_status``-taking task) until ``stop`` is set, then cancel it."""
    async with trio.open_nursery() as nursery:
        await nursery.start(loop)
        task_status.started()
        await stop.wait()
        nursery.cancel_scope.cancel()
