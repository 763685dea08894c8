"""An in-process stand-in for memberlist, to drive several serf layers in one test.

:class:`FakeNetwork` holds the nodes; each :class:`FakeMemberlist` implements
:class:`~agentrpc.gossip.contract.MemberlistHandle` over one node's serf layer (its delegate
and event delegate). What memberlist would do is reduced to its effect on the layer above:

* ``start`` announces the local node to its own serf (memberlist's NotifyJoin of itself).
* ``join`` is a push/pull: the two sides' node lists are merged through the whole connected
  group (NotifyJoin for every newly seen alive node) and the serf user states are exchanged
  both ways (``local_state`` / ``merge_remote_state``), as memberlist's stream push/pull does.
* ``pump`` is one gossip round: each running node takes its broadcasts (``get_broadcasts``)
  and every other running node that it knows alive receives them (``notify_message``).
  ``settle`` pumps until every queue is empty; ``gossip`` pumps on a trio timer.
* ``kill`` stops a node silently: the others see NotifyLeave with state DEAD (failed).
* ``leave`` is ``dead{self}``: everyone that knows the node, and the node itself, see
  NotifyLeave with state LEFT.
* ``update_meta`` re-reads ``node_meta`` and sends NotifyUpdate everywhere (itself included).
* ``send_to_address`` is a UDP user message: delivered at once to the running node at that
  address (lost otherwise, or when the test drops it); ``route_sends`` does the same for the
  sends a bare :class:`~agentrpc.gossip.serf.SerfState` queued (``settle`` routes them too).
* ``set_keyring`` records the keyring memberlist would use; ``conflict`` reports a name
  conflict to the node's conflict delegate, as memberlist's NotifyConflict.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

import trio

from agentrpc.gossip.contract import (
    GossipAddress,
    MemberlistDelegate,
    MemberlistEvents,
    NodeInfo,
    NodeState,
    Vsn,
)
from agentrpc.gossip.messages import META_MAX_SIZE
from agentrpc.gossip.security import Keyring
from agentrpc.gossip.serf import SerfState

DEFAULT_VSN: Vsn = (1, 5, 2, 2, 5, 4)
UDP_LIMIT = 1400
USER_MSG_OVERHEAD = 2


class SerfLayer(MemberlistDelegate, MemberlistEvents, Protocol):
    """What memberlist is given: one object that is both delegates (as SerfState is)."""


class FakeNetwork:
    """The nodes of one fake gossip pool, addressed by ``host:port``."""

    def __init__(self, clock: Callable[[], float] = lambda: 0.0) -> None:
        self.nodes: dict[str, FakeMemberlist] = {}
        self.clock = clock
        self.delivered = 0
        self.udp_sent: list[tuple[str, str, bytes]] = []
        """Every ``send_to_address``: (sender, address, payload)."""
        self.drop_udp: Callable[[str, str, bytes], bool] = lambda sender, to, payload: False
        """Say True to lose a packet."""

    def add(
        self,
        name: str,
        layer: SerfLayer,
        *,
        host: str = "",
        port: int = 7946,
        vsn: Vsn = DEFAULT_VSN,
        start: bool = True,
    ) -> FakeMemberlist:
        host = host or f"127.0.0.{len(self.nodes) + 1}"
        node = FakeMemberlist(self, name, layer, GossipAddress(host, port), vsn)
        self.nodes[name] = node
        if start:
            node.start()
        return node

    def by_address(self, address: str) -> FakeMemberlist | None:
        for node in self.nodes.values():
            if str(node.advertise_address) == address:
                return node
        return None

    def kill(self, name: str, *, observers: Sequence[str] | None = None) -> None:
        """Stop ``name`` without a word; ``observers`` (default: all) detect it as dead."""
        victim = self.nodes[name]
        victim.running = False
        for node in self._running(observers):
            node.mark(name, NodeState.DEAD)

    def revive(self, name: str) -> None:
        """Restart a killed node's memberlist (it has to be joined again to be seen)."""
        node = self.nodes[name]
        node.running = True
        node.left = False
        node.incarnation += 1
        node.known = {name: node.own_info()}

    def pump(self) -> int:
        """One gossip round; returns how many messages were delivered."""
        sent = 0
        for node in list(self.nodes.values()):
            if not node.running or node.left:
                continue
            for payload in node.layer.get_broadcasts(USER_MSG_OVERHEAD, UDP_LIMIT):
                for target in self._peers_of(node):
                    target.layer.notify_message(payload)
                    sent += 1
        self.delivered += sent
        return sent

    def deliver_udp(self, sender: str, address: str, payload: bytes) -> bool:
        """One UDP user message from ``sender`` to ``address``; False when lost."""
        self.udp_sent.append((sender, address, payload))
        peer = self.by_address(address)
        if peer is None or not peer.running or peer.left:
            return False
        if self.drop_udp(sender, address, payload):
            return False
        peer.layer.notify_message(payload)
        return True

    def route_sends(self) -> int:
        """Deliver what bare serf states queued to send by UDP; returns how many."""
        count = 0
        for node in list(self.nodes.values()):
            if isinstance(node.layer, SerfState) and node.running:
                for send in node.layer.take_sends():
                    self.deliver_udp(node.name, str(send.address), send.payload)
                    count += 1
        return count

    def settle(self, max_rounds: int = 200) -> int:
        """Pump (and route UDP sends) until nothing is left to send; fails on a rebroadcast
        storm."""
        total = 0
        for _ in range(max_rounds):
            sent = self.pump() + self.route_sends()
            total += sent
            if sent == 0:
                return total
        raise AssertionError(f"gossip did not settle in {max_rounds} rounds")

    async def gossip(self, interval: float = 0.2) -> None:
        """Pump every ``interval`` seconds until cancelled."""
        while True:
            self.pump()
            await trio.sleep(interval)

    def _running(self, names: Sequence[str] | None) -> list[FakeMemberlist]:
        chosen = self.nodes.values() if names is None else [self.nodes[n] for n in names]
        return [node for node in chosen if node.running]

    def _peers_of(self, node: FakeMemberlist) -> list[FakeMemberlist]:
        peers = []
        for name, info in node.known.items():
            peer = self.nodes.get(name)
            if name == node.name or peer is None or not peer.running or peer.left:
                continue
            if info.state is NodeState.ALIVE:
                peers.append(peer)
        return peers


