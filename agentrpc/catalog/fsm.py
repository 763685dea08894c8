"""Consul's FSM, sans-I/O: Raft log entries applied to the state store, snapshots, restores.

**Commands.** A Raft command's data is one message-type byte then the request, msgpack-encoded
as Consul 0.7 encodes it (go-msgpack's default handle: old-spec raw strings, ``[]byte`` as raw;
:func:`encode_command`). :meth:`ConsulFSM.apply` returns what the reference's FSM returns: None,
a bool (cas, delete-cas, lock, unlock), a session ID (session create) or an :class:`FSMError`
*value* (a refused write: every replica refuses it the same way, so it is the answer, not a
failure). A type with the ``IgnoreUnknownTypeFlag`` (128) that we do not know is skipped; one
without it raises :class:`UnknownMessageType`, and bytes that do not decode raise
:class:`CommandDecodeError`: the reference panics on both, and an engine must stop applying
rather than let replicas diverge.

The FSM has the shape of :class:`agentrpc.raft.fsm.FSM`: ``apply(entry)``, ``snapshot()``
(a quick capture whose ``persist(sink)`` writes the bytes, possibly in a worker thread, and
``release()``), ``restore(source)`` (read as a stream).

**Snapshots** (``consulSnapshot.Persist``): a msgpack header ``{LastIndex}`` then records, each
a type byte and a msgpack struct: per node a ``RegisterRequest`` for the node (its ID and Meta
as ``ID`` and ``NodeMeta``, as 0.7.3+ writes them), one per service and one per check; then
sessions, KV entries, and tombstones (as DirEntries with Key and ModifyIndex, "for historical
reasons"). Coordinates follow the nodes, one
``CoordinateBatchUpdate`` record per node holding a one-element ``structs.Coordinates`` list, as
the reference writes them; a restore inserts them as they come and raises the coordinates
index to the header's LastIndex. Records of tables we do not keep (ACLs, prepared queries)
from a reference snapshot are carried through unchanged. Ours add, where a Go
reader ignores them (go-msgpack skips unknown fields): the table indexes in the header
(``Indexes``) and each node's RaftIndex in its records, so :meth:`ConsulFSM.restore` rebuilds
the very same store. A reference snapshot restores as the reference does (catalog records get
the header's LastIndex).

Time: lock-delays need "now"; the FSM reads it from the ``clock`` it was given.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final

import msgpack

from ..protocol.msgpack_wire import TEXT_ERRORS
from ..raft.fsm import SnapshotSink, SnapshotSource
from ..raft.log import LogEntry, LogType
from .constants import (
    IGNORE_UNKNOWN_TYPE_FLAG,
    KVS_CAS,
    KVS_DELETE,
    KVS_DELETE_CAS,
    KVS_DELETE_TREE,
    KVS_LOCK,
    KVS_SET,
    KVS_UNLOCK,
    SESSION_CREATE,
    SESSION_DESTROY,
    TOMBSTONE_REAP,
    MessageType,
)
from .state_store import (
    StateError,
    StateStore,
    StoreCapture,
    node_coordinates_from_wire,
)
from .structs import (
    DeregisterRequest,
    DirEntry,
    KVSRequest,
    Node,
    RegisterRequest,
    Session,
    SessionRequest,
    TombstoneRequest,
    Wire,
    WireDecodeError,
    as_map,
    get_uint,
)
from .watch import Changes

__all__ = [
    "CommandDecodeError",
    "ConsulFSM",
    "ConsulSnapshot",
    "FSMError",
    "SnapshotError",
    "UnknownMessageType",
    "decode_command",
    "encode_command",
]

MAX_SNAPSHOT_RECORD: Final = 64 * 1024 * 1024
"""The largest single record a restore buffers (a snapshot itself is read as a stream)."""

_OPAQUE_TYPES: Final = (
    MessageType.ACL,
    MessageType.PREPARED_QUERY,
)
"""Snapshot records of tables this store does not keep: carried through as they came."""


class FSMError(Exception):
    """A write the state store refused: returned (not raised) by :meth:`ConsulFSM.apply` as
    the command's response, its text the reference's."""

    def __eq__(self, other: object) -> bool:
        return type(other) is FSMError and str(other) == str(self)

    def __hash__(self) -> int:
        return hash(str(self))


class UnknownMessageType(Exception):
    """A command of a type we do not know, without the ignore flag (the reference panics)."""


class CommandDecodeError(Exception):
    """A command whose body does not decode (the reference panics)."""


class SnapshotError(Exception):
    """A snapshot that cannot be restored (the store is left as it was)."""


def _packer() -> Any:
    return msgpack.Packer(use_bin_type=False, unicode_errors=TEXT_ERRORS)


def encode_command(msg_type: int, body: Wire) -> bytes:
    """A Raft command's data: the type byte then the body, as go-msgpack's default handle
    writes it (raw strings, ``[]byte`` as raw)."""
    packed: bytes = _packer().pack(body)
    return bytes([msg_type]) + packed


def decode_command(data: bytes) -> tuple[int, bool, Any]:
    """(message type without the flag, ignore-if-unknown, decoded body)."""
    if not data:
        raise CommandDecodeError("empty command")
    msg_type = data[0]
    ignore = bool(msg_type & IGNORE_UNKNOWN_TYPE_FLAG)
    try:
        body = msgpack.unpackb(
            data[1:], raw=False, unicode_errors=TEXT_ERRORS, strict_map_key=False
        )
    except (ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.UnpackException) as exc:
        raise CommandDecodeError(f"failed to decode request: {exc}") from None
    return msg_type & ~IGNORE_UNKNOWN_TYPE_FLAG, ignore, body


class ConsulFSM:
    """The state store behind Raft: :meth:`apply`, :meth:`snapshot`, :meth:`restore`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.store = StateStore()
        self.last_index = 0
        """The index of the last entry applied (or of the restored snapshot)."""
        self.ignored = 0
        """Commands of unknown types skipped thanks to the ignore flag."""
        self._opaque: list[tuple[int, Any]] = []
        self._restored_changes = False

    def take_changes(self) -> Changes:
        """What applies (and restores) changed since the last call."""
        changes = self.store.take_changes()
        if self._restored_changes:
            changes.everything = True
            self._restored_changes = False
        return changes

    # ------------------------------------------------------------------ apply

    def apply(self, entry: LogEntry) -> Any:
        """Apply one committed entry; non-command entries change nothing."""
        if entry.index > self.last_index:
            self.last_index = entry.index
        if entry.type != LogType.COMMAND:
            return None
        msg_type, ignore, body = decode_command(entry.data)
        try:
            return self._dispatch(msg_type, ignore, body, entry.index)
        except WireDecodeError as exc:
            raise CommandDecodeError(f"failed to decode request: {exc}") from None

    def _dispatch(self, msg_type: int, ignore: bool, body: Any, index: int) -> Any:
        store = self.store
        try:
            if msg_type == MessageType.REGISTER:
                store.ensure_registration(index, RegisterRequest.from_wire(body), self._clock())
                return None
            if msg_type == MessageType.DEREGISTER:
                return self._deregister(DeregisterRequest.from_wire(body), index)
            if msg_type == MessageType.KVS:
                return self._kvs(KVSRequest.from_wire(body), index)
            if msg_type == MessageType.SESSION:
                return self._session(SessionRequest.from_wire(body), index)
            if msg_type == MessageType.TOMBSTONE:
                request = TombstoneRequest.from_wire(body)
                if request.op != TOMBSTONE_REAP:
                    return FSMError(f"Invalid Tombstone operation '{request.op}'")
                store.reap_tombstones(request.reap_index)
                return None
            if msg_type == MessageType.COORDINATE_BATCH_UPDATE:
                # Sent with the ignore flag, so that servers without the table skip it.
                store.coordinate_batch_update(index, node_coordinates_from_wire(body))
                return None
        except StateError as exc:
            return FSMError(str(exc))
        if msg_type in (MessageType.ACL, MessageType.PREPARED_QUERY, MessageType.TXN):
            return FSMError(f"{MessageType(msg_type).name} requests are not supported")
        if ignore:
            self.ignored += 1
            return None
        raise UnknownMessageType(f"failed to apply request: unknown message type {msg_type}")

    def _deregister(self, request: DeregisterRequest, index: int) -> None:
        now = self._clock()
        if request.service_id:
            self.store.delete_service(index, request.node, request.service_id, now)
        elif request.check_id:
            self.store.delete_check(index, request.node, request.check_id, now)
        else:
            self.store.delete_node(index, request.node, now)

    def _kvs(self, request: KVSRequest, index: int) -> Any:
        store = self.store
        op, entry = request.op, request.dir_ent
        if op == KVS_SET:
            store.kvs_set(index, entry)
            return None
        if op == KVS_DELETE:
            store.kvs_delete(index, entry.key)
            return None
        if op == KVS_DELETE_CAS:
            return store.kvs_delete_cas(index, entry.modify_index, entry.key)
        if op == KVS_DELETE_TREE:
            store.kvs_delete_tree(index, entry.key)
            return None
        if op == KVS_CAS:
            return store.kvs_set_cas(index, entry)
        if op == KVS_LOCK:
            return store.kvs_lock(index, entry)
        if op == KVS_UNLOCK:
            return store.kvs_unlock(index, entry)
        return FSMError(f"Invalid KVS operation '{op}'")

    def _session(self, request: SessionRequest, index: int) -> Any:
        if request.op == SESSION_CREATE:
            self.store.session_create(index, request.session)
            return request.session.id
        if request.op == SESSION_DESTROY:
            self.store.session_destroy(index, request.session.id, self._clock())
            return None
        return FSMError(f"Invalid Session operation '{request.op}'")

    # ------------------------------------------------------------------ snapshot

    def snapshot(self) -> ConsulSnapshot:
        """Capture the store now (shallow copies); :meth:`ConsulSnapshot.persist` writes it
        in Consul's format, and may do so in a worker thread while later entries apply."""
        return ConsulSnapshot(self.store.capture(), list(self._opaque))

    def snapshot_bytes(self) -> bytes:
        """The whole snapshot at once (tests, and small stores)."""
        sink = io.BytesIO()
        snapshot = self.snapshot()
        try:
            snapshot.persist(sink)
        finally:
            snapshot.release()
        return sink.getvalue()

    # ------------------------------------------------------------------ restore

    def restore(self, source: SnapshotSource) -> None:
        """Replace the store with the snapshot read from ``source``; :class:`SnapshotError`
        (and the store untouched) when it does not parse."""
        unpacker = msgpack.Unpacker(
            source,
            raw=False,
            unicode_errors=TEXT_ERRORS,
            strict_map_key=False,
            max_buffer_size=MAX_SNAPSHOT_RECORD,
        )
        try:
            store, opaque, last_index = _restore_records(unpacker)
        except (WireDecodeError, ValueError, msgpack.exceptions.UnpackException) as exc:
            raise SnapshotError(f"failed to restore snapshot: {exc}") from None
        except (StopIteration, msgpack.exceptions.OutOfData):
            raise SnapshotError("failed to restore snapshot: truncated") from None
        self.store = store
        self._opaque = opaque
        self.last_index = max(self.last_index, last_index, store.last_index())
        self._restored_changes = True

    def restore_bytes(self, data: bytes) -> None:
        self.restore(io.BytesIO(data))

    def view(self) -> dict[str, Any]:
        """The store's view plus the records carried through (for equality in tests)."""
        return {**self.store.view(), "opaque": list(self._opaque)}


