"""What every server-port endpoint group of the catalog shares: registering its handlers and
sending a request where it must be served (``forward`` in ``consul/rpc.go``).

:class:`ForwardingEndpoints` is a small base: a subclass sets ``datacenter``, ``facts`` and
``forwarder`` and lists its handlers; ``_forward`` asks :func:`~agentrpc.catalog.rules.route`
where the request goes, and either returns ``(False, None)`` (serve it here) or ``(True,
reply)`` with the reply of the leader or of the other datacenter.

Errors: a forwarded call's ``EndpointError`` (or ``No path to datacenter``) propagates to the
caller unchanged, as the reference returns the remote error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from ..serverport.endpoints import BadRequestBody, Endpoints, Handler
from .consensus import ConsensusFacts, Forwarder
from .rules import Route, route
from .structs import QueryOptions, WireDecodeError

T = TypeVar("T")


class RoutedRequest(Protocol):
    """A write request: it names the datacenter that serves it."""

    @property
    def datacenter(self) -> str: ...


class RoutedRead(RoutedRequest, Protocol):
    """A read request: a datacenter and the query options (``AllowStale``)."""

    @property
    def options(self) -> QueryOptions: ...


W = TypeVar("W", bound=RoutedRequest)
R = TypeVar("R", bound=RoutedRead)


def decode_body(fn: Callable[[Any], T], body: Any) -> T:
    """``fn(body)``, a request struct's ``from_wire``; a body that does not decode is the
    endpoint's :class:`BadRequestBody` (the reference's decode error, the connection closed)."""
    try:
        return fn(body)
    except WireDecodeError as exc:
        raise BadRequestBody(str(exc)) from None


__all__ = ["ForwardingEndpoints", "RoutedRead", "RoutedRequest"]


class ForwardingEndpoints:
    """The base of the catalog's endpoint groups: ``handlers``, ``register``, ``_forward``."""

    datacenter: str
    facts: ConsensusFacts
    forwarder: Forwarder

    def handlers(self) -> dict[str, Handler]:
        """The group's handlers by RPC method name."""
        raise NotImplementedError

    def register(self, endpoints: Endpoints) -> None:
        for name, handler in self.handlers().items():
            endpoints.register(name, handler)

    async def _forward(
        self, method: str, body: Any, datacenter: str, *, is_read: bool, allow_stale: bool
    ) -> tuple[bool, Any]:
        where = route(
            datacenter,
            self.datacenter,
            is_read=is_read,
            allow_stale=allow_stale,
            is_leader=self.facts.is_leader(),
        )
        if where is Route.LOCAL:
            return False, None
        if where is Route.DATACENTER:
            return True, await self.forwarder.forward_datacenter(datacenter, method, body)
        return True, await self.forwarder.forward_leader(method, body)

    async def _forward_read(
        self, method: str, body: Any, decode: Callable[[Any], R]
    ) -> tuple[R, bool, Any]:
        """Decode a read request and send it where it is served: ``(request, done, reply)``,
        ``done`` False when it is served here (a stale read on any server, else the leader)."""
        request = decode_body(decode, body)
        done, reply = await self._forward(
            method,
            body,
            request.datacenter,
            is_read=True,
            allow_stale=request.options.allow_stale,
        )
        return request, done, reply

    async def _forward_write(
        self, method: str, body: Any, decode: Callable[[Any], W]
    ) -> tuple[W, bool, Any]:
        """Decode a write request and send it where it is served (its datacenter's leader):
        ``(request, done, reply)`` as :meth:`_forward_read`."""
        request = decode_body(decode, body)
        done, reply = await self._forward(
            method, body, request.datacenter, is_read=False, allow_stale=False
        )
        return request, done, reply
