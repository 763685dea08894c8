"""Consul 0.7's request, reply and record structs as the wire carries them.

Every struct is a msgpack map keyed by the Go field names, embedded structs inlined
(``QueryOptions``, ``QueryMeta``, ``WriteRequest``, ``RaftIndex``). Encoding follows
go-msgpack: **keys sorted** (its ``sfiSortedByEncName``), every field present (no omitempty),
a nil slice, map or pointer as nil, ``time.Duration`` as int64 nanoseconds, ``[]byte`` as bytes.
Every ``to_wire`` below writes its keys in that sorted order literally (a test checks it).

Decoding is tolerant the way go-msgpack is: unknown keys are ignored, a missing or nil field
is the zero value, and strings arrive as str or bin (``Value`` may arrive as a raw str, which
old-spec encoders such as Consul 0.7's write for ``[]byte``). A value of the wrong type raises
:class:`WireDecodeError` naming the field, as go-msgpack refuses it.

Records kept by the state store (:class:`Node`, :class:`NodeService`, :class:`HealthCheck`,
:class:`DirEntry`, :class:`Session`) are frozen: a write replaces a record, so a read may hand
out what it holds. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Protocol

from ..protocol.msgpack_wire import MAX_UINT64, TEXT_ERRORS, text_bytes
from .constants import HEALTH_CRITICAL

_MIN_INT64: Final = -(1 << 63)
_MAX_INT64: Final = (1 << 63) - 1

Wire = dict[str, Any]
StrMap = dict[str, str]
StrList = tuple[str, ...]


class WireDecodeError(ValueError):
    """A request or record whose shape go-msgpack would refuse (the message names the field)."""


# ------------------------------------------------------------------ decoding helpers


def _fail(what: str, name: str, expected: str, value: object) -> WireDecodeError:
    return WireDecodeError(
        f"msgpack decode error: {what}.{name}: expected {expected}, got {type(value).__name__}"
    )


def as_map(obj: object, what: str) -> Wire:
    """A struct's map (nil is the zero struct)."""
    if obj is None:
        return {}
    if type(obj) is not dict:
        raise WireDecodeError(
            f"msgpack decode error: {what}: expected a map, got {type(obj).__name__}"
        )
    return obj


def _text(value: object, what: str, name: str) -> str:
    if type(value) is str:
        return value
    if value is None:
        return ""
    if type(value) is bytes:
        return value.decode("utf-8", TEXT_ERRORS)
    raise _fail(what, name, "a string", value)


def get_str(m: Wire, name: str, what: str) -> str:
    return _text(m.get(name), what, name)


def get_uint(m: Wire, name: str, what: str) -> int:
    value = m.get(name)
    if value is None:
        return 0
    if type(value) is int and 0 <= value <= MAX_UINT64:
        return value
    raise _fail(what, name, "an unsigned integer", value)


def get_int(m: Wire, name: str, what: str) -> int:
    value = m.get(name)
    if value is None:
        return 0
    if type(value) is int and _MIN_INT64 <= value <= _MAX_INT64:
        return value
    raise _fail(what, name, "an integer", value)


def get_bool(m: Wire, name: str, what: str) -> bool:
    value = m.get(name)
    if value is None:
        return False
    if type(value) is bool:
        return value
    raise _fail(what, name, "a bool", value)


def get_bytes(m: Wire, name: str, what: str) -> bytes | None:
    value = m.get(name)
    if value is None:
        return None
    if type(value) is bytes:
        return value
    if type(value) is str:
        return text_bytes(value)
    raise _fail(what, name, "bytes", value)


def get_str_list(m: Wire, name: str, what: str) -> StrList | None:
    value = m.get(name)
    if value is None:
        return None
    if type(value) is not list and type(value) is not tuple:
        raise _fail(what, name, "a list of strings", value)
    return tuple(_text(item, what, name) for item in value)


def get_str_map(m: Wire, name: str, what: str) -> StrMap | None:
    value = m.get(name)
    if value is None:
        return None
    if type(value) is not dict:
        raise _fail(what, name, "a map of strings", value)
    return {_text(k, what, name): _text(v, what, name) for k, v in value.items()}


