"""Serf's messages on top of memberlist: user-message types, their structs, and tags in Meta.

A serf message is the payload of a memberlist user message (type 8): one serf type byte and
a msgpack map with the Go field names (old spec, keys sorted, as in
:mod:`agentrpc.gossip.messages`).
Serf's push/pull message travels only as the push/pull user state. Node tags travel in the
memberlist Meta as ``0xFF`` followed by a msgpack map of strings.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Self

import msgpack

from agentrpc.gossip.messages import (
    META_MAX_SIZE,
    GossipDecodeError,
    GossipEncodeError,
    bytes_wire,
    check_int,
    check_uint,
    field_bool,
    field_bytes,
    field_int,
    field_str,
    field_uint,
    pack_wire,
    str_wire,
    unpack_wire,
    unpack_wire_map,
    wire_map,
    wire_str,
)

__all__ = [
    "MEMBER_STATUS_CODES",
    "QUERY_FLAG_ACK",
    "QUERY_FLAG_NO_BROADCAST",
    "TAG_MAGIC_BYTE",
    "FilterType",
    "JoinIntent",
    "KeyRequest",
    "LeaveIntent",
    "NodeKeyResponse",
    "NodeFilter",
    "Query",
    "QueryFilter",
    "QueryResponse",
    "Relay",
    "SerfMessage",
    "SerfMessageType",
    "SerfPushPull",
    "TagFilter",
    "UserEvent",
    "UserEventEntry",
    "UserEvents",
    "WireMember",
    "decode_conflict_response",
    "decode_key_request",
    "decode_key_response",
    "decode_query_filter",
    "decode_serf_message",
    "decode_tags",
    "encode_conflict_response",
    "encode_key_request",
    "encode_key_response",
    "encode_query_filter",
    "encode_relay",
    "encode_serf_message",
    "encode_tags",
]


class SerfMessageType(enum.IntEnum):
    """The first byte of a serf message (serf/messages.go ``messageType``)."""

    LEAVE = 0
    JOIN = 1
    PUSH_PULL = 2
    USER_EVENT = 3
    QUERY = 4
    QUERY_RESPONSE = 5
    CONFLICT_RESPONSE = 6
    KEY_REQUEST = 7
    KEY_RESPONSE = 8
    RELAY = 9


QUERY_FLAG_ACK = 1
"""Query flag: every receiver acks delivery."""
QUERY_FLAG_NO_BROADCAST = 2
"""Query flag: receivers do not rebroadcast the query."""

TAG_MAGIC_BYTE = 0xFF
"""First byte of a Meta that holds msgpack-encoded tags (serf protocol 3 and later)."""


class FilterType(enum.IntEnum):
    """The first byte of a query filter."""

    NODE = 0
    TAG = 1


# --------------------------------------------------------------------------------------------
# Messages.


@dataclass(frozen=True, slots=True)
class LeaveIntent:
    """``messageLeave``: ``node`` intends to leave (``prune``: forget it right away)."""

    MESSAGE_TYPE: ClassVar[SerfMessageType] = SerfMessageType.LEAVE

    ltime: int
    node: str
    prune: bool = False

    def to_wire(self) -> dict[str, object]:
        return {
            "LTime": check_uint(self.ltime, 64, "messageLeave.LTime"),
            "Node": str_wire(self.node),
            "Prune": bool(self.prune),
        }

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        return cls(
            ltime=field_uint(fields, "LTime", 64, "messageLeave"),
            node=field_str(fields, "Node", "messageLeave"),
            prune=field_bool(fields, "Prune", "messageLeave"),
        )


@dataclass(frozen=True, slots=True)
class JoinIntent:
    """``messageJoin``: ties ``node``'s membership to a Lamport time."""

    MESSAGE_TYPE: ClassVar[SerfMessageType] = SerfMessageType.JOIN

    ltime: int
    node: str

    def to_wire(self) -> dict[str, object]:
        return {
            "LTime": check_uint(self.ltime, 64, "messageJoin.LTime"),
            "Node": str_wire(self.node),
        }

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        return cls(
            ltime=field_uint(fields, "LTime", 64, "messageJoin"),
            node=field_str(fields, "Node", "messageJoin"),
        )


