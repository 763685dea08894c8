"""The HTTP API's routing (Go's ``http.ServeMux`` rules) and its one entry point,
:func:`build_http_server`.

A pattern ending in ``/`` serves its whole subtree, any other pattern exactly its path; the
longest pattern that matches wins. ``/`` alone answers ``Consul Agent``; any other unknown path
is 404 ``404 page not found``. A route that serves only some methods answers others 405 with
an empty body. Wiring, in the agent::

    http = build_http_server(config.http_addr, agent, hub.logger("agent.http"))
    address = await nursery.start(http.run)
    ...
    http.shutdown()
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from ..log_protocol import LogLike
from ..transports import DEFAULT_NETWORK, Address, MemoryNetwork
from . import (
    agent_endpoints,
    catalog_endpoints,
    kv_endpoints,
    operator_endpoints,
    session_endpoints,
)
from .constants import CONSUL_INDEX_PAGE, ERR_BODY_TOO_LARGE, ERR_NOT_FOUND, ERR_VALUE_TOO_LARGE
from .context import APIContext, Route
from .host import HTTPAgent
from .messages import Request, Response, text_response
from .server import HTTPLimits, HTTPServer

__all__ = ["ConsulHTTPAPI", "ROUTES", "build_http_server"]

ROUTES: Final[Mapping[str, Route]] = {
    **kv_endpoints.ROUTES,
    **catalog_endpoints.ROUTES,
    **session_endpoints.ROUTES,
    **agent_endpoints.ROUTES,
    **operator_endpoints.ROUTES,
}


def _body_too_large(path: str) -> str:
    return ERR_VALUE_TOO_LARGE if path.startswith(kv_endpoints.PREFIX) else ERR_BODY_TOO_LARGE


class ConsulHTTPAPI:
    """Request in, response out: the route's endpoint over the agent."""

    def __init__(self, agent: HTTPAgent, logger: LogLike, routes: Mapping[str, Route] = ROUTES):
        self.context = APIContext(agent, logger)
        self._exact = {p: r for p, r in routes.items() if not p.endswith("/")}
        self._subtrees = sorted(
            ((p, r) for p, r in routes.items() if p.endswith("/")), key=lambda pr: -len(pr[0])
        )

    def route(self, path: str) -> Route | None:
        found = self._exact.get(path)
        if found is not None:
            return found
        for prefix, route in self._subtrees:
            if path.startswith(prefix):
                return route
        return None

    async def __call__(self, request: Request) -> Response:
        route = self.route(request.path)
        if route is None:
            if request.path == "/":
                return text_response(200, CONSUL_INDEX_PAGE)
            return text_response(404, ERR_NOT_FOUND + "\n")
        if route.methods is not None and request.method not in route.methods:
            return Response(405)
        return await route.endpoint(self.context, request)


def build_http_server(
    bind: str | Address,
    agent: HTTPAgent,
    logger: LogLike,
    limits: HTTPLimits | None = None,
    *,
    network: MemoryNetwork = DEFAULT_NETWORK,
) -> HTTPServer:
    """The agent's HTTP API server (not yet listening: run it in a nursery)."""
    if limits is None:
        limits = HTTPLimits(body_too_large=_body_too_large)
    return HTTPServer(bind, ConsulHTTPAPI(agent, logger), logger, limits, network=network)
