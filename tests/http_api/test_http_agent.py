"""Consul's HTTP API served by a real agent (``http_addr``): py-consul, Consul's Python client,
talks to a server agent over loopback (kv, agent members and self, the catalog's nodes, the
leader), the ``agentrpc kv`` CLI to ``agentrpc serve --http-addr`` as real processes, a plain
``agentrpc serve`` on Consul's 8500 and 8600 (and ``""`` or Consul's ``-http-port=-1`` for
none), and a user event fired over HTTP comes back from the LAN pool into ``/v1/event/list``."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import consul
import dns.asyncquery
import dns.message
import pytest
import trio
from http_helpers import blocking
from rpc_helpers import running_agent

from agentrpc.agent import Agent, AgentStartError
from agentrpc.gossip.transport import MemoryGossipNetwork


def pyconsul(agent: Agent) -> consul.Consul:
    assert agent.http_address is not None
    return consul.Consul(host=agent.http_address.host, port=agent.http_address.port)


async def test_pyconsul_drives_a_server_agent() -> None:
    async with running_agent(
        "tcp",
        gossip_network=MemoryGossipNetwork(),
        node_name="http1",
        http_addr="127.0.0.1:0",
    ) as agent:
        c = pyconsul(agent)
        assert await blocking(c.kv.put, "greeting", "hello") is True
        _, entry = await blocking(c.kv.get, "greeting")
        assert entry is not None and entry["Value"] == b"hello"
        members = await blocking(c.agent.members)
        assert [m["Name"] for m in members] == ["http1"]
        assert members[0]["Tags"]["role"] == "consul"
        me = await blocking(c.agent.self)
        assert me["Config"]["NodeName"] == "http1"
        assert me["Config"]["Server"] is True
        assert me["Config"]["Ports"]["HTTP"] == agent.http_address.port  # type: ignore[union-attr]
        assert me["Member"]["Name"] == "http1"
        assert me["Stats"]["agent"]["name"] == "http1"
        assert me["Coord"] is not None and len(me["Coord"]["Vec"]) == 8
        with trio.fail_after(20):
            while True:  # the catalog learns the node from the LAN pool (real time)
                _, nodes = await blocking(c.catalog.nodes)
                if any(n["Node"] == "http1" for n in nodes):
                    break
                await trio.sleep(0.05)
        leader = await blocking(c.status.leader)
        assert agent.server_address is not None
        assert leader == str(agent.server_address)
        # the agent's own consul service, registered by its local state's anti-entropy
        with trio.fail_after(20):
            while True:
                _, services = await blocking(c.catalog.services)
                if "consul" in services:
                    break
                await trio.sleep(0.05)


async def test_a_user_event_fired_over_http_comes_back_from_the_lan_pool() -> None:
    async with running_agent(
        "tcp",
        gossip_network=MemoryGossipNetwork(),
        node_name="http2",
        http_addr="127.0.0.1:0",
    ) as agent:
        c = pyconsul(agent)
        fired = await blocking(c.event.fire, "deploy", "v2")
        with trio.fail_after(20):
            while True:
                _, events = await blocking(c.event.list, name="deploy")
                if events:
                    break
                await trio.sleep(0.05)
        assert [(e["ID"], e["Name"], e["Payload"]) for e in events] == [
            (fired["ID"], "deploy", b"v2")
        ]
        with pytest.raises(consul.ConsulException, match="No path to datacenter"):
            await blocking(c.event.fire, "deploy", "v3", dc="elsewhere")


async def test_a_client_agent_calls_the_server_its_lan_pool_knows() -> None:
    network = MemoryGossipNetwork()
    async with (
        running_agent(
            "tcp", gossip_network=network, node_name="srv", serf_lan_addr="127.0.0.1:8301"
        ) as server,
        running_agent(
            "tcp",
            gossip_network=network,
            node_name="cl",
            server=False,
            serf_lan_addr="127.0.0.2:8301",
            start_join=["127.0.0.1:8301"],
            http_addr="127.0.0.1:0",
        ) as client_agent,
    ):
        c = pyconsul(client_agent)
        assert await blocking(c.kv.put, "from-client", "x") is True
        assert server.server_port is not None
        got = await server.server_port.call_local(
            "KVS.Get", {"Datacenter": "dc1", "Key": "from-client"}
        )
        assert got["Entries"][0]["Value"] == b"x"
        assert str(server.server_address) == await blocking(c.status.leader)
        assert sorted(m["Name"] for m in await blocking(c.agent.members)) == ["cl", "srv"]
        assert (await blocking(c.agent.self))["Config"]["Server"] is False
        with pytest.raises(consul.ConsulException, match="must run against a server"):
            await blocking(c.operator.keyring_list)  # type: ignore[attr-defined]


async def test_no_http_listener_when_http_addr_is_empty() -> None:
    async with running_agent("memory", node_name="nohttp", http_addr="") as agent:
        assert agent.http is None and agent.http_address is None


async def test_an_http_address_in_use_is_a_start_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        expected = pytest.RaisesExc(AgentStartError, match=rf"HTTP address 127.0.0.1:{port}: ")
        with pytest.RaisesGroup(expected, flatten_subgroups=True):
            async with running_agent("memory", node_name="busy", http_addr=f"127.0.0.1:{port}"):
                pass  # pragma: no cover - the agent cannot start


CLI = [sys.executable, "-m", "agentrpc.cli"]


class ExitedEarly(AssertionError):
    """The agent of :func:`serve` exited before it started; its stderr is the message."""


@asynccontextmanager
async def serve(*args: str) -> AsyncIterator[dict[str, str]]:
    """``agentrpc serve`` as a real process on free loopback ports (its HTTP and DNS where
    ``args`` say, else on their defaults); yields the HTTP and DNS addresses it logged.
    Killed on exit."""
    argv = [*CLI, "serve", "--node", "cli-http", "--rpc-addr", "127.0.0.1:0"]
    for flag in ("--serf-lan-addr", "--serf-wan-addr", "--server-addr"):
        argv += [flag, "127.0.0.1:0"]
    process = await trio.lowlevel.open_process([*argv, *args], stderr=subprocess.PIPE)
    assert process.stderr is not None
    stderr = bytearray()
    found: dict[str, str] = {}
    try:
        with trio.fail_after(20):
            while b"agent started" not in stderr:
                chunk = await process.stderr.receive_some(4096)
                if not chunk:
                    raise ExitedEarly(f"agent exited early: {stderr.decode()}")
                stderr += chunk
        for label, pattern in (
            ("http", rb"HTTP API listening on (\S+)"),
            ("dns", rb"dns: listening on (\S+)"),
        ):
            match = re.search(pattern, stderr)
            if match is not None:
                found[label] = match.group(1).decode()
        yield found
    finally:
        process.kill()
        with trio.move_on_after(5):
            await process.wait()


async def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    """The CLI, without the user's ``CONSUL_HTTP_*`` (so ``kv`` goes where its flags say, else
    to Consul's default ``127.0.0.1:8500``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_HTTP_")}
    with trio.fail_after(30):
        return await trio.run_process(
            [*CLI, *args], capture_stdout=True, capture_stderr=True, check=False, env=env
        )


