"""go-msgpack 0.5.5 as hashicorp/raft uses it (a default ``codec.MsgpackHandle{}``), pure.

The one home of the encoding rules of the Raft wire (spec raft.md §2), shared by the RPC codec
(:mod:`.wire`) and the configuration encoding (:mod:`.configuration`):

* **Encode**: a Go struct is a map whose keys are the field names **sorted** (callers build
  their dicts in that order); ``string`` and ``[]byte`` both use the old raw family (fixraw,
  raw16 ``0xda``, raw32 ``0xdb``: never str8 or bin, ``WriteExt`` is false); integers take their
  smallest form, non-negative signed ones as unsigned. ``msgpack.packb(obj, use_bin_type=False)``
  writes exactly that, so :func:`pack` is that call.
* **Decode**: str8 and bin are accepted as well as raw, map keys are matched by name in any
  order, unknown keys are skipped, a missing key or a nil value is the zero value, and a nil
  where a struct is expected is the zero struct (go-msgpack's ``TryDecodeAsNil``). Field readers
  (:func:`uint_field` and friends) apply go-msgpack's type rules: a negative value for an
  unsigned field, a string for an integer and an integer over its Go size are errors.
* **Bounds before allocation**: :func:`scan_object` walks one object's headers (never its string
  payloads) and finds where it ends, refusing an object over ``max_size`` bytes, deeper than
  ``max_depth`` or declaring more than ``max_elements`` container elements in total. msgpack
  preallocates a declared array or map, so a few header bytes could otherwise ask for gigabytes
  (an array of arrays of 4096 elements each costs 32 KiB per 3 bytes of input); the scan keeps
  a hostile peer's cost proportional to the bytes it sent. Only a scanned, complete object is
  handed to :func:`decode_object` (msgpack in C).
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

from ..protocol.errors import FrameTooLarge, ProtocolError
from ..protocol.msgpack_wire import TEXT_ERRORS

MAX_UINT64: Final = (1 << 64) - 1
MAX_INT64: Final = (1 << 63) - 1
MIN_INT64: Final = -(1 << 63)

DEFAULT_MAX_DEPTH: Final = 8
"""Nesting a Raft message needs: request map > Entries array > Log map > scalar is 3."""
DEFAULT_MAX_ELEMENTS: Final = 1 << 17
"""Objects inside containers (array items, map keys and values) in one object, in total: an
AppendEntries of 1024 entries (MaxAppendEntries' upper bound), 10 objects each, fits 12 times."""


class DecodeError(ProtocolError):
    """Bytes that are not the msgpack object a Raft peer sends: the connection must close."""


def pack(obj: Any) -> bytes:
    """go-msgpack's bytes for a value built of dicts (keys in Go's sorted order), lists, bytes,
    ASCII str, ints, bools and None."""
    packed: bytes = msgpack.packb(obj, use_bin_type=False)
    return packed


# ------------------------------------------------------------------------------ scanning

# Bytes of the length that follows a header byte, for the sized families.
_RAW_LEN: Final = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
_FIXED: Final = {
    0xC0: 0,
    0xC2: 0,
    0xC3: 0,
    0xCA: 4,
    0xCB: 8,
    0xCC: 1,
    0xCD: 2,
    0xCE: 4,
    0xCF: 8,
    0xD0: 1,
    0xD1: 2,
    0xD2: 4,
    0xD3: 8,
}
_CONTAINER: Final = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}
"""Header byte -> (length bytes, objects per declared element)."""


