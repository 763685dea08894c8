"""Three of Consul 0.7's DNS behaviours, over real loopback sockets against a real catalog:
names in any case (the question lower-cased, the catalog's names compared case-insensitively,
the owner name echoed as asked, SRV targets in the stored case); ``translate_wan_addrs`` for a
node of another datacenter; and the answers to types a name has no records of (TXT, MX, ANY,
...)."""

from __future__ import annotations

import dns.asyncresolver
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dns_helpers import CatalogEnv, catalog_env, dig, dig_records, records, running_dns, udp

from agentrpc.dns.settings import DNSConfig, DNSConfigError, parse_dns_config

A = dns.rdatatype.A
SRV = dns.rdatatype.SRV
SOA = dns.rdatatype.SOA


def query(name: str, rdtype: str) -> dns.message.Message:
    return dns.message.make_query(name, rdtype)


def owners(message: dns.message.Message) -> list[str]:
    """The answer's owner names exactly as sent (dnspython keeps a name's case)."""
    return [rrset.name.to_text() for rrset in message.answer]


def calls_of(env: CatalogEnv, method: str) -> list[dict[str, object]]:
    return [args for name, args in env.calls if name == method]


# ------------------------------------------------------------------ names in any case


async def test_names_in_any_case_find_the_node_and_the_service() -> None:
    env = catalog_env()
    await env.register(
        "Node1", "127.0.0.5", service="Web", service_id="Web-1", port=8080, tags=["Primary"]
    )
    async with running_dns(env) as (_server, address):
        for name in ("node1.node.consul.", "NODE1.node.consul.", "nOdE1.NoDe.DC1.consul."):
            reply = await udp(query(name, "A"), address)
            assert reply.rcode() == dns.rcode.NOERROR, name
            # The owner name is the question as the client spelled it.
            assert records(reply.answer) == [(name, A, "127.0.0.5", 0)]
        # The catalog was asked in lower case, as the reference lower-cases the question.
        assert {args["Node"] for args in calls_of(env, "Catalog.NodeServices")} == {"node1"}
        for name in (
            "web.service.consul.",
            "WEB.service.consul.",
            "primary.Web.SERVICE.consul.",
            "PRIMARY.web.service.Dc1.consul.",
        ):
            reply = await udp(query(name, "A"), address)
            assert records(reply.answer) == [(name, A, "127.0.0.5", 0)], name
        requests = calls_of(env, "Health.ServiceNodes")
        assert {args["ServiceName"] for args in requests} == {"web"}
        assert {args["ServiceTag"] for args in requests} == {"", "primary"}
        # SRV: the target is the node as the catalog holds it, the datacenter lower case.
        for name in ("_WEB._Primary.service.DC1.consul.", "_web._TCP.service.consul."):
            reply = await udp(query(name, "SRV"), address)
            assert records(reply.answer) == [(name, SRV, "1 1 8080 Node1.node.dc1.consul.", 0)]
            # (The additional record's owner may share the question's "DC1.consul." by
            # compression: DNS names compare without case.)
            [(owner, rdtype, text, ttl)] = records(reply.additional)
            assert owner.startswith("Node1.node.") and owner.lower() == "node1.node.dc1.consul."
            assert (rdtype, text, ttl) == (A, "127.0.0.5", 0)
        # An unknown name in any case is still NXDOMAIN.
        reply = await udp(query("NOBODY.node.consul.", "A"), address)
        assert reply.rcode() == dns.rcode.NXDOMAIN
        # dig and dnspython's stub resolver (which checks the question it gets back).
        out = await dig(address, "NODE1.Node.Consul")
        assert dig_records(out) == ["NODE1.Node.Consul. 0 IN A 127.0.0.5"]
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [address.host]
        resolver.port = address.port
        answer = await resolver.resolve("Web.Service.Consul.", "A", lifetime=5.0)
        assert [r.to_text() for r in answer] == ["127.0.0.5"]


async def test_a_node_registered_again_in_another_case_is_one_node() -> None:
    env = catalog_env()
    await env.register("foo", "127.0.0.1", service="db", port=1)
    await env.register("FOO", "127.0.0.2")
    async with running_dns(env) as (_server, address):
        reply = await udp(query("foo.node.consul.", "A"), address)
        assert records(reply.answer) == [("foo.node.consul.", A, "127.0.0.2", 0)]
        # One instance, on the node now spelled FOO.
        reply = await udp(query("db.service.consul.", "SRV"), address)
        assert [r[2] for r in records(reply.answer)] == ["1 1 1 FOO.node.dc1.consul."]
    listed = await env.call("Catalog.ListNodes", {"Datacenter": "dc1"})
    assert [n["Node"] for n in listed["Nodes"]] == ["FOO"]
    found = await env.call("Catalog.ServiceNodes", {"Datacenter": "dc1", "ServiceName": "DB"})
    assert [n["Node"] for n in found["ServiceNodes"]] == ["FOO"]


# ------------------------------------------------------------------ translate_wan_addrs


async def _two_datacenters() -> tuple[CatalogEnv, CatalogEnv]:
    dc1, dc2 = catalog_env("dc1"), catalog_env("dc2")
    dc1.forwarder.remote["dc2"] = dc2
    await dc1.register(
        "local", "127.0.0.1", service="db", port=1, tagged_addresses={"wan": "127.0.1.1"}
    )
    await dc2.register(
        "remote", "127.0.0.9", service="db", port=2, tagged_addresses={"wan": "127.0.1.9"}
    )
    await dc2.register("plain", "127.0.0.10", service="cache", port=3)
    await dc2.register(
        "svcaddr",
        "127.0.0.11",
        service="api",
        port=4,
        service_address="127.0.0.12",
        tagged_addresses={"wan": "127.0.1.11"},
    )
    return dc1, dc2


