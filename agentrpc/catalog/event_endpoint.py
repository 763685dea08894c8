"""Consul's ``Internal.EventFire``: a user event fired in a datacenter's LAN pool by one of its
servers (Consul 0.7's ``consul/internal_endpoint.go``, ``structs.EventFireRequest`` /
``EventFireResponse``; the agent side is ``command/agent/user_event.go``'s ``UserEvent``).

The agent encodes the Consul event (ID, name, filters, version: the serf payload) and sends
``EventFireRequest`` with the event's ``Name`` (without the serf prefix), the encoded
``Payload``, the ``Datacenter`` to fire it in and the inlined ``QueryOptions`` with
``AllowStale`` set: any server of that datacenter may fire it, gossip does the rest.

The server that gets it routes it as the reference's ``forward`` does: another datacenter's
request goes to a server there (``No path to datacenter`` when none is known); a request of
this datacenter is served here (it is a read, and the agent always sets ``AllowStale``; one
without it goes to the leader, as ``forward`` sends any consistent read). Served here, it sets
the ``QueryMeta`` (``setQueryMeta``) and fires the serf user event
``consul:event:<Name>`` with the payload, not coalesced, in its LAN pool; serf's refusal
(say, the size limit) is the endpoint's error with serf's text.

The token is carried and not enforced (ACLs are not implemented, as in the rest of the
catalog: the reference would answer ``Permission denied`` for a token that may not write the
event).

The structs are pure; :func:`event_endpoint` builds the handler over a callable that fires the
event in the LAN pool, the consensus facts and a forwarder, so this module imports no agent and
no gossip layer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from ..log_protocol import DEBUG, LogLike, NullLog, clip
from ..serverport.endpoints import EndpointError, Handler
from .blocking import query_meta
from .consensus import ConsensusFacts, Forwarder
from .forwarding import decode_body
from .rules import Route, route
from .structs import QueryMeta, QueryOptions, Wire, as_map, get_bytes, get_str

__all__ = [
    "EVENT_FIRE",
    "USER_EVENT_PREFIX",
    "EventFireRequest",
    "EventFireResponse",
    "UserEventSender",
    "event_endpoint",
    "user_event_name",
]

EVENT_FIRE: Final = "Internal.EventFire"

USER_EVENT_PREFIX: Final = "consul:event:"
"""``userEventPrefix``: what a Consul user event's serf event name starts with."""


def user_event_name(name: str) -> str:
    """``userEventName``: the serf event name of the Consul event ``name``."""
    return USER_EVENT_PREFIX + name


UserEventSender = Callable[[str, bytes], Awaitable[None]]
"""Fires the serf user event ``(name, payload)`` (the prefixed name, not coalesced) in this
server's LAN pool; raises ``ValueError`` with the reason (serf's text) when it is refused."""


@dataclass(frozen=True, slots=True)
class EventFireRequest:
    """``structs.EventFireRequest``: ``Datacenter``, ``Name``, ``Payload`` (the encoded
    Consul event) and the inlined ``QueryOptions`` (the agent sets ``AllowStale``)."""

    datacenter: str = ""
    name: str = ""
    payload: bytes | None = None
    options: QueryOptions = field(default_factory=QueryOptions)

    def to_wire(self) -> Wire:
        fields = {
            "Datacenter": self.datacenter,
            "Name": self.name,
            "Payload": self.payload,
            **self.options.wire_fields(),
        }
        return dict(sorted(fields.items()))

    @classmethod
    def from_wire(cls, obj: object) -> EventFireRequest:
        what = "EventFireRequest"
        m = as_map(obj, what)
        return cls(
            datacenter=get_str(m, "Datacenter", what),
            name=get_str(m, "Name", what),
            payload=get_bytes(m, "Payload", what),
            options=QueryOptions.from_map(m, what),
        )


@dataclass(frozen=True, slots=True)
class EventFireResponse:
    """``structs.EventFireResponse``: only the inlined ``QueryMeta``."""

    meta: QueryMeta = field(default_factory=QueryMeta)

    def to_wire(self) -> Wire:
        return dict(sorted(self.meta.wire_fields().items()))

    @classmethod
    def from_wire(cls, obj: object) -> EventFireResponse:
        what = "EventFireResponse"
        return cls(QueryMeta.from_map(as_map(obj, what), what))


def event_endpoint(
    *,
    fire: UserEventSender,
    datacenter: str,
    facts: ConsensusFacts,
    forwarder: Forwarder,
    clock: Callable[[], float] = trio.current_time,
    logger: LogLike | None = None,
) -> Handler:
    """The ``Internal.EventFire`` handler (see the module docstring): ``fire`` sends the
    event in this server's LAN pool; ``facts`` and ``forwarder`` route the request."""
    log: LogLike = logger or NullLog()

    async def handle(body: Any) -> Any:
        request = decode_body(EventFireRequest.from_wire, body)
        where = route(
            request.datacenter,
            datacenter,
            is_read=True,
            allow_stale=request.options.allow_stale,
            is_leader=facts.is_leader(),
        )
        if where is Route.DATACENTER:
            return await forwarder.forward_datacenter(request.datacenter, EVENT_FIRE, body)
        if where is Route.LEADER:
            return await forwarder.forward_leader(EVENT_FIRE, body)
        # The token would be checked for event write access to the name here (no ACLs yet).
        meta = query_meta(facts, clock())
        try:
            await fire(user_event_name(request.name), request.payload or b"")
        except ValueError as exc:
            text = str(exc)
            log.throttled(
                DEBUG,
                "event:fire-failed",
                f"consul: user event {clip(request.name, 64)!r} not fired: {clip(text)}",
            )
            raise EndpointError(text) from None
        return EventFireResponse(meta).to_wire()

    return handle
