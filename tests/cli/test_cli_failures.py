"""Every command against every way its agent can be wrong: no agent, a gossip port (ours and
serf's), the server port, a socket that accepts and never answers, an agent that dies
mid-call (a fake one, and a real one killed with SIGKILL), bad flags and bad values. Each
time: exit status 1, exactly one line on stderr saying what failed and what to do, never a
traceback."""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Sequence

import pytest
import trio
from cli_support import (
    CLI,
    assert_one_line,
    cli,
    closed_port,
    dying_agent,
    message_lines,
    serve,
    silent_socket,
)
from process_helpers import free_port, started_process

from agentrpc.cli.main import main

COMMANDS: dict[str, tuple[list[str], str]] = {
    "members": (["members"], "Error retrieving members"),
    "members-wan": (["members", "-wan", "-detailed"], "Error retrieving members"),
    "join": (["join", "127.0.0.1:9"], "Error joining the cluster"),
    "force-leave": (["force-leave", "n9"], "Error force leaving"),
    "leave": (["leave"], "Error leaving"),
    "reload": (["reload"], "Error reloading"),
    "info": (["info", "--json"], "Error querying agent"),
    "monitor": (["monitor", "--log-level", "debug"], "Remote side ended the monitor"),
}
"""Every command that talks to an agent: its arguments and the prefix of its errors."""

REMOTE_ENDED = (
    "Remote side ended the monitor! This usually means that the remote side has exited or crashed."
)


async def run_all(
    rpc_addr: str, env: dict[str, str] | None = None
) -> dict[str, subprocess.CompletedProcess[bytes]]:
    """Each command of :data:`COMMANDS` against ``rpc_addr``, a few at a time."""
    results: dict[str, subprocess.CompletedProcess[bytes]] = {}
    limiter = trio.CapacityLimiter(3)

    async def one(name: str, args: Sequence[str]) -> None:
        async with limiter:
            results[name] = await cli(*args, "--rpc-addr", rpc_addr, env=env)

    async with trio.open_nursery() as nursery:
        for name, (args, _) in COMMANDS.items():
            nursery.start_soon(one, name, args)
    return results


def check_all(results: dict[str, subprocess.CompletedProcess[bytes]], pattern: str) -> None:
    for name, result in results.items():
        line = assert_one_line(result)
        assert re.fullmatch(pattern, line), (name, line)


async def test_every_command_without_an_agent() -> None:
    port = closed_port()
    check_all(
        await run_all(f"127.0.0.1:{port}"),
        rf"Error connecting to agent: dial 127\.0\.0\.1:{port}: connection refused; is the "
        r"agent running\? `agentrpc serve` logs its address as 'RPC listening on'; pass it as "
        r"--rpc-addr or AGENTRPC_RPC_ADDR",
    )


async def test_every_command_against_the_gossip_and_server_ports() -> None:
    async with serve() as agent:
        gossip = agent.address("serf LAN")
        check_all(
            await run_all(gossip),
            rf"Error connecting to agent: {re.escape(gossip)} does not speak the agent RPC "
            r"\(its answer to the handshake: .+\); is it a gossip port or the server port\? "
            r"The RPC port is the one `agentrpc serve` logs as 'RPC listening on'",
        )
        port = _server_port_of(agent.stderr)
        check_all(
            await run_all(port),
            rf"Error connecting to agent: {re.escape(port)} closed the connection without "
            r"answering the handshake \(.+\); is it a gossip port or the server port\? The RPC "
            r"port is the one `agentrpc serve` logs as 'RPC listening on'",
        )


def _server_port_of(stderr: bytearray) -> str:
    """The server port the agent logged."""
    match = re.search(rb"server port listening on (\S+)", stderr)
    assert match is not None, stderr.decode(errors="replace")
    return match.group(1).decode()


