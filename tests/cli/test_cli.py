"""The command line, end to end: a real ``agentrpc serve`` process driven by the CLI."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
from cli_support import CLI, assert_one_line, cli, err, out, serve


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
        (member,) = as_json
        lan = re.search(r"\S+\s+(\S+)", row)
        assert lan is not None
        assert member["name"] == "cli-node"
        assert member["type"] == "server"
        assert member["addr"] == lan.group(1)  # ip:port, as serf's -format json
        assert member["ip"] == "127.0.0.1"
        assert member["addr"] == f"127.0.0.1:{member['port']}"
        assert member["protocol"] == {"min": 1, "max": 5, "version": 2}
        assert member["delegate"] == {"min": 2, "max": 5, "version": 4}
        assert member["tags"]["role"] == "consul"
        assert (member["dc"], member["status"]) == ("dc1", "alive")
        assert json.loads(out(await cli("members", "-format=json", *addr))) == as_json
        wan_json = json.loads(out(await cli("members", "-wan", "-format", "json", *addr)))
        assert [m["name"] for m in wan_json] == ["cli-node.dc1"]
        none = await cli("members", "--status", "failed", "--json", *addr)
        assert (none.returncode, out(none), err(none)) == (2, "[]\n", "")

        # Consul's spellings beside ours.
        consul = await cli(
            "members", "-wan", "-detailed", "-status=alive", f"-rpc-addr={agent.rpc_addr}"
        )
        assert consul.returncode == 0, err(consul)
        assert out(consul) == out(await cli("members", "--wan", "--detailed", *addr))
        assert out(await cli("members", "-status", "alive", "-rpc-addr", agent.rpc_addr)) == out(
            await cli("members", *addr)
        )

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
        info_json = json.loads(out(await cli("info", "--json", *addr)))
        assert info_json["agent"]["name"] == "cli-node"
        assert sorted(info_json) == sections

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
        assert assert_one_line(failed) == (
            "Error joining the cluster: Failed to join 127.0.0.1:9: connection refused"
        )
        both = await cli("join", "127.0.0.1:9", "127.0.0.1:10", *addr)
        assert assert_one_line(both) == (
            "Error joining the cluster: Failed to join 127.0.0.1:9: connection refused; "
            "Failed to join 127.0.0.1:10: connection refused"
        )
        lan = agent.address("serf LAN")
        partly = await cli("join", "127.0.0.1:9", lan, *addr)
        assert partly.returncode == 0, err(partly)
        assert out(partly) == "Successfully joined cluster by contacting 1 nodes.\n"
        assert err(partly) == "Failed to join 127.0.0.1:9: connection refused\n"
        as_json = await cli("join", "-wan=false", "127.0.0.1:9", lan, "--json", *addr)
        assert json.loads(out(as_json)) == {
            "num": 1,
            "failed": [{"address": "127.0.0.1:9", "error": "connection refused"}],
        }
        wan = await cli("join", "--wan", "127.0.0.1:9", *addr)
        assert err(wan) == "Error joining the cluster: Must be a server to join WAN cluster\n"
        for args in ([], ["a", "b"]):
            bad = await cli("force-leave", *args, *addr)
            assert (bad.returncode, err(bad)) == (
                1,
                "A node name must be specified to force leave.\n",
            )
        ghost = await cli("force-leave", "ghost", *addr)
        assert assert_one_line(ghost) == (
            "Error force leaving: no member named 'ghost' is known to the agent "
            "(`agentrpc members` and `agentrpc members --wan` list them)."
        )
        ok = await cli("force-leave", "cli-node", *addr)
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
        assert error.decode() == (
            "Remote side ended the monitor! This usually means that the remote side has "
            "exited or crashed.\n"
        )


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
        (["members", "--rpc-addr", "127.0.0.1:1"], "dial 127.0.0.1:1: connection refused; "),
        (
            ["info", "--rpc-addr", "127.0.0.1:99999"],
            "port out of range in address '127.0.0.1:99999'; --rpc-addr takes HOST:PORT",
        ),
        (
            ["leave", "--rpc-addr", "unix:///no/x.sock"],
            "dial unix:///no/x.sock: no such file or directory; is the agent running?",
        ),
    ],
)
async def test_expected_failures_print_one_line_and_no_traceback(
    args: Sequence[str], message: str
) -> None:
    result = await cli(*args)
    assert assert_one_line(result).startswith(f"Error connecting to agent: {message}")


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
        assert assert_one_line(denied) == (
            "Error retrieving members: Permission denied: the agent requires an RPC token; "
            "pass --token or set AGENTRPC_RPC_TOKEN"
        )
        wrong = await cli("members", "-token=hunter3", *addr)
        assert assert_one_line(wrong) == (
            "Error retrieving members: Permission denied: the token given (--token or "
            "AGENTRPC_RPC_TOKEN) is not the agent's rpc_token"
        )
        assert (await cli("members", "--token", "hunter2", *addr)).returncode == 0
        assert (await cli("members", "-token=hunter2", *addr)).returncode == 0
        by_env = await cli("info", *addr, env={"AGENTRPC_RPC_TOKEN": "hunter2"})
        assert by_env.returncode == 0
        assert "\tpermission_denied = 2" in out(by_env)


async def test_version_in_consuls_format() -> None:
    outputs = [await cli(*args) for args in (["version"], ["--version"], ["-version"], ["-v"])]
    for result in outputs:
        assert (result.returncode, err(result)) == (0, "")
        assert out(result) == out(outputs[0])
    first, second = out(outputs[0]).splitlines()
    assert re.fullmatch(r"agentrpc v\d+\.\d+\.\d+(-dev( \([0-9a-f]{8}\))?)?", first), first
    assert second == (
        "Protocol 2 spoken by default, understands 1 to 3 (agent will automatically use "
        "protocol >2 when speaking to compatible agents)"
    )
    data = json.loads(out(await cli("version", "--json")))
    assert data["protocol"] == {"default": 2, "min": 1, "max": 3}
    assert first == f"agentrpc {data['human']}"
    assert data["human"].startswith(f"v{data['version']}")
