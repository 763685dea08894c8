"""The sans-I/O Raft core rule by rule (hashicorp/raft 1.1.2's behaviour, spec raft.md §5-9),
one node at a time, its peers played by the test."""

from __future__ import annotations

import dataclasses
import random

import pytest
from raft_helpers import Harness, address, configuration, of_type, requests, responses

from agentrpc.raft.actions import (
    Apply,
    DeleteEntries,
    LogLine,
    ProposalFailed,
    ReadEntries,
    ReceiveSnapshot,
    RestoreSnapshot,
    SendRequest,
    SendSnapshot,
    SnapshotMeta,
    StateChanged,
    StoreEntries,
    TakeSnapshot,
    TransferDone,
    VerifyDone,
)
from agentrpc.raft.configuration import Configuration, Server, Suffrage, encode_configuration
from agentrpc.raft.core import NodeState, RaftNode, format_go_duration, read_durable_state
from agentrpc.raft.errors import (
    ERR_CANT_BOOTSTRAP,
    ERR_LEADERSHIP_LOST,
    ERR_LEADERSHIP_TRANSFER_IN_PROGRESS,
    ERR_NOT_LEADER,
    ERR_RAFT_SHUTDOWN,
    ERR_TRANSFER_TIMEOUT,
    ERR_UNSUPPORTED_PROTOCOL,
    RaftError,
)
from agentrpc.raft.log import LogEntry, LogType
from agentrpc.raft.store_api import KEY_LAST_VOTE_CAND, KEY_LAST_VOTE_TERM
from agentrpc.raft.timing import RaftConfig
from agentrpc.raft.wire import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    RequestVoteRequest,
    RequestVoteResponse,
    TimeoutNowRequest,
    TimeoutNowResponse,
)

N2, N3 = address("n2").encode(), address("n3").encode()
CMD = LogType.COMMAND


def follower(*ids: str, **config: object) -> Harness:
    h = Harness("n1", **config)  # type: ignore[arg-type]
    h.node.bootstrap(0.0, configuration(*(ids or ("n1", "n2", "n3"))))
    h.pump()
    return h


def append(term: int, prev: int, prev_term: int, *entries: LogEntry, commit: int = 0,
           leader: bytes = N2) -> AppendEntriesRequest:  # fmt: skip
    return AppendEntriesRequest(
        term=term, leader=leader, prev_log_entry=prev, prev_log_term=prev_term,
        entries=entries, leader_commit_index=commit,
    )  # fmt: skip


def campaign(h: Harness) -> list[object]:
    """Run the timers to the node's first election and grant it every vote."""
    votes: list[tuple[SendRequest, RequestVoteRequest]] = []
    while not votes:
        deadline = h.node.next_deadline()
        assert deadline is not None and deadline < h.now + 5.0
        votes = requests(h.tick(deadline), RequestVoteRequest)
    for send, request in votes:
        reply = RequestVoteResponse(term=request.term, granted=True)
        h.node.handle_response(h.now, send.request_id, reply)
    out = h.pump()
    assert h.node.is_leader
    return out


def leader(*ids: str, **config: object) -> tuple[Harness, list[object]]:
    """n1 elected leader of ``ids`` (term 2): the outputs after its election."""
    h = follower(*(ids or ("n1", "n2", "n3")), **config)
    out = campaign(h)
    assert h.node.term == 2
    return h, out


def run_answering(h: Harness, until: float, peer: str) -> list[object]:
    """Run the timers to ``until`` with ``peer`` answering everything (the lease holds)."""
    out: list[object] = []
    while h.now < until:
        batch = h.run_timers(min(until, h.now + 0.05))
        out += batch
        for send, _ in appends_to(batch, peer):
            out += ack(h, send)
    return out


def ack(h: Harness, send: SendRequest, *, success: bool = True, last_log: int = 0,
        term: int | None = None, no_retry: bool = False) -> list[object]:  # fmt: skip
    response = AppendEntriesResponse(
        term=h.node.term if term is None else term, last_log=last_log, success=success,
        no_retry_backoff=no_retry,
    )  # fmt: skip
    h.node.handle_response(h.now, send.request_id, response)
    return h.pump()


def appends_to(out: list[object], peer: str) -> list[tuple[SendRequest, AppendEntriesRequest]]:
    return [(s, r) for s, r in requests(out, AppendEntriesRequest) if s.peer_id == peer]


# ============================================================================ voting