def _list(value: object, what: str, name: str) -> list[Any] | None:
    if value is None:
        return None
    if type(value) is not list and type(value) is not tuple:
        raise _fail(what, name, "a list", value)
    return list(value)


def _copy_map(value: StrMap | None) -> StrMap | None:
    return None if value is None else dict(sorted(value.items()))


# ------------------------------------------------------------------ records


@dataclass(frozen=True, slots=True)
class Node:
    """``structs.Node``: Node, Address, TaggedAddresses + RaftIndex, and Consul 0.7.3+'s
    ``ID`` (the node's UUID, "" when unset) and ``Meta`` (nil when unset). The two come last
    here so positional construction keeps its 0.7 order; a 0.7.0 body without them decodes
    to "" and None."""

    node: str
    address: str = ""
    tagged_addresses: StrMap | None = None
    create_index: int = 0
    modify_index: int = 0
    id: str = ""
    meta: StrMap | None = None

    def to_wire(self) -> Wire:
        return {
            "Address": self.address,
            "CreateIndex": self.create_index,
            "ID": self.id,
            "Meta": _copy_map(self.meta),
            "ModifyIndex": self.modify_index,
            "Node": self.node,
            "TaggedAddresses": _copy_map(self.tagged_addresses),
        }

    @classmethod
    def from_wire(cls, obj: object) -> Node:
        m = as_map(obj, "Node")
        return cls(
            node=get_str(m, "Node", "Node"),
            address=get_str(m, "Address", "Node"),
            tagged_addresses=get_str_map(m, "TaggedAddresses", "Node"),
            create_index=get_uint(m, "CreateIndex", "Node"),
            modify_index=get_uint(m, "ModifyIndex", "Node"),
            id=get_str(m, "ID", "Node"),
            meta=get_str_map(m, "Meta", "Node"),
        )


def satisfies_meta_filters(meta: StrMap | None, filters: StrMap) -> bool:
    """``structs.SatisfiesMetaFilters``: every filter's key is in ``meta`` with exactly that
    value (no filters: True)."""
    if not filters:
        return True
    if not meta:
        return False
    return all(key in meta and meta[key] == value for key, value in filters.items())


