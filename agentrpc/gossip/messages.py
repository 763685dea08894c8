"""Memberlist's gossip messages: type bytes, wire limits and the msgpack structs.

Every memberlist message is one type byte followed by a msgpack map whose keys are the Go
struct's field names. Go's encoder uses the *old* msgpack spec (strings and ``[]byte`` are both
raw ``str``), so encoding here packs with ``use_bin_type=False`` and decoding unpacks with
``raw=True`` and converts names itself.

Encoding writes the map keys sorted by field name, which is what the go-msgpack in serf 0.8/0.9
does, so our bytes equal a Go peer's for the same values (checked against captured bytes).
Decoding follows Go's decoder: unknown keys are ignored, missing keys (and ``nil``) give Go's
zero values, a wrong type raises :class:`GossipDecodeError`. Strings are decoded from UTF-8 with
``surrogateescape``, so arbitrary bytes in a Go string survive a decode/encode round trip (the
agent RPC codec's one rule, :func:`agentrpc.protocol.codec.as_text` and ``text_bytes``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol, Self, TypeVar

import msgpack

from agentrpc.protocol.codec import as_text, text_bytes

__all__ = [
    "LABEL_MAX_SIZE",
    "MAX_DECOMPRESSED_BYTES",
    "MAX_PUSH_STATE_BYTES",
    "MAX_PUSH_STATE_NODES",
    "MAX_USER_MSG_BYTES",
    "META_MAX_SIZE",
    "PROTOCOL_VERSION_DEFAULT",
    "PROTOCOL_VERSION_MAX",
    "PROTOCOL_VERSION_MIN",
    "AckResp",
    "Alive",
    "Compress",
    "CompressionAlgo",
    "Dead",
    "ErrResp",
    "GossipDecodeError",
    "GossipEncodeError",
    "GossipError",
    "GossipMessage",
    "IndirectPingReq",
    "MessageType",
    "NackResp",
    "NodeState",
    "Ping",
    "PushNodeState",
    "PushPullHeader",
    "Suspect",
    "UserMsgHeader",
    "Vsn",
    "WireStruct",
    "decode_body",
    "decode_message",
    "encode_body",
    "encode_message",
    "pack_wire",
    "unpack_wire_map",
]


class GossipError(Exception):
    """Base class of every error raised by the gossip codecs."""


class GossipDecodeError(GossipError, ValueError):
    """Bytes from the wire do not form the expected message (bad msgpack, wrong field type,
    truncated data, failed authentication, exceeded limit)."""


class GossipEncodeError(GossipError, ValueError):
    """A value cannot be put on the wire (out of range for its Go type, too large)."""


class MessageType(enum.IntEnum):
    """The first byte of every memberlist message (net.go ``messageType``)."""

    PING = 0
    INDIRECT_PING = 1
    ACK_RESP = 2
    SUSPECT = 3
    ALIVE = 4
    DEAD = 5
    PUSH_PULL = 6
    COMPOUND = 7
    USER = 8
    COMPRESS = 9
    ENCRYPT = 10
    NACK_RESP = 11
    HAS_CRC = 12
    ERR = 13
    HAS_LABEL = 244


class NodeState(enum.IntEnum):
    """Memberlist's ``NodeStateType`` as carried in :class:`PushNodeState`."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


class CompressionAlgo(enum.IntEnum):
    """The ``Algo`` field of :class:`Compress`."""

    LZW = 0


# Protocol versions this codec understands (memberlist ProtocolVersionMin/Max) and the default
# current version ("ProtocolVersion2Compatible").
PROTOCOL_VERSION_MIN = 1
PROTOCOL_VERSION_MAX = 5
PROTOCOL_VERSION_DEFAULT = 2

META_MAX_SIZE = 512
"""Largest node Meta memberlist accepts."""
LABEL_MAX_SIZE = 255
"""Longest packet/stream label (its length is one byte on the wire)."""
MAX_PUSH_STATE_BYTES = 20 * 1024 * 1024
"""Largest push/pull user state, and largest encrypted stream message."""
MAX_PUSH_STATE_NODES = 1024 * 1024
"""Most node states one push/pull may announce."""
MAX_USER_MSG_BYTES = 20 * 1024 * 1024
"""Largest user message accepted over a stream."""
MAX_DECOMPRESSED_BYTES = 2 * MAX_PUSH_STATE_BYTES
"""Largest output one compress message may decompress to."""

Vsn = tuple[int, int, int, int, int, int]
"""Protocol and delegate versions: ``(pmin, pmax, pcur, dmin, dmax, dcur)``."""

