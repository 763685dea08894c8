"""Helpers for tests that run real processes (our CLI, the serf binary) on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (gossip binds both on one port)."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


@asynccontextmanager
async def started_process(
    argv: Sequence[str], ready: bytes, *, merge_output: bool = False
) -> AsyncIterator[trio.Process]:
    """Start ``argv`` and wait (at most 20 s) until ``ready`` shows in its stderr (or, with
    ``merge_output``, its stdout and stderr together). Its output keeps being drained, so a
    chatty process never blocks on a full pipe; it is killed on exit if still running."""
    if merge_output:
        process = await trio.lowlevel.open_process(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        output = process.stdout
    else:
        process = await trio.lowlevel.open_process(list(argv), stderr=subprocess.PIPE)
        output = process.stderr
    assert output is not None
    try:
        seen = b""
        with trio.fail_after(20):
            while ready not in seen:
                chunk = await output.receive_some(4096)
                assert chunk, f"process exited before {ready!r}: {seen.decode(errors='replace')}"
                seen += chunk

        async def drain() -> None:
            while await output.receive_some(65536):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            yield process
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(5):
            await process.wait()


_IMPORT_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps({
    "trio": "trio" in sys.modules,
    "project": sorted(name for name in sys.modules if name.split(".")[0] == "agentrpc"),
}))
"""


def imports_of(module: str) -> tuple[bool, set[str]]:
    """Whether importing ``module`` alone, in a fresh interpreter, loads trio, and the
    project modules it loads."""
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, module],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"import {module} failed:\n{done.stderr}"
    result = json.loads(done.stdout)
    return bool(result["trio"]), set(result["project"])