@dataclass(frozen=True, slots=True)
class NodeService:
    """``structs.NodeService`` (the state store keeps these per node; ``ServiceNode`` is built
    on the way out)."""

    id: str
    service: str
    tags: StrList | None = None
    address: str = ""
    port: int = 0
    enable_tag_override: bool = False
    create_index: int = 0
    modify_index: int = 0

    def same_as(self, other: NodeService) -> bool:
        """``NodeService.IsSame``: equal but for the Raft indexes."""
        return (
            self.id == other.id
            and self.service == other.service
            and self.tags == other.tags
            and self.address == other.address
            and self.port == other.port
            and self.enable_tag_override == other.enable_tag_override
        )

    def to_wire(self) -> Wire:
        return {
            "Address": self.address,
            "CreateIndex": self.create_index,
            "EnableTagOverride": self.enable_tag_override,
            "ID": self.id,
            "ModifyIndex": self.modify_index,
            "Port": self.port,
            "Service": self.service,
            "Tags": self.tags,
        }

    def to_service_node_wire(self, node: Node) -> Wire:
        """``structs.ServiceNode`` with the node's ID, Address, TaggedAddresses and Meta (as
        ``NodeMeta``) filled in (``parseServiceNodes``)."""
        return {
            "Address": node.address,
            "CreateIndex": self.create_index,
            "ID": node.id,
            "ModifyIndex": self.modify_index,
            "Node": node.node,
            "NodeMeta": _copy_map(node.meta),
            "ServiceAddress": self.address,
            "ServiceEnableTagOverride": self.enable_tag_override,
            "ServiceID": self.id,
            "ServiceName": self.service,
            "ServicePort": self.port,
            "ServiceTags": self.tags,
            "TaggedAddresses": _copy_map(node.tagged_addresses),
        }

    @classmethod
    def from_wire(cls, obj: object) -> NodeService:
        m = as_map(obj, "NodeService")
        return cls(
            id=get_str(m, "ID", "NodeService"),
            service=get_str(m, "Service", "NodeService"),
            tags=get_str_list(m, "Tags", "NodeService"),
            address=get_str(m, "Address", "NodeService"),
            port=get_int(m, "Port", "NodeService"),
            enable_tag_override=get_bool(m, "EnableTagOverride", "NodeService"),
            create_index=get_uint(m, "CreateIndex", "NodeService"),
            modify_index=get_uint(m, "ModifyIndex", "NodeService"),
        )


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """``structs.HealthCheck``."""

    node: str
    check_id: str
    name: str = ""
    status: str = ""
    notes: str = ""
    output: str = ""
    service_id: str = ""
    service_name: str = ""
    create_index: int = 0
    modify_index: int = 0

    def same_as(self, other: HealthCheck) -> bool:
        """``HealthCheck.IsSame``: equal but for the Raft indexes."""
        return (
            self.node == other.node
            and self.check_id == other.check_id
            and self.name == other.name
            and self.status == other.status
            and self.notes == other.notes
            and self.output == other.output
            and self.service_id == other.service_id
            and self.service_name == other.service_name
        )

    @property
    def critical(self) -> bool:
        return self.status == HEALTH_CRITICAL

    def to_wire(self) -> Wire:
        return {
            "CheckID": self.check_id,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
            "Name": self.name,
            "Node": self.node,
            "Notes": self.notes,
            "Output": self.output,
            "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "Status": self.status,
        }

    @classmethod
    def from_wire(cls, obj: object) -> HealthCheck:
        m = as_map(obj, "HealthCheck")
        return cls(
            node=get_str(m, "Node", "HealthCheck"),
            check_id=get_str(m, "CheckID", "HealthCheck"),
            name=get_str(m, "Name", "HealthCheck"),
            status=get_str(m, "Status", "HealthCheck"),
            notes=get_str(m, "Notes", "HealthCheck"),
            output=get_str(m, "Output", "HealthCheck"),
            service_id=get_str(m, "ServiceID", "HealthCheck"),
            service_name=get_str(m, "ServiceName", "HealthCheck"),
            create_index=get_uint(m, "CreateIndex", "HealthCheck"),
            modify_index=get_uint(m, "ModifyIndex", "HealthCheck"),
        )


@dataclass(frozen=True, slots=True)
class DirEntry:
    """``structs.DirEntry``: one key of the KV store."""

    key: str
    value: bytes | None = None
    flags: int = 0
    session: str = ""
    lock_index: int = 0
    create_index: int = 0
    modify_index: int = 0

    def to_wire(self) -> Wire:
        return {
            "CreateIndex": self.create_index,
            "Flags": self.flags,
            "Key": self.key,
            "LockIndex": self.lock_index,
            "ModifyIndex": self.modify_index,
            "Session": self.session,
            "Value": self.value,
        }

    @classmethod
    def from_wire(cls, obj: object) -> DirEntry:
        m = as_map(obj, "DirEntry")
        return cls(
            key=get_str(m, "Key", "DirEntry"),
            value=get_bytes(m, "Value", "DirEntry"),
            flags=get_uint(m, "Flags", "DirEntry"),
            session=get_str(m, "Session", "DirEntry"),
            lock_index=get_uint(m, "LockIndex", "DirEntry"),
            create_index=get_uint(m, "CreateIndex", "DirEntry"),
            modify_index=get_uint(m, "ModifyIndex", "DirEntry"),
        )