@pytest.mark.parametrize("translate", [False, True])
async def test_translate_wan_addrs_for_a_node_of_another_datacenter(translate: bool) -> None:
    dc1, _dc2 = await _two_datacenters()
    config = parse_dns_config({"translate_wan_addrs": translate})
    assert config.translate_wan_addrs is translate
    remote = "127.0.1.9" if translate else "127.0.0.9"
    async with running_dns(dc1, config) as (_server, address):
        reply = await udp(query("remote.node.dc2.consul.", "A"), address)
        assert records(reply.answer) == [("remote.node.dc2.consul.", A, remote, 0)]
        reply = await udp(query("db.service.dc2.consul.", "A"), address)
        assert records(reply.answer) == [("db.service.dc2.consul.", A, remote, 0)]
        reply = await udp(query("db.service.dc2.consul.", "SRV"), address)
        assert records(reply.additional) == [("remote.node.dc2.consul.", A, remote, 0)]
        # A node without a wan address keeps its own; a service address always wins.
        reply = await udp(query("plain.node.dc2.consul.", "A"), address)
        assert [r[2] for r in records(reply.answer)] == ["127.0.0.10"]
        reply = await udp(query("api.service.dc2.consul.", "A"), address)
        assert [r[2] for r in records(reply.answer)] == ["127.0.0.12"]
        # The local datacenter is never translated, named or not.
        for name in ("local.node.consul.", "local.node.dc1.consul.", "db.service.consul."):
            reply = await udp(query(name, "A"), address)
            assert [r[2] for r in records(reply.answer)] == ["127.0.0.1"], name


def test_translate_wan_addrs_in_dns_config_and_as_the_top_level_keyword() -> None:
    assert not parse_dns_config({}).translate_wan_addrs
    assert parse_dns_config({}, translate_wan_addrs=True).translate_wan_addrs
    assert parse_dns_config({"translate_wan_addrs": True}).translate_wan_addrs
    # The dns_config key wins over the keyword when both are given.
    config = parse_dns_config({"translate_wan_addrs": False}, translate_wan_addrs=True)
    assert not config.translate_wan_addrs
    with pytest.raises(DNSConfigError, match=r"^dns_config.translate_wan_addrs must be true"):
        parse_dns_config({"translate_wan_addrs": "yes"})


# ------------------------------------------------------------------ unsupported types


async def test_types_a_name_has_no_records_of() -> None:
    env = catalog_env()
    await env.register("foo", "127.0.0.1", service="web", port=80)
    async with running_dns(env) as (_server, address):
        # A node answers A, AAAA and ANY only: any other type is an empty NOERROR without an
        # SOA and without a lookup, whether the node exists or not (0.7's nodeLookup).
        before = len(calls_of(env, "Catalog.NodeServices"))
        for name in ("foo.node.consul.", "FOO.node.consul.", "nobody.node.consul."):
            for rdtype in ("TXT", "MX", "CNAME", "SRV", "NS"):
                reply = await udp(query(name, rdtype), address)
                assert reply.rcode() == dns.rcode.NOERROR, (name, rdtype)
                assert not reply.answer and not reply.authority and not reply.additional
        assert len(calls_of(env, "Catalog.NodeServices")) == before
        # An SOA question about a node gets the SOA (the reference adds it up front).
        reply = await udp(query("foo.node.consul.", "SOA"), address)
        assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
        assert [r[1] for r in records(reply.authority)] == [SOA]
        # A known node asked for AAAA it has not: an empty NOERROR, no SOA either.
        reply = await udp(query("foo.node.consul.", "AAAA"), address)
        assert reply.rcode() == dns.rcode.NOERROR
        assert not reply.answer and not reply.authority
        # ANY for a node is its address record.
        reply = await udp(query("foo.node.consul.", "ANY"), address)
        assert records(reply.answer) == [("foo.node.consul.", A, "127.0.0.1", 0)]
        # A service is looked up for any type: healthy instances but no record of the type
        # is NOERROR with the SOA; no instance is NXDOMAIN with the SOA; ANY is its A records.
        for rdtype in ("TXT", "MX", "NS", "AAAA"):
            reply = await udp(query("web.service.consul.", rdtype), address)
            assert reply.rcode() == dns.rcode.NOERROR, rdtype
            assert not reply.answer
            [soa] = records(reply.authority)
            assert soa[:2] == ("consul.", SOA)
        reply = await udp(query("nothing.service.consul.", "TXT"), address)
        assert reply.rcode() == dns.rcode.NXDOMAIN
        assert [r[1] for r in records(reply.authority)] == [SOA]
        reply = await udp(query("web.service.consul.", "ANY"), address)
        assert records(reply.answer) == [("web.service.consul.", A, "127.0.0.1", 0)]
        # The same with dig.
        out = await dig(address, "foo.node.consul", "TXT")
        assert "status: NOERROR" in out and dig_records(out) == []
        out = await dig(address, "web.service.consul", "TXT")
        assert "status: NOERROR" in out
        assert dig_records(out) == [
            "consul. 0 IN SOA ns.consul. postmaster.consul. 1700000000 3600 600 86400 0"
        ]


def test_the_default_config_does_not_translate() -> None:
    assert DNSConfig().translate_wan_addrs is False
