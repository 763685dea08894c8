"""The one owner of the catalog's FSM on the Trio side: every write goes through it, and it
wakes exactly the blocked queries a write concerns.

:class:`StateHub` has the FSM's shape (:class:`agentrpc.raft.fsm.FSM`: ``apply``, ``snapshot``,
``restore``), so the Raft engine is handed the hub rather than the bare FSM. After each apply
it takes the FSM's :class:`~agentrpc.catalog.watch.Changes` and sets the events of the waiters
they concern (a :class:`~agentrpc.catalog.watch.WaiterRegistry`); a restore wakes every waiter.
It also feeds the tombstone GC's hints (only the leader's GC is enabled) and wakes the reaper
when one arrives.

Resources: one ``trio.Event`` per blocked query, registered only while it waits
(:meth:`StateHub.watching` unregisters it on exit, cancellation included); nothing else grows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import trio

from ..raft.fsm import SnapshotSource
from ..raft.log import LogEntry
from .fsm import ConsulFSM, ConsulSnapshot
from .leader import TombstoneGC
from .state_store import StateStore
from .watch import WaiterRegistry, WatchSet

__all__ = ["StateHub"]


class StateHub:
    """The FSM, its waiters and the tombstone GC's hints."""

    def __init__(
        self,
        fsm: ConsulFSM,
        *,
        clock: Callable[[], float] = trio.current_time,
        tombstone_gc: TombstoneGC | None = None,
    ) -> None:
        self.fsm = fsm
        self.tombstone_gc = tombstone_gc if tombstone_gc is not None else TombstoneGC()
        self._clock = clock
        self._waiters: WaiterRegistry[trio.Event] = WaiterRegistry()
        self._gc_hinted = trio.Event()
        self._registered = trio.Event()
        self.woken = 0
        """Waiters woken so far (a count for stats and tests)."""

    @property
    def store(self) -> StateStore:
        return self.fsm.store

    @property
    def waiting(self) -> int:
        """Queries blocked right now."""
        return len(self._waiters)

    # ------------------------------------------------------------------ the FSM's shape

    def apply(self, entry: LogEntry) -> Any:
        try:
            return self.fsm.apply(entry)
        finally:
            self._publish()

    def snapshot(self) -> ConsulSnapshot:
        return self.fsm.snapshot()

    def restore(self, source: SnapshotSource) -> None:
        try:
            self.fsm.restore(source)
        finally:
            self._publish()

    # ------------------------------------------------------------------ waiting

    @contextmanager
    def watching(self, ws: WatchSet) -> Iterator[trio.Event]:
        """An event set by the first write that concerns ``ws`` (registered until exit)."""
        event = trio.Event()
        self._waiters.register(event, ws)
        self._registered.set()
        self._registered = trio.Event()
        try:
            yield event
        finally:
            self._waiters.unregister(event)

    async def until_waiting(self, count: int) -> None:
        """Return once at least ``count`` queries are blocked (for benchmarks and tests that
        must know a query waits before they write)."""
        while len(self._waiters) < count:
            await self._registered.wait()

    async def wait_tombstone_hint(self) -> None:
        """Return at the next tombstone hint the GC took."""
        await self._gc_hinted.wait()

    def _publish(self) -> None:
        changes = self.fsm.take_changes()
        if not changes:
            return
        woken = self._waiters.woken_by(changes)
        for event in woken:
            event.set()
        self.woken += len(woken)
        if changes.tombstone_index and self.tombstone_gc.enabled:
            self.tombstone_gc.hint(changes.tombstone_index, self._clock())
            self._gc_hinted.set()
            self._gc_hinted = trio.Event()
