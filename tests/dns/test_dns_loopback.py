"""The DNS interface over real loopback sockets, answered from a real catalog through the
in-process call: dnspython (queries and its stub resolver) and dig as the clients."""

from __future__ import annotations

import ipaddress
import socket

import dns.asyncresolver
import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import trio
from dns_helpers import DC, catalog_env, dig, dig_records, records, running_dns, tcp, udp

from agentrpc.dns.settings import DNSConfig

A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA
SRV = dns.rdatatype.SRV
SOA = dns.rdatatype.SOA
CNAME = dns.rdatatype.CNAME


def query(name: str, rdtype: str | int, **kwargs: object) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]


async def test_node_lookups_with_dnspython_and_dig() -> None:
    env = catalog_env()
    await env.register("foo", "127.0.0.1", tagged_addresses={"wan": "127.0.0.2"})
    await env.register("bar", "::4242:4242")
    await env.register("google", "www.google.com")
    async with running_dns(env) as (_server, address):
        for name in ("foo.node.consul.", "foo.node.dc1.consul.", "foo.NODE.Consul."):
            reply = await udp(query(name, "ANY"), address)
            assert reply.rcode() == dns.rcode.NOERROR
            assert reply.flags & dns.flags.AA
            assert records(reply.answer) == [(name, A, "127.0.0.1", 0)]
        reply = await udp(query("bar.node.consul.", "AAAA"), address)
        [(owner, rdtype, text, ttl)] = records(reply.answer)
        assert (owner, rdtype, ipaddress.ip_address(text), ttl) == (
            "bar.node.consul.",
            AAAA,
            ipaddress.ip_address("::4242:4242"),
            0,
        )
        reply = await udp(query("google.node.consul.", "A"), address)
        assert records(reply.answer) == [("google.node.consul.", CNAME, "www.google.com.", 0)]

        out = await dig(address, "foo.node.consul", "A")
        assert "status: NOERROR" in out
        assert dig_records(out) == ["foo.node.consul. 0 IN A 127.0.0.1"]
        out = await dig(address, "foo.node.dc1.consul")
        assert dig_records(out) == ["foo.node.dc1.consul. 0 IN A 127.0.0.1"]
    # The node lookups went to the catalog as the reference sends them (stale reads allowed).
    node_calls = [args for method, args in env.calls if method == "Catalog.NodeServices"]
    assert node_calls[0]["Node"] == "foo"
    assert node_calls[0]["Datacenter"] == DC
    assert node_calls[0]["AllowStale"] is True


async def test_unknown_names_and_types_get_the_soa() -> None:
    env = catalog_env()
    await env.register("foo", "127.0.0.1", service="web", port=80)
    async with running_dns(env) as (_server, address):
        for name in ("nofoo.node.consul.", "nodb.service.consul.", "what.consul.", "node.consul."):
            reply = await udp(query(name, "A"), address)
            assert reply.rcode() == dns.rcode.NXDOMAIN, name
            assert not reply.answer
            [soa] = records(reply.authority)
            assert soa[:2] == ("consul.", SOA)
            assert soa[2] == "ns.consul. postmaster.consul. 1700000000 3600 600 86400 0"
            assert soa[3] == 0
        # A known service without records of the asked type: NOERROR, no answer, the SOA; a
        # node asked for a type other than A/AAAA/ANY: NOERROR, no answer, no SOA (as 0.7).
        reply = await udp(query("web.service.consul.", "AAAA"), address)
        assert reply.rcode() == dns.rcode.NOERROR
        assert not reply.answer
        assert [r[1] for r in records(reply.authority)] == [SOA]
        reply = await udp(query("foo.node.consul.", "TXT"), address)
        assert reply.rcode() == dns.rcode.NOERROR
        assert not reply.answer
        assert not reply.authority
        # The apex answers its SOA; a name outside the domain fails (no recursors).
        reply = await udp(query("consul.", "SOA"), address)
        assert [r[1] for r in records(reply.answer)] == [SOA]
        reply = await udp(query("example.com.", "A"), address)
        assert reply.rcode() == dns.rcode.SERVFAIL
        out = await dig(address, "nofoo.node.consul")
        assert "status: NXDOMAIN" in out
        assert dig_records(out) == [
            "consul. 0 IN SOA ns.consul. postmaster.consul. 1700000000 3600 600 86400 0"
        ]


