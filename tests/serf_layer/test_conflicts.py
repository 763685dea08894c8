"""Name conflicts like serf's: memberlist's NotifyConflict (real engines over the in-memory
network), serf's log lines, the ``_serf_conflict`` vote and the minority's shutdown request."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing
from pool_cluster import pool_cluster
from serf_helpers import Serf, node_info

from agentrpc.gossip.contract import GossipAddress
from agentrpc.gossip.memberlist import Memberlist, MemberlistConfig
from agentrpc.gossip.profiles import LAN
from agentrpc.gossip.serf import ConflictDetected, SerfConfig
from agentrpc.gossip.serf_conflict import ConflictVote, same_ip
from agentrpc.gossip.serf_messages import WireMember, encode_conflict_response
from agentrpc.gossip.transport import MemoryGossipNetwork
from agentrpc.log_protocol import CaptureLog
from agentrpc.membership.gossip_pool import GossipPool, PoolShutdown

LOCAL = bytes([127, 0, 0, 1])


def test_serfs_lines_for_a_conflict_about_another_node_and_about_us() -> None:
    serf = Serf("a")
    serf.join_self()
    serf.state.notify_join(node_info("b", "127.0.0.2"))
    serf.state.notify_conflict(node_info("b", "127.0.0.2"), node_info("b", "127.0.0.7", port=1))
    assert serf.log.has(
        "WARN Name conflict for 'b' both 127.0.0.2:7946 and 127.0.0.7:1 are claiming"
    )
    assert serf.state.take_events() == []
    local = serf.state.member("a")
    assert local is not None
    me = node_info("a", "127.0.0.1")
    serf.state.notify_conflict(me, node_info("a", "127.0.0.8", port=9))
    serf.state.notify_conflict(me, node_info("a", "127.0.0.8", port=9))  # one at a time
    assert serf.log.has(
        "ERR Node name conflicts with another node at 127.0.0.8:9. Names must be unique! "
        "(Resolution enabled: true)"
    )
    assert serf.state.take_events() == [ConflictDetected(GossipAddress("127.0.0.8", 9))]
    serf.state.conflict_resolved()
    serf.state.notify_conflict(me, node_info("a", "127.0.0.8", port=9))
    assert len(serf.state.take_events()) == 1


def vote_of(answers: list[WireMember | None]) -> ConflictVote:
    vote = ConflictVote(LOCAL, 7946)
    for answer in answers:
        assert vote.add(encode_conflict_response(answer)) is None
    return vote


def member(addr: bytes, port: int = 7946) -> WireMember:
    return WireMember("a", addr, port)


def test_the_majority_vote() -> None:
    mapped = bytes(10) + b"\xff\xff" + LOCAL  # Go's 16-byte form of an IPv4 address
    assert same_ip(mapped, LOCAL)
    other = bytes([127, 0, 0, 8])
    assert vote_of([member(LOCAL), member(mapped), member(other)]).outcome() == (
        True,
        (2, "majority in name conflict resolution [2 / 3]"),
    )
    assert vote_of([member(LOCAL), member(other)]).outcome() == (
        False,
        (3, "minority in name conflict resolution, quitting [1 / 2]"),
    )
    assert vote_of([member(LOCAL, 1), None]).outcome()[0] is False  # wrong port, unknown
    assert vote_of([]).outcome() == (
        False,
        (3, "minority in name conflict resolution, quitting [0 / 0]"),
    )
    vote = ConflictVote(LOCAL, 7946)
    problem = vote.add(b"\x08junk")
    assert problem is not None and "Invalid conflict query response type" in problem[1]
    assert vote.responses == 0


async def start_pool(
    nursery: trio.Nursery, network: MemoryGossipNetwork, name: str, host: str
) -> tuple[GossipPool, Memberlist, CaptureLog]:
    """A pool over a real memberlist on the in-memory network, wired as start_pool wires."""
    log = CaptureLog()
    pool = GossipPool(
        "lan",
        SerfConfig(node_name=name, gossip_interval=LAN.gossip_interval),
        logger=log,
        rng=random.Random(host),
    )
    memberlist = Memberlist(
        MemberlistConfig(name=name, bind=GossipAddress(host, 7946)),
        pool.delegate,
        pool.delegate,
        log,
        network.transport(),
        random.Random(host),
        conflict=pool.delegate,
    )
    pool.attach(memberlist)
    await nursery.start(memberlist.run)
    await nursery.start(pool.run)
    return pool, memberlist, log


async def test_an_engine_that_takes_a_known_name_loses_the_vote_and_asks_to_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Real memberlists: NotifyConflict reaches serf on both sides of the conflict, the
    newcomer's ``_serf_conflict`` query is answered by the others, and it is the minority."""
    network = MemoryGossipNetwork()
    async with trio.open_nursery() as nursery:
        x, x_list, x_log = await start_pool(nursery, network, "x", "127.0.0.1")
        w, _, w_log = await start_pool(nursery, network, "w", "127.0.0.2")
        v, _, _ = await start_pool(nursery, network, "v", "127.0.0.4")
        assert await w.join(["127.0.0.1:7946"]) == (1, "")
        assert await v.join(["127.0.0.1:7946"]) == (1, "")
        impostor, _, impostor_log = await start_pool(nursery, network, "x", "127.0.0.3")
        assert await impostor.join(["127.0.0.2:7946"]) == (1, "")
        with trio.fail_after(30):
            await impostor.shutdown_requested.wait()
        assert impostor_log.has(
            "ERR Node name conflicts with another node at 127.0.0.1:7946. Names must be "
            "unique! (Resolution enabled: true)"
        )
        assert impostor.shutdown_reason == "minority in name conflict resolution, quitting [0 / 2]"
        assert w_log.has("WARN Name conflict for 'x' both 127.0.0.1:7946 and 127.0.0.3:7946")
        assert w_log.has("Got conflict resolution query for 'x'")
        # The original keeps its name where the others see it.
        member = w.serf.member("x")
        assert member is not None and member.addr == bytes([127, 0, 0, 1])
        assert not x.shutdown_requested.is_set()
        assert x_list.node("x") is not None
        del x_log
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("honest_votes", [2, 0])
async def test_the_pool_resolves_a_conflict_about_itself(
    autojump_clock: trio.testing.MockClock, honest_votes: int
) -> None:
    """The others know "a" at a's address: a keeps its name. When they know it elsewhere
    (here: the fake's view of a is rewritten), a is in the minority and asks to shut down."""
    async with pool_cluster("abc") as cluster:
        pool = cluster.pools["a"]
        if honest_votes == 0:
            for name in "bc":
                serf = cluster.pools[name].serf
                elsewhere = node_info("a", "127.0.0.9", tags={"role": "node", "id": "a"})
                serf.notify_join(elsewhere)  # their member "a" now lives at 127.0.0.9
        async with pool.subscribe() as events:
            cluster.nodes["a"].conflict(node_info("a", "127.0.0.9"))
            with trio.fail_after(10):
                if honest_votes:
                    # The outcome is only logged: poll (free under the autojump clock).
                    while "majority in name conflict resolution" not in cluster.log("a"):  # noqa: ASYNC110
                        await trio.sleep(0.5)
                else:
                    await pool.shutdown_requested.wait()
            if honest_votes:
                assert "[INFO] serf: majority in name conflict resolution [2 / 2]" in cluster.log(
                    "a"
                )
                assert not pool.shutdown_requested.is_set()
            else:
                assert pool.shutdown_reason == (
                    "minority in name conflict resolution, quitting [0 / 2]"
                )
                assert "[WARN] serf: minority in name conflict resolution, quitting [0 / 2]" in (
                    cluster.log("a")
                )
                assert PoolShutdown(pool.shutdown_reason) in events.pending()
        assert "Got conflict resolution query for 'a'" in cluster.log("b")
        # The resolution is over: a later conflict starts another one.
        pool.serf.take_events()
        cluster.nodes["a"].conflict(node_info("a", "127.0.0.9"))
        assert any(isinstance(e, ConflictDetected) for e in pool.serf.take_events())
