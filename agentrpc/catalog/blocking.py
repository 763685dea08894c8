"""Blocking queries (``blockingRPC`` of ``consul/rpc.go``), a thin Trio loop over the hub.

``MinQueryIndex`` 0 runs the query once. Otherwise the wait is MaxQueryTime clamped (600 s at
most, 300 s for 0) plus up to 1/16 of it as jitter (:func:`~agentrpc.catalog.rules.
blocking_wait_ns`); the query runs, and while its index is at most ``MinQueryIndex`` (and not
0), it waits on exactly the watch items that run read (:meth:`StateHub.watching`) and runs again
when one changes, or returns the same answer when the time is up. Every run sets the QueryMeta
first: on the leader ``LastContact`` 0 and ``KnownLeader`` true, on a follower the time since it
last heard from the leader and whether it knows one; ``RequireConsistent`` checks leadership
before each run.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

import trio

from .consensus import ConsensusFacts
from .constants import MAX_INT64
from .hub import StateHub
from .rules import blocking_wait_ns
from .structs import QueryMeta, QueryOptions
from .watch import WatchSet

__all__ = ["blocking_query", "query_meta"]

T = TypeVar("T")


def query_meta(facts: ConsensusFacts, now: float, index: int = 0) -> QueryMeta:
    """``setQueryMeta`` (with the run's index)."""
    if facts.is_leader():
        return QueryMeta(index, 0, True)
    contact = facts.last_contact()
    if contact is None:
        last_contact = MAX_INT64  # Go's time.Since(zero time) saturates
    else:
        last_contact = min(MAX_INT64, max(0, int((now - contact) * 1e9)))
    return QueryMeta(index, last_contact, facts.leader() != "")


async def blocking_query(
    hub: StateHub,
    facts: ConsensusFacts,
    options: QueryOptions,
    run: Callable[[WatchSet], tuple[int, T]],
    *,
    rng: random.Random,
    clock: Callable[[], float] = trio.current_time,
) -> tuple[QueryMeta, T]:
    """Run ``run`` (which returns its index and result and adds what it read to the watch set)
    until its index passes ``MinQueryIndex`` or the wait ends; the QueryMeta and the result."""
    deadline = None
    if options.min_query_index:
        deadline = clock() + blocking_wait_ns(options.max_query_time, rng.random()) / 1e9
    while True:
        now = clock()
        if options.require_consistent:
            await facts.verify_leader()
        ws = WatchSet()
        index, result = run(ws)
        meta = query_meta(facts, now, index)
        if deadline is None or not 0 < index <= options.min_query_index:
            return meta, result
        with hub.watching(ws) as changed, trio.move_on_at(deadline):
            await changed.wait()
        if not changed.is_set():
            return meta, result
