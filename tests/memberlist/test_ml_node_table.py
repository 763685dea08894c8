"""The sans-I/O node table: memberlist's alive/suspect/dead rules, merge, suspicion, peers."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

import pytest

from agentrpc.gossip.contract import NodeInfo
from agentrpc.gossip.messages import (
    Alive,
    Dead,
    GossipMessage,
    NodeState,
    PushNodeState,
    Suspect,
    Vsn,
    decode_message,
)
from agentrpc.gossip.node_table import NO_VSN, NodeTable, ProtocolVersionError
from agentrpc.gossip.profiles import LAN, GossipProfile
from agentrpc.log_protocol import CaptureLog

VSN: Vsn = (1, 5, 2, 2, 5, 4)
SERF_VSN: Vsn = (1, 5, 2, 2, 5, 5)
LOCAL_ADDR = bytes([127, 0, 0, 1])
T0 = 1000.0


def addr(n: int) -> bytes:
    return bytes([127, 0, 0, n])


@dataclass
class Events:
    joins: list[NodeInfo] = field(default_factory=list)
    leaves: list[NodeInfo] = field(default_factory=list)
    updates: list[NodeInfo] = field(default_factory=list)

    def notify_join(self, node: NodeInfo) -> None:
        self.joins.append(node)

    def notify_leave(self, node: NodeInfo) -> None:
        self.leaves.append(node)

    def notify_update(self, node: NodeInfo) -> None:
        self.updates.append(node)


Log = CaptureLog


class Harness:
    def __init__(self, profile: GossipProfile = LAN, seed: int = 1) -> None:
        self.events = Events()
        self.log = Log()
        self.wakeups = 0
        self.table = NodeTable(
            "a",
            profile,
            rng=random.Random(seed),
            events=self.events,
            log=self.log,
            on_suspicion_change=self._wake,
        )
        self.table.set_alive(LOCAL_ADDR, 7946, b"meta-a", VSN, T0)

    def _wake(self) -> None:
        self.wakeups += 1

    def add(self, name: str, n: int, incarnation: int = 1, now: float = T0) -> None:
        self.table.alive(Alive(incarnation, name, addr(n), 7946, b"m", SERF_VSN), now)

    def send_once(self) -> list[GossipMessage]:
        """Every queued broadcast, decoded, counted as sent once (still queued if under
        the retransmit limit)."""
        payloads = self.table.broadcasts.get_broadcasts(0, 1 << 20)
        return [decode_message(p[0], p[1:]) for p in payloads]

    def drain(self) -> list[GossipMessage]:
        """Every queued broadcast, decoded; the queue is emptied."""
        messages = self.send_once()
        self.table.broadcasts.reset()
        return messages

    def clear(self) -> None:
        self.table.broadcasts.reset()
        self.events.joins.clear()
        self.events.leaves.clear()
        self.events.updates.clear()

    def state(self, name: str) -> NodeState:
        info = self.table.get(name)
        assert info is not None
        return info.state

    def incarnation(self, name: str) -> int:
        info = self.table.get(name)
        assert info is not None
        return info.incarnation


def cluster(n: int, profile: GossipProfile = LAN) -> Harness:
    """Local node 'a' plus peers b, c, ... (n nodes in all), broadcasts drained."""
    h = Harness(profile)
    for index in range(1, n):
        h.add(chr(ord("a") + index), index + 1)
    h.clear()
    return h


# --------------------------------------------------------------------------------------------
# The local node.


def test_set_alive_announces_the_local_node() -> None:
    h = Harness()
    local = h.table.local()
    assert local is not None
    assert (local.name, local.state, local.incarnation, local.meta, local.vsn) == (
        "a",
        NodeState.ALIVE,
        1,
        b"meta-a",
        VSN,
    )
    assert [n.name for n in h.events.joins] == ["a"]
    assert h.drain() == [Alive(1, "a", LOCAL_ADDR, 7946, b"meta-a", VSN)]
    assert h.table.num_alive() == 1
    assert not h.table.any_alive_peer()


def test_update_local_bumps_incarnation_and_reports_an_update() -> None:
    h = cluster(2)
    h.table.update_local(b"new-meta", T0 + 1)
    assert h.incarnation("a") == 2
    assert [n.meta for n in h.events.updates] == [b"new-meta"]
    assert h.drain() == [Alive(2, "a", LOCAL_ADDR, 7946, b"new-meta", VSN)]


# --------------------------------------------------------------------------------------------
# aliveNode.


def test_new_node_joins_and_is_rebroadcast() -> None:
    h = cluster(1)
    message = Alive(3, "b", addr(2), 7000, b"tags", SERF_VSN)
    h.table.alive(message, T0)
    assert [(n.name, n.state, n.incarnation, n.port) for n in h.events.joins] == [
        ("b", NodeState.ALIVE, 3, 7000)
    ]
    assert h.drain() == [message]
    assert h.table.num_alive() == 2
    assert h.table.any_alive_peer()


def test_alive_needs_a_newer_incarnation_for_other_nodes() -> None:
    h = cluster(2)
    h.table.alive(Alive(1, "b", addr(2), 7946, b"changed", SERF_VSN), T0)
    h.table.alive(Alive(0, "b", addr(2), 7946, b"changed", SERF_VSN), T0)
    assert h.drain() == []
    assert h.events.updates == []
    h.table.alive(Alive(2, "b", addr(2), 7946, b"changed", SERF_VSN), T0)
    assert h.incarnation("b") == 2
    assert [n.meta for n in h.events.updates] == [b"changed"]
    assert h.events.joins == []


def test_alive_with_same_meta_is_not_an_update() -> None:
    h = cluster(2)
    h.table.alive(Alive(5, "b", addr(2), 7946, b"m", SERF_VSN), T0)
    assert h.events.updates == [] and h.events.joins == []
    assert h.incarnation("b") == 5


@pytest.mark.parametrize("vsn", [(0, 5, 2, 2, 5, 4), (1, 0, 2, 2, 5, 4), (3, 2, 2, 2, 5, 4)])
def test_alive_with_wrong_protocol_versions_is_ignored(vsn: Vsn) -> None:
    h = cluster(1)
    h.table.alive(Alive(1, "b", addr(2), 7946, b"", vsn), T0)
    assert h.table.get("b") is None
    assert "protocol version(s) are wrong" in h.log.text()


def test_alive_without_vsn_is_accepted_with_zero_versions() -> None:
    h = cluster(1)
    h.table.alive(Alive(1, "b", addr(2), 7946, b"", None), T0)
    info = h.table.get("b")
    assert info is not None and info.vsn == NO_VSN


def test_alive_with_a_bad_address_or_oversized_meta_is_ignored() -> None:
    h = cluster(1)
    h.table.alive(Alive(1, "b", b"\x01\x02", 7946, b"", SERF_VSN), T0)
    h.table.alive(Alive(1, "c", addr(3), 7946, b"x" * 513, SERF_VSN), T0)
    assert h.table.get("b") is None and h.table.get("c") is None


def test_conflicting_address_for_a_live_node_is_rejected() -> None:
    h = cluster(2)
    h.table.alive(Alive(9, "b", addr(99), 7946, b"m", SERF_VSN), T0)
    info = h.table.get("b")
    assert info is not None and info.addr == addr(2) and info.incarnation == 1
    assert "Conflicting address for b" in h.log.text()


def test_left_node_may_come_back_from_a_new_address_even_with_an_old_incarnation() -> None:
    h = cluster(2)
    h.table.dead(Dead(1, "b", "b"), T0)
    assert h.state("b") == NodeState.LEFT
    h.table.alive(Alive(1, "b", addr(50), 8000, b"m", SERF_VSN), T0 + 1)
    info = h.table.get("b")
    assert info is not None
    assert (info.state, info.addr, info.port) == (NodeState.ALIVE, addr(50), 8000)
    assert [n.name for n in h.events.joins] == ["b"]
    assert "Updating address for left or failed node b" in h.log.text()


def test_dead_node_address_reclaim_needs_dead_node_reclaim_time() -> None:
    h = cluster(2)
    h.table.dead(Dead(1, "b", "a"), T0)
    h.table.alive(Alive(2, "b", addr(50), 7946, b"m", SERF_VSN), T0 + 100)
    assert h.state("b") == NodeState.DEAD  # reclaim time 0: never

    h2 = cluster(2, replace(LAN, dead_node_reclaim_time=10.0))
    h2.table.dead(Dead(1, "b", "a"), T0)
    h2.table.alive(Alive(2, "b", addr(50), 7946, b"m", SERF_VSN), T0 + 5)
    assert h2.state("b") == NodeState.DEAD  # too early
    h2.table.alive(Alive(2, "b", addr(50), 7946, b"m", SERF_VSN), T0 + 11)
    assert h2.state("b") == NodeState.ALIVE


def test_dead_node_comes_back_alive_with_a_newer_incarnation() -> None:
    h = cluster(3)
    h.table.dead(Dead(1, "b", "c"), T0)
    h.clear()
    h.table.alive(Alive(1, "b", addr(2), 7946, b"m", SERF_VSN), T0 + 1)
    assert h.state("b") == NodeState.DEAD
    h.table.alive(Alive(2, "b", addr(2), 7946, b"m", SERF_VSN), T0 + 1)
    assert h.state("b") == NodeState.ALIVE
    assert [n.name for n in h.events.joins] == ["b"]


# --------------------------------------------------------------------------------------------
# Refutation of claims about ourselves.


def test_same_alive_about_ourselves_is_ignored() -> None:
    h = cluster(2)
    h.table.alive(Alive(1, "a", LOCAL_ADDR, 7946, b"meta-a", VSN), T0)
    assert h.drain() == []
    assert h.incarnation("a") == 1
    assert h.table.awareness.score == 0


def test_alive_about_ourselves_with_other_meta_is_refuted() -> None:
    h = cluster(2)
    h.table.alive(Alive(1, "a", LOCAL_ADDR, 7946, b"stale-meta", VSN), T0)
    assert h.incarnation("a") == 2
    assert h.table.awareness.score == 1
    assert h.drain() == [Alive(2, "a", LOCAL_ADDR, 7946, b"meta-a", VSN)]
    assert "Refuting an alive message for 'a'" in h.log.text()


def test_newer_alive_about_ourselves_is_refuted_above_it() -> None:
    h = cluster(2)
    h.table.alive(Alive(7, "a", LOCAL_ADDR, 7946, b"meta-a", VSN), T0)
    assert h.incarnation("a") == 8
    assert h.table.local_incarnation == 8


def test_older_alive_about_ourselves_is_ignored() -> None:
    h = cluster(2)
    h.table.update_local(b"meta-a", T0)  # incarnation 2
    h.clear()
    h.table.alive(Alive(1, "a", LOCAL_ADDR, 7946, b"other", VSN), T0)
    assert h.incarnation("a") == 2
    assert h.drain() == []


def test_suspect_about_ourselves_with_an_older_incarnation_is_ignored() -> None:
    h = cluster(3)
    h.table.suspect(Suspect(0, "a", "b"), T0)
    assert h.incarnation("a") == 1
    assert h.drain() == []


@pytest.mark.parametrize(("accused", "expected"), [(1, 2), (5, 6)])
def test_suspect_about_ourselves_is_refuted(accused: int, expected: int) -> None:
    h = cluster(3)
    h.table.suspect(Suspect(accused, "a", "b"), T0)
    assert h.state("a") == NodeState.ALIVE
    assert h.incarnation("a") == expected
    assert h.table.awareness.score == 1
    assert h.drain() == [Alive(expected, "a", LOCAL_ADDR, 7946, b"meta-a", VSN)]
    assert "Refuting a suspect message (from: b)" in h.log.text()
    assert h.table.next_suspicion_deadline() is None


def test_dead_about_ourselves_is_refuted_unless_leaving() -> None:
    h = cluster(3)
    h.table.dead(Dead(4, "a", "b"), T0)
    assert h.state("a") == NodeState.ALIVE
    assert h.incarnation("a") == 5
    assert h.events.leaves == []
    assert "Refuting a dead message (from: b)" in h.log.text()


def test_refutations_raise_the_health_score_up_to_its_cap() -> None:
    h = cluster(3)
    for accused in range(20):
        h.table.suspect(Suspect(h.incarnation("a") + accused, "a", "b"), T0)
    assert h.table.awareness.score == LAN.awareness_max_multiplier - 1


# --------------------------------------------------------------------------------------------
# suspectNode and the Lifeguard timer.


def test_suspect_unknown_or_older_is_ignored() -> None:
    h = cluster(3)
    h.table.suspect(Suspect(1, "zz", "b"), T0)
    h.add("b", 2, incarnation=3)
    h.clear()
    h.table.suspect(Suspect(2, "b", "c"), T0)
    assert h.state("b") == NodeState.ALIVE
    assert h.drain() == []


def test_suspect_marks_node_and_rebroadcasts() -> None:
    h = cluster(3)
    before = h.wakeups
    h.table.suspect(Suspect(1, "b", "c"), T0 + 2)
    info = h.table.get("b")
    assert info is not None
    assert (info.state, info.state_change) == (NodeState.SUSPECT, T0 + 2)
    assert h.drain() == [Suspect(1, "b", "c")]
    assert h.wakeups == before + 1
    # 3 nodes: k = 0, so the timer is the minimum: 4 s on LAN.
    assert h.table.next_suspicion_deadline() == pytest.approx(T0 + 2 + 4.0)


def test_suspect_on_a_dead_node_is_ignored() -> None:
    h = cluster(3)
    h.table.dead(Dead(1, "b", "c"), T0)
    h.clear()
    h.table.suspect(Suspect(1, "b", "c"), T0)
    assert h.state("b") == NodeState.DEAD
    assert h.drain() == []


def test_confirmations_shrink_the_suspicion_timeout() -> None:
    h = cluster(6)  # LAN, n = 6: k = 2, min 4 s, max 24 s (log10(6) < 1)
    h.table.suspect(Suspect(1, "b", "c"), T0)
    suspicion = h.table.suspicion("b")
    assert suspicion is not None and suspicion.k == 2
    assert h.table.next_suspicion_deadline() == pytest.approx(T0 + 24.0)
    h.drain()

    h.table.suspect(Suspect(1, "b", "c"), T0 + 1)  # the originator: no confirmation
    h.table.suspect(Suspect(1, "b", "d"), T0 + 1)
    one = 24.0 - math.log(2) / math.log(3) * 20.0
    assert h.table.next_suspicion_deadline() == pytest.approx(T0 + math.floor(one * 1000) / 1000)
    assert h.drain() == [Suspect(1, "b", "d")]

    h.table.suspect(Suspect(1, "b", "d"), T0 + 2)  # repeated: nothing new, not re-gossiped
    assert h.drain() == []
    h.table.suspect(Suspect(1, "b", "e"), T0 + 2)
    assert h.table.next_suspicion_deadline() == pytest.approx(T0 + 4.0)
    assert h.drain() == [Suspect(1, "b", "e")]

    h.table.suspect(Suspect(1, "b", "f"), T0 + 3)  # k reached: ignored
    assert h.drain() == []


def test_expire_marks_suspects_dead_when_their_time_is_up() -> None:
    h = cluster(3)
    h.table.suspect(Suspect(1, "b", "c"), T0)
    h.drain()
    assert h.table.expire(T0 + 3.999) == []
    assert h.state("b") == NodeState.SUSPECT
    assert h.table.expire(T0 + 4.0) == ["b"]
    assert h.state("b") == NodeState.DEAD
    assert [(n.name, n.state) for n in h.events.leaves] == [("b", NodeState.DEAD)]
    assert h.drain() == [Dead(1, "b", "a")]
    assert "Marking b as failed, suspect timeout reached (0 peer confirmations)" in h.log.text()
    assert h.table.next_suspicion_deadline() is None


def test_refuted_suspicion_never_expires() -> None:
    h = cluster(3)
    h.table.suspect(Suspect(1, "b", "c"), T0)
    h.table.alive(Alive(2, "b", addr(2), 7946, b"m", SERF_VSN), T0 + 1)
    assert h.state("b") == NodeState.ALIVE
    assert h.table.next_suspicion_deadline() is None
    assert h.table.expire(T0 + 100) == []
    assert h.events.leaves == []


def test_timeout_grows_with_the_cluster_size() -> None:
    h = cluster(12)  # log10(12) = 1.079: min 4.316 s; k = 2: starts at max
    h.table.suspect(Suspect(1, "b", "c"), T0)
    assert h.table.next_suspicion_deadline() == pytest.approx(T0 + 6 * 4.316)


# --------------------------------------------------------------------------------------------
# deadNode, leave.


def test_dead_from_another_node_means_dead_and_from_itself_means_left() -> None:
    h = cluster(4)
    h.table.dead(Dead(1, "b", "c"), T0)
    h.table.dead(Dead(1, "c", "c"), T0)
    assert (h.state("b"), h.state("c")) == (NodeState.DEAD, NodeState.LEFT)
    assert [(n.name, n.state) for n in h.events.leaves] == [
        ("b", NodeState.DEAD),
        ("c", NodeState.LEFT),
    ]
    assert set(h.drain()) == {Dead(1, "b", "c"), Dead(1, "c", "c")}
    assert h.table.num_alive() == 2


def test_dead_is_applied_once_and_older_incarnations_are_ignored() -> None:
    h = cluster(3)
    h.add("b", 2, incarnation=4)
    h.clear()
    h.table.dead(Dead(3, "b", "c"), T0)
    assert h.state("b") == NodeState.ALIVE
    h.table.dead(Dead(4, "b", "c"), T0)
    h.table.dead(Dead(5, "b", "b"), T0)
    assert h.state("b") == NodeState.DEAD
    assert len(h.events.leaves) == 1


def test_dead_clears_a_running_suspicion() -> None:
    h = cluster(3)
    h.table.suspect(Suspect(1, "b", "c"), T0)
    h.table.dead(Dead(1, "b", "c"), T0 + 1)
    assert h.table.next_suspicion_deadline() is None
    assert h.table.expire(T0 + 100) == []
    assert len(h.events.leaves) == 1


def test_leave_broadcasts_our_own_dead_and_reports_when_sent() -> None:
    h = cluster(3)
    finished: list[bool] = []
    assert h.table.leave(T0, finished=lambda: finished.append(True))
    assert h.table.has_left
    assert h.state("a") == NodeState.LEFT
    limit = h.table.broadcasts.transmit_limit()
    for _ in range(limit - 1):
        assert h.send_once() == [Dead(1, "a", "a")]
        assert finished == []
    assert h.send_once() == [Dead(1, "a", "a")]
    assert finished == [True]
    assert not h.table.leave(T0)  # only once
    # Once left, alive and suspect about ourselves change nothing.
    h.table.alive(Alive(9, "a", LOCAL_ADDR, 7946, b"x", VSN), T0)
    h.table.suspect(Suspect(9, "a", "b"), T0)
    assert h.state("a") == NodeState.LEFT
    assert h.drain() == []


def test_newer_broadcast_about_a_node_replaces_the_queued_one() -> None:
    h = cluster(3)
    h.table.suspect(Suspect(1, "b", "c"), T0)
    h.table.alive(Alive(2, "b", addr(2), 7946, b"m", SERF_VSN), T0)
    assert len(h.table.broadcasts) == 1
    assert h.drain() == [Alive(2, "b", addr(2), 7946, b"m", SERF_VSN)]


# --------------------------------------------------------------------------------------------
# Push/pull merge and verifyProtocol.


def push(
    name: str, n: int, state: int, incarnation: int = 1, vsn: Vsn | None = SERF_VSN
) -> PushNodeState:
    return PushNodeState(name, addr(n), 7946, b"m", incarnation, int(state), vsn)


def test_merge_applies_each_state_by_memberlists_rules() -> None:
    h = cluster(4)  # a, b, c, d alive
    h.table.merge(
        [
            push("b", 2, NodeState.DEAD),  # downgraded to suspect
            push("c", 3, NodeState.SUSPECT),
            push("d", 4, NodeState.LEFT),  # a voluntary dead: left
            push("e", 5, NodeState.ALIVE, incarnation=3),
            push("f", 6, NodeState.DEAD),  # unknown: ignored
            push("g", 7, 7),  # unknown state value: ignored
        ],
        T0,
    )
    assert h.state("b") == NodeState.SUSPECT
    assert h.state("c") == NodeState.SUSPECT
    assert h.state("d") == NodeState.LEFT
    assert h.state("e") == NodeState.ALIVE
    assert h.table.get("f") is None and h.table.get("g") is None
    suspicion = h.table.suspicion("b")
    assert suspicion is not None and suspicion.confirmations == 0
    messages = h.drain()
    assert Suspect(1, "b", "a") in messages and Dead(1, "d", "d") in messages


def test_merge_of_our_own_death_is_refuted() -> None:
    h = cluster(2)
    h.table.merge([push("a", 1, NodeState.DEAD, incarnation=3, vsn=VSN)], T0)
    assert h.state("a") == NodeState.ALIVE
    assert h.incarnation("a") == 4


def test_push_states_describe_every_node() -> None:
    h = cluster(3)
    h.table.dead(Dead(1, "c", "c"), T0)
    states = {s.name: s for s in h.table.push_states()}
    assert set(states) == {"a", "b", "c"}
    assert states["a"] == PushNodeState("a", LOCAL_ADDR, 7946, b"meta-a", 1, 0, VSN)
    assert states["c"].state == NodeState.LEFT


def test_verify_protocol_rejects_a_delegate_version_outside_the_range() -> None:
    h = cluster(2)
    foreign = push("x", 9, NodeState.ALIVE, vsn=(1, 5, 2, 0, 0, 0))
    with pytest.raises(ProtocolVersionError) as info:
        h.table.merge([foreign], T0)
    assert str(info.value) == "Node 'x' delegate protocol version (0) is incompatible: [2, 0]"
    assert h.table.get("x") is None  # nothing merged


def test_verify_protocol_rejects_a_protocol_version_outside_the_range() -> None:
    h = cluster(2)
    newer = push("x", 9, NodeState.ALIVE, vsn=(3, 6, 6, 2, 5, 4))
    with pytest.raises(ProtocolVersionError) as info:
        h.table.verify_protocol([newer])
    assert str(info.value) == "Node 'x' protocol version (6) is incompatible: [3, 5]"
    older = push("y", 9, NodeState.ALIVE, vsn=(3, 5, 3, 2, 5, 4))
    with pytest.raises(ProtocolVersionError, match=r"Node 'a' protocol version \(2\) .*\[3, 5\]"):
        h.table.verify_protocol([older])


def test_verify_protocol_rejects_a_node_that_cannot_speak_our_delegate_version() -> None:
    h = cluster(1)
    consul = push("consul", 9, NodeState.ALIVE, vsn=(1, 5, 2, 2, 4, 4))
    h.table.verify_protocol([consul])  # our 4 is inside [2, 4]
    serf = push("serf", 8, NodeState.ALIVE, vsn=(1, 5, 2, 2, 5, 5))
    with pytest.raises(ProtocolVersionError, match=r"'serf' delegate protocol version \(5\)"):
        h.table.verify_protocol([consul, serf])


def test_verify_protocol_ignores_ranges_of_nodes_not_alive() -> None:
    h = cluster(1)
    dead = push("old", 9, NodeState.DEAD, vsn=(1, 5, 2, 2, 3, 2))
    h.table.verify_protocol([dead])  # its max 3 does not bound us, its cur 2 fits [2, 5]


# --------------------------------------------------------------------------------------------
# Choosing peers.


def test_probe_round_robin_skips_us_and_dead_and_left_nodes() -> None:
    h = cluster(5)
    h.table.dead(Dead(1, "c", "a"), T0)
    h.table.dead(Dead(1, "d", "d"), T0)
    seen = []
    for _ in range(6):
        target = h.table.next_probe_target(T0)
        assert target is not None
        seen.append(target.name)
    assert set(seen) == {"b", "e"}
    assert seen[0] != seen[1]  # one pass visits each once


def test_dead_nodes_are_forgotten_after_gossip_to_the_dead_time() -> None:
    h = cluster(3)
    h.table.dead(Dead(1, "b", "a"), T0)
    h.table.dead(Dead(1, "c", "c"), T0)
    assert h.table.next_probe_target(T0 + 1) is None
    assert h.table.get("b") is not None
    assert h.table.next_probe_target(T0 + LAN.gossip_to_the_dead_time + 1) is None
    assert h.table.get("b") is None  # reaped
    assert h.table.get("c") is not None  # left nodes stay, as in memberlist
    assert len(h.table) == 2


def test_gossip_targets_include_recently_dead_but_not_left_or_us() -> None:
    h = cluster(5)
    h.table.dead(Dead(1, "b", "a"), T0)
    h.table.dead(Dead(1, "c", "c"), T0)
    h.table.suspect(Suspect(1, "d", "a"), T0)
    recent = {n.name for n in h.table.gossip_targets(10, T0 + 1)}
    assert recent == {"b", "d", "e"}
    later = {n.name for n in h.table.gossip_targets(10, T0 + LAN.gossip_to_the_dead_time + 1)}
    assert later == {"d", "e"}
    assert len(h.table.gossip_targets(2, T0)) == 2


def test_indirect_helpers_and_push_pull_target_are_alive_peers() -> None:
    h = cluster(5)
    h.table.suspect(Suspect(1, "c", "a"), T0)
    helpers = {n.name for n in h.table.indirect_helpers(3, "b")}
    assert helpers == {"d", "e"}
    for _ in range(20):
        target = h.table.push_pull_target()
        assert target is not None and target.name in {"b", "d", "e"}
    lonely = cluster(1)
    assert lonely.table.push_pull_target() is None
    assert lonely.table.indirect_helpers(3, "x") == []
