"""Serf's queries: acks and responses to the querier by UDP, filters, the no-broadcast flag,
relays, the timeout formula, the size limits, duplicate suppression, and the pool's query
stream, respond and subscription."""

from __future__ import annotations

import re

import pytest
import trio
import trio.testing
from hypothesis import given, settings, strategies as st
from pool_cluster import pool_cluster
from serf_helpers import Serf, node_info
from test_serf_cluster import Cluster

from agentrpc.gossip.serf import QueryError, QueryReceived, SerfConfig
from agentrpc.gossip.serf_messages import (
    QUERY_FLAG_ACK,
    QUERY_FLAG_NO_BROADCAST,
    Query,
    QueryResponse,
    Relay,
    SerfMessageType,
    decode_serf_message,
    encode_serf_message,
)
from agentrpc.gossip.serf_queries import (
    QueryAck,
    QueryCollector,
    QueryReply,
    default_query_timeout,
    encode_filters,
    should_process,
)
from agentrpc.gossip.serf_regexp import RegexpError, match_string

QUERIER = bytes([127, 0, 0, 9])


def query(
    ltime: int = 3,
    query_id: int = 77,
    *,
    name: str = "q",
    flags: int = QUERY_FLAG_ACK,
    filters: tuple[bytes, ...] = (),
    relay_factor: int = 0,
    source_node: str = "querier",
    timeout_ns: int = 5_000_000_000,
    payload: bytes = b"",
) -> Query:
    return Query(
        ltime=ltime,
        id=query_id,
        addr=QUERIER,
        port=7946,
        source_node=source_node,
        filters=filters,
        flags=flags,
        relay_factor=relay_factor,
        timeout_ns=timeout_ns,
        name=name,
        payload=payload,
    )


def responses(serf: Serf) -> list[tuple[str, QueryResponse]]:
    out = []
    for send in serf.state.take_sends():
        message = decode_serf_message(send.payload)
        assert isinstance(message, QueryResponse)
        out.append((str(send.address), message))
    return out


def received(serf: Serf) -> list[QueryReceived]:
    return [e for e in serf.state.take_events() if isinstance(e, QueryReceived)]


# --------------------------------------------------------------------------------------------
# The answering side.


def test_a_query_is_acked_to_the_querier_delivered_once_and_rebroadcast() -> None:
    serf = Serf("b")
    serf.join_self("127.0.0.2")
    raw = encode_serf_message(query())
    serf.state.notify_message(raw)
    serf.state.notify_message(raw)
    assert responses(serf) == [("127.0.0.9:7946", QueryResponse(3, 77, "b", QUERY_FLAG_ACK))]
    (event,) = received(serf)
    assert (event.name, event.id, event.source_node) == ("q", 77, "querier")
    assert len(serf.state.query_broadcasts) == 1
    assert serf.state.get_broadcasts(2, 1400) == [raw]  # on the query queue
    serf.state.respond(event.handle, b"answer")
    assert responses(serf) == [("127.0.0.9:7946", QueryResponse(3, 77, "b", 0, b"answer"))]
    assert serf.state.query_clock.time() == 4


def test_a_query_from_serf_0_8_without_source_node_is_answered() -> None:
    serf = Serf("b")
    serf.join_self("127.0.0.2")
    body = query().to_wire()
    del body["SourceNode"]
    from agentrpc.gossip.messages import pack_wire

    serf.state.notify_message(bytes([SerfMessageType.QUERY]) + pack_wire(body))
    assert [address for address, _ in responses(serf)] == ["127.0.0.9:7946"]


def test_no_broadcast_and_no_ack_flags() -> None:
    serf = Serf("b")
    serf.join_self("127.0.0.2")
    serf.state.notify_message(encode_serf_message(query(flags=QUERY_FLAG_NO_BROADCAST)))
    assert responses(serf) == []  # no ack asked for
    assert len(received(serf)) == 1
    assert serf.state.get_broadcasts(2, 1400) == []


