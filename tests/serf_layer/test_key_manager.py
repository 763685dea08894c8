"""Serf's key manager on the querying side: the key query payloads, serf's aggregation of the
answers (NumNodes, NumResp, NumErr, Messages, Keys, PrimaryKeys) and its errors, and the
pool's install/use/remove/list across a cluster with keyring files."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import trio
import trio.testing
from pool_cluster import pool_cluster

from agentrpc.gossip.messages import pack_wire
from agentrpc.gossip.security import Keyring
from agentrpc.gossip.serf_keys import (
    KeyAggregator,
    KeyRequestError,
    key_request_payload,
)
from agentrpc.gossip.serf_messages import (
    KeyRequest,
    NodeKeyResponse,
    decode_key_request,
    encode_key_response,
)
from agentrpc.membership.keyring_file import load_keyring

KEY1, KEY2, KEY3 = (bytes([n]) * 16 for n in (1, 2, 3))


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_key_request_payloads() -> None:
    assert decode_key_request(key_request_payload("install-key", b64(KEY1))) == KeyRequest(KEY1)
    assert decode_key_request(key_request_payload("list-keys", "")) == KeyRequest(b"")
    with pytest.raises(KeyRequestError, match="illegal base64 data at input byte 4"):
        key_request_payload("use-key", "abcd!efg")


def test_aggregation_counts_as_serf_does() -> None:
    aggregator = KeyAggregator(4)
    ok = NodeKeyResponse(result=True, keys=(b64(KEY1), b64(KEY2)), primary_key=b64(KEY1))
    aggregator.add("a", encode_key_response(ok))
    old_serf = {"Result": True, "Message": "", "Keys": [b64(KEY1)]}  # 0.8: no PrimaryKey
    aggregator.add("b", bytes([8]) + pack_wire(old_serf))
    warned = NodeKeyResponse(result=True, message="truncated key list response, showing 1")
    aggregator.add("c", encode_key_response(warned))
    result = aggregator.finish()
    assert (result.num_nodes, result.num_resp, result.num_err) == (4, 3, 0)
    assert result.keys == {b64(KEY1): 2, b64(KEY2): 1}
    assert result.primary_keys == {b64(KEY1): 1, "": 2}
    assert result.messages == {"c": "truncated key list response, showing 1"}
    assert result.error == "3/4 nodes reported success"
    assert aggregator.lines == [(3, "truncated key list response, showing 1")]
    failing = KeyAggregator(2)
    failing.add("a", encode_key_response(NodeKeyResponse(message="nope")))
    failing.add("b", b"\x05bad")
    failed = failing.finish()
    assert failed.error == "2/2 nodes reported failure"
    assert failed.messages["a"] == "nope"
    assert failed.messages["b"].startswith("Invalid key query response type: ")
    assert KeyAggregator(0).complete


async def test_pool_key_rotation_across_the_cluster(tmp_path: Path) -> None:
    """On the real clock: the keyring files are written in worker threads, which the
    autojump clock would not wait for (it would skip past the queries' deadlines)."""
    files = {name: tmp_path / name / "serf" / "local.keyring" for name in "abc"}
    async with pool_cluster("", keyring=Keyring(KEY1), join=False) as cluster:
        for name in "abc":
            await cluster.add(name, keyring=Keyring(KEY1), keyring_file=str(files[name]))
        await cluster.join_all()
        a = cluster.pools["a"]
        listing = await a.list_keys()
        assert (listing.error, listing.keys, listing.primary_keys) == (
            "",
            {b64(KEY1): 3},
            {b64(KEY1): 3},
        )
        installed = await a.install_key(b64(KEY2))
        assert (installed.error, installed.num_nodes, installed.num_resp) == ("", 3, 3)
        used = await cluster.pools["b"].use_key(b64(KEY2))
        assert used.error == ""
        removed = await cluster.pools["c"].remove_key(b64(KEY1))
        assert removed.error == ""
        listing = await a.list_keys()
        assert listing.keys == {b64(KEY2): 3}
        for name in "abc":
            node = cluster.nodes[name]
            assert node.keyring is not None and node.keyring.keys == (KEY2,)
            # memberlist got every step, in order
            assert [ring.primary_key for ring in node.keyrings_set] == [KEY1, KEY2, KEY2]
            on_disk = await load_keyring(files[name])
            assert on_disk is not None and on_disk.keys == (KEY2,)
        # Errors come back per node, with serf's summary.
        refused = await a.remove_key(b64(KEY2))
        assert refused.error == "3/3 nodes reported failure"
        assert set(refused.messages.values()) == {"Removing the primary key is not allowed"}
        bad = await a.use_key("not base64")
        assert bad.error == "illegal base64 data at input byte 3"


async def test_a_member_without_encryption_fails_the_operation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rings = {"a": Keyring(KEY1), "b": Keyring(KEY1), "c": None}
    async with pool_cluster("abc", keyring_for=rings.get) as cluster:
        result = await cluster.pools["a"].install_key(b64(KEY3))
        assert result.error == "1/3 nodes reported failure"
        assert result.messages == {"c": "No keyring to modify (encryption not enabled)"}
        assert cluster.pools["a"].stats()["encrypted"] == "true"
        assert cluster.pools["c"].stats()["encrypted"] == "false"


async def test_a_member_that_does_not_answer_is_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with pool_cluster("abc", keyring=Keyring(KEY1)) as cluster:
        # c stops answering (its memberlist is still counted alive by a's).
        cluster.network.drop_udp = lambda sender, to, payload: sender == "c"
        start = trio.current_time()
        result = await cluster.pools["a"].list_keys()
        assert result.error == "2/3 nodes reported success"
        assert (result.num_resp, result.num_err) == (2, 0)
        assert trio.current_time() - start == pytest.approx(3.2)  # waited the whole query
