"""Gossip faults seen from a whole agent: a peer that accepts TCP and never answers, and a
partition between two groups that heals (in-process network, autojump clock)."""

from __future__ import annotations

import contextlib
from contextlib import AbstractAsyncContextManager

import trio
from rpc_helpers import client_for, running_agent

from agentrpc.agent import Agent
from agentrpc.client import ClientError, JoinError
from agentrpc.gossip.contract import GossipAddress
from agentrpc.gossip.transport import MemoryGossipNetwork, MemoryGossipTransport


async def test_join_to_a_peer_that_never_answers_times_out(autojump_clock: trio.abc.Clock) -> None:
    network = MemoryGossipNetwork()
    packets, listener = await MemoryGossipTransport(network).bind(GossipAddress("127.0.0.9", 8301))
    held: list[trio.abc.Stream] = []

    async def accept_and_ignore() -> None:
        while True:
            stream, _ = await listener.accept()
            held.append(stream)  # never read, never answered, never closed

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_and_ignore)
        async with (
            running_agent("memory", gossip_network=network) as agent,
            client_for(agent) as client,
        ):
            start = trio.current_time()
            try:
                await client.join(["127.0.0.9:8301"])
            except JoinError as exc:
                assert exc.num == 0
                assert "Failed to join 127.0.0.9" in exc.error
            else:
                raise AssertionError("a join to a silent peer succeeded")
            # Bounded by the LAN profile's TCP timeout (10 s), not forever.
            assert 9.0 <= trio.current_time() - start <= 11.0
            assert len(await client.members_lan()) == 1
        assert held
        nursery.cancel_scope.cancel()
    packets.close()


def agent_on(
    network: MemoryGossipNetwork, name: str, host: str
) -> AbstractAsyncContextManager[Agent]:
    return running_agent(
        "memory",
        gossip_network=network,
        node_name=name,
        serf_lan_addr=f"{host}:8301",
        serf_wan_addr=f"{host}:8302",
    )


async def _statuses(agent: Agent) -> dict[str, str]:
    async with client_for(agent) as client:
        return {m.name: m.status for m in await client.members_lan()}


async def test_a_partition_heals(autojump_clock: trio.abc.Clock) -> None:
    network = MemoryGossipNetwork()
    hosts = [f"127.0.0.{i}" for i in (1, 2, 3, 4)]
    async with (
        agent_on(network, "a1", hosts[0]) as a1,
        agent_on(network, "a2", hosts[1]) as a2,
        agent_on(network, "b1", hosts[2]) as b1,
        agent_on(network, "b2", hosts[3]) as b2,
    ):
        async with client_for(a1) as client:
            assert await client.join([f"{host}:8301" for host in hosts[1:]]) == 3
        everyone = {"a1": "alive", "a2": "alive", "b1": "alive", "b2": "alive"}
        with trio.fail_after(30):
            while await _statuses(b2) != everyone:  # noqa: ASYNC110 - virtual time
                await trio.sleep(0.5)
        # Cut a* from b*: each side sees the other failed.
        network.partition(hosts[:2], hosts[2:])
        split_a = {"a1": "alive", "a2": "alive", "b1": "failed", "b2": "failed"}
        with trio.fail_after(120):
            while await _statuses(a1) != split_a:  # noqa: ASYNC110 - virtual time
                await trio.sleep(0.5)
        # Heal: serf's reconnect attempts (every 30 s) bring the sides back together.
        network.heal()
        with trio.fail_after(300):
            for agent in (a1, a2, b1, b2):
                while await _statuses(agent) != everyone:  # noqa: ASYNC110 - virtual time
                    await trio.sleep(0.5)


async def test_an_agent_shut_down_in_the_middle_of_a_join(autojump_clock: trio.abc.Clock) -> None:
    """The joining agent dies while its push/pull hangs on a silent peer: it stops promptly
    (nothing hangs), and the rest of the cluster is unaffected."""
    network = MemoryGossipNetwork()
    packets, listener = await MemoryGossipTransport(network).bind(GossipAddress("127.0.0.9", 8301))

    async def accept_and_ignore() -> None:
        held = []
        while True:
            stream, _ = await listener.accept()
            held.append(stream)

    async with (
        trio.open_nursery() as nursery,
        agent_on(network, "steady", "127.0.0.1") as steady,
    ):
        nursery.start_soon(accept_and_ignore)
        async with agent_on(network, "doomed", "127.0.0.2") as doomed:

            async def join_through_both() -> None:
                # The agent goes away under the call: the client reports it, nothing hangs.
                with contextlib.suppress(ClientError):
                    async with client_for(doomed) as client:
                        await client.join(["127.0.0.9:8301", "127.0.0.1:8301"])

            nursery.start_soon(join_through_both)
            await trio.sleep(0.5)  # the silent peer holds the join
            stopped_at = trio.current_time()
            doomed.shutdown()
            with trio.fail_after(10):
                await doomed.wait_stopped()
            assert trio.current_time() - stopped_at < doomed.limits.drain_timeout + 2
        # The survivor keeps working; the doomed node, if it got in, ends failed.
        with trio.fail_after(60):
            while (await _statuses(steady)).get("doomed", "failed") != "failed":  # noqa: ASYNC110
                await trio.sleep(0.5)
        assert (await _statuses(steady))["steady"] == "alive"
        nursery.cancel_scope.cancel()
    packets.close()
