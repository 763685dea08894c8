"""The wire layer (decoding queries, refusals, rendering within a limit, TCP framing) and the
settings (Consul's ``dns_config`` object), pure."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rrset
import pytest
from hypothesis import given, settings, strategies as st

from agentrpc.dns.server import parse_bind_address
from agentrpc.dns.settings import (
    DEFAULT_DNS_ADDR,
    DEFAULT_MAX_STALE_NS,
    DNSConfig,
    DNSConfigError,
    parse_dns_config,
)
from agentrpc.dns.wire import Drop, Query, Refusal, TCPFramer, decode_query, frame, render
from agentrpc.gossip.contract import GossipAddress

SECOND = 1_000_000_000


def test_queries_refusals_and_drops() -> None:
    query = dns.message.make_query("a.consul.", "A")
    assert isinstance(decode_query(query.to_wire()), Query)
    assert decode_query(b"\x00" * 11) == Drop("malformed", "11 bytes, shorter than a DNS header")
    response = dns.message.make_response(query).to_wire()
    assert decode_query(response).reason == "response"  # type: ignore[union-attr]
    assert decode_query(query.to_wire() + b"junk").reason == "malformed"  # type: ignore[union-attr]

    no_question = dns.message.Message(id=7)
    refusal = decode_query(no_question.to_wire())
    assert isinstance(refusal, Refusal) and refusal.rcode == dns.rcode.FORMERR
    reply = dns.message.from_wire(refusal.wire)
    assert reply.id == 7 and reply.flags & dns.flags.QR

    update = dns.message.make_query("a.consul.", "SOA")
    update.set_opcode(dns.opcode.UPDATE)
    refusal = decode_query(update.to_wire())
    assert isinstance(refusal, Refusal) and refusal.rcode == dns.rcode.NOTIMP
    assert len(refusal.wire) <= len(update.to_wire())


@settings(deadline=None)
@given(st.binary(max_size=600))
def test_decoding_arbitrary_bytes_never_raises(data: bytes) -> None:
    decoded = decode_query(data)
    assert isinstance(decoded, Query | Refusal | Drop)
    if isinstance(decoded, Refusal):
        assert len(decoded.wire) <= max(len(data), 12 + 4 + 255)


def _message_with(count: int) -> dns.message.Message:
    message = dns.message.make_response(dns.message.make_query("web.service.consul.", "A"))
    for i in range(count):
        rrset = dns.rrset.from_text(
            "web.service.consul.", 0, "IN", "A", f"10.0.{i // 250}.{i % 250}"
        )
        message.answer.append(rrset)
    return message


@settings(deadline=None)
@given(st.integers(0, 400), st.integers(512, 65535), st.booleans())
def test_render_keeps_as_many_answers_as_fit(count: int, limit: int, flag: bool) -> None:
    message = _message_with(count)
    rendered = render(message, limit, flag_trimmed=flag)
    assert len(rendered.wire) <= limit
    kept = sum(len(rrset) for rrset in dns.message.from_wire(rendered.wire).answer)
    assert kept + rendered.answers_dropped == count
    if rendered.answers_dropped:
        # One more would not have fitted.
        assert len(render(_message_with(kept + 1), 65535).wire) > limit
        assert rendered.truncated is flag
    else:
        assert not rendered.truncated


@settings(deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=10), st.data())
def test_the_tcp_framer_splits_any_stream_back_into_its_messages(
    messages: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(frame(m) for m in messages)
    framer = TCPFramer()
    out: list[bytes] = []
    position = 0
    while position < len(stream):
        step = data.draw(st.integers(1, 64))
        framer.feed(stream[position : position + step])
        position += step
        while (message := framer.next_message()) is not None:
            out.append(message)
        assert framer.buffered <= 2 + 300 + 64
        assert framer.needed() >= 1
    assert out == messages


def test_a_zero_length_tcp_message_is_an_error() -> None:
    framer = TCPFramer()
    framer.feed(b"\x00\x00")
    with pytest.raises(ValueError):
        framer.next_message()


def test_dns_config_defaults_are_consul_0_7_1s() -> None:
    config = DNSConfig()
    assert (config.domain, config.allow_stale, config.max_stale_ns) == (
        "consul.",
        True,
        DEFAULT_MAX_STALE_NS,
    )
    assert DEFAULT_MAX_STALE_NS == 87600 * 3600 * SECOND
    assert (config.node_ttl(), config.service_ttl("web"), config.answer_limit()) == (0, 0, 3)
    assert (config.only_passing, config.enable_truncate) == (False, False)
    assert DNSConfig(udp_answer_limit=50).answer_limit() == 8
    assert DNSConfig(domain="Example.Internal").domain == "example.internal."


def test_parse_dns_config_reads_consuls_object() -> None:
    config = parse_dns_config(
        {
            "allow_stale": False,
            "max_stale": "30s",
            "node_ttl": "1m",
            "service_ttl": {"*": "5s", "db": "10s"},
            "enable_truncate": True,
            "only_passing": True,
            "udp_answer_limit": 5,
            "recursor_timeout": "2s",
        },
        domain="consul",
        token="t",
    )
    assert config.allow_stale is False
    assert config.max_stale_ns == 30 * SECOND
    assert config.node_ttl() == 60
    assert (config.service_ttl("db"), config.service_ttl("other")) == (10, 5)
    assert (config.enable_truncate, config.only_passing, config.udp_answer_limit) == (
        True,
        True,
        5,
    )
    assert (config.domain, config.token) == ("consul.", "t")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"node_ttl": "soon"}, "dns_config.node_ttl: time: invalid duration soon"),
        ({"max_stale": "-1s"}, "dns_config.max_stale must not be negative"),
        ({"allow_stale": "yes"}, "dns_config.allow_stale must be true or false"),
        ({"udp_answer_limit": 0}, "dns_config.udp_answer_limit must be > 0"),
        ({"udp_answer_limit": "3"}, "dns_config.udp_answer_limit must be an integer"),
        ({"service_ttl": ["5s"]}, "dns_config.service_ttl must map service names"),
        ({"service_ttl": {"db": "x"}}, "dns_config.service_ttl['db']: time: invalid duration x"),
        ({"recursors": []}, "dns_config: unknown key 'recursors'"),
    ],
)
def test_parse_dns_config_names_the_bad_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(DNSConfigError) as caught:
        parse_dns_config(raw)
    assert message in str(caught.value)


def test_an_empty_domain_is_refused() -> None:
    with pytest.raises(DNSConfigError):
        DNSConfig(domain=".")


def test_bind_addresses() -> None:
    assert parse_bind_address("127.0.0.1:8600") == GossipAddress("127.0.0.1", 8600)
    assert parse_bind_address("[::1]:53") == GossipAddress("::1", 53)
    assert parse_bind_address("127.0.0.1") == GossipAddress("127.0.0.1", 8600)
    assert DEFAULT_DNS_ADDR == "127.0.0.1:8600"
    for bad in (":8600", "127.0.0.1:x", "127.0.0.1:70000", "[::1"):
        with pytest.raises(ValueError, match="dns_addr"):
            parse_bind_address(bad)
