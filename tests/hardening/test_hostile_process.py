"""Issue 9's table of attacks, each against a real agent process over TCP (and UDP for gossip).

One test per row. Each asserts the row's bound, measured from the outside: the agent's RSS
growth from ``/proc`` where the measurement is RSS, its log lines, the size of its replies;
and that a well-behaved client (a separate process calling ``stats`` every 10 ms) got every
answer, without an error, within a generous 2 s meanwhile. The attacks are smaller than the
script's (``scripts/hostile.py``, which also judges the 50 ms p99 target) but big enough that
the old behaviour fails each bound clearly: one pipelining client grew the agent by 632 MB.
The attack code and the bounds are ``hostile_support``'s, shared with the script.
"""

from __future__ import annotations

from dataclasses import replace

from hostile_support import ROWS, AgentLog, Outcome, Size

SMALL = Size(
    seconds=4.0,
    clients=10,
    connections=256,
    monitors=2,
    server_connections=16,
    alive_nodes=15_000,
    max_members=5_000,
)


async def run_row(name: str, size: Size = SMALL) -> Outcome:
    outcome = await ROWS[name].run(size)
    assert outcome.checks, "the row checked nothing"
    failures = outcome.failures()
    assert not failures, failures
    return outcome


async def test_clients_pipelining_stats_without_reading_stay_within_100_mb() -> None:
    await run_row("stats-pipeline")


async def test_clients_pipelining_members_without_reading_stay_within_100_mb() -> None:
    await run_row("members-pipeline")


async def test_huge_command_names_before_the_handshake_and_stalled_debug_monitors() -> None:
    await run_row("prehandshake-names")


async def test_a_huge_service_method_on_the_server_port_is_clipped_in_reply_and_log() -> None:
    await run_row("server-method")


async def test_pings_for_a_wrong_node_name_are_logged_at_most_a_few_times_a_second() -> None:
    await run_row("wrong-node-ping")


async def test_alive_messages_for_made_up_nodes_stop_at_the_member_cap() -> None:
    await run_row("alive-flood")


async def test_a_push_pull_with_more_nodes_than_the_cap_is_refused_cheaply() -> None:
    # The default cap (50,000): the old agent took every node of such a stream.
    outcome = await run_row("push-pull-flood", replace(SMALL, max_members=None, push_nodes=60_000))
    assert outcome.facts["members"] == 1, "no made-up node got in"


async def test_a_config_file_past_the_limit_is_refused_by_reload_and_at_start() -> None:
    await run_row("big-config", Size())


async def test_strings_that_are_not_utf8_from_a_go_client_are_answered() -> None:
    await run_row("go-strings")


def test_the_log_counter_counts_lines_and_the_longest_across_reads() -> None:
    log = AgentLog()
    for chunk in (b"ab", b"c\nde\n", b"x" * 5000, b"y\n", b"agent started\n", b"tail"):
        log.feed(chunk)
    assert log.lines == 4
    assert log.longest == 5001
    assert log.bytes == 2 + 5 + 5000 + 2 + 14 + 4
    assert list(log.tail)[:2] == ["abc", "de"]
    assert len(log.tail[2]) == 300  # a long line is kept clipped
    assert log.started.is_set()
