"""Consul 0.7's ``Coordinate`` endpoints (``consul/coordinate_endpoint.go``) as server-port
handlers, with the server's batching of coordinate updates into Raft.

- ``Coordinate.Update`` (``CoordinateUpdateRequest`` ``{Coord, Datacenter, Node, Token}``, a
  write): forwarded as every write (another datacenter, else the leader); the coordinate must
  have the dimensionality of this server's own LAN coordinate (``rejected bad coordinate:
  &{...}``, Go's ``%v``; ``Coordinates are disabled`` when this server keeps none) and, beyond
  0.7's check, finite components (JSON cannot carry a NaN, and one would poison every distance
  computed from it); then it is queued, replacing an earlier one of the same node. Nothing
  reaches Raft yet.
- :meth:`CoordinateEndpoints.run` flushes the queue every ``CoordinateUpdatePeriod`` (5 s): at
  most ``CoordinateUpdateBatchSize`` x ``CoordinateUpdateMaxBatches`` (128 x 5) updates, in
  batches of 128, each one Raft command of type ``CoordinateBatchUpdate`` with the
  ignore-unknown flag (an older server skips it); the rest is discarded with the reference's
  warning. The FSM drops the updates of nodes it does not know.
- ``Coordinate.ListNodes`` (``DCSpecificRequest``, a read): forwarded as reads are, then a
  blocking query on the coordinates table: ``IndexedCoordinates`` ``{Coordinates, Index,
  KnownLeader, LastContact}``, the coordinates by node name (nil when none).
- ``Coordinate.ListDatacenters`` (``struct{}``, never forwarded): from this server's WAN pool,
  one ``DatacenterMap`` ``{Coordinates, Datacenter}`` per datacenter that has a live server
  there, datacenters by name; in each, the servers' cached WAN coordinates (those it has),
  their names without the ``.<datacenter>`` suffix.

Resources: the queue holds at most one coordinate per node and at most the flush limit of
nodes (updates for more nodes until the next flush are discarded and counted, the very ones
the reference would discard at the flush); :meth:`CoordinateEndpoints.run` is the only task.
ACL tokens are accepted and not enforced, as everywhere in this catalog.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, cast

import trio

from ..gossip.coordinate import Coordinate
from ..log_protocol import LogLike, NullLog, clip
from ..member_status import STATUS_ALIVE
from ..protocol.bodies import Member
from ..serverport.endpoints import EndpointError, Handler
from .blocking import blocking_query
from .consensus import Applier, ApplyError, ConsensusFacts, Forwarder
from .constants import IGNORE_UNKNOWN_TYPE_FLAG, MessageType
from .forwarding import ForwardingEndpoints
from .hub import StateHub
from .servers import parse_server
from .state_store import NodeCoordinate, coordinate_from_wire, coordinate_to_wire
from .structs import (
    DCSpecificRequest,
    Wire,
    as_map,
    get_str,
    indexed_reply,
)
from .watch import WatchSet

__all__ = [
    "COORDINATE_LIST_DATACENTERS",
    "COORDINATE_LIST_NODES",
    "COORDINATE_UPDATE",
    "COORDINATE_UPDATE_BATCH_SIZE",
    "COORDINATE_UPDATE_MAX_BATCHES",
    "COORDINATE_UPDATE_PERIOD_S",
    "ERR_COORDINATES_DISABLED",
    "CoordinateEndpoints",
    "CoordinateUpdateRequest",
    "go_coordinate_text",
]

COORDINATE_UPDATE: Final = "Coordinate.Update"
COORDINATE_LIST_NODES: Final = "Coordinate.ListNodes"
COORDINATE_LIST_DATACENTERS: Final = "Coordinate.ListDatacenters"

COORDINATE_UPDATE_PERIOD_S: Final = 5.0
"""``CoordinateUpdatePeriod``: how long a server batches updates before applying them."""
COORDINATE_UPDATE_BATCH_SIZE: Final = 128
"""``CoordinateUpdateBatchSize``: updates per Raft command."""
COORDINATE_UPDATE_MAX_BATCHES: Final = 5
"""``CoordinateUpdateMaxBatches``: batches per period; updates beyond are discarded."""

ERR_COORDINATES_DISABLED: Final = "Coordinates are disabled"
"""Serf's ``GetCoordinate`` error when the pool keeps no coordinates."""

_BATCH_TYPE: Final = MessageType.COORDINATE_BATCH_UPDATE | IGNORE_UNKNOWN_TYPE_FLAG


