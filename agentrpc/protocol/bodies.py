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
from .errors import ProtocolError
from .msgpack_wire import as_text, text_bytes

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


@dataclass(frozen=True, slots=True)
class JoinRequest:
    existing: list[str]
    wan: bool


def decode_join(obj: Any) -> JoinRequest:
    """``{Existing: [str], WAN: bool}``."""
    _require_struct(obj, "join")
    existing: list[str] = []
    for item in _field(obj, "Existing", list, 0):
        text = as_text(item)
        if text is None:
            raise ProtocolError("body field Existing must be a list of strings")
        existing.append(text)
    return JoinRequest(existing, _field(obj, "WAN", bool, 1))


def decode_force_leave(obj: Any) -> str:
    """``{Node: str}`` -> the node name."""
    _require_struct(obj, "force-leave")
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
    status: str = "alive"
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
    "handshake": decode_handshake,
    "join": decode_join,
    "force-leave": decode_force_leave,
    "monitor": decode_monitor,
    "stop": decode_stop,
}
"""Command name -> the function that validates and decodes its request body."""
