"""Raft log entries as hashicorp/raft 1.1.2 defines them (``log.go``): the one home of
``LogType`` values and the ``LogEntry`` record shared by the core, the codec and the stores."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class LogType(enum.IntEnum):
    """``raft.LogType`` (a uint8 on the wire). Values must never be renumbered."""

    COMMAND = 0
    NOOP = 1
    ADD_PEER_DEPRECATED = 2
    REMOVE_PEER_DEPRECATED = 3
    BARRIER = 4
    CONFIGURATION = 5


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One entry of the replicated log (``raft.Log``: Index, Term, Type, Data, Extensions)."""

    index: int
    term: int
    type: int
    """A :class:`LogType` value; kept as an int so that an unknown type from a newer peer
    survives storage and replication unchanged."""
    data: bytes = b""
    extensions: bytes = b""
