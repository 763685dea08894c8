"""``agentrpc operator raft list-peers`` and ``remove-peer`` against real HTTP APIs on loopback:
Consul's table and texts, ``--json``, the errors (no HTTP API there, no leader, unknown peer,
missing or doubled flags) as one line and exit status 1, and Consul's single-dash spellings
through the installed command."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from rpc_helpers import running_agent
from typer.testing import CliRunner

from agentrpc.agent import Agent
from agentrpc.catalog.operator import install_operator
from agentrpc.cli.main import app
from agentrpc.gossip.transport import MemoryGossipNetwork
from agentrpc.http_api.api import build_http_server
from agentrpc.http_api.host import AgentInfo
from agentrpc.log_protocol import CaptureLog
from agentrpc.protocol.bodies import Member
from agentrpc.serverport.endpoints import Endpoints
from agentrpc.serverport.server import ServerPort

RUNNER = CliRunner()
CLI = [sys.executable, "-m", "agentrpc.cli"]
HEADER = ["Node", "ID", "Address", "State", "Voter"]


def run(*args: str) -> tuple[int, str, str]:
    result = RUNNER.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


async def operator(*args: str) -> tuple[int, str, str]:
    return await trio.to_thread.run_sync(lambda: run("operator", "raft", *args))


def http_of(agent: Agent) -> str:
    assert agent.http_address is not None
    return f"{agent.http_address.host}:{agent.http_address.port}"


@asynccontextmanager
async def server(**settings: Any) -> AsyncIterator[Agent]:
    async with running_agent(
        "tcp",
        gossip_network=MemoryGossipNetwork(),
        node_name="op-cli",
        http_addr="127.0.0.1:0",
        raft_multiplier=1,
        **settings,
    ) as agent:
        yield agent


async def leads(agent: Agent) -> None:
    """Until the lone server leads (an election timeout or so), bounded."""
    with trio.fail_after(20):
        while True:
            if agent.raft is not None and agent.raft.facts.is_leader():
                return
            await trio.sleep(0.05)


async def test_list_peers_and_remove_peer_errors_against_a_lone_server() -> None:
    async with server() as agent:
        await leads(agent)
        addr = http_of(agent)
        code, out, err = await operator("list-peers", "--http-addr", addr)
        assert (code, err) == (0, "")
        lines = out.splitlines()
        assert lines[0].split() == HEADER
        assert lines[1].split() == ["op-cli", agent.node_id, agent.raft_address(), "leader", "true"]
        assert len(lines) == 2
        # Columns line up as the reference's columnize does: two spaces between columns.
        assert lines[1].index(agent.node_id) == lines[0].index("ID")

        code, out, _ = await operator("list-peers", "--http-addr", addr, "--stale", "--json")
        assert code == 0
        assert json.loads(out) == [
            {
                "node": "op-cli",
                "id": agent.node_id,
                "address": agent.raft_address(),
                "state": "leader",
                "voter": True,
            }
        ]

        code, out, err = await operator(
            "remove-peer", "--http-addr", addr, "--address", "10.9.9.9:1"
        )
        assert (code, out) == (1, "")
        assert err == (
            "Error removing peer: Unexpected response code: 500 "
            '(address "10.9.9.9:1" was not found in the Raft configuration)\n'
        )
        code, _, err = await operator("remove-peer", "--http-addr", addr, "--id", "nope")
        assert code == 1
        assert '(id "nope" was not found in the Raft configuration)' in err

        code, _, err = await operator("remove-peer", "--http-addr", addr)
        assert (code, err) == (
            1,
            "Error removing peer: an address or id is required for the peer to remove\n",
        )
        code, _, err = await operator("remove-peer", "--address", "a:1", "--id", "x")
        assert (code, err) == (1, "Error removing peer: cannot give both an address and id\n")

        # Consul's spellings, through the installed command.
        with trio.fail_after(30):
            done = await trio.run_process(
                [
                    *CLI,
                    "operator",
                    "raft",
                    "remove-peer",
                    "-address=10.9.9.9:1",
                    f"-http-addr={addr}",
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=os.environ,
            )
        assert done.returncode == 1
        assert done.stderr.decode().endswith(
            '(address "10.9.9.9:1" was not found in the Raft configuration)\n'
        )


async def test_no_http_api_and_no_leader_are_one_line() -> None:
    with trio.socket.socket() as probe:  # a free port nothing listens on
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out, err = await operator("list-peers", "--http-addr", f"127.0.0.1:{port}")
    assert (code, out) == (1, "")
    assert err.startswith(
        "Error getting peers: Failed to retrieve raft configuration: "
        f"Error connecting to the HTTP API at 127.0.0.1:{port}"
    )
    assert "--http-addr" in err and err.count("\n") == 1

    # A server waiting for two more (bootstrap_expect 3) has no leader: after the hold time
    # the reference's error; a stale read answers with the (empty) configuration.
    async with server(bootstrap_expect=3) as agent:
        addr = http_of(agent)
        code, out, err = await operator("list-peers", "--http-addr", addr, "--stale")
        assert (code, out.split()) == (0, HEADER)
        code, out, err = await operator("list-peers", "--http-addr", addr)
        assert (code, out) == (1, "")
        assert err == (
            "Error getting peers: Failed to retrieve raft configuration: "
            "Unexpected response code: 500 (No cluster leader)\n"
        )


class FakeRaft:
    def __init__(self) -> None:
        self.servers = [
            {"ID": "id-1", "Address": "127.0.0.1:8300", "Voter": True},
            {"ID": "id-2", "Address": "127.0.0.2:8300", "Voter": True},
            {"ID": "id-3", "Address": "127.0.0.3:8300", "Voter": False},
        ]

    def configuration(self) -> list[dict[str, Any]]:
        return [dict(s) for s in self.servers]

    def configuration_index(self) -> int:
        return 3

    async def remove_peer(self, *, address: str = "", server_id: str = "") -> None:
        await trio.lowlevel.checkpoint()
        self.servers = [s for s in self.servers if s["Address"] != address and s["ID"] != server_id]


class Facts:
    def is_leader(self) -> bool:
        return True

    def leader(self) -> str:
        return "127.0.0.1:8300"

    def last_contact(self) -> float | None:
        return None

    def peers(self) -> list[str]:
        return []

    async def verify_leader(self) -> None:
        await trio.lowlevel.checkpoint()


class NoForwarding:
    async def forward_leader(self, method: str, body: Any) -> Any:
        raise AssertionError("the fake server leads")

    async def forward_datacenter(self, datacenter: str, method: str, body: Any) -> Any:
        raise AssertionError("one datacenter")

    def datacenters(self) -> list[str]:
        return ["dc1"]


def member(name: str, host: str) -> Member:
    tags = {"role": "consul", "dc": "dc1", "port": "8300", "vsn": "2"}
    return Member(name, ipaddress.ip_address(host), 8301, tags, "alive")


class FakeAgent:
    """Just enough of an agent for the HTTP API's operator routes: its RPC calls go to a
    server port (in process) with the operator endpoints over a fake three-server Raft."""

    def __init__(self, port: ServerPort) -> None:
        self.port = port
        self.info = AgentInfo(node_name="s1", datacenter="dc1", server=True)

    async def call(self, method: str, args: Any) -> Any:
        return await self.port.call_local(method, args)


async def test_remove_peer_from_three_then_list_the_rest() -> None:
    raft = FakeRaft()
    endpoints = Endpoints()
    members = [member("s1", "127.0.0.1"), member("s2", "127.0.0.2")]
    install_operator(
        endpoints,
        raft,
        facts=Facts(),
        forwarder=NoForwarding(),
        datacenter="dc1",
        members=lambda: members,
    )
    log = CaptureLog()
    port = ServerPort("127.0.0.1:0", endpoints, None, log)
    http = build_http_server("127.0.0.1:0", FakeAgent(port), log)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        address = await nursery.start(http.run)
        addr = f"{address.host}:{address.port}"
        code, out, _ = await operator("list-peers", "--http-addr", addr)
        assert code == 0
        assert [line.split() for line in out.splitlines()] == [
            HEADER,
            ["s1", "id-1", "127.0.0.1:8300", "leader", "true"],
            ["s2", "id-2", "127.0.0.2:8300", "follower", "true"],
            ["(unknown)", "id-3", "127.0.0.3:8300", "follower", "false"],
        ]
        code, out, err = await operator(
            "remove-peer", "--http-addr", addr, "--address", "127.0.0.3:8300"
        )
        assert (code, out, err) == (0, 'Removed peer with address "127.0.0.3:8300"\n', "")
        code, out, err = await operator("remove-peer", "--http-addr", addr, "--id", "id-2")
        assert (code, out, err) == (0, 'Removed peer with id "id-2"\n', "")
        code, out, _ = await operator("list-peers", "--http-addr", addr)
        assert [line.split()[0] for line in out.splitlines()] == ["Node", "s1"]
        http.shutdown()
        nursery.cancel_scope.cancel()