@dataclass(frozen=True, slots=True)
class UserEventEntry:
    """``userEvent``: one event kept in serf's event buffer."""

    name: str
    payload: bytes = b""

    def to_wire(self) -> dict[str, object]:
        return {"Name": str_wire(self.name), "Payload": bytes_wire(self.payload)}

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        return cls(
            name=field_str(fields, "Name", "userEvent"),
            payload=field_bytes(fields, "Payload", "userEvent"),
        )


@dataclass(frozen=True, slots=True)
class UserEvents:
    """``userEvents``: the events serf saw at one Lamport time."""

    ltime: int
    events: tuple[UserEventEntry, ...] = ()

    def to_wire(self) -> dict[str, object]:
        return {
            "Events": [event.to_wire() for event in self.events],
            "LTime": check_uint(self.ltime, 64, "userEvents.LTime"),
        }

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        return cls(
            ltime=field_uint(fields, "LTime", 64, "userEvents"),
            events=tuple(
                UserEventEntry.from_wire(wire_map(item, "userEvent"))
                for item in _field_list(fields, "Events", "userEvents")
            ),
        )


@dataclass(frozen=True, slots=True)
class SerfPushPull:
    """``messagePushPull``: serf's state, sent as the memberlist push/pull user state.

    ``events`` mirrors serf's event ring buffer, whose empty slots travel as nil (None).
    """

    MESSAGE_TYPE: ClassVar[SerfMessageType] = SerfMessageType.PUSH_PULL

    ltime: int
    status_ltimes: Mapping[str, int] = field(default_factory=dict)
    left_members: tuple[str, ...] = ()
    event_ltime: int = 0
    events: tuple[UserEvents | None, ...] = ()
    query_ltime: int = 0

    def to_wire(self) -> dict[str, object]:
        what = "messagePushPull"
        return {
            "EventLTime": check_uint(self.event_ltime, 64, f"{what}.EventLTime"),
            "Events": [None if ev is None else ev.to_wire() for ev in self.events],
            "LTime": check_uint(self.ltime, 64, f"{what}.LTime"),
            "LeftMembers": [str_wire(name) for name in self.left_members],
            "QueryLTime": check_uint(self.query_ltime, 64, f"{what}.QueryLTime"),
            "StatusLTimes": {
                str_wire(name): check_uint(ltime, 64, f"{what}.StatusLTimes")
                for name, ltime in self.status_ltimes.items()
            },
        }

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        what = "messagePushPull"
        raw_times = fields.get("StatusLTimes")
        if raw_times is not None and not isinstance(raw_times, dict):
            raise GossipDecodeError(f"{what}.StatusLTimes: expected a map")
        status_ltimes: dict[str, int] = {}
        for key, value in (raw_times or {}).items():
            name = wire_str(key, f"{what}.StatusLTimes key")
            status_ltimes[name] = field_uint({"v": value}, "v", 64, f"{what}.StatusLTimes")
        return cls(
            ltime=field_uint(fields, "LTime", 64, what),
            status_ltimes=status_ltimes,
            left_members=tuple(
                wire_str(item, f"{what}.LeftMembers")
                for item in _field_list(fields, "LeftMembers", what)
            ),
            event_ltime=field_uint(fields, "EventLTime", 64, what),
            events=tuple(
                None if item is None else UserEvents.from_wire(wire_map(item, "userEvents"))
                for item in _field_list(fields, "Events", what)
            ),
            query_ltime=field_uint(fields, "QueryLTime", 64, what),
        )


@dataclass(frozen=True, slots=True)
class UserEvent:
    """``messageUserEvent``: a custom event; ``cc`` allows coalescing."""

    MESSAGE_TYPE: ClassVar[SerfMessageType] = SerfMessageType.USER_EVENT

    ltime: int
    name: str
    payload: bytes = b""
    cc: bool = False

    def to_wire(self) -> dict[str, object]:
        return {
            "CC": bool(self.cc),
            "LTime": check_uint(self.ltime, 64, "messageUserEvent.LTime"),
            "Name": str_wire(self.name),
            "Payload": bytes_wire(self.payload),
        }

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        what = "messageUserEvent"
        return cls(
            ltime=field_uint(fields, "LTime", 64, what),
            name=field_str(fields, "Name", what),
            payload=field_bytes(fields, "Payload", what),
            cc=field_bool(fields, "CC", what),
        )


