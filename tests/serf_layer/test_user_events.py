"""Serf's user events: the event clock, the recent-event buffer and its dedupe, relaying on
the event queue, the size limits, push/pull replay, and the pool's API and subscription."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from pool_cluster import pool_cluster
from serf_helpers import Serf
from test_serf_cluster import Cluster

from agentrpc.gossip.serf import SerfConfig, UserEventError, UserEventReceived
from agentrpc.gossip.serf_events import (
    MAX_EVENTS_PER_TIME,
    EventVerdict,
    RecentEvents,
    encode_user_event,
)
from agentrpc.gossip.serf_messages import (
    SerfPushPull,
    UserEvent,
    decode_serf_message,
    encode_serf_message,
)


def event_message(ltime: int, name: str, payload: bytes = b"") -> bytes:
    return encode_serf_message(UserEvent(ltime, name, payload))


def user_events(serf: Serf) -> list[UserEventReceived]:
    return [e for e in serf.state.take_events() if isinstance(e, UserEventReceived)]


def test_an_event_is_delivered_once_and_rebroadcast_once() -> None:
    serf = Serf()
    serf.join_self()
    message = event_message(5, "deploy", b"v1")
    serf.state.notify_message(message)
    serf.state.notify_message(message)
    assert user_events(serf) == [UserEventReceived(5, "deploy", b"v1", False)]
    # Relayed on the event queue (not the intent queue), once.
    assert len(serf.state.event_broadcasts) == 1
    assert len(serf.state.broadcasts) == 0
    assert serf.state.get_broadcasts(2, 1400) == [message]
    # The clock moved past the event.
    assert serf.state.event_clock.time() == 6


def test_dedupe_is_by_ltime_name_and_payload() -> None:
    serf = Serf()
    serf.join_self()
    for ltime, name, payload in [(3, "a", b""), (3, "a", b"x"), (3, "b", b""), (4, "a", b"")]:
        serf.state.notify_message(event_message(ltime, name, payload))
    serf.state.notify_message(event_message(3, "a", b"x"))
    assert [(e.ltime, e.name, e.payload) for e in user_events(serf)] == [
        (3, "a", b""),
        (3, "a", b"x"),
        (3, "b", b""),
        (4, "a", b""),
    ]


def test_an_event_older_than_the_buffer_is_dropped_with_serfs_line() -> None:
    serf = Serf()
    serf.join_self()
    serf.state.notify_message(event_message(2000, "new"))
    serf.state.notify_message(event_message(2001 - 512, "edge"))  # within the buffer
    serf.state.notify_message(event_message(2001 - 513, "old"))
    assert [e.name for e in user_events(serf)] == ["new", "edge"]
    assert serf.log.has("WARN received old event old from time 1488 (current: 2001)")
    assert len(serf.state.event_broadcasts) == 2


def test_our_own_event_is_delivered_here_and_queued() -> None:
    serf = Serf()
    serf.join_self()
    serf.state.user_event("deploy", b"v2", coalesce=True)
    assert user_events(serf) == [UserEventReceived(1, "deploy", b"v2", True)]
    (raw,) = serf.state.get_broadcasts(2, 1400)
    assert decode_serf_message(raw) == UserEvent(1, "deploy", b"v2", True)
    assert serf.state.event_clock.time() == 2


@pytest.mark.parametrize(
    ("name", "payload", "text"),
    [
        ("n", b"x" * 512, "user event exceeds configured limit of 512 bytes before encoding"),
        (
            "n",
            b"x" * 500,
            "encoded user event exceeds configured limit of 512 bytes after encoding",
        ),
    ],
)
def test_user_event_size_limits_have_serfs_texts(name: str, payload: bytes, text: str) -> None:
    serf = Serf()
    serf.join_self()
    with pytest.raises(UserEventError) as caught:
        serf.state.user_event(name, payload)
    assert str(caught.value) == text
    assert serf.state.event_clock.time() == 1  # nothing was sent
    with pytest.raises(UserEventError, match="sane limit of 9216 bytes before encoding"):
        encode_user_event(1, "n", b"x" * 9300, False, limit=10_000)
    with pytest.raises(ValueError, match="user event size limit exceeds limit of 9216 bytes"):
        SerfConfig(node_name="a", user_event_size_limit=9217)


def test_the_buffer_travels_in_push_pull_and_replays_missed_events() -> None:
    sender, receiver = Serf("a"), Serf("b")
    sender.join_self()
    receiver.join_self("127.0.0.2")
    sender.state.user_event("one", b"1")
    sender.state.user_event("two", b"2")
    state = sender.state.local_state(join=False)
    decoded = decode_serf_message(state)
    assert isinstance(decoded, SerfPushPull)
    assert len(decoded.events) == 512  # the whole ring, empty slots as nil
    assert sum(1 for slot in decoded.events if slot is not None) == 2
    receiver.state.merge_remote_state(state, join=False)
    assert [e.name for e in user_events(receiver)] == ["one", "two"]
    receiver.state.merge_remote_state(state, join=False)
    assert user_events(receiver) == []  # a second exchange delivers nothing again
    assert len(receiver.state.event_broadcasts) == 0  # push/pull events are not rebroadcast


def test_a_join_that_ignores_old_events_skips_the_replay() -> None:
    sender, receiver = Serf("a"), Serf("b")
    sender.join_self()
    receiver.join_self("127.0.0.2")
    sender.state.user_event("old", b"")
    receiver.state.event_join_ignore = True
    receiver.state.merge_remote_state(sender.state.local_state(join=True), join=True)
    assert user_events(receiver) == []
    assert receiver.state.recent_events.min_time == 2
    # A later event is delivered as usual.
    receiver.state.event_join_ignore = False
    receiver.state.notify_message(event_message(2, "new"))
    assert [e.name for e in user_events(receiver)] == ["new"]


def test_the_buffer_is_bounded_per_ltime_and_in_bytes() -> None:
    buffer = RecentEvents(8, max_bytes=4096)
    for index in range(MAX_EVENTS_PER_TIME + 10):
        assert buffer.record(1, f"e{index}", b"", 2) is EventVerdict.NEW
    assert len(buffer) == MAX_EVENTS_PER_TIME
    assert buffer.dropped == 10
    for ltime in range(2, 9):
        buffer.record(ltime, "big", b"x" * 1000, ltime + 1)
    assert buffer.bytes_held <= 4096
    # The newest events are the ones kept.
    assert buffer.record(8, "big", b"x" * 1000, 9) is EventVerdict.DUPLICATE


async def test_an_event_crosses_a_cluster_through_relays() -> None:
    """Five nodes where each hears gossip only from its neighbour: the event reaches every
    node, each delivers it once, and the cluster settles."""
    cluster = Cluster("abcde")
    await cluster.join_all()
    for serf in cluster.serfs.values():
        serf.take_events()
    # A line: a-b-c-d-e, each knowing only its neighbours as alive.
    names = "abcde"
    for index, name in enumerate(names):
        node = cluster.nodes[name]
        for other in names:
            if other != name and abs(names.index(other) - index) > 1:
                node.known.pop(other)
    cluster.serfs["a"].user_event("deploy", b"v3")
    cluster.network.settle()
    for name in names:
        delivered = [
            e for e in cluster.serfs[name].take_events() if isinstance(e, UserEventReceived)
        ]
        assert [(e.name, e.payload) for e in delivered] == [("deploy", b"v3")], name


async def test_pool_user_event_reaches_every_subscriber(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with pool_cluster("abc") as cluster:
        async with (
            cluster.pools["b"].subscribe() as at_b,
            cluster.pools["c"].subscribe() as at_c,
        ):
            for index in range(10):
                await cluster.pools["a"].user_event(f"ev{index}", str(index).encode())
            await cluster.settle()
            for subscription in (at_b, at_c):
                got = [e for e in subscription.pending() if isinstance(e, UserEventReceived)]
                # Each once; gossip does not keep the order (serf's queue sends newest first).
                assert sorted(e.name for e in got) == sorted(f"ev{index}" for index in range(10))
        assert "[INFO] serf: Received event: user-event: ev" in cluster.log("b")
        stats = cluster.pools["a"].stats()
        assert int(stats["event_time"]) >= 11


async def test_pool_user_event_refuses_oversized_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with pool_cluster("a") as cluster:
        with pytest.raises(UserEventError, match="configured limit of 512 bytes"):
            await cluster.pools["a"].user_event("x", b"y" * 600)


async def test_a_slow_subscriber_is_bounded_in_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        pool_cluster("ab") as cluster,
        cluster.pools["b"].subscribe(max_bytes=2000) as slow,
    ):
        for index in range(20):
            await cluster.pools["a"].user_event(f"e{index}", b"p" * 200)
        await cluster.settle()
        kept = slow.pending()
        assert 0 < len(kept) < 20
        assert slow.dropped == 20 - len(kept)


async def test_stopping_the_pool_ends_its_subscriptions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with pool_cluster("ab") as cluster:
        pool = cluster.pools["b"]
        seen: list[str] = []

        async def listen() -> None:
            async with pool.subscribe() as events:
                async for event in events:
                    seen.append(str(event))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen)
            await trio.testing.wait_all_tasks_blocked()
            await cluster.pools["a"].user_event("before", b"")
            await cluster.settle()
            cluster.stop("b")  # cancels b's run: its subscribers' iterations end
        assert seen == ["user-event: before"]
        assert pool._subscribers == []