async def test_every_command_against_a_serf_gossip_port(serf_binary: str) -> None:
    bind = f"127.0.0.1:{free_port()}"
    argv = [serf_binary, "agent", "-node=go-serf", f"-bind={bind}",
            f"-rpc-addr=127.0.0.1:{free_port()}"]  # fmt: skip
    async with started_process(argv, b"Serf agent running", merge_output=True):
        check_all(
            await run_all(bind),
            rf"Error connecting to agent: {re.escape(bind)} (does not speak the agent RPC|"
            r"closed the connection without answering the handshake) \(.+\); is it a gossip "
            r"port or the server port\? .+",
        )


async def test_every_command_against_a_silent_socket() -> None:
    async with silent_socket() as (address, _):
        check_all(
            await run_all(address, env={"AGENTRPC_RPC_TIMEOUT": "0.5"}),
            rf"Error connecting to agent: {re.escape(address)} accepted the connection but did "
            r"not answer the handshake within 0\.5 s \(a stopped or overloaded agent, or not an "
            r"agent RPC port\); --timeout \(AGENTRPC_RPC_TIMEOUT\) sets the deadline",
        )


async def test_every_command_against_an_agent_that_dies_mid_call() -> None:
    async with dying_agent() as address:
        results = await run_all(address)
    gone = (
        rf"(the agent at {re.escape(address)} closed the connection \(did it stop or crash\?\)"
        rf"|connection to the agent at {re.escape(address)} lost: .+)"
    )
    for name, result in results.items():
        line = assert_one_line(result)
        prefix = COMMANDS[name][1]
        if name == "monitor":
            assert line == REMOTE_ENDED
        else:
            assert re.fullmatch(rf"{prefix}: {gone}", line), (name, line)


