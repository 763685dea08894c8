"""The thin Trio engine that drives one sans-I/O :class:`~agentrpc.raft.core.RaftNode`.

Everything the protocol decides lives in the core; this module carries its outputs out
(``docs/raft.md``, "Driving the core"). :meth:`RaftEngine.run` owns one nursery with:

* the **ticker**: sleeps until the core's ``next_deadline`` (woken early when it moves);
* the **storage task**: performs the storage operations in order, in a worker thread through
  :class:`~agentrpc.raft.store_thread.StoreRunner`; operations that queue up while a batch is
  being written form the next batch (consecutive appends merged into one ``store_entries``),
  then ``persisted`` reports the batch. A failure is fatal (it ends the engine);
* the **applier**: the apply stream, in order, to the FSM: committed entries, snapshot
  restores (read in a worker thread), snapshots (captured on the loop, persisted by the FSM
  snapshot in a worker thread into the snapshot store);
* the **flusher**: client operations (:meth:`RaftEngine.apply` and the rest) reach the core
  at once, so each gets its log index, its error (``node is not the leader`` ...) and its
  place in the order right away, but the core's outputs are carried out by this task, once
  for every operation started since the last drain. Proposals that arrive together (say, the
  writers woken by one commit) thus share one ``store_entries`` and one AppendEntries per
  follower, as hashicorp/raft's leader loop groups what is waiting on its apply channel; a
  group reaching ``max_append_entries`` operations is drained at once, so none grows past
  what one AppendEntries carries. Any other drain (a response, a tick) takes the pending
  operations along too;
* per request: a task per single RPC (pooled connections), one :class:`Pipeline` task per
  peer for pipelined AppendEntries, a task per InstallSnapshot sent or received.

Inbound connections (byte 1 on the server port) are served by :meth:`handle_connection`, the
router's raft handler; their requests reach the core as :class:`InboundCall` tokens and the
core's ``SendResponse`` answers them (a follower's AppendEntries answer leaves only once its
entries are durable, in order; the connection goes on reading meanwhile).

Shutdown is cancellation of :meth:`run`'s caller: the tasks unwind, storage calls already in a
worker thread finish first (``StoreRunner`` never abandons one), waiting callers get
``raft is already shutdown``.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

import trio

from ..log_protocol import ERR, INFO, WARN, LogLike, NullLog, clip, first_leaf
from ..protocol.errors import ProtocolError
from .actions import (
    LEVEL_ERROR,
    LEVEL_WARN,
    Apply,
    DeleteEntries,
    LogLine,
    Output,
    ProposalFailed,
    ReadEntries,
    ReceiveSnapshot,
    RestoreSnapshot,
    SendRequest,
    SendResponse,
    SendSnapshot,
    SetTerm,
    SetVote,
    SnapshotMeta,
    StateChanged,
    StorageOp,
    StoreEntries,
    TakeSnapshot,
    TransferDone,
    VerifyDone,
)
from .configuration import Configuration, decode_configuration, encode_configuration
from .core import NodeState, RaftNode, read_durable_state
from .errors import ERR_RAFT_SHUTDOWN, ERR_SHORT_READ, RaftError
from .fsm import FSM, apply_entry
from .gomsgpack import DecodeError
from .log import LogEntry, LogType
from .snapshots import FileSnapshotMeta, FileSnapshotStore
from .store_api import (
    KEY_CURRENT_TERM,
    KEY_LAST_VOTE_CAND,
    KEY_LAST_VOTE_TERM,
    LogStore,
    StableStore,
)
from .store_thread import StoreRunner
from .timing import RaftConfig
from .transport import (
    InboundCall,
    Pipeline,
    RaftTransport,
    TransportLimits,
    serve_inbound,
)
from .wire import SNAPSHOT_CHUNK, InstallSnapshotRequest

__all__ = ["RaftEngine"]

_LEVELS: Final = {LEVEL_ERROR: ERR, LEVEL_WARN: WARN}
MAX_DRAIN_ROUNDS: Final = 10_000
_PEER_ERRORS: Final = (
    OSError,
    ValueError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    ProtocolError,
    DecodeError,
)
"""What a peer (or its absence) can cause on an outbound RPC: the request fails, nothing else."""


class _Waiter:
    __slots__ = ("error", "event", "result")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.result: object = None
        self.error: str | None = None

    def resolve(self, result: object, error: str | None = None) -> None:
        if not self.event.is_set():
            self.result, self.error = result, error
            self.event.set()


def _core_meta(meta: FileSnapshotMeta) -> SnapshotMeta:
    return SnapshotMeta(
        meta.id,
        meta.index,
        meta.term,
        decode_configuration(meta.configuration),
        meta.configuration_index,
        meta.size,
        meta.version,
    )


def _wake(
    waiters: list[tuple[int, trio.Event]], reached: int, stopped: bool
) -> list[tuple[int, trio.Event]]:
    """Set the events of the waiters whose index is reached; the others stay."""
    keep = []
    for index, event in waiters:
        if index <= reached or stopped:
            event.set()
        else:
            keep.append((index, event))
    return keep


class RaftEngine:
    """One Raft server: the core, its stores, its FSM and its transport, run by :meth:`run`."""

    def __init__(
        self,
        config: RaftConfig,
        *,
        logs: LogStore,
        stable: StableStore,
        snapshots: FileSnapshotStore,
        fsm: FSM,
        transport: RaftTransport,
        log: LogLike | None = None,
        runner: StoreRunner | None = None,
        rng: random.Random | None = None,
        inbound_limits: TransportLimits | None = None,
    ) -> None:
        self.config = config
        self.logs = logs
        self.stable = stable
        self.snapshots = snapshots
        self.fsm = fsm
        self.transport = transport
        self._log = log if log is not None else NullLog()
        self._runner = runner or StoreRunner()
        self._rng = rng or random.Random()
        self._inbound_limits = inbound_limits or transport.limits
        self._core: RaftNode | None = None
        self._nursery: trio.Nursery | None = None
        self._ops: deque[StorageOp] = deque()
        self._ops_ready = trio.Event()
        self._applies: deque[Apply | RestoreSnapshot | TakeSnapshot] = deque()
        self._applies_ready = trio.Event()
        self._wake = trio.Event()
        self._planned = math.inf
        self._waiters: dict[int, _Waiter] = {}
        self._pipelines: dict[str, Pipeline] = {}
        self._draining = False
        self._started = 0
        """Client operations started since the last drain (their outputs wait for one)."""
        self._flush = trio.Event()
        self._changed = trio.Event()
        self._stopped = False
        self.applied_index = 0
        self._applied_waiters: list[tuple[int, trio.Event]] = []
        self._snapshot_waiters: list[tuple[int, trio.Event]] = []

    # ------------------------------------------------------------------ running

    @property
    def core(self) -> RaftNode:
        if self._core is None:
            raise RaftError(ERR_RAFT_SHUTDOWN)
        return self._core

    async def run(
        self, *, task_status: trio.TaskStatus[RaftEngine] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Read the stores, restore the FSM from the newest snapshot, and run until cancelled."""
        newest = await self._runner.run(self.snapshots.list)
        meta = _core_meta(newest[0]) if newest else None
        durable = await self._runner.run(
            lambda: read_durable_state(
                self.logs, self.stable, meta, cache_bytes=self.config.entry_cache_bytes
            )
        )
        if meta is not None:
            await self._restore(meta.id)
            self.applied_index = meta.index
        self._core = RaftNode(self.config, now=trio.current_time(), rng=self._rng, durable=durable)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._ticker)
                nursery.start_soon(self._storage)
                nursery.start_soon(self._applier)
                nursery.start_soon(self._flusher)
                self._drain()
                task_status.started(self)
        finally:
            self._stopped = True
            self._nursery = None
            self._core.shutdown(trio.current_time())  # the role reads SHUTDOWN from now on
            for output in self._core.take_outputs():
                if isinstance(output, SendResponse) and isinstance(output.token, InboundCall):
                    output.token.answer(output.error, output.response)
            for waiter in self._waiters.values():
                waiter.resolve(None, ERR_RAFT_SHUTDOWN)
            self._waiters.clear()
            self._changed.set()
            self._wake_applied()
            with trio.CancelScope(shield=True):
                await self.transport.aclose()

    # ------------------------------------------------------------------ the public face

    @property
    def state(self) -> NodeState:
        return self.core.state

    @property
    def is_leader(self) -> bool:
        return self._core is not None and self._core.is_leader

    @property
    def leader_ready(self) -> bool:
        """This node leads and its state machine has applied its term's first entry, so its
        local state is as new as any committed write (what a leader's reads need)."""
        core = self._core
        return (
            core is not None and core.is_leader and self.applied_index >= core.term_start_index > 0
        )

    @property
    def leader_address(self) -> str:
        return self.core.leader_address

    @property
    def leader_id(self) -> str:
        return self.core.leader_id

    def stats(self) -> dict[str, str]:
        """hashicorp/raft's ``Stats()``: keys and formats as Go's."""
        return self.core.stats(trio.current_time())

    def bootstrap(self, configuration: Configuration) -> None:
        """``BootstrapCluster``: raises ``bootstrap only works on new clusters`` otherwise."""
        self.core.bootstrap(trio.current_time(), configuration)
        self._drain()

    async def wait_applied(self, index: int) -> None:
        """Returns once the FSM has applied through ``index`` (or at shutdown)."""
        if self.applied_index >= index or self._stopped:
            return
        event = trio.Event()
        self._applied_waiters.append((index, event))
        await event.wait()

    async def wait_snapshot(self, index: int) -> None:
        """Returns once this node holds a snapshot through at least ``index`` (taken or
        received), or at shutdown."""
        if self._snapshot_index() >= index or self._stopped:
            return
        event = trio.Event()
        self._snapshot_waiters.append((index, event))
        await event.wait()

    def _snapshot_index(self) -> int:
        meta = self._core.snapshot if self._core is not None else None
        return meta.index if meta is not None else 0

    def _wake_applied(self) -> None:
        self._applied_waiters = _wake(self._applied_waiters, self.applied_index, self._stopped)
        self._snapshot_waiters = _wake(
            self._snapshot_waiters, self._snapshot_index(), self._stopped
        )

    async def wait_changed(self) -> None:
        """Returns at the next role or leader change (or shutdown)."""
        await self._changed.wait()

    async def apply(self, data: bytes) -> object:
        """``Apply``: the FSM's result once committed and applied here; :class:`RaftError`
        with the core's text otherwise (``node is not the leader`` ...)."""
        return await self._call(lambda now: self.core.propose(now, data))

    async def barrier(self) -> object:
        return await self._call(lambda now: self.core.barrier(now))

    async def add_voter(self, server_id: str, address: str) -> object:
        """``AddVoter``: the index of the committed configuration entry."""
        return await self._call(lambda now: self.core.add_voter(now, server_id, address))

    async def remove_server(self, server_id: str) -> object:
        return await self._call(lambda now: self.core.remove_server(now, server_id))

    async def transfer_leadership(self, target_id: str | None = None) -> object:
        return await self._call(lambda now: self.core.transfer_leadership(now, target_id))

    async def verify_leader(self) -> object:
        return await self._call(lambda now: self.core.verify_leader(now))

    def request_snapshot(self) -> None:
        self.core.request_snapshot(trio.current_time())
        self._drain()

    async def _call(self, start: Callable[[float], int]) -> object:
        """Start an operation and wait for its end (bound it with the caller's own
        ``trio.fail_after``/``move_on_after``).

        The operation is in the core (and in its log) when ``start`` returns; its outputs
        leave with the next drain, which the flusher runs once for every operation started
        meanwhile (at once when ``max_append_entries`` of them are waiting). A caller
        cancelled from then on abandons the wait, not the operation, as before."""
        if self._stopped or self._nursery is None:
            raise RaftError(ERR_RAFT_SHUTDOWN)
        ident = start(trio.current_time())
        waiter = self._waiters[ident] = _Waiter()
        self._started += 1
        if self._started >= self.config.max_append_entries:
            self._drain()
        else:
            self._flush.set()
        try:
            await waiter.event.wait()
        finally:
            self._waiters.pop(ident, None)
        if waiter.error is not None:
            raise RaftError(waiter.error)
        return waiter.result

    async def handle_connection(self, stream: trio.abc.Stream, peer: str) -> None:
        """The server port's byte-1 handler: serve one inbound Raft connection."""
        await serve_inbound(stream, peer, self._accept, self._inbound_limits)

    # ------------------------------------------------------------------ inputs

    def _accept(self, call: InboundCall) -> None:
        core = self._core
        if core is None or self._stopped:
            call.answer(ERR_RAFT_SHUTDOWN, None)
            return
        core.handle_request(trio.current_time(), call, call.request)
        self._drain()

    def _drain(self) -> None:
        """Carry out the core's outputs until it has none; then re-plan the ticker."""
        core = self._core
        if self._draining or core is None:
            return
        self._draining = True
        self._started = 0
        try:
            for _ in range(MAX_DRAIN_ROUNDS):
                outputs = core.take_outputs()
                if not outputs:
                    break
                for output in outputs:
                    self._output(core, output)
        finally:
            self._draining = False
        deadline = core.next_deadline()
        planned = math.inf if deadline is None else deadline
        if planned != self._planned:
            self._planned = planned
            self._wake.set()

    def _output(self, core: RaftNode, output: Output) -> None:
        nursery = self._nursery
        if isinstance(output, (StoreEntries, DeleteEntries, SetTerm, SetVote, ReadEntries)):
            self._ops.append(output)
            self._ops_ready.set()
        elif isinstance(output, SendResponse):
            token = output.token
            assert isinstance(token, InboundCall)
            token.answer(output.error, output.response)
        elif isinstance(output, SendRequest):
            if nursery is None:
                return
            if output.pipeline:
                self._pipelined(output)
            else:
                nursery.start_soon(self._rpc, output)
        elif isinstance(output, (Apply, RestoreSnapshot, TakeSnapshot)):
            self._applies.append(output)
            self._applies_ready.set()
        elif isinstance(output, ReceiveSnapshot):
            if nursery is not None:
                nursery.start_soon(self._receive_snapshot, output)
        elif isinstance(output, SendSnapshot):
            if nursery is not None:
                nursery.start_soon(self._send_snapshot, output)
        elif isinstance(output, (ProposalFailed,)):
            waiter = self._waiters.get(output.proposal)
            if waiter is not None:
                waiter.resolve(None, output.error)
        elif isinstance(output, (TransferDone, VerifyDone)):
            ident = output.transfer if isinstance(output, TransferDone) else output.verify
            waiter = self._waiters.get(ident)
            if waiter is not None:
                waiter.resolve(None, output.error)
        elif isinstance(output, StateChanged):
            changed, self._changed = self._changed, trio.Event()
            changed.set()
            self._log.info(
                f"raft: {output.state} term={output.term} leader={clip(output.leader_address)}"
            )
        elif isinstance(output, LogLine):
            self._log.throttled(
                _LEVELS.get(output.level, INFO), f"raft:{output.message[:40]}", output.message
            )

    # ------------------------------------------------------------------ grouping

    async def _flusher(self) -> None:
        """One drain for every group of client operations (see :meth:`_call`): woken by the
        first operation of a group, it runs after the tasks already runnable, so the
        operations they start join the same group."""
        while True:
            await self._flush.wait()
            self._flush = trio.Event()
            if self._started:
                self._drain()

    # ------------------------------------------------------------------ timer

    async def _ticker(self) -> None:
        while True:
            self._wake = trio.Event()
            with trio.move_on_at(self._planned):
                await self._wake.wait()
            now = trio.current_time()
            if now >= self._planned:
                self.core.tick(now)
                self._planned = math.inf
                self._drain()

    # ------------------------------------------------------------------ storage

    async def _storage(self) -> None:
        while True:
            await self._ops_ready.wait()
            self._ops_ready = trio.Event()
            batch = list(self._ops)
            self._ops.clear()
            if not batch:
                continue
            reads = await self._runner.run(self._perform, batch)
            now = trio.current_time()
            core = self.core
            core.persisted(now, batch[-1].seq)
            for seq, entries in reads:
                core.entries_read(now, seq, entries)
            self._drain()

    def _perform(self, batch: Sequence[StorageOp]) -> list[tuple[int, list[LogEntry]]]:
        """In a worker thread: the batch in order, consecutive appends as one write."""
        reads: list[tuple[int, list[LogEntry]]] = []
        appends: list[LogEntry] = []
        for op in batch:
            if not isinstance(op, StoreEntries) and appends:
                self.logs.store_entries(appends)
                appends = []
            if isinstance(op, StoreEntries):
                appends.extend(op.entries)
            elif isinstance(op, DeleteEntries):
                self.logs.delete_range(op.first, op.last)
            elif isinstance(op, SetTerm):
                self.stable.set_uint64(KEY_CURRENT_TERM, op.term)
            elif isinstance(op, SetVote):
                self.stable.set_bytes(KEY_LAST_VOTE_CAND, op.candidate)
                self.stable.set_uint64(KEY_LAST_VOTE_TERM, op.term)
            else:
                reads.append((op.seq, self.logs.get_range(op.first, op.last)))
        if appends:
            self.logs.store_entries(appends)
        return reads

    # ------------------------------------------------------------------ the apply stream

    async def _applier(self) -> None:
        while True:
            await self._applies_ready.wait()
            self._applies_ready = trio.Event()
            while self._applies:
                item = self._applies.popleft()
                if isinstance(item, Apply):
                    self._apply(item)
                elif isinstance(item, RestoreSnapshot):
                    await self._restore(item.meta.id)
                    self.applied_index = item.meta.index
                else:
                    await self._take_snapshot(item)
                self._wake_applied()

    def _apply(self, item: Apply) -> None:
        for entry, proposal in zip(item.entries, item.proposals, strict=True):
            result = apply_entry(self.fsm, entry)
            self.applied_index = entry.index
            if proposal is not None:
                waiter = self._waiters.get(proposal)
                if waiter is not None:
                    waiter.resolve(result if entry.type == LogType.COMMAND else entry.index)

    async def _restore(self, snapshot_id: str) -> None:
        def restore() -> None:
            _, handle = self.snapshots.open(snapshot_id)
            with handle:
                self.fsm.restore(handle)

        await self._runner.run(restore)

    async def _take_snapshot(self, item: TakeSnapshot) -> None:
        captured = self.fsm.snapshot()
        configuration = encode_configuration(item.configuration)

        def persist() -> FileSnapshotMeta:
            try:
                with self.snapshots.create(
                    item.index, item.term, configuration, item.configuration_index
                ) as sink:
                    captured.persist(sink)
                    return sink.close()
            finally:
                captured.release()

        try:
            meta = await self._runner.run(persist)
        except (OSError, ValueError) as exc:
            self._log.error(f"raft: failed to persist a snapshot: {exc}")
            self.core.snapshot_take_failed(trio.current_time())
        else:
            self.core.snapshot_taken(trio.current_time(), _core_meta(meta))
        self._drain()
        self._wake_applied()

    # ------------------------------------------------------------------ snapshots on the wire

    async def _receive_snapshot(self, output: ReceiveSnapshot) -> None:
        token = output.token
        assert isinstance(token, InboundCall)
        source = token.snapshot
        meta = output.meta
        if source is None:
            self.core.snapshot_failed(trio.current_time(), token, ERR_SHORT_READ)
            self._drain()
            return
        configuration = encode_configuration(meta.configuration)

        def store() -> FileSnapshotMeta | None:
            with self.snapshots.create(
                meta.index, meta.term, configuration, meta.configuration_index
            ) as sink:
                while chunk := source.read(SNAPSHOT_CHUNK):
                    sink.write(chunk)
                if sink.size != meta.size:
                    return None  # the context manager cancels the sink
                return sink.close()

        try:
            stored = await self._runner.run(store)
        except (OSError, ValueError) as exc:
            self.core.snapshot_failed(trio.current_time(), token, clip(str(exc)))
        else:
            if stored is None:
                self.core.snapshot_failed(trio.current_time(), token, ERR_SHORT_READ)
            else:
                self.core.snapshot_received(trio.current_time(), token, stored.id)
        self._drain()
        self._wake_applied()

    async def _send_snapshot(self, output: SendSnapshot) -> None:
        try:
            _, handle = await self._runner.run(self.snapshots.open, output.snapshot_id)
        except (OSError, ValueError) as exc:
            self._failed(output.request_id, clip(str(exc)))
            return
        try:

            async def chunk() -> bytes:
                return await self._runner.run(handle.read, SNAPSHOT_CHUNK)

            request: InstallSnapshotRequest = output.request
            result = await self.transport.install_snapshot(output.address, request, chunk)
        except _PEER_ERRORS as exc:
            self.transport.log_failure(output.address, exc)
            self._failed(output.request_id, clip(repr(exc)))
            return
        finally:
            await self._runner.run(handle.close)
        self._answered(output.request_id, result.error, result.response)

    # ------------------------------------------------------------------ requests

    def _failed(self, request_id: int, error: str) -> None:
        core = self._core
        if core is not None:
            core.request_failed(trio.current_time(), request_id, error or "connection closed")
            self._drain()

    def _answered(self, request_id: int, error: str, response: Any) -> None:
        core = self._core
        if core is None:
            return
        if error:
            core.request_failed(trio.current_time(), request_id, error)
        else:
            core.handle_response(trio.current_time(), request_id, response)
        self._drain()

    async def _rpc(self, output: SendRequest) -> None:
        try:
            result = await self.transport.call(output.address, output.request)
        except _PEER_ERRORS as exc:
            self.transport.log_failure(output.address, exc)
            self._failed(output.request_id, clip(repr(exc)))
            return
        self._answered(output.request_id, result.error, result.response)

    def _pipelined(self, output: SendRequest) -> None:
        pipeline = self._pipelines.get(output.peer_id)
        if pipeline is None or pipeline.address != output.address:
            if pipeline is not None:
                pipeline.close()
            pipeline = Pipeline(self.transport, output.address)
            self._pipelines[output.peer_id] = pipeline
            assert self._nursery is not None
            self._nursery.start_soon(self._run_pipeline, output.peer_id, pipeline)
        if not pipeline.send(output.request_id, output.request):
            self._nursery_fail(output.request_id, "append pipeline full")

    def _nursery_fail(self, request_id: int, error: str) -> None:
        # Called while draining: the failure is fed back to the core after this drain.
        assert self._nursery is not None
        self._nursery.start_soon(self._fail_later, request_id, error)

    async def _fail_later(self, request_id: int, error: str) -> None:
        self._failed(request_id, error)

    async def _run_pipeline(self, peer_id: str, pipeline: Pipeline) -> None:
        def on_response(request_id: int, result: Any) -> None:
            self._answered(request_id, result.error, result.response)

        error = "append pipeline closed"
        try:
            await pipeline.run(on_response)
        except* _PEER_ERRORS as group:
            exc = first_leaf(group)
            self.transport.log_failure(pipeline.address, exc)
            error = clip(repr(exc))
        finally:
            if self._pipelines.get(peer_id) is pipeline:
                del self._pipelines[peer_id]
            pipeline.close()
        failed = list(pipeline.outstanding) + pipeline.drain_queued()
        pipeline.outstanding.clear()
        for request_id in failed:
            self._failed(request_id, error)
