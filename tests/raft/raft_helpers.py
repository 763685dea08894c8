"""Helpers for driving single Raft cores in unit tests: a memory store that answers storage
operations at once (or on demand), and small accessors over outputs."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any, TypeVar

from raft_harness import SimDisk

from agentrpc.raft.actions import (
    DeleteEntries,
    Output,
    ReadEntries,
    SendRequest,
    SendResponse,
    SetTerm,
    SetVote,
    StoreEntries,
)
from agentrpc.raft.configuration import Configuration, Server
from agentrpc.raft.core import RaftNode, read_durable_state
from agentrpc.raft.timing import RaftConfig

T = TypeVar("T")


def address(node_id: str) -> str:
    return f"127.0.0.1:{8300 + int(node_id[1:])}"


def configuration(*ids: str) -> Configuration:
    return Configuration(tuple(Server(i, address(i)) for i in ids))


class Harness:
    """One core and its disk. ``pump()`` performs storage operations (unless ``hold``) and
    returns every output (storage operations included), until nothing new comes out."""

    def __init__(self, node_id: str = "n1", *, seed: int = 1, now: float = 0.0, **config: Any):
        self.id = node_id
        self.disk = SimDisk()
        self.now = now
        self.seed = seed
        self.config = RaftConfig(local_id=node_id, local_address=address(node_id), **config)
        self.node = RaftNode(self.config, now=now, rng=random.Random(seed))
        self.held: list[Output] = []
        self.hold = False

    def restart(self) -> None:
        durable = read_durable_state(self.disk, self.disk, None)
        self.node = RaftNode(
            self.config, now=self.now, rng=random.Random(self.seed), durable=durable
        )
        self.held = []

    def pump(self) -> list[Output]:
        out: list[Output] = []
        while True:
            outputs = self.node.take_outputs()
            if not outputs:
                return out
            for output in outputs:
                out.append(output)
                if isinstance(output, (StoreEntries, DeleteEntries, SetTerm, SetVote, ReadEntries)):
                    if self.hold:
                        self.held.append(output)
                    else:
                        self._perform(output)

    def _perform(self, op: Output) -> None:
        if isinstance(op, ReadEntries):
            self.node.entries_read(self.now, op.seq, self.disk.get_range(op.first, op.last))
        else:
            assert isinstance(op, (StoreEntries, DeleteEntries, SetTerm, SetVote))
            self.disk.apply(op)
            self.node.persisted(self.now, op.seq)

    def flush(self) -> list[Output]:
        """Perform the held storage operations, then pump."""
        held, self.held = self.held, []
        for op in held:
            self._perform(op)
        return self.pump()

    def tick(self, now: float) -> list[Output]:
        self.now = now
        self.node.tick(now)
        return self.pump()

    def run_timers(self, until: float, limit: int = 10_000) -> list[Output]:
        """Tick at every deadline up to ``until``."""
        out: list[Output] = []
        for _ in range(limit):
            deadline = self.node.next_deadline()
            if deadline is None or deadline > until:
                self.now = until
                return out
            out += self.tick(max(deadline, self.now))
        raise AssertionError("timers never settle")


def of_type(outputs: Iterable[object], kind: type[T]) -> list[T]:
    return [o for o in outputs if isinstance(o, kind)]


def requests(outputs: Iterable[object], kind: type[T]) -> list[tuple[SendRequest, T]]:
    return [(o, o.request) for o in of_type(outputs, SendRequest) if isinstance(o.request, kind)]


def responses(outputs: Iterable[object]) -> list[SendResponse]:
    return of_type(outputs, SendResponse)