@dataclass(frozen=True, slots=True)
class Query:
    """``messageQuery``: a query; answers go to ``addr:port`` over UDP.

    ``source_node`` exists from serf 0.9 on (0.8 sends none: read as ""). ``filters`` are
    encoded filters (see :func:`decode_query_filter`); ``timeout_ns`` is a
    Go ``time.Duration`` in nanoseconds.
    """

    MESSAGE_TYPE: ClassVar[SerfMessageType] = SerfMessageType.QUERY

    ltime: int
    id: int
    addr: bytes
    port: int
    source_node: str
    filters: tuple[bytes, ...] = ()
    flags: int = 0
    relay_factor: int = 0
    timeout_ns: int = 0
    name: str = ""
    payload: bytes = b""

    @property
    def wants_ack(self) -> bool:
        """The sender wants a delivery ack."""
        return bool(self.flags & QUERY_FLAG_ACK)

    @property
    def no_broadcast(self) -> bool:
        """Receivers must not rebroadcast this query."""
        return bool(self.flags & QUERY_FLAG_NO_BROADCAST)

    def to_wire(self) -> dict[str, object]:
        what = "messageQuery"
        return {
            "Addr": bytes_wire(self.addr),
            "Filters": [bytes(item) for item in self.filters],
            "Flags": check_uint(self.flags, 32, f"{what}.Flags"),
            "ID": check_uint(self.id, 32, f"{what}.ID"),
            "LTime": check_uint(self.ltime, 64, f"{what}.LTime"),
            "Name": str_wire(self.name),
            "Payload": bytes_wire(self.payload),
            "Port": check_uint(self.port, 16, f"{what}.Port"),
            "RelayFactor": check_uint(self.relay_factor, 8, f"{what}.RelayFactor"),
            "SourceNode": str_wire(self.source_node),
            "Timeout": check_int(self.timeout_ns, f"{what}.Timeout"),
        }

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        what = "messageQuery"
        filters: list[bytes] = []
        for item in _field_list(fields, "Filters", what):
            if item is None:
                filters.append(b"")
            elif isinstance(item, bytes):
                filters.append(item)
            else:
                raise GossipDecodeError(f"{what}.Filters: entries must be bytes")
        return cls(
            ltime=field_uint(fields, "LTime", 64, what),
            id=field_uint(fields, "ID", 32, what),
            addr=field_bytes(fields, "Addr", what),
            port=field_uint(fields, "Port", 16, what),
            source_node=field_str(fields, "SourceNode", what),
            filters=tuple(filters),
            flags=field_uint(fields, "Flags", 32, what),
            relay_factor=field_uint(fields, "RelayFactor", 8, what),
            timeout_ns=field_int(fields, "Timeout", what),
            name=field_str(fields, "Name", what),
            payload=field_bytes(fields, "Payload", what),
        )


@dataclass(frozen=True, slots=True)
class QueryResponse:
    """``messageQueryResponse``: an ack (``flags & QUERY_FLAG_ACK``) or a response."""

    MESSAGE_TYPE: ClassVar[SerfMessageType] = SerfMessageType.QUERY_RESPONSE

    ltime: int
    id: int
    from_node: str
    flags: int = 0
    payload: bytes = b""

    @property
    def is_ack(self) -> bool:
        """This is a delivery ack rather than a response."""
        return bool(self.flags & QUERY_FLAG_ACK)

    def to_wire(self) -> dict[str, object]:
        what = "messageQueryResponse"
        return {
            "Flags": check_uint(self.flags, 32, f"{what}.Flags"),
            "From": str_wire(self.from_node),
            "ID": check_uint(self.id, 32, f"{what}.ID"),
            "LTime": check_uint(self.ltime, 64, f"{what}.LTime"),
            "Payload": bytes_wire(self.payload),
        }

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        what = "messageQueryResponse"
        return cls(
            ltime=field_uint(fields, "LTime", 64, what),
            id=field_uint(fields, "ID", 32, what),
            from_node=field_str(fields, "From", what),
            flags=field_uint(fields, "Flags", 32, what),
            payload=field_bytes(fields, "Payload", what),
        )


@dataclass(frozen=True, slots=True)
class Relay:
    """``messageRelay``: forward ``message`` (a complete serf message) to a destination.

    ``dest_ip``/``dest_port``/``dest_zone`` are Go's ``net.UDPAddr`` fields; ``dest_name``
    exists from serf 0.9 on (0.8 sends none, and ignores ours).
    """

    MESSAGE_TYPE: ClassVar[SerfMessageType] = SerfMessageType.RELAY

    dest_ip: bytes
    dest_port: int
    dest_name: str
    message: bytes
    dest_zone: str = ""


