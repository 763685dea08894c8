"""Interop with a real Go implementation of the same RPC framing: Debian's serf.

Serf's agent RPC is the sibling of Consul 0.7's (same codec, same handshake, header and body
rules; ``members`` instead of ``members-lan``). So:

* serf's Go CLI drives *our* agent (``info`` = stats, ``force-leave``, ``join``, ``leave``), the
  closest stand-in for the Consul 0.7 CLI that this machine can run;
* *our* client drives a real serf agent (handshake, stats, monitor + stop, leave), which checks
  our decoder against Go's bytes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from process_helpers import free_port, started_process

from agentrpc import Client
from agentrpc.client import RPCError

CLI = [sys.executable, "-m", "agentrpc.cli"]


@asynccontextmanager
async def our_agent() -> AsyncIterator[tuple[trio.Process, str]]:
    rpc_addr = f"127.0.0.1:{free_port()}"
    argv = [*CLI, "serve", "--node", "ours", "--rpc-addr", rpc_addr,
            "--serf-lan-addr", "127.0.0.1:0", "--serf-wan-addr", "127.0.0.1:0",
            "--server-addr", "127.0.0.1:0", "--http-addr", "", "--dns-addr", ""]  # fmt: skip
    async with started_process(argv, b"RPC listening on") as process:
        yield process, rpc_addr


@asynccontextmanager
async def serf_agent(serf: str) -> AsyncIterator[str]:
    rpc_addr = f"127.0.0.1:{free_port()}"
    argv = [serf, "agent", "-node=go-serf", f"-bind=127.0.0.1:{free_port()}",
            f"-rpc-addr={rpc_addr}", "-log-level=debug"]  # fmt: skip
    async with started_process(argv, b"Serf agent running", merge_output=True):
        yield rpc_addr


async def go_cli(serf: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(20):
        return await trio.run_process(
            [serf, *args], capture_stdout=True, capture_stderr=True, check=False
        )


async def test_the_go_cli_drives_our_agent(serf_binary: str) -> None:
    async with our_agent() as (process, rpc_addr):
        flag = f"-rpc-addr={rpc_addr}"
        info = await go_cli(serf_binary, "info", flag)
        assert info.returncode == 0, info.stderr
        text = info.stdout.decode()
        assert "agent:\n\tdatacenter = dc1\n" in text
        assert "\tname = ours\n" in text
        assert "serf_lan:\n" in text

        forced = await go_cli(serf_binary, "force-leave", flag, "ghost")
        assert forced.returncode == 0, forced.stderr

        join = await go_cli(serf_binary, "join", flag, "127.0.0.1:1")
        assert join.returncode == 1
        assert b"Error joining the cluster: 1 error(s) occurred:" in join.stdout
        assert b"Failed to join 127.0.0.1" in join.stdout

        leave = await go_cli(serf_binary, "leave", flag)
        assert leave.returncode == 0, leave.stderr
        assert b"Graceful leave complete" in leave.stdout
        with trio.fail_after(10):
            assert await process.wait() == 0


SERF_LOG_RING = 512
"""Lines serf's agent keeps and replays to each new monitor (its LogWriter's buffer)."""
MONITOR_CYCLES = 30


async def test_our_client_drives_a_real_serf_agent(serf_binary: str) -> None:
    async with serf_agent(serf_binary) as rpc_addr, Client(rpc_addr) as client:
        stats = await client.stats()
        assert stats["agent"]["name"] == "go-serf"
        assert stats["serf"]["members"] == "1"
        # serf replays its last 512 log lines to a new monitor, and after replying to stop
        # it still sends the lines its streamer had queued (up to hundreds). Fill the ring
        # (each force-leave logs a line) so that every monitor below has a long replay and
        # some of the stops are followed by such stragglers; the client must read and drop
        # them without losing step (a client that forgot the Seq at the stop reply failed
        # here 8 runs out of 8; tests/test_client_framing_regression.py is the
        # deterministic version).
        for _ in range(SERF_LOG_RING + 50):
            await client.force_leave("nobody")
        for _ in range(MONITOR_CYCLES):
            async with client.monitor("debug") as lines:
                first = await lines.__anext__()
                assert "[" in first and "]" in first
            # After stop, the connection is still in sync: more calls work.
            assert "runtime" in await client.stats()
        try:
            async with client.monitor("bogus"):
                raise AssertionError("serf accepted a bogus level")
        except RPCError as exc:
            assert exc.error == "Unknown log level: BOGUS"
        await client.force_leave("nobody")
        await client.leave()