def test_sticky_leader_check_comes_before_the_term_check() -> None:
    h = follower()
    h.node.handle_request(0.1, "hb", AppendEntriesRequest(term=2, leader=N2))
    assert responses(h.pump())[0].response == AppendEntriesResponse(
        term=2, last_log=1, success=True
    )
    vote = RequestVoteRequest(term=5, candidate=N3, last_log_index=9, last_log_term=4)
    h.node.handle_request(0.2, "v", vote)
    (reply,) = responses(h.pump())
    assert reply.response == RequestVoteResponse(term=2, granted=False)
    assert h.node.term == 2  # the newer term was not even looked at
    # A vote asked for by a leadership transfer is not refused for that reason.
    h.node.handle_request(0.3, "t", dataclasses.replace(vote, leadership_transfer=True))
    (reply,) = responses(h.pump())
    assert reply.response == RequestVoteResponse(term=5, granted=True)


def test_a_vote_is_only_sent_once_it_is_durable() -> None:
    h = follower()
    h.hold = True
    h.node.handle_request(0.1, "v", RequestVoteRequest(term=3, candidate=N3, last_log_index=1,
                                                       last_log_term=1))  # fmt: skip
    assert responses(h.pump()) == []
    assert [type(op).__name__ for op in h.held] == ["SetTerm", "SetVote"]
    (reply,) = responses(h.flush())
    assert reply.response == RequestVoteResponse(term=3, granted=True)
    assert h.disk.get_uint64(KEY_LAST_VOTE_TERM) == 3
    assert h.disk.get_bytes(KEY_LAST_VOTE_CAND) == N3


def test_one_vote_per_term_and_the_candidate_log_must_be_up_to_date() -> None:
    h = follower()

    def vote(term: int, candidate: bytes, index: int, last_term: int) -> bool:
        h.node.handle_request(
            h.now,
            "v",
            RequestVoteRequest(
                term=term, candidate=candidate, last_log_index=index, last_log_term=last_term
            ),
        )
        reply = responses(h.pump())[0].response
        assert isinstance(reply, RequestVoteResponse)
        return reply.granted  # fmt: skip

    assert vote(3, N3, 1, 1)
    assert vote(3, N3, 1, 1)  # the same candidate again: granted again
    assert not vote(3, N2, 5, 2)  # another candidate in the same term
    h.node.handle_request(h.now, "a", append(4, 1, 1, LogEntry(2, 4, CMD, b"x")))
    h.pump()
    h.run_timers(h.now + 5.0)  # our own heartbeat timeout forgets the leader
    assert not vote(9, N3, 1, 4)  # our last term (4) equals theirs, our index is higher
    assert not vote(10, N3, 9, 3)  # our last term is higher
    assert vote(11, N3, 2, 4)


def test_protocol_version_check() -> None:
    h = follower()
    for version, accepted in ((1, False), (2, True), (3, True), (4, False), (-1, False)):
        h.node.handle_request(
            0.1, version, AppendEntriesRequest(term=1, leader=N2, protocol_version=version)
        )
        (reply,) = responses(h.pump())  # fmt: skip
        if accepted:
            assert reply.error == "" and reply.response is not None
        else:
            assert reply.error == ERR_UNSUPPORTED_PROTOCOL and reply.response is None


# ============================================================================ following


def test_append_entries_are_acknowledged_once_durable_and_in_order() -> None:
    h = follower()
    h.node.handle_request(0.0, "hb", AppendEntriesRequest(term=2, leader=N2))
    h.pump()
    h.hold = True
    h.node.handle_request(0.1, "a1", append(2, 1, 1, LogEntry(2, 2, CMD, b"a")))
    h.node.handle_request(0.1, "a2", append(2, 2, 2, LogEntry(3, 2, CMD, b"b")))
    h.node.handle_request(0.1, "hb2", AppendEntriesRequest(term=2, leader=N2))
    out = h.pump()
    # The heartbeat vouches for nothing on disk: it is answered at once; the appends wait.
    assert [r.token for r in responses(out)] == ["hb2"]
    assert [type(op).__name__ for op in h.held] == ["StoreEntries"]  # merged, one write
    assert [r.token for r in responses(h.flush())] == ["a1", "a2"]
    assert sorted(h.disk.log) == [1, 2, 3]


