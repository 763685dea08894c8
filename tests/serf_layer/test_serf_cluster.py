"""Several serf layers in one process, talking through the fake memberlist's gossip medium."""

from __future__ import annotations

from fake_memberlist import FakeMemberlist, FakeNetwork
from serf_helpers import ManualClock, RecordingLog

from agentrpc.gossip.serf import MemberStatus, SerfConfig, SerfLifecycle, SerfState
from agentrpc.gossip.serf_messages import LeaveIntent, encode_serf_message


class Cluster:
    """``n`` serf layers named a, b, c, ... on 127.0.0.1, .2, .3, ..."""

    def __init__(self, names: str = "abc") -> None:
        self.clock = ManualClock()
        self.network = FakeNetwork(self.clock)
        self.serfs: dict[str, SerfState] = {}
        self.logs: dict[str, RecordingLog] = {}
        self.nodes: dict[str, FakeMemberlist] = {}
        for name in names:
            self.add(name)

    def add(self, name: str, *, start: bool = True) -> FakeMemberlist:
        log = RecordingLog()
        serf = SerfState(
            SerfConfig(node_name=name, tags={"role": f"role-{name}"}), logger=log, clock=self.clock
        )
        self.serfs[name], self.logs[name] = serf, log
        node = self.network.add(name, serf, host=f"127.0.0.{len(self.nodes) + 1}", start=start)
        self.nodes[name] = node
        return node

    async def join_all(self) -> None:
        """Everyone joins the first node; each join is followed by a join intent."""
        first, *rest = self.nodes
        for name in rest:
            num, errors = await self.nodes[name].join([str(self.nodes[first].address)])
            assert (num, errors) == (1, [])
            self.serfs[name].broadcast_join()
        self.network.settle()

    def status(self, observer: str, name: str) -> MemberStatus | None:
        member = self.serfs[observer].member(name)
        return None if member is None else member.status

    def statuses(self, name: str) -> dict[str, MemberStatus | None]:
        return {observer: self.status(observer, name) for observer in self.serfs}

    async def graceful_leave(self, name: str) -> None:
        """Serf's leave, with the gossip pumped by hand: intent, memberlist leave, done."""
        serf = self.serfs[name]
        assert serf.begin_leave() is True
        self.network.settle()
        await self.nodes[name].leave()
        serf.finish_leave()


async def test_a_joined_cluster_agrees_on_everyone() -> None:
    cluster = Cluster("abcde")
    await cluster.join_all()
    for name in "abcde":
        assert cluster.statuses(name) == dict.fromkeys("abcde", MemberStatus.ALIVE)
        tags = {
            observer: dict(member.tags)
            for observer, serf in cluster.serfs.items()
            if (member := serf.member(name)) is not None
        }
        assert tags == {observer: {"role": f"role-{name}"} for observer in "abcde"}
    # Everyone's join intent reached everyone: status times agree.
    for name in "abcde":
        times = set()
        for serf in cluster.serfs.values():
            member = serf.member(name)
            assert member is not None
            times.add(member.status_ltime)
        assert len(times) == 1
    # The Lamport clocks are past every status time.
    for serf in cluster.serfs.values():
        assert all(serf.clock.time() > m.status_ltime for m in serf.members())


async def test_graceful_leave_is_left_everywhere() -> None:
    cluster = Cluster()
    await cluster.join_all()
    await cluster.graceful_leave("c")
    assert cluster.statuses("c") == dict.fromkeys("abc", MemberStatus.LEFT)
    assert cluster.serfs["c"].lifecycle is SerfLifecycle.LEFT
    assert "INFO EventMemberLeave: c 127.0.0.3" in cluster.logs["a"].lines


async def test_leaving_without_the_intent_is_failure() -> None:
    cluster = Cluster()
    await cluster.join_all()
    await cluster.nodes["c"].leave()  # memberlist's dead{self} alone
    assert cluster.status("a", "c") is MemberStatus.FAILED
    assert cluster.status("b", "c") is MemberStatus.FAILED


async def test_silent_death_is_failed_everywhere() -> None:
    cluster = Cluster()
    await cluster.join_all()
    cluster.network.kill("b")
    assert cluster.status("a", "b") is MemberStatus.FAILED
    assert cluster.status("c", "b") is MemberStatus.FAILED
    assert "INFO EventMemberFailed: b 127.0.0.2" in cluster.logs["c"].lines


async def test_force_leave_spreads_failed_to_left() -> None:
    cluster = Cluster("abcd")
    await cluster.join_all()
    cluster.network.kill("d")
    assert cluster.serfs["a"].force_leave("d") is True
    cluster.network.settle()
    assert {name: cluster.status(name, "d") for name in "abc"} == dict.fromkeys(
        "abc", MemberStatus.LEFT
    )
    for name in "abc":
        assert cluster.logs[name].has("EventMemberLeave (forced): d 127.0.0.4")
        assert cluster.serfs[name].failed_members() == []
        assert cluster.serfs[name].left_members() == ["d"]


