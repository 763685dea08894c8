"""Request and response bodies of the agent RPC protocol, as plain typed values.

Request bodies are Go structs on the reference side; its decoder accepts a struct either as a map
(keys case-sensitive, unknown keys ignored, nil or missing meaning the zero value) or as a
positional array in field order. :func:`decode_body` does the same and checks the types.

A string field accepts str or bin (Go decodes either into a ``string``), through the codec's
one conversion :func:`~agentrpc.protocol.codec.as_text`, so a name that is not UTF-8 keeps its
bytes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Final

from ..hostport import join_host_port
from ..member_status import STATUS_ALIVE
from .constants import (
    AUTH,
    EVENT,
    FORCE_LEAVE,
    GET_COORDINATE,
    HANDSHAKE,
    INSTALL_KEY,
    JOIN,
    MEMBERS_FILTERED,
    MONITOR,
    QUERY,
    REMOVE_KEY,
    RESPOND,
    STOP,
    STREAM,
    TAGS,
    USE_KEY,
)
from .errors import ProtocolError
from .msgpack_wire import MAX_UINT64, as_text, text_bytes

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_ZERO: Final[dict[type, Any]] = {int: 0, str: "", bool: False, list: []}


def _field(obj: Any, name: str, kind: type, position: int) -> Any:
    if type(obj) is dict:
        value = obj.get(name)
    elif position < len(obj):
        value = obj[position]
    else:
        value = None
    if value is None:
        zero = _ZERO[kind]
        return list(zero) if kind is list else zero
    if type(value) is not kind:
        text = as_text(value) if kind is str else None
        if text is None:
            raise ProtocolError(f"body field {name} must be {kind.__name__}")
        return text
    return value


def _require_struct(obj: Any, what: str) -> None:
    if type(obj) is not dict and type(obj) is not list:
        raise ProtocolError(f"{what} body must be a map, got {type(obj).__name__}")


def decode_handshake(obj: Any) -> int:
    """``{Version: int}`` -> the version (0 when missing)."""
    _require_struct(obj, "handshake")
    version: int = _field(obj, "Version", int, 0)
    return version


def _raw(obj: Any, name: str, position: int) -> Any:
    """A field as it arrived (None when missing), by name or by position."""
    if type(obj) is dict:
        return obj.get(name)
    return obj[position] if position < len(obj) else None


def _strings(obj: Any, name: str, position: int) -> list[str]:
    strings: list[str] = []
    for item in _field(obj, name, list, position):
        text = as_text(item)
        if text is None:
            raise ProtocolError(f"body field {name} must be a list of strings")
        strings.append(text)
    return strings


def _string_map(obj: Any, name: str, position: int) -> dict[str, str]:
    """A ``map[string]string`` field (nil or missing: empty)."""
    value = _raw(obj, name, position)
    if value is None:
        return {}
    if type(value) is not dict:
        raise ProtocolError(f"body field {name} must be a map of strings")
    result: dict[str, str] = {}
    for key, item in value.items():
        key_text, item_text = as_text(key), as_text(item)
        if key_text is None or item_text is None:
            raise ProtocolError(f"body field {name} must be a map of strings")
        result[key_text] = item_text
    return result


def _payload(obj: Any, name: str, position: int) -> bytes:
    """A ``[]byte`` field: bin (Go's encoding), or str (an old-spec encoder's raw), or nil."""
    value = _raw(obj, name, position)
    if value is None:
        return b""
    if type(value) is bytes:
        return value
    if type(value) is str:
        return text_bytes(value)
    raise ProtocolError(f"body field {name} must be bytes")


def _unsigned(obj: Any, name: str, position: int, maximum: int) -> int:
    value: int = _field(obj, name, int, position)
    if not 0 <= value <= maximum:
        raise ProtocolError(f"body field {name} must be between 0 and {maximum}")
    return value


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """A join: Consul's ``{Existing, WAN}`` or Serf's ``{Existing, Replay}`` (each listener
    reads its own flag; in the positional form the second field is both)."""

    existing: list[str]
    wan: bool
    replay: bool = False


def decode_join(obj: Any) -> JoinRequest:
    """``{Existing: [str], WAN: bool}`` (Consul) or ``{Existing: [str], Replay: bool}``
    (Serf)."""
    _require_struct(obj, "join")
    existing = _strings(obj, "Existing", 0)
    if type(obj) is dict:
        return JoinRequest(existing, _field(obj, "WAN", bool, 1), _field(obj, "Replay", bool, 1))
    flag: bool = _field(obj, "WAN", bool, 1)
    return JoinRequest(existing, flag, flag)


class ForceLeaveNode(str):
    """The node name of a force-leave (it is the ``str``), with Serf's ``Prune`` flag."""

    prune: bool

    def __new__(cls, node: str, prune: bool = False) -> ForceLeaveNode:
        self = super().__new__(cls, node)
        self.prune = prune
        return self


