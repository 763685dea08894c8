"""Raft snapshots as files: ``<dir>/snapshots/<term>-<index>-<ms>/{meta.json,state.bin}``.

The layout follows hashicorp/raft's ``FileSnapshotStore`` (a directory per snapshot, named by
term, index and creation time in milliseconds, holding ``meta.json`` and ``state.bin``), with
these choices of ours:

* **Checksum: SHA-256** of ``state.bin`` (Go uses CRC-64/ECMA). The stdlib has no CRC-64 and
  one in Python would run at a few MB/s; ``hashlib.sha256`` runs at about 1 GB/s here (SHA-NI),
  faster than the disk, and catches every corruption rather than most. ``meta.json`` carries
  its own SHA-256 too (``MetaSHA256``, over the canonical JSON of the other fields), so a
  flipped digit in an index or a size is caught as surely as one in the state.
* **Crash safety.** A snapshot is written under ``<name>.tmp/``: the state, then the meta,
  each fsynced, then the temporary directory is fsynced, renamed to ``<name>`` and the parent
  fsynced. So a snapshot directory without the suffix is whole; a crash leaves at most a
  ``.tmp`` directory, which the next :class:`FileSnapshotStore` removes when it opens. Reaping
  renames a snapshot to ``<name>.reaping.tmp`` before removing it, so a crash mid-removal
  leaves a temporary directory too, never a half snapshot under a snapshot's name.
* **Verification.** :meth:`FileSnapshotStore.list` returns only snapshots whose meta verifies
  (JSON, fields, ``MetaSHA256``, name, version), whose ``state.bin`` has the recorded size, and
  whose state checksum verified (once per snapshot and store: a snapshot never changes after
  its rename, and the result is kept by inode, size and mtime); every snapshot skipped is
  reported with its reason (:meth:`FileSnapshotStore.scan`, logged throttled by
  :meth:`FileSnapshotStore.list`). :meth:`FileSnapshotStore.open` verifies the checksum again
  before handing out the reader.
* **Retention**: the ``retain`` newest valid snapshots (2 by default, at least 1) are kept.
  Older ones, and damaged ones older than the oldest kept, are removed after each new snapshot
  and when the store opens. A damaged snapshot newer than that is left for inspection (and
  skipped).

Blocking file I/O, no trio: the engine calls these through ``trio.to_thread.run_sync``. A sink
is used by one thread at a time; the store itself is thread-safe. Sizes: ``meta.json`` is read
only up to :data:`MAX_META_BYTES`; a sink refuses to grow past its ``size_limit`` (pass the
``Size`` an InstallSnapshot declared, so that a peer cannot fill the disk beyond it).
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from ..log_protocol import WARN, LogLike, NullLog, clip
from .durable_files import PRIVATE_FILE_MODE, fsync_dir, make_private_dir
from .store_common import MAX_UINT64, StoreCorrupt, StoreError, check_index
from .timing import SNAPSHOT_VERSION, SNAPSHOT_VERSION_MAX, SNAPSHOT_VERSION_MIN

__all__ = [
    "DEFAULT_RETAIN",
    "MAX_META_BYTES",
    "META_FILE",
    "SNAPSHOTS_DIR",
    "STATE_FILE",
    "TMP_SUFFIX",
    "FileSnapshotStore",
    "FileSnapshotMeta",
    "SnapshotSink",
    "SnapshotTooLarge",
]

SNAPSHOTS_DIR: Final = "snapshots"
META_FILE: Final = "meta.json"
STATE_FILE: Final = "state.bin"
TMP_SUFFIX: Final = ".tmp"
_REAPING_SUFFIX: Final = ".reaping" + TMP_SUFFIX
DEFAULT_RETAIN: Final = 2
MAX_META_BYTES: Final = 1024 * 1024
"""``meta.json`` is small (the configuration is its largest part); anything larger is damage."""
_WRITE_BUFFER: Final = 1024 * 1024
_READ_CHUNK: Final = 1024 * 1024
_NAME: Final = re.compile(r"([0-9]{1,20})-([0-9]{1,20})-([0-9]{1,20})")
_NAME_ATTEMPTS: Final = 1000
"""Milliseconds tried past ``now`` for a name not yet taken (many snapshots in one ms)."""


class SnapshotTooLarge(StoreError):
    """A sink was written past its ``size_limit``."""


@dataclass(frozen=True, slots=True)
class FileSnapshotMeta:
    """What ``meta.json`` records of one snapshot (hashicorp/raft's ``fileSnapshotMeta``: its
    ``SnapshotMeta`` and a checksum). The configuration stays encoded: the engine decodes it
    into the core's :class:`agentrpc.raft.actions.SnapshotMeta`."""

    id: str
    index: int
    term: int
    configuration: bytes
    """The configuration as of ``configuration_index``, as ``EncodeConfiguration`` wrote it."""
    configuration_index: int
    size: int
    """Bytes in ``state.bin``."""
    checksum: str
    """SHA-256 of ``state.bin``, hex."""
    version: int = SNAPSHOT_VERSION