@dataclass(frozen=True, slots=True)
class Session:
    """``structs.Session``; ``lock_delay`` in nanoseconds, ``ttl`` as the client wrote it."""

    id: str
    name: str = ""
    node: str = ""
    checks: StrList | None = None
    lock_delay: int = 0
    behavior: str = ""
    ttl: str = ""
    create_index: int = 0
    modify_index: int = 0

    def to_wire(self) -> Wire:
        return {
            "Behavior": self.behavior,
            "Checks": self.checks,
            "CreateIndex": self.create_index,
            "ID": self.id,
            "LockDelay": self.lock_delay,
            "ModifyIndex": self.modify_index,
            "Name": self.name,
            "Node": self.node,
            "TTL": self.ttl,
        }

    @classmethod
    def from_wire(cls, obj: object) -> Session:
        m = as_map(obj, "Session")
        return cls(
            id=get_str(m, "ID", "Session"),
            name=get_str(m, "Name", "Session"),
            node=get_str(m, "Node", "Session"),
            checks=get_str_list(m, "Checks", "Session"),
            lock_delay=get_int(m, "LockDelay", "Session"),
            behavior=get_str(m, "Behavior", "Session"),
            ttl=get_str(m, "TTL", "Session"),
            create_index=get_uint(m, "CreateIndex", "Session"),
            modify_index=get_uint(m, "ModifyIndex", "Session"),
        )


# ------------------------------------------------------------------ envelopes


@dataclass(frozen=True, slots=True)
class QueryOptions:
    """``structs.QueryOptions`` (inlined in every read request); ``max_query_time`` in ns."""

    token: str = ""
    min_query_index: int = 0
    max_query_time: int = 0
    allow_stale: bool = False
    require_consistent: bool = False

    @classmethod
    def from_map(cls, m: Wire, what: str) -> QueryOptions:
        return cls(
            token=get_str(m, "Token", what),
            min_query_index=get_uint(m, "MinQueryIndex", what),
            max_query_time=get_int(m, "MaxQueryTime", what),
            allow_stale=get_bool(m, "AllowStale", what),
            require_consistent=get_bool(m, "RequireConsistent", what),
        )

    def wire_fields(self) -> Wire:
        return {
            "AllowStale": self.allow_stale,
            "MaxQueryTime": self.max_query_time,
            "MinQueryIndex": self.min_query_index,
            "RequireConsistent": self.require_consistent,
            "Token": self.token,
        }


@dataclass(frozen=True, slots=True)
class QueryMeta:
    """``structs.QueryMeta`` (inlined in every read reply); ``last_contact`` in ns."""

    index: int = 0
    last_contact: int = 0
    known_leader: bool = False

    def wire_fields(self) -> Wire:
        return {
            "Index": self.index,
            "KnownLeader": self.known_leader,
            "LastContact": self.last_contact,
        }

    @classmethod
    def from_map(cls, m: Wire, what: str = "QueryMeta") -> QueryMeta:
        return cls(
            index=get_uint(m, "Index", what),
            last_contact=get_int(m, "LastContact", what),
            known_leader=get_bool(m, "KnownLeader", what),
        )


def indexed_reply(meta: QueryMeta, fields: Wire) -> Wire:
    """An ``Indexed*`` reply: the payload fields and the inlined QueryMeta, keys sorted."""
    merged = {**fields, **meta.wire_fields()}
    return dict(sorted(merged.items()))


@dataclass(frozen=True, slots=True)
class QuerySource:
    """``structs.QuerySource``: the node a query is asked for (to sort by its distance)."""

    datacenter: str = ""
    node: str = ""

    def to_wire(self) -> Wire:
        return {"Datacenter": self.datacenter, "Node": self.node}

    @classmethod
    def from_wire(cls, obj: object) -> QuerySource:
        m = as_map(obj, "QuerySource")
        return cls(get_str(m, "Datacenter", "QuerySource"), get_str(m, "Node", "QuerySource"))


class ReadArgs(Protocol):
    """What every read request has: its Datacenter and its inlined QueryOptions."""

    @property
    def datacenter(self) -> str: ...

    @property
    def options(self) -> QueryOptions: ...


def _read_wire(options: QueryOptions, fields: Wire) -> Wire:
    return dict(sorted({**fields, **options.wire_fields()}.items()))


_NO_OPTIONS: Final = QueryOptions()
_NO_SOURCE: Final = QuerySource()


