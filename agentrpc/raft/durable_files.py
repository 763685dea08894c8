"""Filesystem steps that make a new file or directory survive a crash (blocking I/O; no trio).

A new name is durable only once the directory holding it has been fsynced: fsyncing a file
makes its bytes durable, not its directory entry. The stores under ``data_dir/raft/`` (the
SQLite log in :mod:`agentrpc.raft.sqlite_store`, the snapshots in
:mod:`agentrpc.raft.snapshots`) create what they need through these helpers, private to the
user (directories 0o700, files 0o600: the log holds every replicated write).

Callers on the Trio side run these off the event loop (``trio.to_thread.run_sync``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "fsync_dir",
    "make_private_dir",
    "touch_private",
]

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the entries of directory ``path`` (names created, renamed, removed) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` and any missing parents (mode 0o700), each durably: the parent of every
    directory created is fsynced. An existing directory is left as it is (mode included)."""
    target = Path(path).absolute()
    missing: list[Path] = []
    probe = target
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        # Created meanwhile by someone else: what we wanted.
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=PRIVATE_DIR_MODE)
        fsync_dir(directory.parent)
    if not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory")
    return target


def touch_private(path: str | os.PathLike[str]) -> bool:
    """Create the empty file ``path`` (mode 0o600) durably if it does not exist; True when it
    was created. The directory must exist."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(Path(path).absolute().parent)
    return True