SerfMessage = LeaveIntent | JoinIntent | SerfPushPull | UserEvent | Query | QueryResponse | Relay
"""Every serf message this module decodes."""

_STRUCT_CLASSES: dict[
    int, type[LeaveIntent | JoinIntent | SerfPushPull | UserEvent | Query | QueryResponse]
] = {
    SerfMessageType.LEAVE: LeaveIntent,
    SerfMessageType.JOIN: JoinIntent,
    SerfMessageType.PUSH_PULL: SerfPushPull,
    SerfMessageType.USER_EVENT: UserEvent,
    SerfMessageType.QUERY: Query,
    SerfMessageType.QUERY_RESPONSE: QueryResponse,
}


def _field_list(fields: Mapping[str, object], name: str, what: str) -> list[object]:
    value = fields.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise GossipDecodeError(f"{what}.{name}: expected an array")
    return value


def encode_serf_message(message: SerfMessage) -> bytes:
    """Serf type byte plus msgpack body: the payload of a memberlist user message."""
    if isinstance(message, Relay):
        return encode_relay(message)
    return bytes((message.MESSAGE_TYPE,)) + pack_wire(message.to_wire())


def encode_relay(relay: Relay) -> bytes:
    """``[9] relayHeader{DestAddr{IP, Port, Zone}, DestName}`` followed by the inner message."""
    header = {
        "DestAddr": {
            "IP": bytes_wire(relay.dest_ip),
            "Port": check_int(relay.dest_port, "relayHeader.DestAddr.Port"),
            "Zone": str_wire(relay.dest_zone),
        },
        "DestName": str_wire(relay.dest_name),
    }
    return bytes((SerfMessageType.RELAY,)) + pack_wire(header) + bytes(relay.message)


def decode_serf_message(payload: bytes) -> SerfMessage:
    """Decode a serf message (the payload of a memberlist user message).

    Raises :class:`GossipDecodeError` for an empty payload, a type serf never sends as a
    message (6, 7, 8 are payload prefixes inside query responses) or malformed contents.
    """
    if not payload:
        raise GossipDecodeError("empty serf message")
    msg_type = payload[0]
    if msg_type == SerfMessageType.RELAY:
        return _decode_relay(payload[1:])
    cls = _STRUCT_CLASSES.get(msg_type)
    if cls is None:
        raise GossipDecodeError(f"serf message of unknown type {msg_type}")
    return cls.from_wire(unpack_wire_map(payload[1:], cls.__name__))


def _decode_relay(body: bytes) -> Relay:
    unpacker = msgpack.Unpacker(raw=True)
    unpacker.feed(body)
    try:
        header_obj: object = unpacker.unpack()
    except (ValueError, msgpack.exceptions.UnpackException) as exc:
        raise GossipDecodeError(f"relayHeader: invalid msgpack: {exc}") from exc
    offset = int(unpacker.tell())
    header = wire_map(header_obj, "relayHeader")
    dest = wire_map(header.get("DestAddr"), "relayHeader.DestAddr")
    port = field_int(dest, "Port", "relayHeader.DestAddr")
    return Relay(
        dest_ip=field_bytes(dest, "IP", "relayHeader.DestAddr"),
        dest_port=port,
        dest_zone=field_str(dest, "Zone", "relayHeader.DestAddr"),
        dest_name=field_str(header, "DestName", "relayHeader"),
        message=bytes(body[offset:]),
    )


# --------------------------------------------------------------------------------------------
# Query filters.


@dataclass(frozen=True, slots=True)
class NodeFilter:
    """Only the named nodes answer."""

    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TagFilter:
    """Only nodes whose tag ``tag`` matches the regular expression ``expr`` answer."""

    tag: str
    expr: str


QueryFilter = NodeFilter | TagFilter


def encode_query_filter(query_filter: QueryFilter) -> bytes:
    """``[filter type] + msgpack``, as carried in :attr:`Query.filters`."""
    if isinstance(query_filter, NodeFilter):
        body = pack_wire([str_wire(name) for name in query_filter.nodes])
        return bytes((FilterType.NODE,)) + body
    body = pack_wire({"Expr": str_wire(query_filter.expr), "Tag": str_wire(query_filter.tag)})
    return bytes((FilterType.TAG,)) + body


