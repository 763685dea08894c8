"""The DNS interface served by a real server agent (``dns_addr``): dnspython asks over UDP
and TCP on loopback and gets the agent's own node, which the agent's catalog learned from its
LAN pool, and a service registered through the agent's server port; ``dns_config`` and
``domain`` from the agent's config; truncation with TCP fallback (dnspython and dig); a
3-agent cluster asked with dig and dnspython; a dc2 name answered from dc1 over the WAN."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.asyncresolver
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest
import trio
from rpc_helpers import running_agent

from agentrpc.agent import Agent, AgentStartError
from agentrpc.config import ConfigError, load_config
from agentrpc.gossip.transport import MemoryGossipNetwork


async def ask(agent: Agent, name: str, rdtype: str, *, tcp: bool = False) -> dns.message.Message:
    assert agent.dns is not None and agent.dns.address is not None
    address = agent.dns.address
    query = dns.message.make_query(name, rdtype)
    with trio.fail_after(10):
        if tcp:
            return await dns.asyncquery.tcp(query, address.host, port=address.port, timeout=5)
        return await dns.asyncquery.udp(query, address.host, port=address.port, timeout=5)


async def test_a_server_agent_answers_dns_from_its_catalog() -> None:
    network = MemoryGossipNetwork()
    async with running_agent(
        "memory",
        gossip_network=network,
        node_name="dns1",
        serf_lan_addr="127.0.0.1:8301",
        dns_addr="127.0.0.1:0",
    ) as agent:
        assert agent.server_port is not None
        with trio.fail_after(20):
            while True:  # the catalog learns the node from the LAN pool (real time)
                reply = await ask(agent, "dns1.node.consul.", "A")
                if reply.answer:
                    break
                await trio.sleep(0.05)
        (rrset,) = reply.answer
        assert [r.address for r in rrset] == ["127.0.0.1"]
        await agent.server_port.call_local(
            "Catalog.Register",
            {
                "Datacenter": "dc1",
                "Node": "dns1",
                "Address": "127.0.0.1",
                "Service": {"ID": "web1", "Service": "web", "Tags": ["v1"], "Port": 8080},
            },
        )
        srv = await ask(agent, "v1.web.service.consul.", "SRV", tcp=True)
        (rrset,) = srv.answer
        assert [(r.port, r.target.to_text()) for r in rrset] == [(8080, "dns1.node.dc1.consul.")]
        missing = await ask(agent, "nope.node.consul.", "A")
        assert missing.rcode() == dns.rcode.NXDOMAIN
        assert missing.authority and missing.authority[0].rdtype == dns.rdatatype.SOA


async def test_no_dns_listener_when_dns_addr_is_empty() -> None:
    async with running_agent("memory", node_name="nodns", dns_addr="") as agent:
        assert agent.dns is None


async def test_a_client_agent_answers_dns_through_its_server() -> None:
    """The client agent has no catalog: its DNS interface asks its server (through its
    server manager) and answers for both nodes; with no server known it says SERVFAIL."""
    network = MemoryGossipNetwork()
    async with (
        running_agent(
            "memory",
            gossip_network=network,
            node_name="srv1",
            serf_lan_addr="127.0.0.1:8301",
            server_addr="127.0.0.1:0",
        ) as server,
        running_agent(
            "memory",
            gossip_network=network,
            node_name="cli1",
            serf_lan_addr="127.0.0.2:8301",
            server=False,
            dns_addr="127.0.0.2:0",
        ) as client_agent,
    ):
        assert client_agent.server_port is None and client_agent.dns is not None
        lonely = await ask(client_agent, "srv1.node.consul.", "A")
        assert lonely.rcode() == dns.rcode.SERVFAIL  # no server known yet
        assert await client_agent.lan.join(["127.0.0.1:8301"]) == (1, "")
        with trio.fail_after(30):
            while True:  # gossip, then the server's catalog reconciles both nodes
                reply = await ask(client_agent, "cli1.node.consul.", "A")
                if reply.answer:
                    break
                await trio.sleep(0.05)
        assert [r.address for r in reply.answer[0]] == ["127.0.0.2"]
        reply = await ask(client_agent, "srv1.node.consul.", "A", tcp=True)
        assert [r.address for r in reply.answer[0]] == ["127.0.0.1"]
        assert server.server_port is not None


# --- dns_config, domain, truncation, a 3-agent cluster and WAN forwarding (issue 16) ---


def resolver_for(agent: Agent) -> dns.asyncresolver.Resolver:
    """dnspython's stub resolver pointed at the agent's DNS address only (no search list)."""
    assert agent.dns is not None and agent.dns.address is not None
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [agent.dns.address.host]
    resolver.port = agent.dns.address.port
    resolver.timeout = 5
    resolver.lifetime = 10
    return resolver


def dig(agent: Agent, *args: str) -> str:
    """``dig`` (Debian's dnsutils) against the agent; its whole output (run in a thread)."""
    assert agent.dns is not None and agent.dns.address is not None
    address = agent.dns.address
    command = ["dig", f"@{address.host}", "-p", str(address.port), "+time=3", "+tries=1", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=15, check=True).stdout


async def dig_short(agent: Agent, *args: str) -> list[str]:
    output = await trio.to_thread.run_sync(dig, agent, "+short", *args)
    return sorted(output.split("\n")[:-1]) if output else []


async def register(agent: Agent, dc: str, node: str, address: str, **service: Any) -> None:
    """``Catalog.Register`` through the server agent's port: a node outside the pool (no
    anti-entropy removes it), with one service and, when ``check`` is given, its check."""
    assert agent.server_port is not None
    check = service.pop("check", None)
    args: dict[str, Any] = {"Datacenter": dc, "Node": node, "Address": address}
    if service:
        args["Service"] = service
    if check is not None:
        args["Check"] = {"CheckID": f"{node}-check", "Name": "probe", "Status": check}
        args["Check"]["ServiceID"] = service["ID"]
    await agent.server_port.call_local("Catalog.Register", args)


async def answered(
    agent: Agent, name: str, rdtype: str, seconds: float = 30
) -> dns.message.Message:
    """The first reply with answers for ``name`` (the catalog learns by gossip, real time)."""
    with trio.fail_after(seconds):
        while True:
            reply = await ask(agent, name, rdtype)
            if reply.answer:
                return reply
            await trio.sleep(0.05)


async def test_dns_config_and_domain_from_a_config_file_reach_the_answers(tmp_path: Path) -> None:
    """``dns_config`` (node and service TTLs) and a non-default ``domain`` from a JSON file:
    the answers carry the TTLs, the domain is answered and ``consul.`` no longer is."""
    settings = {
        "domain": "mesh.internal",
        "dns_config": {"node_ttl": "30s", "service_ttl": {"*": "5s", "db": "1m"}},
    }
    config_file = tmp_path / "dns.json"
    config_file.write_text(json.dumps(settings))
    async with running_agent(
        "memory", files=[str(config_file)], node_name="ttl1", dns_addr="127.0.0.1:0"
    ) as agent:
        assert agent.config.dns_config["node_ttl"] == "30s"
        reply = await answered(agent, "ttl1.node.mesh.internal.", "A")
        assert [(r.address, reply.answer[0].ttl) for r in reply.answer[0]] == [("127.0.0.1", 30)]
        await register(agent, "dc1", "ext1", "127.0.0.21", ID="web1", Service="web", Port=80)
        await register(agent, "dc1", "ext2", "127.0.0.22", ID="db1", Service="db", Port=5432)
        web = await ask(agent, "web.service.mesh.internal.", "SRV")
        assert web.answer[0].ttl == 5
        assert [r.target.to_text() for r in web.answer[0]] == ["ext1.node.dc1.mesh.internal."]
        assert web.additional and web.additional[0].ttl == 5
        db = await ask(agent, "db.service.dc1.mesh.internal.", "A")
        assert db.answer[0].ttl == 60
        assert (await ask(agent, "ttl1.node.consul.", "A")).rcode() == dns.rcode.SERVFAIL


@pytest.mark.parametrize(
    ("dns_config", "message"),
    [
        ({"node_tll": "1s"}, "dns_config: unknown key 'node_tll'"),
        ({"node_ttl": "soon"}, "dns_config.node_ttl"),
        ({"max_stale": True}, "dns_config.max_stale"),
        ({"allow_stale": "yes"}, "dns_config.allow_stale"),
        ({"udp_answer_limit": 0}, "dns_config.udp_answer_limit"),
        ({"service_ttl": {"web": "-1s"}}, r"dns_config.service_ttl\['web'\]"),
        ({"service_ttl": "5s"}, "dns_config.service_ttl"),
    ],
)
def test_a_bad_dns_config_is_refused_before_the_agent_starts(
    dns_config: dict[str, Any], message: str
) -> None:
    """The DNS layer's own parser checks it when the agent is built (before any listener
    opens), so ``serve`` ends with that one line; one set of rules, not a copy in config."""
    config = load_config((), {"node_name": "n1", "dns_config": dns_config})
    with pytest.raises(AgentStartError, match=message):
        Agent(config)


def test_dns_config_must_be_an_object(tmp_path: Path) -> None:
    config_file = tmp_path / "bad.toml"
    config_file.write_text('dns_config = "fast"\n')
    with pytest.raises(ConfigError, match="dns_config must be an object"):
        load_config([config_file])
    good = tmp_path / "good.toml"
    good.write_text("[dns_config]\nenable_truncate = true\nudp_answer_limit = 2\n")
    assert load_config([good]).dns_config == {"enable_truncate": True, "udp_answer_limit": 2}


async def test_enable_truncate_sets_tc_over_udp_and_clients_retry_over_tcp() -> None:
    """Six instances: over UDP without EDNS the agent answers ``udp_answer_limit`` (3) with
    TC (``enable_truncate``); dnspython's resolver and dig retry over TCP and get all six."""
    async with running_agent(
        "memory",
        node_name="tc1",
        dns_addr="127.0.0.1:0",
        dns_config={"enable_truncate": True},
    ) as agent:
        addresses = [f"127.0.0.{30 + index}" for index in range(6)]
        for index, address in enumerate(addresses):
            await register(
                agent, "dc1", f"web{index}", address, ID="web", Service="web", Port=80 + index
            )
        udp = await ask(agent, "web.service.consul.", "A")
        assert udp.flags & dns.flags.TC
        assert len(udp.answer[0]) == 3
        tcp = await ask(agent, "web.service.consul.", "A", tcp=True)
        assert not tcp.flags & dns.flags.TC and len(tcp.answer[0]) == 6
        with trio.fail_after(15):
            resolved = await resolver_for(agent).resolve("web.service.consul.", "A", tcp=False)
        assert sorted(r.address for r in resolved) == addresses
        # dig sends EDNS (1232 bytes) by default: without it, the classic 512-byte UDP.
        output = await trio.to_thread.run_sync(dig, agent, "+noedns", "web.service.consul", "A")
        assert "Truncated, retrying in TCP mode" in output
        assert "(TCP)" in output
        assert sorted(await dig_short(agent, "+noedns", "web.service.consul", "A")) == addresses
        srv = await dig_short(agent, "+noedns", "web.service.consul", "SRV")
        assert len(srv) == 6 and all(line.endswith(".node.dc1.consul.") for line in srv)


async def test_a_three_agent_cluster_answers_dig_and_dnspython_from_every_agent() -> None:
    """One server and two clients on loopback IPs: every agent answers nodes, services, tags,
    SRV and dc-qualified names (the clients through the server); a critical instance is left
    out, a warning one kept unless ``only_passing``."""
    network = MemoryGossipNetwork()
    async with (
        running_agent(
            "memory",
            gossip_network=network,
            node_name="s1",
            serf_lan_addr="127.0.0.1:8301",
            server_addr="127.0.0.1:0",
            dns_addr="127.0.0.1:0",
        ) as server,
        running_agent(
            "memory",
            gossip_network=network,
            node_name="c2",
            serf_lan_addr="127.0.0.2:8301",
            server=False,
            dns_addr="127.0.0.2:0",
        ) as c2,
        running_agent(
            "memory",
            gossip_network=network,
            node_name="c3",
            serf_lan_addr="127.0.0.3:8301",
            server=False,
            dns_addr="127.0.0.3:0",
            dns_config={"only_passing": True},
        ) as c3,
    ):
        assert await c2.lan.join(["127.0.0.1:8301"]) == (1, "")
        assert await c3.lan.join(["127.0.0.1:8301"]) == (1, "")
        await register(
            server, "dc1", "ext1", "127.0.0.21", ID="web1", Service="web", Tags=["v1"], Port=81
        )
        await register(
            server,
            "dc1",
            "ext2",
            "127.0.0.22",
            ID="web2",
            Service="web",
            Tags=["v2"],
            Port=82,
            check="warning",
        )
        await register(
            server,
            "dc1",
            "ext3",
            "127.0.0.23",
            ID="web3",
            Service="web",
            Tags=["v1"],
            Port=83,
            check="critical",
        )
        for agent in (server, c2, c3):  # the clients' nodes reach the catalog by gossip
            await answered(agent, "c3.node.consul.", "A")
        agents = {"s1": server, "c2": c2, "c3": c3}
        for name, ip in (("s1", "127.0.0.1"), ("c2", "127.0.0.2"), ("c3", "127.0.0.3")):
            for agent in agents.values():
                assert await dig_short(agent, f"{name}.node.consul") == [ip]
                assert await dig_short(agent, f"{name}.node.dc1.consul") == [ip]
        for agent in (server, c2):
            assert await dig_short(agent, "web.service.consul") == ["127.0.0.21", "127.0.0.22"]
            assert await dig_short(agent, "v1.web.service.dc1.consul") == ["127.0.0.21"]
            assert await dig_short(agent, "_web._v2.service.consul", "SRV") == [
                "1 1 82 ext2.node.dc1.consul."
            ]
        assert await dig_short(c3, "web.service.consul") == ["127.0.0.21"]  # only_passing
        assert await dig_short(c3, "v2.web.service.consul") == []
        for agent in agents.values():
            resolver = resolver_for(agent)
            with trio.fail_after(15):
                srv = await resolver.resolve("v1.web.service.dc1.consul.", "SRV")
            assert [(r.port, r.target.to_text()) for r in srv] == [(81, "ext1.node.dc1.consul.")]
            assert [r.address for r in srv.response.additional[0]] == ["127.0.0.21"]
            with trio.fail_after(15):
                node = await resolver.resolve("c2.node.dc1.consul.", "A")
            assert [r.address for r in node] == ["127.0.0.2"]
            with trio.fail_after(15), pytest.raises(dns.resolver.NXDOMAIN):
                await resolver.resolve("nope.service.consul.", "A")
            # an unknown datacenter: the catalog's "No path to datacenter", an RPC error
            unknown = await ask(agent, "web.service.dc9.consul.", "A")
            assert unknown.rcode() == dns.rcode.SERVFAIL


async def test_a_dc2_name_is_answered_from_dc1_over_the_wan() -> None:
    """Two server agents in two datacenters joined over the WAN: dc1's DNS forwards a
    dc2-qualified name to dc2's servers (dc2 has no DNS listener of its own)."""
    network = MemoryGossipNetwork()
    async with (
        running_agent(
            "memory",
            gossip_network=network,
            node_name="s1",
            datacenter="dc1",
            serf_lan_addr="127.0.0.1:8301",
            serf_wan_addr="127.0.0.1:8302",
            server_addr="127.0.0.1:0",
            dns_addr="127.0.0.1:0",
        ) as dc1,
        running_agent(
            "memory",
            gossip_network=network,
            node_name="s2",
            datacenter="dc2",
            serf_lan_addr="127.0.0.2:8301",
            serf_wan_addr="127.0.0.2:8302",
            server_addr="127.0.0.2:0",
        ) as dc2,
    ):
        assert dc2.dns is None
        assert await dc1.wan.join(["127.0.0.2:8302"]) == (1, "")
        await register(
            dc2, "dc2", "db-node", "127.0.0.42", ID="db1", Service="db", Tags=["primary"], Port=5432
        )
        node = await answered(dc1, "s2.node.dc2.consul.", "A", seconds=40)
        assert [r.address for r in node.answer[0]] == ["127.0.0.2"]
        srv = await ask(dc1, "_db._primary.service.dc2.consul.", "SRV")
        assert [(r.port, r.target.to_text()) for r in srv.answer[0]] == [
            (5432, "db-node.node.dc2.consul.")
        ]
        assert [r.address for r in srv.additional[0]] == ["127.0.0.42"]
        assert await dig_short(dc1, "db.service.dc2.consul") == ["127.0.0.42"]
        assert (await ask(dc1, "s2.node.consul.", "A")).rcode() == dns.rcode.NXDOMAIN
        assert (await ask(dc1, "db.service.dc9.consul.", "A")).rcode() == dns.rcode.SERVFAIL