class FakeMemberlist:
    """One node's memberlist, as far as the serf layer can tell."""

    def __init__(
        self,
        network: FakeNetwork,
        name: str,
        layer: SerfLayer,
        address: GossipAddress,
        vsn: Vsn,
    ) -> None:
        self.network = network
        self.name = name
        self.layer = layer
        self.address = address
        self.vsn = vsn
        self.incarnation = 1
        self.running = False
        self.left = False
        self.known: dict[str, NodeInfo] = {}
        self.health = 0
        self.leave_calls = 0
        self.max_members = 0
        """What the pool last passed to :meth:`set_max_members` (0: never called)."""
        self.join_calls: list[list[str]] = []
        self.reliable_sent: list[tuple[str, bytes]] = []
        self.leave_blocks = False
        """When set, ``leave`` never returns (to test the caller's bound)."""
        self.keyring: Keyring | None = None
        self.keyrings_set: list[Keyring] = []
        self.gossip_wakeups = 0

    # ---------------------------------------------------------------- test controls

    def start(self) -> None:
        self.running = True
        info = self.own_info()
        self.known[self.name] = info
        self.layer.notify_join(info)

    def own_info(self) -> NodeInfo:
        host = self.address.host
        return NodeInfo(
            name=self.name,
            addr=ipaddress.ip_address(host).packed,
            port=self.address.port,
            meta=self.layer.node_meta(META_MAX_SIZE),
            incarnation=self.incarnation,
            state=NodeState.LEFT if self.left else NodeState.ALIVE,
            vsn=self.vsn,
            state_change=self.network.clock(),
        )

    def learn(self, info: NodeInfo) -> None:
        """Memberlist heard an alive message for ``info``."""
        old = self.known.get(info.name)
        if old is not None and old.incarnation >= info.incarnation and old.state == info.state:
            return
        self.known[info.name] = info
        if info.state is not NodeState.ALIVE:
            return
        if old is None or old.state is not NodeState.ALIVE:
            self.layer.notify_join(info)
        elif old.meta != info.meta or old.addr != info.addr or old.port != info.port:
            self.layer.notify_update(info)

    def mark(self, name: str, state: NodeState) -> None:
        """Memberlist declared ``name`` dead (or left)."""
        old = self.known.get(name)
        if old is None or old.state is not NodeState.ALIVE:
            return
        info = replace(old, state=state, state_change=self.network.clock())
        self.known[name] = info
        self.layer.notify_leave(info)

    def snapshot(self) -> tuple[list[NodeInfo], bytes]:
        return list(self.known.values()), self.layer.local_state(True)

    def merge(self, nodes: list[NodeInfo], user_state: bytes) -> None:
        for info in nodes:
            if info.state is NodeState.ALIVE:
                self.learn(info)
        if user_state:
            self.layer.merge_remote_state(user_state, True)

    # ---------------------------------------------------------------- MemberlistHandle

    @property
    def local_name(self) -> str:
        return self.name

    @property
    def advertise_address(self) -> GossipAddress:
        return self.address

    def members(self) -> list[NodeInfo]:
        return list(self.known.values())

    def num_alive(self) -> int:
        return sum(1 for info in self.known.values() if info.state is NodeState.ALIVE)

    @property
    def health_score(self) -> int:
        return self.health

    async def join(self, addresses: Sequence[str]) -> tuple[int, list[str]]:
        await trio.lowlevel.checkpoint()
        self.join_calls.append(list(addresses))
        num = 0
        errors: list[str] = []
        for address in addresses:
            if ":" not in address:
                address = f"{address}:{self.address.port}"
            peer = self.network.by_address(address)
            if peer is None or not peer.running or peer is self:
                errors.append(f"Failed to join {address}: connection refused")
                continue
            self.push_pull(peer)
            num += 1
        return num, errors

    def push_pull(self, peer: FakeMemberlist) -> None:
        """A join's push/pull, then the new nodes spread to both sides' groups."""
        ours = self.snapshot()
        theirs = peer.snapshot()
        peer.merge(*ours)
        self.merge(*theirs)
        group = {
            name: self.network.nodes[name]
            for node in (self, peer)
            for name, info in node.known.items()
            if info.state is NodeState.ALIVE and name in self.network.nodes
        }
        everyone = [
            node.known[node.name]
            for node in group.values()
            if node.running and node.known[node.name].state is NodeState.ALIVE
        ]
        for node in group.values():
            if node.running:
                for info in everyone:
                    node.learn(info)

    async def leave(self) -> None:
        self.leave_calls += 1
        if self.leave_blocks:
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()
        self.left = True
        for node in self.network.nodes.values():
            if node.running:
                node.mark(self.name, NodeState.LEFT)

    def update_meta(self) -> None:
        self.incarnation += 1
        info = self.own_info()
        for node in self.network.nodes.values():
            if node.running and self.name in node.known:
                node.learn(info)

    async def send_reliable(self, node: str, payload: bytes) -> None:
        await trio.lowlevel.checkpoint()
        peer = self.network.nodes.get(node)
        if peer is None or not peer.running:
            raise OSError(f"no route to {node}")
        self.reliable_sent.append((node, payload))
        peer.layer.notify_message(payload)

    def set_max_members(self, max_members: int) -> None:
        self.max_members = max_members

    async def send_to_address(self, address: GossipAddress, payload: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self.running and not self.left:
            self.network.deliver_udp(self.name, str(address), payload)

    def set_keyring(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self.keyrings_set.append(keyring)

    def wake_gossip(self) -> None:
        """The fake gossips only when a test pumps it, so a wake-up is only counted."""
        self.gossip_wakeups += 1

    def conflict(self, other: NodeInfo) -> None:
        """Memberlist saw an alive message giving a known name another address."""
        existing = self.known.get(other.name)
        assert existing is not None, f"{self.name} knows no {other.name}"
        notify = getattr(self.layer, "notify_conflict", None)
        assert notify is not None
        notify(existing, other)
