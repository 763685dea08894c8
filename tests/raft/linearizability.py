"""A linearizability checker for key/value histories (Wing & Gong's search with Lowe's
memoisation, as Knossos and Porcupine do it), partitioned per key.

A history is a list of :class:`Operation`: what a client invoked, when, and what came back when
it completed. An operation whose outcome is unknown (the client timed out, the node crashed, the
leader lost leadership while committing) is *indeterminate*: ``complete`` is None, it may have
taken effect at any point after its invocation or never. Operations that definitely failed
(never written) are simply left out.

The search walks the history's call/return events in time order and tries to linearize each
pending call at the current point (the KV model must accept its result); reaching a return
whose operation is not linearized yet means backtracking. Every (set of linearized operations,
model state) pair is tried once (the memo), which keeps the search polynomial in practice. Each
key is an independent register, so each is checked alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

GET = "get"
SET = "set"
CAS = "cas"
DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Operation:
    client: int
    kind: str
    key: str
    args: tuple[str | None, ...] = ()
    invoke: float = 0.0
    complete: float | None = None
    """None: indeterminate."""
    result: object = None

    @property
    def indeterminate(self) -> bool:
        return self.complete is None


def step(state: str | None, op: Operation) -> tuple[bool, str | None]:
    """The KV register model: whether ``op``'s result is possible in ``state``, and the state
    after it (an indeterminate op is taken with whatever result the state gives)."""
    if op.kind == GET:
        return (op.indeterminate or op.result == state), state
    if op.kind == SET:
        return True, op.args[0]
    if op.kind == DELETE:
        return True, None
    if op.kind == CAS:
        expected, new = op.args
        swapped = state == expected
        if not op.indeterminate and op.result is not swapped:
            return False, state
        return True, new if swapped else state
    raise ValueError(f"unknown operation {op.kind!r}")


@dataclass(slots=True)
class _Event:
    op: int
    is_call: bool
    time: float
    prev: _Event | None = None
    next: _Event | None = None
    match: _Event | None = None
    """A call's return event (None for an indeterminate operation)."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    key: str | None = None
    """The first key whose history is not linearizable."""
    operations: int = 0
    keys: int = 0
    explored: int = 0
    """Search states visited, over all keys."""
    history: tuple[Operation, ...] = field(default=(), repr=False)
    """The offending key's operations, when not ok."""


def _build(ops: Sequence[Operation]) -> _Event:
    events: list[_Event] = []
    for i, op in enumerate(ops):
        call = _Event(i, True, op.invoke)
        events.append(call)
        if op.complete is not None:
            ret = _Event(i, False, op.complete)
            call.match = ret
            events.append(ret)
    # Calls before returns at equal times: touching operations count as concurrent (the
    # permissive reading, so the checker never reports a violation that is not one).
    events.sort(key=lambda e: (e.time, not e.is_call, e.op))
    head = _Event(-1, True, float("-inf"))
    prev = head
    for event in events:
        prev.next = event
        event.prev = prev
        prev = event
    return head


def _lift(call: _Event) -> None:
    assert call.prev is not None
    call.prev.next = call.next
    if call.next is not None:
        call.next.prev = call.prev
    ret = call.match
    if ret is not None:
        assert ret.prev is not None
        ret.prev.next = ret.next
        if ret.next is not None:
            ret.next.prev = ret.prev


def _unlift(call: _Event) -> None:
    ret = call.match
    if ret is not None:
        assert ret.prev is not None
        ret.prev.next = ret
        if ret.next is not None:
            ret.next.prev = ret
    assert call.prev is not None
    call.prev.next = call
    if call.next is not None:
        call.next.prev = call


def check_register(
    ops: Sequence[Operation], initial: str | None = None, *, max_states: int = 5_000_000
) -> tuple[bool, int]:
    """Whether one key's history is linearizable, and how many search states it took.
    Raises RuntimeError past ``max_states`` (never silently passes)."""
    ops = [op for op in ops if not (op.indeterminate and op.kind == GET)]
    head = _build(ops)
    remaining = sum(1 for op in ops if not op.indeterminate)
    state = initial
    linearized = 0
    stack: list[tuple[_Event, str | None]] = []
    seen: set[tuple[int, str | None]] = set()
    explored = 0
    entry = head.next
    while remaining:
        explored += 1
        if explored > max_states:
            raise RuntimeError(f"linearizability search passed {max_states} states")
        if entry is not None and entry.is_call:
            op = ops[entry.op]
            ok, new_state = step(state, op)
            if ok:
                bits = linearized | (1 << entry.op)
                if (bits, new_state) not in seen:
                    seen.add((bits, new_state))
                    stack.append((entry, state))
                    state, linearized = new_state, bits
                    if not op.indeterminate:
                        remaining -= 1
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
            continue
        # A return whose operation is not linearized (or the end): undo the last choice.
        if not stack:
            return False, explored
        entry, state = stack.pop()
        linearized &= ~(1 << entry.op)
        if not ops[entry.op].indeterminate:
            remaining += 1
        _unlift(entry)
        entry = entry.next
    return True, explored


def check_history(history: Iterable[Operation], *, max_states: int = 5_000_000) -> CheckResult:
    """Check a whole KV history, key by key."""
    by_key: dict[str, list[Operation]] = defaultdict(list)
    total = 0
    for op in history:
        by_key[op.key].append(op)
        total += 1
    explored = 0
    for key in sorted(by_key):
        ok, states = check_register(by_key[key], max_states=max_states)
        explored += states
        if not ok:
            return CheckResult(False, key, total, len(by_key), explored, tuple(by_key[key]))
    return CheckResult(True, None, total, len(by_key), explored)
