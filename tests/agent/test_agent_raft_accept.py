"""Byte 1 that reaches a server port before its Raft engine runs waits for the engine (as
Consul's Raft layer queues connections until Raft accepts them), instead of being refused as
an unknown byte; once the engine has ended, or after the wait bound, it is closed."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from agentrpc.agent import RAFT_ACCEPT_WAIT, Agent
from agentrpc.config import load_config


class FakeEngine:
    def __init__(self) -> None:
        self.peers: list[str] = []

    async def handle_connection(self, stream: trio.abc.Stream, peer: str) -> None:
        self.peers.append(peer)


def idle_agent() -> Agent:
    return Agent(load_config([], {"node_name": "n1", "http_addr": "", "dns_addr": ""}))


async def test_an_early_raft_connection_waits_for_the_engine(
    autojump_clock: trio.abc.Clock,
) -> None:
    agent = idle_agent()
    engine = FakeEngine()
    stream, _ = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent._raft_connection, stream, "10.0.0.2:8300")
        await trio.sleep(1.0)  # Raft is not running yet: the connection waits
        assert engine.peers == []
        fake: Any = engine
        agent._raft_engine = fake
        agent._raft_started.set()
    assert engine.peers == ["10.0.0.2:8300"]


async def test_without_an_engine_the_wait_is_bounded(autojump_clock: trio.abc.Clock) -> None:
    agent = idle_agent()
    stream, _ = trio.testing.memory_stream_pair()
    started = trio.current_time()
    await agent._raft_connection(stream, "10.0.0.2:8300")
    assert trio.current_time() - started == RAFT_ACCEPT_WAIT