@dataclass(frozen=True, slots=True)
class DCSpecificRequest:
    """``structs.DCSpecificRequest``: a query about a whole datacenter; ``NodeMetaFilters``
    (0.7.3+) keeps only nodes whose Meta has every pair (nil or empty: no filter)."""

    datacenter: str = ""
    source: QuerySource = _NO_SOURCE
    options: QueryOptions = _NO_OPTIONS
    node_meta_filters: StrMap | None = None

    def to_wire(self) -> Wire:
        fields = {
            "Datacenter": self.datacenter,
            "NodeMetaFilters": _copy_map(self.node_meta_filters),
            "Source": self.source.to_wire(),
        }
        return _read_wire(self.options, fields)

    @classmethod
    def from_wire(cls, obj: object) -> DCSpecificRequest:
        what = "DCSpecificRequest"
        m = as_map(obj, what)
        return cls(
            get_str(m, "Datacenter", what),
            QuerySource.from_wire(m.get("Source")),
            QueryOptions.from_map(m, what),
            get_str_map(m, "NodeMetaFilters", what),
        )


@dataclass(frozen=True, slots=True)
class NodeSpecificRequest:
    """``structs.NodeSpecificRequest``: a query about one node."""

    datacenter: str = ""
    node: str = ""
    options: QueryOptions = _NO_OPTIONS

    def to_wire(self) -> Wire:
        return _read_wire(self.options, {"Datacenter": self.datacenter, "Node": self.node})

    @classmethod
    def from_wire(cls, obj: object) -> NodeSpecificRequest:
        what = "NodeSpecificRequest"
        m = as_map(obj, what)
        return cls(
            get_str(m, "Datacenter", what), get_str(m, "Node", what), QueryOptions.from_map(m, what)
        )


@dataclass(frozen=True, slots=True)
class ServiceSpecificRequest:
    """``structs.ServiceSpecificRequest``: a query about one service (optionally one tag)."""

    datacenter: str = ""
    service_name: str = ""
    service_tag: str = ""
    tag_filter: bool = False
    source: QuerySource = _NO_SOURCE
    options: QueryOptions = _NO_OPTIONS
    node_meta_filters: StrMap | None = None
    """0.7.3+: only instances whose node's Meta has every pair (nil or empty: no filter)."""

    @property
    def tag(self) -> str | None:
        """The tag to filter by, None when the request does not filter."""
        return self.service_tag if self.tag_filter else None

    def to_wire(self) -> Wire:
        fields = {
            "Datacenter": self.datacenter,
            "NodeMetaFilters": _copy_map(self.node_meta_filters),
            "ServiceName": self.service_name,
            "ServiceTag": self.service_tag,
            "Source": self.source.to_wire(),
            "TagFilter": self.tag_filter,
        }
        return _read_wire(self.options, fields)

    @classmethod
    def from_wire(cls, obj: object) -> ServiceSpecificRequest:
        what = "ServiceSpecificRequest"
        m = as_map(obj, what)
        return cls(
            get_str(m, "Datacenter", what),
            get_str(m, "ServiceName", what),
            get_str(m, "ServiceTag", what),
            get_bool(m, "TagFilter", what),
            QuerySource.from_wire(m.get("Source")),
            QueryOptions.from_map(m, what),
            get_str_map(m, "NodeMetaFilters", what),
        )


@dataclass(frozen=True, slots=True)
class ChecksInStateRequest:
    """``structs.ChecksInStateRequest``: the checks in one state (``any`` for all);
    ``NodeMetaFilters`` (0.7.3+) keeps the checks of nodes whose Meta has every pair."""

    datacenter: str = ""
    state: str = ""
    source: QuerySource = _NO_SOURCE
    options: QueryOptions = _NO_OPTIONS
    node_meta_filters: StrMap | None = None

    def to_wire(self) -> Wire:
        fields = {
            "Datacenter": self.datacenter,
            "NodeMetaFilters": _copy_map(self.node_meta_filters),
            "Source": self.source.to_wire(),
            "State": self.state,
        }
        return _read_wire(self.options, fields)

    @classmethod
    def from_wire(cls, obj: object) -> ChecksInStateRequest:
        what = "ChecksInStateRequest"
        m = as_map(obj, what)
        return cls(
            get_str(m, "Datacenter", what),
            get_str(m, "State", what),
            QuerySource.from_wire(m.get("Source")),
            QueryOptions.from_map(m, what),
            get_str_map(m, "NodeMetaFilters", what),
        )


