"""Interop with the real serf agent (/usr/bin/serf): our memberlist and serf's see each other
alive, whichever side joins, and we detect serf's crash within the Lifeguard bound.

No fixed sleeps: probe rounds are counted (ours by our stats, serf's by the pings our UDP
socket receives and the acks it sends, read with the packet codec), serf's view is polled
through ``serf members``, and every wait is bounded."""

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

from agentrpc.gossip.contract import (
    GossipAddress,
    GossipTransport,
    NodeState,
    PacketConnection,
    StreamListener,
)
from agentrpc.gossip.messages import AckResp, GossipDecodeError, MessageType, Ping, decode_body
from agentrpc.gossip.packet import decode_packet
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


class ProbeTap:
    """The pings a node receives and the acks it sends (by sequence number), read off its UDP
    packets: how a test sees the peer's probe rounds and our answers to them."""

    def __init__(self, keyring: Keyring | None = None) -> None:
        self.keyring = keyring
        self.pings: set[int] = set()
        self.acks: set[int] = set()

    def _messages(self, data: bytes) -> tuple[tuple[int, bytes], ...]:
        try:
            return decode_packet(data, keyring=self.keyring).messages
        except GossipDecodeError:
            return ()  # the node itself counts and drops what it cannot read

    def received(self, data: bytes) -> None:
        for msg_type, body in self._messages(data):
            if msg_type == MessageType.PING:
                self.pings.add(decode_body(Ping, body).seq_no)

    def sent(self, data: bytes) -> None:
        for msg_type, body in self._messages(data):
            if msg_type == MessageType.ACK_RESP:
                self.acks.add(decode_body(AckResp, body).seq_no)

    @property
    def answered_pings(self) -> int:
        return len(self.pings & self.acks)

    @property
    def unanswered_pings(self) -> set[int]:
        return self.pings - self.acks


class TappedPackets:
    """A packet connection that shows every packet to a :class:`ProbeTap` on the way."""

    def __init__(self, inner: PacketConnection, tap: ProbeTap) -> None:
        self._inner = inner
        self._tap = tap

    @property
    def local_address(self) -> GossipAddress:
        return self._inner.local_address

    async def send_to(self, data: bytes, address: GossipAddress) -> None:
        self._tap.sent(data)
        await self._inner.send_to(data, address)

    async def receive_from(self) -> tuple[bytes, GossipAddress]:
        data, source = await self._inner.receive_from()
        self._tap.received(data)
        return data, source

    def close(self) -> None:
        self._inner.close()


class TappedTransport:
    """``inner`` with its packets shown to ``tap``; streams untouched."""

    def __init__(self, inner: GossipTransport, tap: ProbeTap) -> None:
        self._inner = inner
        self._tap = tap

    async def bind(self, address: GossipAddress) -> tuple[PacketConnection, StreamListener]:
        packets, listener = await self._inner.bind(address)
        return TappedPackets(packets, self._tap), listener

    async def dial(self, address: GossipAddress) -> trio.abc.Stream:
        return await self._inner.dial(address)


async def free_gossip_port() -> int:
    """A loopback port that was free for both UDP and TCP a moment ago."""
    packets, listener = await UdpTcpTransport().bind(GossipAddress("127.0.0.1", 0))
    port = packets.local_address.port
    packets.close()
    await listener.aclose()
    return port


class SerfAgent:
    """A running ``serf agent`` and its CLI."""

    def __init__(
        self, binary: str, name: str, process: trio.Process, bind: int, rpc: int, log: Path
    ) -> None:
        self.binary = binary
        self.name = name
        self.process = process
        self.bind_port = bind
        self.rpc_addr = f"127.0.0.1:{rpc}"
        self.log = log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

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
            agent = SerfAgent(binary, name, process, bind, rpc, log)
            await agent.wait_member(name, "alive", within=10)
            yield agent
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
            with trio.move_on_after(5) as scope:
                scope.shield = True
                await process.wait()


@asynccontextmanager
async def our_node(
    name: str, keyring: Keyring | None = None, tap: ProbeTap | None = None
) -> AsyncIterator[Node]:
    delegate = SerfPeerDelegate(tags={"role": "test", "id": name})
    transport: GossipTransport = UdpTcpTransport()
    node = Node(
        name,
        transport if tap is None else TappedTransport(transport, tap),
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


async def probe_rounds_each_way(node: Node, tap: ProbeTap, serf: SerfAgent, rounds: int) -> None:
    """Wait until ``rounds`` more of our probes of serf have completed and serf has probed us
    ``rounds`` more times, each ping answered; then check that none of them failed."""
    probes, answered = node.memberlist.stats.probes, tap.answered_pings
    # Our probe loop is sequential: the round after ``rounds`` starts only when they are over.
    await wait_until(
        lambda: (
            node.memberlist.stats.probes > probes + rounds
            and tap.answered_pings >= answered + rounds
        ),
        timeout=5 + 2 * rounds * LAN.probe_interval,
        nodes=[node],
    )
    assert node.memberlist.stats.failed_probes == 0
    assert not tap.unanswered_pings - {max(tap.pings)}  # the newest may be in flight
    assert f"Failed ping: {node.name}" not in serf.log_text()


async def test_we_join_serf_and_detect_its_crash(serf_binary: str, tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with (
            serf_agent(serf_binary, "s1", tmp_path / "s1.log") as serf,
            our_node("py1", tap=(tap := ProbeTap())) as node,
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

            await probe_rounds_each_way(node, tap, serf, 3)
            assert node.events.leaves == []
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
            await wait_until(
                lambda: (
                    bool(node.delegate.messages)
                    and any(join for _, join in node.delegate.remote_states)
                ),
                timeout=5,
                nodes=[node],
            )
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
            our_node(
                "py3",
                keyring=Keyring.from_base64(key),
                tap=(tap := ProbeTap(Keyring.from_base64(key))),
            ) as node,
        ):
            assert await node.memberlist.join([f"127.0.0.1:{serf.bind_port}"]) == (1, [])
            await serf.wait_member("py3", "alive", within=5)
            await probe_rounds_each_way(node, tap, serf, 2)  # encrypted both ways
            assert node.state_of("s3") == NodeState.ALIVE
            assert node.memberlist.stats.bad_packets == 0
            assert (await serf.members())["py3"]["status"] == "alive"
