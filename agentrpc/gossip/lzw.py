"""LZW as Go's ``compress/lzw`` writes and reads it with LSB bit order and 8-bit literals.

This is the only compression memberlist knows (``compress{Algo: 0}``). Codes are 9 to 12 bits
wide, packed least significant bit first; code 256 clears the table and 257 ends the data.
The compressor makes the same choices as Go's writer (a clear code first, as GIF asks of
encoders, and another whenever the next code would be 4095), so its output is byte-for-byte
Go's; the tests check that against LZW captured from a real serf agent. The decompressor
follows Go's reader, including the deferred clear: once the table is full it keeps decoding
12-bit codes without adding entries until a clear code arrives.
"""

from __future__ import annotations

import itertools
from typing import overload

from agentrpc.gossip.messages import GossipDecodeError

__all__ = ["LzwDecodeError", "LzwOutputTooLarge", "compress", "decompress"]

_LITERAL_WIDTH = 8
_CLEAR_CODE = 1 << _LITERAL_WIDTH  # 256
_EOF_CODE = _CLEAR_CODE + 1  # 257
_FIRST_WIDTH = _LITERAL_WIDTH + 1  # 9 bits
_MAX_WIDTH = 12
_MAX_CODE = (1 << _MAX_WIDTH) - 1  # 4095: the writer clears when it would hand this out
_END = (-1,)


class LzwDecodeError(GossipDecodeError):
    """The compressed data is corrupt (invalid code) or ends before the EOF code."""


class LzwOutputTooLarge(LzwDecodeError):
    """The data decompresses to more than the allowed size."""


@overload
def compress(data: bytes | bytearray | memoryview) -> bytes: ...
@overload
def compress(data: bytes | bytearray | memoryview, give_up_at: int) -> bytes | None: ...


def compress(data: bytes | bytearray | memoryview, give_up_at: int | None = None) -> bytes | None:
    """Compress ``data`` exactly as Go's ``lzw.NewWriter(w, lzw.LSB, 8)`` does.

    With ``give_up_at``, None as soon as the output is sure to be at least that many bytes
    (a caller that keeps only a smaller result need not finish): after each code written,
    the code pending and the end code still to come add at least 18 bits, three bytes.
    """
    out = bytearray()
    give_up = (1 << 62) if give_up_at is None else give_up_at - 3
    # Go writes a clear code before anything else (also for empty input).
    bits = _CLEAR_CODE
    n_bits = _FIRST_WIDTH
    width = _FIRST_WIDTH
    view = memoryview(data).cast("B")
    if len(view):
        table: dict[int, int] = {}
        table_get = table.get
        hi = _EOF_CODE
        overflow = 1 << _FIRST_WIDTH
        code = view[0]
        # A last "literal" of -1 misses the table (``x | -1 == -1``) and so emits the
        # pending code through the same steps as every other; then the loop ends.
        for literal in itertools.chain(view[1:], _END):
            key = (code << 8) | literal
            found = table_get(key)
            if found is not None:
                code = found
                continue
            bits |= code << n_bits
            n_bits += width
            code = literal
            hi += 1
            if hi == overflow:
                width += 1
                overflow <<= 1
            if hi == _MAX_CODE:
                # The table is full: a clear code (at the new width) and a fresh table.
                bits |= _CLEAR_CODE << n_bits
                n_bits += width
                width = _FIRST_WIDTH
                hi = _EOF_CODE
                overflow = 1 << _FIRST_WIDTH
                table.clear()
            else:
                table[key] = hi
            # One flush for the code and a clear code after it: ``bits`` is unbounded.
            while n_bits >= 8:
                out.append(bits & 0xFF)
                bits >>= 8
                n_bits -= 8
            if literal < 0:
                break
            if len(out) >= give_up:
                return None
    bits |= _EOF_CODE << n_bits
    n_bits += width
    while n_bits > 0:
        out.append(bits & 0xFF)
        bits >>= 8
        n_bits -= 8
    return bytes(out)


def decompress(data: bytes | bytearray | memoryview, max_size: int) -> bytes:
    """Decompress Go LZW data; raise if it is corrupt or would exceed ``max_size`` bytes.

    Output of exactly ``max_size`` bytes is allowed (memberlist's ``CopyN(max+1)`` check).
    Bytes after the EOF code are ignored, as Go's reader does.
    """
    src = bytes(data)
    src_len = len(src)
    pos = 0
    bits = 0
    n_bits = 0
    width = _FIRST_WIDTH
    mask = (1 << width) - 1
    hi = _EOF_CODE
    overflow = 1 << _FIRST_WIDTH
    # table[code] is the expansion of code; 256/257 are placeholders never read.
    base: list[bytes] = [bytes((i,)) for i in range(_CLEAR_CODE)] + [b"", b""]
    table = list(base)
    append = table.append
    last: bytes | None = None  # expansion of the previous code, None when invalid
    out = bytearray()
    while True:
        if n_bits < width:
            # A code is at most 12 bits and fewer than `width` are buffered: two bytes suffice.
            if pos + 1 < src_len:
                bits |= (src[pos] | (src[pos + 1] << 8)) << n_bits
                pos += 2
                n_bits += 16
            else:
                while n_bits < width:
                    if pos >= src_len:
                        raise LzwDecodeError("LZW data ended before the EOF code")
                    bits |= src[pos] << n_bits
                    pos += 1
                    n_bits += 8
        code = bits & mask
        bits >>= width
        n_bits -= width

        if code < _CLEAR_CODE:
            entry = table[code]
        elif code == _CLEAR_CODE:
            width = _FIRST_WIDTH
            mask = (1 << width) - 1
            hi = _EOF_CODE
            overflow = 1 << _FIRST_WIDTH
            last = None
            del table[_EOF_CODE + 1 :]
            continue
        elif code == _EOF_CODE:
            return bytes(out)
        elif code < hi:
            entry = table[code]
        elif code == hi:
            if last is not None:
                entry = last + last[:1]
            elif code < len(table):
                entry = table[code]
            else:
                raise LzwDecodeError(f"invalid LZW code {code}")
        else:
            raise LzwDecodeError(f"invalid LZW code {code} (highest defined is {hi})")

        if last is not None:
            append(last + entry[:1])
        out += entry
        if len(out) > max_size:
            raise LzwOutputTooLarge(f"LZW data decompresses to more than {max_size} bytes")

        last = entry
        hi += 1
        if hi >= overflow:
            if width == _MAX_WIDTH:
                # Table full: keep reading 12-bit codes, add nothing until a clear code.
                last = None
                hi -= 1
            else:
                width += 1
                mask = (1 << width) - 1
                overflow <<= 1