def decode_force_leave(obj: Any) -> ForceLeaveNode:
    """``{Node: str}`` (Consul) or ``{Node: str, Prune: bool}`` (Serf) -> the node name."""
    _require_struct(obj, "force-leave")
    node: str = _field(obj, "Node", str, 0)
    prune: bool = _field(obj, "Prune", bool, 1)
    return ForceLeaveNode(node, prune)


def decode_key(obj: Any) -> str:
    """``{Key: str}`` (``install-key``, ``use-key``, ``remove-key``) -> the base64 key."""
    _require_struct(obj, "keyring")
    key: str = _field(obj, "Key", str, 0)
    return key


def decode_auth(obj: Any) -> str:
    """Serf's ``{AuthKey: str}`` -> the key."""
    _require_struct(obj, "auth")
    key: str = _field(obj, "AuthKey", str, 0)
    return key


@dataclass(frozen=True, slots=True)
class EventRequest:
    """Serf's ``event``: a user event to send to the pool."""

    name: str
    payload: bytes
    coalesce: bool


def decode_event(obj: Any) -> EventRequest:
    """``{Name: str, Payload: []byte, Coalesce: bool}``."""
    _require_struct(obj, "event")
    return EventRequest(
        _field(obj, "Name", str, 0), _payload(obj, "Payload", 1), _field(obj, "Coalesce", bool, 2)
    )


@dataclass(frozen=True, slots=True)
class MembersFilter:
    """Serf's ``members-filtered``: regexps on tags, status and name ("" matches all)."""

    tags: dict[str, str]
    status: str
    name: str


def decode_members_filtered(obj: Any) -> MembersFilter:
    """``{Tags: map[string]string, Status: str, Name: str}``."""
    _require_struct(obj, "members-filtered")
    return MembersFilter(
        _string_map(obj, "Tags", 0), _field(obj, "Status", str, 1), _field(obj, "Name", str, 2)
    )


def decode_stream(obj: Any) -> str:
    """Serf's ``{Type: str}`` -> the event filter (``member-join,user:deploy``; "" is all)."""
    _require_struct(obj, "stream")
    kinds: str = _field(obj, "Type", str, 0)
    return kinds


@dataclass(frozen=True, slots=True)
class TagsRequest:
    """Serf's ``tags``: tags to set and tag names to delete."""

    tags: dict[str, str]
    delete: list[str]


def decode_tags(obj: Any) -> TagsRequest:
    """``{Tags: map[string]string, DeleteTags: [str]}``."""
    _require_struct(obj, "tags")
    return TagsRequest(_string_map(obj, "Tags", 0), _strings(obj, "DeleteTags", 1))


MAX_INT64: Final = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """Serf's ``query``; ``timeout_ns`` 0 means serf's default timeout."""

    filter_nodes: list[str]
    filter_tags: dict[str, str]
    request_ack: bool
    relay_factor: int
    timeout_ns: int
    name: str
    payload: bytes


def decode_query(obj: Any) -> QueryRequest:
    """``{FilterNodes, FilterTags, RequestAck, RelayFactor: uint8, Timeout: ns, Name,
    Payload}``."""
    _require_struct(obj, "query")
    return QueryRequest(
        filter_nodes=_strings(obj, "FilterNodes", 0),
        filter_tags=_string_map(obj, "FilterTags", 1),
        request_ack=_field(obj, "RequestAck", bool, 2),
        relay_factor=_unsigned(obj, "RelayFactor", 3, 255),
        timeout_ns=_unsigned(obj, "Timeout", 4, MAX_INT64),
        name=_field(obj, "Name", str, 5),
        payload=_payload(obj, "Payload", 6),
    )


@dataclass(frozen=True, slots=True)
class RespondRequest:
    """Serf's ``respond``: the answer to the query this connection's stream numbered ``id``."""

    id: int
    payload: bytes


def decode_respond(obj: Any) -> RespondRequest:
    """``{ID: uint64, Payload: []byte}``."""
    _require_struct(obj, "respond")
    return RespondRequest(_unsigned(obj, "ID", 0, MAX_UINT64), _payload(obj, "Payload", 1))


