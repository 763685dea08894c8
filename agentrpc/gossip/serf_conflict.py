"""Serf's name conflict handling, sans-I/O (serf.go ``handleNodeConflict``,
``resolveNodeConflict``).

Memberlist reports a conflict when an alive message gives a known name another address. For
another node's name serf only warns. For our own name it runs the ``_serf_conflict`` query
(payload: our name); every other node answers with the member it knows by that name, and we
count how many answers give our address and port. With a majority (``responses // 2 + 1``) we
stay; in the minority we shut down. No answer at all is a minority of zero.
"""

from __future__ import annotations

from agentrpc.gossip.messages import GossipDecodeError
from agentrpc.gossip.serf_messages import SerfMessageType, decode_conflict_response
from agentrpc.hostport import unmapped_ip
from agentrpc.log_protocol import ERR, INFO, WARN, clip

__all__ = ["ConflictVote", "conflict_line", "same_ip"]

Line = tuple[int, str]


def same_ip(a: bytes, b: bytes) -> bool:
    """Go's ``net.IP.Equal``: an IPv4 address equals its 16-byte mapped form."""
    first, second = unmapped_ip(a), unmapped_ip(b)
    return first is not None and first == second


def _text(addr: bytes) -> str:
    ip = unmapped_ip(addr)
    return str(ip) if ip is not None else clip(addr.hex())


def conflict_line(
    local_name: str,
    name: str,
    existing: tuple[bytes, int],
    other: tuple[bytes, int],
    *,
    resolution: bool = True,
) -> Line:
    """What serf logs when memberlist reports a conflict over ``name``."""
    if name != local_name:
        return (
            WARN,
            f"Name conflict for '{clip(name)}' both {_text(existing[0])}:{existing[1]} and "
            f"{_text(other[0])}:{other[1]} are claiming",
        )
    return (
        ERR,
        f"Node name conflicts with another node at {_text(other[0])}:{other[1]}. "
        f"Names must be unique! (Resolution enabled: {'true' if resolution else 'false'})",
    )


class ConflictVote:
    """Counts the answers to our ``_serf_conflict`` query."""

    __slots__ = ("_addr", "_port", "matching", "responses")

    def __init__(self, local_addr: bytes, local_port: int) -> None:
        self._addr = local_addr
        self._port = local_port
        self.responses = 0
        self.matching = 0

    def add(self, payload: bytes) -> Line | None:
        """One response; the error line serf logs for one it cannot read."""
        if not payload or payload[0] != SerfMessageType.CONFLICT_RESPONSE:
            return ERR, f"Invalid conflict query response type: {clip(repr(payload))}"
        try:
            member = decode_conflict_response(payload)
        except GossipDecodeError as exc:
            return ERR, f"Failed to decode conflict query response: {clip(exc)}"
        self.responses += 1
        if member is not None and same_ip(member.addr, self._addr) and member.port == self._port:
            self.matching += 1
        return None

    @property
    def majority(self) -> int:
        return self.responses // 2 + 1

    def outcome(self) -> tuple[bool, Line]:
        """Whether we keep the name, and serf's line saying so."""
        if self.matching >= self.majority:
            return True, (
                INFO,
                f"majority in name conflict resolution [{self.matching} / {self.responses}]",
            )
        return False, (
            WARN,
            f"minority in name conflict resolution, quitting [{self.matching} / {self.responses}]",
        )
