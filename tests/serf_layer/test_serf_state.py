"""SerfState on its own: statuses, Lamport rules, intents, push/pull, tags, reap, reconnect."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from serf_helpers import Serf, node_info

from agentrpc.gossip.contract import NodeState
from agentrpc.gossip.messages import GossipDecodeError
from agentrpc.gossip.serf import (
    DAY,
    MemberEventType,
    MemberStatus,
    ReconnectTarget,
    SerfConfig,
    SerfError,
    SerfLifecycle,
    SerfState,
    TagsTooLargeError,
)
from agentrpc.gossip.serf_messages import (
    JoinIntent,
    LeaveIntent,
    Query,
    QueryResponse,
    Relay,
    SerfPushPull,
    UserEvent,
    UserEventEntry,
    UserEvents,
    decode_serf_message,
    decode_tags,
    encode_serf_message,
    encode_tags,
)
from agentrpc.gossip.stream import PushPull, StreamReader

CAPTURES = Path(__file__).parent.parent / "gossip" / "data"


def status(serf: Serf, name: str) -> MemberStatus:
    member = serf.state.member(name)
    assert member is not None, f"{name} is not a member"
    return member.status


def queued(state: SerfState) -> list[object]:
    """Drain the queue (every retransmit); each distinct broadcast decoded, in order."""
    payloads: dict[bytes, None] = {}
    while True:
        batch = state.get_broadcasts(2, 1400)
        if not batch:
            return [decode_serf_message(payload) for payload in payloads]
        payloads.update(dict.fromkeys(batch))


def leave(ltime: int, node: str, prune: bool = False) -> bytes:
    return encode_serf_message(LeaveIntent(ltime, node, prune))


def join(ltime: int, node: str) -> bytes:
    return encode_serf_message(JoinIntent(ltime, node))


# --------------------------------------------------------------------------------------------
# Statuses.


def test_a_new_state_starts_its_clocks_at_one() -> None:
    serf = Serf()
    state = serf.state
    assert (state.clock.time(), state.event_clock.time(), state.query_clock.time()) == (1, 1, 1)
    assert state.members() == []
    assert state.lifecycle is SerfLifecycle.ALIVE
    assert state.local_member() is None


def test_notify_join_makes_an_alive_member() -> None:
    serf = Serf()
    serf.state.notify_join(node_info("node2", tags={"role": "web", "dc": "dc1"}))
    member = serf.state.member("node2")
    assert member is not None
    assert member.status is MemberStatus.ALIVE
    assert member.addr == bytes([127, 0, 0, 2]) and member.port == 7946
    assert dict(member.tags) == {"role": "web", "dc": "dc1"}
    assert member.vsn == (1, 5, 2, 2, 5, 4)
    assert member.status_ltime == 0 and member.leave_time is None
    assert "INFO EventMemberJoin: node2 127.0.0.2" in serf.log.lines
    assert [event.type for event in serf.events] == [MemberEventType.JOIN]


def test_silent_death_is_failed() -> None:
    serf = Serf()
    serf.state.notify_join(node_info("node2"))
    serf.clock.advance(5)
    serf.state.notify_leave(node_info("node2", state=NodeState.DEAD))
    member = serf.state.member("node2")
    assert member is not None
    assert member.status is MemberStatus.FAILED
    assert member.leave_time == serf.clock.now
    assert serf.state.failed_members() == ["node2"]
    assert serf.state.left_members() == []
    assert "INFO EventMemberFailed: node2 127.0.0.2" in serf.log.lines
    assert serf.events[-1].type is MemberEventType.FAILED


def test_graceful_leave_needs_the_intent_then_memberlist_leave() -> None:
    serf = Serf()
    serf.state.notify_join(node_info("node2"))
    assert serf.state.handle_leave_intent(LeaveIntent(5, "node2")) is True
    assert status(serf, "node2") is MemberStatus.LEAVING
    serf.state.notify_leave(node_info("node2", state=NodeState.LEFT))
    assert status(serf, "node2") is MemberStatus.LEFT
    assert serf.state.left_members() == ["node2"]
    assert "INFO EventMemberLeave: node2 127.0.0.2" in serf.log.lines
    assert serf.events[-1].type is MemberEventType.LEAVE


def test_rejoining_after_failure_clears_the_failed_list() -> None:
    serf = Serf()
    serf.state.notify_join(node_info("node2"))
    serf.state.notify_leave(node_info("node2", state=NodeState.DEAD))
    serf.state.notify_join(node_info("node2", "10.0.0.7", 8000, tags={"role": "db"}))
    member = serf.state.member("node2")
    assert member is not None
    assert member.status is MemberStatus.ALIVE and member.leave_time is None
    assert (member.addr, member.port, dict(member.tags)) == (
        bytes([10, 0, 0, 7]),
        8000,
        {"role": "db"},
    )
    assert serf.state.failed_members() == []


def test_leave_of_an_unknown_or_already_gone_node() -> None:
    serf = Serf()
    serf.state.notify_leave(node_info("ghost", state=NodeState.DEAD))
    assert serf.state.members() == []
    serf.state.notify_join(node_info("node2"))
    serf.state.notify_leave(node_info("node2", state=NodeState.DEAD))
    serf.state.notify_leave(node_info("node2", state=NodeState.DEAD))
    assert status(serf, "node2") is MemberStatus.FAILED
    assert serf.log.has("WARN Bad state when leave: node2")


def test_notify_update_takes_new_tags_address_and_versions() -> None:
    serf = Serf()
    serf.state.notify_join(node_info("node2"))
    serf.state.notify_update(
        node_info("node2", "127.0.0.9", 9000, tags={"role": "new"}, vsn=(1, 5, 3, 2, 5, 5))
    )
    member = serf.state.member("node2")
    assert member is not None
    assert dict(member.tags) == {"role": "new"}
    assert (member.ip, member.port, member.vsn) == ("127.0.0.9", 9000, (1, 5, 3, 2, 5, 5))
    assert "INFO EventMemberUpdate: node2" in serf.log.lines
    serf.state.notify_update(node_info("stranger"))  # unknown: ignored
    assert serf.state.member("stranger") is None


def test_version_grows_with_every_visible_change() -> None:
    serf = Serf()
    state = serf.state
    seen = [state.version]

    def changed() -> None:
        assert state.version > seen[-1]
        seen.append(state.version)

    state.notify_join(node_info("node2"))
    changed()
    state.notify_update(node_info("node2", tags={"role": "x"}))
    changed()
    state.notify_leave(node_info("node2", state=NodeState.DEAD))
    changed()
    state.force_leave("node2")
    changed()
    serf.clock.advance(DAY + 1)
    state.reap()
    changed()
    # A join intent about a member that stays alive changes nothing visible.
    state.notify_join(node_info("node3"))
    changed()
    before = state.version
    state.handle_join_intent(JoinIntent(50, "node3"))
    assert state.version == before


# --------------------------------------------------------------------------------------------
# Lamport ordering and intents.


def test_intents_witness_the_member_clock() -> None:
    serf = Serf()
    serf.state.handle_join_intent(JoinIntent(41, "somebody"))
    assert serf.state.clock.time() == 42
    serf.state.handle_leave_intent(LeaveIntent(7, "somebody-else"))
    assert serf.state.clock.time() == 42


def test_old_intents_are_ignored() -> None:
    serf = Serf()
    state = serf.state
    state.notify_join(node_info("node2"))
    assert state.handle_join_intent(JoinIntent(10, "node2")) is True
    assert state.handle_join_intent(JoinIntent(10, "node2")) is False  # not newer
    assert state.handle_leave_intent(LeaveIntent(9, "node2")) is False
    assert state.handle_leave_intent(LeaveIntent(10, "node2")) is False
    assert status(serf, "node2") is MemberStatus.ALIVE
    assert state.handle_leave_intent(LeaveIntent(11, "node2")) is True
    assert status(serf, "node2") is MemberStatus.LEAVING
    # A join older than the leave does not bring it back; a newer one does.
    assert state.handle_join_intent(JoinIntent(11, "node2")) is False
    assert status(serf, "node2") is MemberStatus.LEAVING
    assert state.handle_join_intent(JoinIntent(12, "node2")) is True
    assert status(serf, "node2") is MemberStatus.ALIVE
    member = state.member("node2")
    assert member is not None and member.status_ltime == 12


def test_a_repeated_leave_for_a_leaving_member_is_not_news() -> None:
    # hashicorp/consul#8179: the status time moves even when the status stays.
    serf = Serf()
    serf.state.notify_join(node_info("node2"))
    assert serf.state.handle_leave_intent(LeaveIntent(5, "node2")) is True
    assert serf.state.handle_leave_intent(LeaveIntent(6, "node2")) is True
    assert serf.state.handle_leave_intent(LeaveIntent(6, "node2")) is False
    assert status(serf, "node2") is MemberStatus.LEAVING


def test_intents_about_unknown_nodes_are_buffered_then_applied() -> None:
    serf = Serf()
    state = serf.state
    assert state.handle_leave_intent(LeaveIntent(8, "node3")) is True  # news: rebroadcast
    assert state.handle_leave_intent(LeaveIntent(8, "node3")) is False
    assert state.handle_join_intent(JoinIntent(6, "node3")) is False  # older than the leave
    assert state.buffered_intent("node3") == ("leave", 8)
    assert state.member("node3") is None
    state.notify_join(node_info("node3"))
    member = state.member("node3")
    assert member is not None
    assert member.status is MemberStatus.LEAVING and member.status_ltime == 8
    # memberlist's dead{node3, from node3} then makes it left.
    state.notify_leave(node_info("node3", state=NodeState.LEFT))
    assert status(serf, "node3") is MemberStatus.LEFT


def test_a_newer_buffered_join_replaces_a_buffered_leave() -> None:
    serf = Serf()
    state = serf.state
    state.handle_leave_intent(LeaveIntent(3, "node4"))
    assert state.handle_join_intent(JoinIntent(9, "node4")) is True
    assert state.buffered_intent("node4") == ("join", 9)
    state.notify_join(node_info("node4"))
    member = state.member("node4")
    assert member is not None
    assert member.status is MemberStatus.ALIVE and member.status_ltime == 9


def test_buffered_intents_expire() -> None:
    serf = Serf()
    serf.state.handle_join_intent(JoinIntent(3, "node5"))
    serf.clock.advance(299)
    serf.state.reap()
    assert serf.state.buffered_intent("node5") == ("join", 3)
    serf.clock.advance(2)
    serf.state.reap()
    assert serf.state.buffered_intent("node5") is None


def test_messages_are_decoded_applied_and_rebroadcast_only_when_news() -> None:
    serf = Serf()
    state = serf.state
    state.notify_join(node_info("node2"))
    state.notify_message(leave(4, "node2"))
    assert status(serf, "node2") is MemberStatus.LEAVING
    assert queued(state) == [LeaveIntent(4, "node2")]
    state.notify_message(leave(4, "node2"))  # a copy: not rebroadcast again
    state.notify_message(join(2, "node2"))  # old
    assert queued(state) == []
    state.notify_message(join(5, "node2"))
    assert status(serf, "node2") is MemberStatus.ALIVE
    assert queued(state) == [JoinIntent(5, "node2")]
    assert "DEBUG messageLeaveType: node2" in serf.log.lines
    assert "DEBUG messageJoinType: node2" in serf.log.lines


def test_refuting_a_false_leave_intent_about_ourselves() -> None:
    serf = Serf()
    state = serf.state
    serf.join_self()
    state.notify_message(leave(20, "node1"))
    me = state.local_member()
    assert me is not None and me.status is MemberStatus.ALIVE
    broadcasts = queued(state)
    assert len(broadcasts) == 1  # the refutation only, never the false leave
    refutation = broadcasts[0]
    assert isinstance(refutation, JoinIntent)
    assert refutation.node == "node1" and refutation.ltime > 20
    me = state.local_member()
    assert me is not None and me.status_ltime == refutation.ltime
    assert state.clock.time() > refutation.ltime
    assert serf.log.has("DEBUG Refuting an older leave intent")


def test_no_refutation_once_we_are_leaving() -> None:
    serf = Serf()
    serf.join_self()
    serf.state.notify_join(node_info("node2"))
    assert serf.state.begin_leave() is True
    assert serf.state.handle_leave_intent(LeaveIntent(serf.state.clock.time() + 5, "node1"))
    assert not any(isinstance(message, JoinIntent) for message in queued(serf.state))


def test_user_events_and_queries_move_their_own_clocks_and_queues() -> None:
    """Each kind of message moves its own clock and rides its own queue (the upper layer
    itself is tested in test_user_events.py and test_queries.py)."""
    serf = Serf()
    state = serf.state
    event = encode_serf_message(UserEvent(50, "deploy", b"v2"))
    query = encode_serf_message(Query(30, 7, b"\x7f\x00\x00\x01", 7946, "node9", name="ping"))
    state.notify_message(event)
    state.notify_message(query)
    state.notify_message(encode_serf_message(QueryResponse(30, 7, "node9")))
    state.notify_message(
        encode_serf_message(Relay(b"\x7f\x00\x00\x01", 7946, "node9", join(3, "x")))
    )
    assert state.event_clock.time() == 51
    assert state.query_clock.time() == 31
    assert state.clock.time() == 1
    assert len(state.broadcasts) == 0
    assert (len(state.event_broadcasts), len(state.query_broadcasts)) == (1, 1)
    assert queued(state) == [decode_serf_message(query), decode_serf_message(event)]
    assert "DEBUG messageUserEventType: deploy" in serf.log.lines
    assert "DEBUG messageQueryType: ping" in serf.log.lines
    assert serf.log.has("reply for non-running query (LTime: 30, ID: 7) From: node9")
    assert serf.log.has("Not relaying a non-response")  # a relayed intent is refused


def test_undecodable_messages_are_logged_and_dropped() -> None:
    serf = Serf()
    serf.state.notify_message(b"")
    serf.state.notify_message(b"\x00\xc1")
    serf.state.notify_message(b"\x06")
    serf.state.notify_message(encode_serf_message(SerfPushPull(ltime=3)))
    assert sum(line.startswith("ERR Error decoding") for line in serf.log.lines) == 2
    assert serf.log.has("WARN Received message of unexpected type: 2")
    assert queued(serf.state) == []


# --------------------------------------------------------------------------------------------
# Force-leave.


def cluster_of_three() -> Serf:
    serf = Serf()
    serf.join_self()
    serf.state.notify_join(node_info("node2", "127.0.0.2"))
    serf.state.notify_join(node_info("node3", "127.0.0.3"))
    return serf


def test_force_leave_turns_failed_into_left() -> None:
    serf = cluster_of_three()
    state = serf.state
    state.notify_leave(node_info("node3", "127.0.0.3", state=NodeState.DEAD))
    clock_before = state.clock.time()
    assert state.force_leave("node3") is True
    assert status(serf, "node3") is MemberStatus.LEFT
    assert state.failed_members() == [] and state.left_members() == ["node3"]
    assert "INFO EventMemberLeave (forced): node3 127.0.0.3" in serf.log.lines
    assert serf.events[-1].type is MemberEventType.LEAVE
    assert queued(state) == [LeaveIntent(clock_before, "node3")]
    assert state.clock.time() == clock_before + 1


def test_force_leave_of_an_alive_member_makes_it_leaving() -> None:
    serf = cluster_of_three()
    serf.state.force_leave("node2")
    assert status(serf, "node2") is MemberStatus.LEAVING


def test_force_leave_of_an_unknown_node_buffers_the_intent() -> None:
    serf = cluster_of_three()
    assert serf.state.force_leave("nobody") is True
    assert serf.state.buffered_intent("nobody") is not None


def test_force_leave_alone_queues_nothing() -> None:
    serf = Serf()
    serf.join_self()
    serf.state.notify_join(node_info("node2"))
    serf.state.notify_leave(node_info("node2", state=NodeState.DEAD))
    calls: list[int] = []
    assert serf.state.force_leave("node2", on_sent=lambda: calls.append(1)) is False
    assert status(serf, "node2") is MemberStatus.LEFT
    assert len(serf.state.broadcasts) == 0 and calls == []


def test_force_leave_calls_back_once_the_intent_is_sent() -> None:
    serf = cluster_of_three()
    serf.state.notify_leave(node_info("node3", "127.0.0.3", state=NodeState.DEAD))
    calls: list[int] = []
    serf.state.force_leave("node3", on_sent=lambda: calls.append(1))
    limit = serf.state.broadcasts.transmit_limit()
    for _ in range(limit - 1):
        assert serf.state.get_broadcasts(2, 1400)
        assert calls == []
    assert serf.state.get_broadcasts(2, 1400)
    assert calls == [1]


def test_force_leave_with_prune_erases_the_member() -> None:
    serf = cluster_of_three()
    state = serf.state
    state.notify_leave(node_info("node3", "127.0.0.3", state=NodeState.DEAD))
    state.force_leave("node3", prune=True)
    assert state.member("node3") is None
    assert state.left_members() == []
    assert "INFO EventMemberReap (forced): node3 127.0.0.3" in serf.log.lines
    assert serf.events[-1].type is MemberEventType.REAP
    # A leaving member is erased after broadcast_timeout + leave_propagate_delay.
    state.force_leave("node2", prune=True)
    assert status(serf, "node2") is MemberStatus.LEAVING
    serf.clock.advance(5.9)
    assert state.reap() == []
    serf.clock.advance(0.2)
    assert state.reap() == ["node2"]
    assert state.member("node2") is None


# --------------------------------------------------------------------------------------------
# Our own leave.


def test_begin_and_finish_leave() -> None:
    serf = cluster_of_three()
    state = serf.state
    sent: list[int] = []
    assert state.begin_leave(on_sent=lambda: sent.append(1)) is True
    assert state.lifecycle is SerfLifecycle.LEAVING
    assert status(serf, "node1") is MemberStatus.LEAVING
    [intent] = queued(state)
    assert isinstance(intent, LeaveIntent) and intent.node == "node1"
    assert sent == [1]
    with pytest.raises(SerfError, match="Leave already in progress"):
        state.begin_leave()
    state.finish_leave()
    assert serf.state.lifecycle.value == "left"
    assert status(serf, "node1") is MemberStatus.LEFT
    assert "INFO EventMemberLeave: node1 127.0.0.1" in serf.log.lines
    with pytest.raises(SerfError):
        state.begin_leave()


def test_finish_leave_after_memberlist_reported_it() -> None:
    serf = cluster_of_three()
    serf.state.begin_leave()
    serf.state.notify_leave(node_info("node1", "127.0.0.1", state=NodeState.LEFT))
    leaves = [line for line in serf.log.lines if "EventMemberLeave: node1" in line]
    serf.state.finish_leave()
    assert status(serf, "node1") is MemberStatus.LEFT
    assert [line for line in serf.log.lines if "EventMemberLeave: node1" in line] == leaves


def test_begin_leave_alone_queues_nothing() -> None:
    serf = Serf()
    serf.join_self()
    assert serf.state.begin_leave() is False
    assert len(serf.state.broadcasts) == 0
    assert status(serf, "node1") is MemberStatus.LEAVING


# --------------------------------------------------------------------------------------------
# Push/pull state.


def test_local_state_carries_clocks_status_times_and_left_members() -> None:
    serf = cluster_of_three()
    state = serf.state
    state.handle_join_intent(JoinIntent(4, "node2"))
    state.notify_leave(node_info("node3", "127.0.0.3", state=NodeState.DEAD))
    state.force_leave("node3")
    state.event_clock.witness(9)
    raw = state.local_state(False)
    assert raw[0] == 2
    decoded = decode_serf_message(raw)
    assert isinstance(decoded, SerfPushPull)
    assert decoded.ltime == state.clock.time()
    assert dict(decoded.status_ltimes) == {"node1": 0, "node2": 4, "node3": 5}
    assert decoded.left_members == ("node3",)
    assert decoded.event_ltime == 10 and decoded.query_ltime == 1
    assert decoded.events == (None,) * 512  # serf's event ring: empty slots travel as nil
    assert encode_serf_message(decoded) == raw  # byte-level round trip


def test_merge_remote_state_witnesses_and_applies_intents() -> None:
    serf = cluster_of_three()
    state = serf.state
    state.notify_leave(node_info("node3", "127.0.0.3", state=NodeState.DEAD))
    remote = SerfPushPull(
        ltime=30,
        status_ltimes={"node2": 12, "node3": 15, "node7": 20},
        left_members=("node3",),
        event_ltime=40,
        events=(None, UserEvents(44, (UserEventEntry("deploy", b"x"),)), UserEvents(60, ())),
        query_ltime=8,
    )
    state.merge_remote_state(encode_serf_message(remote), True)
    # Left members first, at one past their status time: failed node3 becomes left.
    assert status(serf, "node3") is MemberStatus.LEFT
    member = state.member("node3")
    assert member is not None and member.status_ltime == 16
    assert status(serf, "node2") is MemberStatus.ALIVE
    member = state.member("node2")
    assert member is not None and member.status_ltime == 12
    assert state.buffered_intent("node7") == ("join", 20)
    # Clocks: remote times minus one are witnessed, then the intents themselves.
    assert state.clock.time() == 30  # witnessed 29 from the remote LTime of 30
    assert state.event_clock.time() == 45  # the empty event set at 60 has nothing to witness
    assert state.query_clock.time() == 8
    # Merging state is not gossip: nothing is rebroadcast.
    assert queued(state) == []


def test_push_pull_between_two_states_both_ways() -> None:
    a, b = Serf("a"), Serf("b")
    for serf, other in ((a, "b"), (b, "a")):
        serf.join_self("127.0.0.1" if serf is a else "127.0.0.2")
        serf.state.notify_join(node_info(other, "127.0.0.2" if serf is a else "127.0.0.1"))
    for serf in (a, b):
        serf.state.notify_join(node_info("c", "127.0.0.3"))
        serf.state.notify_leave(node_info("c", "127.0.0.3", state=NodeState.DEAD))
    a.state.force_leave("c")
    a.state.broadcasts.reset()  # the intent never made it to b by gossip
    a.state.handle_join_intent(JoinIntent(a.state.clock.time(), "a"))
    assert status(b, "c") is MemberStatus.FAILED
    a_state, b_state = a.state.local_state(True), b.state.local_state(True)
    a.state.merge_remote_state(b_state, True)
    b.state.merge_remote_state(a_state, True)
    assert status(b, "c") is MemberStatus.LEFT
    assert "INFO EventMemberLeave (forced): c 127.0.0.3" in b.log.lines
    member_a, member_b = a.state.member("a"), b.state.member("a")
    assert member_a is not None and member_b is not None
    assert member_b.status_ltime == member_a.status_ltime
    assert b.state.clock.time() >= a.state.clock.time() - 1


def test_merge_a_real_serf_agents_state() -> None:
    reader = StreamReader()
    reader.feed((CAPTURES / "pushpull_reply_events.bin").read_bytes())
    message = reader.next_message()
    assert isinstance(message, PushPull)
    remote = decode_serf_message(message.user_state)
    assert isinstance(remote, SerfPushPull)
    serf = Serf("py-node")
    serf.state.merge_remote_state(message.user_state, True)
    assert serf.state.event_clock.time() == remote.event_ltime
    assert serf.state.clock.time() >= remote.ltime
    assert serf.state.buffered_intent("serf-a") is not None


def test_bad_remote_state_is_logged_and_ignored() -> None:
    serf = Serf()
    serf.state.merge_remote_state(b"", True)
    serf.state.merge_remote_state(join(3, "x"), True)
    serf.state.merge_remote_state(b"\x02\xc1", True)
    assert serf.log.has("ERR Remote state is zero bytes")
    assert serf.log.has("ERR Remote state has bad type prefix: 1")
    assert serf.log.has("ERR Failed to decode remote state")
    assert serf.state.clock.time() == 1


# --------------------------------------------------------------------------------------------
# Tags.


def test_tags_go_to_meta_and_back() -> None:
    tags = {"role": "consul", "dc": "dc1", "port": "8300", "build": "0.1.0:abc"}
    serf = Serf(config=SerfConfig(node_name="node1", tags=tags))
    meta = serf.state.node_meta(512)
    assert meta[0] == 0xFF and meta == encode_tags(tags)
    assert decode_tags(meta) == tags
    serf.join_self()
    me = serf.state.local_member()
    assert me is not None and dict(me.tags) == tags


def test_meta_without_the_magic_byte_is_the_role() -> None:
    serf = Serf()
    serf.state.notify_join(node_info("old", meta=b"web"))
    serf.state.notify_join(node_info("bare", meta=b""))
    old, bare = serf.state.member("old"), serf.state.member("bare")
    assert old is not None and dict(old.tags) == {"role": "web"}
    assert bare is not None and dict(bare.tags) == {"role": ""}


def test_undecodable_tags_are_logged() -> None:
    serf = Serf()
    serf.state.notify_join(node_info("weird", meta=b"\xff\x92\x01\x02"))
    member = serf.state.member("weird")
    assert member is not None and dict(member.tags) == {}
    assert serf.log.has("ERR Failed to decode tags")


def test_tags_larger_than_meta_are_refused() -> None:
    huge = {"blob": "x" * 600}
    with pytest.raises(TagsTooLargeError, match="exceeds limit of 512 bytes"):
        SerfState(SerfConfig(node_name="n", tags=huge))
    serf = Serf()
    with pytest.raises(TagsTooLargeError):
        serf.state.set_tags(huge)
    assert serf.state.tags == {}
    # 512 bytes exactly is fine: 0xFF, fixmap, fixstr "k", raw16 header + value.
    fitting = {"k": "v" * (512 - 1 - 1 - 2 - 3)}
    assert len(encode_tags(fitting)) == 512
    serf.state.set_tags(fitting)
    assert len(serf.state.node_meta(512)) == 512
    with pytest.raises(TagsTooLargeError):
        serf.state.node_meta(100)


def test_tags_decode_error_is_a_decode_error() -> None:
    with pytest.raises(GossipDecodeError):
        decode_tags(b"\xff\x92\x01\x02")


# --------------------------------------------------------------------------------------------
# Reaping and reconnecting.


def test_failed_and_left_members_are_reaped_after_their_timeouts() -> None:
    config = SerfConfig(node_name="node1", reconnect_timeout=100, tombstone_timeout=50)
    serf = Serf(config=config)
    state = serf.state
    serf.join_self()
    state.notify_join(node_info("failed", "127.0.0.2"))
    state.notify_join(node_info("gone", "127.0.0.3"))
    state.notify_leave(node_info("failed", "127.0.0.2", state=NodeState.DEAD))
    state.handle_leave_intent(LeaveIntent(5, "gone"))
    state.notify_leave(node_info("gone", "127.0.0.3", state=NodeState.LEFT))
    serf.clock.advance(50)
    assert state.reap() == []  # exactly the timeout: kept
    serf.clock.advance(0.5)
    assert state.reap() == ["gone"]
    serf.clock.advance(50)
    assert state.reap() == ["failed"]
    assert [member.name for member in state.members()] == ["node1"]
    assert state.failed_members() == [] and state.left_members() == []
    assert "INFO EventMemberReap: gone" in serf.log.lines
    assert [event.type for event in serf.events[-2:]] == [MemberEventType.REAP] * 2


def test_a_forced_leave_keeps_the_failure_time_for_the_tombstone() -> None:
    config = SerfConfig(node_name="node1", tombstone_timeout=60)
    serf = Serf(config=config)
    serf.join_self()
    serf.state.notify_join(node_info("node2"))
    serf.state.notify_leave(node_info("node2", state=NodeState.DEAD))
    serf.clock.advance(40)
    serf.state.force_leave("node2")
    serf.clock.advance(21)
    assert serf.state.reap() == ["node2"]


def test_default_timeouts_are_a_day() -> None:
    config = SerfConfig(node_name="x")
    assert config.reconnect_timeout == config.tombstone_timeout == 24 * 3600
    assert config.reconnect_interval == 30
    with pytest.raises(ValueError):
        SerfConfig(node_name="x", reconnect_interval=0)
    with pytest.raises(ValueError):
        SerfConfig(node_name="")


class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_reconnect_candidates_are_the_failed_members() -> None:
    serf = cluster_of_three()
    state = serf.state
    assert state.reconnect_candidates() == []
    assert state.choose_reconnect(FixedRandom(0.0)) is None
    state.notify_join(node_info("v6", "::1", 8301))
    state.notify_leave(node_info("node3", "127.0.0.3", state=NodeState.DEAD))
    state.notify_leave(node_info("v6", "::1", 8301, state=NodeState.DEAD))
    targets = state.reconnect_candidates()
    assert [target.name for target in targets] == ["node3", "v6"]
    assert targets[1].join_address == "[::1]:8301"
    assert targets[0] == ReconnectTarget("node3", targets[0].address)
    assert str(targets[0].address) == "127.0.0.3:7946"


def test_reconnect_is_throttled_by_failed_over_alive() -> None:
    serf = cluster_of_three()
    state = serf.state
    state.notify_leave(node_info("node3", "127.0.0.3", state=NodeState.DEAD))
    # One failed out of two alive: tried with probability 1/2.
    assert state.choose_reconnect(FixedRandom(0.6)) is None
    assert serf.log.has("DEBUG forgoing reconnect for random throttling")
    target = state.choose_reconnect(FixedRandom(0.4))
    assert target is not None and target.name == "node3"
    # Left members are never candidates.
    state.force_leave("node3")
    assert state.choose_reconnect(FixedRandom(0.0)) is None


# --------------------------------------------------------------------------------------------
# The intent queue.


@pytest.mark.parametrize(("nodes", "sends"), [(3, 4), (9, 4), (10, 8), (99, 8), (100, 12)])
def test_the_retransmit_limit_follows_the_cluster_size(nodes: int, sends: int) -> None:
    serf = Serf()
    serf.join_self()
    for index in range(nodes - 2):
        serf.state.notify_join(node_info(f"n{index}", f"127.0.1.{index + 1}"))
    serf.state.notify_join(node_info("extra", "127.0.2.1"))
    serf.state.notify_leave(node_info("extra", "127.0.2.1", state=NodeState.DEAD))
    assert serf.state.num_nodes() == nodes
    serf.state.force_leave("extra")
    count = 0
    while serf.state.get_broadcasts(2, 1400):
        count += 1
    assert count == sends


def test_queue_depth_check_warns_and_prunes() -> None:
    config = SerfConfig(node_name="node1", queue_depth_warning=3, max_queue_depth=4)
    serf = Serf(config=config)
    for index in range(6):
        serf.state.handle_join_intent(JoinIntent(10, f"ghost{index}"))
        serf.state.notify_message(join(10 + index, f"ghost{index}x"))
    depth = len(serf.state.broadcasts)
    assert depth == 6
    serf.state.check_queue_depth()
    assert len(serf.state.broadcasts) == 4
    assert serf.log.has("WARN Intent queue depth: 6")
    assert serf.log.has("dropping messages!")


def test_members_keep_the_order_memberlist_announced_them() -> None:
    names = [member.name for member in cluster_of_three().state.members()]
    assert names == ["node1", "node2", "node3"]
