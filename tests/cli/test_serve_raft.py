"""``agentrpc serve`` and Raft: with no flags the node keeps its state in its own directory
under the user's data directory (``$XDG_DATA_HOME``, pointed at a test directory here) and
leads its datacenter; ``--dev`` keeps nothing; ``info`` shows Consul's ``consul`` and ``raft``
sections; a restarted node keeps its node ID and its writes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import trio
from cli_support import cli, out, serve


async def info_sections(rpc_addr: str) -> dict[str, dict[str, str]]:
    result = await cli("info", "--rpc-addr", rpc_addr)
    assert result.returncode == 0, result.stderr
    sections: dict[str, dict[str, str]] = {}
    current = ""
    for line in out(result).splitlines():
        if line.endswith(":") and not line.startswith("\t"):
            current = line[:-1]
            sections[current] = {}
        elif "=" in line:
            key, _, value = line.strip().partition(" = ")
            sections[current][key] = value
    return sections


async def until_leader(rpc_addr: str) -> dict[str, dict[str, str]]:
    with trio.fail_after(20):
        while True:
            sections = await info_sections(rpc_addr)
            if sections.get("raft", {}).get("state") == "Leader":
                return sections
            await trio.sleep(0.1)


async def test_serve_with_no_data_flags_keeps_raft_under_the_users_data_dir(
    tmp_path: Path,
) -> None:
    home = tmp_path / "xdg"
    env = {"XDG_DATA_HOME": str(home)}
    node_dir = home / "agentrpc" / "dc1" / "raft-node"
    async with serve(node="raft-node", env=env) as agent:
        sections = await until_leader(agent.rpc_addr)
        assert sections["consul"]["leader"] == "true"
        assert sections["consul"]["bootstrap"] == "true"
        assert str(node_dir / "raft") in agent.stderr.decode()
        node_id = (node_dir / "node-id").read_text().strip()
        assert re.fullmatch(r"[0-9a-f-]{36}", node_id)
        assert (node_dir / "raft" / "raft.db").exists()
        result = await cli("leave", "--rpc-addr", agent.rpc_addr)
        assert result.returncode == 0
        await agent.wait_exit()
    async with serve(node="raft-node", env=env) as again:
        sections = await until_leader(again.rpc_addr)
        assert int(sections["raft"]["last_log_index"]) >= 2  # the old log, then a new term
        assert (node_dir / "node-id").read_text().strip() == node_id


async def test_serve_dev_keeps_nothing(tmp_path: Path) -> None:
    home = tmp_path / "xdg"
    async with serve("--dev", node="dev-node", env={"XDG_DATA_HOME": str(home)}) as agent:
        await until_leader(agent.rpc_addr)
        assert b"raft: in memory" in agent.stderr
    assert not home.exists() or not any(home.rglob("*"))
    assert os.environ.get("XDG_DATA_HOME")  # the session's private one (conftest)


async def test_bootstrap_and_bootstrap_expect_together_are_refused() -> None:
    result = await cli("serve", "--bootstrap", "--bootstrap-expect", "3")
    assert result.returncode == 1
    assert "cannot be given together" in result.stderr.decode()