async def test_services_tags_and_srv_with_dig_and_dnspython() -> None:
    env = catalog_env()
    await env.register("n1", "127.0.0.1", service="db", port=12345, tags=["master"])
    await env.register("n2", "127.0.0.2", service="db", port=12346, tags=["replica"])
    async with running_dns(env) as (_server, address):
        reply = await udp(query("db.service.consul.", "A"), address)
        assert sorted(r[2] for r in records(reply.answer)) == ["127.0.0.1", "127.0.0.2"]

        for name in ("master.db.service.consul.", "_db._master.service.consul."):
            reply = await udp(query(name, "SRV"), address)
            assert records(reply.answer) == [(name, SRV, "1 1 12345 n1.node.dc1.consul.", 0)]
            assert records(reply.additional) == [("n1.node.dc1.consul.", A, "127.0.0.1", 0)]
        # _tcp is the RFC 2782 protocol label, not a tag.
        reply = await udp(query("_db._tcp.service.dc1.consul.", "SRV"), address)
        assert sorted(r[2] for r in records(reply.answer)) == [
            "1 1 12345 n1.node.dc1.consul.",
            "1 1 12346 n2.node.dc1.consul.",
        ]
        assert sorted(r[0] for r in records(reply.additional)) == [
            "n1.node.dc1.consul.",
            "n2.node.dc1.consul.",
        ]

        out = await dig(address, "replica.db.service.consul", "SRV")
        assert dig_records(out) == [
            "replica.db.service.consul. 0 IN SRV 1 1 12346 n2.node.dc1.consul.",
            "n2.node.dc1.consul. 0 IN A 127.0.0.2",
        ]
        assert ";; ADDITIONAL SECTION:" in out
        out = await dig(address, "_db._master.service.consul", "SRV")
        assert "1 1 12345 n1.node.dc1.consul." in out
        out = await dig(address, "nosuchtag.db.service.consul", "SRV")
        assert "status: NXDOMAIN" in out
    tagged = [
        args for method, args in env.calls if method == "Health.ServiceNodes" and args["TagFilter"]
    ]
    assert {args["ServiceTag"] for args in tagged} == {"master", "replica", "nosuchtag"}


async def test_failing_instances_are_left_out() -> None:
    env = catalog_env()
    await env.register("ok", "127.0.0.1", service="db", node_status="passing")
    await env.register("warn", "127.0.0.2", service="db", service_status="warning")
    await env.register("sick-node", "127.0.0.3", service="db", node_status="critical")
    await env.register("sick-svc", "127.0.0.4", service="db", service_status="critical")
    await env.register("bad", "127.0.0.5", service="gone", service_status="critical")
    async with running_dns(env) as (_server, address):
        reply = await udp(query("db.service.consul.", "A"), address)
        assert sorted(r[2] for r in records(reply.answer)) == ["127.0.0.1", "127.0.0.2"]
        out = await dig(address, "db.service.consul")
        assert "127.0.0.1" in out and "127.0.0.2" in out
        assert "127.0.0.3" not in out and "127.0.0.4" not in out
        # Every instance failing: NXDOMAIN, as for a service nobody offers.
        reply = await udp(query("gone.service.consul.", "A"), address)
        assert reply.rcode() == dns.rcode.NXDOMAIN
        assert [r[1] for r in records(reply.authority)] == [SOA]
    async with running_dns(env, DNSConfig(only_passing=True)) as (_server, address):
        reply = await udp(query("db.service.consul.", "ANY"), address)
        assert records(reply.answer) == [("db.service.consul.", A, "127.0.0.1", 0)]


async def test_ttls_follow_node_ttl_and_service_ttl() -> None:
    env = catalog_env()
    await env.register("foo", "127.0.0.1", service="db", port=1)
    await env.register("foo", "127.0.0.1", service="api", port=2)
    config = DNSConfig(
        node_ttl_ns=10_000_000_000,
        service_ttl_ns={"db": 10_000_000_000, "*": 5_000_000_000},
    )
    async with running_dns(env, config) as (_server, address):
        reply = await udp(query("foo.node.consul.", "A"), address)
        assert records(reply.answer)[0][3] == 10
        reply = await udp(query("db.service.consul.", "SRV"), address)
        assert records(reply.answer)[0][3] == 10
        assert records(reply.additional)[0][3] == 10
        reply = await udp(query("api.service.consul.", "SRV"), address)
        assert records(reply.answer)[0][3] == 5
        assert records(reply.additional)[0][3] == 5


async def test_instances_come_in_a_shuffled_order() -> None:
    env = catalog_env()
    for i in range(12):
        await env.register(f"web{i}", f"127.0.0.{i + 1}", service="web", port=80)
    orders = set()
    async with running_dns(env, rng=None) as (_server, address):
        for _ in range(10):
            reply = await tcp(query("web.service.consul.", "A"), address)
            answers = tuple(r[2] for r in records(reply.answer))
            assert len(answers) == 12
            orders.add(answers)
    assert len(orders) > 1


