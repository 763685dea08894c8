"""Calling the Raft stores from Trio: every call in a worker thread, never on the event loop.

The stores (:mod:`agentrpc.raft.sqlite_store`, :mod:`agentrpc.raft.snapshots`, and the memory
store, which is cheap but thread-safe so the engine needs one code path) block on the disk.
:class:`StoreRunner` runs each call through ``trio.to_thread.run_sync`` under its own
``CapacityLimiter``, so store calls never starve (or are starved by) trio's default thread
pool, and so that several writes can be in flight at once: that is what lets the SQLite store's
group commit share one fsync among them (a limiter of 1 would serialize every write behind the
previous fsync). The store, not the thread, owns the connections: the SQLite store is safe to
call from any thread.

Cancellation: a call is never abandoned (``abandon_on_cancel=False``). A caller cancelled
while its call runs waits for the call and gets its result (or its exception); the
cancellation lands at the caller's next checkpoint. A write that was started is thus known to
be whole and durable, or failed, before the engine's nursery unwinds, and no thread outlives
the task that owns it. A caller cancelled before its call starts runs nothing.

:class:`InlineRunner` is for a server with nothing on disk (``--dev``, no ``data_dir``): the
memory store never blocks, so its calls run on the event loop after a checkpoint. That keeps
such a server deterministic under trio's autojump clock (a task waiting for a worker thread
counts as blocked, so virtual time would jump past every timeout while a thread ran). Its
snapshots are small files in a temporary directory, written inline too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar, TypeVarTuple, Unpack

import trio

__all__ = ["DEFAULT_STORE_THREADS", "InlineRunner", "StoreRunner"]

DEFAULT_STORE_THREADS: Final = 32
"""Store calls that may run at once (each holds a worker thread while it waits)."""

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class StoreRunner:
    """Runs blocking store calls in worker threads, at most ``threads`` at once."""

    def __init__(self, threads: int = DEFAULT_STORE_THREADS) -> None:
        self.limiter = trio.CapacityLimiter(threads)

    async def run(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        """``fn(*args)`` in a worker thread; its result, or what it raised."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)


class InlineRunner(StoreRunner):
    """Runs store calls on the event loop, each after a checkpoint (see the module text)."""

    def __init__(self) -> None:
        super().__init__(1)

    async def run(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        """``fn(*args)`` here and now, after a checkpoint; its result, or what it raised."""
        await trio.lowlevel.checkpoint()
        return fn(*args)
