"""JSON as Consul's Go agent reads and writes it, sans-I/O.

Writing (:func:`dumps`) follows ``encoding/json``: compact, keys in the order given (the Go
struct's field order, which the shapes in :mod:`.shapes` keep), ``<``, ``>``, ``&``, U+2028
and U+2029 escaped, non-ASCII text as UTF-8, a byte that was not UTF-8 on the wire (a lone
surrogate of ``surrogateescape``) as U+FFFD. ``pretty`` is ``json.MarshalIndent`` with four
spaces and a final newline (``?pretty``).

Reading (:func:`loads`, :func:`get`) follows ``mapstructure`` over ``encoding/json``: a field
matches its key exactly or, failing that, case-insensitively (``name``, ``Name``, ``NAME``).
The helpers coerce the way ``mapstructure`` does for the types the endpoints take and raise
:class:`BodyError` naming the field otherwise.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "BodyError",
    "as_object",
    "b64",
    "dumps",
    "get",
    "get_bool",
    "get_int",
    "get_map",
    "get_str",
    "get_str_list",
    "get_str_map",
    "has",
    "loads",
]

_ESCAPES: Final = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


class BodyError(ValueError):
    """A request body the reference would refuse to decode (the text says why)."""


def _to_bytes(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape")
        return raw.decode("utf-8", "replace").encode("utf-8")


def dumps(value: Any, *, pretty: bool = False) -> bytes:
    """``json.Marshal`` (``json.MarshalIndent`` plus a newline with ``pretty``)."""
    if pretty:
        text = json.dumps(value, ensure_ascii=False, indent=4) + "\n"
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return _to_bytes(text.translate(_ESCAPES))


def b64(value: bytes | None) -> str | None:
    """A Go ``[]byte`` in JSON: standard base64, ``null`` for nil."""
    return None if value is None else base64.b64encode(value).decode("ascii")


def loads(body: bytes) -> Any:
    """The JSON document in ``body``; :class:`BodyError` for anything else."""
    try:
        return json.loads(body.decode("utf-8", "surrogateescape"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BodyError(str(exc)) from None


def get(obj: Mapping[str, Any], name: str) -> Any:
    """``obj[name]``, else the value of the first key equal to ``name`` ignoring case; None
    when absent."""
    if name in obj:
        return obj[name]
    folded = name.casefold()
    for key, value in obj.items():
        if isinstance(key, str) and key.casefold() == folded:
            return value
    return None


def has(obj: Mapping[str, Any], name: str) -> bool:
    """Whether ``obj`` has ``name`` (ignoring case)."""
    if name in obj:
        return True
    folded = name.casefold()
    return any(isinstance(key, str) and key.casefold() == folded for key in obj)


def _fail(name: str, expected: str, value: object) -> BodyError:
    return BodyError(
        f"1 error(s) decoding:\n\n* '{name}' expected type '{expected}', "
        f"got unconvertible type '{type(value).__name__}'"
    )


def get_str(obj: Mapping[str, Any], name: str) -> str:
    value = get(obj, name)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise _fail(name, "string", value)


def get_int(obj: Mapping[str, Any], name: str) -> int:
    value = get(obj, name)
    if value is None:
        return 0
    if isinstance(value, bool):
        raise _fail(name, "int", value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _fail(name, "int", value)


def get_bool(obj: Mapping[str, Any], name: str) -> bool:
    value = get(obj, name)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    raise _fail(name, "bool", value)


def get_str_list(obj: Mapping[str, Any], name: str) -> list[str] | None:
    value = get(obj, name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _fail(name, "[]string", value)
    return list(value)


def get_map(obj: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = get(obj, name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _fail(name, "map", value)
    return value


def get_str_map(obj: Mapping[str, Any], name: str) -> dict[str, str] | None:
    value = get_map(obj, name)
    if value is None:
        return None
    if not all(isinstance(v, str) for v in value.values()):
        raise _fail(name, "map[string]string", value)
    return {str(k): v for k, v in value.items()}


def as_object(value: Any, what: str) -> dict[str, Any]:
    """A JSON object (null is the empty one); :class:`BodyError` otherwise."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BodyError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value
