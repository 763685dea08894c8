"""Serf's user events, sans-I/O: the size limits, the recent-event buffer and its dedupe.

A user event is gossiped as ``messageUserEvent{LTime, Name, Payload, CC}`` on serf's event
broadcast queue. Every node keeps the events of the last :data:`EVENT_BUFFER_SIZE` Lamport
times in a ring indexed by ``LTime % size`` (serf's ``eventBuffer``) and delivers an event the
first time it sees that ``(LTime, Name, Payload)``; the rules (serf.go ``handleUserEvent``):

* an event before ``min_time`` (set by a join that ignores old events) is dropped;
* an event more than ``size`` Lamport times behind the event clock is too old (logged as
  serf does: ``received old event NAME from time T (current: C)``);
* one already in its slot is a duplicate; otherwise it is new: delivered and rebroadcast.

The buffer also travels in push/pulls (``Events`` of ``messagePushPull``), empty slots as nil.

Bounds against peers: an event slot keeps at most :data:`MAX_EVENTS_PER_TIME` events, and the
whole buffer at most ``max_bytes`` of names and payloads; past either, the oldest Lamport
times are forgotten first (so a flood can, at worst, have an old event delivered twice, never
grow memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

from agentrpc.gossip.serf_messages import UserEvent, UserEventEntry, UserEvents, encode_serf_message
from agentrpc.protocol.codec import text_bytes

__all__ = [
    "EVENT_BUFFER_SIZE",
    "MAX_EVENTS_PER_TIME",
    "USER_EVENT_SANE_LIMIT",
    "USER_EVENT_SIZE_LIMIT",
    "EventVerdict",
    "RecentEvents",
    "UserEventError",
    "UserEventReceived",
    "encode_user_event",
]

EVENT_BUFFER_SIZE: Final = 512
"""Lamport times of events remembered (serf's ``EventBuffer``)."""
USER_EVENT_SIZE_LIMIT: Final = 512
"""Serf's default ``UserEventSizeLimit``: name plus payload, and the encoded message."""
USER_EVENT_SANE_LIMIT: Final = 9 * 1024
"""Serf's hard ``UserEventSizeLimit`` constant: no configuration may go past it."""
MAX_EVENTS_PER_TIME: Final = 64
"""Events one Lamport time keeps for dedupe (serf keeps any number)."""
DEFAULT_EVENT_BUFFER_BYTES: Final = 2 << 20


class UserEventError(ValueError):
    """A user event we refuse to send; the text is serf's."""


@dataclass(frozen=True, slots=True)
class UserEventReceived:
    """A user event delivered to this node (serf's ``UserEvent`` on the event channel)."""

    ltime: int
    name: str
    payload: bytes
    coalesce: bool

    def __str__(self) -> str:
        return f"user-event: {self.name}"


class EventVerdict(Enum):
    """What :meth:`RecentEvents.record` made of an event."""

    NEW = "new"
    DUPLICATE = "duplicate"
    TOO_OLD = "too old"
    BEFORE_MIN_TIME = "before min time"


def encode_user_event(
    ltime: int, name: str, payload: bytes, coalesce: bool, *, limit: int = USER_EVENT_SIZE_LIMIT
) -> bytes:
    """The serf message for a new user event, checked as serf's ``UserEvent`` checks it
    (raises :class:`UserEventError` with serf's text)."""
    before = len(text_bytes(name)) + len(payload)
    if before > limit:
        raise UserEventError(
            f"user event exceeds configured limit of {limit} bytes before encoding"
        )
    if before > USER_EVENT_SANE_LIMIT:
        raise UserEventError(
            f"user event exceeds sane limit of {USER_EVENT_SANE_LIMIT} bytes before encoding"
        )
    raw = encode_serf_message(UserEvent(ltime, name, bytes(payload), bool(coalesce)))
    if len(raw) > limit:
        raise UserEventError(
            f"encoded user event exceeds configured limit of {limit} bytes after encoding"
        )
    if len(raw) > USER_EVENT_SANE_LIMIT:
        raise UserEventError(
            f"encoded user event exceeds sane limit of {USER_EVENT_SANE_LIMIT} bytes "
            "before encoding"
        )
    return raw


@dataclass(slots=True)
class _Slot:
    ltime: int
    events: list[UserEventEntry]
    size: int


class RecentEvents:
    """Serf's ``eventBuffer`` plus ``eventMinTime``, bounded in bytes."""

    __slots__ = ("_bytes", "_max_bytes", "_slots", "dropped", "min_time", "size")

    def __init__(
        self, size: int = EVENT_BUFFER_SIZE, *, max_bytes: int = DEFAULT_EVENT_BUFFER_BYTES
    ) -> None:
        if size < 1:
            raise ValueError(f"the event buffer needs at least one slot, got {size}")
        self.size = size
        self._max_bytes = max_bytes
        self._slots: dict[int, _Slot] = {}
        self._bytes = 0
        self.min_time = 0
        """Events older than this are ignored (a join with ``ignore_old``)."""
        self.dropped = 0
        """Remembered events forgotten early to stay within the bounds."""

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def record(self, ltime: int, name: str, payload: bytes, clock_time: int) -> EventVerdict:
        """Judge one event; a NEW one is remembered. ``clock_time`` is the event clock after
        it witnessed ``ltime``."""
        if ltime < self.min_time:
            return EventVerdict.BEFORE_MIN_TIME
        if clock_time > self.size and ltime < clock_time - self.size:
            return EventVerdict.TOO_OLD
        entry = UserEventEntry(name, bytes(payload))
        index = ltime % self.size
        slot = self._slots.get(index)
        if slot is not None and slot.ltime == ltime:
            if entry in slot.events:
                return EventVerdict.DUPLICATE
        else:
            if slot is not None:
                self._bytes -= slot.size
            slot = self._slots[index] = _Slot(ltime, [], 0)
        cost = len(name) + len(payload) + 16
        if len(slot.events) >= MAX_EVENTS_PER_TIME:
            forgotten = slot.events.pop(0)
            slot.size -= len(forgotten.name) + len(forgotten.payload) + 16
            self._bytes -= len(forgotten.name) + len(forgotten.payload) + 16
            self.dropped += 1
        slot.events.append(entry)
        slot.size += cost
        self._bytes += cost
        if self._bytes > self._max_bytes:
            self._shrink(keep=index)
        return EventVerdict.NEW

    def _shrink(self, keep: int) -> None:
        """Forget whole Lamport times, oldest first, until within ``max_bytes``."""
        for index, slot in sorted(self._slots.items(), key=lambda item: item[1].ltime):
            if self._bytes <= self._max_bytes:
                return
            if index == keep:
                continue
            del self._slots[index]
            self._bytes -= slot.size
            self.dropped += len(slot.events)
        keep_slot = self._slots.get(keep)
        while keep_slot is not None and self._bytes > self._max_bytes and keep_slot.events:
            forgotten = keep_slot.events.pop(0)
            cost = len(forgotten.name) + len(forgotten.payload) + 16
            keep_slot.size -= cost
            self._bytes -= cost
            self.dropped += 1

    def snapshot(self) -> tuple[UserEvents | None, ...]:
        """The ring as serf sends it in a push/pull: one entry per slot, nil when empty."""
        ring: list[UserEvents | None] = [None] * self.size
        for index, slot in self._slots.items():
            if slot.events:
                ring[index] = UserEvents(slot.ltime, tuple(slot.events))
        return tuple(ring)

    def __len__(self) -> int:
        """Events remembered."""
        return sum(len(slot.events) for slot in self._slots.values())
