"""Helpers for the command-line tests: real ``agentrpc serve`` processes on free loopback
ports, the CLI run as a subprocess, and fake peers (a silent socket, an agent that dies
mid-call) on loopback."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import msgpack
import trio

from agentrpc.protocol.codec import RequestDecoder

CLI = [sys.executable, "-m", "agentrpc.cli"]
LOG_LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[[A-Z]+\] ")
"""The agent's own log lines (serve writes them to stderr), told from the CLI's messages."""


@dataclass
class Served:
    """A running ``agentrpc serve`` and what it printed so far."""

    process: trio.Process
    rpc_addr: str
    stderr: bytearray
    grew: trio.Event = field(default_factory=trio.Event)

    def address(self, label: str) -> str:
        """The address the agent logged for ``label``: ``serf LAN``, ``serf WAN``."""
        match = re.search(rf"{label} gossip on (\S+)".encode(), self.stderr)
        assert match is not None, self.stderr.decode(errors="replace")
        return match.group(1).decode()

    async def wait_for(self, text: bytes) -> None:
        """Until ``text`` shows up in the agent's stderr (callers bound the time)."""
        while text not in self.stderr:
            await self.grew.wait()

    async def wait_exit(self) -> int:
        with trio.fail_after(20):
            return await self.process.wait()


def serve_argv(
    *args: str, node: str = "cli-node", rpc_addr: str | None = "127.0.0.1:0"
) -> list[str]:
    """``agentrpc serve`` on free loopback ports, its HTTP API and DNS off (``args`` may name
    other addresses: the last flag wins); ``rpc_addr=None`` gives no ``--rpc-addr``."""
    rpc = ["--rpc-addr", rpc_addr] if rpc_addr is not None else []
    return [
        *CLI,
        "serve",
        "--node",
        node,
        *rpc,
        "--serf-lan-addr",
        "127.0.0.1:0",
        "--serf-wan-addr",
        "127.0.0.1:0",
        "--server-addr",
        "127.0.0.1:0",
        "--http-addr",
        "",
        "--dns-addr",
        "",
        *args,
    ]


@asynccontextmanager
async def serve(
    *args: str,
    node: str = "cli-node",
    env: dict[str, str] | None = None,
    ready: bytes = b"",
    rpc_addr: str | None = "127.0.0.1:0",
) -> AsyncIterator[Served]:
    """A running agent; yields once it listens (and ``ready`` showed in its stderr). Killed on
    exit if still running."""
    process = await trio.lowlevel.open_process(
        serve_argv(*args, node=node, rpc_addr=rpc_addr),
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    assert process.stderr is not None
    stderr = bytearray()
    try:
        with trio.fail_after(20):
            while (match := re.search(rb"RPC listening on (\S+)", stderr)) is None or (
                ready not in stderr
            ):
                chunk = await process.stderr.receive_some(4096)
                if not chunk:
                    raise AssertionError(f"agent exited early: {stderr.decode()}")
                stderr += chunk
        served = Served(process, match.group(1).decode(), stderr)

        async def drain() -> None:
            assert process.stderr is not None
            while chunk := await process.stderr.receive_some(4096):
                stderr.extend(chunk)
                served.grew.set()
                served.grew = trio.Event()
            served.grew.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            yield served
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(5):
            await process.wait()


async def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI to completion (at most 30 s)."""
    with trio.fail_after(30):
        return await trio.run_process(
            [*CLI, *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, **(env or {})},
        )


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode()


def err(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


def message_lines(stderr: str | bytes | bytearray) -> list[str]:
    """The lines of stderr that are not the agent's log lines."""
    text = stderr if isinstance(stderr, str) else stderr.decode(errors="replace")
    return [line for line in text.splitlines() if not LOG_LINE.match(line)]


def assert_one_line(result: subprocess.CompletedProcess[bytes], code: int = 1) -> str:
    """The command failed with ``code``, one line on stderr and no traceback; that line."""
    text = err(result)
    assert "Traceback" not in text, text
    assert result.returncode == code, (result.returncode, text, out(result))
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


def closed_port() -> int:
    """A loopback TCP port nobody listens on (just released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def silent_socket() -> AsyncIterator[tuple[str, trio.Event]]:
    """A loopback port that accepts connections and never answers; yields its address and an
    event set once a connection was accepted."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    accepted = trio.Event()
    held: list[trio.SocketStream] = []

    async def accept() -> None:
        while True:
            held.append(await listener.accept())
            accepted.set()

    port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        try:
            yield f"127.0.0.1:{port}", accepted
        finally:
            nursery.cancel_scope.cancel()
            for stream in held:
                await trio.aclose_forcefully(stream)
            await listener.aclose()


@asynccontextmanager
async def dying_agent() -> AsyncIterator[str]:
    """A fake agent on loopback: it answers the handshake, then drops the connection when the
    next request arrives, as an agent that crashed mid-call (kill -9) does."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]

    async def serve_one(stream: trio.SocketStream) -> None:
        decoder = RequestDecoder()
        answered = False
        try:
            while data := await stream.receive_some():
                decoder.feed(data)
                for request in decoder:
                    if answered:
                        return
                    await stream.send_all(msgpack.packb({"Seq": request.seq, "Error": ""}))
                    answered = True
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, serve_one, [listener])
        yield f"127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


__all__: Sequence[str] = [
    "CLI",
    "Served",
    "assert_one_line",
    "cli",
    "closed_port",
    "dying_agent",
    "err",
    "message_lines",
    "out",
    "serve",
    "serve_argv",
    "silent_socket",
]