class ConsulSnapshot:
    """A captured store (``consulSnapshot``): :meth:`persist` writes Consul's snapshot
    format to a sink, record by record."""

    __slots__ = ("_capture", "_opaque")

    def __init__(self, capture: StoreCapture | None, opaque: list[tuple[int, Any]]) -> None:
        self._capture = capture
        self._opaque = opaque

    def persist(self, sink: SnapshotSink) -> None:
        capture = self._capture
        if capture is None:
            raise SnapshotError("the snapshot was released")
        pack = _packer().pack
        write = sink.write
        header = {"Indexes": dict(sorted(capture.indexes.items())), "LastIndex": capture.last_index}
        write(pack(header))
        register = bytes([MessageType.REGISTER])
        for node, services, checks in capture.iter_nodes():
            request = RegisterRequest(
                node=node.node,
                address=node.address,
                tagged_addresses=node.tagged_addresses,
                id=node.id,
                node_meta=node.meta,
                create_index=node.create_index,
                modify_index=node.modify_index,
            )
            write(register + pack(request.to_wire()))
            for service in services:
                request.service = service
                write(register + pack(request.to_wire()))
            request.service = None
            for check in checks:
                request.check = check
                write(register + pack(request.to_wire()))
        coordinate_type = bytes([MessageType.COORDINATE_BATCH_UPDATE])
        for coordinate in capture.iter_coordinates():
            write(coordinate_type + pack([coordinate.to_wire()]))
        session_type = bytes([MessageType.SESSION])
        for session in capture.iter_sessions():
            write(session_type + pack(session.to_wire()))
        self._write_opaque(write, MessageType.ACL)
        kvs_type = bytes([MessageType.KVS])
        for entry in capture.iter_kvs():
            write(kvs_type + pack(entry.to_wire()))
        tombstone_type = bytes([MessageType.TOMBSTONE])
        for key, index in capture.iter_tombstones():
            write(tombstone_type + pack(DirEntry(key, modify_index=index).to_wire()))
        self._write_opaque(write, MessageType.PREPARED_QUERY)

    def _write_opaque(self, write: Callable[[bytes], object], msg_type: int) -> None:
        pack = _packer().pack
        for kind, record in self._opaque:
            if kind == msg_type:
                write(bytes([kind]) + pack(record))

    def release(self) -> None:
        self._capture = None
        self._opaque = []


