"""The sans-I/O session of an agent RPC connection: every rule of the gate, by example.

The same errors, bodies and closes as the reference (see the spec sheet's "Handshake gate and
errors" table); the engine tests in ``tests/rpc/`` show the same rules on the wire.
"""

from __future__ import annotations

from typing import Any

import pytest

from agentrpc.protocol.codec import Request
from agentrpc.protocol.constants import (
    ERR_DUPLICATE_HANDSHAKE,
    ERR_HANDSHAKE_REQUIRED,
    ERR_MONITOR_EXISTS,
    ERR_PERMISSION_DENIED,
    ERR_UNKNOWN_LOG_LEVEL,
    ERR_UNSUPPORTED_COMMAND,
    ERR_UNSUPPORTED_VERSION,
    FORCE_LEAVE,
    HANDSHAKE,
    JOIN,
    LEAVE,
    MEMBERS_LAN,
    MEMBERS_WAN,
    MONITOR,
    RELOAD,
    STATS,
    STOP,
)
from agentrpc.protocol.errors import FrameTooLarge, ProtocolError
from agentrpc.protocol.rpc_session import (
    BEFORE_HANDSHAKE,
    HANDSHAKEN,
    IGNORE,
    INSTANT,
    RUN,
    START_MONITOR,
    STOP_MONITOR,
    SUCCESS,
    UNSUPPORTED_COMMAND,
    Decision,
    Kind,
    RPCSession,
    token_matches,
)

INSTANT_COMMANDS = (MEMBERS_LAN, MEMBERS_WAN, STATS)
ASYNC_COMMANDS = (JOIN, FORCE_LEAVE, LEAVE, RELOAD)


def request(command: str, seq: int = 2, body: Any = None, token: str | None = "") -> Request:
    return Request(command, seq, token, body)


def new_session(token: str = "", *, handshake: bool = True) -> RPCSession:
    session = RPCSession(INSTANT_COMMANDS, ASYNC_COMMANDS, token)
    if handshake:
        assert session.receive(request(HANDSHAKE, 1, 1)) is HANDSHAKEN
    return session


# ---------------------------------------------------------------------- the handshake gate


@pytest.mark.parametrize("command", [MEMBERS_LAN, STATS, JOIN, MONITOR, STOP, LEAVE, "bogus", ""])
def test_anything_before_the_handshake_is_refused_and_closes(command: str) -> None:
    session = new_session(handshake=False)
    decision = session.receive(request(command, 7, body=None))
    assert decision is BEFORE_HANDSHAKE
    assert (decision.kind, decision.error, decision.body) == (
        Kind.CLOSE,
        ERR_HANDSHAKE_REQUIRED,
        None,
    )
    assert session.closed and not session.handshaken
    # Closed: nothing more is decided, not even a good handshake.
    assert session.receive(request(HANDSHAKE, 8, 1)) is IGNORE
    assert session.receive(request(MEMBERS_LAN, 9)) is IGNORE
    assert not session.handshaken


def test_the_handshake_gate_ignores_the_token_before_the_handshake() -> None:
    session = new_session("secret", handshake=False)
    assert session.receive(request(STATS, 2, token="secret")) is BEFORE_HANDSHAKE


def test_handshake_versions() -> None:
    session = new_session(handshake=False)
    for version in (0, 2, -1):
        decision = session.receive(request(HANDSHAKE, 1, version))
        assert (decision.kind, decision.error) == (Kind.ANSWER, ERR_UNSUPPORTED_VERSION)
        assert not session.handshaken and not session.closed
    assert session.receive(request(HANDSHAKE, 2, 1)) is HANDSHAKEN
    assert session.handshaken
    again = session.receive(request(HANDSHAKE, 3, 1))
    assert (again.kind, again.error, again.body) == (Kind.ANSWER, ERR_DUPLICATE_HANDSHAKE, None)
    # The version is checked first, also on a handshaken connection.
    late = session.receive(request(HANDSHAKE, 4, 5))
    assert late.error == ERR_UNSUPPORTED_VERSION
    assert session.handshaken and not session.closed


def test_a_handshake_needs_no_token() -> None:
    session = new_session("secret", handshake=False)
    assert session.receive(request(HANDSHAKE, 1, 1, token=None)) is HANDSHAKEN
    duplicate = session.receive(request(HANDSHAKE, 2, 1, token="wrong"))
    assert duplicate.error == ERR_DUPLICATE_HANDSHAKE


# ---------------------------------------------------------------------- commands


@pytest.mark.parametrize("command", INSTANT_COMMANDS)
def test_instant_commands(command: str) -> None:
    assert new_session().receive(request(command)) is INSTANT


@pytest.mark.parametrize("command", ASYNC_COMMANDS)
def test_async_commands_run(command: str) -> None:
    assert new_session().receive(request(command)) is RUN


