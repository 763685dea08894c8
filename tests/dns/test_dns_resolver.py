"""The resolver core without sockets: queries in, catalog calls out, canned replies in,
response bytes out. Unit tests of the reference's behaviour and hypothesis properties of the
size bounds, the health filter and the additional section."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings, strategies as st

from agentrpc.catalog.structs import HealthCheck, Node, NodeService
from agentrpc.dns.resolver import CatalogCall, Resolution, Respond
from agentrpc.dns.settings import DNSConfig

NOW = 1_700_000_000.0
SECOND = 1_000_000_000


def instance(
    node: str,
    address: str,
    *,
    service: str = "web",
    port: int = 80,
    service_address: str = "",
    statuses: tuple[str, ...] = (),
    tagged: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "Checks": [HealthCheck(node, f"c{i}", status=s).to_wire() for i, s in enumerate(statuses)],
        "Node": Node(node, address, tagged).to_wire(),
        "Service": NodeService(service, service, address=service_address, port=port).to_wire(),
    }


def health_reply(*instances: dict[str, Any], last_contact: int = 0) -> dict[str, Any]:
    return {"Index": 9, "KnownLeader": True, "LastContact": last_contact, "Nodes": list(instances)}


def node_reply(node: str | None, address: str = "", last_contact: int = 0) -> dict[str, Any]:
    found = None if node is None else {"Node": Node(node, address).to_wire(), "Services": {}}
    return {"Index": 9, "KnownLeader": True, "LastContact": last_contact, "NodeServices": found}


def make(
    name: str,
    rdtype: str = "A",
    *,
    config: DNSConfig | None = None,
    transport: str = "udp",
    rng: random.Random | None = None,
    **query: Any,
) -> tuple[Resolution, dns.message.Message]:
    message = dns.message.make_query(name, rdtype, **query)
    resolution = Resolution(
        message,
        config=config or DNSConfig(),
        datacenter="dc1",
        node_name="agent-1",
        transport=transport,  # type: ignore[arg-type]
        now=NOW,
        rng=rng or random.Random(1),
    )
    return resolution, message


def run(resolution: Resolution, *replies: Any) -> tuple[list[CatalogCall], Respond]:
    """Feed ``replies`` (an ``Exception`` is a failed call) to the calls asked for."""
    calls: list[CatalogCall] = []
    action = resolution.start()
    queue = list(replies)
    while isinstance(action, CatalogCall):
        calls.append(action)
        reply = queue.pop(0)
        action = (
            resolution.fail(str(reply))
            if isinstance(reply, Exception)
            else resolution.receive(reply)
        )
    assert not queue, "replies left over"
    return calls, action


def decode(respond: Respond) -> dns.message.Message:
    return dns.message.from_wire(respond.wire)


def texts(message: dns.message.Message, section: str = "answer") -> list[str]:
    return [rdata.to_text() for rrset in getattr(message, section) for rdata in rrset]


# ------------------------------------------------------------------ nodes


def test_a_node_lookup_asks_catalog_node_services_as_the_reference() -> None:
    resolution, message = make("foo.node.consul.", config=DNSConfig(token="secret"))
    calls, respond = run(resolution, node_reply("foo", "10.1.2.3"))
    assert calls[0].method == "Catalog.NodeServices"
    args = calls[0].args
    assert (args["Datacenter"], args["Node"], args["AllowStale"], args["Token"]) == (
        "dc1",
        "foo",
        True,
        "secret",
    )
    assert list(args) == sorted(args)
    reply = decode(respond)
    assert reply.id == message.id
    assert reply.flags & dns.flags.QR and reply.flags & dns.flags.AA
    assert reply.flags & dns.flags.RD  # copied from the query
    assert texts(reply) == ["10.1.2.3"]
    assert respond.rcode == 0 and respond.answers == 1 and not respond.truncated


def test_a_stale_answer_is_asked_again_once_without_allow_stale() -> None:
    config = DNSConfig(max_stale_ns=SECOND)
    resolution, _ = make("foo.node.consul.", config=config)
    calls, respond = run(
        resolution,
        node_reply("foo", "10.0.0.1", last_contact=2 * SECOND),
        node_reply("foo", "10.0.0.2", last_contact=3 * SECOND),
    )
    assert [c.args["AllowStale"] for c in calls] == [True, False]
    assert texts(decode(respond)) == ["10.0.0.2"]
    assert [n.text for n in respond.notes] == ["dns: Query results too stale, re-requesting"]
    # Within max_stale: one call; allow_stale off: never a stale read.
    calls, _ = run(
        make("foo.node.consul.", config=config)[0], node_reply("foo", "10.0.0.1", SECOND)
    )
    assert len(calls) == 1
    resolution, _ = make("foo.node.consul.", config=DNSConfig(allow_stale=False))
    calls, _ = run(resolution, node_reply("foo", "10.0.0.1", 10**18))
    assert [c.args["AllowStale"] for c in calls] == [False]


def test_node_records_by_address_kind_and_question_type() -> None:
    cases = [
        ("A", "10.0.0.1", ["10.0.0.1"]),
        ("ANY", "10.0.0.1", ["10.0.0.1"]),
        ("AAAA", "10.0.0.1", []),
        ("AAAA", "fe80::1", ["fe80::1"]),
        ("ANY", "fe80::1", ["fe80::1"]),
        ("A", "::ffff:10.1.1.1", ["10.1.1.1"]),
        ("A", "www.example.com", ["www.example.com."]),
        ("A", "fe80::1%eth0", ["fe80::1%eth0."]),  # not an IP for Go either: a CNAME
    ]
    for rdtype, address, expected in cases:
        resolution, _ = make("n.node.consul.", rdtype)
        _, respond = run(resolution, node_reply("n", address))
        reply = decode(respond)
        assert texts(reply) == expected, (rdtype, address)
        assert reply.rcode() == dns.rcode.NOERROR
        # No records of that type: an empty NOERROR without an SOA, as the reference.
        assert not reply.authority
    # Other types (CNAME included) are not looked up at all: an empty NOERROR, no SOA.
    for rdtype in ("CNAME", "TXT", "MX", "SRV", "PTR", "NS"):
        calls, respond = run(make("n.node.consul.", rdtype)[0])
        reply = decode(respond)
        assert not calls and reply.rcode() == dns.rcode.NOERROR, rdtype
        assert not reply.answer and not reply.authority


def test_unknown_node_is_nxdomain_with_soa() -> None:
    _, respond = run(make("nope.node.consul.")[0], node_reply(None))
    reply = decode(respond)
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert texts(reply, "authority") == [
        "ns.consul. postmaster.consul. 1700000000 3600 600 86400 0"
    ]
    assert reply.authority[0].ttl == 0


def test_an_soa_question_gets_the_soa_in_authority_once() -> None:
    calls, respond = run(make("foo.node.consul.", "SOA")[0])
    reply = decode(respond)
    assert not calls  # a node lookup answers only A, AAAA and ANY
    assert not reply.answer and len(texts(reply, "authority")) == 1
    _, respond = run(make("web.service.consul.", "SOA")[0], health_reply(instance("n", "1.2.3.4")))
    reply = decode(respond)
    assert not reply.answer and len(texts(reply, "authority")) == 1


def test_a_failed_call_is_servfail_and_a_clipped_log_line() -> None:
    resolution, _ = make("foo.node.consul.")
    _, respond = run(resolution, RuntimeError("x" * 5000))
    assert decode(respond).rcode() == dns.rcode.SERVFAIL
    [note] = respond.notes
    assert note.text.startswith("dns: rpc error: xxx") and len(note.text) < 300


def test_a_reply_of_the_wrong_shape_is_servfail() -> None:
    for bad in ([], {"NodeServices": {"Node": "oops"}}, {"LastContact": "soon"}):
        _, respond = run(make("foo.node.consul.")[0], bad)
        assert decode(respond).rcode() == dns.rcode.SERVFAIL


def test_feeding_without_an_outstanding_call_is_a_bug() -> None:
    resolution, _ = make("7f000001.addr.consul.")
    resolution.start()
    with pytest.raises(RuntimeError):
        resolution.receive({})


def test_translate_wan_addrs_for_other_datacenters_only() -> None:
    config = DNSConfig(translate_wan_addrs=True)
    reply = health_reply(instance("n", "10.0.0.1", tagged={"wan": "198.51.100.1"}))
    for name, expected in (
        ("web.service.dc2.consul.", "198.51.100.1"),
        ("web.service.consul.", "10.0.0.1"),
    ):
        _, respond = run(make(name, config=config)[0], reply)
        assert texts(decode(respond)) == [expected]


# ------------------------------------------------------------------ services


def test_a_service_lookup_asks_health_service_nodes_with_the_tag() -> None:
    calls, _ = run(make("v1.web.service.dc2.consul.")[0], health_reply())
    args = calls[0].args
    assert calls[0].method == "Health.ServiceNodes"
    assert (args["Datacenter"], args["ServiceName"], args["ServiceTag"], args["TagFilter"]) == (
        "dc2",
        "web",
        "v1",
        True,
    )
    calls, _ = run(make("web.service.consul.")[0], health_reply())
    assert (calls[0].args["ServiceTag"], calls[0].args["TagFilter"]) == ("", False)


def test_srv_answers_and_their_additional_records() -> None:
    reply = health_reply(
        instance("a", "10.0.0.1", port=1),
        instance("a", "10.0.0.1", port=2),
        instance("a", "10.0.0.1", port=2),  # the same node, address and port: once
        instance("b", "fe80::2", port=3),
        instance("c", "10.0.0.3", port=4, service_address="192.0.2.9"),
    )
    _, respond = run(
        make("web.service.consul.", "SRV", transport="tcp", rng=random.Random(3))[0], reply
    )
    message = decode(respond)
    assert sorted(texts(message)) == [
        "1 1 1 a.node.dc1.consul.",
        "1 1 2 a.node.dc1.consul.",
        "1 1 3 b.node.dc1.consul.",
        "1 1 4 c.node.dc1.consul.",
    ]
    extra = {rrset.name.to_text(): texts_of(rrset) for rrset in message.additional}
    assert extra == {
        "a.node.dc1.consul.": ["10.0.0.1"],
        "b.node.dc1.consul.": ["fe80::2"],
        "c.node.dc1.consul.": ["192.0.2.9"],
    }
    # A/ANY: one record per distinct address, the service address first.
    _, respond = run(make("web.service.consul.", "ANY")[0], reply)
    assert sorted(texts(decode(respond))) == ["10.0.0.1", "192.0.2.9", "fe80::2"]


def texts_of(rrset: Any) -> list[str]:
    return [rdata.to_text() for rdata in rrset]


def test_service_ttls() -> None:
    config = DNSConfig(service_ttl_ns={"db": 10 * SECOND, "*": 5 * SECOND}, node_ttl_ns=3 * SECOND)
    for name, ttl in (
        ("db.service.consul.", 10),
        ("DB.service.consul.", 10),
        ("api.service.consul.", 5),
    ):
        _, respond = run(
            make(name, "SRV", config=config)[0], health_reply(instance("n", "10.0.0.1"))
        )
        message = decode(respond)
        assert message.answer[0].ttl == ttl and message.additional[0].ttl == ttl
    _, respond = run(make("n.node.consul.", config=config)[0], node_reply("n", "10.0.0.1"))
    assert decode(respond).answer[0].ttl == 3
    _, respond = run(make("0a000001.addr.consul.", config=config)[0])
    assert decode(respond).answer[0].ttl == 3


def test_the_order_comes_from_the_rng_passed_in() -> None:
    reply = health_reply(*(instance(f"n{i}", f"10.0.0.{i}") for i in range(1, 9)))
    config = DNSConfig(udp_answer_limit=8)

    def order(seed: int) -> list[str]:
        _, respond = run(
            make("web.service.consul.", config=config, rng=random.Random(seed))[0], reply
        )
        return texts(decode(respond))

    assert order(1) == order(1)
    assert len({tuple(order(seed)) for seed in range(10)}) > 1


@pytest.mark.parametrize("limit", [1, 2, 3, 8, 20])
def test_udp_answer_limit_without_edns(limit: int) -> None:
    reply = health_reply(*(instance(f"n{i}", f"10.0.0.{i}") for i in range(1, 13)))
    for truncate in (False, True):
        config = DNSConfig(udp_answer_limit=limit, enable_truncate=truncate)
        _, respond = run(make("web.service.consul.", config=config)[0], reply)
        message = decode(respond)
        assert len(texts(message)) == min(limit, 8)
        assert bool(message.flags & dns.flags.TC) is truncate
        # Over TCP, and with an EDNS buffer, every instance.
        _, respond = run(make("web.service.consul.", config=config, transport="tcp")[0], reply)
        assert len(texts(decode(respond))) == 12
        _, respond = run(
            make("web.service.consul.", config=config, use_edns=0, payload=1232)[0], reply
        )
        assert len(texts(decode(respond))) == 12


def test_prepared_queries() -> None:
    reply = {
        "DNS": {"TTL": "18s"},
        "Datacenter": "dc2",
        "Nodes": [instance("n", "10.0.0.1", port=7)],
        "Service": "db",
        "LastContact": 0,
    }
    calls, respond = run(make("geo.query.consul.", "SRV")[0], reply)
    assert calls[0].method == "PreparedQuery.Execute"
    assert calls[0].args["QueryIDOrName"] == "geo"
    assert calls[0].args["Agent"] == {"Datacenter": "dc1", "Node": "agent-1"}
    message = decode(respond)
    assert texts(message) == ["1 1 7 n.node.dc2.consul."]
    assert message.answer[0].ttl == 18
    _, respond = run(make("gone.query.consul.")[0], RuntimeError("Query not found"))
    assert decode(respond).rcode() == dns.rcode.NXDOMAIN
    _, respond = run(make("empty.query.consul.")[0], {**reply, "Nodes": None})
    assert decode(respond).rcode() == dns.rcode.NXDOMAIN


# ------------------------------------------------------------------ properties

_status = st.sampled_from(["passing", "warning", "critical", "maintenance", ""])


@settings(max_examples=150, deadline=None)
@given(
    statuses=st.lists(st.lists(_status, max_size=3), min_size=0, max_size=30),
    only_passing=st.booleans(),
    rdtype=st.sampled_from(["A", "ANY", "SRV"]),
)
def test_only_healthy_instances_are_answered(
    statuses: list[list[str]], only_passing: bool, rdtype: str
) -> None:
    instances = [
        instance(f"n{i}", f"10.0.{i // 200}.{i % 200 + 1}", statuses=tuple(s))
        for i, s in enumerate(statuses)
    ]
    healthy = {
        f"n{i}"
        for i, s in enumerate(statuses)
        if "critical" not in s and (not only_passing or all(x == "passing" for x in s))
    }
    config = DNSConfig(only_passing=only_passing)
    _, respond = run(
        make("web.service.consul.", rdtype, config=config, transport="tcp")[0],
        health_reply(*instances),
    )
    message = decode(respond)
    if not healthy:
        assert message.rcode() == dns.rcode.NXDOMAIN
        return
    if rdtype == "SRV":
        got = {rdata.target.labels[0].decode() for rrset in message.answer for rdata in rrset}
    else:
        got = {f"n{_index(text)}" for text in texts(message)}
    assert got == healthy


def _index(address: str) -> int:
    parts = ipaddress.ip_address(address).packed
    return parts[2] * 200 + parts[3] - 1


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(0, 120),
    name_length=st.integers(1, 60),
    payload=st.one_of(st.none(), st.integers(0, 65535)),
    transport=st.sampled_from(["udp", "tcp"]),
    rdtype=st.sampled_from(["A", "AAAA", "SRV", "ANY"]),
    truncate=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_a_response_never_exceeds_what_the_query_allows(
    count: int,
    name_length: int,
    payload: int | None,
    transport: str,
    rdtype: str,
    truncate: bool,
    seed: int,
) -> None:
    rng = random.Random(seed)
    instances = [
        instance(
            f"{'n' * name_length}{i}",
            f"10.1.{i // 250}.{i % 250 + 1}" if rng.random() < 0.5 else f"fe80::{i + 1:x}",
            port=i,
        )
        for i in range(count)
    ]
    query: dict[str, Any] = {} if payload is None else {"use_edns": 0, "payload": payload}
    config = DNSConfig(enable_truncate=truncate)
    resolution, message = make(
        "web.service.consul.", rdtype, config=config, transport=transport, rng=rng, **query
    )
    _, respond = run(resolution, health_reply(*instances))
    if transport == "tcp":
        limit = 65535
    elif payload is not None and payload > 512:
        limit = min(payload, 4096)
    else:
        limit = 512
    assert len(respond.wire) <= limit
    reply = decode(respond)
    assert reply.id == message.id
    # Every SRV answer's target has its address record, and nothing else is there.
    targets = {
        rdata.target
        for rrset in reply.answer
        if rrset.rdtype == dns.rdatatype.SRV
        for rdata in rrset
    }
    assert {rrset.name for rrset in reply.additional} == targets
    # TC only when asked for (or when the reply had to be cut that far).
    if reply.flags & dns.flags.TC:
        assert truncate or not reply.answer
    # No answer is repeated.
    assert len(set(texts(reply))) == len(texts(reply))