_VSN_LEN = 6

# --------------------------------------------------------------------------------------------
# msgpack plumbing shared by every struct codec (also used by serf_messages).


def pack_wire(obj: object) -> bytes:
    """Pack ``obj`` the way go-msgpack's old spec does (``str``/``bytes`` as raw ``str``)."""
    try:
        packed: bytes = msgpack.packb(obj, use_bin_type=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise GossipEncodeError(f"cannot encode value as msgpack: {exc}") from exc
    return packed


def unpack_wire(data: bytes | bytearray | memoryview, what: str) -> object:
    """Unpack one msgpack value, ignoring trailing bytes as Go's decoder does."""
    try:
        return msgpack.unpackb(data, raw=True)
    except msgpack.exceptions.ExtraData as extra:
        obj: object = extra.unpacked
        return obj
    except (ValueError, msgpack.exceptions.UnpackException) as exc:
        raise GossipDecodeError(f"{what}: invalid msgpack: {exc}") from exc


def unpack_wire_map(data: bytes | bytearray | memoryview, what: str) -> dict[str, object]:
    """Unpack a msgpack map whose keys are struct field names; ``nil`` gives an empty map."""
    return wire_map(unpack_wire(data, what), what)


def wire_map(obj: object, what: str) -> dict[str, object]:
    """Check that an unpacked value is a map of field names and decode the names."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise GossipDecodeError(f"{what}: expected a msgpack map, got {_kind(obj)}")
    fields: dict[str, object] = {}
    for key, value in obj.items():
        name = as_text(key)
        if name is not None:
            fields[name] = value
        # Other key types cannot name a Go struct field: ignored like unknown names.
    return fields


def _kind(value: object) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, bytes):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "map"
    return type(value).__name__


def field_uint(fields: Mapping[str, object], name: str, bits: int, what: str) -> int:
    """An unsigned integer field of ``bits`` width; ``nil``/missing gives 0."""
    value = fields.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise GossipDecodeError(f"{what}.{name}: expected an unsigned integer, got {_kind(value)}")
    if value < 0 or value >> bits:
        raise GossipDecodeError(f"{what}.{name}: {value} does not fit in uint{bits}")
    return value


def field_int(fields: Mapping[str, object], name: str, what: str) -> int:
    """A signed 64-bit integer field (Go ``int``); ``nil``/missing gives 0."""
    value = fields.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise GossipDecodeError(f"{what}.{name}: expected an integer, got {_kind(value)}")
    if not -(1 << 63) <= value < (1 << 63):
        raise GossipDecodeError(f"{what}.{name}: {value} does not fit in int64")
    return value


def field_bool(fields: Mapping[str, object], name: str, what: str) -> bool:
    """A boolean field; ``nil``/missing gives False."""
    value = fields.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise GossipDecodeError(f"{what}.{name}: expected a boolean, got {_kind(value)}")
    return value


def field_bytes(fields: Mapping[str, object], name: str, what: str) -> bytes:
    """A ``[]byte`` field; ``nil``/missing gives ``b""``."""
    value = fields.get(name)
    if value is None:
        return b""
    if not isinstance(value, bytes):
        raise GossipDecodeError(f"{what}.{name}: expected bytes, got {_kind(value)}")
    return value


def field_str(fields: Mapping[str, object], name: str, what: str) -> str:
    """A ``string`` field; ``nil``/missing gives ``""``."""
    return wire_str(fields.get(name), f"{what}.{name}")


def wire_str(value: object, what: str) -> str:
    """Decode a raw msgpack string into ``str`` (lossless for non-UTF-8 bytes)."""
    if value is None:
        return ""
    text = as_text(value)
    if text is None:
        raise GossipDecodeError(f"{what}: expected a string, got {_kind(value)}")
    return text


def str_wire(value: str) -> bytes:
    """Encode a ``str`` for the wire (inverse of :func:`wire_str`)."""
    return text_bytes(value)


def bytes_wire(value: bytes) -> bytes | None:
    """Encode a ``[]byte`` field: Go sends a nil slice (msgpack nil) when it is empty."""
    return bytes(value) if value else None


def check_uint(value: int, bits: int, what: str) -> int:
    """Raise :class:`GossipEncodeError` unless ``value`` fits in ``uint<bits>``."""
    if isinstance(value, bool) or value < 0 or value >> bits:
        raise GossipEncodeError(f"{what}: {value!r} does not fit in uint{bits}")
    return value


def check_int(value: int, what: str) -> int:
    """Raise :class:`GossipEncodeError` unless ``value`` fits in ``int64``."""
    if isinstance(value, bool) or not -(1 << 63) <= value < (1 << 63):
        raise GossipEncodeError(f"{what}: {value!r} does not fit in int64")
    return value


def _field_vsn(fields: Mapping[str, object], what: str) -> Vsn | None:
    """Decode ``Vsn``: Go's ``[]uint8`` travels as a raw string; arrays are accepted too."""
    value = fields.get("Vsn")
    if value is None:
        return None
    if isinstance(value, bytes):
        items = list(value)
    elif isinstance(value, list):
        items = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= 0xFF:
                raise GossipDecodeError(f"{what}.Vsn: entries must be uint8, got {item!r}")
            items.append(item)
    else:
        raise GossipDecodeError(f"{what}.Vsn: expected bytes, got {_kind(value)}")
    if not items:
        return None
    if len(items) < _VSN_LEN:
        raise GossipDecodeError(f"{what}.Vsn: expected {_VSN_LEN} versions, got {len(items)}")
    return (items[0], items[1], items[2], items[3], items[4], items[5])


def _vsn_wire(vsn: Vsn | None, what: str) -> bytes | None:
    if vsn is None:
        return None
    if len(vsn) != _VSN_LEN:
        raise GossipEncodeError(f"{what}.Vsn: expected {_VSN_LEN} versions, got {len(vsn)}")
    for item in vsn:
        check_uint(item, 8, f"{what}.Vsn")
    return bytes(vsn)


# --------------------------------------------------------------------------------------------
# The structs.


class WireStruct(Protocol):
    """A memberlist struct that converts to and from its msgpack field map."""

    def to_wire(self) -> dict[str, object]: ...

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self: ...


@dataclass(frozen=True, slots=True)
class Ping:
    """``ping``: a direct probe. ``node`` names the intended target (empty: anyone)."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.PING

    seq_no: int
    node: str
    source_addr: bytes = b""
    source_port: int = 0
    source_node: str = ""

    def to_wire(self) -> dict[str, object]:
        out: dict[str, object] = {
            "Node": str_wire(self.node),
            "SeqNo": check_uint(self.seq_no, 32, "ping.SeqNo"),
        }
        # The three Source* fields are omitempty in Go.
        if self.source_addr:
            out["SourceAddr"] = bytes(self.source_addr)
        if self.source_node:
            out["SourceNode"] = str_wire(self.source_node)
        if self.source_port:
            out["SourcePort"] = check_uint(self.source_port, 16, "ping.SourcePort")
        return out

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        return cls(
            seq_no=field_uint(fields, "SeqNo", 32, "ping"),
            node=field_str(fields, "Node", "ping"),
            source_addr=field_bytes(fields, "SourceAddr", "ping"),
            source_port=field_uint(fields, "SourcePort", 16, "ping"),
            source_node=field_str(fields, "SourceNode", "ping"),
        )


@dataclass(frozen=True, slots=True)
class IndirectPingReq:
    """``indirectPingReq``: ask a peer to probe ``target:port`` (named ``node``) for us."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.INDIRECT_PING

    seq_no: int
    target: bytes
    port: int
    node: str
    nack: bool = False
    source_addr: bytes = b""
    source_port: int = 0
    source_node: str = ""

    def to_wire(self) -> dict[str, object]:
        out: dict[str, object] = {
            "Nack": bool(self.nack),
            "Node": str_wire(self.node),
            "Port": check_uint(self.port, 16, "indirectPingReq.Port"),
            "SeqNo": check_uint(self.seq_no, 32, "indirectPingReq.SeqNo"),
        }
        if self.source_addr:
            out["SourceAddr"] = bytes(self.source_addr)
        if self.source_node:
            out["SourceNode"] = str_wire(self.source_node)
        if self.source_port:
            out["SourcePort"] = check_uint(self.source_port, 16, "indirectPingReq.SourcePort")
        out["Target"] = bytes_wire(self.target)
        return out

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        what = "indirectPingReq"
        return cls(
            seq_no=field_uint(fields, "SeqNo", 32, what),
            target=field_bytes(fields, "Target", what),
            port=field_uint(fields, "Port", 16, what),
            node=field_str(fields, "Node", what),
            nack=field_bool(fields, "Nack", what),
            source_addr=field_bytes(fields, "SourceAddr", what),
            source_port=field_uint(fields, "SourcePort", 16, what),
            source_node=field_str(fields, "SourceNode", what),
        )


@dataclass(frozen=True, slots=True)
class AckResp:
    """``ackResp``: answer to a ping; serf puts a Vivaldi coordinate in ``payload``."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.ACK_RESP

    seq_no: int
    payload: bytes = b""

    def to_wire(self) -> dict[str, object]:
        return {
            "Payload": bytes_wire(self.payload),
            "SeqNo": check_uint(self.seq_no, 32, "ackResp.SeqNo"),
        }

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        return cls(
            seq_no=field_uint(fields, "SeqNo", 32, "ackResp"),
            payload=field_bytes(fields, "Payload", "ackResp"),
        )


@dataclass(frozen=True, slots=True)
class NackResp:
    """``nackResp``: an indirect probe was tried but got no ack in time."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.NACK_RESP

    seq_no: int

    def to_wire(self) -> dict[str, object]:
        return {"SeqNo": check_uint(self.seq_no, 32, "nackResp.SeqNo")}

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        return cls(seq_no=field_uint(fields, "SeqNo", 32, "nackResp"))


@dataclass(frozen=True, slots=True)
class ErrResp:
    """``errResp``: the remote end's error, sent over a stream."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.ERR

    error: str

    def to_wire(self) -> dict[str, object]:
        return {"Error": str_wire(self.error)}

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        return cls(error=field_str(fields, "Error", "errResp"))


@dataclass(frozen=True, slots=True)
class Suspect:
    """``suspect``: ``from_node`` suspects ``node`` at ``incarnation``."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.SUSPECT

    incarnation: int
    node: str
    from_node: str

    def to_wire(self) -> dict[str, object]:
        return {
            "From": str_wire(self.from_node),
            "Incarnation": check_uint(self.incarnation, 32, "suspect.Incarnation"),
            "Node": str_wire(self.node),
        }

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        return cls(
            incarnation=field_uint(fields, "Incarnation", 32, "suspect"),
            node=field_str(fields, "Node", "suspect"),
            from_node=field_str(fields, "From", "suspect"),
        )


@dataclass(frozen=True, slots=True)
class Alive:
    """``alive``: ``node`` is alive at ``incarnation``; ``vsn`` None means absent."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.ALIVE

    incarnation: int
    node: str
    addr: bytes
    port: int
    meta: bytes = b""
    vsn: Vsn | None = None

    def to_wire(self) -> dict[str, object]:
        if len(self.meta) > META_MAX_SIZE:
            raise GossipEncodeError(f"alive.Meta: {len(self.meta)} bytes > {META_MAX_SIZE}")
        return {
            "Addr": bytes_wire(self.addr),
            "Incarnation": check_uint(self.incarnation, 32, "alive.Incarnation"),
            "Meta": bytes_wire(self.meta),
            "Node": str_wire(self.node),
            "Port": check_uint(self.port, 16, "alive.Port"),
            "Vsn": _vsn_wire(self.vsn, "alive"),
        }

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        return cls(
            incarnation=field_uint(fields, "Incarnation", 32, "alive"),
            node=field_str(fields, "Node", "alive"),
            addr=field_bytes(fields, "Addr", "alive"),
            port=field_uint(fields, "Port", 16, "alive"),
            meta=field_bytes(fields, "Meta", "alive"),
            vsn=_field_vsn(fields, "alive"),
        )


@dataclass(frozen=True, slots=True)
class Dead:
    """``dead``: ``node`` is dead; ``node == from_node`` is a voluntary leave."""

    MESSAGE_TYPE: ClassVar[MessageType] = MessageType.DEAD

    incarnation: int
    node: str
    from_node: str

    def to_wire(self) -> dict[str, object]:
        return {
            "From": str_wire(self.from_node),
            "Incarnation": check_uint(self.incarnation, 32, "dead.Incarnation"),
            "Node": str_wire(self.node),
        }

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        return cls(
            incarnation=field_uint(fields, "Incarnation", 32, "dead"),
            node=field_str(fields, "Node", "dead"),
            from_node=field_str(fields, "From", "dead"),
        )


@dataclass(frozen=True, slots=True)
class PushPullHeader:
    """``pushPullHeader``: how many node states and user-state bytes follow on the stream."""

    nodes: int
    user_state_len: int
    join: bool

    def to_wire(self) -> dict[str, object]:
        return {
            "Join": bool(self.join),
            "Nodes": check_int(self.nodes, "pushPullHeader.Nodes"),
            "UserStateLen": check_int(self.user_state_len, "pushPullHeader.UserStateLen"),
        }

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        return cls(
            nodes=field_int(fields, "Nodes", "pushPullHeader"),
            user_state_len=field_int(fields, "UserStateLen", "pushPullHeader"),
            join=field_bool(fields, "Join", "pushPullHeader"),
        )


@dataclass(frozen=True, slots=True)
class PushNodeState:
    """``pushNodeState``: one node as exchanged in a push/pull.

    ``state`` is kept as the integer from the wire; compare it with :class:`NodeState`
    (unknown values are possible from newer peers and are ignored by memberlist's merge).
    """

    name: str
    addr: bytes
    port: int
    meta: bytes
    incarnation: int
    state: int
    vsn: Vsn | None

    def to_wire(self) -> dict[str, object]:
        if len(self.meta) > META_MAX_SIZE:
            raise GossipEncodeError(f"pushNodeState.Meta: {len(self.meta)} bytes > {META_MAX_SIZE}")
        return {
            "Addr": bytes_wire(self.addr),
            "Incarnation": check_uint(self.incarnation, 32, "pushNodeState.Incarnation"),
            "Meta": bytes_wire(self.meta),
            "Name": str_wire(self.name),
            "Port": check_uint(self.port, 16, "pushNodeState.Port"),
            "State": check_int(int(self.state), "pushNodeState.State"),
            "Vsn": _vsn_wire(self.vsn, "pushNodeState"),
        }

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        what = "pushNodeState"
        return cls(
            name=field_str(fields, "Name", what),
            addr=field_bytes(fields, "Addr", what),
            port=field_uint(fields, "Port", 16, what),
            meta=field_bytes(fields, "Meta", what),
            incarnation=field_uint(fields, "Incarnation", 32, what),
            state=field_int(fields, "State", what),
            vsn=_field_vsn(fields, what),
        )


@dataclass(frozen=True, slots=True)
class UserMsgHeader:
    """``userMsgHeader``: length of the raw user message that follows on a stream."""

    user_msg_len: int

    def to_wire(self) -> dict[str, object]:
        return {"UserMsgLen": check_int(self.user_msg_len, "userMsgHeader.UserMsgLen")}

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        return cls(user_msg_len=field_int(fields, "UserMsgLen", "userMsgHeader"))


@dataclass(frozen=True, slots=True)
class Compress:
    """``compress``: a payload compressed with ``algo`` (only LZW exists)."""

    algo: int
    buf: bytes

    def to_wire(self) -> dict[str, object]:
        return {"Algo": check_uint(self.algo, 8, "compress.Algo"), "Buf": bytes_wire(self.buf)}

    @classmethod
    def from_wire(cls, fields: Mapping[str, object]) -> Self:
        return cls(
            algo=field_uint(fields, "Algo", 8, "compress"),
            buf=field_bytes(fields, "Buf", "compress"),
        )


GossipMessage = Ping | IndirectPingReq | AckResp | NackResp | ErrResp | Suspect | Alive | Dead
"""A message that is a type byte plus one struct."""

_MESSAGE_CLASSES: dict[int, type[GossipMessage]] = {
    MessageType.PING: Ping,
    MessageType.INDIRECT_PING: IndirectPingReq,
    MessageType.ACK_RESP: AckResp,
    MessageType.NACK_RESP: NackResp,
    MessageType.ERR: ErrResp,
    MessageType.SUSPECT: Suspect,
    MessageType.ALIVE: Alive,
    MessageType.DEAD: Dead,
}

_StructT = TypeVar("_StructT", bound=WireStruct)


def encode_body(struct: WireStruct) -> bytes:
    """The msgpack encoding of one struct, without a type byte."""
    return pack_wire(struct.to_wire())


def decode_body(cls: type[_StructT], body: bytes | bytearray | memoryview) -> _StructT:
    """Decode one struct of class ``cls`` from its msgpack bytes (no type byte)."""
    name = getattr(cls, "__name__", "struct")
    return cls.from_wire(unpack_wire_map(body, name))


def encode_message(message: GossipMessage) -> bytes:
    """Type byte plus msgpack body, ready for a packet, compound part or stream."""
    return bytes((message.MESSAGE_TYPE,)) + encode_body(message)


def decode_message(msg_type: int, body: bytes | bytearray | memoryview) -> GossipMessage:
    """Decode the body of a message whose type byte was ``msg_type``.

    Only the single-struct messages are handled here (ping, indirect ping, ack, nack, err,
    suspect, alive, dead); anything else raises :class:`GossipDecodeError`.
    """
    cls = _MESSAGE_CLASSES.get(msg_type)
    if cls is None:
        raise GossipDecodeError(f"message type {msg_type} is not a single-struct message")
    return decode_body(cls, body)