@pytest.mark.parametrize("command", ["bogus", "", "MEMBERS-LAN", "members", "handshake "])
def test_an_unknown_command_is_refused_and_closes(command: str) -> None:
    session = new_session()
    decision = session.receive(request(command))
    assert decision is UNSUPPORTED_COMMAND
    assert (decision.kind, decision.error, decision.body) == (
        Kind.CLOSE,
        ERR_UNSUPPORTED_COMMAND,
        None,
    )
    assert session.closed
    assert session.receive(request(STATS, 3)) is IGNORE
    assert session.receive(request(STOP, 4, 0)) is IGNORE


def test_only_protocol_commands_run_even_when_a_handler_is_offered() -> None:
    session = RPCSession(INSTANT_COMMANDS, (*ASYNC_COMMANDS, "shell"), "")
    session.receive(request(HANDSHAKE, 1, 1))
    assert session.receive(request("shell")) is UNSUPPORTED_COMMAND


def test_a_protocol_command_without_a_handler_is_unsupported() -> None:
    # A client-mode agent without a WAN pool, say: the command table decides what exists.
    session = RPCSession((MEMBERS_LAN,), (JOIN,), "")
    session.receive(request(HANDSHAKE, 1, 1))
    assert session.receive(request(MEMBERS_WAN)) is UNSUPPORTED_COMMAND


# ---------------------------------------------------------------------- the token


@pytest.mark.parametrize(
    ("command", "body"),
    [
        (MEMBERS_LAN, {"Members": []}),
        (MEMBERS_WAN, {"Members": []}),
        (JOIN, {"Num": 0}),
        (STATS, {}),
        (LEAVE, None),
        (FORCE_LEAVE, None),
        (MONITOR, None),
        (STOP, None),
        ("bogus", None),
    ],
)
@pytest.mark.parametrize("sent", [None, "", "wrong", "secret2", "Secret"])
def test_a_wrong_or_missing_token_is_denied_with_the_error_body(
    command: str, body: Any, sent: str | None
) -> None:
    session = new_session("secret")
    decision = session.receive(request(command, 5, body="debug", token=sent))
    assert (decision.kind, decision.error, decision.body) == (
        Kind.DENIED,
        ERR_PERMISSION_DENIED,
        body,
    )
    # Denied is not fatal, and changed nothing: no monitor, still open.
    assert not session.closed and session.monitor_seq is None
    allowed = session.receive(request(command, 6, body="debug", token="secret"))
    assert allowed.kind is not Kind.DENIED


def test_the_right_token_lets_every_command_through() -> None:
    session = new_session("secret")
    assert session.receive(request(STATS, token="secret")) is INSTANT
    assert session.receive(request(JOIN, token="secret")) is RUN
    assert session.receive(request(STOP, body=3, token="secret")) is SUCCESS


def test_a_new_token_applies_to_the_next_request() -> None:
    session = new_session()
    assert session.receive(request(STATS, token="")) is INSTANT
    session.token = "rotated"
    assert session.receive(request(STATS, token="")).kind is Kind.DENIED
    assert session.receive(request(STATS, token="rotated")) is INSTANT
    session.token = ""
    assert session.receive(request(STATS, token="anything")) is INSTANT


def test_tokens_compare_as_the_bytes_on_the_wire() -> None:
    # A Token that is not UTF-8 arrives with surrogate escapes (the codec's str form).
    raw = b"s\xffcret".decode("utf-8", "surrogateescape")
    assert token_matches(raw, raw)
    assert not token_matches(raw, "s\u00ffcret")
    assert not token_matches(None, "secret")
    assert not token_matches("", "secret")
    session = new_session(raw)
    assert session.receive(request(STATS, token=raw)) is INSTANT


# ---------------------------------------------------------------------- monitor and stop


@pytest.mark.parametrize(
    ("level", "index"), [("trace", 0), ("DEBUG", 1), ("Info", 2), ("warn", 3), ("ERR", 4)]
)
def test_a_monitor_starts_at_its_level(level: str, index: int) -> None:
    session = new_session()
    decision = session.receive(request(MONITOR, 9, level))
    assert decision is START_MONITOR[index]
    assert (decision.kind, decision.level) == (Kind.START_MONITOR, index)
    assert session.monitor_seq == 9


def test_one_monitor_at_a_time() -> None:
    session = new_session()
    session.receive(request(MONITOR, 9, "info"))
    second = session.receive(request(MONITOR, 10, "debug"))
    assert (second.kind, second.error, second.body) == (Kind.ANSWER, ERR_MONITOR_EXISTS, None)
    assert session.monitor_seq == 9


@pytest.mark.parametrize(
    ("level", "error"),
    [("loud", "LOUD"), ("", ""), ("warning", "WARNING"), ("err ", "ERR ")],
)
def test_an_unknown_level_is_echoed_upper_cased(level: str, error: str) -> None:
    session = new_session()
    decision = session.receive(request(MONITOR, 9, level))
    assert (decision.kind, decision.error, decision.body) == (
        Kind.ANSWER,
        ERR_UNKNOWN_LOG_LEVEL + error,
        None,
    )
    assert session.monitor_seq is None and not session.closed


