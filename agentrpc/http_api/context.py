"""What every endpoint handler shares: the agent, the RPC call with the reference's error
mapping, and the read path (query options in, ``setMeta`` headers out).

An RPC error is a 500 with the endpoint's text, or a 403 when it says ``Permission denied`` or
``ACL not found`` (as ``wrap`` in ``command/agent/http.go`` decides).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..catalog.structs import QueryMeta, QueryOptions, Wire
from ..log_protocol import WARN, LogLike, clip
from ..serverport.endpoints import RemoteError, RPCCallError
from .constants import ERR_ACL_NOT_FOUND, ERR_PERMISSION_DENIED
from .host import HTTPAgent
from .messages import HTTPError, Request, Response, meta_headers, meta_of, query_options

__all__ = ["APIContext", "Endpoint", "Route"]

Endpoint = Callable[["APIContext", Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Route:
    endpoint: Endpoint
    methods: frozenset[str] | None = None
    """The methods served (others: 405 with an empty body); None serves any, as most of the
    reference's 0.7 handlers do."""


def rpc_error_status(text: str) -> int:
    return 403 if ERR_PERMISSION_DENIED in text or ERR_ACL_NOT_FOUND in text else 500


class APIContext:
    """The agent and the helpers the handlers use."""

    def __init__(self, agent: HTTPAgent, logger: LogLike) -> None:
        self.agent = agent
        self.log = logger

    @property
    def datacenter(self) -> str:
        return self.agent.info.datacenter

    @property
    def node_name(self) -> str:
        return self.agent.info.node_name

    def token(self, request: Request) -> str:
        return request.token(self.agent.info.acl_token)

    def dc(self, request: Request) -> str:
        return request.dc(self.agent.info.datacenter)

    def options(self, request: Request) -> QueryOptions:
        return query_options(request, self.agent.info.acl_token)

    def required_tail(self, request: Request, prefix: str, missing: str) -> str:
        """The path after ``prefix`` (the route's argument); when empty, a 400 ``missing``,
        after the query options' own 400s as in the reference."""
        tail = request.tail(prefix)
        if not tail:
            self.options(request)
            raise HTTPError(400, missing)
        return tail

    async def rpc(self, method: str, args: Any) -> Any:
        """The in-process call; its error as the reference's HTTP answer."""
        try:
            return await self.agent.call(method, args)
        except RemoteError as exc:
            text = exc.error
        except RPCCallError as exc:
            text = str(exc)
        self.log.throttled(WARN, f"http:rpc-error:{method}", f"http: {method} failed: {clip(text)}")
        raise HTTPError(rpc_error_status(text), text)

    async def read(
        self, request: Request, method: str, fields: Wire
    ) -> tuple[Any, list[tuple[str, str]]]:
        """A query: ``fields`` plus the datacenter and the query options; the reply and its
        ``X-Consul-*`` headers."""
        options = self.options(request)
        args = {"Datacenter": self.dc(request), **fields, **options.wire_fields()}
        reply = await self.rpc(method, args)
        return reply, meta_headers(meta_of(reply))

    def write_args(self, request: Request, fields: Wire) -> Wire:
        """A write: ``fields`` plus the datacenter and the token."""
        return {"Datacenter": self.dc(request), **fields, "Token": self.token(request)}


def zero_meta_headers() -> list[tuple[str, str]]:
    return meta_headers(QueryMeta())
