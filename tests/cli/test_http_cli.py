"""The HTTP commands' ``--json`` (``kv get``, ``catalog``) against a real agent, ``rtt`` told it
was pointed at the agent RPC port instead of Serf's, and ``serve --help`` on the signals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli_support import assert_one_line, cli, dying_agent, out, serve

from agentrpc.cli.main import main

WRONG_PORT = (
    r"it is probably not Serf's RPC port.*pass it as --serf-rpc-addr or AGENTRPC_SERF_RPC_ADDR"
)


def _http_addr(stderr: bytearray) -> str:
    match = re.search(rb"HTTP API listening on (\S+)", stderr)
    assert match is not None, stderr.decode(errors="replace")
    return match.group(1).decode()


async def test_json_of_kv_and_catalog_and_rtt_against_a_token_agent(tmp_path: Path) -> None:
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"rpc_token": "s3cret"}))
    args = ("--http-addr", "127.0.0.1:0", "--config-file", str(config), "--node", "j1")
    async with serve(*args, node="j1", ready=b"HTTP API listening on") as agent:
        http = ["--http-addr", _http_addr(agent.stderr)]
        assert json.loads(out(await cli("kv", "get", "--recurse", "--json", *http))) == []
        assert json.loads(out(await cli("kv", "get", "--keys", "--json", *http))) == []
        assert (await cli("kv", "put", "app/x", "hi", *http)).returncode == 0
        entry = json.loads(out(await cli("kv", "get", "app/x", "--json", *http)))
        assert entry["Key"] == "app/x" and entry["Value"] == "aGk=" and entry["Flags"] == 0
        assert set(entry) == {
            "CreateIndex", "Flags", "Key", "LockIndex", "ModifyIndex", "Session", "Value",
        }  # fmt: skip
        listed = json.loads(out(await cli("kv", "get", "app/", "--recurse", "--json", *http)))
        assert [item["Key"] for item in listed] == ["app/x"]
        keys = json.loads(out(await cli("kv", "get", "", "--keys", "--json", *http)))
        assert keys == ["app/"]
        nodes = json.loads(out(await cli("catalog", "nodes", "--json", *http)))
        assert [(n["Node"], n["Address"], n["Datacenter"]) for n in nodes] == [
            ("j1", "127.0.0.1", "dc1")
        ]
        none = await cli("catalog", "nodes", "--service", "nosuch", "--json", *http)
        assert (none.returncode, json.loads(out(none))) == (0, [])
        services = json.loads(out(await cli("catalog", "services", "--json", *http)))
        assert services == [{"Name": "consul", "Tags": []}]
        empty = await cli("catalog", "services", "--node", "ghost", "--json", *http)
        assert (empty.returncode, json.loads(out(empty))) == (0, [])
        dcs = json.loads(out(await cli("catalog", "datacenters", "--json", *http)))
        assert dcs == ["dc1"]
        # rtt at the agent RPC port of an agent with an rpc_token: not a hint of --token.
        line = assert_one_line(await cli("rtt", "j1", "--serf-rpc-addr", agent.rpc_addr))
    assert line.startswith("Error getting coordinates: Permission denied: "), line
    assert "--token" not in line and re.search(WRONG_PORT, line), line


async def test_rtt_at_a_port_that_hangs_up_after_the_handshake() -> None:
    async with dying_agent() as address:
        line = assert_one_line(await cli("rtt", "a", "b", "--serf-rpc-addr", address))
    assert "did it stop or crash" not in line
    assert re.fullmatch(
        rf"Error getting coordinates: {re.escape(address)} closed the connection on Serf's "
        rf"coordinate query: {WRONG_PORT}",
        line,
    ), line


def test_serve_help_says_a_client_leaves_on_sigterm(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "neither does" not in text
    assert "On SIGINT or SIGTERM a client leaves the cluster gracefully first" in text
