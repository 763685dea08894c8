"""Gossip pools over the fake memberlist, each running its tasks: the Trio side of serf's upper
layer (pump, key worker, conflict resolution) driven on trio's autojump clock.

``async with pool_cluster("abc") as cluster:`` builds pools a, b, c on 127.0.0.1, .2, .3,
joins them, starts each pool's ``run`` and a gossip task (one fake gossip round every 0.2 s),
and cancels everything on exit. Pools are built the way
:func:`agentrpc.membership.gossip_setup.start_pool` builds them: memberlist (here the fake) is
given ``pool.delegate``.
"""

from __future__ import annotations

import io
import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import trio
from fake_memberlist import FakeMemberlist, FakeNetwork

from agentrpc.gossip.security import Keyring
from agentrpc.gossip.serf import SerfConfig
from agentrpc.logs import TRACE, LogHub
from agentrpc.membership.gossip_pool import GossipPool

GOSSIP_INTERVAL = 0.2


class PoolCluster:
    """Pools a, b, c, ... over one fake network, each with its own log."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.network = FakeNetwork(trio.current_time)
        self.pools: dict[str, GossipPool] = {}
        self.nodes: dict[str, FakeMemberlist] = {}
        self.sinks: dict[str, io.StringIO] = {}
        self.scopes: dict[str, trio.CancelScope] = {}

    async def add(
        self,
        name: str,
        *,
        host: str = "",
        keyring: Keyring | None = None,
        tags: Mapping[str, str] | None = None,
        keyring_file: str = "",
        seed: int = 0,
        **config: object,
    ) -> GossipPool:
        sink = io.StringIO()
        hub = LogHub(TRACE, sink=sink)
        serf_config = SerfConfig(
            node_name=name,
            tags=dict(tags) if tags is not None else {"role": "node", "id": name},
            keyring_file=keyring_file,
            gossip_interval=GOSSIP_INTERVAL,
            **config,  # type: ignore[arg-type]
        )
        pool = GossipPool(
            "lan",
            serf_config,
            logger=hub.logger("serf"),
            keyring=keyring,
            rng=random.Random(seed or len(self.pools) + 1),
        )
        host = host or f"127.0.0.{len(self.pools) + 1}"
        node = self.network.add(name, pool.delegate, host=host, port=8301)
        if keyring is not None:
            node.keyring = keyring
        pool.attach(node)
        self.pools[name], self.nodes[name], self.sinks[name] = pool, node, sink
        scope = trio.CancelScope()
        self.scopes[name] = scope

        async def run(task_status: trio.TaskStatus[None]) -> None:
            with scope:
                await pool.run(task_status=task_status)

        await self.nursery.start(run)
        return pool

    def address(self, name: str) -> str:
        return str(self.nodes[name].address)

    async def join_all(self) -> None:
        first, *rest = self.pools
        for name in rest:
            assert await self.pools[name].join([self.address(first)]) == (1, "")
        await self.settle()

    async def settle(self) -> None:
        """Gossip until every queue is empty and every pool's pump has run."""
        for _ in range(100):
            sent = self.network.pump()
            for pool in self.pools.values():
                await pool.drain()
            await trio.testing.wait_all_tasks_blocked()
            if sent == 0 and not any(pool.serf.has_output() for pool in self.pools.values()):
                return
        raise AssertionError("the fake cluster did not settle")

    def stop(self, name: str) -> None:
        """Cancel a pool's tasks and stop its fake memberlist (what the agent does when the
        pool asks to shut down)."""
        self.scopes[name].cancel()
        self.network.kill(name)

    def log(self, name: str) -> str:
        return self.sinks[name].getvalue()


async def gossip_forever(network: FakeNetwork) -> None:
    while True:
        network.pump()
        await trio.sleep(GOSSIP_INTERVAL)


@asynccontextmanager
async def pool_cluster(
    names: str = "abc",
    *,
    keyring: Keyring | None = None,
    keyring_for: Callable[[str], Keyring | None] | None = None,
    join: bool = True,
    **config: object,
) -> AsyncIterator[PoolCluster]:
    async with trio.open_nursery() as nursery:
        cluster = PoolCluster(nursery)
        for name in names:
            ring = keyring_for(name) if keyring_for is not None else keyring
            await cluster.add(name, keyring=ring, **config)
        if join:
            await cluster.join_all()
        nursery.start_soon(gossip_forever, cluster.network)
        yield cluster
        nursery.cancel_scope.cancel()
