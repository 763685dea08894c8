"""The command line, end to end: a real ``agentrpc serve`` process driven by the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

CLI = [sys.executable, "-m", "agentrpc.cli"]


@dataclass
class Served:
    process: trio.Process
    rpc_addr: str
    stderr: bytearray
    grew: trio.Event

    async def wait_for(self, text: bytes) -> None:
        """Until ``text`` shows up in the agent's stderr (callers bound the time)."""
        while text not in self.stderr:
            await self.grew.wait()


@asynccontextmanager
async def serve(*args: str) -> AsyncIterator[Served]:
    """``agentrpc serve`` on free loopback ports; yields once it listens."""
    argv = [
        *CLI,
        "serve",
        "--node",
        "cli-node",
        "--rpc-addr",
        "127.0.0.1:0",
        "--serf-lan-addr",
        "127.0.0.1:0",
        "--serf-wan-addr",
        "127.0.0.1:0",
        "--server-addr",
        "127.0.0.1:0",
        *args,
    ]
    process = await trio.lowlevel.open_process(argv, stderr=subprocess.PIPE)
    assert process.stderr is not None
    stderr = bytearray()
    try:
        with trio.fail_after(20):
            while (match := re.search(rb"RPC listening on (\S+)", stderr)) is None:
                chunk = await process.stderr.receive_some(4096)
                if not chunk:
                    raise AssertionError(f"agent exited early: {stderr.decode()}")
                stderr += chunk
        served = Served(process, match.group(1).decode(), stderr, trio.Event())

        async def drain() -> None:
            assert process.stderr is not None
            while chunk := await process.stderr.receive_some(4096):
                stderr.extend(chunk)
                served.grew.set()
                served.grew = trio.Event()

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


async def test_members_info_reload_and_leave() -> None:
    async with serve() as agent:
        addr = ["--rpc-addr", agent.rpc_addr]
        members = await cli("members", *addr)
        assert members.returncode == 0, err(members)
        header, row = out(members).splitlines()
        assert header.split() == ["Node", "Address", "Status", "Type", "Build", "Protocol", "DC"]
        assert row.split()[0] == "cli-node"
        assert row.split()[2:4] == ["alive", "server"]
        assert row.split()[-2:] == ["2", "dc1"]

        wan = await cli("members", "--wan", "--detailed", *addr)
        assert wan.returncode == 0
        assert out(wan).splitlines()[0].split() == ["Node", "Address", "Status", "Tags"]
        assert "cli-node.dc1" in out(wan)
        assert re.search(r"dc=dc1,.*role=consul", out(wan))

        as_json = json.loads(out(await cli("members", "--json", *addr)))
        assert as_json[0]["name"] == "cli-node"
        assert as_json[0]["type"] == "server"

        assert (await cli("members", "--status", "fail", *addr)).returncode == 2
        assert (await cli("members", "--status", "ali", *addr)).returncode == 0
        bad = await cli("members", "--status", "[", *addr)
        assert bad.returncode == 1
        assert err(bad).startswith("Failed to compile status regexp:")

        info = await cli("info", env={"AGENTRPC_RPC_ADDR": agent.rpc_addr})
        assert info.returncode == 0, err(info)
        lines = out(info).splitlines()
        sections = [line[:-1] for line in lines if not line.startswith("\t")]
        assert sections == sorted(sections)
        assert {"agent", "build", "rpc", "runtime", "serf_lan", "serf_wan"} <= set(sections)
        assert "\tname = cli-node" in lines

        reload = await cli("reload", *addr)
        assert (reload.returncode, out(reload)) == (0, "Configuration reload triggered\n")

        leave = await cli("leave", *addr)
        assert (leave.returncode, out(leave)) == (0, "Graceful leave complete\n")
        with trio.fail_after(10):
            assert await agent.process.wait() == 0
        assert b"graceful leave complete" in agent.stderr


async def test_join_and_force_leave_messages() -> None:
    async with serve("--client") as agent:
        addr = ["--rpc-addr", agent.rpc_addr]
        none = await cli("join", *addr)
        assert (none.returncode, err(none)) == (
            1,
            "At least one address to join must be specified.\n",
        )
        failed = await cli("join", "127.0.0.1:9", *addr)
        assert failed.returncode == 1
        assert err(failed).startswith("Error joining the cluster: 1 error(s) occurred:")
        assert "* Failed to join 127.0.0.1" in err(failed)
        wan = await cli("join", "--wan", "127.0.0.1:9", *addr)
        assert err(wan) == "Error joining the cluster: Must be a server to join WAN cluster\n"
        for args in ([], ["a", "b"]):
            bad = await cli("force-leave", *args, *addr)
            assert (bad.returncode, err(bad)) == (
                1,
                "A node name must be specified to force leave.\n",
            )
        ok = await cli("force-leave", "ghost", *addr)
        assert (ok.returncode, out(ok), err(ok)) == (0, "", "")
        members = await cli("members", *addr)
        assert "client" in out(members)
        assert (await cli("members", "--wan", *addr)).returncode == 2  # a client has no WAN