def scan_object(
    buf: bytes | bytearray | memoryview,
    start: int = 0,
    *,
    max_size: int,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> int:
    """Where the msgpack object at ``buf[start:]`` ends (an offset into ``buf``), or, when the
    buffer does not hold all of it yet, ``-needed``: minus the buffer length it needs at least.

    Raises :class:`FrameTooLarge` as soon as the headers show the object passes ``max_size``
    bytes (before its payload arrives), and :class:`DecodeError` for a reserved byte, an ext
    type (no Raft peer sends one), more than ``max_depth`` levels or ``max_elements`` elements."""
    end = len(buf)
    limit = start + max_size
    pos = start
    pending = [1]  # objects still to read, per open container level
    elements = 0
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        if pos >= end:
            return -(pos + 1)
        b = buf[pos]
        if b <= 0x7F or b >= 0xE0:
            pos += 1
            continue
        count = 0
        if b <= 0x8F:
            count = (b & 0x0F) * 2
            pos += 1
        elif b <= 0x9F:
            count = b & 0x0F
            pos += 1
        elif b <= 0xBF:
            pos += 1 + (b & 0x1F)
        elif b in _FIXED:
            pos += 1 + _FIXED[b]
        elif b in _RAW_LEN:
            width = _RAW_LEN[b]
            if pos + 1 + width > end:
                return -(pos + 1 + width)
            length = int.from_bytes(buf[pos + 1 : pos + 1 + width], "big")
            pos += 1 + width + length
        elif b in _CONTAINER:
            width, per = _CONTAINER[b]
            if pos + 1 + width > end:
                return -(pos + 1 + width)
            count = int.from_bytes(buf[pos + 1 : pos + 1 + width], "big") * per
            pos += 1 + width
        else:
            raise DecodeError(f"unexpected msgpack byte 0x{b:02x}")
        if pos > limit:
            raise FrameTooLarge(f"msgpack object exceeds the {max_size}-byte limit")
        if count:
            elements += count
            if elements > max_elements:
                raise DecodeError(f"msgpack object has more than {max_elements} elements")
            if len(pending) >= max_depth:
                raise DecodeError(f"msgpack object nested deeper than {max_depth} levels")
            pending.append(count)
    if pos > end:
        return -pos
    return pos


def decode_object(data: bytes | bytearray | memoryview) -> object:
    """One complete msgpack object (already scanned), strings as ``bytes``."""
    try:
        return msgpack.unpackb(data, raw=True, strict_map_key=False, max_ext_len=0)
    except (ValueError, TypeError, msgpack.exceptions.UnpackException) as exc:
        raise DecodeError(f"undecodable msgpack: {exc}") from None


def unpack(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> object:
    """Exactly one msgpack object filling ``data`` (a configuration or peers blob)."""
    end = scan_object(data, 0, max_size=max_size, max_elements=max_elements)
    if end < 0:
        raise DecodeError("truncated msgpack object")
    if end != len(data):
        raise DecodeError("trailing bytes after the msgpack object")
    return decode_object(data)


# ------------------------------------------------------------------------------ fields


def struct_fields(obj: object, what: str) -> dict[str, object]:
    """A decoded struct map as ``{field name: value}``; nil is the zero struct (empty)."""
    if obj is None:
        return {}
    if type(obj) is not dict:
        raise DecodeError(f"{what} must be a map, got {type(obj).__name__}")
    fields: dict[str, object] = {}
    for key, value in obj.items():
        if type(key) is not bytes:
            raise DecodeError(f"{what} has a key that is not a string")
        fields[key.decode("utf-8", TEXT_ERRORS)] = value
    return fields


def uint_field(fields: dict[str, object], name: str, bits: int = 64) -> int:
    """An unsigned Go field: nil or missing is 0, negatives and overflow are errors."""
    value = fields.get(name)
    if value is None:
        return 0
    if type(value) is not int:
        raise DecodeError(f"{name} must be an unsigned integer")
    if value < 0:
        raise DecodeError(f"Assigning negative signed value: {value}, to unsigned type")
    if value >> bits:
        raise DecodeError(f"Overflow uint value: {value}")
    return value


def int_field(fields: dict[str, object], name: str) -> int:
    """A signed Go ``int``/``int64`` field: nil or missing is 0."""
    value = fields.get(name)
    if value is None:
        return 0
    if type(value) is not int:
        raise DecodeError(f"{name} must be an integer")
    if not MIN_INT64 <= value <= MAX_INT64:
        raise DecodeError(f"Overflow int value: {value}")
    return value


def bool_field(fields: dict[str, object], name: str) -> bool:
    """A Go bool: go-msgpack also takes the integers 0 and 1."""
    value = fields.get(name)
    if value is None or value is False or (type(value) is int and value == 0):
        return False
    if value is True or (type(value) is int and value == 1):
        return True
    raise DecodeError(f"Invalid single-byte value for bool: {name}")


def bytes_field(fields: dict[str, object], name: str) -> bytes:
    """A Go ``[]byte`` or ``string`` (raw, str8 or bin): nil or missing is empty."""
    value = fields.get(name)
    if value is None:
        return b""
    if type(value) is not bytes:
        raise DecodeError(f"{name} must be a byte string")
    return value


def text(value: bytes) -> str:
    """Wire bytes of a Go string as ``str`` (bytes that are not UTF-8 survive, see
    :data:`~agentrpc.protocol.msgpack_wire.TEXT_ERRORS`)."""
    return value.decode("utf-8", TEXT_ERRORS)


def text_bytes(value: str) -> bytes:
    """The inverse of :func:`text`."""
    return value.encode("utf-8", TEXT_ERRORS)


def nil_if_empty(value: bytes) -> bytes | None:
    """A Go ``[]byte`` as Go code usually leaves it: nil (``0xc0``) when empty."""
    return value or None
