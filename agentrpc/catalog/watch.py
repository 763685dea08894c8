"""Watches, sans-I/O: what a read depended on, what a write changed, and who must be woken.

A read of the state store adds **watch items** to a :class:`WatchSet`: a whole table
(``("table", "nodes")``, the granularity of Consul 0.7's table watches), one KV key
(``("key", k)``: ``KVS.Get``) or a KV prefix (``("prefix", p)``: ``KVS.List``/``ListKeys``,
Consul's prefix watch). A write records a :class:`Changes`: the tables it touched and the KV keys
it set or deleted (a tree delete lists every key it removed, so a prefix watch needs no
"descendants" rule). :class:`WaiterRegistry` maps items to waiters (any hashable token, a Trio
event in practice) and answers :meth:`WaiterRegistry.woken_by` with exactly the waiters whose
items a change concerns; the caller (:mod:`agentrpc.catalog.hub`) wakes them. Nothing polls.

Cost: a changed key is matched against the registered prefixes by length (one dictionary
look-up per distinct prefix length registered, never more than the key's length), so a write
costs at most ``len(distinct prefix lengths)`` look-ups per key it changed.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

__all__ = [
    "Changes",
    "WaiterRegistry",
    "WatchItem",
    "WatchSet",
    "key_item",
    "prefix_item",
    "table_item",
]

WatchItem = tuple[str, str]
"""``(kind, name)``: kind is ``table``, ``key`` or ``prefix``."""

TABLE: Final = "table"
KEY: Final = "key"
PREFIX: Final = "prefix"


def table_item(table: str) -> WatchItem:
    return (TABLE, table)


def key_item(key: str) -> WatchItem:
    return (KEY, key)


def prefix_item(prefix: str) -> WatchItem:
    return (PREFIX, prefix)


class WatchSet(set[WatchItem]):
    """The watch items one read (or one blocking-query run) depended on."""

    __slots__ = ()


@dataclass(slots=True)
class Changes:
    """What writes changed since the last :meth:`take`: tables, KV keys, and the highest
    index of a new tombstone (the tombstone GC's hint; 0 when none). ``everything`` after a
    restore, which may change anything."""

    tables: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)
    tombstone_index: int = 0
    everything: bool = False

    def __bool__(self) -> bool:
        return bool(self.tables or self.keys or self.everything or self.tombstone_index)


Token = TypeVar("Token", bound=Hashable)


class WaiterRegistry(Generic[Token]):
    """Waiters registered on watch items; :meth:`woken_by` names those a change concerns and
    forgets them (a waiter is woken once)."""

    __slots__ = ("_items_of", "_keys", "_prefix_lengths", "_prefixes", "_tables")

    def __init__(self) -> None:
        self._tables: dict[str, set[Token]] = {}
        self._keys: dict[str, set[Token]] = {}
        self._prefixes: dict[str, set[Token]] = {}
        self._prefix_lengths: dict[int, int] = {}
        """Distinct registered prefix lengths and how many prefixes have each."""
        self._items_of: dict[Token, tuple[WatchItem, ...]] = {}

    def __len__(self) -> int:
        return len(self._items_of)

    def __contains__(self, token: object) -> bool:
        return token in self._items_of

    def register(self, token: Token, items: Iterable[WatchItem]) -> None:
        """Wake ``token`` when any of ``items`` changes (replaces an earlier registration)."""
        self.unregister(token)
        kept = tuple(set(items))
        self._items_of[token] = kept
        for kind, name in kept:
            if kind == TABLE:
                self._tables.setdefault(name, set()).add(token)
            elif kind == KEY:
                self._keys.setdefault(name, set()).add(token)
            elif kind == PREFIX:
                waiters = self._prefixes.get(name)
                if waiters is None:
                    waiters = self._prefixes[name] = set()
                    length = len(name)
                    self._prefix_lengths[length] = self._prefix_lengths.get(length, 0) + 1
                waiters.add(token)
            else:
                raise ValueError(f"unknown watch item kind {kind!r}")

    def unregister(self, token: Token) -> None:
        items = self._items_of.pop(token, None)
        if items is None:
            return
        for kind, name in items:
            if kind == TABLE:
                _discard(self._tables, name, token)
            elif kind == KEY:
                _discard(self._keys, name, token)
            elif _discard(self._prefixes, name, token):
                length = len(name)
                left = self._prefix_lengths[length] - 1
                if left:
                    self._prefix_lengths[length] = left
                else:
                    del self._prefix_lengths[length]

    def woken_by(self, changes: Changes) -> set[Token]:
        """The waiters ``changes`` concerns, now unregistered."""
        if changes.everything:
            woken = set(self._items_of)
        else:
            woken = set()
            for table in changes.tables:
                woken.update(self._tables.get(table, ()))
            if changes.keys and (self._keys or self._prefixes):
                lengths = tuple(self._prefix_lengths)
                for key in changes.keys:
                    woken.update(self._keys.get(key, ()))
                    for length in lengths:
                        if length <= len(key):
                            woken.update(self._prefixes.get(key[:length], ()))
        for token in woken:
            self.unregister(token)
        return woken


def _discard(table: dict[str, set[Token]], name: str, token: Token) -> bool:
    """Remove ``token`` under ``name``; True when ``name`` has no waiter left."""
    waiters = table.get(name)
    if waiters is None:
        return False
    waiters.discard(token)
    if waiters:
        return False
    del table[name]
    return True
