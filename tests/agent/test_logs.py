"""The log hub: line format, ring (bounded in lines and bytes), level filter, subscriptions
bounded in lines and bytes that count drops."""

from __future__ import annotations

import io
import re

import pytest
import trio
import trio.testing

from agentrpc.logs import (
    DEBUG,
    DEFAULT_RING_BYTES,
    ERR,
    INFO,
    LINE_OVERHEAD,
    MAX_MESSAGE_CHARS,
    TRACE,
    WARN,
    LogHub,
    line_bytes,
    parse_level,
)


def test_line_format_and_sink_level() -> None:
    sink = io.StringIO()
    hub = LogHub(INFO, sink=sink, clock=lambda: 0.0)
    log = hub.logger("agent.rpc")
    log.debug("hidden from the sink")
    log.info("Accepted client: 127.0.0.1:5000")
    printed = sink.getvalue().splitlines()
    assert len(printed) == 1
    assert re.fullmatch(
        r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[INFO\] agent\.rpc: Accepted client: 127\.0\.0\.1:5000",
        printed[0],
    )
    # The ring keeps every level, whatever the sink shows.
    sub = hub.subscribe(TRACE)
    assert [line.split("] ")[0][-5:] for line in sub.replay] == ["DEBUG", "[INFO"]


def test_ring_keeps_the_last_512_lines() -> None:
    hub = LogHub(ERR, sink=io.StringIO())
    log = hub.logger("t")
    for i in range(1000):
        log.info(str(i))
    replay = hub.subscribe(TRACE).replay
    assert len(replay) == 512
    assert replay[0].endswith(": 488")
    assert replay[-1].endswith(": 999")


def test_level_filter_on_replay_and_live_lines() -> None:
    hub = LogHub(ERR, sink=io.StringIO())
    log = hub.logger("t")
    log.trace("a")
    log.warn("b")
    sub = hub.subscribe(WARN, queue_size=10)
    assert [line[-1] for line in sub.replay] == ["b"]
    log.info("c")
    log.error("d")
    assert sub.lines.receive_nowait().endswith("[ERR] t: d")
    with pytest.raises(trio.WouldBlock):
        sub.lines.receive_nowait()


def test_a_full_subscription_drops_and_counts() -> None:
    hub = LogHub(ERR, sink=io.StringIO())
    log = hub.logger("t")
    slow = hub.subscribe(TRACE, queue_size=3)
    fast = hub.subscribe(TRACE, queue_size=100)
    for i in range(10):
        log.info(str(i))
    assert slow.dropped == 7
    assert hub.monitor_dropped == 7
    assert fast.dropped == 0
    assert len(hub.lines()) == 10  # no "dropping" lines were logged


def test_closing_the_hub_ends_subscriptions_after_what_is_queued() -> None:
    hub = LogHub(ERR, sink=io.StringIO())
    sub = hub.subscribe(TRACE)
    hub.logger("t").info("last")
    hub.close()
    assert sub.lines.receive_nowait().endswith("last")
    with pytest.raises(trio.EndOfChannel):
        sub.lines.receive_nowait()
    late = hub.subscribe(TRACE)
    with pytest.raises(trio.EndOfChannel):
        late.lines.receive_nowait()


def test_a_broken_sink_does_not_break_logging() -> None:
    sink = io.StringIO()
    sink.close()
    hub = LogHub(TRACE, sink=sink)
    hub.logger("t").info("still fine")
    assert len(hub.lines()) == 1


@pytest.mark.parametrize(
    ("name", "level"),
    [("trace", TRACE), ("DEBUG", DEBUG), ("Info", INFO), ("warning", WARN), ("error", ERR)],
)
def test_parse_level(name: str, level: int) -> None:
    assert parse_level(name) == level


def test_parse_level_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        parse_level("loud")


def test_throttled_lines_are_held_back_and_counted() -> None:
    hub = LogHub(ERR, sink=io.StringIO())
    clock = [100.0]
    hub._monotonic = lambda: clock[0]
    log = hub.logger("agent.rpc")
    for _ in range(50):
        log.throttled(WARN, "malformed", "bad client")
    log.throttled(WARN, "other", "another kind")
    clock[0] += 1.5
    log.throttled(WARN, "malformed", "bad client")
    lines = hub.lines()
    assert len(lines) == 3
    assert lines[0].endswith("bad client")
    assert lines[1].endswith("another kind")
    assert lines[2].endswith("bad client (49 similar lines held back)")


# ---------------------------------------------------------------------- bounded in bytes


def test_512_lines_of_a_megabyte_keep_the_ring_within_its_byte_bound() -> None:
    hub = LogHub(INFO, sink=io.StringIO())
    log = hub.logger("agent.rpc")
    huge = "x" * (1 << 20)
    for _ in range(512):
        log.debug(huge)  # below the agent's level: never printed, but ringed
    assert hub.ring_bytes == DEFAULT_RING_BYTES
    assert 0 < hub.ring_used <= DEFAULT_RING_BYTES
    assert hub.ring_used == sum(line_bytes(line) for line in hub.lines())
    # Each line was cut in emit (the last line of defence), saying how long it really was.
    for line in hub.lines():
        assert len(line) < MAX_MESSAGE_CHARS + 100
        assert line.endswith(f"...({1 << 20} characters)")
    assert len(hub.lines()) == DEFAULT_RING_BYTES // line_bytes(hub.lines()[0])


