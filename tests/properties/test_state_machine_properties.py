"""Property-based tests of the gossip state machines (hypothesis): order independence of
serf's Lamport-ordered intents, and memberlist's incarnation rules."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings, strategies as st

from agentrpc.gossip.contract import NodeInfo, NodeState
from agentrpc.gossip.messages import Alive, Dead, PushNodeState, Suspect
from agentrpc.gossip.node_table import NodeTable
from agentrpc.gossip.profiles import LAN
from agentrpc.gossip.serf import SerfConfig, SerfState
from agentrpc.gossip.serf_messages import JoinIntent, LeaveIntent, encode_tags

VSN = (1, 5, 2, 2, 5, 4)


def node_info(name: str) -> NodeInfo:
    return NodeInfo(
        name=name,
        addr=b"\x7f\x00\x00\x02",
        port=7946,
        meta=encode_tags({"role": "node"}),
        incarnation=1,
        state=NodeState.ALIVE,
        vsn=VSN,
        state_change=0.0,
    )


# (ltime, is_leave): distinct Lamport times, applied in a drawn order.
intents = st.lists(
    st.tuples(st.integers(min_value=2, max_value=10_000), st.booleans()),
    min_size=1,
    max_size=12,
    unique_by=lambda intent: intent[0],
)


@settings(max_examples=300)
@given(intents, st.randoms(use_true_random=False))
def test_serf_intents_converge_whatever_their_order(
    drawn: list[tuple[int, bool]], rng: object
) -> None:
    def final_status(order: list[tuple[int, bool]]) -> tuple[str, int]:
        state = SerfState(SerfConfig(node_name="local"), clock=lambda: 0.0)
        state.notify_join(node_info("peer"))
        for ltime, is_leave in order:
            if is_leave:
                state.handle_leave_intent(LeaveIntent(ltime=ltime, node="peer"))
            else:
                state.handle_join_intent(JoinIntent(ltime=ltime, node="peer"))
        member = state.member("peer")
        assert member is not None
        # The member clock has witnessed every intent.
        assert state.clock.time() > max(ltime for ltime, _ in order)
        return str(member.status), state.clock.time()

    shuffled = list(drawn)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    status, _ = final_status(drawn)
    assert final_status(shuffled)[0] == status
    # The newest intent decides: a leave leaves the member "leaving", a join "alive".
    newest_is_leave = max(drawn)[1]
    assert status == ("leaving" if newest_is_leave else "alive")


messages = st.lists(
    st.tuples(
        st.sampled_from(["alive", "suspect", "dead"]),
        st.integers(min_value=0, max_value=50),
        st.sampled_from(["n1", "n2"]),
    ),
    max_size=40,
)


@settings(max_examples=300)
@given(messages)
def test_incarnations_never_go_back_and_we_never_stay_accused(
    drawn: list[tuple[str, int, str]],
) -> None:
    table = NodeTable("local", LAN, rng=random.Random(1))
    table.set_alive(b"\x7f\x00\x00\x01", 7946, b"", VSN, 0.0)
    seen: dict[str, int] = {}
    now = 0.0
    for kind, incarnation, node in drawn:
        now += 0.1
        target = node if incarnation % 5 else "local"  # now and then, a claim about us
        if kind == "alive" and target != "local":
            table.alive(
                Alive(
                    incarnation=incarnation,
                    node=target,
                    addr=b"\x7f\x00\x00\x02",
                    port=7946,
                    meta=b"",
                    vsn=VSN,
                ),
                now,
            )
        elif kind == "suspect":
            table.suspect(Suspect(incarnation=incarnation, node=target, from_node="n9"), now)
        elif kind == "dead":
            table.dead(Dead(incarnation=incarnation, node=target, from_node="n9"), now)
        table.expire(now)
        for info in table.members():
            assert info.incarnation >= seen.get(info.name, 0)
            seen[info.name] = info.incarnation
        local = table.local()
        # Accusations about ourselves are always refuted: we stay alive.
        assert local is not None and local.state.name == "ALIVE"


def _push_state(name: str, incarnation: int, state: NodeState) -> PushNodeState:
    return PushNodeState(
        name=name,
        addr=b"\x7f\x00\x00\x02",
        port=7946,
        meta=b"",
        incarnation=incarnation,
        state=int(state),
        vsn=VSN,
    )


_names = st.sampled_from([f"n{i}" for i in range(12)])
_states = st.sampled_from([NodeState.ALIVE, NodeState.SUSPECT, NodeState.DEAD, NodeState.LEFT])
table_operations = st.lists(
    st.one_of(
        st.tuples(st.just("alive"), _names, st.integers(0, 9)),
        st.tuples(st.just("suspect"), _names, st.integers(0, 9)),
        st.tuples(st.just("dead"), _names, st.integers(0, 9)),
        st.tuples(st.just("leave"), _names, st.integers(0, 9)),
        st.tuples(
            st.just("merge"),
            st.lists(st.tuples(_names, st.integers(0, 9), _states), max_size=8),
            st.integers(0, 0),
        ),
        st.tuples(st.just("cap"), st.integers(1, 8), st.integers(0, 0)),
        st.tuples(st.just("time"), st.integers(1, 60), st.integers(0, 0)),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(st.integers(1, 8), table_operations)
def test_the_node_table_never_grows_past_its_cap(
    cap: int, drawn: list[tuple[str, Any, int]]
) -> None:
    """Under any mix of alive, suspect, dead, leave, push/pull merges, time passing (suspicion
    timeouts, reaping) and run-time changes of the cap, the table never grows once it holds
    ``max_members`` nodes; suspect and dead messages never add a node."""
    table = NodeTable("local", LAN, rng=random.Random(1), max_members=cap)
    table.set_alive(b"\x7f\x00\x00\x01", 7946, b"", VSN, 0.0)
    now = 0.0
    refused = 0
    for kind, value, incarnation in drawn:
        before = len(table)
        known = set(info.name for info in table.members())
        now += 0.1
        if kind == "alive":
            table.alive(Alive(incarnation, value, b"\x7f\x00\x00\x02", 7946, b"", VSN), now)
        elif kind == "suspect":
            table.suspect(Suspect(incarnation, value, "n9"), now)
        elif kind == "dead":
            table.dead(Dead(incarnation, value, "n9"), now)
        elif kind == "leave":
            table.dead(Dead(incarnation, value, value), now)
        elif kind == "merge":
            table.merge([_push_state(n, i, s) for n, i, s in value], now)
        elif kind == "cap":
            table.set_max_members(value)
        else:
            now += value
            table.expire(now)
            table.next_probe_target(now)
        after = len(table)
        assert after <= max(table.max_members, before)
        if kind in ("suspect", "dead", "leave"):
            assert set(info.name for info in table.members()) <= known
        assert table.refused_members >= refused
        refused = table.refused_members