def decode_coordinate_request(obj: Any) -> str:
    """Serf's ``get-coordinate`` ``{Node: str}`` -> the node name."""
    _require_struct(obj, "get-coordinate")
    node: str = _field(obj, "Node", str, 0)
    return node


def decode_monitor(obj: Any) -> str:
    """``{LogLevel: str}`` -> the level as sent (the caller upper-cases it)."""
    _require_struct(obj, "monitor")
    level: str = _field(obj, "LogLevel", str, 0)
    return level


def decode_stop(obj: Any) -> int:
    """``{Stop: uint64}`` -> the Seq of the stream to stop."""
    _require_struct(obj, "stop")
    seq: int = _field(obj, "Stop", int, 0)
    if seq < 0:
        raise ProtocolError("body field Stop must be unsigned")
    return seq


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a pool as the agent reports it."""

    name: str
    addr: IPAddress
    port: int
    tags: dict[str, str] = field(default_factory=dict)
    status: str = STATUS_ALIVE
    protocol_min: int = 1
    protocol_max: int = 5
    protocol_cur: int = 2
    delegate_min: int = 2
    delegate_max: int = 5
    delegate_cur: int = 4

    def to_wire(self) -> dict[str, Any]:
        """The reference's Member struct; ``Addr`` as 4 or 16 raw bytes (msgpack bin)."""
        return {
            "Name": self.name,
            "Addr": self.addr.packed,
            "Port": self.port,
            "Tags": self.tags,
            "Status": self.status,
            "ProtocolMin": self.protocol_min,
            "ProtocolMax": self.protocol_max,
            "ProtocolCur": self.protocol_cur,
            "DelegateMin": self.delegate_min,
            "DelegateMax": self.delegate_max,
            "DelegateCur": self.delegate_cur,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> Member:
        """Parse a Member map from an agent (ours or a reference one)."""
        if type(obj) is not dict:
            raise ProtocolError("member must be a map")
        raw_addr = obj.get("Addr") or b""
        if type(raw_addr) is list:  # some encoders send byte slices as int arrays
            raw_addr = bytes(raw_addr)
        elif type(raw_addr) is str:  # an old-spec encoder sends []byte as a raw str
            raw_addr = text_bytes(raw_addr)
        if type(raw_addr) is not bytes or len(raw_addr) not in (4, 16):
            raise ProtocolError("member Addr must be 4 or 16 bytes")
        tags = obj.get("Tags") or {}
        if type(tags) is not dict:
            raise ProtocolError("member Tags must be a map")
        return cls(
            name=_member_text(obj.get("Name"), "Name"),
            addr=ipaddress.ip_address(raw_addr),
            port=int(obj.get("Port", 0)),
            tags={_member_text(k, "Tags"): _member_text(v, "Tags") for k, v in tags.items()},
            status=_member_text(obj.get("Status"), "Status"),
            protocol_min=int(obj.get("ProtocolMin", 0)),
            protocol_max=int(obj.get("ProtocolMax", 0)),
            protocol_cur=int(obj.get("ProtocolCur", 0)),
            delegate_min=int(obj.get("DelegateMin", 0)),
            delegate_max=int(obj.get("DelegateMax", 0)),
            delegate_cur=int(obj.get("DelegateCur", 0)),
        )

    @property
    def address(self) -> str:
        """``ip:port``, IPv6 in brackets, as the reference CLI prints it."""
        return join_host_port(str(self.addr), self.port)


def _member_text(value: object, name: str) -> str:
    if value is None:
        return ""
    text = as_text(value)
    if text is None:
        raise ProtocolError(f"member {name} must hold strings")
    return text


def members_body(members: list[Member]) -> dict[str, Any]:
    """``{Members: [...]}``; an empty pool is ``[]``, never nil."""
    return {"Members": [member.to_wire() for member in members]}


BODY_DECODERS: Final[dict[str, Any]] = {
    HANDSHAKE: decode_handshake,
    JOIN: decode_join,
    FORCE_LEAVE: decode_force_leave,
    MONITOR: decode_monitor,
    STOP: decode_stop,
    INSTALL_KEY: decode_key,
    USE_KEY: decode_key,
    REMOVE_KEY: decode_key,
    AUTH: decode_auth,
    EVENT: decode_event,
    MEMBERS_FILTERED: decode_members_filtered,
    STREAM: decode_stream,
    TAGS: decode_tags,
    QUERY: decode_query,
    RESPOND: decode_respond,
    GET_COORDINATE: decode_coordinate_request,
}
"""Command name -> the function that validates and decodes its request body (both dialects:
a name they share has one body shape, or one decoder that reads both)."""
