"""The msgpack plumbing that every codec shares (pure: no I/O, no trio).

Both stream codecs (the agent RPC in :mod:`agentrpc.protocol.codec` and the server port's
net/rpc in :mod:`agentrpc.serverport.rpc_codec`) and the gossip messages read msgpack the way
Go's agents write it. The rules live here once:

- **Strings are bytes on the Go side.** A str is read with ``surrogateescape``
  (:data:`TEXT_ERRORS`), so bytes that are not UTF-8 survive as lone surrogates and are packed
  back to the very same bytes; :func:`as_text` turns a wire string (str or bin) into ``str``,
  :func:`text_bytes` goes back.
- **Limits before allocation.** :func:`bounded_unpacker` caps msgpack's buffer at one object
  plus one read and every declared length at one object, so a peer that declares a 100 MB
  string or a billion-element array is refused before anything is allocated.
- **Errors by type.** :func:`next_object` returns the next whole object or :data:`NEED_DATA`,
  and turns msgpack's failures into :class:`ObjectTooLarge` (a declared length or the buffer
  over the limit) or :class:`Undecodable` (anything else a hostile peer can send), so callers
  never match msgpack's error texts. Map keys are not restricted by msgpack (callers validate
  the fields they read) and ext types are refused by their length limit (0: no Go agent sends
  them, and msgpack would otherwise parse timestamps and raise its own ``ValueError``), so the
  only plain ``ValueError`` msgpack raises here is a length over its limit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeGuard

import msgpack

TEXT_ERRORS: Final = "surrogateescape"
"""How wire strings map to ``str``: bytes that are not UTF-8 become lone surrogates
(U+DC80..U+DCFF) and are encoded back to the very same bytes."""

READ_SIZE: Final = 64 * 1024
"""How much an engine reads at once; an unpacker's buffer allows one object plus this."""

MAX_UINT64: Final = (1 << 64) - 1


class ObjectTooLarge(Exception):
    """An object (or what the buffer holds) is over the size limit."""


class Undecodable(Exception):
    """Bytes that are not msgpack, or msgpack nested too deep or otherwise unusable."""


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""Returned by :func:`next_object` when the buffer holds no whole object."""


def as_text(value: object) -> str | None:
    """A wire string as ``str``: a str as is, bytes (bin, or a raw str decoded without
    conversion) from UTF-8 with :data:`TEXT_ERRORS`; ``None`` for any other type.

    The one "str or bytes -> str" rule of every decoder (agent RPC, server port, gossip)."""
    if type(value) is str:
        return value
    if type(value) is bytes:
        return value.decode("utf-8", TEXT_ERRORS)
    return None


def text_bytes(text: str) -> bytes:
    """The bytes a ``str`` stands for on the wire (the inverse of :func:`as_text`)."""
    return text.encode("utf-8", TEXT_ERRORS)


def is_uint64(value: object) -> TypeGuard[int]:
    """True for an ``int`` in Go's uint64 range (a Seq, say)."""
    return type(value) is int and 0 <= value <= MAX_UINT64


def new_packer() -> Callable[[Any], bytes]:
    """A msgpack packer (new spec: str and bin) with a small initial buffer.

    msgpack's default buffer is 256 KiB per packer; one per connection would make idle
    connections expensive. The buffer grows when a large body is packed.

    A str holding surrogates (a name that was not UTF-8 on the wire) is packed back to its
    original bytes. msgpack's strict packer is tried first: a packer given ``unicode_errors``
    copies every str through an encode call and is about twice as slow, so only a value that
    needs it (strict packing raised, which leaves the packer reset) pays for that."""
    fast: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True, buf_size=1024).pack

    def pack(obj: Any) -> bytes:
        try:
            return fast(obj)
        except UnicodeEncodeError:
            escaping = msgpack.Packer(use_bin_type=True, buf_size=1024, unicode_errors=TEXT_ERRORS)
            packed: bytes = escaping.pack(obj)
            return packed

    return pack


def bounded_unpacker(max_object_size: int, *, read_size: int = 4096) -> Any:
    """A streaming unpacker for objects of at most ``max_object_size`` bytes.

    ``read_size`` is what msgpack allocates up front (its default is 1 MiB; an idle connection
    should cost little, and the buffer grows when a large object arrives)."""
    return msgpack.Unpacker(
        raw=False,
        unicode_errors=TEXT_ERRORS,
        strict_map_key=False,
        read_size=read_size,
        max_buffer_size=max_object_size + READ_SIZE,
        max_str_len=max_object_size,
        max_bin_len=max_object_size,
        max_array_len=max_object_size,
        max_map_len=max_object_size // 2,
        max_ext_len=0,
    )


def feed(unpacker: Any, data: bytes | bytearray | memoryview) -> None:
    """Append bytes; :class:`ObjectTooLarge` when the buffer would pass its limit."""
    try:
        unpacker.feed(data)
    except msgpack.exceptions.BufferFull:
        raise ObjectTooLarge("the buffer is full") from None


WIRE_ERRORS: Final = (ValueError, TypeError, msgpack.exceptions.UnpackException)
"""What msgpack raises while unpacking (for a loop that iterates an unpacker itself: pass the
exception to :func:`wire_error`)."""


def wire_error(exc: Exception) -> ObjectTooLarge | Undecodable:
    """One of :data:`WIRE_ERRORS` as :class:`ObjectTooLarge` or :class:`Undecodable` (with
    msgpack's own words as the message)."""
    if type(exc) is ValueError:  # only a declared length over its limit, see above
        return ObjectTooLarge(str(exc))
    return Undecodable(str(exc))


def next_object(unpacker: Any) -> object:
    """The next whole object, or :data:`NEED_DATA`; raises :class:`ObjectTooLarge` or
    :class:`Undecodable` (with msgpack's own words as the message)."""
    try:
        return next(unpacker)
    except StopIteration:
        return NEED_DATA
    except WIRE_ERRORS as exc:
        raise wire_error(exc) from None
