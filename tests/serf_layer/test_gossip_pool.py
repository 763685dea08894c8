"""GossipPool: the agent's view of serf over a (fake) memberlist, on trio's autojump clock."""

from __future__ import annotations

import io
import ipaddress
import random

import pytest
import trio
import trio.testing
from fake_memberlist import DEFAULT_VSN, FakeMemberlist, FakeNetwork
from rpc_helpers import RawConnection, running_agent

from agentrpc.gossip.contract import GossipAddress
from agentrpc.gossip.serf import DAY, SerfConfig, TagsTooLargeError
from agentrpc.logs import TRACE, LogHub
from agentrpc.membership.gossip_pool import GossipPool, join_error_text
from agentrpc.membership.pool import MembershipPool
from agentrpc.protocol.bodies import Member, members_body

SERF_STATS_KEYS = {
    "encrypted",
    "event_queue",
    "event_time",
    "failed",
    "health_score",
    "intent_queue",
    "left",
    "member_time",
    "members",
    "query_queue",
    "query_time",
}


class Pools:
    """Pools a, b, c, ... over one fake network, each with its own log."""

    def __init__(
        self,
        names: str = "abc",
        *,
        encrypted: bool = False,
        reconnect_timeout: float = DAY,
        tombstone_timeout: float = DAY,
    ) -> None:
        self.network = FakeNetwork(trio.current_time)
        self.pools: dict[str, GossipPool] = {}
        self.nodes: dict[str, FakeMemberlist] = {}
        self.sinks: dict[str, io.StringIO] = {}
        self.encrypted = encrypted
        self.reconnect_timeout = reconnect_timeout
        self.tombstone_timeout = tombstone_timeout
        for name in names:
            self.add(name)

    def add(self, name: str, host: str = "") -> GossipPool:
        sink = io.StringIO()
        hub = LogHub(TRACE, sink=sink)
        config = SerfConfig(
            node_name=name,
            tags={"role": "node", "dc": "dc1", "id": name},
            reconnect_timeout=self.reconnect_timeout,
            tombstone_timeout=self.tombstone_timeout,
        )
        pool = GossipPool(
            "lan",
            config,
            logger=hub.logger("serf"),
            encrypted=self.encrypted,
            rng=random.Random(7),
        )
        host = host or f"127.0.0.{len(self.pools) + 1}"
        node = self.network.add(name, pool.serf, host=host, port=8301)
        pool.attach(node)
        self.pools[name], self.nodes[name], self.sinks[name] = pool, node, sink
        return pool

    def address(self, name: str) -> str:
        return str(self.nodes[name].address)

    async def join_all(self) -> None:
        first, *rest = self.pools
        for name in rest:
            assert await self.pools[name].join([self.address(first)]) == (1, "")
        self.network.settle()

    def status(self, observer: str, name: str) -> str | None:
        for member in self.pools[observer].members():
            if member.name == name:
                return member.status
        return None

    def log(self, name: str) -> str:
        return self.sinks[name].getvalue()


# --------------------------------------------------------------------------------------------
# members()


async def test_a_gossip_pool_is_a_membership_pool(autojump_clock: trio.testing.MockClock) -> None:
    pools = Pools("a")
    pool: MembershipPool = pools.pools["a"]
    assert pool.name == "lan"
    assert pools.pools["a"].serf.local_name == "a"
    pools.pools["a"].attach(pools.nodes["a"])  # the same one again: fine
    other = FakeMemberlist(
        pools.network, "a", pools.pools["a"].serf, GossipAddress("127.0.0.1", 1), DEFAULT_VSN
    )
    with pytest.raises(RuntimeError):
        pools.pools["a"].attach(other)


