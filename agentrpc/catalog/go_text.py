"""Go's text rules that reach the wire through Consul's error messages and TTL strings.

- :func:`parse_duration` is ``time.ParseDuration`` (integer nanoseconds), with the error texts
  of the Go releases Consul 0.7 was built with (``time: invalid duration 1x``, no quotes);
- :func:`format_duration` is ``time.Duration.String`` (``10s``, ``24h0m0s``, ``1.5ms``);
- :func:`go_quote` is ``strconv.Quote`` (what ``%q`` and ``%#v`` print for a string).

Pure: no I/O.
"""

from __future__ import annotations

from typing import Final

from ..protocol.msgpack_wire import TEXT_ERRORS

__all__ = ["GoDurationError", "format_duration", "go_quote", "parse_duration"]

_MAX_INT64: Final = (1 << 63) - 1
_UNITS: Final = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


class GoDurationError(ValueError):
    """``time.ParseDuration`` refused the text; the message is Go's, byte for byte."""


def _leading_int(text: str, start: int) -> tuple[int, int] | None:
    """Go's ``leadingInt``: the value of the ASCII digits at ``start`` and the position after
    them; None on int64 overflow."""
    value = 0
    position = start
    while position < len(text) and "0" <= text[position] <= "9":
        if value > _MAX_INT64 // 10:
            return None
        value = value * 10 + ord(text[position]) - 48
        if value > _MAX_INT64:
            return None
        position += 1
    return value, position


def parse_duration(text: str) -> int:
    """Nanoseconds in a Go duration (``"15s"``, ``"1h30m"``, ``"-1.5ms"``, ``"0"``); raises
    :class:`GoDurationError` with Go's own message for anything else."""
    invalid = GoDurationError("time: invalid duration " + text)
    s = text
    negative = False
    if s and s[0] in "+-":
        negative = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise invalid
    total = 0
    position = 0
    while position < len(s):
        char = s[position]
        if not (char == "." or "0" <= char <= "9"):
            raise invalid
        leading = _leading_int(s, position)
        if leading is None:
            raise invalid
        whole, after = leading
        consumed_before = after != position
        position = after
        fraction = 0
        scale = 1.0
        consumed_after = False
        if position < len(s) and s[position] == ".":
            position += 1
            leading = _leading_int(s, position)
            if leading is None:
                raise invalid
            fraction, after = leading
            scale = 10.0 ** (after - position)
            consumed_after = after != position
            position = after
        if not consumed_before and not consumed_after:
            raise invalid
        unit_start = position
        while position < len(s) and not (s[position] == "." or "0" <= s[position] <= "9"):
            position += 1
        if position == unit_start:
            raise GoDurationError("time: missing unit in duration " + text)
        name = s[unit_start:position]
        unit = _UNITS.get(name)
        if unit is None:
            raise GoDurationError(f"time: unknown unit {name} in duration {text}")
        if whole > _MAX_INT64 // unit:
            raise invalid
        whole *= unit
        if fraction > 0:
            whole += int(float(fraction) * (float(unit) / scale))
            if whole > _MAX_INT64:
                raise invalid
        total += whole
        if total > _MAX_INT64:
            raise invalid
    return -total if negative else total


def _fraction(value: int, precision: int) -> tuple[str, int]:
    """Go's ``fmtFrac``: the fraction digits of ``value / 10**precision`` without trailing
    zeros (with the point; empty when the fraction is 0), and the integer part."""
    digits = ""
    printed = False
    for _ in range(precision):
        digit = value % 10
        printed = printed or digit != 0
        if printed:
            digits = str(digit) + digits
        value //= 10
    return ("." + digits if printed else ""), value


def format_duration(nanoseconds: int) -> str:
    """``time.Duration(nanoseconds).String()``."""
    negative = nanoseconds < 0
    u = -nanoseconds if negative else nanoseconds
    if u < 1_000_000_000:
        if u == 0:
            return "0s"
        if u < 1_000:
            text = f"{u}ns"
        elif u < 1_000_000:
            frac, whole = _fraction(u, 3)
            text = f"{whole}{frac}\u00b5s"
        else:
            frac, whole = _fraction(u, 6)
            text = f"{whole}{frac}ms"
    else:
        frac, whole = _fraction(u, 9)
        text = f"{whole % 60}{frac}s"
        whole //= 60
        if whole > 0:
            text = f"{whole % 60}m{text}"
            whole //= 60
            if whole > 0:
                text = f"{whole}h{text}"
    return "-" + text if negative else text


_ESCAPES: Final = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def go_quote(text: str) -> str:
    """``strconv.Quote(text)``: double quotes, Go escapes; a byte that was not UTF-8 on the
    wire (a lone surrogate, see :data:`~agentrpc.protocol.msgpack_wire.TEXT_ERRORS`) prints
    as ``\\xNN``."""
    out = ['"']
    for char in text:
        escaped = _ESCAPES.get(char)
        if escaped is not None:
            out.append(escaped)
            continue
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            raw = char.encode("utf-8", TEXT_ERRORS)
            out.append(f"\\x{raw[0]:02x}")
        elif char.isprintable() or char == " ":
            out.append(char)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)
