"""The leader's duties as Trio tasks over an :class:`~agentrpc.catalog.consensus.Applier`:
session TTL expiry, tombstone reaping, serf-to-catalog reconciliation (``leaderLoop``).

:meth:`LeaderDuties.run` is what a server runs while it leads (the Raft engine starts it on
winning leadership and cancels it on losing it; a lone server runs it for good). It first does
``establishLeadership`` (the tombstone GC is enabled and hinted with the last index, every
session with a TTL gets a fresh timer), then runs three tasks in its own nursery until
cancelled, and on the way out ``revokeLeadership`` (GC disabled, timers dropped).

- sessions: sleeps until the next deadline (or a timer change) and destroys what expired;
- tombstones: sleeps until the next GC bucket is due (or a new hint) and reaps up to its index;
- reconcile: a full reconciliation every 60 s, and each member pushed by
  :meth:`LeaderDuties.member_changed` (the LAN pool's member events) as it arrives.

A write that fails (:class:`~agentrpc.catalog.consensus.ApplyError`) is logged (throttled) and
retried by the next reconciliation; an FSM refusal is logged likewise. Pending member events are
kept one per member name, so they are bounded by the membership.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any

import trio

from ..log_protocol import DEBUG, INFO, WARN, LogLike, NullLog, clip
from ..protocol.bodies import Member
from .consensus import Applier, ApplyError
from .constants import (
    RECONCILE_INTERVAL_S,
    SESSION_DESTROY,
    TOMBSTONE_REAP,
    MessageType,
)
from .hub import StateHub
from .leader import (
    STATUS_REAP,
    CatalogWrite,
    ServerJoin,
    ServerLeave,
    SessionTimers,
    reconcile_member,
    reconcile_reaped,
)
from .rules import session_ttl_ns
from .structs import DeregisterRequest, RegisterRequest, Session, SessionRequest, TombstoneRequest

__all__ = ["LeaderDuties"]

ServerChange = Callable[[ServerJoin | ServerLeave], Awaitable[None]]
"""The consensus layer's handler of a server's join or leave (it changes the Raft
configuration and returns once done; it logs its own failures)."""


class LeaderDuties:
    """Session timers, tombstone GC and reconciliation for the leader of ``datacenter``."""

    def __init__(
        self,
        hub: StateHub,
        applier: Applier,
        *,
        datacenter: str,
        node_name: str,
        members: Callable[[], Iterable[Member]],
        logger: LogLike | None = None,
        token: str = "",
        reconcile_interval: float = RECONCILE_INTERVAL_S,
        clock: Callable[[], float] = trio.current_time,
        on_server_change: ServerChange | None = None,
    ) -> None:
        self.hub = hub
        self.applier = applier
        self.datacenter = datacenter
        self.node_name = node_name
        self.members = members
        self.token = token
        self.reconcile_interval = reconcile_interval
        self.on_server_change = on_server_change
        self.timers = SessionTimers()
        self.running = False
        self.reconciled = 0
        """Full reconciliations done (a count for tests and stats)."""
        self._log: LogLike = logger or NullLog()
        self._clock = clock
        self._timers_changed = trio.Event()
        self._pending: dict[str, Member] = {}
        self._member_event = trio.Event()

    # ------------------------------------------------------------------ inputs

    def reset_session_timer(self, session_id: str, ttl_ns: int) -> None:
        """Create or renew (the endpoints call this after a create and on Renew)."""
        if not self.running:
            return  # a new leader arms every timer from the store
        self.timers.reset(session_id, ttl_ns, self._clock())
        self._poke_timers()

    def clear_session_timer(self, session_id: str) -> None:
        self.timers.clear(session_id)
        self._poke_timers()

    def member_changed(self, member: Member, *, reaped: bool = False) -> None:
        """A LAN member changed (joined, failed, left; ``reaped`` for serf's member-reap
        event): reconcile it soon."""
        if reaped:
            member = replace(member, status=STATUS_REAP)
        self._pending[member.name] = member
        self._member_event.set()

    def _poke_timers(self) -> None:
        self._timers_changed.set()
        self._timers_changed = trio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Lead until cancelled: establish, run the three tasks, revoke on the way out."""
        self._establish()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._session_task)
                nursery.start_soon(self._tombstone_task)
                nursery.start_soon(self._reconcile_task)
                task_status.started()
        finally:
            self._revoke()

    def _establish(self) -> None:
        gc = self.hub.tombstone_gc
        gc.set_enabled(True)
        gc.hint(self.hub.fsm.last_index, self._clock())
        self.timers.clear_all()
        now = self._clock()
        for session in self.hub.store.iter_sessions():
            try:
                ttl = session_ttl_ns(session.ttl)
            except ValueError as exc:
                self._log.throttled(WARN, "catalog:session-ttl", f"consul: {clip(exc)}")
                continue
            if ttl:
                self.timers.reset(session.id, ttl, now)
        self.running = True

    def _revoke(self) -> None:
        self.running = False
        self.hub.tombstone_gc.set_enabled(False)
        self.timers.clear_all()

    # ------------------------------------------------------------------ session TTLs

    async def _session_task(self) -> None:
        while True:
            deadline = self.timers.next_deadline()
            changed = self._timers_changed
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await changed.wait()
            for session_id in self.timers.expire(self._clock()):
                self._log.throttled(
                    DEBUG,
                    "catalog:session-expired",
                    f"consul.state: Session {clip(session_id)} TTL expired",
                )
                request = SessionRequest(
                    SESSION_DESTROY, Session(id=session_id), datacenter=self.datacenter
                )
                await self._apply(MessageType.SESSION, request.to_wire(), "session invalidation")

    # ------------------------------------------------------------------ tombstones

    async def _tombstone_task(self) -> None:
        gc = self.hub.tombstone_gc
        while True:
            deadline = gc.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self.hub.wait_tombstone_hint()
            for index in gc.expire(self._clock()):
                request = TombstoneRequest(TOMBSTONE_REAP, index, datacenter=self.datacenter)
                await self._apply(MessageType.TOMBSTONE, request.to_wire(), "tombstone reap")

    # ------------------------------------------------------------------ reconciliation

    async def _reconcile_task(self) -> None:
        while True:
            await self.reconcile()
            next_full = self._clock() + self.reconcile_interval
            while True:
                event = self._member_event
                with trio.move_on_at(next_full):
                    await event.wait()
                if not event.is_set():
                    break  # time for the next full pass
                # Handled outside the deadline's scope: a write is never cut in half.
                self._member_event = trio.Event()
                pending, self._pending = self._pending, {}
                for member in pending.values():
                    await self._reconcile_one(member)

    async def reconcile(self) -> None:
        """A full reconciliation: every member, then the nodes serf no longer knows."""
        known = []
        for member in list(self.members()):
            known.append(member.name)
            await self._reconcile_one(member)
        await self._decide_all(reconcile_reaped(self.hub.store, known, **self._scope()))
        self.reconciled += 1

    async def _reconcile_one(self, member: Member) -> None:
        await self._decide_all(reconcile_member(self.hub.store, member, **self._scope()))

    def _scope(self) -> dict[str, str]:
        """Whose catalog the reconcile rules write: the keyword arguments they share."""
        return {"datacenter": self.datacenter, "local_node": self.node_name, "token": self.token}

    async def _decide_all(
        self, decisions: Iterable[CatalogWrite | ServerJoin | ServerLeave]
    ) -> None:
        for decision in decisions:
            await self._decide(decision)

    async def _decide(self, decision: CatalogWrite | ServerJoin | ServerLeave) -> None:
        if isinstance(decision, CatalogWrite):
            self._log.throttled(INFO, "catalog:reconcile", f"consul: {clip(decision.reason)}")
            request = decision.request
            if isinstance(request, RegisterRequest):
                await self._apply(MessageType.REGISTER, request.to_wire(), "reconcile")
            else:
                assert isinstance(request, DeregisterRequest)
                await self._apply(MessageType.DEREGISTER, request.to_wire(), "reconcile")
        elif self.on_server_change is not None:
            await self.on_server_change(decision)

    async def _apply(self, msg_type: MessageType, body: dict[str, Any], what: str) -> None:
        try:
            response = await self.applier.apply(msg_type, body)
        except ApplyError as exc:
            self._log.throttled(WARN, f"catalog:{what}", f"consul: {what} failed: {clip(exc)}")
            return
        if isinstance(response, Exception):
            self._log.throttled(
                WARN, f"catalog:{what}-refused", f"consul: {what} refused: {clip(response)}"
            )