async def test_truncation_and_the_tcp_fallback() -> None:
    env = catalog_env()
    for i in range(20):
        await env.register(f"web{i:02}", f"127.0.0.{i + 1}", service="web", port=8000 + i)
    config = DNSConfig(enable_truncate=True)
    async with running_dns(env, config) as (server, address):
        # UDP without EDNS: 3 answers (udp_answer_limit), TC set, at most 512 bytes.
        wire = query("web.service.consul.", "SRV", use_edns=False).to_wire()
        reply = await udp(query("web.service.consul.", "SRV", use_edns=False), address)
        assert reply.flags & dns.flags.TC
        assert len(reply.answer[0]) == 3
        assert len(reply.to_wire()) <= 512 and len(wire) < 512
        targets = {rdata.target for rdata in reply.answer[0]}
        assert {rrset.name for rrset in reply.additional} == targets
        # Over TCP: everything.
        reply = await tcp(query("web.service.consul.", "SRV"), address)
        assert not reply.flags & dns.flags.TC
        assert len(records(reply.answer)) == 20
        assert len(records(reply.additional)) == 20
        # dig retries over TCP on its own when the UDP answer is truncated.
        out = await dig(address, "+noedns", "web.service.consul", "A")
        assert ";; Truncated, retrying in TCP mode." in out
        assert out.count("\tIN\tA\t127.0.0.") == 20
        # So does dnspython's stub resolver.
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [address.host]
        resolver.port = address.port
        resolver.use_edns(False)
        answer = await resolver.resolve("web.service.consul.", "A", lifetime=5)
        assert len(answer.rrset or ()) == 20
        assert server.stats.truncated >= 3


async def test_edns_buffer_sizes_are_honoured_and_never_exceeded() -> None:
    env = catalog_env()
    for i in range(200):
        await env.register(f"node-{i:03}", f"10.0.{i // 250}.{i % 250 + 1}", service="web")
    async with running_dns(env, DNSConfig(enable_truncate=True)) as (_server, address):
        for payload, expect_tc in ((1232, True), (512, True), (4096, False)):
            q = query("web.service.consul.", "A", use_edns=0, payload=payload)
            q.flags &= ~dns.flags.RD
            reply = await udp(q, address)
            size = len(reply.to_wire())
            assert size <= max(payload, 512)
            assert bool(reply.flags & dns.flags.TC) is expect_tc
            assert reply.edns == 0
            if payload == 1232:
                # Far more than the 3 a plain UDP query gets: as many as fit.
                assert len(records(reply.answer)) > 3
                assert size > payload - 16
            if payload == 4096:
                assert len(records(reply.answer)) == 200
        # A query claiming 65000 bytes gets at most max_udp_size (4096).
        reply = await udp(query("web.service.consul.", "A", use_edns=0, payload=65000), address)
        assert len(reply.to_wire()) <= 4096
        # A service small enough for the buffer is answered whole, without TC.
        await env.register("solo", "10.9.9.9", service="small")
        reply = await udp(query("small.service.consul.", "A", use_edns=0, payload=1232), address)
        assert not reply.flags & dns.flags.TC


async def test_a_name_in_dc2_is_answered_from_dc1() -> None:
    dc1, dc2 = catalog_env("dc1"), catalog_env("dc2")
    dc1.forwarder.remote["dc2"] = dc2
    await dc1.register("local", "127.0.0.1", service="db", port=1)
    await dc2.register("remote", "127.0.0.9", service="db", port=2, tags=["primary"])
    async with running_dns(dc1) as (_server, address):
        reply = await udp(query("db.service.dc2.consul.", "SRV"), address)
        assert records(reply.answer) == [
            ("db.service.dc2.consul.", SRV, "1 1 2 remote.node.dc2.consul.", 0)
        ]
        assert records(reply.additional) == [("remote.node.dc2.consul.", A, "127.0.0.9", 0)]
        out = await dig(address, "remote.node.dc2.consul")
        assert dig_records(out) == ["remote.node.dc2.consul. 0 IN A 127.0.0.9"]
        out = await dig(address, "_db._primary.service.dc2.consul", "SRV")
        assert "1 1 2 remote.node.dc2.consul." in out
        # The local datacenter is not forwarded; an unknown one fails.
        reply = await udp(query("db.service.consul.", "A"), address)
        assert records(reply.answer) == [("db.service.consul.", A, "127.0.0.1", 0)]
        reply = await udp(query("db.service.dc9.consul.", "A"), address)
        assert reply.rcode() == dns.rcode.SERVFAIL
    forwarded = [(dc, method, body["Datacenter"]) for dc, method, body in dc1.forwarder.forwarded]
    assert ("dc2", "Health.ServiceNodes", "dc2") in forwarded
    assert ("dc2", "Catalog.NodeServices", "dc2") in forwarded
    assert ("dc9", "Health.ServiceNodes", "dc9") in forwarded
    assert dc1.log.has("dns: rpc error: No path to datacenter")


