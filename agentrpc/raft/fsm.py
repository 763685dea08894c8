"""The replicated state machine's interface (hashicorp/raft ``fsm.go``, shaped for Python), pure.

The engine feeds the core's apply stream (:class:`~agentrpc.raft.actions.Apply`,
:class:`~agentrpc.raft.actions.RestoreSnapshot`, :class:`~agentrpc.raft.actions.TakeSnapshot`)
to an :class:`FSM`, one consumer, in order:

* ``apply(entry)`` for every committed **command** entry (:func:`apply_entry` does the
  dispatch: noops, barriers and configuration entries do not reach the machine), returning the
  result the proposer gets back;
* ``snapshot()`` when the core asks for a snapshot: it must capture the state at that point
  quickly and return an :class:`FSMSnapshot`, whose ``persist`` may then run in a worker thread
  while later entries are applied (Go's ``FSMSnapshot.Persist``), followed by ``release``;
* ``restore(source)`` to replace the whole state from a snapshot's bytes.

Issue 12's state store implements this; :mod:`.kv_fsm` is a small one for the layer's tests.
"""

from __future__ import annotations

from typing import Protocol

from .log import LogEntry, LogType


class SnapshotSink(Protocol):
    """Where a snapshot's bytes go (a file being written, a buffer)."""

    def write(self, data: bytes, /) -> object: ...


class SnapshotSource(Protocol):
    """Where a snapshot's bytes come from."""

    def read(self, size: int = -1, /) -> bytes: ...


class FSMSnapshot(Protocol):
    def persist(self, sink: SnapshotSink) -> None:
        """Write the captured state to ``sink`` (may block; runs off the event loop)."""
        ...

    def release(self) -> None:
        """The snapshot is done with (persisted or abandoned)."""
        ...


class FSM(Protocol):
    def apply(self, entry: LogEntry) -> object:
        """Apply a committed command; the result goes to the proposer."""
        ...

    def snapshot(self) -> FSMSnapshot:
        """Capture the current state (fast; the bytes are written by ``persist``)."""
        ...

    def restore(self, source: SnapshotSource) -> None:
        """Replace the state with the snapshot read from ``source``."""
        ...


class BytesSnapshot:
    """An :class:`FSMSnapshot` of state already serialized."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def persist(self, sink: SnapshotSink) -> None:
        sink.write(self.data)

    def release(self) -> None:
        self.data = b""


def apply_entry(fsm: FSM, entry: LogEntry) -> object:
    """Apply one committed entry the way Go's ``runFSM`` does: commands go to the machine
    (their result is returned), every other type is only an index (None)."""
    if entry.type == LogType.COMMAND:
        return fsm.apply(entry)
    return None
