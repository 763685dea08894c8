"""Consul's user events on an agent (``command/agent/user_event.go``): the event record, its
serf payload, the filters, and the ring of the last 256 events that ``/v1/event/list`` reads.

An event fired through the HTTP API is validated (:func:`validate`), given an ID and the
version 1, encoded as msgpack (Consul's codec tags: ``ID``, ``n``, ``p``, ``nf``, ``sf``,
``tf``, ``v``; empty ones omitted) and sent to a server of the datacenter it is for
(``Internal.EventFire``, :mod:`agentrpc.catalog.event_endpoint`), which fires it in its LAN pool
as the serf user event ``consul:event:<name>``. An agent that receives such a serf event
decodes it, keeps it if its filters match this node (:func:`should_process`) and adds it to its
:class:`UserEventLog`.

The log is the Trio part: a bounded ring with a change notification for the blocking list.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Final

import msgpack
import trio

from ..catalog.event_endpoint import USER_EVENT_PREFIX
from ..catalog.structs import NodeService
from .go_json import b64

__all__ = [
    "EVENT_PREFIX",
    "USER_EVENT_MAX_VERSION",
    "UserEvent",
    "UserEventError",
    "UserEventLog",
    "decode_payload",
    "encode_payload",
    "serf_name",
    "should_process",
    "uuid_to_uint64",
    "validate",
]

EVENT_PREFIX: Final = USER_EVENT_PREFIX
"""The serf event name prefix of a Consul event (the server adds it: ``Internal.EventFire``)."""
USER_EVENT_MAX_VERSION: Final = 1
EVENT_BUFFER: Final = 256
"""``eventBuffer``: how many events an agent keeps for ``/v1/event/list``."""
MAX_FILTER_CHARS: Final = 1024


class UserEventError(ValueError):
    """An event the reference refuses (the text is its error)."""


@dataclass(frozen=True, slots=True)
class UserEvent:
    id: str = ""
    name: str = ""
    payload: bytes | None = None
    node_filter: str = ""
    service_filter: str = ""
    tag_filter: str = ""
    version: int = 0
    ltime: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Payload": b64(self.payload),
            "NodeFilter": self.node_filter,
            "ServiceFilter": self.service_filter,
            "TagFilter": self.tag_filter,
            "Version": self.version,
            "LTime": self.ltime,
        }


def serf_name(name: str) -> str:
    return EVENT_PREFIX + name


def _compile(pattern: str, what: str) -> re.Pattern[str]:
    if len(pattern) > MAX_FILTER_CHARS:
        raise UserEventError(f"Invalid {what} filter: longer than {MAX_FILTER_CHARS} characters")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise UserEventError(f"Invalid {what} filter: {exc}") from None


def validate(event: UserEvent) -> None:
    """``validateUserEventParams``."""
    if not event.name:
        raise UserEventError("User event missing name")
    if event.tag_filter and not event.service_filter:
        raise UserEventError("Cannot provide tag filter without service filter")
    if event.node_filter:
        _compile(event.node_filter, "node")
    if event.service_filter:
        _compile(event.service_filter, "service")
    if event.tag_filter:
        _compile(event.tag_filter, "tag")


def encode_payload(event: UserEvent) -> bytes:
    """The serf payload of an event (msgpack, Consul's codec tags, empty ones omitted)."""
    body: dict[str, Any] = {"ID": event.id, "n": event.name}
    if event.node_filter:
        body["nf"] = event.node_filter
    if event.payload:
        body["p"] = event.payload
    if event.service_filter:
        body["sf"] = event.service_filter
    if event.tag_filter:
        body["tf"] = event.tag_filter
    body["v"] = event.version
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value if isinstance(value, str) else ""


def decode_payload(payload: bytes, ltime: int = 0) -> UserEvent:
    """An event from its serf payload; :class:`UserEventError` when it does not decode."""
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise UserEventError(f"Failed to decode event: {exc}") from None
    if not isinstance(body, dict):
        raise UserEventError("Failed to decode event: not a map")
    raw = body.get("p")
    version = body.get("v")
    return UserEvent(
        id=_text(body.get("ID")),
        name=_text(body.get("n")),
        payload=raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw,
        node_filter=_text(body.get("nf")),
        service_filter=_text(body.get("sf")),
        tag_filter=_text(body.get("tf")),
        version=version if isinstance(version, int) else 0,
        ltime=ltime,
    )


def should_process(event: UserEvent, node_name: str, services: Iterable[NodeService]) -> bool:
    """``shouldProcessUserEvent``: a known version, and filters that match this node and one
    of its services (and one of that service's tags)."""
    if event.version > USER_EVENT_MAX_VERSION:
        return False
    try:
        if event.node_filter and not _compile(event.node_filter, "node").search(node_name):
            return False
        if event.service_filter:
            service_re = _compile(event.service_filter, "service")
            tag_re = _compile(event.tag_filter, "tag") if event.tag_filter else None
            for service in services:
                if not service_re.search(service.service):
                    continue
                if tag_re is None or any(tag_re.search(tag) for tag in service.tags or ()):
                    return True
            return False
    except UserEventError:
        return False
    return True


def uuid_to_uint64(uuid: str) -> int:
    """``uuidToUint64``: the event's index for blocking lists (two halves XORed)."""
    try:
        lower = int(uuid[0:8] + uuid[9:13] + uuid[14:18], 16)
        upper = int(uuid[19:23] + uuid[24:36], 16)
    except ValueError:
        return 0
    return lower ^ upper


class UserEventLog:
    """The last :data:`EVENT_BUFFER` events this agent processed, oldest first, and a wake-up
    for those waiting on the next one."""

    def __init__(self, size: int = EVENT_BUFFER) -> None:
        self._events: deque[UserEvent] = deque(maxlen=size)
        self._changed = trio.Event()

    def add(self, event: UserEvent) -> None:
        self._events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    def ingest(
        self,
        name: str,
        payload: bytes,
        ltime: int,
        node_name: str,
        services: Iterable[NodeService] = (),
    ) -> UserEvent | None:
        """A serf user event: kept (and returned) if it is a Consul event for this node."""
        if not name.startswith(EVENT_PREFIX):
            return None
        try:
            event = decode_payload(payload, ltime)
        except UserEventError:
            return None
        if not should_process(event, node_name, services):
            return None
        event = replace(event, ltime=ltime)
        self.add(event)
        return event

    def events(self) -> list[UserEvent]:
        return list(self._events)

    def index(self, name: str = "") -> int:
        """The index of the list ``name`` filters (1 when empty, never 0)."""
        matching = [e for e in self._events if not name or e.name == name]
        return uuid_to_uint64(matching[-1].id) if matching else 1

    async def wait_changed(self) -> None:
        await self._changed.wait()