def test_filters_by_node_and_tag() -> None:
    tags = {"role": "web-frontend", "dc": "east"}
    assert should_process(encode_filters(["a", "b"]), "b", tags) == (True, None)
    assert should_process(encode_filters(["a"]), "b", tags) == (False, None)
    assert should_process(encode_filters(tags={"role": "^web"}), "b", tags) == (True, None)
    assert should_process(encode_filters(tags={"role": "db"}), "b", tags) == (False, None)
    both = encode_filters(["b"], {"role": "front", "dc": "^east$"})
    assert should_process(both, "b", tags) == (True, None)
    assert should_process(encode_filters(tags={"missing": "x"}), "b", tags) == (False, None)
    assert should_process(encode_filters(tags={"missing": ""}), "b", tags) == (True, None)
    ok, warning = should_process(encode_filters(tags={"role": "(unclosed"}), "b", tags)
    assert (
        not ok and warning is not None and "failed to compile filter regex ((unclosed)" in warning
    )
    assert should_process([b"\x07junk"], "b", tags) == (
        False,
        "query has unrecognized filter type: 7",
    )


def test_a_filtered_out_query_is_still_rebroadcast_but_not_acked() -> None:
    serf = Serf("b")
    serf.join_self("127.0.0.2")
    raw = encode_serf_message(query(filters=encode_filters(["someone-else"])))
    serf.state.notify_message(raw)
    assert responses(serf) == []
    assert received(serf) == []
    assert serf.state.get_broadcasts(2, 1400) == [raw]


def test_response_limits_and_deadline_have_serfs_texts() -> None:
    serf = Serf("b")
    serf.join_self("127.0.0.2")
    serf.state.notify_message(encode_serf_message(query(timeout_ns=1_000_000_000)))
    (event,) = received(serf)
    serf.state.take_sends()
    with pytest.raises(
        QueryError, match=r"^failed to respond to key query: response exceeds limit"
    ):
        serf.state.respond(event.handle, b"x" * 1024)
    serf.clock.advance(2)
    with pytest.raises(QueryError, match="response is past the deadline"):
        serf.state.respond(event.handle, b"late")
    with pytest.raises(QueryError, match="No pending queries matching ID"):
        serf.state.respond(12345, b"")
    serf.state.notify_message(encode_serf_message(query(ltime=9, query_id=1)))
    (second,) = received(serf)
    serf.state.respond(second.handle, b"once")
    with pytest.raises(QueryError, match="No pending queries matching ID"):
        serf.state.respond(second.handle, b"twice")


def test_an_old_or_duplicate_query_is_dropped() -> None:
    serf = Serf("b")
    serf.join_self("127.0.0.2")
    serf.state.notify_message(encode_serf_message(query(ltime=2000, query_id=1)))
    serf.state.notify_message(encode_serf_message(query(ltime=2000, query_id=2)))
    serf.state.notify_message(encode_serf_message(query(ltime=1000, query_id=3)))
    assert [e.id for e in received(serf)] == [1, 2]
    assert serf.log.has("received old query q from time 1000 (current: 2001)")


def test_the_default_timeout_formula() -> None:
    # GossipInterval * QueryTimeoutMult * ceil(log10(N + 1))
    assert default_query_timeout(0.2, 1) == pytest.approx(3.2)
    assert default_query_timeout(0.2, 9) == pytest.approx(3.2)
    assert default_query_timeout(0.2, 10) == pytest.approx(6.4)
    assert default_query_timeout(0.5, 100) == pytest.approx(0.5 * 16 * 3)


def test_start_query_encodes_serfs_message_and_checks_its_size() -> None:
    serf = Serf("a", SerfConfig(node_name="a", gossip_interval=0.2))
    serf.join_self()
    collector = serf.state.start_query(
        "deploy", b"p", filter_nodes=["a"], request_ack=True, relay_factor=2, num_members=3
    )
    assert collector.deadline == pytest.approx(serf.clock.now + 3.2)
    (raw,) = serf.state.get_broadcasts(2, 1400)
    sent = decode_serf_message(raw)
    assert isinstance(sent, Query)
    assert (sent.addr, sent.port, sent.source_node) == (bytes([127, 0, 0, 1]), 7946, "a")
    assert (sent.flags, sent.relay_factor, sent.timeout_ns) == (1, 2, 3_200_000_000)
    assert sent.filters == encode_filters(["a"])
    # Our own query is delivered and acked locally, without a packet.
    assert serf.state.take_sends() == []
    assert collector.take() == [QueryAck("a")]
    with pytest.raises(QueryError, match="query exceeds limit of 1024 bytes"):
        serf.state.start_query("big", b"x" * 1100)