def test_the_byte_bound_evicts_the_oldest_and_replay_stays_in_order() -> None:
    hub = LogHub(ERR, sink=io.StringIO(), ring_bytes=16 * 1024)
    log = hub.logger("t")
    for i in range(400):
        log.trace(f"{i:04d} " + "y" * 1000)
    replay = hub.subscribe(TRACE).replay
    assert hub.ring_used <= 16 * 1024
    assert 10 <= len(replay) < 400
    numbers = [int(line.split(": ")[1][:4]) for line in replay]
    assert numbers == list(range(400 - len(replay), 400))  # the newest, oldest first


def test_every_level_is_kept_within_the_byte_bound() -> None:
    hub = LogHub(ERR, sink=io.StringIO())
    log = hub.logger("t")
    log.trace("t")
    log.debug("d")
    log.info("i")
    assert [len(hub.lines(level)) for level in (TRACE, DEBUG, INFO, WARN)] == [3, 2, 1, 0]


def test_set_ring_bytes_shrinks_the_ring_at_once() -> None:
    hub = LogHub(ERR, sink=io.StringIO())
    log = hub.logger("t")
    for i in range(300):
        log.info(f"{i} " + "z" * 500)
    assert len(hub.lines()) == 300
    hub.set_ring_bytes(4096)
    assert hub.ring_used <= 4096
    assert hub.lines()[-1].endswith(": 299 " + "z" * 500)
    with pytest.raises(ValueError):
        hub.set_ring_bytes(0)


def test_non_ascii_lines_count_four_bytes_a_character() -> None:
    assert line_bytes("ab") == 2 + LINE_OVERHEAD
    assert line_bytes("a\U0001f600") == 8 + LINE_OVERHEAD
    hub = LogHub(ERR, sink=io.StringIO(), ring_bytes=8192)
    log = hub.logger("t")
    for _ in range(100):
        log.info("\U0001f600" * 500)
    assert hub.ring_used <= 8192
    assert len(hub.lines()) == 8192 // line_bytes(hub.lines()[0])


def test_a_line_bigger_than_a_tiny_ring_is_printed_but_not_kept() -> None:
    sink = io.StringIO()
    hub = LogHub(INFO, sink=sink, ring_bytes=1024)
    log = hub.logger("t")
    log.info("small")
    log.info("w" * 5000)
    assert [line[-5:] for line in hub.lines()] == ["small"]
    assert "w" * 5000 in sink.getvalue()


def test_a_monitor_queue_is_bounded_in_bytes_and_counts_drops() -> None:
    hub = LogHub(ERR, sink=io.StringIO())
    log = hub.logger("t")
    sub = hub.subscribe(TRACE, queue_size=10_000, queue_bytes=64 * 1024)
    for _ in range(100):
        log.debug("q" * 4000)
    assert sub.queued_bytes <= 64 * 1024
    assert sub.queued == 64 * 1024 // line_bytes(f"{hub.lines()[-1]}")
    assert sub.dropped == 100 - sub.queued
    assert hub.monitor_dropped == sub.dropped
    assert hub.monitor_queued_bytes == sub.queued_bytes
    # Reading gives the bytes back; closing releases what is left.
    sub.lines.receive_nowait()
    assert sub.queued_bytes == (sub.queued) * line_bytes(hub.lines()[-1])
    sub.close()
    assert hub.monitor_queued_bytes == 0
    with pytest.raises(trio.ClosedResourceError):
        sub.lines.receive_nowait()


def test_monitors_that_never_read_are_bounded_together() -> None:
    hub = LogHub(ERR, sink=io.StringIO(), monitor_bytes=100 * 1024)
    log = hub.logger("t")
    subs = [hub.subscribe(DEBUG, queue_size=10_000, queue_bytes=1 << 20) for _ in range(4)]
    for _ in range(1000):
        log.debug("m" * 1000)
    assert hub.monitor_queued_bytes == sum(sub.queued_bytes for sub in subs)
    assert hub.monitor_queued_bytes <= 100 * 1024
    assert all(sub.dropped for sub in subs)
    assert len(hub.lines()) < 1000  # no "dropping" lines either


async def test_live_lines_wake_a_waiting_reader_and_end_after_what_is_queued() -> None:
    hub = LogHub(ERR, sink=io.StringIO())
    log = hub.logger("t")
    sub = hub.subscribe(INFO)
    got: list[str] = []

    async def read_all() -> None:
        async for line in sub.lines:
            got.append(line.rsplit(": ", 1)[1])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        await trio.testing.wait_all_tasks_blocked()
        log.info("one")
        log.debug("hidden")
        log.warn("two")
        await trio.testing.wait_all_tasks_blocked()
        assert got == ["one", "two"]
        log.info("three")
        hub.close()
    assert got == ["one", "two", "three"]
    assert hub.monitor_queued_bytes == 0


