"""Shared pieces of the memberlist tests: recording events, a tiny delegate, node runners."""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from agentrpc.gossip.contract import GossipAddress, GossipTransport, NodeInfo, NodeState
from agentrpc.gossip.memberlist import Memberlist, MemberlistConfig
from agentrpc.gossip.profiles import LAN, GossipProfile
from agentrpc.gossip.serf_messages import encode_tags
from agentrpc.gossip.transport import MemoryGossipNetwork
from agentrpc.logs import DEBUG, LogHub


@dataclass
class RecordingEvents:
    """Every join/leave/update, with ``trio.current_time()`` when it happened."""

    joins: list[tuple[float, NodeInfo]] = field(default_factory=list)
    leaves: list[tuple[float, NodeInfo]] = field(default_factory=list)
    updates: list[tuple[float, NodeInfo]] = field(default_factory=list)

    def notify_join(self, node: NodeInfo) -> None:
        self.joins.append((trio.current_time(), node))

    def notify_leave(self, node: NodeInfo) -> None:
        self.leaves.append((trio.current_time(), node))

    def notify_update(self, node: NodeInfo) -> None:
        self.updates.append((trio.current_time(), node))

    def first_leave(self, name: str) -> tuple[float, NodeInfo] | None:
        return next(((t, n) for t, n in self.leaves if n.name == name), None)


@dataclass
class RecordingDelegate:
    """Serf-compatible Meta (0xFF + msgpack tags), no user state, records user messages."""

    tags: dict[str, str] = field(default_factory=lambda: {"role": "test"})
    messages: list[bytes] = field(default_factory=list)
    remote_states: list[tuple[bytes, bool]] = field(default_factory=list)
    outgoing: list[bytes] = field(default_factory=list)
    user_state: bytes = b""

    def node_meta(self, limit: int) -> bytes:
        return encode_tags(self.tags)

    def notify_message(self, payload: bytes) -> None:
        self.messages.append(payload)

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        out: list[bytes] = []
        used = 0
        while self.outgoing and used + overhead + len(self.outgoing[0]) <= limit:
            message = self.outgoing.pop(0)
            used += overhead + len(message)
            out.append(message)
        return out

    def has_broadcasts(self) -> bool:
        return bool(self.outgoing)

    def local_state(self, join: bool) -> bytes:
        return self.user_state

    def merge_remote_state(self, state: bytes, join: bool) -> None:
        self.remote_states.append((state, join))


class Node:
    """One memberlist run inside its own cancel scope (cancel it to 'kill' the node)."""

    def __init__(
        self,
        name: str,
        transport: GossipTransport,
        bind: GossipAddress,
        *,
        profile: GossipProfile = LAN,
        seed: int = 0,
        log_level: int = DEBUG,
        delegate: RecordingDelegate | None = None,
        **config: object,
    ) -> None:
        self.name = name
        self.events = RecordingEvents()
        self.delegate = (
            delegate
            if delegate is not None
            else RecordingDelegate(tags={"role": "test", "id": name})
        )
        self.log_sink = io.StringIO()
        self.hub = LogHub(level=log_level, sink=self.log_sink)
        self.memberlist = Memberlist(
            MemberlistConfig(name=name, bind=bind, profile=profile, **config),  # type: ignore[arg-type]
            self.delegate,
            self.events,
            self.hub.logger("memberlist"),
            transport,
            random.Random(seed),
        )
        self.scope = trio.CancelScope()
        self.address: GossipAddress | None = None
        self.stopped = trio.Event()

    async def _run(self, task_status: trio.TaskStatus[GossipAddress]) -> None:
        try:
            with self.scope:
                await self.memberlist.run(task_status=task_status)
        finally:
            self.stopped.set()

    async def start(self, nursery: trio.Nursery) -> GossipAddress:
        self.address = await nursery.start(self._run)
        return self.address

    async def kill(self) -> None:
        """Cancel every task of the node (no leave) and wait until it is gone."""
        self.scope.cancel()
        await self.stopped.wait()

    def state_of(self, name: str) -> NodeState | None:
        info = self.memberlist.node(name)
        return None if info is None else info.state

    def log_text(self) -> str:
        return self.log_sink.getvalue()


async def wait_until(
    condition: Callable[[], bool],
    timeout: float,  # noqa: ASYNC109 - the bound is the point of this helper
    poll: float = 0.05,
    nodes: Sequence[Node] = (),
) -> float:
    """Poll ``condition`` until true and return the time taken; after ``timeout`` seconds
    fail with what each of ``nodes`` sees (and its log) in the message. Under the autojump
    clock the polling costs no real time."""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        while True:
            if condition():
                return trio.current_time() - start
            await trio.sleep(poll)
    raise AssertionError(f"condition not met within {timeout} s\n{describe(nodes)}")


def describe(nodes: Sequence[Node]) -> str:
    """Each node's member list and log, for failure messages."""
    now = trio.current_time()
    parts = []
    for node in nodes:
        view = sorted(
            (m.name, m.state.name, m.incarnation, round(m.state_change - now, 2))
            for m in node.memberlist.members()
        )
        parts.append(f"== {node.name} at {now:.2f}: {view}\n{node.log_text()}")
    return "\n".join(parts)


def memory_nodes(
    network: MemoryGossipNetwork,
    count: int,
    *,
    profile: GossipProfile = LAN,
    port: int = 7946,
    prefix: str = "node",
) -> list[Node]:
    """``count`` nodes named node1.. on hosts 127.0.0.1.., all on the same port."""
    return [
        Node(
            f"{prefix}{index}",
            network.transport(),
            GossipAddress(f"127.0.0.{index}", port),
            profile=profile,
            seed=index,
        )
        for index in range(1, count + 1)
    ]


def alive_names(node: Node) -> set[str]:
    return {n.name for n in node.memberlist.members() if n.state == NodeState.ALIVE}