def _name_key(name: str) -> tuple[int, int, int] | None:
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    term, index, ms = (int(part) for part in match.groups())
    return (term, index, ms)


def _meta_fields(meta: FileSnapshotMeta) -> dict[str, object]:
    return {
        "Version": meta.version,
        "ID": meta.id,
        "Index": meta.index,
        "Term": meta.term,
        "Configuration": base64.b64encode(meta.configuration).decode("ascii"),
        "ConfigurationIndex": meta.configuration_index,
        "Size": meta.size,
        "SHA256": meta.checksum,
    }


def _canonical(fields: dict[str, object]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def _encode_meta(meta: FileSnapshotMeta) -> bytes:
    fields = _meta_fields(meta)
    fields["MetaSHA256"] = hashlib.sha256(_canonical(fields)).hexdigest()
    return json.dumps(fields, sort_keys=True, indent=1).encode() + b"\n"


def _uint(fields: dict[str, object], key: str) -> int:
    value = fields.get(key)
    if type(value) is not int or not 0 <= value <= MAX_UINT64:
        raise ValueError(f"{key} is not a uint64")
    return value


def _decode_meta(raw: bytes, name: str) -> FileSnapshotMeta:
    """The meta of snapshot ``name`` from its ``meta.json``; ``ValueError`` saying what is
    wrong."""
    try:
        fields = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"meta.json is not JSON ({clip(exc)})") from None
    if not isinstance(fields, dict):
        raise ValueError("meta.json is not a JSON object")
    stored = fields.pop("MetaSHA256", None)
    if not isinstance(stored, str) or hashlib.sha256(_canonical(fields)).hexdigest() != stored:
        raise ValueError("meta.json checksum mismatch")
    version = fields.get("Version")
    if type(version) is not int or not SNAPSHOT_VERSION_MIN <= version <= SNAPSHOT_VERSION_MAX:
        raise ValueError(f"unsupported snapshot version {clip(version)}")
    config = fields.get("Configuration")
    checksum = fields.get("SHA256")
    if not isinstance(config, str) or not isinstance(checksum, str):
        raise ValueError("meta.json lacks Configuration or SHA256")
    try:
        configuration = base64.b64decode(config, validate=True)
    except binascii.Error:
        raise ValueError("Configuration is not base64") from None
    meta = FileSnapshotMeta(
        id=str(fields.get("ID")),
        index=_uint(fields, "Index"),
        term=_uint(fields, "Term"),
        configuration=configuration,
        configuration_index=_uint(fields, "ConfigurationIndex"),
        size=_uint(fields, "Size"),
        checksum=checksum,
        version=version,
    )
    key = _name_key(name)
    if meta.id != name or key is None or key[:2] != (meta.term, meta.index):
        raise ValueError(f"meta.json describes {clip(meta.id)}, not {name}")
    return meta


