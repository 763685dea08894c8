"""What ``serve`` does around the agent's life, in-process on the autojump clock: the joins at
start (``start_join``, ``retry_join`` and their WAN twins, with their progress lines and
``retry_max``) and the leave on SIGINT/SIGTERM as Consul decides it (``leave_on_terminate``,
``skip_leave_on_interrupt``, with its defaults for servers and clients), bounded by the
graceful timeout and cut short by a second signal."""

from __future__ import annotations

import io
import ipaddress
import os
import signal
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from hypothesis import given, strategies as st
from rpc_helpers import NO_HTTP_NO_DNS

from agentrpc.agent import GRACEFUL_LEAVE_TIMEOUT, Agent, AgentJoinError, AgentStartError
from agentrpc.config import (
    ConfigError,
    leaves_on_terminate,
    load_config,
    parse_duration,
    skips_leave_on_interrupt,
)
from agentrpc.gossip.transport import MemoryGossipNetwork
from agentrpc.membership import LocalPool
from agentrpc.protocol.bodies import Member
from agentrpc.transports import MemoryNetwork

JOIN_ERROR = "1 error(s) occurred:\n\n* Failed to join 10.0.0.9: connection refused"


class ScriptedPool(LocalPool):
    """A pool whose joins answer from a script and whose leave can hang."""

    def __init__(
        self, name: str, joins: Sequence[tuple[int, str]] = (), *, leave_hangs: bool = False
    ) -> None:
        super().__init__(name, Member(name="node1", addr=ipaddress.ip_address("127.0.0.1"), port=1))
        self.script = list(joins)
        self.calls: list[tuple[float, list[str]]] = []
        self.leave_started = trio.Event()
        self.left = False
        self.leave_hangs = leave_hangs

    async def join(self, addresses: Sequence[str]) -> tuple[int, str]:
        self.calls.append((trio.current_time(), list(addresses)))
        await trio.sleep(1)  # a join takes a while
        return self.script.pop(0) if self.script else (len(addresses), "")

    async def leave(self) -> str:
        self.leave_started.set()
        if self.leave_hangs:
            await trio.sleep_forever()
        self.left = True
        return await super().leave()


def make_agent(lan: ScriptedPool, wan: ScriptedPool | None = None, **settings: Any) -> Agent:
    settings = {
        "node_name": "node1",
        "rpc_addr": f"memory://lifecycle-{id(lan)}",
        "server_addr": "127.0.0.1:0",
        "log_level": "DEBUG",
        **NO_HTTP_NO_DNS,
        **settings,
    }
    sink = io.StringIO()
    agent = Agent(
        load_config([], settings),
        log_sink=sink,
        lan=lan,
        wan=wan or ScriptedPool("wan"),
        network=MemoryNetwork(),
        gossip_network=MemoryGossipNetwork(),
    )
    _SINKS[agent] = sink
    return agent


_SINKS: weakref.WeakKeyDictionary[Agent, io.StringIO] = weakref.WeakKeyDictionary()


def log_of(agent: Agent) -> str:
    """What the agent logged so far."""
    return _SINKS[agent].getvalue()


@asynccontextmanager
async def started(agent: Agent, *, signals: bool = False) -> AsyncIterator[Agent]:
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: agent.run(handle_signals=signals, task_status=task_status)
        )
        try:
            yield agent
        finally:
            agent.shutdown()


# ---------------------------------------------------------------------------------- start


async def test_start_join_joins_both_pools_before_the_agent_counts_as_started(
    autojump_clock: trio.abc.Clock,
) -> None:
    lan, wan = ScriptedPool("lan"), ScriptedPool("wan")
    agent = make_agent(
        lan, wan, start_join=["10.0.0.1:8301", "10.0.0.2:8301"], start_join_wan=["10.0.0.1:8302"]
    )
    async with started(agent):
        assert [addresses for _, addresses in lan.calls] == [["10.0.0.1:8301", "10.0.0.2:8301"]]
        assert [addresses for _, addresses in wan.calls] == [["10.0.0.1:8302"]]
        text = log_of(agent)
        assert "Joining cluster through 10.0.0.1:8301, 10.0.0.2:8301..." in text
        assert "Join completed. Synced with 2 initial agents" in text
        assert "Join -wan completed. Synced with 1 initial agents" in text


