"""``agentrpc serve`` as an operator drives it, real processes on loopback: every busy
address in one message, ``AGENTRPC_RPC_ADDR``, the joins at start (flags and config keys, LAN
and WAN, with retries and their progress lines), and the leave on SIGINT/SIGTERM as Consul
decides it for servers and clients."""

from __future__ import annotations

import json
import re
import signal
import socket
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import trio
from cli_support import CLI, Served, cli, closed_port, message_lines, serve, serve_argv
from process_helpers import free_port

from agentrpc import Client


async def run_serve(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[str], str]:
    """``serve`` run to its end: exit status, its message lines (not log lines), all stderr."""
    result = await cli(*serve_argv(*args)[len(CLI) :], env=env)
    text = result.stderr.decode(errors="replace")
    assert "Traceback" not in text, text
    return result.returncode, message_lines(text), text


async def statuses(agent: Served, *, wan: bool = False) -> dict[str, str]:
    async with Client(agent.rpc_addr) as client:
        return {m.name: m.status for m in await client.members(wan=wan)}


async def wait_for_status(agent: Served, name: str, status: str, *, wan: bool = False) -> None:
    """Until ``agent`` sees ``name`` in ``status`` (bounded: 30 s, polled every 50 ms)."""
    with trio.fail_after(30):
        while (await statuses(agent, wan=wan)).get(name) != status:  # noqa: ASYNC110 - another process
            await trio.sleep(0.05)


@contextmanager
def held(port: int, *, tcp: bool = True, udp: bool = False) -> Iterator[None]:
    """Something else holding ``127.0.0.1:port``."""
    sockets = []
    try:
        if tcp:
            listener = socket.socket()
            listener.bind(("127.0.0.1", port))
            listener.listen()
            sockets.append(listener)
        if udp:
            datagrams = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            datagrams.bind(("127.0.0.1", port))
            sockets.append(datagrams)
        yield
    finally:
        for held_socket in sockets:
            held_socket.close()


async def test_every_busy_address_is_named_in_one_message() -> None:
    rpc, server, lan, wan = (free_port() for _ in range(4))
    with held(rpc), held(server), held(lan), held(wan, tcp=False, udp=True):
        code, lines, _ = await run_serve(
            "--rpc-addr", f"127.0.0.1:{rpc}",
            "--server-addr", f"127.0.0.1:{server}",
            "--serf-lan-addr", f"127.0.0.1:{lan}",
            "--serf-wan-addr", f"127.0.0.1:{wan}",
        )  # fmt: skip
    assert code == 1
    assert lines == [
        f"Error starting agent: address already in use: RPC 127.0.0.1:{rpc}, server port "
        f"127.0.0.1:{server}, serf LAN 127.0.0.1:{lan}, serf WAN 127.0.0.1:{wan}; is another "
        "agent running? Stop it, or choose other addresses (--rpc-addr, --server-addr, "
        "--serf-lan-addr, --serf-wan-addr, --http-addr, --dns-addr; port 0 picks a free one)"
    ]
    # One conflict found late (the gossip port, after the RPC and server ports were bound).
    with held(lan, tcp=False, udp=True):
        code, lines, _ = await run_serve("--serf-lan-addr", f"127.0.0.1:{lan}")
    assert code == 1
    assert lines == [
        f"Error starting agent: address already in use: serf LAN 127.0.0.1:{lan}; is another "
        "agent running? Stop it, or choose other addresses (--rpc-addr, --server-addr, "
        "--serf-lan-addr, --serf-wan-addr, --http-addr, --dns-addr; port 0 picks a free one)"
    ]


async def test_a_busy_http_or_dns_port_is_named_with_how_to_turn_them_off() -> None:
    """HTTP and DNS are on by default (8500, 8600): a second agent on one host collides there
    first, and the line says how to move them or turn them off."""
    http, dns = free_port(), free_port()
    with held(http), held(dns, tcp=False, udp=True):
        code, lines, _ = await run_serve(
            "--http-addr", f"127.0.0.1:{http}", "--dns-addr", f"127.0.0.1:{dns}"
        )  # fmt: skip
    assert code == 1
    assert lines == [
        f"Error starting agent: address already in use: DNS 127.0.0.1:{dns}, HTTP "
        f"127.0.0.1:{http}; is another agent running? Stop it, or choose other addresses "
        "(--rpc-addr, --server-addr, --serf-lan-addr, --serf-wan-addr, --http-addr, "
        '--dns-addr; port 0 picks a free one; --http-addr "" and --dns-addr "" turn the '
        "HTTP API and DNS off)"
    ]