def decode_query_filter(raw: bytes) -> QueryFilter:
    """Decode one entry of :attr:`Query.filters`."""
    if not raw:
        raise GossipDecodeError("empty query filter")
    if raw[0] == FilterType.NODE:
        names = unpack_wire(raw[1:], "filterNode")
        if names is None:
            return NodeFilter(())
        if not isinstance(names, list):
            raise GossipDecodeError("filterNode: expected an array of names")
        return NodeFilter(tuple(wire_str(name, "filterNode") for name in names))
    if raw[0] == FilterType.TAG:
        fields = unpack_wire_map(raw[1:], "filterTag")
        return TagFilter(
            tag=field_str(fields, "Tag", "filterTag"), expr=field_str(fields, "Expr", "filterTag")
        )
    raise GossipDecodeError(f"query filter of unknown type {raw[0]}")


# --------------------------------------------------------------------------------------------
# Tags in Meta.


def encode_tags(tags: Mapping[str, str]) -> bytes:
    """Meta for a node with ``tags``: ``0xFF`` + msgpack map (at most 512 bytes in all)."""
    body = pack_wire({str_wire(key): str_wire(value) for key, value in tags.items()})
    meta = bytes((TAG_MAGIC_BYTE,)) + body
    if len(meta) > META_MAX_SIZE:
        raise GossipEncodeError(
            f"encoded tags take {len(meta)} bytes, more than the {META_MAX_SIZE}-byte Meta limit"
        )
    return meta


def decode_tags(meta: bytes) -> dict[str, str]:
    """Tags from a node's Meta. Without the 0xFF prefix (serf protocol < 3, or a node with
    no Meta) the whole Meta is the ``role`` tag, as serf reads it."""
    if not meta or meta[0] != TAG_MAGIC_BYTE:
        return {"role": wire_str(bytes(meta), "Meta")}
    obj = unpack_wire(meta[1:], "tags")
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise GossipDecodeError("tags: expected a msgpack map of strings")
    return {wire_str(key, "tag name"): wire_str(value, "tag value") for key, value in obj.items()}


# --------------------------------------------------------------------------------------------
# Payloads inside internal queries and their responses (a serf type byte, then msgpack).

MEMBER_STATUS_CODES: dict[str, int] = {
    "none": 0,
    "alive": 1,
    "leaving": 2,
    "left": 3,
    "failed": 4,
}
"""Serf's ``MemberStatus`` integers by status text, as a conflict response carries them."""
_STATUS_TEXTS = {code: text for text, code in MEMBER_STATUS_CODES.items()}


@dataclass(frozen=True, slots=True)
class WireMember:
    """Serf's ``Member`` struct, as a ``_serf_conflict`` response carries it."""

    name: str
    addr: bytes
    """``net.IP`` bytes: 4 or 16 (Go may send an IPv4 address in its 16-byte form)."""
    port: int
    tags: Mapping[str, str] = field(default_factory=dict)
    status: str = "none"
    vsn: tuple[int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0)
    """``ProtocolMin, ProtocolMax, ProtocolCur, DelegateMin, DelegateMax, DelegateCur``."""

    def to_wire(self) -> dict[str, object]:
        what = "Member"
        pmin, pmax, pcur, dmin, dmax, dcur = self.vsn
        return {
            "Addr": bytes_wire(self.addr),
            "DelegateCur": check_uint(dcur, 8, f"{what}.DelegateCur"),
            "DelegateMax": check_uint(dmax, 8, f"{what}.DelegateMax"),
            "DelegateMin": check_uint(dmin, 8, f"{what}.DelegateMin"),
            "Name": str_wire(self.name),
            "Port": check_uint(self.port, 16, f"{what}.Port"),
            "ProtocolCur": check_uint(pcur, 8, f"{what}.ProtocolCur"),
            "ProtocolMax": check_uint(pmax, 8, f"{what}.ProtocolMax"),
            "ProtocolMin": check_uint(pmin, 8, f"{what}.ProtocolMin"),
            "Status": MEMBER_STATUS_CODES.get(self.status, 0),
            "Tags": {str_wire(key): str_wire(value) for key, value in self.tags.items()},
        }

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        what = "Member"
        raw_tags = fields.get("Tags")
        if raw_tags is not None and not isinstance(raw_tags, dict):
            raise GossipDecodeError(f"{what}.Tags: expected a map")
        tags = {
            wire_str(key, f"{what}.Tags key"): wire_str(value, f"{what}.Tags value")
            for key, value in (raw_tags or {}).items()
        }
        status = field_int(fields, "Status", what)
        vsn = tuple(
            field_uint(fields, name, 8, what)
            for name in (
                "ProtocolMin",
                "ProtocolMax",
                "ProtocolCur",
                "DelegateMin",
                "DelegateMax",
                "DelegateCur",
            )
        )
        return cls(
            name=field_str(fields, "Name", what),
            addr=field_bytes(fields, "Addr", what),
            port=field_uint(fields, "Port", 16, what),
            tags=tags,
            status=_STATUS_TEXTS.get(status, "none"),
            vsn=(vsn[0], vsn[1], vsn[2], vsn[3], vsn[4], vsn[5]),
        )


