"""The FSM: commands as Consul 0.7 writes them (type byte + old-spec msgpack), the responses
of each message type, unknown types, and snapshots: restore(snapshot(s)) == s over random
histories, a reference-shaped snapshot (built by hand from fsm.go's Persist) restored as the
reference restores it, and a broken snapshot refused with the store untouched."""

from __future__ import annotations

import io
from typing import Any

import msgpack
import pytest
import trio
from catalog_helpers import assert_go_key_order, command
from hypothesis import given, settings, strategies as st

from agentrpc.catalog.constants import IGNORE_UNKNOWN_TYPE_FLAG, MessageType
from agentrpc.catalog.fsm import (
    CommandDecodeError,
    ConsulFSM,
    FSMError,
    SnapshotError,
    UnknownMessageType,
    decode_command,
    encode_command,
)
from agentrpc.raft.fsm import apply_entry
from agentrpc.raft.log import LogEntry, LogType

REG, DEREG, KVS, SESSION, TOMB = (
    MessageType.REGISTER,
    MessageType.DEREGISTER,
    MessageType.KVS,
    MessageType.SESSION,
    MessageType.TOMBSTONE,
)


def kv(op: str, key: str, value: bytes | None = None, **dirent: Any) -> dict[str, Any]:
    return {"Datacenter": "dc1", "Op": op, "DirEnt": {"Key": key, "Value": value, **dirent}}


def register(node: str, **extra: Any) -> dict[str, Any]:
    return {"Datacenter": "dc1", "Node": node, "Address": "10.0.0.9", **extra}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_commands_are_old_spec_msgpack_as_go_msgpack_default_handle_writes() -> None:
    data = encode_command(KVS, kv("set", "k", b"\xff\x00"))
    assert data[0] == 2
    body = data[1:]
    # Old spec: strings and []byte are raw (0xa0..0xbf / 0xda), never str8 (0xd9) or bin.
    assert b"\xd9" not in body and b"\xc4" not in body
    assert b"\xa2\xff\x00" in body  # the Value as a 2-byte raw
    assert decode_command(data) == (2, False, kv("set", "k", "\udcff\x00"))
    flagged = bytes([KVS | IGNORE_UNKNOWN_TYPE_FLAG]) + body
    assert decode_command(flagged)[:2] == (2, True)


def test_apply_responses_per_message_type() -> None:
    clock = Clock()
    fsm = ConsulFSM(clock)
    assert fsm.apply(command(2, REG, register("n1"))) is None
    assert fsm.apply(command(3, KVS, kv("set", "k", b"v"))) is None
    assert fsm.apply(command(4, KVS, kv("cas", "k", b"w", ModifyIndex=1))) is False
    assert fsm.apply(command(5, KVS, kv("cas", "k", b"w", ModifyIndex=3))) is True
    sid = "11111111-2222-3333-4444-555555555555"
    create = {"Op": "create", "Session": {"ID": sid, "Node": "n1", "LockDelay": 5_000_000_000}}
    assert fsm.apply(command(6, SESSION, create)) == sid
    assert fsm.apply(command(7, KVS, kv("lock", "k", b"x", Session=sid))) is True
    assert fsm.apply(command(8, KVS, kv("lock", "k", b"x", Session="bogus"))) == FSMError(
        'invalid session "bogus"'
    )
    assert fsm.apply(command(9, KVS, kv("frob", "k"))) == FSMError("Invalid KVS operation 'frob'")
    assert fsm.apply(command(10, SESSION, {"Op": "kill", "Session": {"ID": sid}})) == FSMError(
        "Invalid Session operation 'kill'"
    )
    clock.now = 200.0
    assert fsm.apply(command(11, SESSION, {"Op": "destroy", "Session": {"ID": sid}})) is None
    assert fsm.store.kvs_lock_delay("k") == 205.0
    assert fsm.apply(command(12, KVS, kv("delete", "k"))) is None
    reap = {"Op": "reap", "ReapIndex": 12}
    assert fsm.apply(command(13, TOMB, reap)) is None
    assert list(fsm.store.iter_tombstones()) == []
    assert fsm.apply(command(14, TOMB, {"Op": "sow"})) == FSMError(
        "Invalid Tombstone operation 'sow'"
    )
    missing = register("n2", Checks=[{"CheckID": "c", "Node": "n2", "ServiceID": "nope"}])
    assert fsm.apply(command(15, REG, missing)) == FSMError(
        "failed inserting check: Missing service registration"
    )
    assert fsm.apply(command(16, DEREG, {"Node": "n1"})) is None
    assert fsm.store.nodes()[1] == []
    assert fsm.last_index == 16


