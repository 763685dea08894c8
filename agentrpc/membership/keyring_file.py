"""The keyring file of a gossip pool: where it lives, reading it at start, writing it atomically.

Consul keeps each pool's keyring under its data directory, ``serf/local.keyring`` for the LAN
pool and ``serf/remote.keyring`` for the WAN pool: a JSON list of base64 keys, the primary
first (the format is :func:`~agentrpc.gossip.serf_internal.keyring_file_text`). At start the
file, when present, replaces the ``encrypt`` key; after every change a key query makes, the
membership layer writes it again.

Writing is atomic (a temporary file in the same directory, written, fsynced, renamed over the
old one, then the directory fsynced), mode 0600 (the keys are secrets), and always done in a
worker thread (:func:`write_keyring`), never on the event loop.

Errors: :func:`load_keyring` raises :class:`KeyringFileError` for a file it cannot read as
keys, ``OSError`` for one it cannot read at all; :func:`write_keyring` raises ``OSError``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Final

import trio

from ..gossip.security import Keyring
from ..gossip.serf_internal import KeyringFileError, keyring_file_text, parse_keyring_file

__all__ = [
    "LAN_KEYRING",
    "WAN_KEYRING",
    "KeyringFileError",
    "keyring_path",
    "load_keyring",
    "write_keyring",
    "write_keyring_sync",
]

LAN_KEYRING: Final = "serf/local.keyring"
"""The LAN pool's keyring file, relative to the data directory (Consul's name)."""
WAN_KEYRING: Final = "serf/remote.keyring"
"""The WAN pool's keyring file, relative to the data directory (Consul's name)."""


def keyring_path(data_dir: str | os.PathLike[str], kind: str) -> Path:
    """The keyring file of the ``lan`` or ``wan`` pool under ``data_dir``."""
    if kind not in ("lan", "wan"):
        raise ValueError(f"pool kind must be 'lan' or 'wan', got {kind!r}")
    return Path(data_dir) / (LAN_KEYRING if kind == "lan" else WAN_KEYRING)


def _read(path: Path) -> Keyring | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return parse_keyring_file(text)


async def load_keyring(path: str | os.PathLike[str]) -> Keyring | None:
    """The keyring in ``path``, or None when there is no such file (read in a thread)."""
    return await trio.to_thread.run_sync(_read, Path(path))


def write_keyring_sync(path: str | os.PathLike[str], keyring: Keyring) -> None:
    """Replace ``path`` with ``keyring`` atomically (blocking: call it from a thread)."""
    target = Path(path)
    directory = target.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = directory / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    data = keyring_file_text(keyring).encode()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def write_keyring(path: str | os.PathLike[str], keyring: Keyring) -> None:
    """:func:`write_keyring_sync` in a worker thread."""
    await trio.to_thread.run_sync(write_keyring_sync, Path(path), keyring)
