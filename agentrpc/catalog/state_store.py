"""Consul 0.7's state store, sans-I/O: the catalog (nodes, services, checks), the KV store
with its tombstones, sessions, their indexes and every rule of the reference's writes.

Every write takes the Raft index it comes from (``idx``) and stamps what it changes with it;
each table keeps the index of its last change (``maxIndexTxn`` is the max over the tables a
read depends on). A write either happens whole or not at all: every check that can refuse it
runs before anything changes (memdb's transaction abort, without a transaction). Writes that
may invalidate a session take ``now`` (seconds on the caller's clock) for the lock-delay.

The semantics, as ``consul/state`` has them:

- **Registration** (``EnsureRegistration``): the node is upserted unless nothing changed
  (Node as spelled, Address, TaggedAddresses, and 0.7.3+'s ID and Meta: the record is
  rebuilt from the request, so one without them clears them); a node ID another node
  holds is refused (``aliases existing node``); the service likewise (``IsSame``), every check
  always (a missing Status becomes ``critical``; a check of a service copies its ServiceName;
  a critical check destroys the sessions that name it). A check whose node or service is
  missing fails the whole registration (``Missing node registration`` / ``Missing service
  registration``).
- **Deregistration** cascades: a node takes its services, checks and sessions; a service its
  checks; a removed check destroys the sessions that name it.
- **KV**: ``set`` keeps CreateIndex and Session (LockIndex and the rest come from the
  request, as ``kvsSetTxn``); ``cas`` with ModifyIndex 0 only creates; ``delete`` leaves a
  tombstone; ``delete-cas`` is true for a missing key, else only on a matching ModifyIndex;
  ``delete-tree`` tombstones every key under the prefix; ``lock`` needs a live session, takes
  a free key (LockIndex + 1), re-locks a held one, refuses another's; ``unlock`` only by the
  holder. The lock-delay of an invalidated session's keys is kept here (wall-clock state,
  enforced by the leader before it proposes a lock, never by the FSM).
- **Sessions**: create validates the behavior, the node and every check (present and not
  critical); destroy releases (or deletes, by behavior) the keys the session holds and sets
  their lock-delay (capped at 60 s).
- **Coordinates** (``CoordinateBatchUpdate``): a batch upserts each node's network coordinate,
  silently dropping those of nodes the catalog does not know (they come again with the node's
  next update); the table's index moves even when every update was dropped. A node's
  coordinate goes with the node. Records are ``structs.Coordinate`` (Node, Coord): no
  RaftIndex of their own, as the reference's.
- **Reads** return the index they are valid at: the max of their tables' indexes, except KV
  ``Get`` (the KV and tombstone tables), ``List``/``ListKeys`` (the highest ModifyIndex under
  the prefix, tombstones included, else the table indexes) and ``NodeServices`` of a missing
  node (0). A read given a :class:`~agentrpc.catalog.watch.WatchSet` adds what it depended on.

**Names** compare as the reference's memdb indexes do (``Lowercase: true``): node names,
service names, service IDs and check IDs in any case name the same row (:func:`fold_name`),
in every table that holds them (nodes, services, checks, coordinates, the sessions of a
node, the sessions of a check); records keep the case they were written with, and
registering ``FOO`` over ``foo`` updates that node (its name now ``FOO``). KV keys and
session IDs compare exactly. Rows are kept under the folded name, so iteration orders follow
the lower-cased names, as memdb's.

Writes record what they changed (:meth:`StateStore.take_changes`), so the Trio side wakes
exactly the blocked queries concerned. Iteration orders follow memdb's indexes (sorted by id).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Final

from ..gossip.coordinate import Coordinate
from .constants import (
    ERR_MISSING_NODE,
    ERR_MISSING_SERVICE,
    ERR_MISSING_SESSION_ID,
    HEALTH_ANY,
    HEALTH_CRITICAL,
    MAX_LOCK_DELAY_NS,
    SESSION_DELETE,
    SESSION_RELEASE,
    TABLE_CHECKS,
    TABLE_KVS,
    TABLE_NODES,
    TABLE_SERVICES,
    TABLE_SESSIONS,
    TABLE_TOMBSTONES,
    TABLES,
)
from .go_text import go_quote
from .structs import (
    DirEntry,
    HealthCheck,
    Node,
    NodeService,
    RegisterRequest,
    Session,
    StrMap,
    Wire,
    WireDecodeError,
    as_map,
    get_str,
    satisfies_meta_filters,
)
from .watch import Changes, WatchSet, key_item, prefix_item, table_item

__all__ = [
    "TABLE_COORDINATES",
    "CheckServiceNode",
    "NodeCoordinate",
    "NodeInfo",
    "StateError",
    "StateStore",
    "StoreCapture",
    "coordinate_from_wire",
    "coordinate_to_wire",
    "fold_name",
    "node_coordinates_from_wire",
]

TABLE_COORDINATES: Final = "coordinates"
"""The coordinates table (``coordinates`` in the reference's schema)."""

_LOCK_DELAY_PRUNE_AT: Final = 1024
"""Expired lock-delays are swept when the table has grown to twice its size after a sweep
(and at least this many entries), so it stays bounded by the keys locked in the last minute."""


_GO_LOWER_EXCEPTIONS: Final = {"\u0130": "i"}
"""Characters whose full lower-case mapping (Python's) is not their simple one (Go's)."""


def fold_name(name: str) -> str:
    """A name as the reference's lower-cased memdb indexes hold it (Go's ``strings.ToLower``:
    each character's simple lower-case mapping, with no context, so a final sigma stays
    ``σ`` and ``İ`` becomes ``i``)."""
    if name.isascii():
        return name.lower()
    exceptions = _GO_LOWER_EXCEPTIONS
    return "".join(exceptions.get(c) or c.lower() for c in name)


class StateError(Exception):
    """A write the store refused; the message is the reference's error text."""


# ------------------------------------------------------------------ coordinates on the wire


def coordinate_to_wire(coord: Coordinate | None) -> Wire | None:
    """serf's ``coordinate.Coordinate`` as go-msgpack writes it (keys sorted), nil for None."""
    if coord is None:
        return None
    return {
        "Adjustment": coord.adjustment,
        "Error": coord.error,
        "Height": coord.height,
        "Vec": list(coord.vec),
    }


def _float(m: Wire, name: str, what: str) -> float:
    value = m.get(name)
    if value is None:
        return 0.0
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise WireDecodeError(
        f"msgpack decode error: {what}.{name}: expected a float, got {type(value).__name__}"
    )


def coordinate_from_wire(obj: object, what: str = "Coord") -> Coordinate | None:
    """A ``*coordinate.Coordinate`` (nil is None; missing fields are zero, as go-msgpack)."""
    if obj is None:
        return None
    m = as_map(obj, what)
    raw = m.get("Vec")
    if raw is None:
        vec: tuple[float, ...] = ()
    elif type(raw) is list or type(raw) is tuple:
        vec = tuple(_float({"Vec": x}, "Vec", what) for x in raw)
    else:
        raise WireDecodeError(
            f"msgpack decode error: {what}.Vec: expected a list of floats, got {type(raw).__name__}"
        )
    return Coordinate(
        vec,
        _float(m, "Error", what),
        _float(m, "Adjustment", what),
        _float(m, "Height", what),
    )


@dataclass(frozen=True, slots=True)
class NodeCoordinate:
    """``structs.Coordinate``: a node and its LAN coordinate (None only if a command from
    elsewhere carried a nil one; the endpoint never queues such)."""

    node: str
    coord: Coordinate | None

    def to_wire(self) -> Wire:
        return {"Coord": coordinate_to_wire(self.coord), "Node": self.node}

    @classmethod
    def from_wire(cls, obj: object) -> NodeCoordinate:
        what = "Coordinate"
        m = as_map(obj, what)
        return cls(get_str(m, "Node", what), coordinate_from_wire(m.get("Coord"), what))


def node_coordinates_from_wire(obj: object) -> list[NodeCoordinate]:
    """``structs.Coordinates`` (a list; nil is empty). A nil element is refused: the
    reference would insert a nil record and fail."""
    if obj is None:
        return []
    if type(obj) is not list and type(obj) is not tuple:
        raise WireDecodeError(
            f"msgpack decode error: Coordinates: expected a list, got {type(obj).__name__}"
        )
    out = []
    for item in obj:
        if item is None:
            raise WireDecodeError("msgpack decode error: Coordinates: nil element")
        out.append(NodeCoordinate.from_wire(item))
    return out


@dataclass(frozen=True, slots=True)
class CheckServiceNode:
    """``structs.CheckServiceNode``: a service instance with its node and relevant checks."""

    node: Node
    service: NodeService
    checks: tuple[HealthCheck, ...]


@dataclass(frozen=True, slots=True)
class StoreCapture:
    """A point-in-time copy of the tables (:meth:`StateStore.capture`), read in the order a
    snapshot writes them."""

    nodes: dict[str, Node]
    services: dict[str, dict[str, NodeService]]
    checks: dict[str, dict[str, HealthCheck]]
    sessions: dict[str, Session]
    kv_keys: list[str]
    kvs: dict[str, DirEntry]
    tombstone_keys: list[str]
    tombstones: dict[str, int]
    indexes: dict[str, int]
    coordinates: dict[str, NodeCoordinate]

    @property
    def last_index(self) -> int:
        return max(self.indexes.values())

    def iter_nodes(self) -> Iterator[tuple[Node, list[NodeService], list[HealthCheck]]]:
        for name in sorted(self.nodes):
            services = self.services.get(name, {})
            checks = self.checks.get(name, {})
            yield (
                self.nodes[name],
                [services[s] for s in sorted(services)],
                [checks[c] for c in sorted(checks)],
            )

    def iter_sessions(self) -> Iterator[Session]:
        for session_id in sorted(self.sessions):
            yield self.sessions[session_id]

    def iter_kvs(self) -> Iterator[DirEntry]:
        for key in self.kv_keys:
            yield self.kvs[key]

    def iter_tombstones(self) -> Iterator[tuple[str, int]]:
        for key in self.tombstone_keys:
            yield key, self.tombstones[key]

    def iter_coordinates(self) -> Iterator[NodeCoordinate]:
        for node in sorted(self.coordinates):
            yield self.coordinates[node]


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """``structs.NodeInfo``: a node with all its services and checks (``Internal.*``)."""

    node: Node
    services: tuple[NodeService, ...]
    checks: tuple[HealthCheck, ...]


def _add(ws: WatchSet | None, *tables: str) -> None:
    if ws is not None:
        ws.update(table_item(t) for t in tables)


class _SortedKeys:
    """A dict of string keys with a sorted key list beside it, for prefix scans."""

    __slots__ = ("keys", "values")

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.keys: list[str] = []

    def put(self, key: str, value: Any) -> None:
        if key not in self.values:
            bisect.insort(self.keys, key)
        self.values[key] = value

    def pop(self, key: str) -> Any:
        value = self.values.pop(key)
        del self.keys[bisect.bisect_left(self.keys, key)]
        return value

    def with_prefix(self, prefix: str) -> Iterator[str]:
        keys = self.keys
        position = bisect.bisect_left(keys, prefix)
        while position < len(keys) and keys[position].startswith(prefix):
            yield keys[position]
            position += 1

    def clear(self) -> None:
        self.values.clear()
        self.keys.clear()


class StateStore:
    """The tables, their indexes, and Consul 0.7's rules for reading and writing them."""

    def __init__(self) -> None:
        self._nodes: dict[str, Node] = {}
        self._node_ids: dict[str, str] = {}
        """node ID (lower-cased, as the reference's UUID index compares them) -> node."""
        self._services: dict[str, dict[str, NodeService]] = {}
        """node -> service ID -> service."""
        self._service_names: dict[str, set[tuple[str, str]]] = {}
        """service name -> {(node, service ID)}."""
        self._checks: dict[str, dict[str, HealthCheck]] = {}
        """node -> check ID -> check."""
        self._kvs = _SortedKeys()
        self._kv_sessions: dict[str, set[str]] = {}
        """session ID -> keys it holds."""
        self._tombstones = _SortedKeys()
        """key -> the index it was deleted at."""
        self._sessions: dict[str, Session] = {}
        self._node_sessions: dict[str, set[str]] = {}
        self._session_checks: dict[tuple[str, str], set[str]] = {}
        """(node, check ID) -> sessions that name the check."""
        self._coordinates: dict[str, NodeCoordinate] = {}
        """node -> its coordinate."""
        self._indexes: dict[str, int] = dict.fromkeys((*TABLES, TABLE_COORDINATES), 0)
        self._lock_delay: dict[str, float] = {}
        self._lock_delay_sweep_at = _LOCK_DELAY_PRUNE_AT
        self._changes = Changes()

    # ------------------------------------------------------------------ indexes, changes

    def table_index(self, *tables: str) -> int:
        """``maxIndex``: the highest index among ``tables``."""
        return max(self._indexes[t] for t in tables)

    def last_index(self) -> int:
        """The highest index of any table (a snapshot's LastIndex)."""
        return max(self._indexes.values())

    def indexes(self) -> dict[str, int]:
        return dict(self._indexes)

    def take_changes(self) -> Changes:
        """What writes changed since the last call (and forget it)."""
        changes = self._changes
        self._changes = Changes()
        return changes

    def _touch(self, table: str, idx: int) -> None:
        self._indexes[table] = idx
        self._changes.tables.add(table)

    def _touch_key(self, key: str, idx: int) -> None:
        self._indexes[TABLE_KVS] = idx
        self._changes.tables.add(TABLE_KVS)
        self._changes.keys.add(key)

    # ------------------------------------------------------------------ registration

    def ensure_registration(self, idx: int, req: RegisterRequest, now: float) -> None:
        """``EnsureRegistration``: node, service and checks in one all-or-nothing write."""
        checks = ([req.check] if req.check is not None else []) + list(req.checks or ())
        node_key = fold_name(req.node)
        existing_node = self._nodes.get(node_key)
        # ``ChangesNode``: the node record is rebuilt from the request (a request without ID
        # or NodeMeta clears them) whenever one of its fields differs.
        node_changes = existing_node is None or (
            existing_node.node != req.node
            or existing_node.address != req.address
            or existing_node.tagged_addresses != req.tagged_addresses
            or existing_node.id != req.id
            or existing_node.meta != req.node_meta
        )
        if node_changes and req.id:
            owner = self._node_ids.get(req.id.lower())
            if owner is not None and self._nodes[owner].node != req.node:
                raise StateError(
                    f"failed inserting node: node ID {go_quote(req.id)} for node "
                    f"{go_quote(req.node)} aliases existing node "
                    f"{go_quote(self._nodes[owner].node)}"
                )
        service = req.service
        service_key = fold_name(service.id) if service is not None else None
        for check in checks:
            check_node = fold_name(check.node)
            if check_node != node_key and check_node not in self._nodes:
                raise StateError(f"failed inserting check: {ERR_MISSING_NODE}")
            if check.service_id:
                wanted = fold_name(check.service_id)
                if not (
                    (check_node == node_key and service_key == wanted)
                    or wanted in self._services.get(check_node, {})
                ):
                    raise StateError(f"failed inserting check: {ERR_MISSING_SERVICE}")
        if node_changes:
            node = Node(
                req.node,
                req.address,
                req.tagged_addresses,
                id=req.id,
                meta=None if req.node_meta is None else dict(req.node_meta),
            )
            self._ensure_node(idx, node, existing_node)
        if service is not None:
            current = self._services.get(node_key, {}).get(fold_name(service.id))
            if current is None or not current.same_as(service):
                self._ensure_service(idx, node_key, service)
        for check in checks:
            self._ensure_check(idx, check, now)

    def _ensure_node(self, idx: int, node: Node, existing: Node | None) -> None:
        create = existing.create_index if existing is not None else idx
        self._put_node(replace(node, create_index=create, modify_index=idx))
        self._touch(TABLE_NODES, idx)

    def _put_node(self, node: Node) -> None:
        """Store ``node`` (replacing the record of its folded name) and index its ID."""
        key = fold_name(node.node)
        previous = self._nodes.get(key)
        if previous is not None and previous.id:
            self._node_ids.pop(previous.id.lower(), None)
        self._nodes[key] = node
        if node.id:
            self._node_ids[node.id.lower()] = key

    def _ensure_service(self, idx: int, node_key: str, service: NodeService) -> None:
        """Upsert ``service`` on the node whose folded name is ``node_key``."""
        services = self._services.setdefault(node_key, {})
        service_key = fold_name(service.id)
        existing = services.get(service_key)
        if existing is not None:
            self._unindex_service_name(existing.service, node_key, service_key)
        create = existing.create_index if existing is not None else idx
        services[service_key] = replace(service, create_index=create, modify_index=idx)
        self._index_service_name(service.service, node_key, service_key)
        self._touch(TABLE_SERVICES, idx)

    def _index_service_name(self, name: str, node_key: str, service_key: str) -> None:
        self._service_names.setdefault(fold_name(name), set()).add((node_key, service_key))

    def _unindex_service_name(self, name: str, node_key: str, service_key: str) -> None:
        folded = fold_name(name)
        members = self._service_names.get(folded)
        if members is not None:
            members.discard((node_key, service_key))
            if not members:
                del self._service_names[folded]

    def _ensure_check(self, idx: int, check: HealthCheck, now: float) -> None:
        node_key = fold_name(check.node)
        check_key = fold_name(check.check_id)
        node_checks = self._checks.setdefault(node_key, {})
        existing = node_checks.get(check_key)
        create = existing.create_index if existing is not None else idx
        status = check.status or HEALTH_CRITICAL
        service_name = check.service_name
        if check.service_id:
            service_name = self._services[node_key][fold_name(check.service_id)].service
        if status == HEALTH_CRITICAL:
            for session_id in sorted(self._session_checks.get((node_key, check_key), ())):
                self._delete_session(idx, session_id, now)
        node_checks[check_key] = replace(
            check,
            status=status,
            service_name=service_name,
            create_index=create,
            modify_index=idx,
        )
        self._touch(TABLE_CHECKS, idx)

    def delete_node(self, idx: int, node: str, now: float) -> None:
        """``DeleteNode``: the node, its services, checks and sessions (a no-op if absent)."""
        node = fold_name(node)
        if node not in self._nodes:
            return
        for service_id in sorted(self._services.get(node, {})):
            self._delete_service(idx, node, service_id, now)
        for check_id in sorted(self._checks.get(node, {})):
            self._delete_check(idx, node, check_id, now)
        if self._coordinates.pop(node, None) is not None:
            self._touch(TABLE_COORDINATES, idx)
        removed = self._nodes.pop(node)
        if removed.id:
            self._node_ids.pop(removed.id.lower(), None)
        self._services.pop(node, None)
        self._checks.pop(node, None)
        self._touch(TABLE_NODES, idx)
        for session_id in sorted(self._node_sessions.get(node, ())):
            self._delete_session(idx, session_id, now)

    def delete_service(self, idx: int, node: str, service_id: str, now: float) -> None:
        """``DeleteService``: the service and its checks (a no-op if absent)."""
        self._delete_service(idx, fold_name(node), fold_name(service_id), now)

    def _delete_service(self, idx: int, node: str, service_id: str, now: float) -> None:
        """``node`` and ``service_id`` folded."""
        services = self._services.get(node)
        if services is None or service_id not in services:
            return
        for check_id, check in sorted(self._checks.get(node, {}).items()):
            if fold_name(check.service_id) == service_id:
                self._delete_check(idx, node, check_id, now)
        self._touch(TABLE_CHECKS, idx)
        service = services.pop(service_id)
        self._unindex_service_name(service.service, node, service_id)
        self._touch(TABLE_SERVICES, idx)

    def delete_check(self, idx: int, node: str, check_id: str, now: float) -> None:
        """``DeleteCheck``: the check and the sessions that name it (a no-op if absent)."""
        self._delete_check(idx, fold_name(node), fold_name(check_id), now)

    def _delete_check(self, idx: int, node: str, check_id: str, now: float) -> None:
        """``node`` and ``check_id`` folded."""
        checks = self._checks.get(node)
        if checks is None or check_id not in checks:
            return
        del checks[check_id]
        self._touch(TABLE_CHECKS, idx)
        for session_id in sorted(self._session_checks.get((node, check_id), ())):
            self._delete_session(idx, session_id, now)

    # ------------------------------------------------------------------ catalog reads

    def get_node(self, node: str, ws: WatchSet | None = None) -> tuple[int, Node | None]:
        _add(ws, TABLE_NODES)
        return self.table_index(TABLE_NODES), self._nodes.get(fold_name(node))

    def nodes(
        self, ws: WatchSet | None = None, meta_filters: StrMap | None = None
    ) -> tuple[int, list[Node]]:
        """``Nodes``, or ``NodesByMeta`` when ``meta_filters`` is not empty (only the nodes
        whose Meta has every pair; the index is the nodes table's either way)."""
        _add(ws, TABLE_NODES)
        found = [self._nodes[n] for n in sorted(self._nodes)]
        if meta_filters:
            found = [n for n in found if satisfies_meta_filters(n.meta, meta_filters)]
        return self.table_index(TABLE_NODES), found

    def services(
        self, ws: WatchSet | None = None, meta_filters: StrMap | None = None
    ) -> tuple[int, dict[str, list[str]]]:
        """Every service name with the union of its tags (sorted). Names are grouped as
        written (the reference's map is keyed by ServiceName), so ``Web`` and ``web`` are two
        entries. With ``meta_filters`` (``ServicesByNodeMeta``), only the services of nodes
        whose Meta has every pair, at the index of the services and nodes tables."""
        tables = (TABLE_SERVICES, TABLE_NODES) if meta_filters else (TABLE_SERVICES,)
        _add(ws, *tables)
        grouped: dict[str, set[str]] = {}
        for members in self._service_names.values():
            for node, service_id in members:
                if meta_filters and not satisfies_meta_filters(
                    self._nodes[node].meta, meta_filters
                ):
                    continue
                service = self._services[node][service_id]
                grouped.setdefault(service.service, set()).update(service.tags or ())
        result = {name: sorted(grouped[name]) for name in sorted(grouped)}
        return self.table_index(*tables), result

    def _instances(self, name: str, tag: str | None) -> list[tuple[Node, NodeService]]:
        found = []
        wanted = fold_name(tag) if tag is not None else None
        for node, service_id in sorted(self._service_names.get(fold_name(name), ())):
            service = self._services[node][service_id]
            if wanted is not None and not any(fold_name(t) == wanted for t in service.tags or ()):
                continue
            found.append((self._nodes[node], service))
        return found

    def service_nodes(
        self, name: str, tag: str | None = None, ws: WatchSet | None = None
    ) -> tuple[int, list[tuple[Node, NodeService]]]:
        """``ServiceNodes`` / ``ServiceTagNodes`` (``tag``: case-insensitive filter)."""
        _add(ws, TABLE_NODES, TABLE_SERVICES)
        return self.table_index(TABLE_NODES, TABLE_SERVICES), self._instances(name, tag)

    def node_services(
        self, node: str, ws: WatchSet | None = None
    ) -> tuple[int, tuple[Node, dict[str, NodeService]] | None]:
        """``NodeServices``: (0, None) for a missing node, as the reference."""
        _add(ws, TABLE_NODES, TABLE_SERVICES)
        node = fold_name(node)
        found = self._nodes.get(node)
        if found is None:
            return 0, None
        services = self._services.get(node, {})
        return self.table_index(TABLE_NODES, TABLE_SERVICES), (
            found,
            {services[sid].id: services[sid] for sid in sorted(services)},
        )

    def node_checks(self, node: str, ws: WatchSet | None = None) -> tuple[int, list[HealthCheck]]:
        _add(ws, TABLE_CHECKS)
        checks = self._checks.get(fold_name(node), {})
        return self.table_index(TABLE_CHECKS), [checks[c] for c in sorted(checks)]

    def _all_checks(self) -> Iterator[HealthCheck]:
        for node in sorted(self._checks):
            checks = self._checks[node]
            for check_id in sorted(checks):
                yield checks[check_id]

    def _by_node_meta(
        self, checks: list[HealthCheck], meta_filters: StrMap | None, ws: WatchSet | None
    ) -> tuple[int, list[HealthCheck]]:
        """``parseChecksByNodeMeta``: without filters the checks at the checks index; with
        them only the checks of nodes whose Meta has every pair, at the index of the nodes and
        checks tables."""
        if not meta_filters:
            return self.table_index(TABLE_CHECKS), checks
        _add(ws, TABLE_NODES)
        nodes = self._nodes
        kept = [
            c
            for c in checks
            if (node := nodes.get(fold_name(c.node))) is not None
            and satisfies_meta_filters(node.meta, meta_filters)
        ]
        return self.table_index(TABLE_NODES, TABLE_CHECKS), kept

    def service_checks(
        self, name: str, ws: WatchSet | None = None, meta_filters: StrMap | None = None
    ) -> tuple[int, list[HealthCheck]]:
        """The checks of every instance of service ``name`` (by ServiceName); with
        ``meta_filters``, ``ServiceChecksByNodeMeta``."""
        _add(ws, TABLE_CHECKS)
        wanted = fold_name(name)
        found = [c for c in self._all_checks() if fold_name(c.service_name) == wanted]
        return self._by_node_meta(found, meta_filters, ws)

    def checks_in_state(
        self, state: str, ws: WatchSet | None = None, meta_filters: StrMap | None = None
    ) -> tuple[int, list[HealthCheck]]:
        """``ChecksInState``; ``any`` lists every check, ordered by status as memdb's index;
        with ``meta_filters``, ``ChecksInStateByNodeMeta``."""
        _add(ws, TABLE_CHECKS)
        if state == HEALTH_ANY:
            found = sorted(self._all_checks(), key=lambda c: c.status)
        else:
            found = [c for c in self._all_checks() if c.status == state]
        return self._by_node_meta(found, meta_filters, ws)

    def check_service_nodes(
        self, name: str, tag: str | None = None, ws: WatchSet | None = None
    ) -> tuple[int, list[CheckServiceNode]]:
        """``CheckServiceNodes``: each instance with its node's checks and its own."""
        _add(ws, TABLE_NODES, TABLE_SERVICES, TABLE_CHECKS)
        result = []
        for node, service in self._instances(name, tag):
            checks = self._checks.get(fold_name(node.node), {})
            own = fold_name(service.id)
            relevant = tuple(
                checks[c]
                for c in sorted(checks)
                if not checks[c].service_id or fold_name(checks[c].service_id) == own
            )
            result.append(CheckServiceNode(node, service, relevant))
        return self.table_index(TABLE_NODES, TABLE_SERVICES, TABLE_CHECKS), result

    def _node_info(self, node: Node) -> NodeInfo:
        key = fold_name(node.node)
        services = self._services.get(key, {})
        checks = self._checks.get(key, {})
        return NodeInfo(
            node,
            tuple(services[s] for s in sorted(services)),
            tuple(checks[c] for c in sorted(checks)),
        )

    def node_info(self, node: str, ws: WatchSet | None = None) -> tuple[int, list[NodeInfo]]:
        _add(ws, TABLE_NODES, TABLE_SERVICES, TABLE_CHECKS)
        found = self._nodes.get(fold_name(node))
        dump = [] if found is None else [self._node_info(found)]
        return self.table_index(TABLE_NODES, TABLE_SERVICES, TABLE_CHECKS), dump

    def node_dump(self, ws: WatchSet | None = None) -> tuple[int, list[NodeInfo]]:
        _add(ws, TABLE_NODES, TABLE_SERVICES, TABLE_CHECKS)
        dump = [self._node_info(self._nodes[n]) for n in sorted(self._nodes)]
        return self.table_index(TABLE_NODES, TABLE_SERVICES, TABLE_CHECKS), dump

    # ------------------------------------------------------------------ KV writes

    def _kvs_set(self, idx: int, entry: DirEntry, update_session: bool) -> None:
        """``kvsSetTxn``: CreateIndex kept, ModifyIndex = idx, Session kept unless told."""
        existing = self._kvs.values.get(entry.key)
        create = existing.create_index if existing is not None else idx
        session = entry.session
        if not update_session:
            session = existing.session if existing is not None else ""
        if existing is not None and existing.session and existing.session != session:
            self._release_index(existing.session, entry.key)
        stored = replace(entry, create_index=create, modify_index=idx, session=session)
        self._kvs.put(entry.key, stored)
        if session:
            self._kv_sessions.setdefault(session, set()).add(entry.key)
        self._touch_key(entry.key, idx)

    def _release_index(self, session: str, key: str) -> None:
        held = self._kv_sessions.get(session)
        if held is not None:
            held.discard(key)
            if not held:
                del self._kv_sessions[session]

    def kvs_set(self, idx: int, entry: DirEntry) -> None:
        self._kvs_set(idx, entry, update_session=False)

    def kvs_delete(self, idx: int, key: str) -> None:
        """Delete ``key`` leaving a tombstone (a no-op if absent)."""
        if key not in self._kvs.values:
            return
        self._tombstone(idx, key)
        removed: DirEntry = self._kvs.pop(key)
        if removed.session:
            self._release_index(removed.session, key)
        self._touch_key(key, idx)

    def _tombstone(self, idx: int, key: str) -> None:
        self._tombstones.put(key, idx)
        self._indexes[TABLE_TOMBSTONES] = idx
        self._changes.tables.add(TABLE_TOMBSTONES)
        self._changes.tombstone_index = max(self._changes.tombstone_index, idx)

    def kvs_delete_cas(self, idx: int, cas_index: int, key: str) -> bool:
        """True for a missing key; else the delete happens only if ModifyIndex matches."""
        existing = self._kvs.values.get(key)
        if existing is None:
            return True
        if existing.modify_index != cas_index:
            return False
        self.kvs_delete(idx, key)
        return True

    def kvs_set_cas(self, idx: int, entry: DirEntry) -> bool:
        """ModifyIndex 0: set only if absent; otherwise only if it equals the current one."""
        existing = self._kvs.values.get(entry.key)
        if entry.modify_index == 0:
            if existing is not None:
                return False
        elif existing is None or existing.modify_index != entry.modify_index:
            return False
        self._kvs_set(idx, entry, update_session=False)
        return True

    def kvs_delete_tree(self, idx: int, prefix: str) -> None:
        """Delete every key under ``prefix`` (tombstones for each; no-op when none)."""
        doomed = list(self._kvs.with_prefix(prefix))
        for key in doomed:
            self._tombstone(idx, key)
            removed: DirEntry = self._kvs.pop(key)
            if removed.session:
                self._release_index(removed.session, key)
            self._changes.keys.add(key)
        if doomed:
            self._indexes[TABLE_KVS] = idx
            self._changes.tables.add(TABLE_KVS)

    def kvs_lock(self, idx: int, entry: DirEntry) -> bool:
        """Acquire ``entry.key`` for ``entry.session`` (writing its value)."""
        if not entry.session:
            raise StateError("missing session")
        if entry.session not in self._sessions:
            raise StateError(f"invalid session {go_quote(entry.session)}")
        existing = self._kvs.values.get(entry.key)
        if existing is None:
            locked = replace(entry, create_index=idx, lock_index=1)
        elif existing.session == entry.session:
            locked = replace(
                entry, create_index=existing.create_index, lock_index=existing.lock_index
            )
        elif existing.session:
            return False
        else:
            locked = replace(
                entry, create_index=existing.create_index, lock_index=existing.lock_index + 1
            )
        self._kvs_set(idx, replace(locked, modify_index=idx), update_session=True)
        return True

    def kvs_unlock(self, idx: int, entry: DirEntry) -> bool:
        """Release ``entry.key`` if ``entry.session`` holds it (writing its value)."""
        if not entry.session:
            raise StateError("missing session")
        existing = self._kvs.values.get(entry.key)
        if existing is None or existing.session != entry.session:
            return False
        unlocked = replace(
            entry,
            session="",
            lock_index=existing.lock_index,
            create_index=existing.create_index,
            modify_index=idx,
        )
        self._kvs_set(idx, unlocked, update_session=True)
        return True

    def reap_tombstones(self, index: int) -> None:
        """Drop the tombstones at ``index`` or below (the leader's GC, through Raft)."""
        for key in [k for k, at in self._tombstones.values.items() if at <= index]:
            self._tombstones.pop(key)

    # ------------------------------------------------------------------ lock-delay

    def kvs_lock_delay(self, key: str) -> float:
        """When the lock-delay on ``key`` ends (0.0 for none), on the clock writes were given."""
        return self._lock_delay.get(key, 0.0)

    def _set_lock_delay(self, key: str, now: float, delay_ns: int) -> None:
        self._lock_delay[key] = now + delay_ns / 1e9
        if len(self._lock_delay) >= self._lock_delay_sweep_at:
            for stale in [k for k, until in self._lock_delay.items() if until <= now]:
                del self._lock_delay[stale]
            self._lock_delay_sweep_at = max(_LOCK_DELAY_PRUNE_AT, 2 * len(self._lock_delay))

    # ------------------------------------------------------------------ KV reads

    def kvs_get(self, key: str, ws: WatchSet | None = None) -> tuple[int, DirEntry | None]:
        if ws is not None:
            ws.add(key_item(key))
        return self.table_index(TABLE_KVS, TABLE_TOMBSTONES), self._kvs.values.get(key)

    def _prefix_index(self, prefix: str, entries_index: int) -> int:
        """``kvsListTxn``'s index rule: the highest index under the prefix (tombstones
        included), else the tables' index."""
        table = self.table_index(TABLE_KVS, TABLE_TOMBSTONES)
        if prefix:
            stones = self._tombstones.values
            high = max([entries_index, *(stones[k] for k in self._tombstones.with_prefix(prefix))])
        else:
            high = table
        return high if high != 0 else table

    def kvs_list(self, prefix: str, ws: WatchSet | None = None) -> tuple[int, list[DirEntry]]:
        if ws is not None:
            ws.add(prefix_item(prefix))
        values = self._kvs.values
        entries = [values[k] for k in self._kvs.with_prefix(prefix)]
        high = max((e.modify_index for e in entries), default=0)
        return self._prefix_index(prefix, high), entries

    def kvs_list_keys(
        self, prefix: str, separator: str, ws: WatchSet | None = None
    ) -> tuple[int, list[str]]:
        """Keys under ``prefix``; with a separator, each rolled up to (and keeping) the first
        separator after the prefix, duplicates removed. Rolled-up keys still count toward the
        index."""
        if ws is not None:
            ws.add(prefix_item(prefix))
        values = self._kvs.values
        keys: list[str] = []
        high = 0
        last = None
        for key in self._kvs.with_prefix(prefix):
            high = max(high, values[key].modify_index)
            if not separator:
                keys.append(key)
                continue
            cut = key.find(separator, len(prefix))
            if cut < 0:
                keys.append(key)
                continue
            rolled = key[: cut + len(separator)]
            if rolled != last:
                keys.append(rolled)
                last = rolled
        return self._prefix_index(prefix, high), keys

    # ------------------------------------------------------------------ sessions

    def session_create(self, idx: int, session: Session) -> None:
        """``SessionCreate``: validate the behavior, node and checks, then insert."""
        if not session.id:
            raise StateError(ERR_MISSING_SESSION_ID)
        behavior = session.behavior or SESSION_RELEASE
        if behavior not in (SESSION_RELEASE, SESSION_DELETE):
            raise StateError(f"Invalid session behavior: {behavior}")
        if fold_name(session.node) not in self._nodes:
            raise StateError(ERR_MISSING_NODE)
        node_checks = self._checks.get(fold_name(session.node), {})
        for check_id in session.checks or ():
            check = node_checks.get(fold_name(check_id))
            if check is None:
                raise StateError(f"Missing check '{check_id}' registration")
            if check.status == HEALTH_CRITICAL:
                raise StateError(f"Check '{check_id}' is in {check.status} state")
        existing = self._sessions.get(session.id)
        if existing is not None:
            self._unindex_session(existing)
        stored = replace(session, behavior=behavior, create_index=idx, modify_index=idx)
        self._index_session(stored)
        self._touch(TABLE_SESSIONS, idx)

    def _index_session(self, session: Session) -> None:
        self._sessions[session.id] = session
        node = fold_name(session.node)
        self._node_sessions.setdefault(node, set()).add(session.id)
        for check_id in session.checks or ():
            key = (node, fold_name(check_id))
            self._session_checks.setdefault(key, set()).add(session.id)

    def _unindex_session(self, session: Session) -> None:
        del self._sessions[session.id]
        node = fold_name(session.node)
        mine = self._node_sessions.get(node)
        if mine is not None:
            mine.discard(session.id)
            if not mine:
                del self._node_sessions[node]
        for check_id in session.checks or ():
            key = (node, fold_name(check_id))
            named = self._session_checks.get(key)
            if named is not None:
                named.discard(session.id)
                if not named:
                    del self._session_checks[key]

    def session_destroy(self, idx: int, session_id: str, now: float) -> None:
        """``SessionDestroy``: invalidate the session (a no-op if absent)."""
        self._delete_session(idx, session_id, now)

    def _delete_session(self, idx: int, session_id: str, now: float) -> None:
        session = self._sessions.get(session_id)
        if session is None:
            return
        self._unindex_session(session)
        self._touch(TABLE_SESSIONS, idx)
        delay = min(session.lock_delay, MAX_LOCK_DELAY_NS)
        held = sorted(self._kv_sessions.pop(session_id, ()))
        for key in held:
            entry: DirEntry = self._kvs.values[key]
            if session.behavior == SESSION_DELETE:
                self.kvs_delete(idx, key)
            else:
                self._kvs_set(idx, replace(entry, session=""), update_session=True)
            if delay > 0:
                self._set_lock_delay(key, now, delay)

    def session_get(
        self, session_id: str, ws: WatchSet | None = None
    ) -> tuple[int, Session | None]:
        _add(ws, TABLE_SESSIONS)
        return self.table_index(TABLE_SESSIONS), self._sessions.get(session_id)

    def session_list(self, ws: WatchSet | None = None) -> tuple[int, list[Session]]:
        _add(ws, TABLE_SESSIONS)
        sessions = self._sessions
        return self.table_index(TABLE_SESSIONS), [sessions[s] for s in sorted(sessions)]

    def node_sessions(self, node: str, ws: WatchSet | None = None) -> tuple[int, list[Session]]:
        _add(ws, TABLE_SESSIONS)
        ids = sorted(self._node_sessions.get(fold_name(node), ()))
        return self.table_index(TABLE_SESSIONS), [self._sessions[s] for s in ids]

    # ------------------------------------------------------------------ coordinates

    def coordinate_batch_update(self, idx: int, updates: list[NodeCoordinate]) -> None:
        """``CoordinateBatchUpdate``: upsert each update whose node is registered (the others
        are dropped without a word); the table index moves to ``idx`` in any case."""
        nodes = self._nodes
        for update in updates:
            key = fold_name(update.node)
            if key in nodes:
                self._coordinates[key] = update
        self._touch(TABLE_COORDINATES, idx)

    def coordinates(self, ws: WatchSet | None = None) -> tuple[int, list[NodeCoordinate]]:
        """``Coordinates``: every stored coordinate, by node name."""
        _add(ws, TABLE_COORDINATES)
        coords = self._coordinates
        return self.table_index(TABLE_COORDINATES), [coords[n] for n in sorted(coords)]

    def coordinate_get(self, node: str) -> Coordinate | None:
        """``CoordinateGetRaw``: the node's raw coordinate, or None."""
        found = self._coordinates.get(fold_name(node))
        return found.coord if found is not None else None

    # ------------------------------------------------------------------ snapshot and restore

    def capture(self) -> StoreCapture:
        """The tables as they are now, for a snapshot: shallow copies (records are frozen), so
        later writes do not show and the capture may be read from another thread."""
        return StoreCapture(
            nodes=dict(self._nodes),
            services={node: dict(services) for node, services in self._services.items()},
            checks={node: dict(checks) for node, checks in self._checks.items()},
            sessions=dict(self._sessions),
            kv_keys=list(self._kvs.keys),
            kvs=dict(self._kvs.values),
            tombstone_keys=list(self._tombstones.keys),
            tombstones=dict(self._tombstones.values),
            indexes=dict(self._indexes),
            coordinates=dict(self._coordinates),
        )

    def iter_sessions(self) -> Iterator[Session]:
        for session_id in sorted(self._sessions):
            yield self._sessions[session_id]

    def iter_kvs(self) -> Iterator[DirEntry]:
        values = self._kvs.values
        for key in self._kvs.keys:
            yield values[key]

    def iter_tombstones(self) -> Iterator[tuple[str, int]]:
        stones = self._tombstones.values
        for key in self._tombstones.keys:
            yield key, stones[key]

    def services_of(self, node: str) -> list[NodeService]:
        services = self._services.get(fold_name(node), {})
        return [services[s] for s in sorted(services)]

    def checks_of(self, node: str) -> list[HealthCheck]:
        checks = self._checks.get(fold_name(node), {})
        return [checks[c] for c in sorted(checks)]

    def restore_node(self, node: Node) -> None:
        self._put_node(node)
        self._bump(TABLE_NODES, node.modify_index)

    def restore_service(self, node: str, service: NodeService) -> None:
        node_key, service_key = fold_name(node), fold_name(service.id)
        services = self._services.setdefault(node_key, {})
        existing = services.get(service_key)
        if existing is not None:
            self._unindex_service_name(existing.service, node_key, service_key)
        services[service_key] = service
        self._index_service_name(service.service, node_key, service_key)
        self._bump(TABLE_SERVICES, service.modify_index)

    def restore_check(self, check: HealthCheck) -> None:
        self._checks.setdefault(fold_name(check.node), {})[fold_name(check.check_id)] = check
        self._bump(TABLE_CHECKS, check.modify_index)

    def restore_session(self, session: Session) -> None:
        if session.id in self._sessions:
            self._unindex_session(self._sessions[session.id])
        self._index_session(session)
        self._bump(TABLE_SESSIONS, session.modify_index)

    def restore_kv(self, entry: DirEntry) -> None:
        self._kvs.put(entry.key, entry)
        if entry.session:
            self._kv_sessions.setdefault(entry.session, set()).add(entry.key)
        self._bump(TABLE_KVS, entry.modify_index)

    def restore_tombstone(self, key: str, index: int) -> None:
        self._tombstones.put(key, index)
        self._bump(TABLE_TOMBSTONES, index)

    def restore_coordinate(self, entry: NodeCoordinate, index: int) -> None:
        """``StateRestore.Coordinates``: inserted as they come (they were vetted on the way
        in), the table index raised to ``index`` (the snapshot's LastIndex)."""
        self._coordinates[fold_name(entry.node)] = entry
        self._bump(TABLE_COORDINATES, index)

    def restore_indexes(self, indexes: dict[str, int]) -> None:
        """Set table indexes exactly (a snapshot of ours carries them)."""
        for table, value in indexes.items():
            if table in self._indexes:
                self._indexes[table] = value

    def _bump(self, table: str, index: int) -> None:
        """``indexUpdateMaxTxn``."""
        if index > self._indexes[table]:
            self._indexes[table] = index

    def view(self) -> dict[str, Any]:
        """Every table and index as plain values (equality of two stores; lock-delays,
        wall-clock state, are not part of it)."""
        return {
            "nodes": dict(self._nodes),
            "services": {n: dict(s) for n, s in self._services.items() if s},
            "checks": {n: dict(c) for n, c in self._checks.items() if c},
            "kvs": dict(self._kvs.values),
            "tombstones": dict(self._tombstones.values),
            "sessions": dict(self._sessions),
            "coordinates": dict(self._coordinates),
            "indexes": dict(self._indexes),
        }

    def check_invariants(self) -> None:
        """Assert the secondary indexes agree with the tables (for tests)."""
        for key, node_record in self._nodes.items():
            assert key == fold_name(node_record.node), key
        ids = {n.id.lower(): key for key, n in self._nodes.items() if n.id}
        assert ids == self._node_ids, (ids, self._node_ids)
        names: dict[str, set[tuple[str, str]]] = {}
        for node, services in self._services.items():
            assert node in self._nodes, node
            for sid, service in services.items():
                assert sid == fold_name(service.id), sid
                names.setdefault(fold_name(service.service), set()).add((node, sid))
        assert names == self._service_names
        for node, checks in self._checks.items():
            assert node in self._nodes or not checks, node
            for check_key, check in checks.items():
                assert check_key == fold_name(check.check_id), check_key
                assert fold_name(check.node) == node, check
        for node, entry in self._coordinates.items():
            assert node in self._nodes and fold_name(entry.node) == node, node
        held: dict[str, set[str]] = {}
        for entry in self._kvs.values.values():
            if entry.session:
                assert entry.session in self._sessions, entry
                held.setdefault(entry.session, set()).add(entry.key)
        assert held == self._kv_sessions
        assert self._kvs.keys == sorted(self._kvs.values)
        assert self._tombstones.keys == sorted(self._tombstones.values)
        by_node: dict[str, set[str]] = {}
        by_check: dict[tuple[str, str], set[str]] = {}
        for session in self._sessions.values():
            node = fold_name(session.node)
            by_node.setdefault(node, set()).add(session.id)
            for check_id in session.checks or ():
                by_check.setdefault((node, fold_name(check_id)), set()).add(session.id)
        assert by_node == self._node_sessions
        assert by_check == self._session_checks