def _hash_file(handle: BinaryIO) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := handle.read(_READ_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


class FileSnapshotStore:
    """Snapshots under ``<base>/snapshots/`` (created 0o700 if missing). Opening removes
    leftover temporary directories and reaps beyond ``retain``."""

    def __init__(
        self,
        base: str | os.PathLike[str],
        retain: int = DEFAULT_RETAIN,
        *,
        log: LogLike | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if retain < 1:
            raise ValueError("must retain at least one snapshot")
        self.retain = retain
        self.path = make_private_dir(Path(base) / SNAPSHOTS_DIR)
        self._log = log if log is not None else NullLog()
        self._clock = clock
        self._lock = threading.Lock()
        self._verified: dict[str, tuple[int, int, int]] = {}
        """Snapshot name -> (inode, size, mtime_ns) of a ``state.bin`` whose checksum held."""
        self._remove_temporaries()
        self.reap()

    # -- creating --------------------------------------------------------------------------

    def create(
        self,
        index: int,
        term: int,
        configuration: bytes,
        configuration_index: int,
        *,
        size_limit: int | None = None,
    ) -> SnapshotSink:
        """A sink for a new snapshot of the state as of ``index`` (of ``term``); write it,
        then :meth:`SnapshotSink.close` makes it durable (or :meth:`SnapshotSink.cancel`)."""
        check_index(index)
        check_index(term, "term")
        check_index(configuration_index, "configuration_index")
        if type(configuration) is not bytes:
            raise TypeError("configuration must be bytes")
        ms = int(self._clock() * 1000)
        for attempt in range(_NAME_ATTEMPTS):
            name = f"{term}-{index}-{ms + attempt}"
            temporary = self.path / (name + TMP_SUFFIX)
            if (self.path / name).exists():
                continue
            try:
                temporary.mkdir(mode=0o700)
            except FileExistsError:
                continue
            break
        else:
            raise StoreError(f"no free snapshot name for term {term} index {index}")
        self._log.info(f"raft snapshots: creating {name}")
        try:
            return SnapshotSink(self, name, temporary, index, term, configuration,
                                configuration_index, size_limit)  # fmt: skip
        except OSError as exc:
            shutil.rmtree(temporary, ignore_errors=True)
            raise StoreError(f"cannot create snapshot {name}: {exc}") from exc

    # -- listing and opening ---------------------------------------------------------------

    def scan(self) -> tuple[builtins.list[FileSnapshotMeta], builtins.list[str]]:
        """Every valid snapshot, newest first, and a line for each entry of the directory that
        was skipped (temporary directories are not listed and not reported)."""
        with self._lock:
            return self._scan()

    def list(self) -> builtins.list[FileSnapshotMeta]:
        """The valid snapshots, newest first, at most ``retain`` of them (as Go's ``List``);
        skipped ones are logged (throttled, once a second per snapshot)."""
        found, problems = self.scan()
        for problem in problems:
            self._log.throttled(WARN, f"raft-snapshot:{problem[:60]}", problem)
        return found[: self.retain]

    def open(self, snapshot_id: str) -> tuple[FileSnapshotMeta, BinaryIO]:
        """The meta of snapshot ``snapshot_id`` and its state, read from the start, after
        checking its checksum. The caller closes the reader. :class:`StoreError` when there is
        no such snapshot, :class:`StoreCorrupt` when it does not verify."""
        if _name_key(snapshot_id) is None:
            raise StoreError(f"no snapshot {clip(snapshot_id)}")
        directory = self.path / snapshot_id
        if not directory.is_dir():
            raise StoreError(f"no snapshot {snapshot_id}")
        try:
            meta = _decode_meta(self._read_meta(directory), snapshot_id)
        except (OSError, ValueError) as exc:
            raise StoreCorrupt(f"snapshot {snapshot_id}: {exc}") from exc
        try:
            handle = open(directory / STATE_FILE, "rb")  # noqa: SIM115 (returned to the caller)
        except OSError as exc:
            raise StoreCorrupt(f"snapshot {snapshot_id}: cannot open its state: {exc}") from exc
        try:
            checksum, size = _hash_file(handle)
            if size != meta.size or checksum != meta.checksum:
                raise StoreCorrupt(f"snapshot {snapshot_id}: state checksum mismatch")
            handle.seek(0)
        except BaseException:
            handle.close()
            raise
        return meta, handle

    # -- reaping ---------------------------------------------------------------------------

    def reap(self) -> None:
        """Remove valid snapshots beyond the ``retain`` newest, and damaged ones older than
        the oldest kept."""
        with self._lock:
            found, _ = self._scan()
            if len(found) < self.retain:
                return
            oldest_kept = found[self.retain - 1]
            keep_key = (oldest_kept.term, oldest_kept.index, _ms(oldest_kept.id))
            valid = {meta.id for meta in found}
            doomed = [meta.id for meta in found[self.retain :]]
            for entry in self._entries():
                key = _name_key(entry.name)
                if key is not None and key < keep_key and entry.name not in valid:
                    doomed.append(entry.name)
            for name in doomed:
                self._remove(name)

    def _remove(self, name: str) -> None:
        self._log.info(f"raft snapshots: reaping {name}")
        self._verified.pop(name, None)
        doomed = self.path / (name + _REAPING_SUFFIX)
        try:
            os.rename(self.path / name, doomed)
        except OSError as exc:
            self._log.error(f"raft snapshots: cannot reap {name}: {exc}")
            return
        shutil.rmtree(doomed, ignore_errors=True)
        fsync_dir(self.path)

    def _remove_temporaries(self) -> None:
        for entry in self._entries():
            if entry.name.endswith(TMP_SUFFIX):
                self._log.info(f"raft snapshots: removing unfinished {clip(entry.name)}")
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
        fsync_dir(self.path)

    # -- internals -------------------------------------------------------------------------

    def _entries(self) -> builtins.list[os.DirEntry[str]]:
        with os.scandir(self.path) as entries:
            return builtins.list(entries)

    @staticmethod
    def _read_meta(directory: Path) -> bytes:
        with open(directory / META_FILE, "rb") as handle:
            raw = handle.read(MAX_META_BYTES + 1)
        if len(raw) > MAX_META_BYTES:
            raise ValueError(f"meta.json is larger than {MAX_META_BYTES} bytes")
        return raw

    def _scan(self) -> tuple[builtins.list[FileSnapshotMeta], builtins.list[str]]:
        found: builtins.list[FileSnapshotMeta] = []
        problems: builtins.list[str] = []
        names = set()
        for entry in self._entries():
            name = entry.name
            if name.endswith(TMP_SUFFIX):
                continue
            names.add(name)
            if _name_key(name) is None or not entry.is_dir(follow_symlinks=False):
                problems.append(f"snapshot store: ignoring {clip(name)}: not a snapshot")
                continue
            try:
                found.append(self._verify(Path(entry.path), name))
            except (OSError, ValueError) as exc:
                self._verified.pop(name, None)
                problems.append(f"snapshot store: skipping {name}: {clip(exc)}")
        for stale in set(self._verified) - names:
            del self._verified[stale]
        found.sort(key=lambda meta: (meta.term, meta.index, _ms(meta.id)), reverse=True)
        return found, problems

    def _verify(self, directory: Path, name: str) -> FileSnapshotMeta:
        meta = _decode_meta(self._read_meta(directory), name)
        state = directory / STATE_FILE
        stat = os.stat(state)
        if stat.st_size != meta.size:
            raise ValueError(f"state.bin holds {stat.st_size} bytes, meta.json says {meta.size}")
        identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if self._verified.get(name) != identity:
            with open(state, "rb") as handle:
                checksum, _ = _hash_file(handle)
            if checksum != meta.checksum:
                raise ValueError("state checksum mismatch")
            self._verified[name] = identity
        return meta


def _ms(name: str) -> int:
    key = _name_key(name)
    return key[2] if key is not None else 0


class SnapshotSink:
    """A snapshot being written. :meth:`write` the state, then :meth:`close` (durable) or
    :meth:`cancel` (removed). As a context manager it cancels on exit unless closed."""

    def __init__(
        self,
        store: FileSnapshotStore,
        name: str,
        directory: Path,
        index: int,
        term: int,
        configuration: bytes,
        configuration_index: int,
        size_limit: int | None,
    ) -> None:
        self.id = name
        self._store = store
        self._directory = directory
        self._index = index
        self._term = term
        self._configuration = configuration
        self._configuration_index = configuration_index
        self._size_limit = size_limit
        self._digest = hashlib.sha256()
        self._size = 0
        self._meta: FileSnapshotMeta | None = None
        self._finished = False
        fd = os.open(
            directory / STATE_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE
        )
        self._file: BinaryIO = os.fdopen(fd, "wb", buffering=_WRITE_BUFFER)

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    def write(self, data: bytes) -> int:
        """Append ``data`` to the state; :class:`SnapshotTooLarge` past ``size_limit``."""
        if self._finished:
            raise StoreError(f"snapshot {self.id} is already finished")
        if self._size_limit is not None and self._size + len(data) > self._size_limit:
            raise SnapshotTooLarge(
                f"snapshot {self.id} would exceed its size limit of {self._size_limit} bytes"
            )
        try:
            self._file.write(data)
        except OSError as exc:
            raise StoreError(f"snapshot {self.id}: write failed: {exc}") from exc
        self._digest.update(data)
        self._size += len(data)
        return len(data)

    def close(self) -> FileSnapshotMeta:
        """Make the snapshot durable and visible; its meta. On failure the snapshot is removed
        and :class:`StoreError` raised. Calling again returns the same meta."""
        if self._meta is not None:
            return self._meta
        if self._finished:
            raise StoreError(f"snapshot {self.id} was cancelled or failed to finish")
        self._finished = True
        store = self._store
        final = store.path / self.id
        meta = FileSnapshotMeta(
            id=self.id,
            index=self._index,
            term=self._term,
            configuration=self._configuration,
            configuration_index=self._configuration_index,
            size=self._size,
            checksum=self._digest.hexdigest(),
        )
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            fd = os.open(
                self._directory / META_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE
            )
            with os.fdopen(fd, "wb") as handle:
                handle.write(_encode_meta(meta))
                handle.flush()
                os.fsync(handle.fileno())
            fsync_dir(self._directory)
            os.rename(self._directory, final)
        except OSError as exc:
            self._discard()
            raise StoreError(f"snapshot {self.id}: cannot finish: {exc}") from exc
        try:
            fsync_dir(store.path)
        except OSError as exc:
            raise StoreError(f"snapshot {self.id}: cannot sync its directory: {exc}") from exc
        self._meta = meta
        store.reap()
        return meta

    def cancel(self) -> None:
        """Abandon the snapshot and remove what was written. Idempotent; a no-op after
        :meth:`close`."""
        if self._finished:
            return
        self._finished = True
        self._discard()

    def _discard(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        shutil.rmtree(self._directory, ignore_errors=True)

    def __enter__(self) -> SnapshotSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()