def test_unknown_types_and_bad_bodies() -> None:
    fsm = ConsulFSM()
    assert fsm.apply(LogEntry(3, 1, LogType.COMMAND, bytes([99 | 128]) + b"\x80")) is None
    assert fsm.ignored == 1
    with pytest.raises(UnknownMessageType):
        fsm.apply(LogEntry(4, 1, LogType.COMMAND, bytes([99]) + b"\x80"))
    with pytest.raises(CommandDecodeError):
        fsm.apply(LogEntry(5, 1, LogType.COMMAND, bytes([KVS]) + b"\xc1"))
    with pytest.raises(CommandDecodeError):
        fsm.apply(LogEntry(6, 1, LogType.COMMAND, encode_command(KVS, {"Op": 7})))
    with pytest.raises(CommandDecodeError):
        fsm.apply(LogEntry(7, 1, LogType.COMMAND, b""))
    # Raft's own entries change nothing but the applied index.
    assert fsm.apply(LogEntry(8, 1, LogType.NOOP, b"")) is None
    assert fsm.apply(LogEntry(9, 1, LogType.CONFIGURATION, b"\x01\x02")) is None
    assert fsm.last_index == 9
    assert fsm.store.last_index() == 0


# ------------------------------------------------------------------ snapshots


NODES = st.sampled_from(["n1", "n2", "n3"])
KEYS = st.sampled_from(["a", "a/b", "b", "c/d"])
SIDS = st.sampled_from(["s1", "s2"])


def _commands() -> st.SearchStrategy[tuple[int, dict[str, Any]]]:
    check = st.fixed_dictionaries(
        {
            "CheckID": st.sampled_from(["c1", "serfHealth"]),
            "Status": st.sampled_from(["passing", "critical", "warning", ""]),
        }
    )
    service = st.fixed_dictionaries(
        {
            "ID": st.sampled_from(["web", "db"]),
            "Service": st.sampled_from(["web", "db"]),
            "Tags": st.one_of(st.none(), st.lists(st.sampled_from(["x", "y"]), max_size=2)),
            "Port": st.integers(0, 9),
        }
    )
    return st.one_of(
        st.builds(
            lambda n, a, svc, chk: (
                REG,
                {
                    "Node": n,
                    "Address": a,
                    "TaggedAddresses": {"wan": a},
                    "Service": svc,
                    "Checks": [{**c, "Node": n} for c in chk],
                },
            ),
            NODES,
            st.sampled_from(["10.0.0.1", "10.0.0.2"]),
            st.one_of(st.none(), service),
            st.lists(check, max_size=2),
        ),
        st.builds(
            lambda n, sid, cid: (DEREG, {"Node": n, "ServiceID": sid, "CheckID": cid}),
            NODES,
            st.sampled_from(["", "web"]),
            st.sampled_from(["", "c1"]),
        ),
        st.builds(
            lambda op, key, value, sess: (KVS, kv(op, key, value, Session=sess, Flags=3)),
            st.sampled_from(["set", "delete", "delete-tree", "lock", "unlock", "cas"]),
            KEYS,
            st.binary(max_size=3),
            SIDS,
        ),
        st.builds(
            lambda op, sid, node, behavior, checks: (
                SESSION,
                {
                    "Op": op,
                    "Session": {
                        "ID": sid,
                        "Node": node,
                        "Behavior": behavior,
                        "Checks": checks,
                        "LockDelay": 1_000_000_000,
                        "TTL": "15s",
                    },
                },
            ),
            st.sampled_from(["create", "destroy"]),
            SIDS,
            NODES,
            st.sampled_from(["release", "delete"]),
            st.one_of(st.none(), st.just(["serfHealth"])),
        ),
        st.builds(lambda upto: (TOMB, {"Op": "reap", "ReapIndex": upto}), st.integers(0, 30)),
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(_commands(), max_size=30))
def test_restore_of_snapshot_is_the_same_store(history: list[tuple[int, dict[str, Any]]]) -> None:
    fsm = ConsulFSM(Clock())
    for position, (msg_type, body) in enumerate(history, start=2):
        fsm.apply(command(position, msg_type, body))
    fsm.store.check_invariants()
    data = fsm.snapshot_bytes()
    copy = ConsulFSM()
    copy.restore_bytes(data)
    assert copy.view() == fsm.view()
    copy.store.check_invariants()
    assert copy.snapshot_bytes() == data
    assert copy.last_index >= fsm.store.last_index()


