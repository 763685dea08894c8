"""The agent endpoints that change membership or config, on real agents (issue 15):
``/v1/agent/join/<addr>`` (LAN and ``?wan``), ``/v1/agent/force-leave/<node>``,
``/v1/agent/leave`` and ``/v1/agent/reload``.

In-process :class:`~agentrpc.agent.Agent` s whose gossip runs on one in-process network
(``127.0.0.x`` addresses on it) and whose HTTP API listens on loopback TCP; py-consul drives
the endpoints it wraps (in a worker thread), raw HTTP checks the exact status and text of the
error answers. One test runs ``agentrpc serve`` as a process, to see ``leave`` end it.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import consul
import pytest
import trio
from http_helpers import blocking
from rpc_helpers import rpc_addr_for

from agentrpc.agent import Agent
from agentrpc.config import load_config
from agentrpc.gossip.transport import MemoryGossipNetwork
from agentrpc.http_api.constants import ERR_WAN_JOIN_CLIENT
from agentrpc.transports import DEFAULT_NETWORK

BOUND = 20.0
"""Seconds for gossip to converge, or a member to be declared failed (the ``local`` gossip
profile: a 1 s probe interval, a suspicion timeout of a few seconds)."""

STATUS_ALIVE, STATUS_LEFT, STATUS_FAILED = 1, 3, 4
"""``serf.MemberStatus`` as ``/v1/agent/members`` gives it."""


# ------------------------------------------------------------------ agents and clients


@asynccontextmanager
async def agent_at(
    network: MemoryGossipNetwork,
    index: int,
    *,
    files: Sequence[str] = (),
    **settings: Any,
) -> AsyncIterator[Agent]:
    """An agent ``n<index>`` on ``127.0.0.<index>`` of the gossip network, its HTTP API on a
    free loopback port; shut down on exit without leaving (as a killed agent: its peers see
    it fail). The log level is left to ``files`` unless ``settings`` names it (a flag would
    win over the file at reload)."""
    host = f"127.0.0.{index}"
    overrides: dict[str, Any] = {
        "node_name": f"n{index}",
        "rpc_addr": rpc_addr_for("memory"),
        "serf_lan_addr": f"{host}:8301",
        "serf_wan_addr": f"{host}:8302",
        "server_addr": f"{host}:0",
        "http_addr": "127.0.0.1:0",
        "dns_addr": "",
        "gossip_lan_profile": "local",
        "gossip_wan_profile": "local",
        "raft_multiplier": 1,
        **settings,
    }
    config = load_config(files, overrides)
    agent = Agent(
        config,
        overrides=overrides,
        log_sink=io.StringIO(),
        network=DEFAULT_NETWORK,
        gossip_network=network,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        try:
            yield agent
        finally:
            agent.shutdown()


def pyconsul(agent: Agent) -> consul.Consul:
    address = agent.http_address
    assert address is not None
    return consul.Consul(host=address.host, port=address.port)


def _request(host: str, port: int, method: str, target: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(host, port, timeout=15)
    try:
        connection.request(method, target)
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


async def raw(agent: Agent, method: str, target: str) -> tuple[int, bytes]:
    """One raw HTTP request: the status and the body."""
    address = agent.http_address
    assert address is not None
    return await blocking(_request, address.host, address.port, method, target)


async def members(agent: Agent, *, wan: bool = False) -> dict[str, int]:
    """Name -> status of ``/v1/agent/members`` (``?wan``), through py-consul."""
    listed = await blocking(pyconsul(agent).agent.members, wan)
    return {m["Name"]: m["Status"] for m in listed}


async def eventually(check: Callable[[], Any], what: str, within: float = BOUND) -> None:
    """Until the awaitable ``check()`` is true: gossip on the real clock, bounded polling."""
    with trio.move_on_after(within) as scope:
        while not await check():  # noqa: ASYNC110 - real gossip, nothing to wait on
            await trio.sleep(0.05)
    assert not scope.cancelled_caught, f"timed out waiting for {what}"


# ------------------------------------------------------------------ join


async def test_join_lan_and_wan_show_the_members() -> None:
    network = MemoryGossipNetwork()
    async with AsyncExitStack() as stack:
        s1 = await stack.enter_async_context(agent_at(network, 1))
        s2 = await stack.enter_async_context(agent_at(network, 2))
        c3 = await stack.enter_async_context(agent_at(network, 3, server=False))
        assert await members(s1) == {"n1": STATUS_ALIVE}

        # LAN: s1 joins the client's LAN address; both see each other.
        assert await blocking(pyconsul(s1).agent.join, "127.0.0.3:8301") is True

        async def lan_joined() -> bool:
            return await members(s1) == await members(c3) == {"n1": 1, "n3": 1}

        await eventually(lan_joined, "n1 and n3 in each other's LAN members")
        assert "n2" not in await members(s1)

        # WAN: s1 joins s2's WAN address (the members are named node.datacenter).
        assert await members(s1, wan=True) == {"n1.dc1": STATUS_ALIVE}
        assert await blocking(pyconsul(s1).agent.join, "127.0.0.2:8302", wan=True) is True

        async def wan_joined() -> bool:
            expected = {"n1.dc1": 1, "n2.dc1": 1}
            return await members(s1, wan=True) == await members(s2, wan=True) == expected

        await eventually(wan_joined, "n1 and n2 in each other's WAN members")
        assert await members(s2) == {"n2": STATUS_ALIVE}  # the LAN pool did not change

        # A client agent has no WAN pool.
        status, body = await raw(c3, "PUT", "/v1/agent/join/127.0.0.2:8302?wan=1")
        assert (status, body) == (500, ERR_WAN_JOIN_CLIENT.encode())


async def test_a_join_nobody_answers_is_a_500_with_the_join_error() -> None:
    async with agent_at(MemoryGossipNetwork(), 1) as s1:
        status, body = await raw(s1, "PUT", "/v1/agent/join/127.0.0.9:8301")
        # serf's multierror of memberlist's "Failed to join <ip>: <reason>".
        assert status == 500
        text = body.decode()
        assert text.startswith("1 error(s) occurred:\n\n* Failed to join 127.0.0.9: "), text
        assert "refused" in text
        with pytest.raises(consul.ConsulException, match=r"Failed to join 127\.0\.0\.9"):
            await blocking(pyconsul(s1).agent.join, "127.0.0.9:8301", wan=True)
        assert await members(s1) == {"n1": STATUS_ALIVE}


# ------------------------------------------------------------------ force-leave


async def test_force_leave_moves_a_failed_member_to_left() -> None:
    network = MemoryGossipNetwork()
    async with agent_at(network, 1) as s1:
        async with agent_at(network, 2, server=False) as c2:
            assert await blocking(pyconsul(c2).agent.join, "127.0.0.1:8301") is True

            async def joined() -> bool:
                return await members(s1) == {"n1": STATUS_ALIVE, "n2": STATUS_ALIVE}

            await eventually(joined, "n2 alive in n1's members")
        # n2 was shut down without leaving (a kill, to its peers): it fails.

        async def failed() -> bool:
            return (await members(s1)).get("n2") == STATUS_FAILED

        await eventually(failed, "n2 failed in n1's members")
        assert await blocking(pyconsul(s1).agent.force_leave, "n2") is True
        assert await members(s1) == {"n1": STATUS_ALIVE, "n2": STATUS_LEFT}


# ------------------------------------------------------------------ leave


async def test_leave_answers_then_the_agent_shuts_down_and_its_peer_sees_it_left() -> None:
    network = MemoryGossipNetwork()
    async with agent_at(network, 1) as s1:
        async with agent_at(network, 2, server=False) as c2:
            assert await blocking(pyconsul(c2).agent.join, "127.0.0.1:8301") is True

            async def joined() -> bool:
                return (await members(s1)).get("n2") == STATUS_ALIVE

            await eventually(joined, "n2 alive in n1's members")
            # The 200 comes back (py-consul's True), then the agent stops on its own.
            assert await blocking(pyconsul(c2).agent.leave) is True
            with trio.fail_after(BOUND):
                await c2.wait_stopped()
            address = c2.http_address
            assert address is not None
            with pytest.raises(OSError):
                await trio.open_tcp_stream(address.host, address.port)
        # A graceful leave: left at once, never failed.
        assert await members(s1) == {"n1": STATUS_ALIVE, "n2": STATUS_LEFT}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_leave_ends_an_agentrpc_serve_process_after_the_reply(tmp_path: Path) -> None:
    port = _free_port()
    argv = [
        *[sys.executable, "-m", "agentrpc.cli"],
        "serve",
        "--node",
        "leaver",
        "--rpc-addr",
        "127.0.0.1:0",
        "--serf-lan-addr",
        "127.0.0.1:0",
        "--serf-wan-addr",
        "127.0.0.1:0",
        "--server-addr",
        "127.0.0.1:0",
        "--http-addr",
        f"127.0.0.1:{port}",
        "--dns-addr",
        "",
        "--data-dir",
        str(tmp_path / "data"),
    ]
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        c = consul.Consul(host="127.0.0.1", port=port)
        with trio.fail_after(30):  # start-up: imports on loaded cores
            while True:
                assert process.returncode is None, log_path.read_text()
                try:
                    await blocking(c.agent.self)
                    break
                except OSError:  # not listening yet (requests' errors are OSErrors)
                    await trio.sleep(0.1)
        assert await blocking(c.agent.leave) is True
        with trio.fail_after(BOUND):
            code = await process.wait()
        text = log_path.read_text()
        assert code == 0, text
        assert "graceful leave complete" in text
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
            with trio.move_on_after(5):
                await process.wait()


# ------------------------------------------------------------------ reload


async def test_reload_rereads_the_config_file_and_a_bad_one_keeps_the_agent_running(
    tmp_path: Path,
) -> None:
    config_file = tmp_path / "agent.json"
    config_file.write_text(json.dumps({"log_level": "INFO"}))
    async with agent_at(MemoryGossipNetwork(), 1, files=[str(config_file)]) as s1:
        c = pyconsul(s1)
        assert s1.config.log_level == "INFO"
        before = await blocking(c.agent.self)
        assert before["Config"]["LogLevel"] == "INFO"

        config_file.write_text(json.dumps({"log_level": "DEBUG"}))
        assert await blocking(c.agent.reload) is True
        assert s1.config.log_level == "DEBUG"
        after = await blocking(c.agent.self)
        assert after["Config"]["LogLevel"] == "DEBUG"

        # A file that does not parse: an error answer, the old config kept, still serving.
        config_file.write_text("{not json")
        status, body = await raw(s1, "PUT", "/v1/agent/reload")
        assert status == 500
        assert body.decode().startswith("Failed to reload configs"), body
        assert s1.config.log_level == "DEBUG"
        with pytest.raises(consul.ConsulException, match="Failed to reload configs"):
            await blocking(c.agent.reload)
        still = await blocking(c.agent.self)
        assert still["Config"]["LogLevel"] == "DEBUG"
        assert await members(s1) == {"n1": STATUS_ALIVE}
