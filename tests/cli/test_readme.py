"""The README, run: its Python example against a real agent (and against each failure it
handles), and its tour command by command through a shell with the README's PATH set-up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from cli_support import closed_port, serve

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def python_example() -> str:
    after = README.read_text().split("<!-- python-example -->", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


async def run_example(rpc_addr: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRPC_")}
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-c", python_example()],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**environment, "AGENTRPC_RPC_ADDR": rpc_addr, **env},
        )


async def test_the_python_example_runs_against_a_real_agent() -> None:
    async with serve() as agent:
        result = await run_example(agent.rpc_addr)
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "cli-node 127.0.0.1:" in text  # member.name member.address ...
    assert "'role': 'consul'" in text  # member.tags
    assert "'name': 'cli-node'" in text  # the stats' agent section
    # The example stops at the replayed start-up line.
    assert "agent started: node 'cli-node', datacenter 'dc1'" in text.splitlines()[-1]
    assert "[INFO] agent.rpc: RPC listening on" in text  # a replayed monitor line
    assert result.stderr == b""


async def test_the_python_example_handles_each_failure(tmp_path: Path) -> None:
    port = closed_port()
    refused = await run_example(f"127.0.0.1:{port}")
    assert (refused.returncode, refused.stderr.decode()) == (
        1,
        f"cannot talk to the agent: dial 127.0.0.1:{port}: connection refused\n",
    )
    config = tmp_path / "token.toml"
    config.write_text('rpc_token = "s3cret"\n')
    async with serve("--config-file", str(config)) as agent:
        denied = await run_example(agent.rpc_addr)
        assert (denied.returncode, denied.stderr.decode()) == (
            1,
            "the agent wants its rpc_token: Client(token=...) or AGENTRPC_RPC_TOKEN\n",
        )
        allowed = await run_example(agent.rpc_addr, AGENTRPC_RPC_TOKEN="s3cret")
        assert allowed.returncode == 0, allowed.stderr
        gossip = await run_example(agent.address("serf LAN"))
        assert gossip.returncode == 1
        assert gossip.stderr.decode().startswith(
            f"cannot talk to the agent: {agent.address('serf LAN')} does not speak the agent RPC"
        )


def _namespace_available() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = subprocess.run(
        [unshare, "-rn", "sh", "-c", "ip link set lo up"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    return probe.returncode == 0


def install_command() -> str:
    """The README's first command on a fresh machine, without its final ``agentrpc serve``."""
    after = README.read_text().split("## Two commands on a fresh machine", 1)[1]
    command = after.split("```sh\n", 1)[1].split("\n", 1)[0]
    assert command.endswith(" && agentrpc serve"), command
    return command.removesuffix(" && agentrpc serve")


def fresh_checkout(target: Path) -> None:
    """Blocking: the source tree as a clone has it (no venv, no build output, no caches)."""
    skip = shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"
    )
    shutil.copytree(ROOT, target, ignore=skip)


async def test_the_tour_runs_command_by_command(tmp_path: Path) -> None:
    """From a fresh copy of the tree, installed with the README's own command into a new
    venv (so ``pip install .``, not the suite's editable install, is what runs). In a
    network namespace of its own the tour's default ports are its alone; without one, the
    runner moves them to free ports (see tour_runner.py)."""
    fresh = tmp_path / "fresh"
    await trio.to_thread.run_sync(fresh_checkout, fresh)
    environment = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    with trio.fail_after(600):
        installed = await trio.run_process(
            ["bash", "-c", install_command()],
            cwd=fresh,
            env=environment,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert installed.returncode == 0, installed.stderr.decode(errors="replace")[-4000:]
    assert (fresh / ".venv" / "bin" / "agentrpc").exists()
    runner = [sys.executable, str(Path(__file__).with_name("tour_runner.py")), str(README)]
    runner.append(str(fresh))
    if _namespace_available():
        argv = ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *runner]
    else:
        argv = [*runner, "--remap-ports"]
    with trio.fail_after(120):
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    results = report["results"]
    by_command = {entry.get("command") or entry["background"]: entry for entry in results}
    for entry in results:
        name = entry.get("command") or entry["background"]
        if "ready" in entry:
            assert entry["ready"], name
            continue
        assert entry["returncode"] == 0, (name, entry)
        assert "Traceback" not in entry.get("stderr", ""), name
    members = by_command["agentrpc members"]["stdout"].splitlines()
    assert members[0].split() == ["Node", "Address", "Status", "Type", "Build", "Protocol", "DC"]
    assert members[1].split()[0] == "n1"
    alive = json.loads(by_command["agentrpc members --status alive --json"]["stdout"])
    assert sorted((m["name"], m["type"]) for m in alive) == [("n1", "server"), ("n2", "client")]
    assert by_command["agentrpc version"]["stdout"].startswith("agentrpc v")
    # A plain `agentrpc serve` serves Consul's HTTP API on 8500, where `agentrpc kv` goes.
    assert by_command["agentrpc kv put a b"]["stdout"] == "Success! Data written to: a\n"
    assert by_command["agentrpc kv get a"]["stdout"] == "b\n"
    assert "n1" in by_command["agentrpc catalog nodes"]["stdout"].split()
    monitor = by_command["agentrpc monitor --log-level debug"]
    assert monitor["printed"]
    assert "[INFO] " in monitor["stdout"].splitlines()[0]  # the replayed log, then Ctrl-C
    assert by_command["agentrpc join --wan 127.0.0.1:8302"]["stdout"] == (
        "Successfully joined cluster by contacting 1 nodes.\n"
    )
    # Both agents were told to leave, left gracefully and exited 0 by themselves.
    for entry in results:
        if "background" in entry:
            assert entry["returncode"] == 0, entry
            assert "graceful leave complete" in entry["stderr"]


@pytest.mark.parametrize("marker", ["<!-- tour -->", "<!-- python-example -->"])
def test_the_readme_keeps_its_markers(marker: str) -> None:
    assert README.read_text().count(marker) == 1
