"""``/v1/session/*`` (Consul 0.7's ``session_endpoint.go``): create, destroy, renew (PUT
only), info, list and node (queries).

A create without a body makes a session on this agent's node with the ``serfHealth`` check
and the lock-delay of 15 s; a body may set ``Name``, ``Node``, ``Checks`` (an explicit ``[]``
means none), ``LockDelay`` (a Go duration as text, else a number of nanoseconds, below 1000
taken as seconds: ``FixupLockDelay``), ``Behavior`` and ``TTL``. Errors are the catalog's
texts (``Invalid Session TTL '<ns>', must be between [10s=24h0m0s]`` among them, 500). A renew
of an unknown session is 404 ``Session id '<id>' not found``.
"""

from __future__ import annotations

from typing import Any, Final

from ..catalog.constants import (
    SECOND_NS,
    SERF_CHECK_ID,
    SESSION_CREATE,
    SESSION_DESTROY,
    SESSION_RELEASE,
)
from ..catalog.go_text import GoDurationError, parse_duration
from ..catalog.structs import Session, SessionRequest
from . import go_json, shapes
from .constants import (
    ERR_DECODE_FAILED,
    ERR_MISSING_NODE_NAME,
    ERR_MISSING_SESSION,
    ERR_SESSION_NOT_FOUND,
)
from .context import APIContext, Route
from .go_json import BodyError
from .messages import HTTPError, Request, Response, json_response

__all__ = ["ROUTES", "session_from_body"]

DEFAULT_LOCK_DELAY_NS: Final = 15 * SECOND_NS
"""The lock-delay of a session whose create does not set one."""
LOCK_DELAY_MIN_THRESHOLD: Final = 1000
"""``lockDelayMinThreshold``: a numeric LockDelay below this is seconds, not nanoseconds."""


def _lock_delay(value: Any) -> int:
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except GoDurationError as exc:
            raise BodyError(str(exc)) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BodyError("'LockDelay' expected a duration")
    if value < LOCK_DELAY_MIN_THRESHOLD:
        return int(value * SECOND_NS)
    return int(value)


def session_from_body(body: bytes, node: str) -> Session:
    """The session a create asks for (the reference's defaults for what the body omits)."""
    session = Session(
        id="",
        node=node,
        checks=(SERF_CHECK_ID,),
        lock_delay=DEFAULT_LOCK_DELAY_NS,
        behavior=SESSION_RELEASE,
    )
    if not body:
        return session
    try:
        obj = go_json.as_object(go_json.loads(body), "session")
        checks = go_json.get_str_list(obj, "Checks") if go_json.has(obj, "Checks") else None
        delay = go_json.get(obj, "LockDelay")
        ttl = go_json.get(obj, "TTL")
        if ttl is not None and not isinstance(ttl, str):
            raise BodyError("'TTL' expected type 'string'")
        return Session(
            id="",
            name=go_json.get_str(obj, "Name"),
            node=go_json.get_str(obj, "Node") or node,
            checks=session.checks
            if not go_json.has(obj, "Checks")
            else (tuple(checks) if checks is not None else None),
            lock_delay=session.lock_delay if delay is None else _lock_delay(delay),
            behavior=go_json.get_str(obj, "Behavior") or session.behavior,
            ttl=ttl or "",
        )
    except BodyError as exc:
        raise HTTPError(400, ERR_DECODE_FAILED + str(exc)) from None


async def session_create(api: APIContext, request: Request) -> Response:
    session = session_from_body(request.body, api.node_name)
    apply = SessionRequest(SESSION_CREATE, session, api.dc(request), api.token(request))
    out = await api.rpc("Session.Apply", apply.to_wire())
    return json_response({"ID": out if isinstance(out, str) else ""}, request)


async def session_destroy(api: APIContext, request: Request) -> Response:
    session_id = request.tail("/v1/session/destroy/")
    if not session_id:
        raise HTTPError(400, ERR_MISSING_SESSION)
    apply = SessionRequest(
        SESSION_DESTROY, Session(id=session_id), api.dc(request), api.token(request)
    )
    await api.rpc("Session.Apply", apply.to_wire())
    return json_response(True, request)


async def session_renew(api: APIContext, request: Request) -> Response:
    session_id = api.required_tail(request, "/v1/session/renew/", ERR_MISSING_SESSION)
    reply, headers = await api.read(request, "Session.Renew", {"Session": session_id})
    sessions = reply.get("Sessions") or []
    if not sessions:
        return Response(404, headers, ERR_SESSION_NOT_FOUND.format(session_id).encode())
    return json_response([shapes.session(s) for s in sessions], request, headers=headers)


async def _sessions(
    api: APIContext, request: Request, method: str, fields: dict[str, Any]
) -> Response:
    reply, headers = await api.read(request, method, fields)
    sessions = [shapes.session(s) for s in reply.get("Sessions") or ()]
    return json_response(sessions, request, headers=headers)


async def session_info(api: APIContext, request: Request) -> Response:
    session_id = api.required_tail(request, "/v1/session/info/", ERR_MISSING_SESSION)
    return await _sessions(api, request, "Session.Get", {"Session": session_id})


async def session_list(api: APIContext, request: Request) -> Response:
    return await _sessions(api, request, "Session.List", {})


async def session_node(api: APIContext, request: Request) -> Response:
    node = api.required_tail(request, "/v1/session/node/", ERR_MISSING_NODE_NAME)
    return await _sessions(api, request, "Session.NodeSessions", {"Node": node})


_PUT = frozenset({"PUT"})

ROUTES = {
    "/v1/session/create": Route(session_create, _PUT),
    "/v1/session/destroy/": Route(session_destroy, _PUT),
    "/v1/session/renew/": Route(session_renew, _PUT),
    "/v1/session/info/": Route(session_info),
    "/v1/session/node/": Route(session_node),
    "/v1/session/list": Route(session_list),
}