async def test_force_leave_of_a_live_node_is_refuted() -> None:
    cluster = Cluster()
    await cluster.join_all()
    cluster.serfs["a"].force_leave("b")
    assert cluster.status("a", "b") is MemberStatus.LEAVING
    cluster.network.settle()
    assert cluster.statuses("b") == dict.fromkeys("abc", MemberStatus.ALIVE)
    assert cluster.logs["b"].has("Refuting an older leave intent")


async def test_a_stale_leave_intent_about_ourselves_is_refuted_by_the_cluster() -> None:
    cluster = Cluster()
    await cluster.join_all()
    # Someone replays a leave intent about b with a fresh time, straight to c.
    fake_leave = LeaveIntent(cluster.serfs["c"].clock.time() + 3, "b")
    cluster.serfs["c"].notify_message(encode_serf_message(fake_leave))
    assert cluster.status("c", "b") is MemberStatus.LEAVING
    cluster.network.settle()
    assert cluster.statuses("b") == dict.fromkeys("abc", MemberStatus.ALIVE)


async def test_intents_for_nodes_not_seen_yet_are_kept_until_they_appear() -> None:
    cluster = Cluster("abd")
    await cluster.nodes["d"].join([str(cluster.nodes["b"].address)])
    # a is alone; d's leave intent reaches it (relayed) before a knows d.
    d_leave = LeaveIntent(cluster.serfs["d"].clock.time(), "d")
    cluster.serfs["a"].notify_message(encode_serf_message(d_leave))
    assert cluster.serfs["a"].buffered_intent("d") == ("leave", d_leave.ltime)
    assert cluster.serfs["a"].member("d") is None
    # Then a joins b and hears of d from memberlist: d is leaving.
    await cluster.nodes["a"].join([str(cluster.nodes["b"].address)])
    assert cluster.status("a", "d") is MemberStatus.LEAVING
    await cluster.nodes["d"].leave()
    assert cluster.status("a", "d") is MemberStatus.LEFT


async def test_push_pull_teaches_a_node_what_gossip_missed() -> None:
    cluster = Cluster()
    await cluster.join_all()
    cluster.network.kill("c")
    cluster.serfs["a"].force_leave("c")
    cluster.serfs["a"].broadcasts.reset()  # the gossip is lost
    assert cluster.status("b", "c") is MemberStatus.FAILED
    cluster.nodes["b"].push_pull(cluster.nodes["a"])  # memberlist's periodic push/pull
    assert cluster.status("b", "c") is MemberStatus.LEFT
    assert cluster.logs["b"].has("EventMemberLeave (forced): c")


async def test_a_late_joiner_learns_left_members_and_clocks() -> None:
    cluster = Cluster()
    await cluster.join_all()
    await cluster.graceful_leave("c")
    late = cluster.add("e")
    await late.join([str(cluster.nodes["a"].address)])
    serf_e, serf_a = cluster.serfs["e"], cluster.serfs["a"]
    assert serf_e.clock.time() >= serf_a.clock.time()
    # c is gone from memberlist's view of the new node; its leave is buffered as an intent.
    assert serf_e.buffered_intent("c") is not None
    assert cluster.status("e", "a") is MemberStatus.ALIVE


async def test_revived_node_is_alive_again_after_a_reconnect() -> None:
    cluster = Cluster()
    await cluster.join_all()
    cluster.network.kill("c")
    [target] = cluster.serfs["a"].reconnect_candidates()
    cluster.network.revive("c")
    num, _ = await cluster.nodes["a"].join([target.join_address])
    assert num == 1
    assert cluster.statuses("c") == dict.fromkeys("abc", MemberStatus.ALIVE)
    assert cluster.serfs["a"].failed_members() == []


async def test_busy_five_node_cluster_converges_without_storms() -> None:
    cluster = Cluster("abcde")
    await cluster.join_all()
    await cluster.graceful_leave("e")
    cluster.network.kill("d")
    cluster.serfs["b"].force_leave("d")
    cluster.serfs["c"].force_leave("a")  # refuted by a
    cluster.network.settle()  # raises on a rebroadcast storm
    for observer in "abc":
        assert cluster.status(observer, "a") is MemberStatus.ALIVE
        assert cluster.status(observer, "d") is MemberStatus.LEFT
        assert cluster.status(observer, "e") is MemberStatus.LEFT
    times = {serf.clock.time() for name, serf in cluster.serfs.items() if name in "abc"}
    assert max(times) - min(times) <= 2
    assert all(len(cluster.serfs[name].broadcasts) == 0 for name in "abc")