def test_log_mismatch_and_conflicts() -> None:
    h = follower()
    h.node.handle_request(0.0, "a", append(2, 1, 1, LogEntry(2, 2, CMD, b"a"),
                                           LogEntry(3, 2, CMD, b"b")))  # fmt: skip
    h.pump()
    # A previous entry we do not have, or of another term: rejected, no backoff needed.
    for token, prev, prev_term in (("gap", 7, 2), ("term", 3, 3)):
        h.node.handle_request(0.1, token, append(3, prev, prev_term))
        (reply,) = responses(h.pump())
        assert reply.response == AppendEntriesResponse(
            term=3, last_log=3, success=False, no_retry_backoff=True
        )
    # A conflicting entry: the suffix from it is deleted and replaced.
    h.node.handle_request(0.2, "c", append(3, 2, 2, LogEntry(3, 3, CMD, b"new"), commit=3))
    out = h.pump()
    assert responses(out)[0].response.success  # type: ignore[union-attr]
    assert h.disk.log[3].data == b"new" and h.node.commit_index == 3
    applied = [e.data for a in of_type(out, Apply) for e in a.entries if e.type == CMD]
    assert applied == [b"a", b"new"]


def test_follower_commits_only_what_the_request_verified() -> None:
    h = follower()
    entries = [LogEntry(i, 2, CMD, b"%d" % i) for i in range(2, 6)]
    h.node.handle_request(0.0, "a", append(2, 1, 1, *entries))
    h.pump()
    # Entries 2..5 match; the leader commits 9, but this request only verified through 3.
    h.node.handle_request(0.1, "b", append(2, 1, 1, entries[0], entries[1], commit=9))
    h.pump()
    assert h.node.commit_index == 3


def test_committed_entries_are_never_truncated() -> None:
    h = follower()
    h.node.handle_request(0.0, "a", append(2, 1, 1, LogEntry(2, 2, CMD, b"a"), commit=2))
    h.pump()
    h.node.handle_request(0.1, "bad", append(3, 1, 1, LogEntry(2, 3, CMD, b"evil")))
    (reply,) = responses(h.pump())
    assert reply.error and not reply.response.success  # type: ignore[union-attr]
    assert h.disk.log[2].data == b"a"


def test_malformed_entries_are_refused() -> None:
    h = follower()
    h.node.handle_request(0.0, "gap", append(2, 1, 1, LogEntry(3, 2, CMD, b"x")))
    (reply,) = responses(h.pump())
    assert reply.error and 3 not in h.disk.log


# ============================================================================ elections


def test_election_starts_after_the_heartbeat_timeout_and_not_while_a_leader_talks() -> None:
    h = follower()
    for t in range(1, 30):  # a heartbeat every 0.5 s for 15 s
        h.now = t * 0.5
        h.node.handle_request(h.now, t, AppendEntriesRequest(term=2, leader=N2))
        assert not requests(h.run_timers(h.now), RequestVoteRequest)
    last = h.now
    out = h.run_timers(last + 0.999)
    assert not requests(out, RequestVoteRequest)
    out = h.run_timers(last + 3.0)  # checks every 1-2 s: an election by 3 s
    votes = requests(out, RequestVoteRequest)
    assert sorted(s.peer_id for s, _ in votes) == ["n2", "n3"]
    assert {r for _, r in votes} == {
        RequestVoteRequest(
            term=3, candidate=address("n1").encode(), last_log_index=1, last_log_term=1
        )
    }
    assert h.node.state == NodeState.CANDIDATE
    assert any(isinstance(o, LogLine) and "starting election" in o.message for o in out)


def test_no_election_without_a_configuration() -> None:
    h = Harness("n1")
    out = h.run_timers(10.0)
    assert not requests(out, RequestVoteRequest)
    assert any(isinstance(o, LogLine) and o.message == "no known peers, aborting election"
               for o in out)  # fmt: skip


def test_a_lone_voter_elects_itself_and_commits_its_noop() -> None:
    h = follower("n1")
    out = h.run_timers(3.0)
    assert h.node.is_leader and h.node.commit_index == 2
    applied = [(e.index, e.type) for a in of_type(out, Apply) for e in a.entries]
    assert applied == [(1, LogType.CONFIGURATION), (2, LogType.NOOP)]
    assert of_type(out, StateChanged)[-1] == StateChanged("Leader", 2, address("n1"), "n1")


def test_a_new_leader_writes_a_noop_and_replicates_it() -> None:
    _h, out = leader()
    (store,) = of_type(out, StoreEntries)
    assert store.entries == (LogEntry(2, 2, LogType.NOOP),)
    for peer in ("n2", "n3"):
        ((_, request),) = appends_to(out, peer)
        assert (request.prev_log_entry, request.prev_log_term) == (1, 1)
        assert request.entries == (LogEntry(2, 2, LogType.NOOP),)


