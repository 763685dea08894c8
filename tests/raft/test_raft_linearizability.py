"""The linearizability checker itself: known histories, and agreement with a brute-force
search (every order consistent with real time) on random small histories."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from hypothesis import given, settings, strategies as st
from linearizability import CAS, DELETE, GET, SET, Operation, check_history, check_register, step


def op(
    kind: str,
    invoke: float,
    complete: float | None,
    result: object = None,
    *args: str | None,
    key: str = "k",
    client: int = 0,
) -> Operation:
    return Operation(client, kind, key, tuple(args), invoke, complete, result)


def brute_force(ops: Sequence[Operation]) -> bool:
    """Some subset of the indeterminate operations plus every completed one, in some order
    that respects real time, replays on the register with the recorded results."""
    done = [o for o in ops if not o.indeterminate]
    maybe = [o for o in ops if o.indeterminate and o.kind != GET]
    for r in range(len(maybe) + 1):
        for chosen in itertools.combinations(maybe, r):
            chosen_ops = done + list(chosen)
            for order in itertools.permutations(chosen_ops):
                if not _respects_real_time(order):
                    continue
                state: str | None = None
                for o in order:
                    ok, state = step(state, o)
                    if not ok:
                        break
                else:
                    return True
    return False


def _respects_real_time(order: Sequence[Operation]) -> bool:
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            # b is placed after a: b must not have completed before a was invoked.
            if b.complete is not None and b.complete < a.invoke:
                return False
    return True


# ----------------------------------------------------------------------------- known histories


def test_sequential_history_is_linearizable() -> None:
    history = [
        op(SET, 0, 1, None, "a"),
        op(GET, 2, 3, "a"),
        op(CAS, 4, 5, True, "a", "b"),
        op(GET, 6, 7, "b"),
        op(DELETE, 8, 9),
        op(GET, 10, 11, None),
    ]
    assert check_history(history).ok


def test_stale_read_after_a_completed_write_is_not() -> None:
    history = [op(SET, 0, 1, None, "a"), op(SET, 2, 3, None, "b"), op(GET, 4, 5, "a")]
    result = check_history(history)
    assert not result.ok and result.key == "k"


def test_concurrent_read_may_see_either_value() -> None:
    for seen in ("a", "b"):
        history = [op(SET, 0, 1, None, "a"), op(SET, 2, 6, None, "b"), op(GET, 3, 4, seen)]
        assert check_history(history).ok


def test_read_of_a_value_never_written_is_not() -> None:
    assert not check_history([op(SET, 0, 1, None, "a"), op(GET, 2, 3, "zzz")]).ok


def test_reads_cannot_go_back_in_time() -> None:
    # Two reads during a write: once "b" is seen, a later read must not see "a" again.
    history = [
        op(SET, 0, 1, None, "a"),
        op(SET, 2, 10, None, "b"),
        op(GET, 3, 4, "b", client=1),
        op(GET, 5, 6, "a", client=2),
    ]
    assert not check_history(history).ok


def test_indeterminate_write_may_or_may_not_have_happened() -> None:
    base = [op(SET, 0, 1, None, "a"), op(SET, 2, None, None, "b")]
    assert check_history([*base, op(GET, 3, 4, "a")]).ok
    assert check_history([*base, op(GET, 3, 4, "b")]).ok
    assert check_history([*base, op(GET, 3, 4, "b"), op(GET, 5, 6, "b")]).ok
    # ...but it happened at one point only.
    assert not check_history([*base, op(GET, 3, 4, "b"), op(GET, 5, 6, "a")]).ok


def test_indeterminate_write_cannot_take_effect_before_it_was_invoked() -> None:
    history = [op(GET, 0, 1, "b"), op(SET, 2, None, None, "b")]
    assert not check_history(history).ok


def test_cas_results_must_match_the_register() -> None:
    assert check_history([op(SET, 0, 1, None, "a"), op(CAS, 2, 3, False, "x", "y")]).ok
    assert not check_history([op(SET, 0, 1, None, "a"), op(CAS, 2, 3, True, "x", "y")]).ok
    assert not check_history([op(SET, 0, 1, None, "a"), op(CAS, 2, 3, False, "a", "y")]).ok
    # An indeterminate cas swaps exactly when the register holds the expected value.
    history = [op(SET, 0, 1, None, "a"), op(CAS, 2, None, None, "a", "c"), op(GET, 3, 4, "c")]
    assert check_history(history).ok


def test_keys_are_independent_registers() -> None:
    history = [
        op(SET, 0, 1, None, "a", key="x"),
        op(SET, 0, 1, None, "b", key="y"),
        op(GET, 2, 3, "a", key="x"),
        op(GET, 2, 3, "a", key="y"),
    ]
    result = check_history(history)
    assert not result.ok and result.key == "y"


def test_touching_operations_count_as_concurrent() -> None:
    # A read that starts exactly when a write completes may see it or not.
    assert check_history([op(SET, 0, 1, None, "a"), op(GET, 1, 2, None)]).ok


def test_search_has_a_state_bound() -> None:
    history = [op(SET, 0, 100, None, f"v{i}", client=i) for i in range(12)]
    history.append(op(GET, 101, 102, "nope"))
    with pytest.raises(RuntimeError):
        check_register(history, max_states=50)


def test_many_concurrent_writes_stay_fast() -> None:
    # 16 writers overlapping completely, then reads: memoisation keeps this small.
    history = [op(SET, 0, 10, None, f"v{i}", client=i) for i in range(16)]
    history += [op(GET, 11 + i, 11.5 + i, "v7", client=20) for i in range(5)]
    ok, explored = check_register(history)
    assert ok and explored < 200_000


# ----------------------------------------------------------------------------- against brute force

values = st.sampled_from(["a", "b", "c"])


@st.composite
def histories(draw: st.DrawFn) -> list[Operation]:
    """Small random histories, some linearizable by construction (results taken from a
    sequential run at chosen linearization points), some with results perturbed."""
    n = draw(st.integers(1, 6))
    ops = []
    for i in range(n):
        kind = draw(st.sampled_from([GET, SET, CAS, DELETE]))
        invoke = draw(st.integers(0, 10))
        length = draw(st.integers(0, 5))
        complete = None if draw(st.integers(0, 5)) == 0 else float(invoke + length)
        args: tuple[str | None, ...] = ()
        if kind == SET:
            args = (draw(values),)
        elif kind == CAS:
            args = (draw(st.one_of(st.none(), values)), draw(values))
        ops.append(Operation(i, kind, "k", args, float(invoke), complete, None))
    # Replay at linearization points inside each interval to get consistent results.
    points = []
    for o in ops:
        end = o.complete if o.complete is not None else o.invoke + 20
        points.append(draw(st.floats(o.invoke, end)))
    state: str | None = None
    results: dict[int, object] = {}
    for i in sorted(range(n), key=lambda i: points[i]):
        o = ops[i]
        if o.indeterminate and draw(st.booleans()):
            continue  # never took effect
        if o.kind == GET:
            results[i] = state
        elif o.kind == SET:
            state = o.args[0]
        elif o.kind == DELETE:
            state = None
        else:
            swapped = state == o.args[0]
            results[i] = swapped
            if swapped:
                state = o.args[1]
    out = []
    for i, o in enumerate(ops):
        result = None if o.indeterminate else results.get(i)
        if not o.indeterminate and draw(st.integers(0, 4)) == 0:
            # Perturb: a result that may be impossible.
            result = (
                draw(st.one_of(st.none(), values))
                if o.kind == GET
                else (draw(st.booleans()) if o.kind == CAS else None)
            )
        out.append(Operation(o.client, o.kind, o.key, o.args, o.invoke, o.complete, result))
    return out


@settings(max_examples=400, deadline=None)
@given(histories())
def test_checker_agrees_with_brute_force(history: list[Operation]) -> None:
    assert check_register(history)[0] == brute_force(history)
