"""Serf's internal queries answered as internal_query.go answers them: ``_serf_ping``,
``_serf_conflict`` and the key queries, with their wire encodings and texts, and the keyring
file (format, atomic write, load)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import msgpack
import pytest
from serf_helpers import Serf, node_info

from agentrpc.gossip.security import Keyring
from agentrpc.gossip.serf import KeyringChange
from agentrpc.gossip.serf_internal import (
    KeyringFileError,
    fit_key_list,
    keyring_file_text,
    parse_keyring_file,
)
from agentrpc.gossip.serf_messages import (
    QUERY_FLAG_ACK,
    KeyRequest,
    NodeKeyResponse,
    Query,
    QueryResponse,
    SerfMessageType,
    WireMember,
    decode_conflict_response,
    decode_key_response,
    decode_serf_message,
    encode_key_request,
    encode_key_response,
    encode_serf_message,
)
from agentrpc.membership.keyring_file import keyring_path, load_keyring, write_keyring

KEY1, KEY2, KEY3 = (bytes([n]) * 16 for n in (1, 2, 3))


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def internal(name: str, payload: bytes = b"", *, ltime: int = 5, flags: int = 0) -> bytes:
    return encode_serf_message(
        Query(
            ltime=ltime,
            id=ltime * 10,
            addr=bytes([127, 0, 0, 9]),
            port=7946,
            source_node="asker",
            flags=flags,
            timeout_ns=5_000_000_000,
            name=f"_serf_{name}",
            payload=payload,
        )
    )


def node(keyring: Keyring | None = None, name: str = "b") -> Serf:
    serf = Serf(name, keyring=keyring)
    serf.join_self("127.0.0.2")
    return serf


def answers(serf: Serf) -> list[QueryResponse]:
    out = []
    for send in serf.state.take_sends():
        message = decode_serf_message(send.payload)
        assert isinstance(message, QueryResponse)
        assert str(send.address) == "127.0.0.9:7946"
        out.append(message)
    return out


def key_answer(serf: Serf) -> NodeKeyResponse:
    (response,) = answers(serf)
    return decode_key_response(response.payload)


def apply_changes(serf: Serf, error: str = "") -> list[KeyringChange]:
    changes = [e for e in serf.state.take_events() if isinstance(e, KeyringChange)]
    for change in changes:
        serf.state.finish_key_change(change.handle, error)
    return changes


def test_ping_is_acked_and_not_answered_nor_given_to_the_agent() -> None:
    serf = node()
    serf.state.notify_message(internal("ping", flags=QUERY_FLAG_ACK))
    assert answers(serf) == [QueryResponse(5, 50, "b", QUERY_FLAG_ACK)]
    assert serf.state.take_events() == []


def test_conflict_answers_with_our_member_in_serfs_member_struct() -> None:
    serf = node()
    serf.state.notify_join(node_info("c", "127.0.0.3", tags={"role": "web"}))
    serf.state.notify_message(internal("conflict", b"c"))
    (response,) = answers(serf)
    assert response.payload[0] == SerfMessageType.CONFLICT_RESPONSE
    wire = msgpack.unpackb(response.payload[1:], raw=False)
    assert set(wire) == {
        "Name", "Addr", "Port", "Tags", "Status", "ProtocolMin", "ProtocolMax",
        "ProtocolCur", "DelegateMin", "DelegateMax", "DelegateCur",
    }  # fmt: skip
    assert (wire["Name"], wire["Status"], wire["Port"]) == ("c", 1, 7946)
    member = decode_conflict_response(response.payload)
    assert member == WireMember(
        "c", bytes([127, 0, 0, 3]), 7946, {"role": "web"}, "alive", (1, 5, 2, 2, 5, 4)
    )
    assert serf.log.has("Got conflict resolution query for 'c'")
    # Unknown: a nil member. About ourselves: no answer at all.
    serf.state.notify_message(internal("conflict", b"nobody", ltime=6))
    (unknown,) = answers(serf)
    assert decode_conflict_response(unknown.payload) is None
    serf.state.notify_message(internal("conflict", b"b", ltime=7))
    assert answers(serf) == []


def test_key_queries_change_the_keyring_and_answer_after_it_is_persisted() -> None:
    serf = node(Keyring(KEY1))
    serf.state.notify_message(internal("install-key", encode_key_request(KeyRequest(KEY2))))
    assert answers(serf) == []  # not before the owner installed and persisted it
    (change,) = apply_changes(serf)
    assert change.operation == "install-key"
    assert change.keyring.keys == (KEY1, KEY2)
    assert key_answer(serf) == NodeKeyResponse(result=True)
    assert serf.log.has("INFO Received install-key query")

    serf.state.notify_message(internal("use-key", encode_key_request(KeyRequest(KEY2)), ltime=6))
    (change,) = apply_changes(serf)
    assert change.keyring.primary_key == KEY2
    assert key_answer(serf).result

    payload = encode_key_request(KeyRequest(KEY1))
    serf.state.notify_message(internal("remove-key", payload, ltime=7))
    (change,) = apply_changes(serf)
    assert change.keyring.keys == (KEY2,)
    assert key_answer(serf).result
    assert serf.state.keyring is not None and serf.state.keyring.keys == (KEY2,)

    serf.state.notify_message(internal("list-keys", ltime=8))
    listed = key_answer(serf)
    assert listed == NodeKeyResponse(result=True, keys=(b64(KEY2),), primary_key=b64(KEY2))
    wire = msgpack.unpackb(encode_key_response(listed)[1:], raw=False)
    assert wire == {"Result": True, "Message": "", "Keys": [b64(KEY2)], "PrimaryKey": b64(KEY2)}


@pytest.mark.parametrize(
    ("query", "key", "message", "line"),
    [
        ("use-key", KEY3, "Requested key is not in the keyring", "Failed to change primary key"),
        ("remove-key", KEY1, "Removing the primary key is not allowed", "Failed to remove key"),
        ("install-key", b"short", "key size must be 16, 24 or 32 bytes", "Failed to install key"),
    ],
)
def test_key_query_errors_have_memberlists_texts(
    query: str, key: bytes, message: str, line: str
) -> None:
    serf = node(Keyring(KEY1))
    serf.state.notify_message(internal(query, encode_key_request(KeyRequest(key))))
    assert key_answer(serf) == NodeKeyResponse(result=False, message=message)
    assert serf.log.has(f"ERR {line}: {message}")
    assert serf.state.keyring is not None and serf.state.keyring.keys == (KEY1,)


def test_key_queries_without_encryption() -> None:
    serf = node(None)
    serf.state.notify_message(internal("install-key", encode_key_request(KeyRequest(KEY2))))
    assert key_answer(serf).message == "No keyring to modify (encryption not enabled)"
    serf.state.notify_message(internal("list-keys", ltime=6))
    assert key_answer(serf) == NodeKeyResponse(
        result=False, message="Keyring is empty (encryption not enabled)"
    )
    serf.state.notify_message(internal("install-key", b"", ltime=7))
    assert key_answer(serf) == NodeKeyResponse(result=False)
    assert serf.log.has("Failed to decode key request")


def test_a_keyring_file_that_cannot_be_written_fails_the_response() -> None:
    serf = node(Keyring(KEY1))
    serf.state.notify_message(internal("install-key", encode_key_request(KeyRequest(KEY2))))
    apply_changes(serf, "Failed to write keyring file: disk full")
    assert key_answer(serf) == NodeKeyResponse(
        result=False, message="Failed to write keyring file: disk full"
    )


def test_a_long_key_list_is_truncated_to_fit_the_response() -> None:
    keys = tuple(b64(bytes([n]) * 32) for n in range(60))
    response = NodeKeyResponse(result=True, keys=keys, primary_key=keys[0])
    fitted, lines = fit_key_list(response, lambda payload: len(payload) + 40, 1024)
    assert fitted is not None
    assert len(encode_key_response(fitted)) + 40 <= 1024
    count = len(fitted.keys)
    assert 0 < count < 60
    assert fitted.message == f"truncated key list response, showing first {count} of 60 keys"
    assert lines == [(3, fitted.message)]
    # A node holding many keys still answers list-keys within the limit.
    ring = Keyring(bytes(32), [bytes([n]) * 32 for n in range(1, 60)])
    serf = node(ring)
    serf.state.notify_message(internal("list-keys"))
    (answer,) = answers(serf)
    assert len(encode_serf_message(answer)) <= 1024
    assert decode_key_response(answer.payload).message.startswith("truncated key list response")


# --------------------------------------------------------------------------------------------
# The keyring file.


def test_keyring_file_format_is_serfs() -> None:
    ring = Keyring(KEY2, [KEY1])
    text = keyring_file_text(ring)
    assert text == f'[\n  "{b64(KEY2)}",\n  "{b64(KEY1)}"\n]'
    assert json.loads(text) == [b64(KEY2), b64(KEY1)]
    assert parse_keyring_file(text).keys == (KEY2, KEY1)
    for bad in ("{}", "[]", '["not base64!"]', '["AAAA"]', "nope"):
        with pytest.raises(KeyringFileError):
            parse_keyring_file(bad)


async def test_keyring_files_are_written_atomically_and_loaded(tmp_path: Path) -> None:
    path = keyring_path(tmp_path / "data", "lan")
    assert path == tmp_path / "data" / "serf" / "local.keyring"
    assert keyring_path(tmp_path, "wan").name == "remote.keyring"
    assert await load_keyring(path) is None
    await write_keyring(path, Keyring(KEY1))
    await write_keyring(path, Keyring(KEY2, [KEY1]))
    assert os.stat(path).st_mode & 0o777 == 0o600
    loaded = await load_keyring(path)
    assert loaded is not None and loaded.keys == (KEY2, KEY1)
    assert sorted(p.name for p in path.parent.iterdir()) == ["local.keyring"]  # no temp left
    with pytest.raises(ValueError):
        keyring_path(tmp_path, "dc2")


async def test_a_failed_write_raises_and_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "serf" / "local.keyring"
    target.mkdir(parents=True)  # a directory where the file should be: the rename fails
    with pytest.raises(OSError):
        await write_keyring(target, Keyring(KEY2))
    assert sorted(p.name for p in target.parent.iterdir()) == ["local.keyring"]
    assert target.is_dir()