def _records(data: bytes) -> list[tuple[int | None, Any]]:
    unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape")
    unpacker.feed(data)
    out: list[tuple[int | None, Any]] = [(None, unpacker.unpack())]
    while kind := unpacker.read_bytes(1):
        out.append((kind[0], unpacker.unpack()))
    return out


def test_snapshot_layout_is_consuls() -> None:
    fsm = ConsulFSM()
    service = {"ID": "web", "Service": "web", "Port": 80}
    fsm.apply(
        command(2, REG, register("n1", Service=service, Check={"CheckID": "c", "Node": "n1"}))
    )
    fsm.apply(command(3, SESSION, {"Op": "create", "Session": {"ID": "s", "Node": "n1"}}))
    fsm.apply(command(4, KVS, kv("set", "k", b"v")))
    fsm.apply(command(5, KVS, kv("set", "gone", b"v")))
    fsm.apply(command(6, KVS, kv("delete", "gone")))
    records = _records(fsm.snapshot_bytes())
    for _, record in records:
        assert_go_key_order(record)
    header = records[0][1]
    assert header["LastIndex"] == 6
    assert header["Indexes"] == {
        "checks": 2, "coordinates": 0, "kvs": 6, "nodes": 2, "services": 2, "sessions": 3,
        "tombstones": 6,
    }  # fmt: skip
    kinds = [kind for kind, _ in records[1:]]
    assert kinds == [0, 0, 0, 3, 2, 5]
    node_record, service_record, check_record = (r for _, r in records[1:4])
    assert node_record["Service"] is None and node_record["Check"] is None
    assert service_record["Service"]["ID"] == "web" and service_record["Check"] is None
    assert check_record["Service"] is None and check_record["Check"]["CheckID"] == "c"
    assert records[5][1]["Key"] == "k" and records[5][1]["Value"] == "v"  # raw string
    assert records[6][1] == {
        "CreateIndex": 0, "Flags": 0, "Key": "gone", "LockIndex": 0, "ModifyIndex": 6,
        "Session": "", "Value": None,
    }  # fmt: skip


def _go_snapshot() -> bytes:
    """A snapshot as Consul 0.7's Persist writes it (no Indexes, no node RaftIndex), by hand:
    header, node + service + check registrations, a coordinate batch, a session, an ACL, a KV
    entry, a tombstone."""
    pack = msgpack.Packer(use_bin_type=False).pack
    req = {"Address": "10.0.0.5", "Check": None, "Checks": None, "Datacenter": "",
           "Node": "go1", "Service": None, "TaggedAddresses": None, "Token": ""}  # fmt: skip
    svc = {"Address": "", "CreateIndex": 3, "EnableTagOverride": False, "ID": "web",
           "ModifyIndex": 4, "Port": 80, "Service": "web", "Tags": ["a"]}  # fmt: skip
    chk = {"CheckID": "serfHealth", "CreateIndex": 3, "ModifyIndex": 5, "Name": "Serf",
           "Node": "go1", "Notes": "", "Output": "", "ServiceID": "", "ServiceName": "",
           "Status": "passing"}  # fmt: skip
    session = {"Behavior": "release", "Checks": ["serfHealth"], "CreateIndex": 6, "ID": "s",
               "LockDelay": 15_000_000_000, "ModifyIndex": 6, "Name": "", "Node": "go1",
               "TTL": ""}  # fmt: skip
    acl = {"CreateIndex": 7, "ID": "anonymous", "ModifyIndex": 7, "Name": "Anonymous Token",
           "Rules": "", "Type": "client"}  # fmt: skip
    entry = {"CreateIndex": 8, "Flags": 1, "Key": "k", "LockIndex": 1, "ModifyIndex": 9,
             "Session": "s", "Value": "\x00v"}  # fmt: skip
    stone = {"CreateIndex": 0, "Flags": 0, "Key": "old", "LockIndex": 0, "ModifyIndex": 8,
             "Session": "", "Value": None}  # fmt: skip
    coords = [{"Coord": {"Adjustment": 0.0, "Error": 1.5, "Height": 1e-5, "Vec": [0.0] * 8},
               "Node": "go1"}]  # fmt: skip
    return b"".join(
        [
            pack({"LastIndex": 10}),
            b"\x00" + pack(req),
            b"\x00" + pack({**req, "Service": svc}),
            b"\x00" + pack({**req, "Check": chk}),
            b"\x06" + pack(coords),
            b"\x03" + pack(session),
            b"\x04" + pack(acl),
            b"\x02" + pack(entry),
            b"\x05" + pack(stone),
        ]
    )