async def test_monitor_streams_until_interrupted_then_stops_cleanly() -> None:
    async with serve() as agent:
        process = await trio.lowlevel.open_process(
            [*CLI, "monitor", "--rpc-addr", agent.rpc_addr, "--log-level", "debug"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None
        seen = b""
        with trio.fail_after(20):
            while b"RPC listening on" not in seen:
                seen += await process.stdout.receive_some(4096)
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
        assert b"[INFO] agent.rpc: RPC listening on" in seen
        # The agent saw the stop: no monitor remains.
        stats = await cli("info", "--rpc-addr", agent.rpc_addr)
        assert "\tmonitors = 0" in out(stats)


async def test_monitor_reports_when_the_agent_goes_away() -> None:
    async with serve() as agent:
        process = await trio.lowlevel.open_process(
            [*CLI, "monitor", "--rpc-addr", agent.rpc_addr],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        with trio.fail_after(20):
            seen = b""
            while b"RPC listening on" not in seen:
                seen += await process.stdout.receive_some(4096)
            await cli("leave", "--rpc-addr", agent.rpc_addr)
            assert await process.wait() == 1
            rest = b""
            while chunk := await process.stdout.receive_some(4096):
                rest += chunk
            error = b""
            while chunk := await process.stderr.receive_some(4096):
                error += chunk
        assert b"shutdown complete" in seen + rest
        assert error.decode().startswith("Remote side ended the monitor!")


async def test_sighup_reloads_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"datacenter": "east"}))
    async with serve("--config-file", str(config)) as agent:
        members = await cli("members", "--rpc-addr", agent.rpc_addr)
        assert out(members).split()[-1] == "east"
        config.write_text("{broken")
        agent.process.send_signal(signal.SIGHUP)
        with trio.fail_after(10):
            await agent.wait_for(b"Failed to reload configs")
        # Still serving on the old config.
        assert (await cli("members", "--rpc-addr", agent.rpc_addr)).returncode == 0
        agent.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await agent.process.wait() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["members", "--rpc-addr", "127.0.0.1:1"], "dial 127.0.0.1:1: connection refused"),
        (
            ["info", "--rpc-addr", "127.0.0.1:99999"],
            "port out of range in address '127.0.0.1:99999'",
        ),
        (
            ["leave", "--rpc-addr", "unix:///no/x.sock"],
            "dial unix:///no/x.sock: no such file or directory",
        ),
    ],
)
async def test_expected_failures_print_one_line_and_no_traceback(
    args: Sequence[str], message: str
) -> None:
    result = await cli(*args)
    assert result.returncode == 1
    assert err(result).strip() == f"Error connecting to agent: {message}"
    assert "Traceback" not in err(result)


async def test_serve_refuses_a_bad_config_and_a_busy_port(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('log_level = "LOUD"\n')
    result = await cli("serve", "--config-file", str(bad), "--rpc-addr", "127.0.0.1:0")
    assert result.returncode == 1
    assert err(result).startswith("Error loading configuration: log_level: unknown log level")
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"colour": "blue"}')
    result = await cli("serve", "--config-file", str(unknown))
    assert "unknown key 'colour'" in err(result)
    async with serve() as agent:
        busy = await cli("serve", "--rpc-addr", agent.rpc_addr)
        assert busy.returncode == 1
        assert err(busy).splitlines()[-1].startswith("Error starting agent:")
        assert "Traceback" not in err(busy)


async def test_token_flag_and_environment_variable(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('rpc_token = "hunter2"\n')
    async with serve("--config-file", str(config)) as agent:
        addr = ["--rpc-addr", agent.rpc_addr]
        denied = await cli("members", *addr)
        assert (denied.returncode, err(denied)) == (
            1,
            "Error retrieving members: Permission denied\n",
        )
        assert (await cli("members", "--token", "hunter2", *addr)).returncode == 0
        by_env = await cli("info", *addr, env={"AGENTRPC_RPC_TOKEN": "hunter2"})
        assert by_env.returncode == 0
        assert "\tpermission_denied = 1" in out(by_env)