def encode_conflict_response(member: WireMember | None) -> bytes:
    """``[6]`` + msgpack ``Member`` (nil when we know no member of that name)."""
    body = pack_wire(None if member is None else member.to_wire())
    return bytes((SerfMessageType.CONFLICT_RESPONSE,)) + body


def decode_conflict_response(payload: bytes) -> WireMember | None:
    """The member a ``_serf_conflict`` response names; None when the responder knows none
    (Go then decodes a zero ``Member``). Raises :class:`GossipDecodeError` for another type
    byte or a malformed body."""
    if not payload or payload[0] != SerfMessageType.CONFLICT_RESPONSE:
        raise GossipDecodeError("Invalid conflict query response type")
    obj = unpack_wire(payload[1:], "Member")
    if obj is None:
        return None
    return WireMember.from_wire(wire_map(obj, "Member"))


@dataclass(frozen=True, slots=True)
class KeyRequest:
    """``keyRequest``: the key an install/use/remove query is about (raw bytes)."""

    key: bytes = b""


def encode_key_request(request: KeyRequest) -> bytes:
    """``[7]`` + msgpack ``{Key}``: the payload of a key query."""
    body = pack_wire({"Key": bytes_wire(request.key)})
    return bytes((SerfMessageType.KEY_REQUEST,)) + body


def decode_key_request(payload: bytes) -> KeyRequest:
    """The ``keyRequest`` in a key query's payload. Serf skips the first byte without looking
    at it; so do we, but an empty payload is an error here (it would crash Go)."""
    if not payload:
        raise GossipDecodeError("keyRequest: empty payload")
    fields = unpack_wire_map(payload[1:], "keyRequest")
    return KeyRequest(key=field_bytes(fields, "Key", "keyRequest"))


@dataclass(frozen=True, slots=True)
class NodeKeyResponse:
    """``nodeKeyResponse``: one node's answer to a key query.

    ``primary_key`` exists from serf 0.9 on; older nodes leave it out (read as "")."""

    result: bool = False
    message: str = ""
    keys: tuple[str, ...] = ()
    """Base64 keys (list-keys only)."""
    primary_key: str = ""

    def to_wire(self) -> dict[str, object]:
        return {
            "Keys": [str_wire(key) for key in self.keys] if self.keys else None,
            "Message": str_wire(self.message),
            "PrimaryKey": str_wire(self.primary_key),
            "Result": bool(self.result),
        }

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        what = "nodeKeyResponse"
        return cls(
            result=field_bool(fields, "Result", what),
            message=field_str(fields, "Message", what),
            keys=tuple(
                wire_str(item, f"{what}.Keys") for item in _field_list(fields, "Keys", what)
            ),
            primary_key=field_str(fields, "PrimaryKey", what),
        )


def encode_key_response(response: NodeKeyResponse) -> bytes:
    """``[8]`` + msgpack ``nodeKeyResponse``: the payload of a key query's response."""
    return bytes((SerfMessageType.KEY_RESPONSE,)) + pack_wire(response.to_wire())


def decode_key_response(payload: bytes) -> NodeKeyResponse:
    """A key query response payload; :class:`GossipDecodeError` for another type or a bad
    body (the key manager words those two cases as serf does)."""
    if not payload or payload[0] != SerfMessageType.KEY_RESPONSE:
        raise GossipDecodeError("Invalid key query response type")
    return NodeKeyResponse.from_wire(unpack_wire_map(payload[1:], "nodeKeyResponse"))
