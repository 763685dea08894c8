"""The ten commands and the error table of spec/agent-rpc.md, over every transport."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest
import trio
from rpc_helpers import RawConnection, running_agent

from agentrpc.protocol.codec import Response

OK_HEADER_SEQ1 = b"\x82\xa5Error\xa0\xa3Seq\x01"


async def test_handshake_reply_is_header_only(transport: str) -> None:
    async with running_agent(transport) as agent:
        conn = await RawConnection.open(agent)
        await conn.request("handshake", {"Version": 1})
        assert await conn.read(1) == [Response(1, "", None)]
        assert bytes(conn.raw) == OK_HEADER_SEQ1


async def test_command_before_handshake_is_refused_and_closed(transport: str) -> None:
    async with running_agent(transport) as agent:
        conn = await RawConnection.open(agent)
        await conn.request("members-lan", reply_body=False)
        assert await conn.read_until_eof() == [Response(1, "Handshake required", None)]
        # Other connections are unaffected.
        other = await RawConnection.open(agent)
        await other.handshake()


@pytest.mark.parametrize("command", ["frobnicate", "", "Members-LAN"])
async def test_unknown_command_is_refused_and_closed(transport: str, command: str) -> None:
    async with running_agent(transport) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        seq = await conn.request(command)
        assert await conn.read_until_eof() == [Response(seq, "Unsupported command", None)]


async def test_handshake_version_is_checked_first_and_keeps_the_connection(
    transport: str,
) -> None:
    async with running_agent(transport) as agent:
        conn = await RawConnection.open(agent)
        assert (await conn.call("handshake", {"Version": 2})).error == "Unsupported RPC version"
        assert (await conn.call("handshake", {"Version": 1})).error == ""
        assert (await conn.call("handshake", {"Version": 1})).error == (
            "Handshake already performed"
        )
        assert (await conn.call("handshake", {"Version": 7})).error == "Unsupported RPC version"
        assert (await conn.call("members-lan", reply_body=True)).error == ""


@pytest.mark.parametrize(
    ("level", "error"),
    [("bogus", "Unknown log level: BOGUS"), ("", "Unknown log level: ")],
)
async def test_monitor_with_bad_level(transport: str, level: str, error: str) -> None:
    async with running_agent(transport) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        seq = await conn.request("monitor", {"LogLevel": level})
        assert await conn.read(1) == [Response(seq, error, None)]
        conn.decoder.forget(seq)
        assert (await conn.call("stats", reply_body=True)).error == ""


async def test_second_monitor_on_one_connection(transport: str) -> None:
    async with running_agent(transport) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        first = await conn.request("monitor", {"LogLevel": "err"})
        second = await conn.request("monitor", {"LogLevel": "err"})
        conn.decoder.forget(second)
        responses = await conn.read(2)
        assert Response(first, "", None) in responses
        assert Response(second, "Monitor already exists", None) in responses


async def test_members_lan_bytes(transport: str) -> None:
    async with running_agent(transport) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        start = len(conn.raw)
        response = await conn.call("members-lan", reply_body=True)
        raw = bytes(conn.raw[start:])
        assert raw.startswith(b"\x82\xa5Error\xa0\xa3Seq\x02")
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(raw)
        header, body = list(unpacker)
        assert header == {"Error": "", "Seq": 2}
        (member,) = body["Members"]
        assert member == response.body["Members"][0]
        assert member["Addr"] == b"\x7f\x00\x00\x01"  # bin, 4 bytes
        assert member["Name"] == "node1"
        assert member["Port"] == 8301
        assert member["Status"] == "alive"
        assert member["Tags"]["role"] == "consul"
        assert member["Tags"]["dc"] == "dc1"
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in member["Tags"].items())
        assert [member[k] for k in ("ProtocolMin", "ProtocolMax", "ProtocolCur")] == [1, 5, 2]
        assert [member[k] for k in ("DelegateMin", "DelegateMax", "DelegateCur")] == [2, 5, 4]
        # Strings travel as msgpack str, never bin: a raw=True decode sees them as the only
        # bytes values besides Addr, and a bin type byte appears exactly once (for Addr).
        assert raw.count(b"\xc4") == 1


async def test_members_wan_on_a_server_and_a_client(transport: str) -> None:
    async with running_agent(transport) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        body = (await conn.call("members-wan", reply_body=True)).body
        assert [m["Name"] for m in body["Members"]] == ["node1.dc1"]
        assert body["Members"][0]["Port"] == 8302
    async with running_agent(transport, server=False) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        start = len(conn.raw)
        response = await conn.call("members-wan", reply_body=True)
        assert response == Response(2, "", {"Members": []})
        assert bytes(conn.raw[start:]).endswith(b"\x81\xa7Members\x90")
        lan = (await conn.call("members-lan", reply_body=True)).body["Members"]
        assert lan[0]["Tags"]["role"] == "node"


async def test_join_to_nobody_fails_honestly(transport: str) -> None:
    async with running_agent(transport) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        response = await conn.call(
            "join", {"Existing": ["127.0.0.1:1"], "WAN": False}, reply_body=True
        )
        assert response.body == {"Num": 0}
        assert response.error.startswith("1 error(s) occurred:\n\n* Failed to join 127.0.0.1")
        empty = await conn.call("join", {"Existing": [], "WAN": False}, reply_body=True)
        assert empty == Response(empty.seq, "", {"Num": 0})


async def test_join_wan_on_a_client(transport: str) -> None:
    async with running_agent(transport, server=False) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        response = await conn.call(
            "join", {"Existing": ["127.0.0.1:8302"], "WAN": True}, reply_body=True
        )
        assert response.error == "Must be a server to join WAN cluster"
        assert response.body == {"Num": 0}
        assert (await conn.call("members-lan", reply_body=True)).error == ""


async def test_force_leave_stop_and_reload_are_header_only(transport: str) -> None:
    async with running_agent(transport) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        assert await conn.call("force-leave", {"Node": "nobody"}) == Response(2, "", None)
        assert await conn.call("stop", {"Stop": 12345}) == Response(3, "", None)
        assert await conn.call("reload") == Response(4, "", None)
        assert (await conn.call("stats", reply_body=True)).error == ""


async def test_stats_sections_are_maps_of_strings(transport: str) -> None:
    async with running_agent(transport) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        body = (await conn.call("stats", reply_body=True)).body
        assert set(body) == {
            "agent", "build", "runtime", "serf_lan", "serf_wan", "rpc",
            "memberlist_lan", "memberlist_wan", "consul", "raft",
        }  # fmt: skip
        assert {"state", "term", "commit_index", "applied_index", "num_peers"} <= set(body["raft"])
        assert {"packets_received", "bad_packets", "probes"} <= set(body["memberlist_lan"])
        for section in body.values():
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in section.items())
        assert set(body["build"]) == {"revision", "version", "prerelease"}
        assert {"os", "arch", "version", "cpu_count"} <= set(body["runtime"])
        serf_keys = {
            "encrypted", "event_queue", "event_time", "failed", "health_score", "intent_queue",
            "left", "member_time", "members", "query_queue", "query_time",
        }  # fmt: skip
        assert serf_keys <= set(body["serf_lan"])
        assert body["serf_lan"]["members"] == "1"
        rpc = body["rpc"]
        assert {"connections", "frames_in", "frames_out", "monitor_dropped"} <= set(rpc)
        assert int(rpc["frames_in"]) >= 1
    async with running_agent(transport, server=False) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        body = (await conn.call("stats", reply_body=True)).body
        assert "serf_wan" not in body
        assert body["agent"]["server"] == "false"


async def test_array_form_header(transport: str) -> None:
    async with running_agent(transport) as agent:
        conn = await RawConnection.open(agent)
        conn.decoder.expect(1, body=False)
        conn.decoder.expect(2, body=True)
        await conn.send_objects(["handshake", 1, ""], {"Version": 1}, ["members-lan", 2])
        responses = await conn.read(2)
        assert responses[0] == Response(1, "", None)
        assert responses[1].body["Members"][0]["Name"] == "node1"


async def test_malformed_header_closes_only_that_connection(transport: str) -> None:
    async with running_agent(transport) as agent:
        good = await RawConnection.open(agent)
        await good.handshake()
        bad = await RawConnection.open(agent)
        await bad.handshake()
        await bad.send_objects({"Command": "stats"})  # no Seq
        assert await bad.read_until_eof() == []
        garbage = await RawConnection.open(agent)
        await garbage.send_bytes(b"\xc1\xc1\xc1\xc1")
        assert await garbage.read_until_eof() == []
        assert (await good.call("members-lan", reply_body=True)).error == ""
        assert agent.rpc_stats.protocol_errors == 2


async def test_malformed_body_gets_a_clear_error_then_close(transport: str) -> None:
    async with running_agent(transport) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        seq = await conn.request("join", {"Existing": "not-a-list"}, reply_body=True)
        (response,) = await conn.read_until_eof()
        assert response.seq == seq
        assert response.error.startswith("Malformed request:")
        assert response.body == {"Num": 0}  # the Go client always reads a join body


async def test_reload_with_a_bad_config_reports_and_keeps_running(
    transport: str, tmp_path: Path
) -> None:
    config_file = tmp_path / "agent.json"
    config_file.write_text(json.dumps({"log_level": "INFO"}))
    async with running_agent(transport, files=[str(config_file)], log_level=None) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        config_file.write_text(json.dumps({"log_level": "DEBUG"}))
        assert (await conn.call("reload")).error == ""
        assert agent.config.log_level == "DEBUG"
        config_file.write_text("{not json")
        response = await conn.call("reload")
        assert response.error.startswith("Failed to reload configs: config file")
        assert agent.config.log_level == "DEBUG"
        config_file.write_text(json.dumps({"log_level": "LOUD"}))
        assert "log_level" in (await conn.call("reload")).error
        config_file.write_text(json.dumps({"node_name": "renamed", "log_level": "WARN"}))
        assert (await conn.call("reload")).error == ""
        assert agent.config.node_name == "node1"  # needs a restart: kept, and logged
        assert agent.config.log_level == "WARN"
        assert (await conn.call("members-lan", reply_body=True)).error == ""


async def test_leave_replies_then_shuts_the_agent_down(transport: str) -> None:
    async with running_agent(transport) as agent:
        watcher = await RawConnection.open(agent)
        await watcher.handshake()
        await watcher.request("monitor", {"LogLevel": "info"})
        conn = await RawConnection.open(agent)
        await conn.handshake()
        seq = await conn.request("leave")
        assert await conn.read_until_eof() == [Response(seq, "", None)]
        with trio.fail_after(5):
            await agent.wait_stopped()
        lines = [r.body["Log"] for r in await watcher.read_until_eof() if r.body]
        assert any("graceful leave complete" in line for line in lines)
        assert any("shutdown complete" in line for line in lines)
        members = agent.lan.members()
        assert members[0].status == "left"
