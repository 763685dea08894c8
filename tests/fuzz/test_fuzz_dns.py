"""The DNS decoder path under the project's mutation fuzzer (scripts/fuzz_decoders.py): UDP
datagrams and TCP streams built by mutating real queries go through the decoder, the name
parser and the resolver (fed a canned catalog reply) to the rendered reply. Nothing may
escape but a drop, a refusal or a reply, and no reply may exceed what the query allows."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.tsigkeyring
import pytest

from agentrpc.catalog.structs import HealthCheck, Node, NodeService
from agentrpc.dns.resolver import CatalogCall, Resolution
from agentrpc.dns.settings import DNSConfig
from agentrpc.dns.wire import Query, TCPFramer, decode_query, frame, size_limit

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fuzz_decoders.py"


def load_fuzzer() -> Any:
    spec = importlib.util.spec_from_file_location("fuzz_decoders", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_decoders"] = module
    spec.loader.exec_module(module)
    return module


def dns_seeds() -> list[bytes]:
    seeds = []
    for name, rdtype in [
        ("web.service.consul.", "A"),
        ("web.service.consul.", "SRV"),
        ("_web._tcp.service.dc2.consul.", "SRV"),
        ("v1.web.service.consul.", "ANY"),
        ("foo.node.dc1.consul.", "AAAA"),
        ("q.query.consul.", "SRV"),
        ("7f000001.addr.consul.", "A"),
        ("2.0.0.127.in-addr.arpa.", "PTR"),
        ("consul.", "SOA"),
        ("example.com.", "MX"),
    ]:
        seeds.append(dns.message.make_query(name, rdtype).to_wire())
        seeds.append(dns.message.make_query(name, rdtype, use_edns=0, payload=4096).to_wire())
    signed = dns.message.make_query("web.service.consul.", "A")
    signed.use_tsig(dns.tsigkeyring.from_text({"k.": "c2VjcmV0c2VjcmV0"}), keyname="k.")
    seeds.append(signed.to_wire())
    notify = dns.message.make_query("consul.", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    seeds.append(notify.to_wire())
    return seeds


def _reply(call: CatalogCall, rng: random.Random) -> Any:
    if call.method == "Catalog.NodeServices":
        node = Node(call.args["Node"], rng.choice(["10.0.0.1", "fe80::1", "www.example.com", ""]))
        return {"LastContact": 0, "NodeServices": {"Node": node.to_wire()}}
    if call.method == "Catalog.ListNodes":
        return {"Nodes": [Node("n", "127.0.0.2").to_wire()]}
    nodes = []
    for i in range(rng.randrange(0, 80)):
        name = "n" * rng.randrange(1, 60) + str(i)
        status = rng.choice(["passing", "warning", "critical"])
        nodes.append(
            {
                "Checks": [HealthCheck(name, "c", status=status).to_wire()],
                "Node": Node(name, f"10.0.{i // 250}.{i % 250}").to_wire(),
                "Service": NodeService("web", "web", port=i).to_wire(),
            }
        )
    return {"LastContact": 0, "Nodes": nodes, "DNS": {"TTL": rng.choice(["", "5s", "x"])}}


def resolve(rng: random.Random, data: bytes, transport: str) -> None:
    decoded = decode_query(data)
    if not isinstance(decoded, Query):
        return
    config = DNSConfig(enable_truncate=rng.random() < 0.5)
    resolution = Resolution(
        decoded.message,
        config=config,
        datacenter="dc1",
        transport=transport,  # type: ignore[arg-type]
        now=1_700_000_000.0,
        rng=rng,
    )
    action = resolution.start()
    for _ in range(3):
        if not isinstance(action, CatalogCall):
            break
        if rng.random() < 0.1:
            action = resolution.fail("rpc error: " + "x" * rng.randrange(0, 1000))
        else:
            action = resolution.receive(_reply(action, rng))
    assert not isinstance(action, CatalogCall), "a resolution asked for more than two calls"
    limit = size_limit(decoded.message, transport, config.max_udp_size)  # type: ignore[arg-type]
    if len(action.wire) > limit:
        raise AssertionError(f"a {len(action.wire)}-byte reply to a query allowing {limit}")
    reply = dns.message.from_wire(action.wire)
    if reply.id != decoded.message.id or not reply.flags & dns.flags.QR:
        raise AssertionError("the reply does not answer the query")


_KEYWORDS = [b"service", b"node", b"query", b"addr", b"_tcp", b"dc2", b"consul", b"arpa"]
_TYPES = ["A", "AAAA", "ANY", "SRV", "SOA", "PTR", "TXT", "CNAME", "MX", "NS"]


def structured_query(rng: random.Random) -> bytes:
    """A well-formed query with a random name under (or near) the domain: most byte-level
    mutations never get past the decoder, these reach the name parser and the resolver."""

    def word() -> bytes:
        if rng.random() < 0.2:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        return bytes(rng.randrange(97, 123) for _ in range(rng.randrange(1, 12)))

    templates = [
        lambda: [word(), b"service"],
        lambda: [word(), word(), b"service"],
        lambda: [b"_" + word(), b"_" + rng.choice([b"tcp", word()]), b"service"],
        lambda: [word(), b"node"],
        lambda: [word(), word(), b"node"],
        lambda: [word(), b"query"],
        lambda: [b"%08x" % rng.randrange(2**32), b"addr"],
        lambda: [rng.choice(_KEYWORDS) for _ in range(rng.randrange(0, 6))],
    ]
    labels = rng.choice(templates)()
    if rng.random() < 0.3:
        labels.append(rng.choice([b"dc1", b"dc2", word()]))
    suffix = [b"consul", b""]
    if rng.random() < 0.15:
        suffix = rng.choice([[b"in-addr", b"arpa", b""], [b"example", b""], [b""]])
    try:
        name = dns.name.Name(labels + suffix)
    except dns.exception.DNSException:
        name = dns.name.from_text("consul.")
    options: dict[str, Any] = {}
    if rng.random() < 0.5:
        options = {"use_edns": 0, "payload": rng.choice([0, 512, 1232, 4096, 65535])}
    query = dns.message.make_query(name, rng.choice(_TYPES), **options)
    if rng.random() < 0.1:
        query.question.append(query.question[0])
    return query.to_wire()


def run_dns_udp(rng: random.Random, data: bytes) -> None:
    resolve(rng, structured_query(rng) if rng.random() < 0.5 else data, "udp")


def _pieces(rng: random.Random, data: bytes) -> list[bytes]:
    """``data`` cut at random places, as TCP may deliver it."""
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(0, 8))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def run_dns_tcp(rng: random.Random, data: bytes) -> None:
    """The mutated message (and, spliced behind it, a second one) through the TCP framer."""
    if rng.random() < 0.5:
        data = structured_query(rng)
    stream = frame(data) + (data[:7] if rng.random() < 0.5 else frame(data[::-1] or b"\x00"))
    if rng.random() < 0.2:
        stream = bytes([rng.randrange(256), rng.randrange(256)]) + stream
    framer = TCPFramer()
    try:
        for piece in _pieces(rng, stream):
            framer.feed(piece)
            while (message := framer.next_message()) is not None:
                resolve(rng, message, "tcp")
    except ValueError as exc:
        if "zero-length" not in str(exc):
            raise


@pytest.mark.parametrize("target", ["dns-udp", "dns-tcp"])
def test_the_dns_decoder_path_survives_mutated_input(target: str, tmp_path: Path) -> None:
    fuzzer = load_fuzzer()
    fuzzer.TARGETS["dns-udp"] = (dns_seeds, run_dns_udp)
    fuzzer.TARGETS["dns-tcp"] = (dns_seeds, run_dns_tcp)
    ran, crashes = fuzzer.fuzz(target, 3000, seed=20261202, crash_dir=tmp_path)
    assert ran == 3000
    assert crashes == []


def test_the_dns_target_finds_a_planted_bug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fuzzer = load_fuzzer()
    fuzzer.TARGETS["dns-udp"] = (dns_seeds, run_dns_udp)

    def broken(query: Any, transport: str, max_udp_size: int) -> int:
        return 100  # a limit below what any reply needs: every answered query "overflows"

    monkeypatch.setattr(sys.modules[__name__], "size_limit", broken)
    _ran, crashes = fuzzer.fuzz("dns-udp", 50, seed=1, crash_dir=tmp_path)
    assert crashes