def test_commit_needs_an_entry_of_the_current_term() -> None:
    h = follower(max_append_entries=1)
    h.node.handle_request(0.0, "a", append(2, 1, 1, LogEntry(2, 2, CMD, b"old")))
    h.pump()
    out = campaign(h)
    assert h.node.term == 3
    ((send, first),) = appends_to(out, "n3")
    assert first.prev_log_entry == 2 and first.entries == (LogEntry(3, 3, LogType.NOOP),)
    out = ack(h, send, success=False, last_log=1, no_retry=True)
    ((send, second),) = appends_to(out, "n3")
    assert second.prev_log_entry == 1 and [e.index for e in second.entries or ()] == [2]
    out = ack(h, send)
    # n3 now stores entry 2 (a majority with us), but it is of term 2: not committed yet.
    assert h.node.match_index("n3") == 2 and h.node.commit_index == 0
    ((send, third),) = appends_to(out, "n3")
    assert [e.index for e in third.entries or ()] == [3]
    ack(h, send)
    assert h.node.commit_index == 3


def test_replication_batches_and_backs_off() -> None:
    h, out = leader(max_append_entries=2)
    ((send, _),) = appends_to(out, "n2")
    out = ack(h, send)  # pipeline mode from now on
    for i in range(5):
        h.node.propose(h.now, b"%d" % i)
    out = h.pump()
    sizes = [len(r.entries or ()) for _, r in appends_to(out, "n2")]
    assert sizes == [2, 2, 1]
    assert all(s.pipeline for s, _ in appends_to(out, "n2"))
    # A rejection without NoRetryBackoff: back to probing, after a backoff.
    (send, _) = appends_to(out, "n2")[0]
    out = ack(h, send, success=False, last_log=2)
    assert appends_to(out, "n2") == []
    out = h.run_timers(h.now + 0.2)
    retry = [r for _, r in appends_to(out, "n2") if r.entries]
    assert retry and retry[0].prev_log_entry == 2  # next = min(prev, LastLog + 1) = 3


def test_an_unanswered_request_times_out_and_is_retried() -> None:
    h, out = leader(rpc_timeout=2.0)
    ((_, first),) = appends_to(out, "n2")
    out = run_answering(h, h.now + 1.9, "n3")
    assert not [r for _, r in appends_to(out, "n2") if r.entries]  # still waiting
    out = run_answering(h, h.now + 0.6, "n3")
    again = [r for _, r in appends_to(out, "n2") if r.entries]
    assert again and again[0].entries == first.entries


# ============================================================================ leadership


def test_leader_steps_down_without_a_quorum_and_fails_what_is_in_flight() -> None:
    h, _ = leader()
    proposal = h.node.propose(h.now, b"x")
    out = h.run_timers(h.now + 1.0)
    assert h.node.state == NodeState.FOLLOWER
    assert any(
        isinstance(o, LogLine) and o.message == "failed to contact quorum of nodes, stepping down"
        for o in out
    )
    assert ProposalFailed(proposal, ERR_LEADERSHIP_LOST) in out  # fmt: skip


def test_leader_keeps_its_lease_while_followers_answer() -> None:
    h, _ = leader()
    for _ in range(40):
        out = h.run_timers(h.now + 0.1)
        for send, _ in appends_to(out, "n2"):
            ack(h, send)
    assert h.node.is_leader


def test_a_single_server_leader_sets_no_lease_timer_until_it_has_a_peer() -> None:
    h = follower("n1")
    h.run_timers(3.0)
    assert h.node.is_leader
    lease = h.config.leader_lease_timeout
    # Idle, alone: nothing is due before the snapshot check (Go ticks the lease every 500 ms).
    deadline = h.node.next_deadline()
    assert deadline is not None and deadline > h.now + 10 * lease
    h.run_timers(h.now + 60)
    assert h.node.is_leader
    h.node.add_voter(h.now, "n2", address("n2"))
    h.pump()
    # With a peer the lease is checked again at once and then every lease timeout, and a
    # silent peer costs the leadership as it always did.
    deadline = h.node.next_deadline()
    assert deadline is not None and deadline <= h.now + lease
    h.run_timers(h.now + 2 * lease)
    assert h.node.state == NodeState.FOLLOWER


