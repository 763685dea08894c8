"""The membership pool interface the agent's commands act on, and the single-node pool.

A pool is one gossip membership (the agent's LAN pool, and its WAN pool in server mode). The
gossip implementation fills this interface in; until a pool has a gossip transport it is a
:class:`LocalPool`, which knows only the local node and refuses to join honestly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from ..protocol.bodies import Member
from ..protocol.constants import STATUS_ALIVE, STATUS_LEFT


class MembershipPool(Protocol):
    """What the agent needs of a pool (LAN or WAN)."""

    @property
    def name(self) -> str:
        """``lan`` or ``wan``."""
        ...

    @property
    def version(self) -> int:
        """Changes whenever the member list changes (lets callers cache encodings)."""
        ...

    def members(self) -> list[Member]: ...

    async def join(self, addresses: Sequence[str]) -> tuple[int, str]:
        """Contact every address; return (how many answered, the error or "")."""
        ...

    async def force_leave(self, node: str) -> str:
        """Move a failed node to left; returns the error or ""."""
        ...

    async def leave(self) -> str:
        """Leave the pool gracefully; returns the error or ""."""
        ...

    def stats(self) -> dict[str, str]:
        """The reference's ``serf_lan`` / ``serf_wan`` keys, all values strings."""
        ...


class LocalPool:
    """A pool that holds the local node alone (no gossip transport)."""

    def __init__(self, name: str, local: Member) -> None:
        self._name = name
        self._local = local
        self._version = 1

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int:
        return self._version

    @property
    def local(self) -> Member:
        return self._local

    def set_local(self, member: Member) -> None:
        """Replace what the pool says of the local node (tags changed, say)."""
        self._local = member
        self._version += 1

    def members(self) -> list[Member]:
        return [self._local]

    async def join(self, addresses: Sequence[str]) -> tuple[int, str]:
        if not addresses:
            return 0, ""
        listed = ", ".join(addresses)
        return 0, (
            f"Failed to join {listed}: the {self._name.upper()} pool has no gossip transport "
            "in this agent, so no peer can be contacted"
        )

    async def force_leave(self, node: str) -> str:
        return ""  # only the local node is known, and it is not failed

    async def leave(self) -> str:
        if self._local.status != STATUS_LEFT:
            self._local = replace(self._local, status=STATUS_LEFT)
            self._version += 1
        return ""

    def stats(self) -> dict[str, str]:
        alive = 1 if self._local.status == STATUS_ALIVE else 0
        left = 1 if self._local.status == STATUS_LEFT else 0
        return {
            "encrypted": "false",
            "event_queue": "0",
            "event_time": "1",
            "failed": "0",
            "health_score": "0",
            "intent_queue": "0",
            "left": str(left),
            "member_time": str(self._version),
            "members": str(alive + left),
            "query_queue": "0",
            "query_time": "1",
        }