@dataclass(frozen=True, slots=True)
class KeyRequest:
    """``structs.KeyRequest``: one key (``KVS.Get``) or a prefix (``KVS.List``)."""

    datacenter: str = ""
    key: str = ""
    options: QueryOptions = _NO_OPTIONS

    def to_wire(self) -> Wire:
        return _read_wire(self.options, {"Datacenter": self.datacenter, "Key": self.key})

    @classmethod
    def from_wire(cls, obj: object) -> KeyRequest:
        what = "KeyRequest"
        m = as_map(obj, what)
        return cls(
            get_str(m, "Datacenter", what), get_str(m, "Key", what), QueryOptions.from_map(m, what)
        )


@dataclass(frozen=True, slots=True)
class KeyListRequest:
    """``structs.KeyListRequest`` (``Seperator``, sic, as the reference spells it)."""

    datacenter: str = ""
    prefix: str = ""
    seperator: str = ""
    options: QueryOptions = _NO_OPTIONS

    def to_wire(self) -> Wire:
        fields = {"Datacenter": self.datacenter, "Prefix": self.prefix, "Seperator": self.seperator}
        return _read_wire(self.options, fields)

    @classmethod
    def from_wire(cls, obj: object) -> KeyListRequest:
        what = "KeyListRequest"
        m = as_map(obj, what)
        return cls(
            get_str(m, "Datacenter", what),
            get_str(m, "Prefix", what),
            get_str(m, "Seperator", what),
            QueryOptions.from_map(m, what),
        )


@dataclass(frozen=True, slots=True)
class SessionSpecificRequest:
    """``structs.SessionSpecificRequest``: one session by ID (``Session.Get``/``Renew``)."""

    datacenter: str = ""
    session: str = ""
    options: QueryOptions = _NO_OPTIONS

    def to_wire(self) -> Wire:
        return _read_wire(self.options, {"Datacenter": self.datacenter, "Session": self.session})

    @classmethod
    def from_wire(cls, obj: object) -> SessionSpecificRequest:
        what = "SessionSpecificRequest"
        m = as_map(obj, what)
        return cls(
            get_str(m, "Datacenter", what),
            get_str(m, "Session", what),
            QueryOptions.from_map(m, what),
        )


@dataclass(slots=True)
class RegisterRequest:
    """``structs.RegisterRequest``; ``id`` and ``node_meta`` (wire ``ID``, ``NodeMeta``) are
    Consul 0.7.3+'s node ID and metadata ("" and None when a 0.7.0 peer omits them)."""

    datacenter: str = ""
    node: str = ""
    address: str = ""
    tagged_addresses: StrMap | None = None
    service: NodeService | None = None
    check: HealthCheck | None = None
    checks: list[HealthCheck] | None = None
    token: str = ""
    id: str = ""
    node_meta: StrMap | None = None
    # Not in 0.7's struct: the node's Raft indexes, carried only by our snapshots (a Go
    # reader ignores them, as go-msgpack skips unknown fields).
    create_index: int | None = None
    modify_index: int | None = None

    def to_wire(self) -> Wire:
        wire: Wire = {
            "Address": self.address,
            "Check": None if self.check is None else self.check.to_wire(),
            "Checks": None if self.checks is None else [c.to_wire() for c in self.checks],
        }
        if self.create_index is not None:
            wire["CreateIndex"] = self.create_index
        wire["Datacenter"] = self.datacenter
        wire["ID"] = self.id
        if self.modify_index is not None:
            wire["ModifyIndex"] = self.modify_index
        wire["Node"] = self.node
        wire["NodeMeta"] = _copy_map(self.node_meta)
        wire["Service"] = None if self.service is None else self.service.to_wire()
        wire["TaggedAddresses"] = _copy_map(self.tagged_addresses)
        wire["Token"] = self.token
        return wire

    @classmethod
    def from_wire(cls, obj: object) -> RegisterRequest:
        what = "RegisterRequest"
        m = as_map(obj, what)
        service = m.get("Service")
        check = m.get("Check")
        checks = _list(m.get("Checks"), what, "Checks")
        return cls(
            datacenter=get_str(m, "Datacenter", what),
            node=get_str(m, "Node", what),
            address=get_str(m, "Address", what),
            tagged_addresses=get_str_map(m, "TaggedAddresses", what),
            service=None if service is None else NodeService.from_wire(service),
            check=None if check is None else HealthCheck.from_wire(check),
            checks=None
            if checks is None
            else [HealthCheck.from_wire(c) for c in checks if c is not None],
            token=get_str(m, "Token", what),
            id=get_str(m, "ID", what),
            node_meta=get_str_map(m, "NodeMeta", what),
            create_index=get_uint(m, "CreateIndex", what) if "CreateIndex" in m else None,
            modify_index=get_uint(m, "ModifyIndex", what) if "ModifyIndex" in m else None,
        )