def test_proposals_off_the_leader_are_refused() -> None:
    h = follower()
    with pytest.raises(RaftError, match=ERR_NOT_LEADER):
        h.node.propose(0.0, b"x")


def test_leadership_transfer() -> None:
    h, out = leader()
    ((send, _),) = appends_to(out, "n2")
    ack(h, send)
    transfer = h.node.transfer_leadership(h.now)
    with pytest.raises(RaftError, match=ERR_LEADERSHIP_TRANSFER_IN_PROGRESS):
        h.node.propose(h.now, b"x")
    out = h.pump()
    ((timeout_send, _),) = requests(out, TimeoutNowRequest)
    assert timeout_send.peer_id == "n2"  # the most up-to-date follower
    h.node.handle_response(h.now, timeout_send.request_id, TimeoutNowResponse())
    assert TransferDone(transfer, None) in h.pump()
    h.node.propose(h.now, b"ok")  # accepted again


def test_leadership_transfer_times_out() -> None:
    h, out = leader()
    transfer = h.node.transfer_leadership(h.now, "n3")  # n3 never answers anything
    out = run_answering(h, h.now + 0.9, "n2")
    assert not of_type(out, TransferDone)
    out = run_answering(h, h.now + 0.2, "n2")
    assert TransferDone(transfer, ERR_TRANSFER_TIMEOUT) in out
    assert not requests(out, TimeoutNowRequest)


def test_timeout_now_starts_a_transfer_election() -> None:
    h = follower()
    h.node.handle_request(0.0, "hb", AppendEntriesRequest(term=2, leader=N2))
    h.pump()
    h.node.handle_request(0.1, "t", TimeoutNowRequest())
    out = h.pump()
    assert h.node.state == NodeState.CANDIDATE
    assert responses(out)[0].response == TimeoutNowResponse()
    votes = requests(out, RequestVoteRequest)
    assert votes and all(r.leadership_transfer and r.term == 3 for _, r in votes)


def test_verify_leader() -> None:
    h, _ = leader()
    verify = h.node.verify_leader(h.now)
    out = h.pump()
    beats = [s for s, r in requests(out, AppendEntriesRequest) if r.is_heartbeat]
    assert sorted(s.peer_id for s in beats) == ["n2", "n3"]
    first = next(s for s in beats if s.peer_id == "n2")
    assert VerifyDone(verify, None) in ack(h, first)
    lost = h.node.verify_leader(h.now)
    h.node.handle_request(h.now, "x", AppendEntriesRequest(term=5, leader=N3))
    assert VerifyDone(lost, ERR_LEADERSHIP_LOST) in h.pump()


# ============================================================================ membership


def test_membership_changes_one_at_a_time() -> None:
    h = follower("n1")
    h.run_timers(3.0)
    first = h.node.add_voter(h.now, "n2", address("n2"))
    second = h.node.add_voter(h.now, "n3", address("n3"))
    out = h.pump()
    (store,) = of_type(out, StoreEntries)
    expected = configuration("n1", "n2")
    assert store.entries == (LogEntry(3, 2, LogType.CONFIGURATION, encode_configuration(expected)),)
    assert h.node.configuration == expected  # in force as soon as it is appended
    assert h.node.commit_index == 2  # needs n2 now: two voters
    ((send, _),) = appends_to(out, "n2")
    out = ack(h, send, success=False, last_log=0, no_retry=True)
    while h.node.commit_index < 3:
        ((send, _),) = appends_to(out, "n2")
        out = ack(h, send)
    assert next(a.proposals for a in of_type(out, Apply)) == (first,)
    # Only now is the second change written.
    stores = of_type(out, StoreEntries)
    assert len(stores) == 1 and stores[0].entries[0].index == 4
    assert h.node.configuration == configuration("n1", "n2", "n3")
    ((send, _),) = appends_to(out, "n2")
    out = ack(h, send)
    assert h.node.commit_index == 4 and (second,) in [a.proposals for a in of_type(out, Apply)]
    stale = h.node.remove_server(h.now, "n3", prev_index=3)
    assert ProposalFailed(stale, "Configuration changed since 3 (latest is 4)") in h.pump()


def test_membership_change_errors_are_gos() -> None:
    h = follower("n1")
    h.run_timers(3.0)
    proposal = h.node.remove_server(h.now, "n1")
    assert ProposalFailed(proposal, "Need at least one voter in configuration: {[]}") in h.pump()
    stale = h.node.add_nonvoter(h.now, "n2", address("n2"), prev_index=5)
    assert ProposalFailed(stale, "Configuration changed since 5 (latest is 1)") in h.pump()
    duplicate = h.node.add_nonvoter(h.now, "n2", address("n1"))
    assert (
        ProposalFailed(duplicate, "Found duplicate address in configuration: 127.0.0.1:8301")
        in h.pump()
    )