async def test_serve_listens_where_agentrpc_rpc_addr_says(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    env = {"AGENTRPC_RPC_ADDR": address}
    async with serve(env=env, rpc_addr=None) as agent:
        assert agent.rpc_addr == address
        members = await cli("members", env=env)  # the same variable brings the CLI there
        assert members.returncode == 0, members.stderr
        assert "cli-node" in members.stdout.decode()
    # A config file that names rpc_addr wins over the environment; a flag wins over both.
    config = tmp_path / "agent.toml"
    config.write_text('rpc_addr = "127.0.0.1:0"\n')
    async with serve("--config-file", str(config), env=env, rpc_addr=None) as agent:
        assert agent.rpc_addr != address
    async with serve(env=env) as agent:
        assert agent.rpc_addr != address


async def test_join_at_start_lan_and_wan() -> None:
    async with serve(node="a") as first:
        lan, wan = first.address("serf LAN"), first.address("serf WAN")
        async with serve(
            "-join", lan, "-join-wan", wan, node="b", ready=b"Join -wan completed"
        ) as second:
            assert b"Join completed. Synced with 1 initial agents" in second.stderr
            await wait_for_status(first, "b", "alive")
            await wait_for_status(first, "b.dc1", "alive", wan=True)
        dead = f"127.0.0.1:{closed_port()}"
        code, lines, _ = await run_serve("--join", dead)
        assert code == 1
        assert len(lines) == 1
        assert lines[0].startswith(
            f"Error starting agent: could not join the LAN pool through {dead}: 1 error(s) "
            "occurred: * Failed to join 127.0.0.1: "
        )


async def test_retry_join_shows_progress_then_joins() -> None:
    lan = free_port()
    async with serve(
        "--retry-join", f"127.0.0.1:{lan}", "--retry-interval", "200ms", "--client",
        node="late", ready=b"retrying in 0.2s",
    ) as waiting:  # fmt: skip
        assert re.search(
            rb"\[WARN\] agent: Join failed \(attempt 1\): .+, retrying in 0\.2s", waiting.stderr
        )
        async with serve("--serf-lan-addr", f"127.0.0.1:{lan}", node="early") as target:
            with trio.fail_after(20):
                await waiting.wait_for(b"Join completed. Synced with 1 initial agents")
            await wait_for_status(target, "late", "alive")


async def test_retry_max_ends_serve_with_one_message() -> None:
    dead = f"127.0.0.1:{closed_port()}"
    code, lines, text = await run_serve(
        "--retry-join", dead, "-retry-interval=0.05", "-retry-max=2", "--client"
    )
    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith(
        f"Error starting agent: max join retry exhausted: 3 attempts through {dead} failed, "
        "the last with: 1 error(s) occurred: * Failed to join 127.0.0.1: "
    )
    assert "Join failed (attempt 1 of 3)" in text
    assert "Join failed (attempt 2 of 3)" in text
    assert "[ERR] agent: max join retry exhausted, exiting" in text


async def test_the_join_config_keys(tmp_path: Path) -> None:
    async with serve(node="a") as first:
        config = tmp_path / "joins.toml"
        config.write_text(
            f'start_join = ["{first.address("serf LAN")}"]\n'
            f'retry_join_wan = ["{first.address("serf WAN")}"]\n'
            'retry_interval_wan = "100ms"\n'
            "retry_max_wan = 3\n"
        )
        async with serve("--config-file", str(config), node="b", ready=b"Join -wan completed"):
            await wait_for_status(first, "b", "alive")
            await wait_for_status(first, "b.dc1", "alive", wan=True)


async def test_signals_leave_as_consul_decides(tmp_path: Path) -> None:
    """Consul's defaults: a client leaves on SIGINT and SIGTERM, a server on neither;
    ``leave_on_terminate`` / ``skip_leave_on_interrupt`` change that."""
    leaving_server = tmp_path / "leaving.json"
    leaving_server.write_text(json.dumps({"leave_on_terminate": True}))
    staying_client = tmp_path / "staying.json"
    staying_client.write_text(json.dumps({"skip_leave_on_interrupt": True}))
    cases = [
        ("c-int", ["--client"], signal.SIGINT, True),
        ("c-term", ["--client"], signal.SIGTERM, True),
        ("s-int", [], signal.SIGINT, False),
        ("s-term", [], signal.SIGTERM, False),
        ("s-term-leaving", ["--config-file", str(leaving_server)], signal.SIGTERM, True),
        ("c-int-staying", ["--client", "--config-file", str(staying_client)], signal.SIGINT, False),
    ]
    async with serve(node="hub") as hub, AsyncExitStack() as stack:
        lan = hub.address("serf LAN")
        agents = {}
        for name, args, _, _ in cases:
            agents[name] = await stack.enter_async_context(
                serve("--join", lan, *args, node=name, ready=b"Join completed")
            )
        for name, *_ in cases:
            await wait_for_status(hub, name, "alive")
        for name, _, signum, leaves in cases:
            agent = agents[name]
            agent.process.send_signal(signum)
            assert await agent.wait_exit() == 0, name
            await agent.wait_for(b"shutdown complete")
            text = agent.stderr.decode(errors="replace")
            assert message_lines(text) == [], text
            signame = signal.Signals(signum).name
            if leaves:
                assert f"Caught signal: {signame}, gracefully shutting down agent..." in text
                await wait_for_status(hub, name, "left")
            else:
                assert f"Caught signal: {signame}, shutting down without leaving" in text
                # It left no word: the hub still counts it in (alive, then failed), never left.
                assert (await statuses(hub))[name] != "left"
