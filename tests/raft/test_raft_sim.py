"""The simulation: random schedules with every fault must keep Raft's safety properties and a
linearizable history; injected bugs must be caught (so the checks can fail)."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

from hypothesis import HealthCheck, given, settings, strategies as st
from raft_harness import SimParams, Simulation, run_schedule

from agentrpc.raft.kv_fsm import set_command

SHORT_RUN = 200


def test_random_schedules_are_safe_and_linearizable() -> None:
    faults: Counter[str] = Counter()
    operations = completed = indeterminate = committed = 0
    for seed in range(SHORT_RUN):
        result = run_schedule(seed)
        assert result.ok, (seed, result.violations, result.params)
        faults.update(result.faults)
        operations += result.operations
        completed += result.completed
        indeterminate += result.indeterminate
        committed += result.committed
    # The run exercised what it claims to (each count is far above these floors).
    for fault in (
        "crash",
        "restart",
        "partition",
        "drop",
        "duplicate",
        "snapshot",
        "install",
        "read",
        "add_voter",
        "remove_server",
        "transfer",
        "power_failure",
    ):
        assert faults[fault] >= 5, (fault, faults)
    assert completed > 20 * SHORT_RUN and indeterminate > 0 and committed > 20 * SHORT_RUN


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    nodes=st.sampled_from([3, 5]),
    drop=st.floats(0, 0.3),
    duplicate=st.floats(0, 0.2),
    slow=st.floats(0, 0.5),
    crashes=st.floats(0, 1.5),
    partitions=st.floats(0, 1.0),
    power=st.floats(0, 0.3),
    max_append=st.sampled_from([1, 2, 64]),
    cache=st.sampled_from([200, 1 << 20]),
    threshold=st.sampled_from([4, 30, 10_000]),
)
def test_hypothesis_explores_the_fault_space(
    seed: int, nodes: int, drop: float, duplicate: float, slow: float, crashes: float,
    partitions: float, power: float, max_append: int, cache: int, threshold: int,
) -> None:  # fmt: skip
    params = SimParams(
        nodes=nodes, duration=4.0, settle=2.0, drop=drop, duplicate=duplicate, slow=slow,
        crashes=crashes, partitions=partitions, power_failures=power,
        max_append_entries=max_append, cache_bytes=cache, snapshot_threshold=threshold,
        trailing_logs=2, snapshot_interval=0.5, transfers=0.3,
        membership=nodes == 5, voters=3 if nodes == 5 else None,
    )  # fmt: skip
    result = run_schedule(seed, params)
    assert result.ok, result.violations


def test_schedules_are_deterministic() -> None:
    first, second = run_schedule(7), run_schedule(7)
    assert (first.events, first.operations, first.faults, first.committed) == (
        second.events,
        second.operations,
        second.faults,
        second.committed,
    )


# ----------------------------------------------------------------------------- injected bugs

POWER_CUTS = SimParams(
    power_failures=0.5,
    disk_latency=(0.005, 0.05),
    clients=5,
    crashes=0.0,
    partitions=0.0,
    drop=0.0,
    duration=6.0,
)


def test_acknowledging_before_persisting_is_caught() -> None:
    # A follower (every node) that acks writes its disk has not made durable: power cuts then
    # lose committed entries, which the harness must notice. The same schedules with an
    # honest disk are clean.
    caught = [
        seed
        for seed in range(30)
        if not run_schedule(seed, dataclasses.replace(POWER_CUTS, lying_disk=True)).ok
    ]
    assert len(caught) >= 3, caught
    for seed in caught:
        assert run_schedule(seed, POWER_CUTS).ok


def test_stale_reads_are_caught_by_the_linearizability_check() -> None:
    # Reads answered from whichever node the client talks to: no Raft invariant breaks, only
    # the history shows it.
    caught = []
    for seed in range(20):
        params = dataclasses.replace(SimParams.random(random.Random(seed)), local_reads=True)
        result = run_schedule(seed, params)
        if not result.ok:
            assert "not linearizable" in result.violations[0], result.violations
            caught.append(seed)
    assert len(caught) >= 5, caught


def figure_8(node_bug: str) -> Simulation:
    """Raft's Figure 8 on three nodes, scripted: an entry of an old term reaches a majority
    under a later leader, which crashes before its own term's entry follows; a node holding a
    conflicting entry of a higher term is then elected and overwrites it."""
    params = SimParams(
        nodes=3, clients=0, crashes=0.0, partitions=0.0, drop=0.0, duplicate=0.0, slow=0.0,
        power_failures=0.0, max_append_entries=1, snapshot_threshold=10**6, duration=120.0,
        settle=0.0, node_bug=node_bug,
    )  # fmt: skip
    sim = Simulation(1, params)
    sim.start()
    assert sim.run_until(lambda: sim.leader() is not None, 10)
    a = sim.leader()
    assert a is not None and a.core is not None
    sim.run_until(lambda: False, 0.5)  # everyone has the leader's noop
    b, c = (n for n in sim.nodes.values() if n is not a)
    index = a.core.last_index + 1
    # 1. A writes an entry nobody else sees, and crashes once it is on its disk.
    sim.isolate([a.id], [b.id, c.id])
    sim.propose(a.id, set_command("k", "old-term"))
    assert sim.run_until(lambda: index in a.disk.log, 1)
    sim.crash(a.id)
    # 2. B or C is elected; it writes its noop at the same index, alone, and crashes.
    sim.heal()
    sim.isolate([a.id], [b.id, c.id])
    assert sim.run_until(lambda: sim.leader() is not None, 10)
    x = sim.leader()
    assert x is not None and x.core is not None
    y = c if x is b else b
    sim.isolate([a.id], [x.id], [y.id])
    assert sim.run_until(lambda: index in x.disk.log, 1)
    assert index not in y.disk.log
    sim.crash(x.id)
    # 3. A comes back and wins with Y's vote; its old entry reaches Y (a majority); A crashes
    #    before the entry of its own term follows.
    sim.restart(a.id)
    sim.heal()
    sim.isolate([x.id], [a.id, y.id])
    assert a.core is not None
    assert sim.run_until(
        lambda: (
            a.core is not None and a.core.is_leader and (a.core.match_index(y.id) or 0) >= index
        ),
        20,
    )
    sim.isolate([x.id], [a.id], [y.id])
    sim.crash(a.id)
    # 4. X, whose entry at that index has a higher term, wins with Y's vote and overwrites it.
    sim.restart(x.id)
    sim.heal()
    sim.isolate([a.id], [x.id, y.id])
    sim.run_until(
        lambda: (
            bool(sim.violations)
            or (x.core is not None and x.core.is_leader and x.core.commit_index >= index)
        ),
        20,
    )
    return sim


def test_committing_old_term_entries_is_caught() -> None:
    buggy = figure_8("commit_old_terms")
    assert buggy.violations, "the Figure 8 scenario went unnoticed"
    assert "commit" in buggy.violations[0] or "completeness" in buggy.violations[0]
    correct = figure_8("")
    assert not correct.violations, correct.violations
    x_commit = max(n.core.commit_index for n in correct.nodes.values() if n.core is not None)
    assert x_commit > 0
