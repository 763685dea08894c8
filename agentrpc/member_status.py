"""A cluster member's status, as serf defines it: the one home of the status strings.

Serf's membership layer (:mod:`agentrpc.gossip.serf`) decides a member's status; the agent RPC
reports it, byte for byte, in the ``Status`` field of a Member (``members-lan``,
``members-wan``), and the membership layer above gossip reads it. All of them import the
strings from here, so the gossip rules need nothing of the agent RPC and the RPC nothing of the
gossip rules. Pure constants: no I/O, no imports of the project.

:class:`MemberStatus` is the typed form serf's state uses; each member is equal to (and hashes
as) its plain string, and the ``STATUS_*`` names are those plain strings, for code and wire
values that want a ``str`` and nothing else.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "STATUS_ALIVE",
    "STATUS_FAILED",
    "STATUS_LEAVING",
    "STATUS_LEFT",
    "STATUS_NONE",
    "MemberStatus",
]

STATUS_NONE: Final = "none"
"""Not a member (yet): serf's ``StatusNone``."""
STATUS_ALIVE: Final = "alive"
STATUS_LEAVING: Final = "leaving"
"""A leave intent was seen; memberlist has not announced the node gone yet."""
STATUS_LEFT: Final = "left"
"""Left gracefully (or was forced out after failing)."""
STATUS_FAILED: Final = "failed"
"""Memberlist declared the node dead without a leave intent."""


class MemberStatus(enum.StrEnum):
    """A member's status as serf reports it (the ``Status`` of the agent RPC's Member)."""

    NONE = STATUS_NONE
    ALIVE = STATUS_ALIVE
    LEAVING = STATUS_LEAVING
    LEFT = STATUS_LEFT
    FAILED = STATUS_FAILED