async def test_addr_and_reverse_lookups() -> None:
    env = catalog_env()
    await env.register("foo2", "127.0.0.2")
    await env.register("bar", "::4242:4242")
    async with running_dns(env) as (_server, address):
        reply = await udp(query("7f000001.addr.dc1.consul.", "SRV"), address)
        assert records(reply.answer) == [("7f000001.addr.dc1.consul.", A, "127.0.0.1", 0)]
        name = "2607002040050808000000000000200e.addr.consul."
        reply = await udp(query(name, "AAAA"), address)
        assert records(reply.answer) == [(name, AAAA, "2607:20:4005:808::200e", 0)]
        reply = await udp(query("2.0.0.127.in-addr.arpa.", "PTR"), address)
        assert [r[2] for r in records(reply.answer)] == ["foo2.node.dc1.consul."]
        out = await dig(address, "-x", "::4242:4242")
        [ptr] = dig_records(out)
        assert ptr.endswith(".ip6.arpa. 0 IN PTR bar.node.dc1.consul.")
        reply = await udp(query("9.9.9.10.in-addr.arpa.", "PTR"), address)
        assert reply.rcode() == dns.rcode.SERVFAIL


async def test_garbage_is_dropped_and_counted_and_others_still_answered() -> None:
    env = catalog_env()
    await env.register("foo", "127.0.0.1")
    async with running_dns(env) as (server, address):
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            await sock.connect((address.host, address.port))
            garbage = [
                b"",
                b"\x00" * 5,
                b"\x12\x34\x01" + b"\x7f" * 37,
                query("foo.node.consul.", "A").to_wire()[:20],
            ]
            response = dns.message.make_response(query("foo.node.consul.", "A")).to_wire()
            # Garbage, then two good queries on the same socket: the only datagrams that come
            # back are the two answers, in order.
            for packet in [*garbage, response]:
                await sock.send(packet)
            for _ in range(2):
                good = query("foo.node.consul.", "A")
                await sock.send(good.to_wire())
                with trio.fail_after(5):
                    reply = dns.message.from_wire(await sock.recv(4096))
                assert reply.id == good.id
                assert records(reply.answer) == [("foo.node.consul.", A, "127.0.0.1", 0)]
        assert server.stats.malformed == 4
        assert server.stats.ignored_responses == 1
        # An opcode other than QUERY gets NOTIMP, no larger than the question.
        notify = query("foo.node.consul.", "SOA")
        notify.set_opcode(dns.opcode.NOTIFY)
        reply = await udp(notify, address)
        assert reply.rcode() == dns.rcode.NOTIMP
        assert len(reply.to_wire()) <= len(notify.to_wire())


async def test_tcp_pipelined_queries_are_answered_in_order() -> None:
    env = catalog_env()
    await env.register("foo", "127.0.0.1")
    await env.register("bar", "127.0.0.2")
    async with running_dns(env) as (_server, address):
        stream = await trio.open_tcp_stream(address.host, address.port)
        async with stream:
            queries = [query(f"{name}.node.consul.", "A") for name in ("foo", "bar", "nope")]
            payload = b"".join(
                len(w).to_bytes(2, "big") + w for w in (q.to_wire() for q in queries)
            )
            await stream.send_all(payload)
            buffer = b""
            replies = []
            with trio.fail_after(5):
                while len(replies) < 3:
                    buffer += await stream.receive_some(65536)
                    while len(buffer) >= 2 and len(buffer) >= 2 + int.from_bytes(buffer[:2]):
                        size = int.from_bytes(buffer[:2])
                        replies.append(dns.message.from_wire(buffer[2 : 2 + size]))
                        buffer = buffer[2 + size :]
        assert [r.id for r in replies] == [q.id for q in queries]
        assert [r.rcode() for r in replies] == [0, 0, dns.rcode.NXDOMAIN]


async def test_reconfigure_applies_to_the_next_query() -> None:
    env = catalog_env()
    await env.register("foo", "127.0.0.1")
    async with running_dns(env) as (server, address):
        reply = await udp(query("foo.node.consul.", "A"), address)
        assert records(reply.answer)[0][3] == 0
        server.reconfigure(DNSConfig(domain="example.internal", node_ttl_ns=30_000_000_000))
        reply = await udp(query("foo.node.example.internal.", "A"), address)
        assert records(reply.answer) == [("foo.node.example.internal.", A, "127.0.0.1", 30)]
        reply = await udp(query("foo.node.consul.", "A"), address)
        assert reply.rcode() == dns.rcode.SERVFAIL  # outside the domain now