@dataclass(frozen=True, slots=True)
class DeregisterRequest:
    """``structs.DeregisterRequest``."""

    datacenter: str = ""
    node: str = ""
    service_id: str = ""
    check_id: str = ""
    token: str = ""

    def to_wire(self) -> Wire:
        return {
            "CheckID": self.check_id,
            "Datacenter": self.datacenter,
            "Node": self.node,
            "ServiceID": self.service_id,
            "Token": self.token,
        }

    @classmethod
    def from_wire(cls, obj: object) -> DeregisterRequest:
        what = "DeregisterRequest"
        m = as_map(obj, what)
        return cls(
            datacenter=get_str(m, "Datacenter", what),
            node=get_str(m, "Node", what),
            service_id=get_str(m, "ServiceID", what),
            check_id=get_str(m, "CheckID", what),
            token=get_str(m, "Token", what),
        )


@dataclass(frozen=True, slots=True)
class KVSRequest:
    """``structs.KVSRequest``: Op (set, delete, delete-cas, delete-tree, cas, lock, unlock) on
    DirEnt."""

    op: str
    dir_ent: DirEntry
    datacenter: str = ""
    token: str = ""

    def to_wire(self) -> Wire:
        return {
            "Datacenter": self.datacenter,
            "DirEnt": self.dir_ent.to_wire(),
            "Op": self.op,
            "Token": self.token,
        }

    @classmethod
    def from_wire(cls, obj: object) -> KVSRequest:
        what = "KVSRequest"
        m = as_map(obj, what)
        return cls(
            op=get_str(m, "Op", what),
            dir_ent=DirEntry.from_wire(m.get("DirEnt")),
            datacenter=get_str(m, "Datacenter", what),
            token=get_str(m, "Token", what),
        )


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """``structs.SessionRequest``: Op (create, destroy) on Session."""

    op: str
    session: Session
    datacenter: str = ""
    token: str = ""

    def to_wire(self) -> Wire:
        return {
            "Datacenter": self.datacenter,
            "Op": self.op,
            "Session": self.session.to_wire(),
            "Token": self.token,
        }

    @classmethod
    def from_wire(cls, obj: object) -> SessionRequest:
        what = "SessionRequest"
        m = as_map(obj, what)
        return cls(
            op=get_str(m, "Op", what),
            session=Session.from_wire(m.get("Session")),
            datacenter=get_str(m, "Datacenter", what),
            token=get_str(m, "Token", what),
        )


@dataclass(frozen=True, slots=True)
class TombstoneRequest:
    """``structs.TombstoneRequest``: Op reap with ReapIndex."""

    op: str
    reap_index: int
    datacenter: str = ""
    token: str = ""

    def to_wire(self) -> Wire:
        return {
            "Datacenter": self.datacenter,
            "Op": self.op,
            "ReapIndex": self.reap_index,
            "Token": self.token,
        }

    @classmethod
    def from_wire(cls, obj: object) -> TombstoneRequest:
        what = "TombstoneRequest"
        m = as_map(obj, what)
        return cls(
            op=get_str(m, "Op", what),
            reap_index=get_uint(m, "ReapIndex", what),
            datacenter=get_str(m, "Datacenter", what),
            token=get_str(m, "Token", what),
        )
