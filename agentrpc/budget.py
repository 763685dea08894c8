"""Byte budgets for what the agent queues to send: per connection, and for the whole agent.

Every listener bounds what it holds for a peer in *bytes*: an item count alone lets one item be
megabytes. A :class:`ConnectionBudget` counts the bytes that one connection (or one yamux
stream, or one byte-0 stream) has accepted from its producers and not yet handed to the kernel;
every connection's budget also draws on the agent-wide :class:`SharedBudget`, so that the
connection caps cannot multiply the per-connection bound.

Rules (they are what keep a slow reader from slowing anyone else):

- A producer waits in :meth:`ConnectionBudget.reserve` while its connection already holds bytes
  and the new ones would pass the connection's limit. One item larger than the limit still goes
  through when nothing else is queued, so a big reply is never refused, only serialised.
- It also waits while the agent-wide total would pass the shared limit, with one exception: a
  connection holding nothing may always queue one item of at most ``reserve`` bytes. A good
  client whose queue is empty is therefore answered at once even when stalled readers have
  filled the agent budget. So the sum stays below ``shared limit + connections x reserve``
  (and an item above ``reserve`` waits for room in the shared budget).
- Waiting is how backpressure works: the producer is the connection's reader, so a waiting
  reader stops reading its socket and TCP pushes back on the peer.

:meth:`ConnectionBudget.release` gives bytes back once the writer handed them to the kernel;
:meth:`ConnectionBudget.close` gives back whatever a closed connection still held.
"""

from __future__ import annotations

from typing import Final

import trio

DEFAULT_CONNECTION_BYTES: Final = 1 << 20
"""Bytes one connection may hold queued beyond what the kernel holds (1 MiB)."""
DEFAULT_AGENT_BYTES: Final = 64 << 20
"""Bytes all connections of one agent may hold queued together (64 MiB)."""
DEFAULT_RESERVE: Final = 64 << 10
"""What an empty connection may always queue, whatever the shared budget says (64 KiB)."""


class SharedBudget:
    """The agent-wide pool of queued bytes that every :class:`ConnectionBudget` draws on."""

    __slots__ = ("_lot", "limit", "peak", "reserve", "used", "waits")

    def __init__(self, limit: int = DEFAULT_AGENT_BYTES, *, reserve: int = DEFAULT_RESERVE) -> None:
        if limit < 1 or reserve < 0:
            raise ValueError("a budget needs a positive limit and a non-negative reserve")
        self.limit = limit
        self.reserve = reserve
        self.used = 0
        self.peak = 0
        self.waits = 0
        """How often a producer had to wait for the shared budget (for ``stats``)."""
        self._lot = trio.lowlevel.ParkingLot()

    def set_limit(self, limit: int) -> None:
        """Change the limit at run time (``reload``); waiters re-check at once."""
        if limit < 1:
            raise ValueError("a budget needs a positive limit")
        self.limit = limit
        self._lot.unpark_all()

    def _take(self, size: int) -> None:
        self.used += size
        if self.used > self.peak:
            self.peak = self.used

    def _give(self, size: int) -> None:
        self.used -= size
        if self._lot:
            self._lot.unpark_all()


class ConnectionBudget:
    """The queued bytes of one connection, bounded by ``limit`` and by a shared budget."""

    __slots__ = ("_closed", "_lot", "_shared", "limit", "used")

    def __init__(self, limit: int, shared: SharedBudget | None = None) -> None:
        if limit < 1:
            raise ValueError("a budget needs a positive limit")
        self.limit = limit
        self.used = 0
        self._shared = shared
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False

    def _fits(self, size: int) -> bool:
        if self.used and self.used + size > self.limit:
            return False
        shared = self._shared
        if shared is None or shared.used + size <= shared.limit:
            return True
        return not self.used and size <= shared.reserve

    def try_reserve(self, size: int) -> bool:
        """Take ``size`` bytes if they fit now; never waits."""
        if self._closed or not self._fits(size):
            return False
        self._take(size)
        return True

    async def reserve(self, size: int) -> None:
        """Wait until ``size`` more bytes fit, then take them.

        Raises ``trio.ClosedResourceError`` once the budget is closed (the connection is gone).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        shared = self._shared
        while not self._fits(size):
            if self._closed:
                raise trio.ClosedResourceError("the connection is closed")
            if shared is not None and shared.used + size > shared.limit:
                shared.waits += 1
                await shared._lot.park()
            else:
                await self._lot.park()
        if self._closed:
            raise trio.ClosedResourceError("the connection is closed")
        self._take(size)

    def _take(self, size: int) -> None:
        self.used += size
        if self._shared is not None:
            self._shared._take(size)

    def release(self, size: int) -> None:
        """Give back ``size`` bytes that were handed to the kernel (or thrown away)."""
        size = min(size, self.used)
        self.used -= size
        if self._shared is not None:
            self._shared._give(size)
        if self._lot:
            self._lot.unpark_all()

    def close(self) -> None:
        """Give everything back; waiting and later producers get ``ClosedResourceError``."""
        self._closed = True
        self.release(self.used)
        self._lot.unpark_all()
        if self._shared is not None:
            self._shared._lot.unpark_all()
