"""A request as the endpoints see it and the response they give, plus the query-string rules
every endpoint shares (``parse``, ``parseWait``, ``parseConsistency``, ``parseDC``,
``parseToken`` and ``setMeta`` of Consul's ``command/agent/http.go``), sans-I/O.

Texts and codes are the reference's: ``?wait`` is a Go duration (decimals allowed) else 400
``Invalid wait time``, ``?index`` an unsigned integer else 400 ``Invalid index``, ``?stale``
with ``?consistent`` 400; only the presence of ``stale``, ``consistent``, ``recurse``,
``keys``, ``raw`` and the like matters, never their values. The token is ``?token=``, else the
``X-Consul-Token`` header, else the agent's default token.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from ..catalog.go_text import GoDurationError, parse_duration
from ..catalog.structs import QueryMeta, QueryOptions
from ..protocol.msgpack_wire import MAX_UINT64 as _MAX_UINT64
from . import go_json
from .constants import (
    CONTENT_JSON,
    CONTENT_TEXT,
    ERR_INVALID_INDEX,
    ERR_INVALID_WAIT,
    ERR_STALE_CONSISTENT,
    HEADER_INDEX,
    HEADER_KNOWN_LEADER,
    HEADER_LAST_CONTACT,
    HEADER_TOKEN,
)

__all__ = [
    "ChunkSink",
    "HTTPError",
    "Query",
    "Request",
    "Response",
    "Stream",
    "empty_response",
    "json_response",
    "meta_headers",
    "meta_of",
    "parse_query",
    "parse_uint",
    "query_options",
    "text_response",
]

Query = dict[str, list[str]]
"""Go's ``url.Values``: every value of every key, in order."""


class ChunkSink:
    """Where a streaming response writes its chunks (the server implements :meth:`send`)."""

    async def send(self, data: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError


Stream = Callable[[ChunkSink], Awaitable[None]]
"""A streaming body: writes chunks to the sink until done (or cancelled)."""


class HTTPError(Exception):
    """An endpoint's refusal: ``status`` and the plain-text body, as the reference writes it."""

    def __init__(self, status: int, text: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or []


@dataclass(slots=True)
class Request:
    method: str
    path: str
    """The decoded path (Go's ``URL.Path``)."""
    query: Query
    headers: dict[str, str]
    """Header names lower-cased; the last value of a repeated header."""
    body: bytes = b""
    remote: str = ""
    raw_target: str = ""

    def has(self, name: str) -> bool:
        """Whether the query string has ``name`` (with any value, even empty)."""
        return name in self.query

    def get(self, name: str) -> str:
        """The first value of ``name`` in the query string ("" when absent)."""
        values = self.query.get(name)
        return values[0] if values else ""

    def all(self, name: str) -> list[str]:
        return list(self.query.get(name, ()))

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    def tail(self, prefix: str) -> str:
        """The path after ``prefix`` (the route's argument: a node, a key, an ID)."""
        return self.path[len(prefix) :]

    def token(self, default: str) -> str:
        """``?token=``, else ``X-Consul-Token``, else ``default`` (``parseToken``)."""
        return self.get("token") or self.header(HEADER_TOKEN) or default

    def dc(self, default: str) -> str:
        """``?dc=``, else the agent's datacenter (``parseDC``)."""
        return self.get("dc") or default

    @property
    def pretty(self) -> bool:
        return "pretty" in self.query


@dataclass(slots=True)
class Response:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: Stream | None = None
    """A streaming body (chunked), instead of ``body``."""

    def set_header(self, name: str, value: str) -> None:
        lowered = name.lower()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != lowered]
        self.headers.append((name, value))


def parse_query(raw: str) -> Query:
    """``url.ParseQuery``: ``&``-separated, ``+`` and ``%XX`` decoded (bytes that are not
    UTF-8 kept as lone surrogates), blank values kept."""
    query: Query = {}
    for pair in raw.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        key = urllib.parse.unquote_plus(key, errors="surrogateescape")
        value = urllib.parse.unquote_plus(value, errors="surrogateescape")
        query.setdefault(key, []).append(value)
    return query


def _parse_uint(text: str) -> int | None:
    """``strconv.ParseUint(text, 10, 64)``."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= _MAX_UINT64 else None


def query_options(request: Request, default_token: str) -> QueryOptions:
    """``parse``: the token, ``?stale``/``?consistent``, ``?wait``/``?index``, or the
    reference's 400."""
    stale = request.has("stale")
    consistent = request.has("consistent")
    if stale and consistent:
        raise HTTPError(400, ERR_STALE_CONSISTENT)
    max_query_time = 0
    wait = request.get("wait")
    if wait:
        try:
            max_query_time = parse_duration(wait)
        except GoDurationError:
            raise HTTPError(400, ERR_INVALID_WAIT) from None
    min_index = 0
    index = request.get("index")
    if index:
        parsed = _parse_uint(index)
        if parsed is None:
            raise HTTPError(400, ERR_INVALID_INDEX)
        min_index = parsed
    return QueryOptions(
        token=request.token(default_token),
        min_query_index=min_index,
        max_query_time=max_query_time,
        allow_stale=stale,
        require_consistent=consistent,
    )


def parse_uint(text: str) -> int | None:
    """An unsigned 64-bit decimal (``cas``, ``flags``), None when it is not one."""
    return _parse_uint(text)


def meta_of(reply: Any) -> QueryMeta:
    """The QueryMeta inlined in an ``Indexed*`` reply (zero when the reply is no map)."""
    if not isinstance(reply, dict):
        return QueryMeta()
    return QueryMeta.from_map(reply)


def meta_headers(meta: QueryMeta) -> list[tuple[str, str]]:
    """``setMeta``: the index (never 0: a client looping on ``?index=0`` would never block, so
    0 is sent as 1, as modern Consul does), last contact (ms, never negative) and known-leader
    headers."""
    last_contact_ms = max(0, meta.last_contact) // 1_000_000
    return [
        (HEADER_INDEX, str(meta.index or 1)),
        (HEADER_LAST_CONTACT, str(last_contact_ms)),
        (HEADER_KNOWN_LEADER, "true" if meta.known_leader else "false"),
    ]


_JSON_HEADERS: Final = (("Content-Type", CONTENT_JSON),)


def json_response(
    value: Any,
    request: Request | None = None,
    *,
    status: int = 200,
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    """A JSON body (``?pretty`` honoured) with ``Content-Type: application/json``."""
    pretty = request is not None and request.pretty
    all_headers = [*(headers or ()), *_JSON_HEADERS]
    return Response(status, all_headers, go_json.dumps(value, pretty=pretty))


def text_response(
    status: int, text: str | bytes, headers: list[tuple[str, str]] | None = None
) -> Response:
    """A plain-text body (what Go's ``resp.Write`` of a string sniffs to)."""
    body = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    all_headers = list(headers or ())
    if body:
        all_headers.append(("Content-Type", CONTENT_TEXT))
    return Response(status, all_headers, body)


def empty_response(headers: list[tuple[str, str]] | None = None, status: int = 200) -> Response:
    """A handler that returned nil: 200 with an empty body."""
    return Response(status, list(headers or ()), b"")