async def test_a_real_agent_killed_mid_call() -> None:
    async with serve("--client") as agent, silent_socket() as (blackhole, accepted):
        # join waits on a gossip peer that never answers; the agent dies meanwhile.
        join = await trio.lowlevel.open_process(
            [*CLI, "join", blackhole, "--rpc-addr", agent.rpc_addr],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        monitor = await trio.lowlevel.open_process(
            [*CLI, "monitor", "--rpc-addr", agent.rpc_addr],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert monitor.stdout is not None
        with trio.fail_after(20):
            await accepted.wait()  # the agent is inside the join
            seen = b""
            while b"RPC listening on" not in seen:  # the monitor replays the start lines
                seen += await monitor.stdout.receive_some(4096)
            agent.process.send_signal(signal.SIGKILL)
            for process in (join, monitor):
                await process.wait()
        results = {}
        for name, process in (("join", join), ("monitor", monitor)):
            assert process.stderr is not None
            stderr = b""
            with trio.fail_after(5):
                while chunk := await process.stderr.receive_some(4096):
                    stderr += chunk
            results[name] = subprocess.CompletedProcess([], process.returncode, b"", stderr)
    join_line = assert_one_line(results["join"])
    assert re.fullmatch(
        rf"Error joining the cluster: (the agent at {re.escape(agent.rpc_addr)} closed the "
        r"connection \(did it stop or crash\?\)|connection to the agent at .+ lost: .+)",
        join_line,
    ), join_line
    assert assert_one_line(results["monitor"]) == REMOTE_ENDED


BAD: list[tuple[list[str], str]] = [
    (["members", "-wat"], r"Error: No such option: --wat.*\(see `agentrpc members --help`\)"),
    (["members", "--bogus"], r"Error: No such option: --bogus.*"),
    (["members", "--timeout", "abc"], r"Error: Invalid value for '--timeout'.*"),
    (["members", "--timeout", "0"], r"Invalid --timeout 0\.0: it must be a positive .*"),
    (["members", "-timeout=-1"], r"Invalid --timeout -1\.0: .*"),
    (["members", "--status", "["], r"Failed to compile status regexp: .*"),
    (["members", "--format", "xml"], r"Invalid --format 'xml': use text or json\."),
    (["members", "--rpc-addr", "foo://x"], r"Error connecting to agent: unknown address .*"),
    (["info", "-rpc-addr=127.0.0.1:99999"], r"Error connecting to agent: port out of range.*"),
    (["leave", "--rpc-addr", "unix://rel.sock"], r"Error connecting to agent: unix socket .*"),
    (["join"], r"At least one address to join must be specified\."),
    (["force-leave"], r"A node name must be specified to force leave\."),
    (["force-leave", "a", "b"], r"A node name must be specified to force leave\."),
    (["force-leave", "-prune", "a"], r"force-leave --prune is not supported: .*"),
    (["monitor", "--log-level"], r"Error: Option '--log-level' requires an argument.*"),
    (["version", "--bogus"], r"Error: No such option: --bogus.*"),
    (["bogus"], r"Error: No such command 'bogus'.*\(see `agentrpc bogus --help`\)"),
    (["serve", "--bogus"], r"Error: No such option: --bogus.*"),
    (["serve", "-retry-interval=abc"], r"Invalid --retry-interval: invalid duration 'abc'.*"),
    (["serve", "--retry-max", "x"], r"Error: Invalid value for '--retry-max'.*"),
    (["serve", "--log-level", "LOUD"], r"Error loading configuration: log_level: unknown .*"),
    (["serve", "--rpc-addr", "foo://x"], r"Error loading configuration: rpc_addr: unknown .*"),
    (["serve", "--config-file", "/nonexistent.json"], r"Error loading configuration: cannot .*"),
    (["serve", "--client", "--join-wan", "x:1"], r"Error loading configuration: start_join_wan .*"),
    (["serve", "-client=127.0.0.1"], r"Error: Option '--client' does not take a value.*"),
    (["proxy", "--protocol", "smtp"], r"Unknown protocol 'smtp'; known: .*"),
    (["proxy", "--server-addr", "nohost:port"], r"Invalid address: invalid port .*"),
    (["proxy", "--listen-addr", "unix:///x"], r"The proxy needs TCP addresses \(HOST:PORT\)"),
    (["kv", "get", "k", "--timeout", "0"], r"Invalid --timeout 0\.0: it must be a positive .*"),
    (["catalog", "nodes", "--timeout", "x"], r"Error: Invalid value for '--timeout'.*"),
    (["kv", "get", "k", "--http-addr", "nohost"], r"invalid HTTP address 'nohost': .*"),
]


@pytest.mark.parametrize(("args", "pattern"), BAD)
def test_bad_flags_and_values(
    args: list[str], pattern: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process through the console script's own entry point (fast: no interpreter start)."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    captured = capsys.readouterr()
    assert exited.value.code == 1, (args, captured)
    lines = captured.err.splitlines()
    assert len(lines) == 1, (args, captured.err)
    assert re.fullmatch(pattern, lines[0]), (args, lines[0])


async def test_bad_flags_through_the_installed_command() -> None:
    """The same, in a process of its own, for a few of them."""
    for args, pattern in (BAD[0], BAD[4], BAD[-1], BAD[17]):
        line = assert_one_line(await cli(*args))
        assert re.fullmatch(pattern, line), (args, line)


async def test_bad_values_an_agent_refuses() -> None:
    async with serve() as agent:
        addr = ["--rpc-addr", agent.rpc_addr]
        loud = await cli("monitor", "--log-level", "loud", *addr)
        assert assert_one_line(loud) == (
            "Error starting monitor: Unknown log level: LOUD (the levels: TRACE, DEBUG, INFO, "
            "WARN, ERR)"
        )
        client = await cli("join", "-wan", "127.0.0.1:9", *addr)  # a server: WAN join allowed
        assert assert_one_line(client).startswith("Error joining the cluster: Failed to join ")
        ghost = await cli("force-leave", "ghost", *addr)
        assert assert_one_line(ghost).startswith("Error force leaving: no member named 'ghost'")


async def test_ctrl_c_on_a_short_command_exits_130_without_a_trace() -> None:
    async with silent_socket() as (address, accepted):
        process = await trio.lowlevel.open_process(
            [*CLI, "members", "--rpc-addr", address, "--timeout", "30"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        with trio.fail_after(20):
            await accepted.wait()
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 130
        assert process.stderr is not None
        stderr = await process.stderr.receive_some(65536)
        assert b"Traceback" not in stderr
        assert stderr == b""


async def test_ctrl_c_on_the_proxy_exits_0_without_a_trace() -> None:
    async with serve() as agent:
        server = _server_port_of(agent.stderr)
        process = await trio.lowlevel.open_process(
            [*CLI, "proxy", "--protocol", "rpc", "--server-addr", server],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        with trio.fail_after(20):
            output = b""
            while b"Use this address: " not in output:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, output
                output += chunk
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
            stderr = await process.stderr.receive_some(65536)
        assert stderr == b""


async def test_a_busy_proxy_port_is_one_line() -> None:
    async with silent_socket() as (address, _):
        result = await cli("proxy", "--listen-addr", address)
    line = assert_one_line(result)
    assert line.startswith(f"Error starting the proxy on {address}: address already in use")


def test_no_message_line_is_a_log_line() -> None:
    """The helper that tells the agent's log lines from messages, checked on both."""
    stderr = "2026/01/02 03:04:05 [INFO] agent: started\nError starting agent: x\n"
    assert message_lines(stderr) == ["Error starting agent: x"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_serve_ends_on_a_signal_with_0_and_no_trace(signum: int) -> None:
    async with serve() as agent:
        agent.process.send_signal(signum)
        assert await agent.wait_exit() == 0
        await agent.wait_for(b"shutdown complete")
        assert "Traceback" not in agent.stderr.decode(errors="replace")
        assert message_lines(agent.stderr) == []


OTHER_COMMANDS: dict[str, tuple[list[str], str, str]] = {
    "keyring": (["keyring", "--list"], "--rpc-addr", "rpc"),
    "event": (["event", "deploy"], "--serf-rpc-addr", "serf"),
    "query": (["query", "ping"], "--serf-rpc-addr", "serf"),
    "rtt": (["rtt", "a", "b"], "--serf-rpc-addr", "serf"),
    "kv": (["kv", "get", "k"], "--http-addr", "Error querying Consul agent"),
    "catalog": (["catalog", "nodes"], "--http-addr", "Error listing nodes"),
    "operator": (
        ["operator", "raft", "list-peers"],
        "--http-addr",
        "Error getting peers: Failed to retrieve raft configuration",
    ),
}
"""The commands that reach an agent another way than :data:`COMMANDS` (or, for keyring, were
added later): their arguments, the flag of their address, and their dialect (``rpc``,
``serf``) or, for those over HTTP, the prefix of their errors."""


async def run_others(
    address: str, env: dict[str, str] | None = None
) -> dict[str, subprocess.CompletedProcess[bytes]]:
    """Each command of :data:`OTHER_COMMANDS` against ``address``, a few at a time."""
    results: dict[str, subprocess.CompletedProcess[bytes]] = {}
    limiter = trio.CapacityLimiter(3)

    async def one(name: str, args: Sequence[str], flag: str) -> None:
        async with limiter:
            results[name] = await cli(*args, flag, address, env=env)

    async with trio.open_nursery() as nursery:
        for name, (args, flag, _) in OTHER_COMMANDS.items():
            nursery.start_soon(one, name, args, flag)
    return results


def check_others(
    results: dict[str, subprocess.CompletedProcess[bytes]], patterns: dict[str, str]
) -> None:
    """Each result is one line matching the pattern of its dialect (``http`` formatted with
    the command's prefix)."""
    for name, result in results.items():
        kind = OTHER_COMMANDS[name][2]
        pattern = patterns.get(kind) or patterns["http"].format(prefix=re.escape(kind))
        line = assert_one_line(result)
        assert re.fullmatch(pattern, line), (name, line)


async def test_the_other_commands_without_an_agent() -> None:
    port = closed_port()
    where = rf"127\.0\.0\.1:{port}"
    check_others(
        await run_others(f"127.0.0.1:{port}"),
        {
            "rpc": rf"Error connecting to agent: dial {where}: connection refused; is the agent "
            r"running\? .+; pass it as --rpc-addr or AGENTRPC_RPC_ADDR",
            "serf": rf"Error connecting to Serf agent: dial {where}: connection refused; is the "
            r"agent running with a Serf RPC listener\? .+; pass it as --serf-rpc-addr or "
            r"AGENTRPC_SERF_RPC_ADDR",
            "http": rf"{{prefix}}: Error connecting to the HTTP API at {where}: Connection "
            r"refused \(is the agent serving its HTTP API\? .+ --http-addr or CONSUL_HTTP_ADDR\)",
        },
    )


async def test_the_other_commands_against_a_silent_socket() -> None:
    async with silent_socket() as (address, _):
        started = trio.current_time()
        results = await run_others(address, env={"AGENTRPC_RPC_TIMEOUT": "0.5"})
        took = trio.current_time() - started
    where = re.escape(address)
    handshake = (
        rf"Error connecting to agent: {where} accepted the connection but did not answer the "
        r"handshake within 0\.5 s \(.+\); --timeout \(AGENTRPC_RPC_TIMEOUT\) sets the deadline"
    )
    check_others(
        results,
        {
            "rpc": handshake,
            "serf": handshake,
            "http": rf"{{prefix}}: Error connecting to the HTTP API at {where}: it did not answer "
            r"within 0\.5 s \(a stopped or overloaded agent, or not its HTTP port\); --timeout "
            r"\(AGENTRPC_RPC_TIMEOUT\) sets the deadline",
        },
    )
    # Seven commands, three at a time, each bounded by 0.5 s (not the 10 s default).
    assert took < 25, took


async def test_the_other_commands_against_a_gossip_port() -> None:
    async with serve() as agent:
        gossip = agent.address("serf LAN")
        results = await run_others(gossip)
    where = re.escape(gossip)
    not_rpc = (
        rf"Error connecting to agent: {where} does not speak the agent RPC \(.+\); is it a "
        r"gossip port or the server port\? .+"
    )
    check_others(
        results,
        {
            "rpc": not_rpc,
            # The Serf dialect's commands point at its own listener, not at Consul's RPC.
            "serf": rf"Error connecting to agent: {where} does not speak the agent RPC \(.+\); "
            r"is it a gossip port, the server port or Consul's agent RPC port\? Serf's RPC port "
            r"is the one `agentrpc serve --serf-rpc-addr` logs as 'Serf RPC listening on' .+",
            "http": rf"{{prefix}}: Error connecting to the HTTP API at {where}: {where} does not "
            r"speak HTTP \(.+\); is --http-addr the agent's HTTP port\? `agentrpc serve` logs it "
            r"as 'HTTP API listening on'",
        },
    )
    for name, result in results.items():
        assert b"\\x" not in result.stderr, (name, result.stderr)  # no raw bytes echoed


async def test_http_commands_honour_the_timeout_flag() -> None:
    """``--timeout`` itself (not only its environment variable), on a silent socket."""
    async with silent_socket() as (address, accepted):
        started = trio.current_time()
        result = await cli("kv", "put", "k", "v", "--http-addr", address, "--timeout", "0.3")
        took = trio.current_time() - started
        assert accepted.is_set()
    line = assert_one_line(result)
    assert line.startswith(
        f"Error! Failed writing data: Error connecting to the HTTP API at {address}: it did not "
        "answer within 0.3 s"
    ), line
    assert took < 8, took