def test_the_collector_suppresses_duplicates_and_ignores_late_answers() -> None:
    collector = QueryCollector(5, 10, 100.0, want_ack=True, capacity=4, max_responders=10)
    assert collector.deliver(QueryResponse(10, 5, "b", QUERY_FLAG_ACK), 1.0) is None
    assert collector.deliver(QueryResponse(10, 5, "b", QUERY_FLAG_ACK), 1.0) is None
    collector.deliver(QueryResponse(10, 5, "b", 0, b"r1"), 2.0)
    collector.deliver(QueryResponse(10, 5, "b", 0, b"r2"), 2.0)
    collector.deliver(QueryResponse(10, 5, "c", 0, b"late"), 101.0)
    assert collector.take() == [QueryAck("b"), QueryReply("b", b"r1")]
    assert collector.duplicates == 2
    # Bounded: past the capacity, answers are dropped with serf's warning.
    for name in "cdef":
        collector.deliver(QueryResponse(10, 5, name, 0, b""), 3.0)
    assert collector.deliver(QueryResponse(10, 5, "g", 0, b""), 3.0) == (
        "Failed to deliver query response, dropping"
    )


def test_a_response_for_another_query_is_warned_about() -> None:
    serf = Serf("a")
    serf.join_self()
    collector = serf.state.start_query("q", num_members=1)
    serf.state.notify_message(encode_serf_message(QueryResponse(collector.ltime, 1, "x")))
    serf.state.notify_message(encode_serf_message(QueryResponse(999, 1, "x")))
    assert serf.log.has(f"query reply ID mismatch (Local: {collector.id}, Response: 1)")
    assert serf.log.has("reply for non-running query (LTime: 999, ID: 1) From: x")


# --------------------------------------------------------------------------------------------
# Relays.


def test_a_response_is_relayed_through_other_members() -> None:
    serf = Serf("b")
    serf.join_self("127.0.0.2")
    for index, name in enumerate("cdefg", start=3):
        serf.state.notify_join(node_info(name, f"127.0.0.{index}"))
    serf.state.notify_message(encode_serf_message(query(relay_factor=2)))
    sends = serf.state.take_sends()
    direct, *relays = sends
    assert str(direct.address) == "127.0.0.9:7946"
    assert len(relays) == 2
    assert len({str(send.address) for send in relays}) == 2
    for send in relays:
        relay = decode_serf_message(send.payload)
        assert isinstance(relay, Relay)
        assert (relay.dest_ip, relay.dest_port, relay.dest_name) == (QUERIER, 7946, "querier")
        assert relay.message == direct.payload
    # A relay factor past our cap (5) is cut to it.
    serf.state.notify_message(encode_serf_message(query(ltime=4, relay_factor=255)))
    assert len(serf.state.take_sends()) == 1 + 5
    # Serf relays only when the cluster has more members than the factor.
    serf.state.notify_message(encode_serf_message(query(ltime=5, relay_factor=7)))
    assert len(serf.state.take_sends()) == 1 + 5


def test_a_relay_is_forwarded_and_only_for_responses() -> None:
    serf = Serf("c")
    serf.join_self("127.0.0.3")
    inner = encode_serf_message(QueryResponse(3, 77, "b", 0, b"answer"))
    serf.state.notify_message(encode_serf_message(Relay(QUERIER, 7946, "querier", inner)))
    (send,) = serf.state.take_sends()
    assert (str(send.address), send.payload) == ("127.0.0.9:7946", inner)
    # serf 0.8 sends no DestName: still forwarded.
    from agentrpc.gossip.messages import pack_wire

    header = pack_wire({"DestAddr": {"IP": QUERIER, "Port": 7946, "Zone": b""}})
    serf.state.notify_message(bytes([SerfMessageType.RELAY]) + header + inner)
    assert len(serf.state.take_sends()) == 1
    # Anything but a response is not relayed.
    intent = encode_serf_message(query())
    serf.state.notify_message(encode_serf_message(Relay(QUERIER, 7946, "x", intent)))
    assert serf.state.take_sends() == []
    assert serf.log.has("Not relaying a non-response")


