"""The JSON shapes of Consul 0.7's HTTP API (nodes with 0.7.3+/0.8's ``ID`` and ``Meta``),
built from the RPC replies (msgpack maps with Go's field names), sans-I/O.

Field order is the Go struct's (``encoding/json`` writes fields in declaration order, embedded
``RaftIndex`` last); ``[]byte`` is base64, a nil slice or map ``null`` unless the endpoint
replaces it with an empty one (the reference's "Use empty list instead of nil"), and
``DirEntry.Session`` is omitted when empty (``json:",omitempty"``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from ..member_status import (
    STATUS_ALIVE,
    STATUS_FAILED,
    STATUS_LEAVING,
    STATUS_LEFT,
    STATUS_NONE,
)
from ..protocol.bodies import Member
from ..protocol.msgpack_wire import text_bytes
from .go_json import b64

__all__ = [
    "MEMBER_STATUS_CODES",
    "check_service_node",
    "dir_entry",
    "health_check",
    "member",
    "node",
    "node_service",
    "service_node",
    "session",
]

Wire = dict[str, Any]

MEMBER_STATUS_CODES: Final = {
    STATUS_NONE: 0,
    STATUS_ALIVE: 1,
    STATUS_LEAVING: 2,
    STATUS_LEFT: 3,
    STATUS_FAILED: 4,
}
"""``serf.MemberStatus`` as the HTTP API writes it: an integer."""


def _str(m: Wire, name: str) -> str:
    value = m.get(name)
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def _int(m: Wire, name: str) -> int:
    value = m.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _list(m: Wire, name: str) -> list[str] | None:
    value = m.get(name)
    if value is None:
        return None
    return [
        item.decode("utf-8", "surrogateescape") if isinstance(item, bytes) else item
        for item in value
    ]


def _map(m: Wire, name: str) -> dict[str, str] | None:
    value = m.get(name)
    if value is None:
        return None
    return dict(value)


def _bytes(m: Wire, name: str) -> bytes | None:
    value = m.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        return text_bytes(value)
    return bytes(value)


def dir_entry(m: Wire) -> Wire:
    out: Wire = {
        "LockIndex": _int(m, "LockIndex"),
        "Key": _str(m, "Key"),
        "Flags": _int(m, "Flags"),
        "Value": b64(_bytes(m, "Value")),
    }
    session_id = _str(m, "Session")
    if session_id:
        out["Session"] = session_id
    out["CreateIndex"] = _int(m, "CreateIndex")
    out["ModifyIndex"] = _int(m, "ModifyIndex")
    return out


def node(m: Wire) -> Wire:
    """``structs.Node`` (0.7.3+/0.8): ``ID`` ("" when unset) and ``Meta`` (``null`` when the
    node was registered without it, ``{}`` when with an empty one) included."""
    return {
        "ID": _str(m, "ID"),
        "Node": _str(m, "Node"),
        "Address": _str(m, "Address"),
        "TaggedAddresses": _map(m, "TaggedAddresses"),
        "Meta": _map(m, "Meta"),
        "CreateIndex": _int(m, "CreateIndex"),
        "ModifyIndex": _int(m, "ModifyIndex"),
    }


def node_service(m: Wire) -> Wire:
    return {
        "ID": _str(m, "ID"),
        "Service": _str(m, "Service"),
        "Tags": _list(m, "Tags"),
        "Address": _str(m, "Address"),
        "Port": _int(m, "Port"),
        "EnableTagOverride": bool(m.get("EnableTagOverride")),
        "CreateIndex": _int(m, "CreateIndex"),
        "ModifyIndex": _int(m, "ModifyIndex"),
    }


def service_node(m: Wire) -> Wire:
    """``structs.ServiceNode`` (0.8): the node's ``ID`` and its Meta as ``NodeMeta``."""
    return {
        "ID": _str(m, "ID"),
        "Node": _str(m, "Node"),
        "Address": _str(m, "Address"),
        "TaggedAddresses": _map(m, "TaggedAddresses"),
        "NodeMeta": _map(m, "NodeMeta"),
        "ServiceID": _str(m, "ServiceID"),
        "ServiceName": _str(m, "ServiceName"),
        "ServiceTags": _list(m, "ServiceTags"),
        "ServiceAddress": _str(m, "ServiceAddress"),
        "ServicePort": _int(m, "ServicePort"),
        "ServiceEnableTagOverride": bool(m.get("ServiceEnableTagOverride")),
        "CreateIndex": _int(m, "CreateIndex"),
        "ModifyIndex": _int(m, "ModifyIndex"),
    }


def health_check(m: Wire) -> Wire:
    return {
        "Node": _str(m, "Node"),
        "CheckID": _str(m, "CheckID"),
        "Name": _str(m, "Name"),
        "Status": _str(m, "Status"),
        "Notes": _str(m, "Notes"),
        "Output": _str(m, "Output"),
        "ServiceID": _str(m, "ServiceID"),
        "ServiceName": _str(m, "ServiceName"),
        "CreateIndex": _int(m, "CreateIndex"),
        "ModifyIndex": _int(m, "ModifyIndex"),
    }


def health_checks(items: Iterable[Wire] | None) -> list[Wire]:
    """A list of checks, ``[]`` for none."""
    return [health_check(c) for c in items or ()]


def check_service_node(m: Wire) -> Wire:
    return {
        "Node": node(m.get("Node") or {}),
        "Service": node_service(m.get("Service") or {}),
        "Checks": health_checks(m.get("Checks")),
    }


def session(m: Wire) -> Wire:
    return {
        "ID": _str(m, "ID"),
        "Name": _str(m, "Name"),
        "Node": _str(m, "Node"),
        "Checks": _list(m, "Checks"),
        "LockDelay": _int(m, "LockDelay"),
        "Behavior": _str(m, "Behavior"),
        "TTL": _str(m, "TTL"),
        "CreateIndex": _int(m, "CreateIndex"),
        "ModifyIndex": _int(m, "ModifyIndex"),
    }


def member(m: Member) -> Wire:
    """``serf.Member`` as ``/v1/agent/members`` writes it: the address as text, the status an
    integer."""
    return {
        "Name": m.name,
        "Addr": str(m.addr),
        "Port": m.port,
        "Tags": dict(m.tags),
        "Status": MEMBER_STATUS_CODES.get(m.status, 0),
        "ProtocolMin": m.protocol_min,
        "ProtocolMax": m.protocol_max,
        "ProtocolCur": m.protocol_cur,
        "DelegateMin": m.delegate_min,
        "DelegateMax": m.delegate_max,
        "DelegateCur": m.delegate_cur,
    }
