"""Property tests of serf's event and query state machines: whatever the delivery order and
however often a message is duplicated (gossip, relays, push/pull replays), each user event and
each query is delivered exactly once, and the relayed copies are queued once."""

from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st

from agentrpc.gossip.contract import NodeInfo, NodeState
from agentrpc.gossip.serf import QueryReceived, SerfConfig, SerfState, UserEventReceived
from agentrpc.gossip.serf_messages import (
    QUERY_FLAG_ACK,
    Query,
    QueryResponse,
    UserEvent,
    encode_serf_message,
    encode_tags,
)
from agentrpc.gossip.serf_queries import QueryCollector

_EVENTS = st.lists(
    st.tuples(
        st.integers(1, 60), st.sampled_from(["deploy", "restart", "x"]), st.binary(max_size=3)
    ),
    min_size=1,
    max_size=25,
)
_QUERIES = st.lists(
    st.tuples(st.integers(1, 60), st.integers(0, 2**31 - 1)), min_size=1, max_size=25
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def new_state(name: str = "me", host: int = 1) -> SerfState:
    state = SerfState(SerfConfig(node_name=name), clock=Clock(), rng=random.Random(host))
    state.notify_join(
        NodeInfo(
            name=name,
            addr=bytes([127, 0, 0, host]),
            port=7946,
            meta=encode_tags({}),
            incarnation=1,
            state=NodeState.ALIVE,
            vsn=(1, 5, 2, 2, 5, 4),
            state_change=0.0,
        )
    )
    return state


def delivered_events(state: SerfState) -> list[tuple[int, str, bytes]]:
    return [
        (e.ltime, e.name, e.payload)
        for e in state.take_events()
        if isinstance(e, UserEventReceived)
    ]


@settings(max_examples=200, deadline=None)
@given(_EVENTS, st.data())
def test_every_event_is_delivered_once_in_any_order(
    events: list[tuple[int, str, bytes]], data: st.DataObject
) -> None:
    messages = [encode_serf_message(UserEvent(t, n, p)) for t, n, p in events]
    copies = data.draw(st.lists(st.integers(1, 4), min_size=len(messages), max_size=len(messages)))
    stream = [m for m, k in zip(messages, copies, strict=True) for _ in range(k)]
    order = data.draw(st.permutations(stream))
    state = new_state()
    for message in order:
        state.notify_message(message)
    delivered = delivered_events(state)
    assert sorted(delivered) == sorted(set(events))
    # Each distinct event is queued for relaying exactly once.
    assert len(state.event_broadcasts) == len(set(events))


@settings(max_examples=100, deadline=None)
@given(_EVENTS, st.data())
def test_push_pull_replays_never_deliver_twice(
    events: list[tuple[int, str, bytes]], data: st.DataObject
) -> None:
    source = new_state("src", 2)
    for ltime, name, payload in events:
        source.notify_message(encode_serf_message(UserEvent(ltime, name, payload)))
    source.take_events()
    # The receiver hears some of them by gossip, in any order, then push/pulls (repeatedly).
    heard = data.draw(st.lists(st.sampled_from(events), max_size=len(events)))
    receiver = new_state()
    for ltime, name, payload in heard:
        receiver.notify_message(encode_serf_message(UserEvent(ltime, name, payload)))
    state = source.local_state(join=False)
    for _ in range(data.draw(st.integers(1, 3))):
        receiver.merge_remote_state(state, join=False)
    assert sorted(delivered_events(receiver)) == sorted(set(events))


@settings(max_examples=200, deadline=None)
@given(_QUERIES, st.data())
def test_every_query_is_delivered_and_acked_once_in_any_order(
    queries: list[tuple[int, int]], data: st.DataObject
) -> None:
    def message(ltime: int, query_id: int) -> bytes:
        return encode_serf_message(
            Query(
                ltime=ltime,
                id=query_id,
                addr=bytes([127, 0, 0, 9]),
                port=7946,
                source_node="asker",
                flags=QUERY_FLAG_ACK,
                timeout_ns=10**9,
                name="q",
            )
        )

    stream = [message(t, i) for t, i in queries for _ in range(data.draw(st.integers(1, 3)))]
    state = new_state()
    for raw in data.draw(st.permutations(stream)):
        state.notify_message(raw)
    distinct = set(queries)
    got = [(e.ltime, e.id) for e in state.take_events() if isinstance(e, QueryReceived)]
    assert sorted(got) == sorted(distinct)
    assert len(state.take_sends()) == len(distinct)  # one ack each
    assert len(state.query_broadcasts) == len(distinct)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abcdef"), st.booleans(), st.binary(max_size=2)), max_size=40
    ),
    st.randoms(use_true_random=False),
)
def test_the_collector_yields_one_ack_and_one_response_per_node(
    answers: list[tuple[str, bool, bytes]], rng: random.Random
) -> None:
    collector = QueryCollector(7, 3, 50.0, want_ack=True, capacity=16, max_responders=16)
    items = []
    for node, ack, payload in answers:
        response = QueryResponse(3, 7, node, QUERY_FLAG_ACK if ack else 0, payload)
        collector.deliver(response, 10.0)
        if rng.random() < 0.3:
            items.extend(collector.take())
    items.extend(collector.take())
    acks = [i.from_node for i in items if type(i).__name__ == "QueryAck"]
    replies = [i.from_node for i in items if type(i).__name__ == "QueryReply"]
    assert sorted(acks) == sorted({n for n, ack, _ in answers if ack})
    assert sorted(replies) == sorted({n for n, ack, _ in answers if not ack})
    # The first response from each node is the one kept.
    first = {}
    for node, ack, payload in answers:
        if not ack:
            first.setdefault(node, payload)
    assert {i.from_node: i.payload for i in items if hasattr(i, "payload")} == first