def test_lines_gives_the_ring_filtered_by_level() -> None:
    hub = LogHub(ERR, sink=io.StringIO())
    log = hub.logger("t")
    log.debug("a")
    log.warn("b")
    log.error("c")
    assert [line[-1] for line in hub.lines()] == ["a", "b", "c"]
    assert [line[-1] for line in hub.lines(WARN)] == ["b", "c"]


# ------------------------------------------------------------------ the trio-free protocol


def test_the_protocol_is_reexported_by_the_hub_module() -> None:
    import agentrpc.log_protocol as protocol
    import agentrpc.logs as logs
    from agentrpc.protocol import constants

    for name in protocol.__all__:
        assert getattr(logs, name) is getattr(protocol, name)
    assert constants.LOG_LEVELS is protocol.LOG_LEVELS
    assert constants.LEVEL_INDEX is protocol.LEVEL_INDEX
    assert [protocol.LOG_LEVELS[level] for level in (TRACE, DEBUG, INFO, WARN, ERR)] == [
        "TRACE",
        "DEBUG",
        "INFO",
        "WARN",
        "ERR",
    ]


def test_the_loggers_satisfy_the_protocol() -> None:
    from agentrpc.log_protocol import CaptureLog, LogLike, NullLog

    hub = LogHub(TRACE, sink=io.StringIO())
    loggers: list[LogLike] = [hub.logger("agent"), NullLog(), CaptureLog()]
    for logger in loggers:
        logger.log(INFO, "a")
        logger.trace("b")
        logger.throttled(WARN, "key", "c")
    assert len(hub.lines()) == 3


def test_capture_log_keeps_every_line_in_order() -> None:
    from agentrpc.log_protocol import CaptureLog

    log = CaptureLog()
    log.trace("t")
    log.debug("d")
    log.info("i")
    log.warn("w")
    log.error("e")
    log.log(INFO, "l")
    log.throttled(ERR, "decode", "bad packet")
    log.throttled(ERR, "decode", "bad packet")  # nothing is held back
    assert log.records == [
        (TRACE, "t"),
        (DEBUG, "d"),
        (INFO, "i"),
        (WARN, "w"),
        (ERR, "e"),
        (INFO, "l"),
        (ERR, "bad packet"),
        (ERR, "bad packet"),
    ]
    assert log.keys == ["decode", "decode"]
    assert log.lines[:3] == ["TRACE t", "DEBUG d", "INFO i"]
    assert log.text().splitlines() == log.lines
    assert log.messages(WARN) == ["w", "e", "bad packet", "bad packet"]
    assert log.has("ERR bad packet")
    assert log.has("bad packet")
    assert not log.has("WARN bad packet")
    log.clear()
    assert log.records == [] and log.keys == [] and log.lines == []


def _raise_deep(text: str) -> None:
    raise ValueError(text)


def test_describe_failure_of_an_exception_clips_its_text() -> None:
    from agentrpc.log_protocol import PEER_TEXT_LIMIT, describe_failure

    try:
        _raise_deep("x" * 1000)
    except ValueError as exc:
        text = describe_failure(exc)
    first, *rest = text.splitlines()
    assert first == f"ValueError: {'x' * PEER_TEXT_LIMIT}...(1000 characters)"
    assert rest[0] == "Traceback (most recent call last):"
    assert "in _raise_deep" in text
    assert "x" * (PEER_TEXT_LIMIT + 1) not in text


def test_describe_failure_without_a_traceback() -> None:
    from agentrpc.log_protocol import describe_failure

    assert describe_failure(KeyError("k")) == "KeyError: 'k'"


async def test_describe_failure_of_a_group_names_the_first_leaf_and_the_others() -> None:
    from agentrpc.log_protocol import describe_failure

    async def fail(exc: Exception) -> None:
        raise exc  # before any checkpoint, so the first failure cannot cancel the second

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail, RuntimeError("first"))
            nursery.start_soon(fail, OSError("second"))
    except* Exception as group:
        text = describe_failure(group)
    lines = text.splitlines()
    assert lines[0] in ("RuntimeError: first", "OSError: second")
    assert lines[1] in ("(and 1 more: OSError)", "(and 1 more: RuntimeError)")
    assert "in fail" in text  # the leaf's own frames, below the group's


def test_describe_failure_follows_the_cause_chain() -> None:
    from agentrpc.log_protocol import describe_failure

    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError as exc:
        text = describe_failure(ExceptionGroup("wrapped", [exc, ValueError("v")]))
    lines = text.splitlines()
    assert lines[:3] == [
        "RuntimeError: outer",
        "(and 1 more: ValueError)",
        "caused by KeyError: 'inner'",
    ]
