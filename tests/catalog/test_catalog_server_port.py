"""The catalog's endpoints on a real server port over loopback TCP: msgpack-rpc on byte 0
(a reply checked byte for byte against hand-built msgpack), a body that does not decode closing
only its connection, a blocking query on one yamux stream woken by a write on another, and
Consul's own client code (Debian's Go net-rpc-msgpackrpc over yamux) calling KVS.Apply/KVS.Get
and Catalog.Register/Catalog.ListNodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio
from catalog_helpers import DC, install
from go_programs import build_go_program
from serverport.sp_helpers import (
    LogCapture,
    fixstr,
    read_exactly,
    read_to_eof,
    request_bytes,
    response_bytes,
    running_port,
    tcp,
)

from agentrpc.catalog.service import Catalog
from agentrpc.serverport.endpoints import Endpoints, call_on_stream
from agentrpc.serverport.rpc_codec import RPCType
from agentrpc.serverport.yamux_session import YamuxConfig, YamuxSession

GO_CLIENT = Path(__file__).parent / "go" / "catalog_client"


def catalog_endpoints() -> tuple[Endpoints, Catalog]:
    endpoints = Endpoints()
    catalog = install(
        endpoints, datacenter=DC, node_name="server-1", server_address=lambda: "127.0.0.1:8300"
    )
    return endpoints, catalog


async def test_byte_0_get_of_a_missing_key_exact_reply_bytes() -> None:
    endpoints, _ = catalog_endpoints()
    async with running_port(endpoints) as running:
        stream = await tcp(running.address)
        body = b"\x82" + fixstr("Datacenter") + fixstr("dc1") + fixstr("Key") + fixstr("nope")
        await stream.send_all(b"\x00" + request_bytes("KVS.Get", 3, body))
        # IndexedDirEntries{Entries: nil, QueryMeta{Index: 1, LastContact: 0, KnownLeader:
        # true}}: go-msgpack's sorted keys, nil slice as nil, the index never 0.
        reply = (
            b"\x84"
            + fixstr("Entries")
            + b"\xc0"
            + fixstr("Index")
            + b"\x01"
            + fixstr("KnownLeader")
            + b"\xc3"
            + fixstr("LastContact")
            + b"\x00"
        )
        expected = response_bytes("KVS.Get", 3, body=reply)
        assert await read_exactly(stream, len(expected)) == expected
        # Same connection, next request: a write then a read of it.
        written = await call_on_stream(
            stream,
            "KVS.Apply",
            {"Datacenter": DC, "Op": "set", "DirEnt": {"Key": "k", "Value": b"\x00\xff"}},
            seq=4,
        )
        assert written is False
        got = await call_on_stream(stream, "KVS.Get", {"Datacenter": DC, "Key": "k"}, seq=5)
        assert got["Entries"][0]["Value"] == b"\x00\xff"
        await stream.aclose()


async def test_a_body_that_does_not_decode_closes_only_its_connection() -> None:
    endpoints, _ = catalog_endpoints()
    log = LogCapture()
    async with running_port(endpoints, log=log) as running:
        bad = await tcp(running.address)
        good = await tcp(running.address)
        await good.send_all(b"\x00")
        body = b"\x81" + fixstr("Key") + b"\x05"  # Key: 5, not a string
        await bad.send_all(b"\x00" + request_bytes("KVS.Get", 1, body))
        error = "msgpack decode error: KeyRequest.Key: expected a string, got int"
        assert await read_to_eof(bad) == response_bytes("KVS.Get", 1, error)
        assert await call_on_stream(good, "Status.Leader", {}, seq=2) == "127.0.0.1:8300"
        await good.aclose()


async def test_blocking_query_on_one_yamux_stream_woken_by_a_write_on_another() -> None:
    endpoints, catalog = catalog_endpoints()
    async with running_port(endpoints) as running:
        transport = await tcp(running.address)
        await transport.send_all(bytes([RPCType.MULTIPLEX_V2]))
        session = YamuxSession(transport, client=True, config=YamuxConfig(keepalive_interval=None))
        async with trio.open_nursery() as nursery:
            await nursery.start(session.run)
            writer = await session.open_stream()
            await call_on_stream(
                writer,
                "KVS.Apply",
                {"Datacenter": DC, "Op": "set", "DirEnt": {"Key": "cfg", "Value": b"1"}},
                seq=1,
            )
            index = (await call_on_stream(writer, "KVS.Get", {"Key": "cfg"}, seq=2))["Index"]
            result: dict[str, Any] = {}
            done = trio.Event()

            async def blocked() -> None:
                reader = await session.open_stream()
                result["reply"] = await call_on_stream(
                    reader,
                    "KVS.Get",
                    {"Datacenter": DC, "Key": "cfg", "MinQueryIndex": index,
                     "MaxQueryTime": 300_000_000_000},
                    seq=3,
                )  # fmt: skip
                done.set()

            nursery.start_soon(blocked)
            with trio.fail_after(10):
                await catalog.hub.until_waiting(1)
            await call_on_stream(
                writer,
                "KVS.Apply",
                {"Datacenter": DC, "Op": "set", "DirEnt": {"Key": "cfg", "Value": b"2"}},
                seq=4,
            )
            with trio.fail_after(10):
                await done.wait()
            session.close()
    assert catalog.hub.woken == 1
    assert result["reply"]["Entries"][0]["Value"] == b"2"
    assert result["reply"]["Index"] > index


async def test_the_go_msgpackrpc_client_over_yamux() -> None:
    binary = build_go_program(GO_CLIENT)
    endpoints, catalog = catalog_endpoints()
    async with running_port(endpoints) as running:
        address = f"{running.address.host}:{running.address.port}"
        with trio.fail_after(60):
            done = await trio.run_process(
                [str(binary), address], capture_stdout=True, capture_stderr=True, check=False
            )
    assert done.returncode == 0, done.stderr.decode()
    steps = {row["step"]: row for row in map(json.loads, done.stdout.decode().splitlines())}
    assert steps["ping"] == {"step": "ping", "error": "", "reply": {}}
    assert steps["register"]["error"] == ""
    assert steps["register-bad"]["error"] == "Must provide node and address"
    listed = steps["list-nodes"]["reply"]
    assert listed["KnownLeader"] is True and listed["LastContact"] == 0
    [node] = listed["Nodes"]
    assert (node["Node"], node["Address"], node["TaggedAddresses"]) == (
        "go-node",
        "10.1.2.3",
        {"wan": "198.51.100.7"},
    )
    assert listed["Index"] == node["ModifyIndex"] == node["CreateIndex"] > 0
    # What Go sent landed in the store as Go meant it.
    _, services = catalog.fsm.store.node_services("go-node")
    assert services is not None and services[1]["web"].tags == ("v1", "blue")
    assert [c.check_id for c in catalog.fsm.store.checks_of("go-node")] == ["web alive"]
    assert steps["kv-set"] == {"step": "kv-set", "error": "", "reply": False}
    [entry] = steps["kv-get"]["reply"]["Entries"]
    assert entry["Key"] == "go/key" and entry["Flags"] == 42
    assert entry["Value"] == "AAEC/2hp"  # base64 of 00 01 02 ff 'h' 'i': the bytes survived
    assert steps["kv-cas-stale"]["reply"] is False
    assert steps["kv-cas-fresh"]["reply"] is True
    after = steps["kv-get-after"]["reply"]
    assert after["Entries"][0]["ModifyIndex"] > entry["ModifyIndex"]
    assert after["Entries"][0]["CreateIndex"] == entry["CreateIndex"]
    missing = steps["kv-get-missing"]["reply"]
    assert missing["Entries"] is None and missing["Index"] == after["Index"]
    blocked = steps["kv-get-blocking"]["reply"]  # MaxQueryTime (a Go Duration) timed out
    assert blocked["Index"] == after["Index"] and blocked["Entries"] == after["Entries"]
    assert steps["kv-bad-op"]["error"] == "Invalid KVS operation 'frobnicate'"
    assert steps["unknown-method"]["error"] == "rpc: can't find method KVS.Frobnicate"