async def node_answer(dns_addr: str, name: str) -> list[str]:
    """The A records DNS on ``dns_addr`` gives for ``name``, once the catalog has the node
    (the leader learns it from the LAN pool, in real time: bounded to 20 s)."""
    host, _, port = dns_addr.rpartition(":")
    query = dns.message.make_query(name, "A")
    with trio.fail_after(20):
        while True:
            reply = await dns.asyncquery.udp(query, host, port=int(port), timeout=5)
            if reply.answer:
                return [r.address for r in reply.answer[0]]
            await trio.sleep(0.05)


async def node_id_of(http_addr: str) -> str:
    """``Config.NodeID`` of ``/v1/agent/self``."""

    def fetch() -> str:
        with urllib.request.urlopen(f"http://{http_addr}/v1/agent/self", timeout=10) as reply:
            return str(json.load(reply)["Config"]["NodeID"])

    return await trio.to_thread.run_sync(fetch)


async def test_kv_cli_and_dns_against_agentrpc_serve() -> None:
    """The README's section "HTTP API and DNS (opt-in)", on free ports."""
    async with serve("--http-addr", "127.0.0.1:0", "--dns-addr", "127.0.0.1:0") as addresses:
        http = addresses["http"]
        put = await cli("kv", "put", "--http-addr", http, "a", "b")
        assert put.returncode == 0, put.stderr
        assert put.stdout.decode() == "Success! Data written to: a\n"
        got = await cli("kv", "get", "--http-addr", http, "a")
        assert got.returncode == 0, got.stderr
        assert got.stdout.decode() == "b\n"
        missing = await cli("kv", "get", "--http-addr", http, "nope")
        assert missing.returncode == 1
        assert await node_answer(addresses["dns"], "cli-http.node.consul.") == ["127.0.0.1"]
        agent_node_id = await node_id_of(http)
        assert len(agent_node_id) == 36, agent_node_id  # Config.NodeID: a UUID
        nodes = await cli("catalog", "nodes", "--http-addr", http)
        assert nodes.returncode == 0, nodes.stderr
        header, *rows = nodes.stdout.decode().splitlines()
        assert header.split() == ["Node", "ID", "Address", "DC"], nodes.stdout
        # Consul 0.8's columns: the node ID cut at its first "-".
        assert [row.split() for row in rows] == [
            ["cli-http", agent_node_id[:8], "127.0.0.1", "dc1"]
        ], nodes.stdout