async def test_a_failed_start_join_stops_the_agent(autojump_clock: trio.abc.Clock) -> None:
    agent = make_agent(ScriptedPool("lan", [(0, JOIN_ERROR)]), start_join=["10.0.0.9:8301"])
    with pytest.raises(AgentJoinError) as caught:
        await agent.run()
    assert isinstance(caught.value, AgentStartError)
    assert str(caught.value) == (
        "could not join the LAN pool through 10.0.0.9:8301: 1 error(s) occurred: "
        "* Failed to join 10.0.0.9: connection refused"
    )
    assert "shutdown complete" in log_of(agent)


async def test_retry_join_retries_every_interval_until_it_joins(
    autojump_clock: trio.abc.Clock,
) -> None:
    lan = ScriptedPool("lan", [(0, JOIN_ERROR), (0, JOIN_ERROR), (1, "")])
    agent = make_agent(lan, retry_join=["10.0.0.9:8301"], retry_interval="30s")
    async with started(agent):
        with trio.fail_after(600):
            while "Join completed" not in log_of(agent):  # noqa: ASYNC110 - virtual time
                await trio.sleep(1)
        times = [when - agent.started_at for when, _ in lan.calls]
        # Each attempt takes 1 s (the scripted join), then 30 s pass before the next.
        assert times == pytest.approx([0, 31, 62], abs=0.5)
        text = log_of(agent)
        assert "Joining cluster through 10.0.0.9:8301 (with retries)..." in text
        assert (
            "Join failed (attempt 1): 1 error(s) occurred: * Failed to join 10.0.0.9: "
            "connection refused, retrying in 30s"
        ) in text
        assert "Join failed (attempt 2): " in text
        assert "Join completed. Synced with 1 initial agents" in text
        assert not agent.stop_error


async def test_retry_join_past_retry_max_stops_the_agent(autojump_clock: trio.abc.Clock) -> None:
    lan = ScriptedPool("lan", [(0, JOIN_ERROR)] * 10)
    agent = make_agent(lan, retry_join=["10.0.0.9:8301"], retry_interval=5, retry_max=2)
    with pytest.raises(AgentJoinError) as caught:
        await agent.run()
    (error,) = caught.value.args
    assert error.startswith(
        "max join retry exhausted: 3 attempts through 10.0.0.9:8301 failed, the last with: "
    )
    assert len(lan.calls) == 3
    text = log_of(agent)
    assert "Join failed (attempt 1 of 3)" in text
    assert "Join failed (attempt 2 of 3)" in text
    assert "max join retry exhausted, exiting" in text


async def test_retry_join_wan_has_its_own_interval_and_max(autojump_clock: trio.abc.Clock) -> None:
    lan, wan = ScriptedPool("lan"), ScriptedPool("wan", [(0, JOIN_ERROR)] * 10)
    agent = make_agent(
        lan, wan, retry_join_wan=["10.0.0.9:8302"], retry_interval_wan="1m", retry_max_wan=1
    )
    with pytest.raises(AgentJoinError, match="max join -wan retry exhausted: 2 attempts"):
        await agent.run()
    assert [when for when, _ in wan.calls][1] - wan.calls[0][0] == pytest.approx(61, abs=0.5)
    assert lan.calls == []
    assert "Join -wan failed (attempt 1 of 2)" in log_of(agent)


UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(sorted(UNITS))), min_size=1))
def test_go_durations_parse_to_seconds(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{value}{unit}" for value, unit in parts)
    expected = sum(value * UNITS[unit] for value, unit in parts)
    assert parse_duration(text) == pytest.approx(expected)
    assert parse_duration(f"-{text}") == pytest.approx(-expected)


@given(st.text(alphabet="0123456789.smhunx -", max_size=8))
def test_a_duration_parses_or_says_why(text: str) -> None:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        assert "invalid duration" in str(exc)
    else:
        assert value == value  # a number, never NaN


def test_join_settings_are_checked() -> None:
    base = {"node_name": "n"}
    assert load_config([], {**base, "retry_interval": "1m30s"}).retry_interval == 90
    assert load_config([], {**base, "start_join": ["a:1"]}).start_join == ("a:1",)
    for bad, message in [
        ({"retry_interval": "soon"}, "invalid duration 'soon'"),
        ({"retry_interval": 0}, "retry_interval must be between 0 and 86400"),
        ({"retry_max": -1}, "retry_max must be between 0"),
        ({"start_join": "a:1"}, "start_join must be a list of strings"),
        ({"retry_join": [""]}, "retry_join must not hold an empty address"),
        ({"server": False, "start_join_wan": ["a:1"]}, "need server mode"),
        ({"leave_on_terminate": "yes"}, "leave_on_terminate must be bool"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config([], {**base, **bad})


# ---------------------------------------------------------------------------------- signals


def test_consuls_defaults_for_the_leave_on_a_signal() -> None:
    server = load_config([], {"node_name": "n", "server": True})
    client = load_config([], {"node_name": "n", "server": False})
    assert (leaves_on_terminate(server), skips_leave_on_interrupt(server)) == (False, True)
    assert (leaves_on_terminate(client), skips_leave_on_interrupt(client)) == (True, False)
    forced = load_config(
        [], {"node_name": "n", "leave_on_terminate": True, "skip_leave_on_interrupt": False}
    )
    assert (leaves_on_terminate(forced), skips_leave_on_interrupt(forced)) == (True, False)


@pytest.mark.parametrize(
    ("server", "signum", "settings", "leaves"),
    [
        (True, signal.SIGINT, {}, False),
        (True, signal.SIGTERM, {}, False),
        (False, signal.SIGINT, {}, True),
        (False, signal.SIGTERM, {}, True),
        (True, signal.SIGINT, {"skip_leave_on_interrupt": False}, True),
        (True, signal.SIGTERM, {"leave_on_terminate": True}, True),
        (False, signal.SIGINT, {"skip_leave_on_interrupt": True}, False),
        (False, signal.SIGTERM, {"leave_on_terminate": False}, False),
    ],
)
async def test_a_signal_leaves_gracefully_as_the_config_decides(
    server: bool, signum: int, settings: dict[str, bool], leaves: bool
) -> None:
    lan = ScriptedPool("lan")
    agent = make_agent(lan, server=server, **settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: agent.run(handle_signals=True, task_status=task_status)
        )
        os.kill(os.getpid(), signum)
        with trio.fail_after(10):
            await agent.wait_stopped()
    assert lan.left is leaves
    text = log_of(agent)
    name = signal.Signals(signum).name
    if leaves:
        assert f"Caught signal: {name}, gracefully shutting down agent..." in text
    else:
        assert f"Caught signal: {name}, shutting down without leaving the cluster" in text
    assert agent.stop_error == ""


async def test_a_graceful_leave_that_hangs_is_bounded(autojump_clock: trio.abc.Clock) -> None:
    lan = ScriptedPool("lan", leave_hangs=True)
    agent = make_agent(lan, server=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: agent.run(handle_signals=True, task_status=task_status)
        )
        os.kill(os.getpid(), signal.SIGTERM)
        with trio.fail_after(60):
            await lan.leave_started.wait()
            begun = trio.current_time()
            await agent.wait_stopped()
    assert trio.current_time() - begun == pytest.approx(GRACEFUL_LEAVE_TIMEOUT, abs=2.5)
    assert agent.stop_error == "graceful leave failed: timed out after 5 s"


async def test_a_second_signal_cuts_the_graceful_leave_short(
    autojump_clock: trio.abc.Clock,
) -> None:
    lan = ScriptedPool("lan", leave_hangs=True)
    agent = make_agent(lan, server=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: agent.run(handle_signals=True, task_status=task_status)
        )
        os.kill(os.getpid(), signal.SIGINT)
        with trio.fail_after(60):
            await lan.leave_started.wait()
            begun = trio.current_time()
            os.kill(os.getpid(), signal.SIGINT)
            await agent.wait_stopped()
    assert trio.current_time() - begun < GRACEFUL_LEAVE_TIMEOUT
    assert agent.stop_error == "graceful leave failed: interrupted by a second signal"


async def test_sighup_reloads_and_keeps_serving(tmp_path: Any) -> None:
    config = tmp_path / "a.json"
    config.write_text('{"log_level": "INFO"}')
    lan = ScriptedPool("lan")
    settings = {
        "node_name": "node1",
        "rpc_addr": "memory://sighup",
        "server": False,
        **NO_HTTP_NO_DNS,
    }
    agent = Agent(
        load_config([config], settings),
        overrides=settings,
        lan=lan,
        network=MemoryNetwork(),
        gossip_network=MemoryGossipNetwork(),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: agent.run(handle_signals=True, task_status=task_status)
        )
        config.write_text('{"log_level": "DEBUG"}')
        os.kill(os.getpid(), signal.SIGHUP)
        with trio.fail_after(10):
            while agent.config.log_level != "DEBUG":  # noqa: ASYNC110 - a worker thread reads
                await trio.sleep(0.01)
        assert not lan.left
        agent.shutdown()
