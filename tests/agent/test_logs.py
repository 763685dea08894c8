"""The log hub: line format, ring, level filter, bounded subscriptions that count drops."""

from __future__ import annotations

import io
import re

import pytest
import trio

from agentrpc.logs import DEBUG, ERR, INFO, TRACE, WARN, LogHub, parse_level


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
    assert len(hub._ring) == 10  # no "dropping" lines were logged


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
    assert len(hub._ring) == 1


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
    lines = [line for _, line in hub._ring]
    assert len(lines) == 3
    assert lines[0].endswith("bad client")
    assert lines[1].endswith("another kind")
    assert lines[2].endswith("bad client (49 similar lines held back)")
