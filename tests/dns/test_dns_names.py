"""Query names to lookups (pure), as Consul 0.7's dispatch reads them."""

from __future__ import annotations

import ipaddress

import dns.name
import pytest
from hypothesis import given, settings, strategies as st

from agentrpc.dns.names import (
    AddrLookup,
    ApexLookup,
    InvalidName,
    NodeLookup,
    OutsideDomain,
    QueryLookup,
    ReverseLookup,
    ServiceLookup,
    parse_name,
)

CONSUL = dns.name.from_text("consul.")


def parse(text: str, domain: dns.name.Name = CONSUL) -> object:
    return parse_name(dns.name.from_text(text), domain, "dc1")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("foo.node.consul.", NodeLookup("dc1", "foo")),
        ("foo.node.dc2.consul.", NodeLookup("dc2", "foo")),
        ("foo.bar.node.consul.", NodeLookup("dc1", "foo.bar")),
        # The reference lower-cases the whole question before reading it.
        ("Foo.NODE.DC2.Consul.", NodeLookup("dc2", "foo")),
        ("web.service.consul.", ServiceLookup("dc1", "web", "")),
        ("v1.web.service.consul.", ServiceLookup("dc1", "web", "v1")),
        ("a.b.web.service.dc3.consul.", ServiceLookup("dc3", "web", "a.b")),
        ("_web._v1.service.consul.", ServiceLookup("dc1", "web", "v1")),
        ("_web._tcp.service.consul.", ServiceLookup("dc1", "web", "")),
        ("_web._TCP.service.dc2.consul.", ServiceLookup("dc2", "web", "")),
        ("x._web._v1.service.consul.", ServiceLookup("dc1", "_v1", "x._web")),
        ("q1.query.consul.", QueryLookup("dc1", "q1")),
        ("7f000001.addr.consul.", AddrLookup(ipaddress.ip_address("127.0.0.1"))),
        ("7f000001.addr.dc1.consul.", AddrLookup(ipaddress.ip_address("127.0.0.1"))),
        (
            "2607002040050808000000000000200e.addr.consul.",
            AddrLookup(ipaddress.ip_address("2607:20:4005:808::200e")),
        ),
        ("consul.", ApexLookup()),
        ("2.0.0.127.in-addr.arpa.", ReverseLookup()),
        ("example.com.", OutsideDomain()),
        ("node.consul.", InvalidName("node")),
        ("service.dc1.consul.", InvalidName("service.dc1")),
        ("nonexisting.consul.", InvalidName("nonexisting")),
        ("a.b.c.consul.", InvalidName("a.b.c")),
        ("7f00001.addr.consul.", InvalidName("7f00001.addr")),
        ("7f00000g.addr.consul.", InvalidName("7f00000g.addr")),
        ("x.7f000001.addr.consul.", InvalidName("x.7f000001.addr")),
        # The reference strips any number of datacenter labels; the last one stripped wins.
        ("foo.node.a.b.consul.", NodeLookup("a", "foo")),
    ],
)
def test_names_as_the_reference_reads_them(name: str, expected: object) -> None:
    assert parse(name) == expected


def test_another_domain() -> None:
    domain = dns.name.from_text("example.internal.")
    assert parse("web.service.example.internal.", domain) == ServiceLookup("dc1", "web", "")
    assert parse("web.service.consul.", domain) == OutsideDomain()


_label = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="."),
    min_size=1,
    max_size=20,
)


@settings(deadline=None)
@given(st.lists(_label, min_size=0, max_size=8))
def test_any_name_under_the_domain_parses_to_one_lookup(labels: list[str]) -> None:
    name = dns.name.Name([label.encode() for label in labels] + [b"consul", b""])
    result = parse_name(name, CONSUL, "dc1")
    assert not isinstance(result, OutsideDomain | ReverseLookup)
    if not labels:
        assert result == ApexLookup()
    if isinstance(result, NodeLookup | ServiceLookup | QueryLookup):
        # The datacenter is the local one or a label of the name, in lower case.
        assert result.datacenter == "dc1" or result.datacenter in {x.lower() for x in labels}


@settings(deadline=None)
@given(_label, _label)
def test_service_and_tag_round_trip(service: str, tag: str) -> None:
    if service.startswith("_") or tag.lower() in {"service", "node", "query", "addr"}:
        return
    plain = parse(f"{dns.name.Name([tag.encode()]).to_text()}.{_text(service)}.service.consul.")
    assert plain == ServiceLookup("dc1", service.lower(), tag.lower())


def _text(label: str) -> str:
    return dns.name.Name([label.encode()]).to_text()