def test_a_leader_that_removes_itself_steps_down_once_committed() -> None:
    for shutdown in (False, True):
        h, out = leader(shutdown_on_remove=shutdown)
        for send, _ in appends_to(out, "n2") + appends_to(out, "n3"):
            ack(h, send)
        h.node.remove_server(h.now, "n1")
        out = h.pump()
        assert h.node.configuration == configuration("n2", "n3")
        assert h.node.is_leader  # until the change commits
        for send, _ in appends_to(out, "n2") + appends_to(out, "n3"):
            out = ack(h, send)
        assert h.node.state == (NodeState.SHUTDOWN if shutdown else NodeState.FOLLOWER)
        with pytest.raises(RaftError):
            h.node.propose(h.now, b"x")


# ============================================================================ snapshots


def test_snapshot_threshold_compaction_and_install_for_a_new_follower() -> None:
    h = follower("n1", snapshot_threshold=5, trailing_logs=2, snapshot_interval=1.0)
    h.run_timers(3.0)
    for i in range(8):
        h.node.propose(h.now, b"%d" % i)
    h.pump()
    assert h.node.applied_index == 10
    out = h.run_timers(h.now + 2.5)
    (take,) = of_type(out, TakeSnapshot)
    assert (take.index, take.term) == (10, 2)
    assert take.configuration == configuration("n1") and take.configuration_index == 1
    meta = SnapshotMeta("s1", take.index, take.term, take.configuration, 1, size=42)
    h.node.snapshot_taken(h.now, meta)
    out = h.pump()
    assert sorted(h.disk.log) == [9, 10]  # TrailingLogs = 2 kept
    assert h.node.stats(h.now)["last_snapshot_index"] == "10"
    h.node.add_voter(h.now, "n2", address("n2"))
    out = h.pump()
    ((send, _),) = appends_to(out, "n2")
    out = ack(h, send, success=False, last_log=0, no_retry=True)
    (snapshot,) = of_type(out, SendSnapshot)
    assert snapshot.snapshot_id == "s1" and snapshot.peer_id == "n2"
    assert snapshot.request.last_log_index == 10 and snapshot.request.size == 42
    h.node.handle_response(
        h.now, snapshot.request_id, InstallSnapshotResponse(term=2, success=True)
    )
    out = h.pump()
    assert h.node.match_index("n2") == 10
    assert [r.prev_log_entry for _, r in appends_to(out, "n2")] == [10]


def test_follower_installs_a_snapshot() -> None:
    h = follower()
    h.node.handle_request(0.0, "a", append(2, 1, 1, LogEntry(2, 2, CMD, b"stale")))
    h.pump()
    new = configuration("n1", "n2", "n3", "n4")
    request = InstallSnapshotRequest(
        term=3, leader=N2, last_log_index=50, last_log_term=3, size=7,
        configuration=encode_configuration(new), configuration_index=40,
    )  # fmt: skip
    h.node.handle_request(0.1, "s", request)
    (receive,) = of_type(h.pump(), ReceiveSnapshot)
    assert (receive.meta.index, receive.meta.size) == (50, 7)
    h.hold = True
    h.node.snapshot_received(0.2, "s", "snap-50")
    out = h.pump()
    assert of_type(out, RestoreSnapshot)[0].meta.id == "snap-50"
    assert responses(out) == []  # the log deletion is not durable yet
    assert any(isinstance(op, DeleteEntries) for op in h.held)
    (reply,) = responses(h.flush())
    assert reply.response == InstallSnapshotResponse(term=3, success=True)
    assert h.disk.log == {} and h.node.last_index == 50 and h.node.configuration == new
    h.hold = False
    # The next AppendEntries continues right after the snapshot.
    h.node.handle_request(0.3, "a", append(3, 50, 3, LogEntry(51, 3, CMD, b"next"), commit=51))
    out = h.pump()
    assert responses(out)[0].response.success  # type: ignore[union-attr]
    assert [e.index for a in of_type(out, Apply) for e in a.entries] == [51]