def test_a_reference_snapshot_restores_as_the_reference_restores_it() -> None:
    fsm = ConsulFSM()
    fsm.restore_bytes(_go_snapshot())
    store = fsm.store
    node = store.get_node("go1")[1]
    assert node is not None and (node.create_index, node.modify_index) == (10, 10)
    # Catalog records go through EnsureRegistration at the header's LastIndex.
    assert [(s.id, s.create_index, s.modify_index) for s in store.services_of("go1")] == [
        ("web", 10, 10)
    ]
    assert [(c.check_id, c.modify_index) for c in store.checks_of("go1")] == [("serfHealth", 10)]
    session = store.session_get("s")[1]
    assert session is not None and session.modify_index == 6
    entry = store.kvs_get("k")[1]
    assert entry is not None and entry.value == b"\x00v" and entry.session == "s"
    assert dict(store.iter_tombstones()) == {"old": 8}
    assert store.indexes() == {
        "nodes": 10, "services": 10, "checks": 10, "kvs": 9, "tombstones": 8, "sessions": 6,
        "coordinates": 10,
    }  # fmt: skip
    store.check_invariants()
    # The coordinate batch is kept; records of tables we do not keep come back out, in
    # their place, unchanged.
    kinds = [kind for kind, _ in _records(fsm.snapshot_bytes())[1:]]
    assert kinds == [0, 0, 0, 6, 3, 4, 2, 5]
    # The session's check mapping was restored: the check going critical invalidates it.
    critical = register(
        "go1", Checks=[{"CheckID": "serfHealth", "Node": "go1", "Status": "critical"}]
    )
    fsm.apply(command(11, REG, {**critical, "Address": "10.0.0.5"}))
    assert store.session_get("s")[1] is None
    assert store.kvs_get("k")[1].session == ""  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "data",
    [b"", b"\x81\xa9LastIndex\x05\x00", b"\x81\xa9LastIndex\x05\x09\x80", b"\x91\x01", b"\xc1"],
)
def test_a_broken_snapshot_leaves_the_store_untouched(data: bytes) -> None:
    fsm = ConsulFSM()
    fsm.apply(command(2, KVS, kv("set", "keep", b"me")))
    before = fsm.view()
    with pytest.raises(SnapshotError):
        fsm.restore_bytes(data)
    assert fsm.view() == before


def test_restore_reports_every_change_once() -> None:
    fsm = ConsulFSM()
    fsm.apply(command(2, KVS, kv("set", "k", b"v")))
    fsm.take_changes()
    fsm.restore_bytes(fsm.snapshot_bytes())
    assert fsm.take_changes().everything
    assert not fsm.take_changes()


async def test_a_snapshot_is_the_state_at_capture_and_persists_off_the_loop() -> None:
    """The Raft FSM contract: ``snapshot()`` captures at once, ``persist`` may run in a worker
    thread while later entries apply, and the bytes are those of the capture."""
    fsm = ConsulFSM()
    fsm.apply(command(2, KVS, kv("set", "before", b"1")))
    expected = fsm.snapshot_bytes()
    snapshot = fsm.snapshot()
    for index in range(3, 300):
        fsm.apply(command(index, KVS, kv("set", f"after/{index}", b"x")))
    sink = io.BytesIO()
    await trio.to_thread.run_sync(snapshot.persist, sink)
    snapshot.release()
    assert sink.getvalue() == expected
    with pytest.raises(SnapshotError):
        snapshot.persist(io.BytesIO())
    # Through the raft layer's dispatch and its source protocol (a file-like reader).
    copy = ConsulFSM()
    copy.restore(io.BytesIO(expected))
    assert [e.key for e in copy.store.iter_kvs()] == ["before"]
    assert apply_entry(copy, LogEntry(5, 1, LogType.NOOP)) is None
    assert apply_entry(copy, command(6, KVS, kv("cas", "new", b"v", ModifyIndex=0))) is True