def _go_float(value: float) -> str:
    """``fmt``'s ``%v`` of a float64 (``strconv.FormatFloat(v, 'g', -1, 64)`` with the
    shortest digits and Go's exponent form ``e-05``)."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0.0:
        return "-0" if str(value).startswith("-") else "0"
    digits, exponent = _shortest(value)
    sign = "-" if value < 0 else ""
    if exponent < -4 or exponent >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        exp_sign = "-" if exponent < 0 else "+"
        return f"{sign}{mantissa}e{exp_sign}{abs(exponent):02d}"
    if exponent < 0:
        return f"{sign}0.{'0' * (-exponent - 1)}{digits}"
    if exponent + 1 >= len(digits):
        return f"{sign}{digits}{'0' * (exponent + 1 - len(digits))}"
    return f"{sign}{digits[: exponent + 1]}.{digits[exponent + 1 :]}"


def _shortest(value: float) -> tuple[str, int]:
    """The shortest round-tripping decimal digits of ``|value|`` and its decimal exponent."""
    text = repr(abs(value))
    mantissa, _, exp_text = text.partition("e")
    exponent = int(exp_text) if exp_text else 0
    whole, _, fraction = mantissa.partition(".")
    if fraction == "0":
        fraction = ""
    digits = (whole + fraction).lstrip("0")
    leading = len(whole + fraction) - len((whole + fraction).lstrip("0"))
    exponent += len(whole) - 1 - leading
    return digits.rstrip("0") or "0", exponent


def go_coordinate_text(coord: Coordinate | None) -> str:
    """``fmt.Sprintf("%v", coord)`` of a ``*coordinate.Coordinate``: ``&{[v ...] e a h}``,
    ``<nil>`` for none."""
    if coord is None:
        return "<nil>"
    vec = " ".join(_go_float(x) for x in coord.vec)
    rest = " ".join(_go_float(x) for x in (coord.error, coord.adjustment, coord.height))
    return f"&{{[{vec}] {rest}}}"


@dataclass(frozen=True, slots=True)
class CoordinateUpdateRequest:
    """``structs.CoordinateUpdateRequest`` (``WriteRequest`` inlined)."""

    datacenter: str = ""
    node: str = ""
    coord: Coordinate | None = None
    token: str = ""

    def to_wire(self) -> Wire:
        return {
            "Coord": coordinate_to_wire(self.coord),
            "Datacenter": self.datacenter,
            "Node": self.node,
            "Token": self.token,
        }

    @classmethod
    def from_wire(cls, obj: object) -> CoordinateUpdateRequest:
        what = "CoordinateUpdateRequest"
        m = as_map(obj, what)
        return cls(
            datacenter=get_str(m, "Datacenter", what),
            node=get_str(m, "Node", what),
            coord=coordinate_from_wire(m.get("Coord"), f"{what}.Coord"),
            token=get_str(m, "Token", what),
        )


def _nothing(_name: str) -> Coordinate | None:
    return None


def _origin() -> Coordinate | None:
    return Coordinate.origin()


class CoordinateEndpoints(ForwardingEndpoints):
    """The three handlers and the update queue, over one hub, applier, facts and forwarder.

    ``lan_coordinate``: this server's own LAN coordinate (None when coordinates are off),
    the reference for the dimensionality check; ``wan_members`` and ``wan_coordinate``: the
    WAN pool's members and its cached coordinate of a member (None when it has none)."""

    def __init__(
        self,
        hub: StateHub,
        applier: Applier,
        facts: ConsensusFacts,
        forwarder: Forwarder,
        *,
        datacenter: str,
        lan_coordinate: Callable[[], Coordinate | None] = _origin,
        wan_members: Callable[[], Iterable[Member]] = tuple,
        wan_coordinate: Callable[[str], Coordinate | None] = _nothing,
        update_period: float = COORDINATE_UPDATE_PERIOD_S,
        batch_size: int = COORDINATE_UPDATE_BATCH_SIZE,
        max_batches: int = COORDINATE_UPDATE_MAX_BATCHES,
        logger: LogLike | None = None,
        clock: Callable[[], float] = trio.current_time,
        rng: random.Random | None = None,
    ) -> None:
        if update_period <= 0 or batch_size < 1 or max_batches < 1:
            raise ValueError("the update period, batch size and batch count must be positive")
        self.hub = hub
        self.applier = applier
        self.facts = facts
        self.forwarder = forwarder
        self.datacenter = datacenter
        self._lan_coordinate = lan_coordinate
        self._wan_members = wan_members
        self._wan_coordinate = wan_coordinate
        self.update_period = update_period
        self.batch_size = batch_size
        self.max_batches = max_batches
        self._log: LogLike = logger or NullLog()
        self._clock = clock
        self._rng = rng or random.Random()
        self._pending: dict[str, Coordinate] = {}
        self._discarded = 0
        self.batches_applied = 0
        """Raft commands of coordinate batches committed so far (for tests and stats)."""

    @property
    def limit(self) -> int:
        """Updates one flush applies at most (batch size x batches)."""
        return self.batch_size * self.max_batches

    @property
    def pending(self) -> int:
        """Nodes whose update waits for the next flush."""
        return len(self._pending)

    def handlers(self) -> dict[str, Handler]:
        return {
            COORDINATE_UPDATE: self.update,
            COORDINATE_LIST_NODES: self.list_nodes,
            COORDINATE_LIST_DATACENTERS: self.list_datacenters,
        }

    # ------------------------------------------------------------------ Update

    async def update(self, body: Any) -> Wire:
        request, done, reply = await self._forward_write(
            COORDINATE_UPDATE, body, CoordinateUpdateRequest.from_wire
        )
        if done:
            return reply  # type: ignore[no-any-return]
        own = self._lan_coordinate()
        if own is None:
            raise EndpointError(ERR_COORDINATES_DISABLED)
        coord = request.coord
        if coord is None or not own.is_compatible_with(coord) or not coord.is_valid():
            raise EndpointError(f"rejected bad coordinate: {go_coordinate_text(coord)}")
        pending = self._pending
        if request.node in pending or len(pending) < self.limit:
            pending[request.node] = coord
        else:
            self._discarded += 1
        return {}

    # ------------------------------------------------------------------ the flush

    def take_batches(self) -> list[list[Wire]]:
        """Empty the queue into Raft command bodies (``structs.Coordinates`` of at most
        ``batch_size``), logging the discarded updates as the reference does."""
        pending, self._pending = self._pending, {}
        discarded, self._discarded = self._discarded, 0
        updates = [NodeCoordinate(node, coord).to_wire() for node, coord in pending.items()]
        if len(updates) > self.limit:
            discarded += len(updates) - self.limit
            del updates[self.limit :]
        if discarded:
            self._log.warn(f"consul.coordinate: Discarded {discarded} coordinate updates")
        size = self.batch_size
        return [updates[start : start + size] for start in range(0, len(updates), size)]

    async def flush(self) -> int:
        """``batchApplyUpdates``: apply the queued updates; the number of batches committed.
        A batch that fails ends the flush (the rest of this period's updates are lost, as in
        the reference: the nodes send again)."""
        applied = 0
        for batch in self.take_batches():
            try:
                response = await self.applier.apply(_BATCH_TYPE, cast(Wire, batch))
            except ApplyError as exc:
                self._log.warn(f"consul.coordinate: Batch update failed: {clip(exc)}")
                break
            if isinstance(response, Exception):
                self._log.warn(f"consul.coordinate: Batch update failed: {clip(response)}")
                break
            applied += 1
            self.batches_applied += 1
        return applied

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Flush every :attr:`update_period`, until cancelled (``batchUpdate``)."""
        task_status.started()
        while True:
            await trio.sleep(self.update_period)
            await self.flush()

    # ------------------------------------------------------------------ reads

    async def list_nodes(self, body: Any) -> Any:
        request, done, reply = await self._forward_read(
            COORDINATE_LIST_NODES, body, DCSpecificRequest.from_wire
        )
        if done:
            return reply

        def run(ws: WatchSet) -> tuple[int, Wire]:
            index, coords = self.hub.store.coordinates(ws)
            return index or 1, {"Coordinates": [c.to_wire() for c in coords] or None}

        meta, fields = await blocking_query(
            self.hub, self.facts, request.options, run, rng=self._rng, clock=self._clock
        )
        return indexed_reply(meta, fields)

    def datacenter_maps(self) -> list[Wire]:
        """``getDatacenterMaps`` over the WAN pool's live servers, datacenters by name."""
        by_dc: dict[str, list[Wire]] = {}
        for member in self._wan_members():
            info = parse_server(member)
            if info is None or info.status != STATUS_ALIVE:
                continue
            entries = by_dc.setdefault(info.datacenter, [])
            coord = self._wan_coordinate(member.name)
            if coord is None:
                continue
            suffix = f".{info.datacenter}"
            name = member.name[: -len(suffix)] if member.name.endswith(suffix) else member.name
            entries.append(NodeCoordinate(name, coord).to_wire())
        return [
            {
                "Coordinates": sorted(by_dc[dc], key=lambda e: str(e["Node"])) or None,
                "Datacenter": dc,
            }
            for dc in sorted(by_dc)
        ]

    async def list_datacenters(self, _body: Any) -> list[Wire]:
        await trio.lowlevel.checkpoint()
        return self.datacenter_maps()
