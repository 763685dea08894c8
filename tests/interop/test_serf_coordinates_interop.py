"""Network coordinates between a real serf agent (/usr/bin/serf) and our memberlist with serf's
coordinate delegate, in one process over real UDP/TCP on 127.0.0.1.

Each side probes the other once a second; each ack carries the acker's coordinate. Ours learns
a finite coordinate for the serf node from serf's acks, and serf learns ours from our acks,
which ``serf rtt <our node>`` (serf's ``get-coordinate`` for both nodes, then the distance)
proves: it answers with a finite estimate only once serf has cached our coordinate. Without a
ping delegate our acks carry nothing and serf has no coordinate for us.

No fixed sleeps: both sides are polled (ours in-process, serf through its CLI), every wait
bounded.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from process_helpers import free_port

from agentrpc.gossip.contract import (
    GossipAddress,
    GossipTransport,
    NodeInfo,
    PacketConnection,
    StreamListener,
)
from agentrpc.gossip.coordinate import Coordinate
from agentrpc.gossip.memberlist import Memberlist, MemberlistConfig
from agentrpc.gossip.messages import GossipDecodeError, MessageType
from agentrpc.gossip.packet import decode_packet
from agentrpc.gossip.profiles import LAN
from agentrpc.gossip.serf_coordinates import SerfCoordinates
from agentrpc.gossip.serf_messages import encode_tags
from agentrpc.gossip.transport import UdpTcpTransport
from agentrpc.logs import DEBUG, LogHub

pytestmark = pytest.mark.serf

RTT_LINE = re.compile(r"Estimated (\S+) <-> (\S+) rtt: ([0-9.]+) ms")


class SerfPeerDelegate:
    """What serf needs of a foreign node: Meta = 0xFF + msgpack tags, no push/pull state."""

    def node_meta(self, limit: int) -> bytes:
        return encode_tags({"role": "py"})

    def notify_message(self, payload: bytes) -> None:
        pass

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        return []

    def has_broadcasts(self) -> bool:
        return False

    def local_state(self, join: bool) -> bytes:
        return b""

    def merge_remote_state(self, state: bytes, join: bool) -> None:
        pass


class NoEvents:
    def notify_join(self, node: NodeInfo) -> None:
        pass

    def notify_leave(self, node: NodeInfo) -> None:
        pass

    def notify_update(self, node: NodeInfo) -> None:
        pass


class PingCounter:
    """A transport that counts the UDP pings its node receives (serf's probes of us)."""

    def __init__(self) -> None:
        self.inner = UdpTcpTransport()
        self.pings = 0

    async def bind(self, address: GossipAddress) -> tuple[PacketConnection, StreamListener]:
        packets, listener = await self.inner.bind(address)
        return CountedPackets(packets, self), listener

    async def dial(self, address: GossipAddress) -> trio.abc.Stream:
        return await self.inner.dial(address)


class CountedPackets:
    def __init__(self, inner: PacketConnection, counter: PingCounter) -> None:
        self._inner = inner
        self._counter = counter

    @property
    def local_address(self) -> GossipAddress:
        return self._inner.local_address

    async def send_to(self, data: bytes, address: GossipAddress) -> None:
        await self._inner.send_to(data, address)

    async def receive_from(self) -> tuple[bytes, GossipAddress]:
        data, source = await self._inner.receive_from()
        with contextlib.suppress(GossipDecodeError):
            messages = decode_packet(data).messages
            self._counter.pings += sum(1 for kind, _ in messages if kind == MessageType.PING)
        return data, source

    def close(self) -> None:
        self._inner.close()


class SerfAgent:
    def __init__(self, binary: str, process: trio.Process, bind_port: int, rpc: str, log: Path):
        self.binary = binary
        self.process = process
        self.bind_port = bind_port
        self.rpc_addr = rpc
        self.log = log

    async def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """``serf COMMAND -rpc-addr=... ARGS`` (the flag must precede positional arguments)."""
        command, *rest = args
        with trio.fail_after(10):
            return await trio.run_process(
                [self.binary, command, f"-rpc-addr={self.rpc_addr}", *rest],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@asynccontextmanager
async def serf_agent(binary: str, name: str, log: Path) -> AsyncIterator[SerfAgent]:
    bind_port, rpc = free_port(), f"127.0.0.1:{free_port()}"
    with log.open("wb") as sink:
        process = await trio.lowlevel.open_process(
            [binary, "agent", f"-node={name}", f"-bind=127.0.0.1:{bind_port}",
             f"-rpc-addr={rpc}", "-log-level=debug"],
            stdout=sink,
            stderr=sink,
        )  # fmt: skip
        agent = SerfAgent(binary, process, bind_port, rpc, log)
        try:
            with trio.fail_after(15):
                while (await agent.cli("members")).returncode != 0:  # noqa: ASYNC110
                    await trio.sleep(0.1)
            yield agent
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await process.wait()


@asynccontextmanager
async def our_memberlist(
    name: str, coordinates: SerfCoordinates | None, transport: GossipTransport | None = None
) -> AsyncIterator[Memberlist]:
    hub = LogHub(level=DEBUG, sink=io.StringIO())
    memberlist = Memberlist(
        MemberlistConfig(
            name=name, bind=GossipAddress("127.0.0.1", 0), profile=LAN, ping=coordinates
        ),
        SerfPeerDelegate(),
        NoEvents(),
        hub.logger("memberlist"),
        transport if transport is not None else UdpTcpTransport(),
        random.Random(5),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(memberlist.run)
        yield memberlist
        nursery.cancel_scope.cancel()


async def poll(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds, looking every 100 ms (the callers bound the time)."""
    while True:
        if condition():
            return
        await trio.sleep(0.1)


async def serf_member_names(serf: SerfAgent) -> set[str]:
    result = await serf.cli("members", "-format=json")
    if result.returncode != 0:
        return set()
    return {member["name"] for member in json.loads(result.stdout)["members"]}


async def serf_rtt(serf: SerfAgent, node: str) -> tuple[bool, str]:
    result = await serf.cli("rtt", node)
    return result.returncode == 0, (result.stdout + result.stderr).decode(errors="replace")


async def test_serf_and_we_learn_each_others_coordinates(serf_binary: str, tmp_path: Path) -> None:
    log = tmp_path / "serf.log"
    coordinates = SerfCoordinates("py-coord", rng=random.Random(1))
    with trio.fail_after(60):
        async with (
            serf_agent(serf_binary, "go-coord", log) as serf,
            our_memberlist("py-coord", coordinates) as memberlist,
        ):
            assert await memberlist.join([f"127.0.0.1:{serf.bind_port}"]) == (1, [])

            # Our side: a finite coordinate for the serf node, from serf's own acks.
            await poll(lambda: coordinates.get_cached_coordinate("go-coord") is not None)
            theirs = coordinates.get_cached_coordinate("go-coord")
            assert theirs is not None
            assert theirs.is_valid() and len(theirs.vec) == 8
            assert coordinates.stats.rejected == 0
            ours_estimate = coordinates.coordinate.distance_to(theirs)
            assert math.isfinite(ours_estimate) and 0 <= ours_estimate < 1.0

            # Serf's side: it has our coordinate (from our acks), so rtt gives a number.
            while not (answer := await serf_rtt(serf, "py-coord"))[0]:
                assert "Could not find a coordinate for node" in answer[1], answer[1]
                await trio.sleep(0.2)
            match = RTT_LINE.search(answer[1])
            assert match is not None, answer[1]
            assert {match[1], match[2]} == {"py-coord", "go-coord"}
            estimate_ms = float(match[3])
            assert math.isfinite(estimate_ms) and 0 <= estimate_ms < 1000.0

            # A few more rounds each way: serf keeps accepting what we send, and so do we.
            updates = coordinates.stats.updates
            await poll(lambda: coordinates.stats.updates >= updates + 3)
            assert coordinates.stats.rejected == 0
            assert coordinates.coordinate != Coordinate.origin()
            text = serf.log_text()
            assert "Failed to decode coordinate from ping" not in text
            assert "Unsupported ping version" not in text
            print(f"serf estimates {estimate_ms} ms; we estimate {ours_estimate * 1e3:.3f} ms")


async def test_without_a_ping_delegate_serf_gets_no_coordinate_from_us(
    serf_binary: str, tmp_path: Path
) -> None:
    log = tmp_path / "serf.log"
    with trio.fail_after(60):
        async with (
            serf_agent(serf_binary, "go-plain", log) as serf,
            our_memberlist("py-plain", None, counter := PingCounter()) as memberlist,
        ):
            assert await memberlist.join([f"127.0.0.1:{serf.bind_port}"]) == (1, [])
            # Serf probes us once a second: after a few of its probes (each acked, with an
            # empty payload), it still has no coordinate for us.
            while await serf_member_names(serf) != {"go-plain", "py-plain"}:  # noqa: ASYNC110
                await trio.sleep(0.1)  # (a real process, polled)
            probed = counter.pings
            await poll(lambda: counter.pings >= probed + 4)
            await trio.sleep(0.1)  # let the last ack reach serf
            ok, text = await serf_rtt(serf, "py-plain")
            assert not ok
            assert 'Could not find a coordinate for node "py-plain"' in text
