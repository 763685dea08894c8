"""Property-based tests of the agent RPC session (hypothesis): for any sequence of requests
(known and unknown commands, colliding Seqs, right, wrong and missing tokens, handshakes with
good and bad versions, monitor/stop pairs), interleaved with monitors that end on their own,
token changes and malformed requests, the gate's rules hold.

Each invariant is its own ``check_`` function over the same trace (a broken rule names itself
in the traceback); the last test replays every trace against a small independent model of the
whole table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings, strategies as st

from agentrpc.log_protocol import PEER_TEXT_LIMIT
from agentrpc.protocol.codec import Request
from agentrpc.protocol.constants import (
    COMMANDS,
    ERR_DUPLICATE_HANDSHAKE,
    ERR_HANDSHAKE_REQUIRED,
    ERR_MONITOR_EXISTS,
    ERR_PERMISSION_DENIED,
    ERR_UNKNOWN_LOG_LEVEL,
    ERR_UNSUPPORTED_COMMAND,
    ERR_UNSUPPORTED_VERSION,
    ERROR_BODIES,
    FORCE_LEAVE,
    HANDSHAKE,
    JOIN,
    LEAVE,
    LEVEL_INDEX,
    MEMBERS_LAN,
    MEMBERS_WAN,
    MONITOR,
    RELOAD,
    STATS,
    STOP,
)
from agentrpc.protocol.errors import ProtocolError
from agentrpc.protocol.rpc_session import Decision, Kind, RPCSession

SECRET = "secret"
INSTANT_COMMANDS = frozenset({MEMBERS_LAN, MEMBERS_WAN, STATS})
ASYNC_COMMANDS = frozenset({JOIN, FORCE_LEAVE, LEAVE, RELOAD})
NOT_IN_THE_PROTOCOL = "shell"
"""Offered to the session as a handler, but no command of the protocol: never run."""
UNKNOWN_COMMANDS = ("", "bogus", "Stats", "members", "handshake2", NOT_IN_THE_PROTOCOL)

seqs = st.integers(min_value=0, max_value=4)  # few values: Seqs collide, stops match
# Mostly the right token, so that a trace gets past the gate and reaches the monitor rules.
tokens = st.sampled_from([SECRET, SECRET, SECRET, SECRET, None, "", "wrong", "secre", "secret "])
levels = st.sampled_from(["debug", "INFO", "Err", "trace", "warn", "bogus", "", "x" * 300])


def _request(command: str, body: Any) -> st.SearchStrategy[Request]:
    return st.builds(Request, st.just(command), seqs, tokens, body)


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each drawn about ``weight`` times as often as a weight of 1."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(
        lambda strategy: strategy
    )


known = st.sampled_from(sorted(INSTANT_COMMANDS | ASYNC_COMMANDS))
requests = weighted(
    (2, _request(HANDSHAKE, st.sampled_from([1, 1, 1, 0, 2]))),
    (3, _request(MONITOR, levels)),
    (4, _request(STOP, seqs)),
    (3, known.flatmap(lambda command: _request(command, st.none()))),
    (1, st.sampled_from(UNKNOWN_COMMANDS).flatmap(lambda c: _request(c, st.none()))),
)


@dataclass(frozen=True)
class Step:
    """One call on the session: a request (and its decision), or an engine event."""

    action: str  # "request", "ended" (a monitor's stream ended), "token", "malformed"
    request: Request | None = None
    value: Any = None
    decision: Decision | None = None
    # The session's state after the step.
    handshaken: bool = False
    closed: bool = False
    monitor_seq: int | None = None
    token: str = ""


actions = st.lists(
    weighted(
        (24, requests.map(lambda request: ("request", request))),
        (2, seqs.map(lambda seq: ("ended", seq))),
        (2, st.sampled_from(["", SECRET]).map(lambda token: ("token", token))),
        (1, st.sampled_from([JOIN, STATS, None]).map(lambda command: ("malformed", command))),
    ),
    max_size=40,
)


handshake_first = st.sampled_from([True, True, True, False])
"""Most traces start handshaken (the gate before the handshake needs few examples)."""


def run(token: str, drawn: list[tuple[str, Any]], handshake_first: bool) -> list[Step]:
    session = RPCSession(INSTANT_COMMANDS, ASYNC_COMMANDS | {NOT_IN_THE_PROTOCOL}, token)
    if handshake_first:
        drawn = [("request", Request(HANDSHAKE, 1, None, 1)), *drawn]
    trace: list[Step] = []
    for action, value in drawn:
        request: Request | None = None
        decision: Decision | None = None
        if action == "request":
            request = value
            decision = session.receive(value)
        elif action == "ended":
            session.monitor_ended(value)
        elif action == "token":
            session.token = value
        else:
            decision = session.malformed(ProtocolError("bad body", seq=3, command=value))
        trace.append(
            Step(
                action,
                request,
                value,
                decision,
                session.handshaken,
                session.closed,
                session.monitor_seq,
                session.token,
            )
        )
    return trace


def request_steps(trace: list[Step]) -> list[tuple[Request, Decision, Step]]:
    found = []
    for step in trace:
        if step.action == "request":
            assert step.request is not None and step.decision is not None
            found.append((step.request, step.decision, step))
    return found


def check_nothing_but_an_error_and_close_before_a_successful_handshake(trace: list[Step]) -> None:
    for request, decision, step in request_steps(trace):
        if decision.kind is Kind.HANDSHAKEN:
            break
        if decision.kind is Kind.IGNORE:
            continue
        if request.command == HANDSHAKE:
            # A failed handshake: its error, and the connection stays open.
            assert (decision.kind, decision.error) == (Kind.ANSWER, ERR_UNSUPPORTED_VERSION)
            assert request.body != 1 and not step.closed
        else:
            assert (decision.kind, decision.error, decision.body) == (
                Kind.CLOSE,
                ERR_HANDSHAKE_REQUIRED,
                None,
            )
            assert step.closed and not step.handshaken


def check_one_successful_handshake_at_most(trace: list[Step]) -> None:
    succeeded = [d for _, d, _ in request_steps(trace) if d.kind is Kind.HANDSHAKEN]
    assert len(succeeded) <= 1
    for request, decision, _ in request_steps(trace):
        if decision.kind is Kind.HANDSHAKEN:
            assert request.command == HANDSHAKE and request.body == 1


def check_after_close_nothing_else_is_decided(trace: list[Step]) -> None:
    closed_at = next((i for i, step in enumerate(trace) if step.closed), None)
    if closed_at is None:
        assert all(s.decision is None or s.decision.kind is not Kind.IGNORE for s in trace)
        return
    closing = trace[closed_at].decision
    assert closing is not None and closing.kind is Kind.CLOSE
    for step in trace[closed_at + 1 :]:
        assert step.closed
        if step.action == "request":
            assert step.decision is not None and step.decision.kind is Kind.IGNORE


def check_at_most_one_monitor_is_active(trace: list[Step]) -> None:
    active: int | None = None
    for step in trace:
        decision = step.decision
        if step.action == "ended" and step.value == active:
            active = None
        elif decision is not None and decision.kind is Kind.START_MONITOR:
            assert active is None, "a second monitor started"
            assert step.request is not None
            active = step.request.seq
        elif decision is not None and decision.kind is Kind.STOP_MONITOR:
            active = None
        elif decision is not None and decision.error == ERR_MONITOR_EXISTS:
            assert active is not None
        assert step.monitor_seq == active


def check_stop_of_the_active_seq_ends_it_any_other_stop_is_a_plain_success(
    trace: list[Step],
) -> None:
    active: int | None = None
    for step in trace:
        decision = step.decision
        request = step.request
        if request is not None and request.command == STOP and decision is not None:
            if decision.kind in (Kind.ANSWER, Kind.STOP_MONITOR):
                assert decision.error == "" and decision.body is None
                assert (decision.kind is Kind.STOP_MONITOR) == (request.body == active)
            else:
                assert decision.kind in (Kind.DENIED, Kind.CLOSE, Kind.IGNORE)
        if decision is not None and decision.kind is Kind.STOP_MONITOR:
            assert step.monitor_seq is None
        active = step.monitor_seq


def check_with_a_token_a_wrong_or_missing_one_is_denied_and_never_run(trace: list[Step]) -> None:
    for request, decision, step in request_steps(trace):
        if not step.handshaken or decision.kind is Kind.IGNORE:
            continue
        wrong = step.token and request.command != HANDSHAKE and request.token != step.token
        if wrong:
            assert (decision.kind, decision.error) == (Kind.DENIED, ERR_PERMISSION_DENIED)
            assert decision.body == ERROR_BODIES.get(request.command)
            assert not step.closed
        else:
            assert decision.kind is not Kind.DENIED


def check_only_known_commands_run_and_unknown_ones_close(trace: list[Step]) -> None:
    for request, decision, _ in request_steps(trace):
        if decision.kind is Kind.INSTANT:
            assert request.command in INSTANT_COMMANDS
        elif decision.kind is Kind.RUN:
            assert request.command in ASYNC_COMMANDS
        elif decision.kind is Kind.START_MONITOR:
            assert request.command == MONITOR
            assert decision.level == LEVEL_INDEX[request.body.upper()]
        if request.command not in COMMANDS:
            assert decision.kind in (Kind.CLOSE, Kind.DENIED, Kind.IGNORE)


def check_peer_text_in_a_decision_is_bounded(trace: list[Step]) -> None:
    for step in trace:
        if step.decision is not None:
            assert len(step.decision.error) < 300


INVARIANTS = (
    check_nothing_but_an_error_and_close_before_a_successful_handshake,
    check_one_successful_handshake_at_most,
    check_after_close_nothing_else_is_decided,
    check_at_most_one_monitor_is_active,
    check_stop_of_the_active_seq_ends_it_any_other_stop_is_a_plain_success,
    check_with_a_token_a_wrong_or_missing_one_is_denied_and_never_run,
    check_only_known_commands_run_and_unknown_ones_close,
    check_peer_text_in_a_decision_is_bounded,
)


@settings(max_examples=500)
@given(st.sampled_from(["", SECRET]), actions, handshake_first)
def test_the_invariants_hold_for_any_sequence(
    token: str, drawn: list[tuple[str, Any]], first: bool
) -> None:
    trace = run(token, drawn, first)
    # Every request gets exactly one decision.
    sent = sum(1 for action, _ in drawn if action == "request") + first
    decided = request_steps(trace)
    assert len(decided) == sent
    assert all(type(decision) is Decision for _, decision, _ in decided)
    for check in INVARIANTS:
        check(trace)


# ---------------------------------------------------------------------- the whole table


@dataclass
class Model:
    """The gate's table, written out independently of the session's code."""

    token: str
    handshaken: bool = False
    closed: bool = False
    monitor: int | None = None

    def expect(self, request: Request) -> tuple[Kind, str, Any, int]:
        """(kind, error, body, level) the session must decide."""
        command, body = request.command, request.body
        if self.closed:
            return Kind.IGNORE, "", None, 0
        if not self.handshaken:
            if command != HANDSHAKE:
                self.closed = True
                return Kind.CLOSE, ERR_HANDSHAKE_REQUIRED, None, 0
            if body != 1:
                return Kind.ANSWER, ERR_UNSUPPORTED_VERSION, None, 0
            self.handshaken = True
            return Kind.HANDSHAKEN, "", None, 0
        if self.token and command != HANDSHAKE and request.token != self.token:
            return Kind.DENIED, ERR_PERMISSION_DENIED, ERROR_BODIES.get(command), 0
        if command == HANDSHAKE:
            error = ERR_UNSUPPORTED_VERSION if body != 1 else ERR_DUPLICATE_HANDSHAKE
            return Kind.ANSWER, error, None, 0
        if command == STOP:
            if self.monitor is not None and body == self.monitor:
                self.monitor = None
                return Kind.STOP_MONITOR, "", None, 0
            return Kind.ANSWER, "", None, 0
        if command in INSTANT_COMMANDS:
            return Kind.INSTANT, "", None, 0
        if command in ASYNC_COMMANDS:
            return Kind.RUN, "", None, 0
        if command == MONITOR:
            name = body.upper()
            if name not in LEVEL_INDEX:
                limit = PEER_TEXT_LIMIT
                shown = name if len(name) <= limit else f"{name[:limit]}...({len(name)} characters)"
                return Kind.ANSWER, ERR_UNKNOWN_LOG_LEVEL + shown, None, 0
            if self.monitor is not None:
                return Kind.ANSWER, ERR_MONITOR_EXISTS, None, 0
            self.monitor = request.seq
            return Kind.START_MONITOR, "", None, LEVEL_INDEX[name]
        self.closed = True
        return Kind.CLOSE, ERR_UNSUPPORTED_COMMAND, None, 0


@settings(max_examples=400)
@given(st.sampled_from(["", SECRET]), actions, handshake_first)
def test_the_session_decides_as_the_table_says(
    token: str, drawn: list[tuple[str, Any]], first: bool
) -> None:
    model = Model(token)
    if first:
        model.expect(Request(HANDSHAKE, 1, None, 1))
    trace = run(token, drawn, first)
    for step in trace[int(first) :]:
        if step.action == "request":
            assert step.request is not None and step.decision is not None
            decision = step.decision
            got = (decision.kind, decision.error, decision.body, decision.level)
            assert got == model.expect(step.request), step.request
        elif step.action == "ended":
            if model.monitor == step.value:
                model.monitor = None
        elif step.action == "token":
            model.token = step.value
        else:
            assert step.decision is not None
            malformed = (step.decision.kind, step.decision.error, step.decision.body)
            assert malformed == (
                Kind.CLOSE,
                "Malformed request: bad body",
                ERROR_BODIES.get(step.value or ""),
            )
            model.closed = True
        assert (step.handshaken, step.closed, step.monitor_seq) == (
            model.handshaken,
            model.closed,
            model.monitor,
        )
