"""Consul's ``Internal.KeyringOperation``: one gossip-key operation on every pool of every
datacenter (Consul 0.7's ``consul/internal_endpoint.go``, ``structs.KeyringRequest`` /
``KeyringResponse`` / ``KeyringResponses``).

The request names an ``Operation`` (``list``, ``install``, ``use``, ``remove``) and a ``Key``.
A server that gets it with ``Forwarded`` false runs the operation on its WAN pool, then, with
``Forwarded`` set, on its LAN pool and on one server of every other datacenter the forwarder
knows (each of which, seeing ``Forwarded``, runs it on its own LAN pool only). Every pool
answers with one ``KeyringResponse`` (``WAN``, ``Datacenter``, ``Messages``, ``Keys``,
``NumNodes``, ``Error``); a pool whose nodes failed says so in its ``Error``, and the call still
succeeds. A datacenter that cannot be reached fails the whole call with the forwarding error,
as the reference's ``globalRPC`` returns the first error it gets.

Where we differ from 0.7 (the result is the same): 0.7's ``globalRPC`` also sends the
forwarded request to a random server of the *local* datacenter (its WAN view lists every
datacenter, its own too), which runs the LAN operation there; every server of a datacenter is
in the one LAN pool, so we run it here, in-process, as later Consul versions do. The other
datacenters run concurrently with the local LAN pool; the replies are ordered WAN, LAN, then
the other datacenters in the forwarder's order (Go appends them as they arrive).

``Datacenter`` is carried and never routes the request (the reference's endpoint does not call
``forward``: any server may take it, and the agent sets ``AllowStale``). The token is accepted
and not enforced (ACLs are not implemented, as in the rest of the catalog). ``RelayFactor``
(serf's relay factor for the key query: a field of later versions' struct, beside 0.7's
fields; Go decoders ignore it when they lack it) is carried to every pool.

The structs are pure; :func:`keyring_endpoint` builds the handler over callables for the pools
and a forwarder, so this module imports no agent and no gossip layer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import trio

from ..log_protocol import WARN, LogLike, NullLog, clip
from ..serverport.endpoints import EndpointError, Handler
from .forwarding import decode_body
from .structs import (
    QueryMeta,
    QueryOptions,
    Wire,
    WireDecodeError,
    as_map,
    get_bool,
    get_int,
    get_str,
    get_str_map,
    get_uint,
)

__all__ = [
    "ERR_INVALID_KEYRING_OPERATION",
    "KEYRING_INSTALL",
    "KEYRING_LIST",
    "KEYRING_OPERATION",
    "KEYRING_OPERATIONS",
    "KEYRING_REMOVE",
    "KEYRING_USE",
    "DatacenterForwarder",
    "KeyringRequest",
    "KeyringResponse",
    "KeyringResponses",
    "PoolKeyResult",
    "PoolOperation",
    "keyring_endpoint",
]

KEYRING_OPERATION: Final = "Internal.KeyringOperation"

KEYRING_LIST: Final = "list"
KEYRING_INSTALL: Final = "install"
KEYRING_USE: Final = "use"
KEYRING_REMOVE: Final = "remove"
KEYRING_OPERATIONS: Final = (KEYRING_LIST, KEYRING_INSTALL, KEYRING_USE, KEYRING_REMOVE)
"""``structs.KeyringOp`` values."""

ERR_INVALID_KEYRING_OPERATION: Final = "Invalid keyring operation"
"""An ``Operation`` outside :data:`KEYRING_OPERATIONS` (the reference panics with this text)."""

MAX_RELAY_FACTOR: Final = 255
"""``RelayFactor`` is a Go ``uint8``."""


# ------------------------------------------------------------------ structs


def _decode_error(what: str, name: str, expected: str, value: object) -> WireDecodeError:
    return WireDecodeError(
        f"msgpack decode error: {what}.{name}: expected {expected}, got {type(value).__name__}"
    )


def _get_count_map(m: Wire, name: str, what: str) -> dict[str, int]:
    """A Go ``map[string]int`` (nil: empty)."""
    value = m.get(name)
    if value is None:
        return {}
    if type(value) is not dict:
        raise _decode_error(what, name, "a map of integers", value)
    counts: dict[str, int] = {}
    for key, count in value.items():
        text = get_str({name: key}, name, what)
        counts[text] = get_int({name: count}, name, what)
    return counts


def _get_list(m: Wire, name: str, what: str) -> list[Any]:
    """A Go slice (nil: empty)."""
    value = m.get(name)
    if value is None:
        return []
    if type(value) is not list and type(value) is not tuple:
        raise _decode_error(what, name, "a list", value)
    return list(value)


@dataclass(frozen=True, slots=True)
class KeyringRequest:
    """``structs.KeyringRequest``: ``Operation``, ``Key``, ``Datacenter``, ``Forwarded``,
    ``RelayFactor`` and the inlined ``QueryOptions`` (the agent sets ``AllowStale``: any
    server may answer, the work is gossip)."""

    operation: str = KEYRING_LIST
    key: str = ""
    datacenter: str = ""
    forwarded: bool = False
    relay_factor: int = 0
    options: QueryOptions = field(default_factory=QueryOptions)

    def to_wire(self) -> Wire:
        fields = {
            "Datacenter": self.datacenter,
            "Forwarded": self.forwarded,
            "Key": self.key,
            "Operation": self.operation,
            "RelayFactor": self.relay_factor,
            **self.options.wire_fields(),
        }
        return dict(sorted(fields.items()))

    @classmethod
    def from_wire(cls, obj: object) -> KeyringRequest:
        what = "KeyringRequest"
        m = as_map(obj, what)
        relay = get_uint(m, "RelayFactor", what)
        if relay > MAX_RELAY_FACTOR:
            raise WireDecodeError(
                f"msgpack decode error: {what}.RelayFactor: {relay} overflows uint8"
            )
        return cls(
            operation=get_str(m, "Operation", what),
            key=get_str(m, "Key", what),
            datacenter=get_str(m, "Datacenter", what),
            forwarded=get_bool(m, "Forwarded", what),
            relay_factor=relay,
            options=QueryOptions.from_map(m, what),
        )

    def forwarded_copy(self) -> KeyringRequest:
        return KeyringRequest(
            self.operation, self.key, self.datacenter, True, self.relay_factor, self.options
        )


@dataclass(frozen=True, slots=True)
class KeyringResponse:
    """``structs.KeyringResponse``: one pool's answer. ``messages`` is node -> message and
    ``keys`` base64 key -> how many nodes hold it; both are maps on the wire even when empty
    (serf's key manager always makes them)."""

    wan: bool = False
    datacenter: str = ""
    messages: Mapping[str, str] = field(default_factory=dict)
    keys: Mapping[str, int] = field(default_factory=dict)
    num_nodes: int = 0
    error: str = ""

    def to_wire(self) -> Wire:
        return {
            "Datacenter": self.datacenter,
            "Error": self.error,
            "Keys": dict(self.keys),
            "Messages": dict(self.messages),
            "NumNodes": self.num_nodes,
            "WAN": self.wan,
        }

    @classmethod
    def from_wire(cls, obj: object) -> KeyringResponse:
        what = "KeyringResponse"
        m = as_map(obj, what)
        return cls(
            wan=get_bool(m, "WAN", what),
            datacenter=get_str(m, "Datacenter", what),
            messages=get_str_map(m, "Messages", what) or {},
            keys=_get_count_map(m, "Keys", what),
            num_nodes=get_int(m, "NumNodes", what),
            error=get_str(m, "Error", what),
        )

    @property
    def pool(self) -> str:
        """``WAN`` or ``LAN``, as the agent RPC names the pool."""
        return "WAN" if self.wan else "LAN"


@dataclass(frozen=True, slots=True)
class KeyringResponses:
    """``structs.KeyringResponses``: every pool's answer and the inlined ``QueryMeta`` (which
    the endpoint never sets: zero, as in the reference). No response is nil."""

    responses: tuple[KeyringResponse, ...] = ()
    meta: QueryMeta = field(default_factory=QueryMeta)

    def to_wire(self) -> Wire:
        fields: Wire = {
            "Responses": [r.to_wire() for r in self.responses] or None,
            **self.meta.wire_fields(),
        }
        return dict(sorted(fields.items()))

    @classmethod
    def from_wire(cls, obj: object) -> KeyringResponses:
        what = "KeyringResponses"
        m = as_map(obj, what)
        items = _get_list(m, "Responses", what)
        return cls(
            tuple(KeyringResponse.from_wire(item) for item in items),
            QueryMeta.from_map(m, what),
        )


# ------------------------------------------------------------------ the endpoint


class PoolKeyResult(Protocol):
    """What a pool's key operation returns (serf's ``KeyResponse``; ours is
    :class:`~agentrpc.gossip.serf_keys.KeyResponse`)."""

    @property
    def messages(self) -> Mapping[str, str]: ...

    @property
    def keys(self) -> Mapping[str, int]: ...

    @property
    def num_nodes(self) -> int: ...

    @property
    def error(self) -> str: ...


PoolOperation = Callable[[str, str, int], Awaitable[PoolKeyResult]]
"""Runs ``(operation, key, relay_factor)`` on one pool (its key manager); the operation is one
of :data:`KEYRING_OPERATIONS`. A failure is the result's ``error``, never an exception."""


class DatacenterForwarder(Protocol):
    """The part of :class:`~agentrpc.catalog.consensus.Forwarder` this endpoint uses."""

    async def forward_datacenter(self, datacenter: str, method: str, body: Any) -> Any: ...

    def datacenters(self) -> list[str]: ...


def _pool_response(wan: bool, datacenter: str, result: PoolKeyResult) -> KeyringResponse:
    return KeyringResponse(
        wan=wan,
        datacenter=datacenter,
        messages=dict(result.messages),
        keys=dict(result.keys),
        num_nodes=result.num_nodes,
        error=result.error,
    )


def keyring_endpoint(
    *,
    lan: PoolOperation,
    wan: PoolOperation | None,
    datacenter: str,
    forwarder: DatacenterForwarder | None,
    logger: LogLike | None = None,
) -> Handler:
    """The ``Internal.KeyringOperation`` handler (see the module docstring).

    ``lan`` and ``wan`` run the operation on this server's pools (``wan`` None: a server with
    no WAN pool, which then only ever does its LAN pool, as later Consul versions do);
    ``forwarder`` reaches the other datacenters (None: this datacenter only)."""
    log: LogLike = logger or NullLog()

    async def remote(
        dc: str, body: Wire, replies: dict[str, KeyringResponses], errors: list[str]
    ) -> None:
        assert forwarder is not None
        try:
            reply = await forwarder.forward_datacenter(dc, KEYRING_OPERATION, body)
            replies[dc] = KeyringResponses.from_wire(reply)
        except (EndpointError, WireDecodeError) as exc:
            text = str(exc)
            log.throttled(
                WARN,
                f"keyring:forward-failed:{clip(dc, 64)}",
                f"consul.keyring: {KEYRING_OPERATION} in DC '{clip(dc, 64)}' failed: {clip(text)}",
            )
            errors.append(text)

    async def local_lan(request: KeyringRequest, into: list[KeyringResponse]) -> None:
        result = await lan(request.operation, request.key, request.relay_factor)
        into.append(_pool_response(False, datacenter, result))

    async def handle(body: Any) -> Wire:
        request = decode_body(KeyringRequest.from_wire, body)
        if request.operation not in KEYRING_OPERATIONS:
            await trio.lowlevel.checkpoint()
            raise EndpointError(ERR_INVALID_KEYRING_OPERATION)
        # The token would be checked for keyring read / write access here (no ACLs yet).
        responses: list[KeyringResponse] = []
        if request.forwarded or wan is None:
            await local_lan(request, responses)
            return KeyringResponses(tuple(responses)).to_wire()
        result = await wan(request.operation, request.key, request.relay_factor)
        responses.append(_pool_response(True, datacenter, result))
        forwarded = request.forwarded_copy()
        others = (
            [dc for dc in forwarder.datacenters() if dc != datacenter]
            if forwarder is not None
            else []
        )
        lan_responses: list[KeyringResponse] = []
        replies: dict[str, KeyringResponses] = {}
        errors: list[str] = []
        wire = forwarded.to_wire()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(local_lan, forwarded, lan_responses)
            for dc in others:
                nursery.start_soon(remote, dc, wire, replies, errors)
        if errors:
            raise EndpointError(errors[0])
        responses.extend(lan_responses)
        for dc in others:
            responses.extend(replies[dc].responses)
        return KeyringResponses(tuple(responses)).to_wire()

    return handle
