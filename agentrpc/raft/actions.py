"""What the sans-I/O Raft core (:mod:`.core`) asks of its engine: the outputs of
:meth:`RaftNode.take_outputs <agentrpc.raft.core.RaftNode.take_outputs>`, in four families.

**Storage operations** carry a ``seq`` (increasing by one per operation). The engine performs
them *in order* (it may merge neighbours into one transaction: group commit) and then reports the
highest ``seq`` that is durable with ``persisted(seq)``; a :class:`ReadEntries` is answered with
``entries_read(seq, entries)`` instead, and reads what the store holds after every earlier
operation. A failed storage operation is fatal for the node (Go panics).

**Messages** (:class:`SendRequest`, :class:`SendSnapshot`, :class:`SendResponse`) are only
handed out once everything they depend on is durable: a vote once it is persisted, an
AppendEntries success once its entries are, anything carrying a term once that term is. The
engine sends them as soon as it gets them. A connection's responses must be written in the order
its requests arrived; the core hands out the responses to one peer's pipelined AppendEntries in
that order, and an engine that lets anything else share a connection keeps a small per-
connection queue. Every request gets at most one answer through ``handle_response`` or
``request_failed``; the core gives up on its own after the RPC timeout.

**The apply stream** (:class:`Apply`, :class:`RestoreSnapshot`, :class:`TakeSnapshot`) must be
processed in order, by one consumer: the state machine sees committed entries in log order, a
restore where it belongs between them, and a snapshot request exactly when the machine has
applied through its index.

**Notices** (:class:`ProposalFailed`, :class:`TransferDone`, :class:`VerifyDone`,
:class:`StateChanged`, :class:`LogLine`) tell the engine about its callers' requests and the
node's role; they need no answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .configuration import Configuration
from .log import LogEntry
from .timing import SNAPSHOT_VERSION
from .wire import InstallSnapshotRequest, Request, Response


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """What the core knows of a snapshot (Go's ``SnapshotMeta``); ``id`` names it in the
    engine's snapshot store."""

    id: str
    index: int
    term: int
    configuration: Configuration
    configuration_index: int
    size: int = 0
    version: int = SNAPSHOT_VERSION


# ------------------------------------------------------------------------------ storage


@dataclass(frozen=True, slots=True)
class StoreEntries:
    """Append (or overwrite) ``entries`` in the log store (``store_entries``)."""

    seq: int
    entries: tuple[LogEntry, ...]


@dataclass(frozen=True, slots=True)
class DeleteEntries:
    """Delete the log entries ``first..last`` inclusive (``delete_range``): a conflicting
    suffix, or a prefix a snapshot made redundant."""

    seq: int
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class SetTerm:
    """``set_uint64(KEY_CURRENT_TERM, term)``."""

    seq: int
    term: int


@dataclass(frozen=True, slots=True)
class SetVote:
    """``set_uint64(KEY_LAST_VOTE_TERM, term)`` and ``set_bytes(KEY_LAST_VOTE_CAND,
    candidate)``, as one durable step."""

    seq: int
    term: int
    candidate: bytes


@dataclass(frozen=True, slots=True)
class ReadEntries:
    """Read the entries ``first..last`` (those stored) and answer ``entries_read(seq, ...)``."""

    seq: int
    first: int
    last: int


StorageOp = StoreEntries | DeleteEntries | SetTerm | SetVote | ReadEntries


# ------------------------------------------------------------------------------ messages


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Send ``request`` to the peer; answer with ``handle_response(request_id, ...)`` or
    ``request_failed(request_id, ...)``. ``pipeline`` marks replication AppendEntries that may
    be written back to back on the peer's pipeline connection (in the order handed out)."""

    request_id: int
    peer_id: str
    address: str
    request: Request
    pipeline: bool = False


@dataclass(frozen=True, slots=True)
class SendSnapshot:
    """Send ``request`` followed by the ``request.size`` bytes of snapshot ``snapshot_id`` on a
    connection of its own (closed after the response)."""

    request_id: int
    peer_id: str
    address: str
    request: InstallSnapshotRequest
    snapshot_id: str


@dataclass(frozen=True, slots=True)
class SendResponse:
    """The answer to the request the engine handed in with ``token``: the error string and
    the response struct (``None``: msgpack nil)."""

    token: object
    error: str
    response: Response | None


@dataclass(frozen=True, slots=True)
class ReceiveSnapshot:
    """Store the ``meta.size`` snapshot bytes that follow the request ``token`` as a snapshot
    with this metadata, then call ``snapshot_received(token, snapshot_id)`` (or
    ``snapshot_failed(token, error)``, e.g. ``short read``). Do not restore the state machine:
    a :class:`RestoreSnapshot` follows if the snapshot is still useful."""

    token: object
    meta: SnapshotMeta


# ------------------------------------------------------------------------------ apply stream


@dataclass(frozen=True, slots=True)
class Apply:
    """Committed entries, in log order, for the state machine. ``proposals[i]`` is the id
    ``propose`` (or a membership change) returned for ``entries[i]`` on this node, or None:
    resolve it with the machine's result (commands) or with the index (everything else)."""

    entries: tuple[LogEntry, ...]
    proposals: tuple[int | None, ...]


@dataclass(frozen=True, slots=True)
class RestoreSnapshot:
    """Replace the state machine's state with snapshot ``meta.id``."""

    meta: SnapshotMeta


@dataclass(frozen=True, slots=True)
class TakeSnapshot:
    """The state machine has now applied through ``index``: snapshot it with this metadata,
    then call ``snapshot_taken(meta)`` (or ``snapshot_take_failed()``)."""

    index: int
    term: int
    configuration: Configuration
    configuration_index: int


# ------------------------------------------------------------------------------ notices


@dataclass(frozen=True, slots=True)
class ProposalFailed:
    """Proposal ``proposal`` ended without a result. ``node is not the leader`` and
    ``leadership transfer in progress`` mean it was never written; ``leadership lost while
    committing log`` means it may still commit, ``snapshot restored while committing log`` that
    it may have been applied (a snapshot covering it replaced the state machine)."""

    proposal: int
    error: str


@dataclass(frozen=True, slots=True)
class TransferDone:
    """Leadership transfer ``transfer`` ended (``error`` None: the target was told to run)."""

    transfer: int
    error: str | None


@dataclass(frozen=True, slots=True)
class VerifyDone:
    """``verify_leader`` ``verify`` ended: None when a quorum still follows this leader."""

    verify: int
    error: str | None


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The node's role or the leader it knows changed."""

    state: str
    term: int
    leader_address: str
    leader_id: str


@dataclass(frozen=True, slots=True)
class LogLine:
    """A line for the node's log (texts as hashicorp/raft logs them)."""

    level: str
    message: str


LEVEL_INFO: Final = "INFO"
LEVEL_WARN: Final = "WARN"
LEVEL_ERROR: Final = "ERROR"

Output = (
    StoreEntries
    | DeleteEntries
    | SetTerm
    | SetVote
    | ReadEntries
    | SendRequest
    | SendSnapshot
    | SendResponse
    | ReceiveSnapshot
    | Apply
    | RestoreSnapshot
    | TakeSnapshot
    | ProposalFailed
    | TransferDone
    | VerifyDone
    | StateChanged
    | LogLine
)
