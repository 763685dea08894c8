"""Flood an agent's LAN gossip port with made-up nodes and report what it cost the agent.

    .venv/bin/python scripts/gossip_flood.py alive --nodes 100000
    .venv/bin/python scripts/gossip_flood.py push-pull --nodes 150000
    .venv/bin/python scripts/gossip_flood.py ping --seconds 10

Starts ``agentrpc serve`` on free loopback ports (``--max-members`` sets its
``gossip_max_members``), then, over 127.0.0.1 only:

* ``alive``: ``--nodes`` alive messages about made-up nodes, 200 to a compound UDP packet,
  paced so the kernel buffer does not overflow;
* ``push-pull``: one TCP push/pull (uncompressed) declaring ``--nodes`` made-up alive nodes;
* ``ping``: UDP pings addressed to a wrong node name, as fast as possible for ``--seconds``.

It reports the agent's RSS growth and CPU seconds (from ``/proc``), the members it ended with
and the log lines it wrote.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
import trio.lowlevel

from agentrpc import Client
from agentrpc.gossip.messages import Alive, NodeState, Ping, PushNodeState, encode_message
from agentrpc.gossip.packet import make_compound
from agentrpc.gossip.serf_messages import encode_tags
from agentrpc.gossip.stream import StreamEncoder

_VSN = (1, 5, 2, 2, 5, 4)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / 100.0


def _addr(index: int) -> bytes:
    return bytes((10, (index >> 16) & 0xFF, (index >> 8) & 0xFF, index & 0xFF))


def alive_packets(count: int, per_packet: int = 200) -> list[bytes]:
    meta = encode_tags({"role": "fake"})
    messages = [
        encode_message(Alive(1, f"fake-{i}", _addr(i), 7946, meta, _VSN)) for i in range(count)
    ]
    return [make_compound(messages[i : i + per_packet]) for i in range(0, count, per_packet)]


def push_pull_stream(count: int) -> bytes:
    meta = encode_tags({"role": "fake"})
    nodes = [
        PushNodeState(f"fake-{i}", _addr(i), 7946, meta, 1, int(NodeState.ALIVE), _VSN)
        for i in range(count)
    ]
    return StreamEncoder(compress=False).push_pull(nodes, join=False)


async def _settle(pid: int, quiet: float = 0.5, limit: float = 120.0) -> None:
    """Wait until the agent's CPU time stops growing for ``quiet`` seconds."""
    start = time.monotonic()
    last = cpu_seconds(pid)
    while time.monotonic() - start < limit:
        await trio.sleep(quiet)
        now = cpu_seconds(pid)
        if now - last < 0.02:
            return
        last = now


class AgentLog:
    """Counts the agent's log lines (its stderr) and notices when it has started."""

    def __init__(self) -> None:
        self.lines = 0
        self.started = trio.Event()

    async def drain(self, stderr: trio.abc.ReceiveStream) -> None:
        tail = b""
        while data := await stderr.receive_some(65536):
            self.lines += data.count(b"\n")
            if not self.started.is_set() and b"agent started" in tail + data:
                self.started.set()
            tail = bytes(data[-64:])


async def run(mode: str, nodes: int, seconds: float, max_members: int | None) -> int:
    rpc_addr = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "agentrpc.cli", "serve", "--node", "target",
            "--rpc-addr", rpc_addr, "--serf-lan-addr", "127.0.0.1:0",
            "--serf-wan-addr", "127.0.0.1:0", "--server-addr", "127.0.0.1:0",
            "--log-level", "info"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if max_members is not None:
            config = Path(tmp) / "config.json"
            config.write_text(json.dumps({"gossip_max_members": max_members}))
            argv += ["--config-file", str(config)]
        process = await trio.lowlevel.open_process(argv, stderr=subprocess.PIPE)
        assert process.stderr is not None
        log = AgentLog()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(log.drain, process.stderr)
                status = await _attack(process.pid, rpc_addr, mode, nodes, seconds, log)
                nursery.cancel_scope.cancel()
            return status
        finally:
            process.terminate()
            await process.wait()


async def _attack(
    pid: int, rpc_addr: str, mode: str, nodes: int, seconds: float, log: AgentLog
) -> int:
    with trio.fail_after(20):
        await log.started.wait()
    async with Client(rpc_addr) as client:
        (me,) = await client.members_lan()
    target = (str(me.addr), me.port)
    payload: list[bytes] = []
    stream_bytes = b""
    if mode == "alive":
        payload = alive_packets(nodes)
    elif mode == "push-pull":
        stream_bytes = push_pull_stream(nodes)
    await _settle(pid)
    lines_before = log.lines
    rss_before, cpu_before = rss_bytes(pid), cpu_seconds(pid)
    started = time.monotonic()
    if mode == "alive":
        udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        for index, packet in enumerate(payload):
            await udp.sendto(packet, target)
            if index % 4 == 3:
                await trio.sleep(0.04)
        udp.close()
        print(f"sent {nodes} alive messages in {len(payload)} packets")
    elif mode == "push-pull":
        print(f"push/pull of {nodes} nodes: {len(stream_bytes) / 1e6:.1f} MB")
        stream = await trio.open_tcp_stream(*target)
        reply = b""
        try:
            await stream.send_all(stream_bytes)
        except trio.BrokenResourceError:
            print("the agent closed the stream before it was all sent")
        with trio.move_on_after(120):
            try:
                while data := await stream.receive_some(65536):
                    reply += data
            except trio.BrokenResourceError:
                pass
        await stream.aclose()
        print(f"reply: {len(reply)} bytes")
    else:
        udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        ping = encode_message(Ping(1, "not-the-target", b"\x7f\x00\x00\x01", 1, "attacker"))
        sent = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for _ in range(50):
                await udp.sendto(ping, target)
            sent += 50
            await trio.lowlevel.checkpoint()
        udp.close()
        print(f"sent {sent} pings for a wrong node in {seconds} s")
    await _settle(pid)
    elapsed = time.monotonic() - started
    rss_after, cpu_after = rss_bytes(pid), cpu_seconds(pid)
    async with Client(rpc_addr) as client:
        stats = await client.stats()
    await trio.sleep(0.2)  # the last lines reach the pipe
    lines = log.lines - lines_before
    serf = stats.get("serf_lan", {})
    memberlist = stats.get("memberlist_lan", {})
    print(f"members: {serf.get('members')}  memberlist: {json.dumps(memberlist)}")
    print(f"agent RSS: {rss_before / 1e6:.1f} MB -> {rss_after / 1e6:.1f} MB "
          f"(+{(rss_after - rss_before) / 1e6:.1f} MB)")  # fmt: skip
    print(f"agent CPU: {cpu_after - cpu_before:.2f} s over {elapsed:.1f} s; log lines: {lines}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("alive", "push-pull", "ping"))
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-members", type=int, default=None)
    args = parser.parse_args()
    return trio.run(run, args.mode, args.nodes, args.seconds, args.max_members)


if __name__ == "__main__":
    sys.exit(main())
