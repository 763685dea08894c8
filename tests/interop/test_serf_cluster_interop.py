"""Our agents and a real serf agent in one gossip cluster (real UDP/TCP on 127.0.0.1).

serf joins us and we join serf; each lists the other alive with the right tags and versions;
SIGKILL of either side is detected by the other; a graceful leave shows ``left`` on the other;
the same with ``-encrypt`` on both sides.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from process_helpers import free_port, started_process

from agentrpc import Client

CLI = [sys.executable, "-m", "agentrpc.cli"]


@dataclass
class Ours:
    process: trio.Process
    rpc_addr: str
    lan_port: int


@asynccontextmanager
async def our_agent(name: str, tmp_path: Path, encrypt: str = "") -> AsyncIterator[Ours]:
    lan_port = free_port()
    rpc_addr = f"127.0.0.1:{free_port()}"
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps({"encrypt": encrypt}))
    argv = [*CLI, "serve", "--node", name, "--rpc-addr", rpc_addr,
            "--serf-lan-addr", f"127.0.0.1:{lan_port}", "--serf-wan-addr", "127.0.0.1:0",
            "--server-addr", "127.0.0.1:0", "--http-addr", "", "--dns-addr", "",
            "--config-file", str(config)]  # fmt: skip
    async with started_process(argv, b"agent started") as process:
        yield Ours(process, rpc_addr, lan_port)


@dataclass
class Serf:
    process: trio.Process
    rpc_addr: str
    bind_port: int


@asynccontextmanager
async def serf_agent(serf: str, name: str, encrypt: str = "") -> AsyncIterator[Serf]:
    bind_port = free_port()
    rpc_addr = f"127.0.0.1:{free_port()}"
    argv = [serf, "agent", f"-node={name}", f"-bind=127.0.0.1:{bind_port}",
            f"-rpc-addr={rpc_addr}", "-log-level=debug", "-tag", "kind=go"]  # fmt: skip
    if encrypt:
        argv.append(f"-encrypt={encrypt}")
    async with started_process(argv, b"Serf agent running", merge_output=True) as process:
        yield Serf(process, rpc_addr, bind_port)


async def serf_members(serf: str, agent: Serf) -> dict[str, dict[str, object]]:
    result = await trio.run_process(
        [serf, "members", f"-rpc-addr={agent.rpc_addr}", "-format=json"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if result.returncode != 0:
        return {}
    return {m["name"]: m for m in json.loads(result.stdout)["members"]}


async def our_members(agent: Ours) -> dict[str, tuple[str, dict[str, str], int]]:
    async with Client(agent.rpc_addr) as client:
        return {m.name: (m.status, m.tags, m.delegate_cur) for m in await client.members_lan()}


async def eventually(check: Callable[[], object], seconds: float = 30) -> None:
    """Poll an async condition against real processes: bounded, every 200 ms."""
    with trio.fail_after(seconds):
        while not await check():  # type: ignore[misc]  # noqa: ASYNC110 - real processes
            await trio.sleep(0.2)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "encrypted"])
async def test_serf_and_our_agents_form_one_cluster(
    serf_binary: str, tmp_path: Path, encrypted: bool
) -> None:
    key = base64.b64encode(os.urandom(32)).decode() if encrypted else ""
    async with (
        our_agent("ours1", tmp_path, key) as ours1,
        our_agent("ours2", tmp_path, key) as ours2,
        serf_agent(serf_binary, "go1", key) as go1,
    ):
        # serf joins us ...
        joined = await trio.run_process(
            [serf_binary, "join", f"-rpc-addr={go1.rpc_addr}", f"127.0.0.1:{ours1.lan_port}"],
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
        assert joined.returncode == 0, joined.stdout + joined.stderr
        # ... and we join serf.
        async with Client(ours2.rpc_addr) as client:
            assert await client.join([f"127.0.0.1:{go1.bind_port}"]) == 1

        async def all_alive() -> bool:
            theirs = await serf_members(serf_binary, go1)
            mine = await our_members(ours1)
            names = {"ours1", "ours2", "go1"}
            return (
                set(theirs) == names
                and all(m["status"] == "alive" for m in theirs.values())
                and set(mine) == names
                and all(status == "alive" for status, _, _ in mine.values())
            )

        await eventually(all_alive)
        theirs = await serf_members(serf_binary, go1)
        assert theirs["ours1"]["tags"]["role"] == "consul"  # type: ignore[index]
        assert theirs["ours1"]["tags"]["dc"] == "dc1"  # type: ignore[index]
        assert theirs["ours1"]["protocol"]["max"] == 5  # type: ignore[index]
        mine = await our_members(ours1)
        _, tags, delegate_cur = mine["go1"]
        assert tags["kind"] == "go"
        assert delegate_cur == 5  # serf's own protocol version, as it advertises it

        if encrypted:
            stats = await _stats(ours1)
            assert stats["serf_lan"]["encrypted"] == "true"

        # Our graceful leave shows as left on serf.
        async with Client(ours2.rpc_addr) as client:
            await client.leave()
        with trio.fail_after(20):
            assert await ours2.process.wait() == 0

        async def ours2_left() -> bool:
            return (await serf_members(serf_binary, go1)).get("ours2", {}).get("status") == "left"

        await eventually(ours2_left)

        # SIGKILL of serf is detected by us.
        go1.process.send_signal(signal.SIGKILL)

        async def go1_failed() -> bool:
            return (await our_members(ours1)).get("go1", ("",))[0] == "failed"

        await eventually(go1_failed)


async def test_serf_detects_our_agent_killed(serf_binary: str, tmp_path: Path) -> None:
    async with our_agent("victim", tmp_path) as ours, serf_agent(serf_binary, "watcher") as go:
        async with Client(ours.rpc_addr) as client:
            assert await client.join([f"127.0.0.1:{go.bind_port}"]) == 1

        async def victim_alive() -> bool:
            members = await serf_members(serf_binary, go)
            return members.get("victim", {}).get("status") == "alive"

        await eventually(victim_alive)
        ours.process.send_signal(signal.SIGKILL)

        async def victim_failed() -> bool:
            members = await serf_members(serf_binary, go)
            return members.get("victim", {}).get("status") == "failed"

        await eventually(victim_failed)


async def _stats(agent: Ours) -> dict[str, dict[str, str]]:
    async with Client(agent.rpc_addr) as client:
        return await client.stats()
