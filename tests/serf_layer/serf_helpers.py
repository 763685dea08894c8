"""Small helpers shared by the serf-layer tests: a hand-driven clock, a recording log, nodes."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Mapping

from fake_memberlist import DEFAULT_VSN

from agentrpc.gossip.contract import NodeInfo, NodeState, Vsn
from agentrpc.gossip.security import Keyring
from agentrpc.gossip.serf import MemberEvent, SerfConfig, SerfState
from agentrpc.gossip.serf_messages import encode_tags
from agentrpc.log_protocol import CaptureLog


class ManualClock:
    """Seconds that move only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


RecordingLog = CaptureLog
"""Keeps every line; ``lines`` reads them as ``LEVEL message``."""


def node_info(
    name: str,
    host: str = "127.0.0.2",
    port: int = 7946,
    *,
    tags: Mapping[str, str] | None = None,
    meta: bytes | None = None,
    state: NodeState = NodeState.ALIVE,
    vsn: Vsn = DEFAULT_VSN,
    incarnation: int = 1,
) -> NodeInfo:
    if meta is None:
        meta = encode_tags(tags if tags is not None else {"role": "node"})
    return NodeInfo(
        name=name,
        addr=ipaddress.ip_address(host).packed,
        port=port,
        meta=meta,
        incarnation=incarnation,
        state=state,
        vsn=vsn,
        state_change=0.0,
    )


class Serf:
    """A SerfState with its clock, log and event record, for single-node tests."""

    def __init__(
        self,
        name: str = "node1",
        config: SerfConfig | None = None,
        *,
        keyring: Keyring | None = None,
        seed: int = 1,
    ) -> None:
        self.clock = ManualClock()
        self.log = RecordingLog()
        self.events: list[MemberEvent] = []
        config = config if config is not None else SerfConfig(node_name=name)
        self.state = SerfState(
            config,
            logger=self.log,
            clock=self.clock,
            on_event=self.events.append,
            rng=random.Random(seed),
            keyring=keyring,
        )

    def join_self(self, host: str = "127.0.0.1") -> None:
        """Memberlist announces the local node, as it does when it starts."""
        self.state.notify_join(
            node_info(self.state.local_name, host, meta=self.state.node_meta(512))
        )