def test_a_small_cache_reads_entries_back_from_the_store() -> None:
    h, out = leader(entry_cache_bytes=300)
    ((n3_first, _),) = appends_to(out, "n3")
    for send, _ in appends_to(out, "n2"):
        ack(h, send)
    for i in range(10):
        h.node.propose(h.now, b"%02d" % i * 50)
    h.pump()
    assert h.node.last_index == 12
    # n3 turns out to have nothing: the entries it needs left the cache long ago.
    out = ack(h, n3_first, success=False, last_log=0, no_retry=True)
    (read,) = of_type(out, ReadEntries)
    assert (read.first, read.last) == (1, 12)
    ((_, request),) = [x for x in appends_to(out, "n3") if x[1].entries]
    assert request.prev_log_entry == 0
    assert [e.index for e in request.entries or ()] == list(range(1, 13))
    assert h.node.stats(h.now)["last_log_index"] == "12"


# ============================================================================ restart


def test_restart_recovers_term_vote_log_and_configuration() -> None:
    h = follower()
    h.node.handle_request(0.1, "v", RequestVoteRequest(term=4, candidate=N3, last_log_index=1,
                                                       last_log_term=1))  # fmt: skip
    h.pump()
    h.node.handle_request(0.2, "a", append(4, 1, 1, LogEntry(2, 4, CMD, b"x"), leader=N3))
    h.pump()
    h.restart()
    node = h.node
    assert (node.term, node.last_index, node.last_term) == (4, 2, 4)
    assert node.configuration == configuration("n1", "n2", "n3")
    node.handle_request(0.3, "v2", RequestVoteRequest(term=4, candidate=N2, last_log_index=9,
                                                      last_log_term=4))  # fmt: skip
    assert responses(h.pump())[0].response == RequestVoteResponse(term=4, granted=False)


def test_bootstrap_only_on_a_new_node() -> None:
    h = follower()
    with pytest.raises(RaftError, match=ERR_CANT_BOOTSTRAP):
        h.node.bootstrap(0.0, configuration("n1"))


def test_shutdown_fails_everything() -> None:
    h, _ = leader()
    proposal = h.node.propose(h.now, b"x")
    h.node.shutdown(h.now)
    out = h.pump()
    assert ProposalFailed(proposal, ERR_RAFT_SHUTDOWN) in out
    h.node.handle_request(h.now, "late", AppendEntriesRequest(term=9, leader=N2))
    assert responses(h.pump())[0].error == ERR_RAFT_SHUTDOWN
    assert h.node.next_deadline() is None


# ============================================================================ configuration, stats


def test_stats_have_goss_keys() -> None:
    h, _ = leader()
    stats = h.node.stats(h.now)
    assert stats == {
        "state": "Leader",
        "term": "2",
        "last_log_index": "2",
        "last_log_term": "2",
        "commit_index": "0",
        "applied_index": "0",
        "fsm_pending": "0",
        "last_snapshot_index": "0",
        "last_snapshot_term": "0",
        "protocol_version": "3",
        "protocol_version_min": "0",
        "protocol_version_max": "3",
        "snapshot_version_min": "0",
        "snapshot_version_max": "1",
        "latest_configuration_index": "1",
        "latest_configuration": (
            "[{Suffrage:Voter ID:n1 Address:127.0.0.1:8301} "
            "{Suffrage:Voter ID:n2 Address:127.0.0.1:8302} "
            "{Suffrage:Voter ID:n3 Address:127.0.0.1:8303}]"
        ),
        "num_peers": "2",
        "last_contact": "0",
    }
    f = follower()
    assert f.node.stats(0.0)["last_contact"] == "never"
    f.node.handle_request(1.0, "hb", AppendEntriesRequest(term=2, leader=N2))
    f.pump()
    assert f.node.stats(1.0123)["last_contact"] == "12.3ms"


def test_go_durations() -> None:
    assert format_go_duration(0) == "0s"
    assert format_go_duration(0.0000005) == "500ns"
    assert format_go_duration(0.0015) == "1.5ms"
    assert format_go_duration(2.5) == "2.5s"
    assert format_go_duration(61.25) == "1m1.25s"
    assert format_go_duration(3600) == "1h0m0s"