async def test_relayed_and_direct_copies_count_once() -> None:
    cluster = Cluster("abcd")
    await cluster.join_all()
    for serf in cluster.serfs.values():
        serf.take_events()
    collector = cluster.serfs["a"].start_query("q", request_ack=True, relay_factor=2)
    cluster.network.settle()
    for name in "bcd":
        for event in cluster.serfs[name].take_events():
            if isinstance(event, QueryReceived):
                cluster.serfs[name].respond(event.handle, name.encode())
    cluster.network.settle()
    items = collector.take()
    assert sorted(item.from_node for item in items if isinstance(item, QueryAck)) == list("abcd")
    replies = sorted((i.from_node, i.payload) for i in items if isinstance(i, QueryReply))
    assert replies == [("b", b"b"), ("c", b"c"), ("d", b"d")]
    assert collector.duplicates > 0  # the relays arrived too, and were suppressed
    # The direct copies lost: the relays still bring every answer.
    collector2 = cluster.serfs["a"].start_query("q2", request_ack=True, relay_factor=2)

    def direct_copy(sender: str, to: str, payload: bytes) -> bool:
        message = decode_serf_message(payload)
        return isinstance(message, QueryResponse) and message.from_node == sender != "a"

    cluster.network.drop_udp = direct_copy
    cluster.network.settle()
    assert sorted(i.from_node for i in collector2.take()) == list("abcd")


# --------------------------------------------------------------------------------------------
# Tag filter regexps: Go's semantics, in linear time.

_ATOMS = st.sampled_from(["a", "b", ".", "[ab]", "[^a]", r"\d", "(a|b)", "(?:ab)", "x"])
_PATTERNS = st.recursive(
    _ATOMS,
    lambda inner: st.one_of(
        st.tuples(inner, inner).map("".join),
        st.tuples(inner, st.sampled_from(["*", "+", "?", "{1,2}", "{2}"])).map(
            lambda t: f"(?:{t[0]}){t[1]}"
        ),
        st.tuples(inner, inner).map(lambda t: f"{t[0]}|{t[1]}"),
        inner.map(lambda p: f"^{p}"),
        inner.map(lambda p: f"{p}$"),
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(_PATTERNS, st.text(alphabet="ab1x", max_size=8))
def test_tag_regexps_match_like_pythons_on_the_common_subset(pattern: str, text: str) -> None:
    assert match_string(pattern, text) == bool(re.search(pattern, text))


def test_tag_regexps_never_backtrack() -> None:
    # Exponential for a backtracking engine; a few thousand steps here.
    assert match_string("(a*)*b", "a" * 2000) is False
    assert match_string("(a|a)*c", "a" * 2000) is False
    with pytest.raises(RegexpError):
        match_string("a{1001}", "")
    with pytest.raises(RegexpError):
        match_string("(?i)a", "A")
    with pytest.raises(RegexpError):
        match_string("a**", "a")


# --------------------------------------------------------------------------------------------
# The pool.


async def test_pool_query_gathers_acks_and_responses_until_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with pool_cluster("abcd") as cluster:
        pools = cluster.pools

        async def answer(name: str) -> None:
            async with pools[name].subscribe() as events:
                async for event in events:
                    if isinstance(event, QueryReceived) and event.name == "who":
                        await pools[name].respond(event.handle, f"I am {name}".encode())

        async with trio.open_nursery() as nursery:
            for name in "bcd":
                nursery.start_soon(answer, name)
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            items = []
            async with pools["a"].query(
                "who", b"?", request_ack=True, filter_tags={"id": "^[bc]$"}
            ) as stream:
                async for item in stream:
                    items.append(item)
            # serf's default: 0.2 s * 16 * ceil(log10(4 + 1)) = 3.2 s.
            assert trio.current_time() - start == pytest.approx(3.2)
            nursery.cancel_scope.cancel()
        assert sorted(i.from_node for i in items if isinstance(i, QueryAck)) == ["b", "c"]
        assert sorted((i.from_node, i.payload) for i in items if isinstance(i, QueryReply)) == [
            ("b", b"I am b"),
            ("c", b"I am c"),
        ]
        assert "Received query: query: who" in cluster.log("b")
        assert "Received query" not in cluster.log("d")  # filtered out


async def test_pool_query_timeout_and_errors(autojump_clock: trio.testing.MockClock) -> None:
    async with pool_cluster("ab") as cluster:
        start = trio.current_time()
        async with cluster.pools["a"].query("q", timeout=1.5, request_ack=True) as stream:
            acks = [item async for item in stream]
        assert trio.current_time() - start == pytest.approx(1.5)
        assert sorted(item.from_node for item in acks) == ["a", "b"]
        with pytest.raises(QueryError, match="query exceeds limit of 1024 bytes"):
            async with cluster.pools["a"].query("q", b"x" * 2000):
                pass
