"""A model-based test of the KV store (hypothesis state machine): every operation of
``KVS.Apply`` and session create/destroy, applied to the store and to a plain-dict model of
Consul 0.7's rules, compared after each step; and the index invariants: a key's ModifyIndex
never goes backwards, a prefix's list index covers every key and tombstone under it."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agentrpc.catalog.state_store import StateError, StateStore
from agentrpc.catalog.structs import DirEntry, RegisterRequest, Session

KEYS = st.sampled_from(["a", "a/b", "a/c", "ab", "b", "b/a/c", ""])
PREFIXES = st.sampled_from(["", "a", "a/", "b", "ab", "z"])
VALUES = st.binary(max_size=4)
SESSIONS = st.sampled_from(["s1", "s2", "s3"])


@dataclass
class Entry:
    value: bytes
    flags: int
    session: str
    lock_index: int
    create: int
    modify: int


class KVModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = StateStore()
        self.index = 1
        self.now = 0.0
        self.store.ensure_registration(self.tick(), RegisterRequest(node="n", address="a"), 0.0)
        self.entries: dict[str, Entry] = {}
        self.tombstones: dict[str, int] = {}
        self.sessions: dict[str, str] = {}
        self.seen: dict[str, int] = {}

    def tick(self) -> int:
        self.index += 1
        self.now += 1.0
        return self.index

    # -------------------------------------------------------------- model helpers

    def _write(self, key: str, value: bytes, flags: int, session: str, lock_index: int) -> None:
        old = self.entries.get(key)
        create = old.create if old is not None else self.index
        self.entries[key] = Entry(value, flags, session, lock_index, create, self.index)

    def _delete(self, key: str) -> None:
        if key in self.entries:
            del self.entries[key]
            self.tombstones[key] = self.index

    # -------------------------------------------------------------- rules

    @rule(key=KEYS, value=VALUES, flags=st.integers(0, 3), lock_index=st.integers(0, 2))
    def set(self, key: str, value: bytes, flags: int, lock_index: int) -> None:
        idx = self.tick()
        self.store.kvs_set(idx, DirEntry(key, value, flags, "ignored", lock_index))
        old = self.entries.get(key)
        self._write(key, value, flags, old.session if old else "", lock_index)

    @rule(key=KEYS, value=VALUES, fresh=st.booleans(), zero=st.booleans())
    def cas(self, key: str, value: bytes, fresh: bool, zero: bool) -> None:
        old = self.entries.get(key)
        stale = self.index + 7
        cas_index = 0 if zero else (old.modify if (old and fresh) else stale)
        idx = self.tick()
        got = self.store.kvs_set_cas(idx, DirEntry(key, value, modify_index=cas_index))
        expected = (
            (old is None) if cas_index == 0 else (old is not None and old.modify == cas_index)
        )
        assert got == expected
        if expected:
            self._write(key, value, 0, old.session if old else "", 0)

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        self.tick()
        self.store.kvs_delete(self.index, key)
        self._delete(key)

    @rule(key=KEYS, fresh=st.booleans())
    def delete_cas(self, key: str, fresh: bool) -> None:
        old = self.entries.get(key)
        cas_index = old.modify if (old and fresh) else self.index + 3
        idx = self.tick()
        got = self.store.kvs_delete_cas(idx, cas_index, key)
        assert got == (old is None or old.modify == cas_index)
        if old is not None and old.modify == cas_index:
            self._delete(key)

    @rule(prefix=PREFIXES)
    def delete_tree(self, prefix: str) -> None:
        self.tick()
        self.store.kvs_delete_tree(self.index, prefix)
        for key in [k for k in self.entries if k.startswith(prefix)]:
            self._delete(key)

    @rule(key=KEYS, value=VALUES, session=SESSIONS)
    def lock(self, key: str, value: bytes, session: str) -> None:
        idx = self.tick()
        try:
            got = self.store.kvs_lock(idx, DirEntry(key, value, session=session))
        except StateError as exc:
            assert session not in self.sessions
            assert str(exc) == f'invalid session "{session}"'
            return
        assert session in self.sessions
        old = self.entries.get(key)
        if old is None:
            expected, lock_index = True, 1
        elif old.session == session:
            expected, lock_index = True, old.lock_index
        elif old.session:
            expected, lock_index = False, 0
        else:
            expected, lock_index = True, old.lock_index + 1
        assert got == expected
        if expected:
            self._write(key, value, 0, session, lock_index)

    @rule(key=KEYS, value=VALUES, session=SESSIONS)
    def unlock(self, key: str, value: bytes, session: str) -> None:
        idx = self.tick()
        got = self.store.kvs_unlock(idx, DirEntry(key, value, session=session))
        old = self.entries.get(key)
        expected = old is not None and old.session == session
        assert got == expected
        if expected:
            assert old is not None
            self._write(key, value, 0, "", old.lock_index)

    @precondition(lambda self: len(self.sessions) < 3)
    @rule(session=SESSIONS, behavior=st.sampled_from(["release", "delete"]))
    def create_session(self, session: str, behavior: str) -> None:
        if session in self.sessions:
            return
        self.store.session_create(self.tick(), Session(session, node="n", behavior=behavior))
        self.sessions[session] = behavior

    @rule(session=SESSIONS)
    def destroy_session(self, session: str) -> None:
        self.tick()
        self.store.session_destroy(self.index, session, self.now)
        behavior = self.sessions.pop(session, None)
        if behavior is None:
            return
        for key, entry in sorted(self.entries.items()):
            if entry.session != session:
                continue
            if behavior == "delete":
                self._delete(key)
            else:
                self._write(key, entry.value, entry.flags, "", entry.lock_index)

    @rule(upto=st.integers(0, 60))
    def reap(self, upto: int) -> None:
        self.tick()
        self.store.reap_tombstones(upto)
        self.tombstones = {k: i for k, i in self.tombstones.items() if i > upto}

    # -------------------------------------------------------------- invariants

    @invariant()
    def store_matches_model(self) -> None:
        stored = {e.key: e for e in self.store.iter_kvs()}
        assert set(stored) == set(self.entries)
        for key, want in self.entries.items():
            got = stored[key]
            assert (got.value, got.flags, got.session, got.lock_index) == (
                want.value,
                want.flags,
                want.session,
                want.lock_index,
            ), key
            assert (got.create_index, got.modify_index) == (want.create, want.modify), key
        assert dict(self.store.iter_tombstones()) == self.tombstones
        self.store.check_invariants()

    @invariant()
    def modify_index_never_goes_backwards(self) -> None:
        for key, entry in self.entries.items():
            assert entry.modify >= self.seen.get(key, 0)
            self.seen[key] = entry.modify

    @invariant()
    def list_index_covers_entries_and_tombstones(self) -> None:
        for prefix in ["", "a", "a/", "b", "ab", "z"]:
            index, entries = self.store.kvs_list(prefix)
            keys_index, _ = self.store.kvs_list_keys(prefix, "/")
            assert keys_index == index
            covered = [e.modify_index for e in entries]
            covered += [i for k, i in self.tombstones.items() if k.startswith(prefix)]
            assert all(index >= i for i in covered)
            if covered and prefix:
                assert index == max(covered)
            if not covered or not prefix:
                assert index == self.store.table_index("kvs", "tombstones")


TestKVModel = KVModel.TestCase
TestKVModel.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
