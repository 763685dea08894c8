"""``agentrpc keyring`` (Consul 0.7's output), ``event``, ``query`` and ``rtt`` (serf's output,
over the Serf RPC listener) against a real ``agentrpc serve`` process on loopback; each failure
one line on stderr."""

from __future__ import annotations

import json
import re
from pathlib import Path

import trio
from cli_support import assert_one_line, cli, closed_port, err, out, serve
from process_helpers import free_port

KEY1 = "cg8StVXbQJ0gPvMd9o7yrg=="
KEY2 = "4le2xwSQgNTAB6Ucyh6Vjw=="


async def test_keyring_list_install_use_remove_and_its_failures(tmp_path: Path) -> None:
    async with serve("--encrypt", KEY1, "--data-dir", str(tmp_path)) as agent:
        addr = ["--rpc-addr", agent.rpc_addr]
        listed = await cli("keyring", "--list", *addr)
        assert listed.returncode == 0, err(listed)
        assert out(listed).splitlines() == [
            "==> Gathering installed encryption keys...",
            "==> Done!",
            "",
            "WAN:",
            f"  {KEY1} [1/1]",
            "",
            "dc1 (LAN):",
            f"  {KEY1} [1/1]",
        ]
        # Consul's single-dash spellings, one action each.
        installed = await cli("keyring", f"-install={KEY2}", f"-rpc-addr={agent.rpc_addr}")
        assert out(installed).splitlines() == [
            "==> Installing new gossip encryption key...",
            "==> Done!",
        ], err(installed)
        used = await cli("keyring", "-use", KEY2, *addr)
        assert out(used).splitlines()[0] == "==> Changing primary gossip encryption key..."
        removed = await cli("keyring", "--remove", KEY1, *addr)
        assert out(removed).splitlines()[0] == "==> Removing gossip encryption key..."
        assert removed.returncode == 0, err(removed)
        as_json = json.loads(out(await cli("keyring", "--list", "--json", *addr)))
        assert {(k["pool"], k["key"], k["count"]) for k in as_json["keys"]} == {
            ("WAN", KEY2, 1),
            ("LAN", KEY2, 1),
        }
        assert json.loads((tmp_path / "serf" / "local.keyring").read_text()) == [KEY2]

        refused = await cli("keyring", "--remove", KEY2, *addr)
        line = assert_one_line(refused)
        assert line.startswith("WAN error: 1/1 nodes reported failure (cli-node.dc1: ")
        assert "; dc1 (LAN) error: 1/1 nodes reported failure (cli-node: " in line
        both = assert_one_line(await cli("keyring", "--list", "--use", KEY2, *addr))
        assert both.startswith("Only a single action is allowed")
        none = assert_one_line(await cli("keyring", *addr))
        assert none.startswith("An action is required")


async def test_event_query_and_rtt_over_the_serf_listener(tmp_path: Path) -> None:
    serf_rpc = f"127.0.0.1:{free_port()}"
    async with serve("--serf-rpc-addr", serf_rpc, ready=b"Serf RPC listening on"):
        addr = ["--serf-rpc-addr", serf_rpc]
        sent = await cli("event", "deploy", "v1", *addr)
        assert out(sent) == "Event 'deploy' dispatched! Coalescing enabled: true\n", err(sent)
        plain = await cli("event", "-no-coalesce", "deploy", *addr)
        assert out(plain) == "Event 'deploy' dispatched! Coalescing enabled: false\n", err(plain)
        too_big = assert_one_line(await cli("event", "big", "x" * 2000, *addr))
        assert too_big.startswith("Error sending event: user event exceeds")

        asked = await cli("query", "ping", "--query-timeout", "1s", *addr)
        assert asked.returncode == 0, err(asked)
        assert out(asked).splitlines() == [
            "Query 'ping' dispatched",
            "Ack from 'cli-node'",
            "Total Acks: 1",
            "Total Responses: 0",
        ]
        as_json = json.loads(out(await cli("query", "ping", "--query-timeout=1s", "--json", *addr)))
        assert as_json == {"Acks": ["cli-node"], "Responses": {}}
        internal = assert_one_line(await cli("query", "_serf_list-keys", *addr))
        assert internal == "Error sending query: Queries cannot contain the '_serf_' prefix"

        rtt = await cli("rtt", "cli-node", *addr)
        assert re.fullmatch(r"Estimated cli-node <-> cli-node rtt: \d+\.\d{3} ms\n", out(rtt))
        missing = assert_one_line(await cli("rtt", "ghost", *addr))
        assert missing == "Error getting coordinates: Could not find a coordinate for node 'ghost'"
        assert assert_one_line(await cli("rtt", *addr)).startswith("One or two node names")

    refused = assert_one_line(
        await cli("event", "x", "--serf-rpc-addr", f"127.0.0.1:{closed_port()}")
    )
    assert refused.startswith("Error connecting to Serf agent: ")
    assert "--serf-rpc-addr" in refused
    await trio.lowlevel.checkpoint()