def test_config_validation_and_consul_scaling() -> None:
    config = RaftConfig(local_id="a", local_address="127.0.0.1:8300").scaled(5)
    assert (config.heartbeat_timeout, config.election_timeout, config.leader_lease_timeout) == (
        5.0, 5.0, 2.5)  # fmt: skip
    assert config.commit_timeout == 0.05
    with pytest.raises(ValueError, match="Leader lease timeout cannot be larger"):
        dataclasses.replace(config, leader_lease_timeout=6.0).validate()
    with pytest.raises(ValueError, match="LocalID must be set to the network address"):
        dataclasses.replace(config, protocol_version=2).validate()
    with pytest.raises(ValueError, match="MaxAppendEntries is too large"):
        dataclasses.replace(config, max_append_entries=2000).validate()
    with pytest.raises(ValueError):
        config.scaled(11)


def test_configuration_suffrage_in_quorums() -> None:
    servers = (
        Server("a", "1"), Server("b", "2"), Server("c", "3", Suffrage.NONVOTER),
    )  # fmt: skip
    assert Configuration(servers).quorum_size() == 2
    assert [s.id for s in Configuration(servers).voters()] == ["a", "b"]


# ============================================================================ recovery edge cases


def restarted(
    disk_entries: list[LogEntry], snapshot: SnapshotMeta | None
) -> tuple[Harness, list[object]]:
    h = Harness("n1")
    h.disk.store_entries(disk_entries)
    durable = read_durable_state(h.disk, h.disk, snapshot)  # the same call an engine makes
    h.node = RaftNode(h.config, now=0.0, rng=random.Random(1), durable=durable)
    return h, h.pump()


def test_restart_deletes_what_follows_a_gap_in_the_log() -> None:
    entries = [LogEntry(i, 1, CMD, b"x") for i in (1, 2, 3, 5, 6)]
    h, out = restarted(entries, None)
    assert DeleteEntries(1, 4, 6) in out
    assert h.node.last_index == 3 and sorted(h.disk.log) == [1, 2, 3]


def test_restart_discards_a_log_that_does_not_connect_to_the_snapshot() -> None:
    config = configuration("n1", "n2", "n3")
    snapshot = SnapshotMeta("s", 10, 3, config, 1)
    # A gap between the snapshot and the log.
    h, out = restarted([LogEntry(i, 3, CMD, b"x") for i in range(12, 16)], snapshot)
    assert h.disk.log == {} and h.node.last_index == 10 and h.node.last_term == 3
    # The snapshot's last entry in the log with another term.
    h, out = restarted([LogEntry(i, 2, CMD, b"x") for i in range(8, 16)], snapshot)
    assert h.disk.log == {} and h.node.last_index == 10
    # A log that ends before the snapshot (its last entries were snapshotted before they were
    # durable, then a crash): all of it is in the snapshot; new entries follow the snapshot.
    h, out = restarted([LogEntry(i, 3, CMD, b"x") for i in range(1, 9)], snapshot)
    assert h.disk.log == {} and h.node.last_index == 10
    h.node.handle_request(0.0, "a", append(4, 10, 3, LogEntry(11, 4, CMD, b"y"), leader=N2))
    assert responses(h.pump())[0].response.success  # type: ignore[union-attr]
    assert sorted(h.disk.log) == [11] and (h.node.term_at(10), h.node.term_at(11)) == (3, 4)
    # A log that agrees with the snapshot is kept.
    entries = [LogEntry(i, 3, CMD, b"x") for i in range(8, 16)]
    h, out = restarted(entries, snapshot)
    assert sorted(h.disk.log) == list(range(8, 16)) and not of_type(out, DeleteEntries)
    assert (h.node.last_index, h.node.commit_index, h.node.applied_index) == (15, 10, 10)
    assert h.node.configuration == config


def test_an_old_snapshot_is_stored_but_not_restored() -> None:
    h = follower()
    entries = [LogEntry(i, 2, CMD, b"x") for i in range(2, 8)]
    h.node.handle_request(0.0, "a", append(2, 1, 1, *entries, commit=7))
    h.pump()
    request = InstallSnapshotRequest(
        term=2, leader=N2, last_log_index=5, last_log_term=2, size=3,
        configuration=encode_configuration(configuration("n1")),
    )  # fmt: skip
    h.node.handle_request(0.1, "s", request)
    h.pump()
    h.node.snapshot_received(0.2, "s", "old")
    out = h.pump()
    assert not of_type(out, RestoreSnapshot)
    assert responses(out)[0].response == InstallSnapshotResponse(term=2, success=True)
    assert h.node.applied_index == 7
    h.node.handle_request(0.3, "s2", request)
    h.pump()
    h.node.snapshot_failed(0.4, "s2", "short read")
    (reply,) = responses(h.pump())
    assert reply.error == "short read" and not reply.response.success  # type: ignore[union-attr]