def test_the_level_is_checked_before_the_monitor_that_exists() -> None:
    session = new_session()
    session.receive(request(MONITOR, 9, "info"))
    assert session.receive(request(MONITOR, 10, "loud")).error == ERR_UNKNOWN_LOG_LEVEL + "LOUD"


def test_an_unknown_level_is_echoed_bounded() -> None:
    decision = new_session().receive(request(MONITOR, 9, "x" * 100_000))
    assert decision.error.startswith(ERR_UNKNOWN_LOG_LEVEL + "XXXX")
    assert len(decision.error) < 400
    assert "100000" in decision.error


def test_stop_ends_only_the_monitor_of_its_seq() -> None:
    session = new_session()
    assert session.receive(request(STOP, 3, 9)) is SUCCESS  # nothing to stop: a success
    session.receive(request(MONITOR, 9, "info"))
    assert session.receive(request(STOP, 4, 8)) is SUCCESS
    assert session.monitor_seq == 9
    assert session.receive(request(STOP, 5, 9)) is STOP_MONITOR
    assert session.monitor_seq is None
    assert session.receive(request(STOP, 6, 9)) is SUCCESS
    # A new monitor may start, with the same Seq too.
    assert session.receive(request(MONITOR, 9, "debug")) is START_MONITOR[1]


def test_a_monitor_that_ended_on_its_own_frees_the_slot() -> None:
    session = new_session()
    session.receive(request(MONITOR, 9, "info"))
    session.monitor_ended(8)
    assert session.monitor_seq == 9
    session.monitor_ended(9)
    assert session.monitor_seq is None
    assert session.receive(request(STOP, 4, 9)) is SUCCESS
    assert session.receive(request(MONITOR, 10, "info")).kind is Kind.START_MONITOR


# ---------------------------------------------------------------------- malformed requests


@pytest.mark.parametrize(
    ("error", "body"),
    [
        (ProtocolError("undecodable msgpack: x", seq=4, command=JOIN), {"Num": 0}),
        (ProtocolError("body field Node must be str", seq=4, command=FORCE_LEAVE), None),
        (FrameTooLarge("frame exceeds the 64-byte limit"), None),
    ],
)
def test_a_malformed_request_is_answered_with_its_reason_and_closes(
    error: ProtocolError, body: Any
) -> None:
    session = new_session()
    decision = session.malformed(error)
    assert (decision.kind, decision.error, decision.body) == (
        Kind.CLOSE,
        f"Malformed request: {error}",
        body,
    )
    assert session.closed
    assert session.receive(request(STATS)) is IGNORE


def test_a_malformed_reason_is_bounded() -> None:
    decision = new_session().malformed(ProtocolError("y" * 50_000, seq=1))
    assert len(decision.error) < 400


def test_a_malformed_request_before_the_handshake_closes_too() -> None:
    session = new_session(handshake=False)
    session.malformed(ProtocolError("request header must be a map, got int"))
    assert session.closed and not session.handshaken
    assert session.receive(request(HANDSHAKE, 1, 1)) is IGNORE


# ---------------------------------------------------------------------- the hot path


def test_the_common_decisions_are_preallocated() -> None:
    """Per-request answers allocate nothing: the same object every time (all kept alive, so
    a fresh object could not reuse a freed one's address)."""
    session = new_session("t")
    seen: dict[str, list[Decision]] = {}
    for seq in range(2, 50):
        for command, body in ((STATS, None), (JOIN, None), (STOP, 0), (MEMBERS_LAN, None)):
            decision = session.receive(request(command, seq, body, token="t"))
            seen.setdefault(command, []).append(decision)
        denied = session.receive(request(MEMBERS_LAN, seq, token="x"))
        seen.setdefault("denied", []).append(denied)
        seen.setdefault("monitor", []).append(session.receive(request(MONITOR, seq, "info", "t")))
        session.monitor_ended(seq)
    for decisions in seen.values():
        assert len(decisions) == 48
        assert all(decision is decisions[0] for decision in decisions)


def test_decisions_are_immutable() -> None:
    with pytest.raises(AttributeError):
        INSTANT.kind = Kind.RUN  # type: ignore[misc]
    assert isinstance(SUCCESS, Decision) and SUCCESS.error == "" and SUCCESS.body is None


def test_a_session_shares_the_command_table_it_is_given() -> None:
    """Thousands of idle connections share the agent's table: a session copies nothing."""
    instant: dict[str, object] = {STATS: object()}
    session = RPCSession(instant, {JOIN: object()}, "")
    session.receive(request(HANDSHAKE, 1, 1))
    assert session.receive(request(MEMBERS_LAN, 2)) is UNSUPPORTED_COMMAND
    session = RPCSession(instant, {JOIN: object()}, "")
    session.receive(request(HANDSHAKE, 1, 1))
    instant[MEMBERS_LAN] = object()
    assert session.receive(request(MEMBERS_LAN, 2)) is INSTANT
    assert not hasattr(session, "__dict__")
