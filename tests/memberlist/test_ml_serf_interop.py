"""Interop with the real serf agent (/usr/bin/serf): our memberlist and serf's see each other
alive, whichever side joins, and we detect serf's crash within the Lifeguard bound."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from ml_support import Node, RecordingDelegate, wait_until

from agentrpc.gossip.contract import GossipAddress, NodeState
from agentrpc.gossip.profiles import LAN
from agentrpc.gossip.security import Keyring
from agentrpc.gossip.serf_messages import encode_tags
from agentrpc.gossip.transport import UdpTcpTransport

pytestmark = pytest.mark.serf


class SerfPeerDelegate(RecordingDelegate):
    """What serf needs from a foreign node: Meta = 0xFF + msgpack tags (serf reads anything
    else as a bare "role"), and no push/pull user state (serf then skips its merge). Serf's
    user messages (join intents, its push/pull state) are only recorded."""

    def node_meta(self, limit: int) -> bytes:
        return encode_tags(self.tags)

    def local_state(self, join: bool) -> bytes:
        return b""


async def free_gossip_port() -> int:
    """A loopback port that was free for both UDP and TCP a moment ago."""
    packets, listener = await UdpTcpTransport().bind(GossipAddress("127.0.0.1", 0))
    port = packets.local_address.port
    packets.close()
    await listener.aclose()
    return port


class SerfAgent:
    """A running ``serf agent`` and its CLI."""

    def __init__(self, binary: str, name: str, process: trio.Process, bind: int, rpc: int) -> None:
        self.binary = binary
        self.name = name
        self.process = process
        self.bind_port = bind
        self.rpc_addr = f"127.0.0.1:{rpc}"

    async def cli(self, command: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        """``serf COMMAND -rpc-addr=... ARGS`` (Go stops reading flags at the first
        positional argument, so the flag goes first)."""
        with trio.fail_after(10):
            return await trio.run_process(
                [self.binary, command, f"-rpc-addr={self.rpc_addr}", *args],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )

    async def members(self) -> dict[str, dict[str, Any]]:
        result = await self.cli("members", "-format=json")
        if result.returncode != 0:
            raise OSError(result.stderr.decode(errors="replace"))
        members: list[dict[str, Any]] = json.loads(result.stdout)["members"]
        return {member["name"]: member for member in members}

    async def wait_member(self, name: str, status: str, within: float) -> dict[str, Any]:
        return await self.wait_for(name, lambda member: member["status"] == status, within)

    async def wait_for(
        self, name: str, check: Callable[[dict[str, Any]], bool], within: float
    ) -> dict[str, Any]:
        """Poll ``serf members`` until member ``name`` passes ``check``."""
        with trio.fail_after(within):
            while True:
                try:
                    member = (await self.members()).get(name)
                except OSError:
                    member = None  # RPC not up yet
                if member is not None and check(member):
                    return member
                await trio.sleep(0.1)


@asynccontextmanager
async def serf_agent(binary: str, name: str, log: Path, *extra: str) -> AsyncIterator[SerfAgent]:
    bind, rpc = await free_gossip_port(), await free_gossip_port()
    with log.open("wb") as sink:
        process = await trio.lowlevel.open_process(
            [
                binary,
                "agent",
                f"-node={name}",
                f"-bind=127.0.0.1:{bind}",
                f"-rpc-addr=127.0.0.1:{rpc}",
                "-log-level=debug",
                *extra,
            ],
            stdout=sink,
            stderr=sink,
        )
        try:
            agent = SerfAgent(binary, name, process, bind, rpc)
            await agent.wait_member(name, "alive", within=10)
            yield agent
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
            with trio.move_on_after(5) as scope:
                scope.shield = True
                await process.wait()


@asynccontextmanager
async def our_node(name: str, keyring: Keyring | None = None) -> AsyncIterator[Node]:
    delegate = SerfPeerDelegate(tags={"role": "test", "id": name})
    node = Node(
        name,
        UdpTcpTransport(),
        GossipAddress("127.0.0.1", 0),
        profile=LAN,
        seed=11,
        delegate=delegate,
        keyring=keyring,
    )
    async with trio.open_nursery() as nursery:
        await node.start(nursery)
        yield node
        nursery.cancel_scope.cancel()


async def test_we_join_serf_and_detect_its_crash(serf_binary: str, tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with (
            serf_agent(serf_binary, "s1", tmp_path / "s1.log") as serf,
            our_node("py1") as node,
        ):
            assert await node.memberlist.join([f"127.0.0.1:{serf.bind_port}"]) == (1, [])
            await wait_until(lambda: node.state_of("s1") == NodeState.ALIVE, timeout=5)
            s1 = node.memberlist.node("s1")
            assert s1 is not None and s1.vsn == (1, 5, 2, 2, 5, 5)
            assert s1.meta.startswith(b"\xff")

            seen = await serf.wait_member("py1", "alive", within=5)
            assert seen["tags"] == {"role": "test", "id": "py1"}
            assert seen["protocol"]["version"] == 4
            assert seen["port"] == node.address.port  # type: ignore[union-attr]

            await trio.sleep(3)  # a few probe rounds each way, all answered
            assert node.events.leaves == []
            assert node.memberlist.stats.failed_probes == 0
            assert (await serf.members())["py1"]["status"] == "alive"

            serf.process.send_signal(signal.SIGKILL)
            # One peer: it is probed every interval; the failed probe ends one interval
            # later; with k = 0 the suspicion lasts its minimum (4 s). Serf itself: ~6.1 s.
            min_timeout, _ = LAN.suspicion_timeouts(2)
            bound = 2 * LAN.probe_interval + min_timeout + 1.0
            elapsed = await wait_until(
                lambda: node.state_of("s1") == NodeState.DEAD, timeout=bound + 5, nodes=[node]
            )
            print(f"serf crash detected after {elapsed:.2f} s (bound {bound} s)")
            assert min_timeout <= elapsed <= bound
            assert "Suspect s1 has failed, no acks received" in node.log_text()
            assert "Marking s1 as failed, suspect timeout reached" in node.log_text()


async def test_serf_joins_us(serf_binary: str, tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            our_node("py2") as node,
            serf_agent(serf_binary, "s2", tmp_path / "s2.log") as serf,
        ):
            assert node.address is not None
            result = await serf.cli("join", f"127.0.0.1:{node.address.port}")
            assert result.returncode == 0, result.stderr
            assert b"Successfully joined cluster by contacting 1 nodes" in result.stdout
            await wait_until(lambda: node.state_of("s2") == NodeState.ALIVE, timeout=5)
            await serf.wait_member("py2", "alive", within=5)
            # Serf's join intent and its push/pull user state reached our delegate.
            await trio.sleep(2)
            assert node.delegate.messages, "no serf user message was delivered"
            assert any(join for _, join in node.delegate.remote_states)
            assert (await serf.members())["py2"]["status"] == "alive"
            assert node.state_of("s2") == NodeState.ALIVE

            # New tags travel as a gossiped alive message (UDP, compound, CRC to PMax 5).
            node.delegate.tags = {"role": "test", "id": "py2", "new": "tag"}
            node.memberlist.update_meta()
            await serf.wait_for("py2", lambda member: member["tags"].get("new") == "tag", 5)

            # A memberlist-only leave (no serf leave intent): serf sees the node go, and,
            # as the reference does without the intent, calls it failed.
            with trio.fail_after(5):
                await node.memberlist.leave()
            member = await serf.wait_member("py2", "failed", within=5)
            assert member["status"] == "failed"


async def test_encrypted_gossip_with_serf(serf_binary: str, tmp_path: Path) -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    with trio.fail_after(30):
        async with (
            serf_agent(serf_binary, "s3", tmp_path / "s3.log", f"-encrypt={key}") as serf,
            our_node("py3", keyring=Keyring.from_base64(key)) as node,
        ):
            assert await node.memberlist.join([f"127.0.0.1:{serf.bind_port}"]) == (1, [])
            await serf.wait_member("py3", "alive", within=5)
            await trio.sleep(2)  # encrypted probes both ways
            assert node.state_of("s3") == NodeState.ALIVE
            assert node.memberlist.stats.failed_probes == 0
            assert node.memberlist.stats.bad_packets == 0
            assert (await serf.members())["py3"]["status"] == "alive"