def _taken(port: int, *, udp: bool) -> bool:
    """Whether something on this machine holds ``127.0.0.1:port`` (TCP, and UDP if asked)."""
    kinds = [socket.SOCK_STREAM, *([socket.SOCK_DGRAM] if udp else [])]
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as probe:
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the agent
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return True
    return False


async def test_a_plain_serve_takes_consuls_http_and_dns_ports() -> None:
    """No address flag: HTTP on 127.0.0.1:8500, where `agentrpc kv` goes by default, and DNS
    on 127.0.0.1:8600. Skipped when those ports are taken (another agent, or another test run
    on this machine)."""
    busy = [port for port, udp in ((8500, False), (8600, True)) if _taken(port, udp=udp)]
    if busy:
        pytest.skip(f"127.0.0.1 port(s) {busy} already in use on this machine")
    try:
        async with serve() as addresses:
            assert addresses == {"http": "127.0.0.1:8500", "dns": "127.0.0.1:8600"}
            put = await cli("kv", "put", "default-port", "yes")  # no --http-addr
            assert (put.returncode, put.stdout) == (0, b"Success! Data written to: default-port\n")
            got = await cli("kv", "get", "default-port")
            assert (got.returncode, got.stdout) == (0, b"yes\n"), got.stderr
            assert await node_answer(addresses["dns"], "cli-http.node.consul.") == ["127.0.0.1"]
    except ExitedEarly as exc:
        if "address already in use" in str(exc):  # taken between the check and the start
            pytest.skip(f"Consul's ports were taken meanwhile: {exc}")
        raise


async def test_empty_addresses_and_consuls_port_minus_one_turn_http_and_dns_off(
    tmp_path: Path,
) -> None:
    async with serve("--http-addr", "", "--dns-addr", "") as addresses:
        assert addresses == {}
    async with serve("-http-port=-1", "-dns-port", "-1") as addresses:  # Consul's spellings
        assert addresses == {}
    config = tmp_path / "off.json"
    config.write_text('{"http_addr": "", "dns_addr": ""}')
    async with serve("--config-file", str(config)) as addresses:
        assert addresses == {}
    # A port flag keeps the address's host, here the default's (the file turned it off).
    async with serve("--config-file", str(config), "--http-port", "0", "--dns-port", "0") as found:
        assert sorted(found) == ["dns", "http"]
        for address in found.values():
            host, _, port = address.rpartition(":")
            assert host == "127.0.0.1" and int(port) > 0


async def test_a_port_flag_out_of_range_is_one_line() -> None:
    done = await cli("serve", "--node", "x", "--http-port", "70000")
    assert (done.returncode, done.stderr.decode()) == (
        1,
        "Invalid --http-port: 70000 is not a port (0-65535, or -1 for off)\n",
    )
