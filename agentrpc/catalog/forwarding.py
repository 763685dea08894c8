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
from typing import Any, TypeVar

from ..serverport.endpoints import BadRequestBody, Endpoints, Handler
from .consensus import ConsensusFacts, Forwarder
from .rules import Route, route
from .structs import WireDecodeError

T = TypeVar("T")


def decode_body(fn: Callable[[Any], T], body: Any) -> T:
    """``fn(body)``, a request struct's ``from_wire``; a body that does not decode is the
    endpoint's :class:`BadRequestBody` (the reference's decode error, the connection closed)."""
    try:
        return fn(body)
    except WireDecodeError as exc:
        raise BadRequestBody(str(exc)) from None


__all__ = ["ForwardingEndpoints"]


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
