"""A small key/value state machine (set, get, compare-and-set, delete), pure: what the Raft
layer is tested with before issue 12's state store exists.

Commands are msgpack arrays (:func:`encode_command`): ``["set", key, value]``,
``["get", key]``, ``["cas", key, expected, new]`` (``expected`` None: the key must be absent),
``["delete", key]``. Results (:meth:`KVStateMachine.apply`): ``get`` returns the value or None,
``cas`` True when it swapped, ``set`` and ``delete`` None. A command that is not one of these
returns an :class:`InvalidCommand` (never raises: every replica must agree on every entry).
Snapshots are the msgpack map of the whole store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgpack

from .fsm import BytesSnapshot, SnapshotSource
from .log import LogEntry

SET: Final = "set"
GET: Final = "get"
CAS: Final = "cas"
DELETE: Final = "delete"


@dataclass(frozen=True, slots=True)
class InvalidCommand:
    reason: str


def encode_command(op: str, key: str, *args: str | None) -> bytes:
    packed: bytes = msgpack.packb([op, key, *args], use_bin_type=True)
    return packed


def set_command(key: str, value: str) -> bytes:
    return encode_command(SET, key, value)


def get_command(key: str) -> bytes:
    return encode_command(GET, key)


def cas_command(key: str, expected: str | None, new: str) -> bytes:
    return encode_command(CAS, key, expected, new)


def delete_command(key: str) -> bytes:
    return encode_command(DELETE, key)


class KVStateMachine:
    """The :class:`~agentrpc.raft.fsm.FSM` of a dict from str to str."""

    __slots__ = ("applied", "data")

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.applied = 0
        """The index of the last entry applied (for tests and the simulation)."""

    def apply(self, entry: LogEntry) -> object:
        self.applied = entry.index
        try:
            command = msgpack.unpackb(entry.data, raw=False)
        except (ValueError, TypeError, msgpack.exceptions.UnpackException) as exc:
            # Malformed bytes: every replica answers the same, nothing raises.
            return InvalidCommand(f"undecodable command: {type(exc).__name__}")
        if type(command) is not list or len(command) < 2 or type(command[1]) is not str:
            return InvalidCommand("a command is [op, key, ...]")
        op, key = command[0], command[1]
        args = command[2:]
        if op == GET and not args:
            return self.data.get(key)
        if op == SET and len(args) == 1 and type(args[0]) is str:
            self.data[key] = args[0]
            return None
        if op == CAS and len(args) == 2 and type(args[1]) is str:
            expected, new = args
            if self.data.get(key) != expected:
                return False
            self.data[key] = new
            return True
        if op == DELETE and not args:
            self.data.pop(key, None)
            return None
        return InvalidCommand(f"unknown command {op!r}")

    def snapshot(self) -> BytesSnapshot:
        packed: bytes = msgpack.packb(self.data, use_bin_type=True)
        return BytesSnapshot(packed)

    def restore(self, source: SnapshotSource) -> None:
        data = msgpack.unpackb(source.read(), raw=False)
        if type(data) is not dict:
            raise ValueError("a KV snapshot is a map")
        self.data = {str(k): str(v) for k, v in data.items()}
