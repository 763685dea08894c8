"""Three memberlists over real UDP and TCP on 127.0.0.1, in real time."""

from __future__ import annotations

from dataclasses import replace

import trio
from ml_support import Node, alive_names, wait_until

from agentrpc.gossip.contract import GossipAddress, NodeState
from agentrpc.gossip.profiles import LOCAL
from agentrpc.gossip.transport import UdpTcpTransport

# LOCAL, with its probe and gossip clocks sped up five times so that a crash is detected in
# about a second and a half of real time (suspicion minimum: 3 x 0.2 s).
FAST = replace(
    LOCAL, name="fast-local", probe_interval=0.2, probe_timeout=0.1, gossip_interval=0.05
)
NAMES = {"node1", "node2", "node3"}


async def test_three_nodes_over_udp_and_tcp() -> None:
    nodes = [
        Node(f"node{i}", UdpTcpTransport(), GossipAddress("127.0.0.1", 0), profile=FAST, seed=i)
        for i in (1, 2, 3)
    ]
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            for node in nodes:
                await node.start(nursery)
            ports = {node.address.port for node in nodes if node.address is not None}
            assert len(ports) == 3
            seed = str(nodes[0].address)
            for node in nodes[1:]:
                assert await node.memberlist.join([seed]) == (1, [])
            await wait_until(lambda: all(alive_names(n) == NAMES for n in nodes), timeout=3)

            # A reliable user message over TCP.
            await nodes[0].memberlist.send_reliable("node3", b"over tcp")
            await wait_until(lambda: b"over tcp" in nodes[2].delegate.messages, timeout=2)

            # Healthy for a while: probes over UDP are answered.
            await trio.sleep(1)
            assert all(n.events.leaves == [] for n in nodes)
            assert all(n.memberlist.stats.probes > 0 for n in nodes)

            # Graceful leave: left everywhere.
            with trio.fail_after(2):
                await nodes[1].memberlist.leave()
            await wait_until(
                lambda: all(n.state_of("node2") == NodeState.LEFT for n in (nodes[0], nodes[2])),
                timeout=2,
            )
            await nodes[1].kill()

            # Crash: dead everywhere.
            await nodes[2].kill()
            elapsed = await wait_until(lambda: nodes[0].state_of("node3") == NodeState.DEAD, 6)
            assert elapsed < 5
            nursery.cancel_scope.cancel()