async def test_members_have_the_wire_shape_of_the_reference(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pools = Pools("ab")
    pools.add("v6", host="::1")
    await pools.join_all()
    members = {member.name: member for member in pools.pools["a"].members()}
    assert set(members) == {"a", "b", "v6"}
    wire = members["b"].to_wire()
    assert wire == {
        "Name": "b",
        "Addr": b"\x7f\x00\x00\x02",
        "Port": 8301,
        "Tags": {"role": "node", "dc": "dc1", "id": "b"},
        "Status": "alive",
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    }
    assert members["v6"].to_wire()["Addr"] == ipaddress.IPv6Address("::1").packed
    assert len(members["v6"].to_wire()["Addr"]) == 16
    # The agent's encoder takes it, and a client decodes the same members.
    body = members_body(list(members.values()))
    assert [Member.from_wire(item) for item in body["Members"]] == list(members.values())


async def test_statuses_as_the_pool_reports_them(autojump_clock: trio.testing.MockClock) -> None:
    pools = Pools("abcd")
    await pools.join_all()
    pools.network.kill("b")
    await pools.pools["d"].leave()  # no gossip running: the intent times out, still left
    assert pools.status("a", "b") == "failed"
    assert pools.status("d", "d") == "left"
    assert pools.status("a", "d") == "failed"  # its leave intent never got out
    pools.pools["a"].serf.force_leave("c")
    assert pools.status("a", "c") == "leaving"


async def test_wan_member_names_are_whatever_the_builder_chose(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pools = Pools("")
    pools.add("node1.dc1")
    pools.add("node2.dc2")
    await pools.join_all()
    assert {member.name for member in pools.pools["node1.dc1"].members()} == {
        "node1.dc1",
        "node2.dc2",
    }


# --------------------------------------------------------------------------------------------
# version


async def test_version_changes_on_every_membership_change(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pools = Pools("abc")
    pool = pools.pools["a"]
    versions = [pool.version]

    def changed() -> None:
        assert pool.version != versions[-1]
        versions.append(pool.version)

    await pool.join([pools.address("b")])
    changed()
    await pools.pools["c"].join([pools.address("b")])
    changed()
    pools.pools["b"].set_tags({"role": "db"})
    changed()
    pools.network.kill("c")
    changed()
    assert await pool.force_leave("c") == "timed out broadcasting node removal"
    changed()
    pools.pools["a"].serf.reap(trio.current_time() + 2 * 86400)
    changed()
    # A cached list is returned until something changes.
    first = pool.members()
    assert pool.members() == first
    before = pool.version
    pools.network.settle()
    assert pool.version == before


# --------------------------------------------------------------------------------------------
# join


async def test_join_counts_and_error_texts(autojump_clock: trio.testing.MockClock) -> None:
    pools = Pools("abc")
    pool = pools.pools["a"]
    assert await pool.join([]) == (0, "")
    num, error = await pool.join(["127.0.0.9:8301", "127.0.0.8:8301"])
    assert num == 0
    assert error == (
        "2 error(s) occurred:\n\n"
        "* Failed to join 127.0.0.9:8301: connection refused\n"
        "* Failed to join 127.0.0.8:8301: connection refused"
    )
    num, error = await pool.join(["127.0.0.9:8301"])
    assert error == "1 error(s) occurred:\n\n* Failed to join 127.0.0.9:8301: connection refused"
    # Partly reachable: a success with the smaller count (as the reference).
    assert await pool.join(["127.0.0.9:8301", pools.address("b"), pools.address("c")]) == (2, "")
    assert pools.status("a", "b") == "alive" and pools.status("b", "a") == "alive"


def test_join_error_text_without_errors_is_empty() -> None:
    assert join_error_text([]) == ""


async def test_a_successful_join_gossips_a_join_intent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pools = Pools("ab")
    await pools.pools["a"].join([pools.address("b")])
    serf_a = pools.pools["a"].serf
    assert len(serf_a.broadcasts) == 1
    pools.network.settle()
    me_at_a, me_at_b = serf_a.member("a"), pools.pools["b"].serf.member("a")
    assert me_at_a is not None and me_at_b is not None
    assert me_at_a.status_ltime == me_at_b.status_ltime > 0


async def test_each_serf_broadcast_wakes_the_gossip_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Memberlist's gossip loop sleeps while nothing is queued: every queue of serf's (intents,
    user events, queries) must wake it, and ``has_broadcasts`` must say what is left."""
    pools = Pools("ab")
    pool, node = pools.pools["a"], pools.nodes["a"]
    assert not pool.serf.has_broadcasts()
    await pool.join([pools.address("b")])
    assert pool.serf.has_broadcasts()
    woken = node.gossip_wakeups
    assert woken >= 1
    pools.network.settle()
    assert not pool.serf.has_broadcasts()

    await pool.user_event("deploy", b"v2")
    assert node.gossip_wakeups == woken + 1 and pool.serf.has_broadcasts()
    pools.network.settle()
    assert not pool.serf.has_broadcasts()

    async with pool.query("ping", b"", timeout=1.0):
        assert node.gossip_wakeups == woken + 2 and pool.serf.has_broadcasts()
    pools.network.settle()
    assert not pool.serf.has_broadcasts()


async def test_join_is_refused_after_leave_and_without_memberlist(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pools = Pools("ab")
    await pools.pools["b"].leave()
    assert await pools.pools["b"].join([pools.address("a")]) == (
        0,
        "Serf can't Join after Leave or Shutdown",
    )
    bare = GossipPool("wan", SerfConfig(node_name="x.dc1"))
    num, error = await bare.join(["127.0.0.1:8302"])
    assert num == 0 and "WAN" in error
    assert await bare.leave() == ""
    assert bare.members() == []


# --------------------------------------------------------------------------------------------
# force-leave


async def test_force_leave_of_an_unknown_node_is_not_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pools = Pools("ab")
    await pools.join_all()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pools.network.gossip)
        assert await pools.pools["a"].force_leave("nobody") == ""
        nursery.cancel_scope.cancel()
    assert await Pools("z").pools["z"].force_leave("nobody") == ""  # alone: nothing to wait for


async def test_force_leave_moves_a_failed_node_to_left_everywhere(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pools = Pools("abc")
    await pools.join_all()
    pools.network.kill("c")
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pools.network.gossip)
        assert await pools.pools["a"].force_leave("c") == ""
        assert trio.current_time() - start < 1.5  # sent 4 times at 0.2 s a round
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert pools.status("a", "c") == "left" and pools.status("b", "c") == "left"
    assert "[INFO] serf: EventMemberLeave (forced): c 127.0.0.3" in pools.log("a")
    assert "[INFO] serf: EventMemberLeave (forced): c 127.0.0.3" in pools.log("b")


async def test_force_leave_times_out_when_nothing_is_gossiped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pools = Pools("abc")
    await pools.join_all()
    pools.network.kill("c")
    start = trio.current_time()
    assert await pools.pools["a"].force_leave("c") == "timed out broadcasting node removal"
    assert trio.current_time() - start == pytest.approx(5.0)
    assert pools.status("a", "c") == "left"


# --------------------------------------------------------------------------------------------
# leave


async def test_graceful_leave_ends_left_everywhere(autojump_clock: trio.testing.MockClock) -> None:
    pools = Pools("abc")
    await pools.join_all()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pools.network.gossip)
        start = trio.current_time()
        assert await pools.pools["c"].leave() == ""
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert 1.0 <= elapsed < 3.0  # the intent's rounds, then the 1 s propagate delay
    assert pools.nodes["c"].leave_calls == 1
    for observer in "abc":
        assert pools.status(observer, "c") == "left"
    assert "[INFO] serf: EventMemberLeave: c 127.0.0.3" in pools.log("a")
    assert pools.pools["c"].stats()["left"] == "1"
    assert await pools.pools["c"].leave() == ""  # again: nothing to do
    assert pools.nodes["c"].leave_calls == 1


async def test_a_second_leave_during_the_first_is_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pools = Pools("ab")
    await pools.join_all()
    results: list[str] = []

    async def leave() -> None:
        results.append(await pools.pools["a"].leave())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(leave)
        await trio.testing.wait_all_tasks_blocked()
        assert await pools.pools["a"].leave() == "Leave already in progress"
    assert results == [""]


async def test_leave_is_bounded_when_nothing_moves(autojump_clock: trio.testing.MockClock) -> None:
    pools = Pools("abc")
    await pools.join_all()
    pools.nodes["c"].leave_blocks = True
    start = trio.current_time()
    assert await pools.pools["c"].leave() == ""
    assert trio.current_time() - start == pytest.approx(5 + 5 + 1)
    assert pools.status("c", "c") == "left"
    log = pools.log("c")
    assert "[WARN] serf: timeout while waiting for graceful leave" in log
    assert "[WARN] serf: timeout waiting for leave broadcast" in log


async def test_leave_alone_is_immediate(autojump_clock: trio.testing.MockClock) -> None:
    pools = Pools("a")
    start = trio.current_time()
    assert await pools.pools["a"].leave() == ""
    assert trio.current_time() == start
    assert pools.status("a", "a") == "left"


# --------------------------------------------------------------------------------------------
# stats


async def test_stats_keys_and_values(autojump_clock: trio.testing.MockClock) -> None:
    pools = Pools("abcd", encrypted=True)
    await pools.join_all()
    pool = pools.pools["a"]
    pools.nodes["a"].health = 3
    pools.network.kill("c")
    pool.serf.force_leave("c")
    pools.network.kill("d")
    stats = pool.stats()
    assert set(stats) == SERF_STATS_KEYS
    assert all(isinstance(value, str) for value in stats.values())
    assert stats["encrypted"] == "true"
    assert stats["health_score"] == "3"
    assert (stats["members"], stats["failed"], stats["left"]) == ("4", "1", "1")
    assert stats["member_time"] == str(pool.serf.clock.time())
    assert stats["intent_queue"] == "1"
    assert (stats["event_queue"], stats["query_queue"]) == ("0", "0")
    assert (stats["event_time"], stats["query_time"]) == ("1", "1")
    assert Pools("z").pools["z"].stats()["encrypted"] == "false"


# --------------------------------------------------------------------------------------------
# run: reconnect and reap


async def test_run_reconnects_to_a_failed_member_that_came_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pools = Pools("ab")
    await pools.join_all()
    pools.network.kill("b")
    assert pools.status("a", "b") == "failed"
    pools.network.revive("b")
    async with trio.open_nursery() as nursery:
        await nursery.start(pools.pools["a"].run)
        await trio.sleep(29)
        assert pools.status("a", "b") == "failed"
        await trio.sleep(2)
        assert pools.status("a", "b") == "alive"
        nursery.cancel_scope.cancel()
    assert "[INFO] serf: attempting reconnect to b 127.0.0.2:8301" in pools.log("a")
    assert pools.nodes["a"].join_calls[-1] == ["127.0.0.2:8301"]


async def test_run_reaps_failed_and_left_members(autojump_clock: trio.testing.MockClock) -> None:
    pools = Pools("abc", reconnect_timeout=100.0, tombstone_timeout=40.0)
    await pools.join_all()
    pools.network.kill("b")  # stays dead: reconnects fail
    pools.network.kill("c")
    pools.pools["a"].serf.force_leave("c")
    async with trio.open_nursery() as nursery:
        await nursery.start(pools.pools["a"].run)
        await trio.sleep(46)
        assert pools.status("a", "c") is None and pools.status("a", "b") == "failed"
        await trio.sleep(60)
        assert pools.status("a", "b") is None
        nursery.cancel_scope.cancel()
    assert [member.name for member in pools.pools["a"].members()] == ["a"]
    assert "[INFO] serf: EventMemberReap: c" in pools.log("a")
    assert "[INFO] serf: attempting reconnect to b" in pools.log("a")


async def test_run_stops_when_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    pools = Pools("a")
    with trio.move_on_after(3600) as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(pools.pools["a"].run)
            await trio.sleep(100)
            nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught
    assert pools.pools["a"].stats()["members"] == "1"


async def test_no_reconnect_after_leaving(autojump_clock: trio.testing.MockClock) -> None:
    pools = Pools("ab")
    await pools.join_all()
    pools.network.kill("b")
    await pools.pools["a"].leave()
    assert await pools.pools["a"].reconnect_once() is False


# --------------------------------------------------------------------------------------------
# tags and logs


async def test_set_tags_reaches_the_other_members(autojump_clock: trio.testing.MockClock) -> None:
    pools = Pools("ab")
    await pools.join_all()
    pools.pools["b"].set_tags({"role": "db", "dc": "dc1"})
    tags = {member.name: member.tags for member in pools.pools["a"].members()}
    assert tags["b"] == {"role": "db", "dc": "dc1"}
    assert "[INFO] serf: EventMemberUpdate: b" in pools.log("a")
    with pytest.raises(TagsTooLargeError):
        pools.pools["b"].set_tags({"x": "y" * 600})


async def test_membership_changes_are_logged_in_serf_style(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pools = Pools("ab")
    await pools.join_all()
    pools.network.kill("b")
    log = pools.log("a")
    assert "[INFO] serf: EventMemberJoin: a 127.0.0.1" in log
    assert "[INFO] serf: EventMemberJoin: b 127.0.0.2" in log
    assert "[INFO] serf: EventMemberFailed: b 127.0.0.2" in log


# --------------------------------------------------------------------------------------------
# Through the agent's RPC


async def test_the_agent_serves_a_gossip_pool(autojump_clock: trio.testing.MockClock) -> None:
    pools = Pools("")
    for name in ("node1", "b", "c"):
        pools.add(name)
    await pools.join_all()
    pools.network.kill("c")
    async with running_agent("memory", lan=pools.pools["node1"]) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        members = (await conn.call("members-lan", reply_body=True)).body["Members"]
        assert {m["Name"]: m["Status"] for m in members} == {
            "node1": "alive",
            "b": "alive",
            "c": "failed",
        }
        stats = (await conn.call("stats", reply_body=True)).body["serf_lan"]
        assert set(stats) == SERF_STATS_KEYS and stats["failed"] == "1"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pools.network.gossip)
            assert (await conn.call("force-leave", {"Node": "c"})).error == ""
            nursery.cancel_scope.cancel()
        members = (await conn.call("members-lan", reply_body=True)).body["Members"]
        assert {m["Name"]: m["Status"] for m in members}["c"] == "left"
        response = await conn.call("join", {"Existing": ["127.0.0.99:8301"]}, reply_body=True)
        assert response.body == {"Num": 0}
        assert response.error.startswith("1 error(s) occurred:\n\n* Failed to join 127.0.0.99")