def _restore_records(unpacker: Any) -> tuple[StateStore, list[tuple[int, Any]], int]:
    header = as_map(unpacker.unpack(), "snapshotHeader")
    last_index = get_uint(header, "LastIndex", "snapshotHeader")
    exact = header.get("Indexes")
    preserve = type(exact) is dict
    store = StateStore()
    opaque: list[tuple[int, Any]] = []
    while True:
        kind = unpacker.read_bytes(1)
        if not kind:
            break
        record = unpacker.unpack()
        msg_type = kind[0]
        if msg_type == MessageType.REGISTER:
            _restore_registration(store, RegisterRequest.from_wire(record), last_index, preserve)
        elif msg_type == MessageType.KVS:
            store.restore_kv(DirEntry.from_wire(record))
        elif msg_type == MessageType.TOMBSTONE:
            stone = DirEntry.from_wire(record)
            store.restore_tombstone(stone.key, stone.modify_index)
        elif msg_type == MessageType.SESSION:
            store.restore_session(Session.from_wire(record))
        elif msg_type == MessageType.COORDINATE_BATCH_UPDATE:
            for coordinate in node_coordinates_from_wire(record):
                store.restore_coordinate(coordinate, last_index)
        elif msg_type in _OPAQUE_TYPES:
            opaque.append((msg_type, record))
        else:
            raise ValueError(f"Unrecognized msg type: [{msg_type}]")
    if preserve:
        assert type(exact) is dict
        store.restore_indexes(
            {str(table): get_uint(exact, table, "snapshotHeader.Indexes") for table in exact}
        )
    return store, opaque, last_index


def _restore_registration(
    store: StateStore, request: RegisterRequest, last_index: int, preserve: bool
) -> None:
    """``StateRestore.Registration``: a reference snapshot gives every catalog record the
    header's LastIndex; ours carries each record's own indexes."""
    if preserve and request.create_index is not None and request.modify_index is not None:
        create, modify = request.create_index, request.modify_index
    else:
        create = modify = last_index
    node = Node(
        request.node,
        request.address,
        request.tagged_addresses,
        create,
        modify,
        id=request.id,
        meta=request.node_meta,
    )
    store.restore_node(node)
    if request.service is not None:
        service = request.service
        if not preserve:
            service = _reindexed(service, last_index)
        store.restore_service(request.node, service)
    checks = ([request.check] if request.check is not None else []) + list(request.checks or ())
    for check in checks:
        store.restore_check(check if preserve else _reindexed(check, last_index))


def _reindexed(record: Any, index: int) -> Any:
    return replace(record, create_index=index, modify_index=index)
