"""``/v1/kv/<key>`` (Consul 0.7's ``kvs_endpoint.go``): GET (``recurse``, ``keys``,
``separator``, ``raw``), PUT (``cas``, ``flags``, ``acquire``, ``release``), DELETE
(``recurse``, ``cas``), with the reference's codes and texts.

Every GET answer carries the query headers, a 404 included; a 404 has an empty body. ``?keys``
under the empty prefix answers ``[]`` rather than 404. A PUT answers ``true`` for a plain set
and the operation's own answer for ``cas``/``acquire``/``release``; a DELETE ``true``, or the
answer of a ``cas`` delete.
"""

from __future__ import annotations

import urllib.parse

from ..catalog.constants import (
    KVS_CAS,
    KVS_DELETE,
    KVS_DELETE_CAS,
    KVS_DELETE_TREE,
    KVS_LOCK,
    KVS_SET,
    KVS_UNLOCK,
)
from ..catalog.structs import DirEntry, KVSRequest
from . import shapes
from .constants import CONTENT_TEXT, ERR_CONFLICTING_FLAGS, ERR_MISSING_KEY
from .context import APIContext, Route
from .messages import HTTPError, Query, Request, Response, json_response, parse_uint

__all__ = ["ROUTES", "encode_query"]

PREFIX = "/v1/kv/"


def encode_query(query: Query) -> str:
    """Go's ``url.Values.Encode``: keys sorted, each value ``key=value``, escaped."""
    parts = []
    for key in sorted(query):
        quoted = urllib.parse.quote_plus(key, errors="surrogateescape")
        for value in query[key]:
            parts.append(f"{quoted}={urllib.parse.quote_plus(value, errors='surrogateescape')}")
    return "&".join(parts)


def _conflicting(request: Request, *flags: str) -> None:
    if sum(1 for flag in flags if request.has(flag)) > 1:
        raise HTTPError(400, ERR_CONFLICTING_FLAGS + encode_query(request.query))


def _uint(request: Request, name: str) -> int:
    text = request.get(name)
    value = parse_uint(text)
    if value is None:
        raise HTTPError(500, f'strconv.ParseUint: parsing "{text}": invalid syntax')
    return value


async def kv(api: APIContext, request: Request) -> Response:
    key = request.tail(PREFIX)
    if request.method == "GET":
        if request.has("keys"):
            return await _get_keys(api, request, key)
        return await _get(api, request, key)
    if request.method == "PUT":
        return await _put(api, request, key)
    if request.method == "DELETE":
        return await _delete(api, request, key)
    return Response(405)


async def _get(api: APIContext, request: Request, key: str) -> Response:
    recurse = request.has("recurse")
    api.options(request)  # the 400s come before the missing key, as in the reference
    if not recurse and not key:
        raise HTTPError(400, ERR_MISSING_KEY)
    method = "KVS.List" if recurse else "KVS.Get"
    reply, headers = await api.read(request, method, {"Key": key})
    entries = reply.get("Entries") or []
    if not entries:
        return Response(404, headers)
    if request.has("raw") and not recurse:
        raw = _raw_value(entries[0])
        content = CONTENT_TEXT if _is_text(raw) else "application/octet-stream"
        return Response(200, [*headers, ("Content-Type", content)], raw)
    return json_response([shapes.dir_entry(e) for e in entries], request, headers=headers)


def _raw_value(entry: dict[str, object]) -> bytes:
    value = entry.get("Value")
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return bytes(value) if isinstance(value, bytes | bytearray) else b""


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def _get_keys(api: APIContext, request: Request, key: str) -> Response:
    separator = request.get("seperator") if request.has("seperator") else ""
    if request.has("separator"):
        separator = request.get("separator")
    reply, headers = await api.read(
        request, "KVS.ListKeys", {"Prefix": key, "Seperator": separator}
    )
    keys = reply.get("Keys") or []
    if not keys and key:
        return Response(404, headers)
    return json_response(list(keys), request, headers=headers)


async def _put(api: APIContext, request: Request, key: str) -> Response:
    if not key:
        raise HTTPError(400, ERR_MISSING_KEY)
    _conflicting(request, "cas", "acquire", "release")
    op = KVS_SET
    flags = _uint(request, "flags") if request.has("flags") else 0
    modify_index = 0
    session = ""
    if request.has("cas"):
        modify_index = _uint(request, "cas")
        op = KVS_CAS
    if request.has("acquire"):
        session = request.get("acquire")
        op = KVS_LOCK
    if request.has("release"):
        session = request.get("release")
        op = KVS_UNLOCK
    # An empty body is a nil value (Go's empty bytes.Buffer), written back as null.
    value = request.body or None
    entry = DirEntry(key, value, flags=flags, session=session, modify_index=modify_index)
    apply = KVSRequest(op, entry, api.dc(request), api.token(request))
    out = await api.rpc("KVS.Apply", apply.to_wire())
    return json_response(True if op == KVS_SET else bool(out), request)


async def _delete(api: APIContext, request: Request, key: str) -> Response:
    _conflicting(request, "recurse", "cas")
    op = KVS_DELETE
    if request.has("recurse"):
        op = KVS_DELETE_TREE
    elif not key:
        raise HTTPError(400, ERR_MISSING_KEY)
    modify_index = 0
    if request.has("cas"):
        modify_index = _uint(request, "cas")
        op = KVS_DELETE_CAS
    entry = DirEntry(key, modify_index=modify_index)
    apply = KVSRequest(op, entry, api.dc(request), api.token(request))
    out = await api.rpc("KVS.Apply", apply.to_wire())
    return json_response(bool(out) if op == KVS_DELETE_CAS else True, request)


ROUTES = {PREFIX: Route(kv)}
