"""Blocking queries over the in-process call path on the autojump clock: each is woken by
exactly the change it waits for and not by unrelated ones, times out at MaxQueryTime plus at
most 1/16 of jitter (300 s when none is given), and leaves no waiter behind when cancelled."""

from __future__ import annotations

import io
from typing import Any

import pytest
import trio
import trio.testing
from catalog_helpers import DC, in_process

SECOND = 1_000_000_000


class Pending:
    """A call running in the background; ``reply`` once it returned."""

    def __init__(self) -> None:
        self.reply: Any = None
        self.done = trio.Event()
        self.finished_at = 0.0


def start(nursery: trio.Nursery, call: Any, method: str, args: Any) -> Pending:
    pending = Pending()

    async def run() -> None:
        pending.reply = await call(method, args)
        pending.finished_at = trio.current_time()
        pending.done.set()

    nursery.start_soon(run)
    return pending


async def kv_set(env: Any, key: str, value: bytes = b"v") -> None:
    await env.call(
        "KVS.Apply", {"Datacenter": DC, "Op": "set", "DirEnt": {"Key": key, "Value": value}}
    )


async def test_get_is_woken_by_its_key_only(autojump_clock: trio.testing.MockClock) -> None:
    env = in_process()
    await kv_set(env, "k", b"1")
    first = await env.call("KVS.Get", {"Datacenter": DC, "Key": "k"})
    index = first["Index"]
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        pending = start(
            nursery,
            env.call,
            "KVS.Get",
            {"Datacenter": DC, "Key": "k", "MinQueryIndex": index, "MaxQueryTime": 60 * SECOND},
        )
        await trio.testing.wait_all_tasks_blocked()
        assert env.catalog.hub.waiting == 1
        for other in ("k2", "kk", "j", "k/child"):
            await kv_set(env, other)
            await trio.testing.wait_all_tasks_blocked()
        assert not pending.done.is_set()
        assert env.catalog.hub.woken == 0
        await kv_set(env, "k", b"2")
        await pending.done.wait()
    assert env.catalog.hub.woken == 1
    assert pending.reply["Entries"][0]["Value"] == b"2"
    assert pending.reply["Index"] > index
    assert pending.finished_at == started  # woken at once, not by a timeout
    assert env.catalog.hub.waiting == 0


async def test_list_is_woken_by_keys_under_its_prefix(
    autojump_clock: trio.testing.MockClock,
) -> None:
    env = in_process()
    await kv_set(env, "app/a")
    listed = await env.call("KVS.List", {"Datacenter": DC, "Key": "app/"})
    args = {"Datacenter": DC, "Key": "app/", "MinQueryIndex": listed["Index"]}
    async with trio.open_nursery() as nursery:
        pending = start(nursery, env.call, "KVS.List", args)
        keys = start(
            nursery,
            env.call,
            "KVS.ListKeys",
            {
                "Datacenter": DC,
                "Prefix": "app/",
                "Seperator": "/",
                "MinQueryIndex": listed["Index"],
            },
        )
        await trio.testing.wait_all_tasks_blocked()
        await kv_set(env, "apple")
        await kv_set(env, "ap")
        await trio.testing.wait_all_tasks_blocked()
        assert not pending.done.is_set() and not keys.done.is_set()
        await env.call("KVS.Apply", {"Datacenter": DC, "Op": "delete", "DirEnt": {"Key": "app/a"}})
        await pending.done.wait()
        await keys.done.wait()
    assert pending.reply["Entries"] is None
    assert pending.reply["Index"] > listed["Index"]  # the tombstone's index
    assert keys.reply["Keys"] is None


async def test_catalog_reads_wait_on_their_tables(autojump_clock: trio.testing.MockClock) -> None:
    env = in_process()
    register = {
        "Datacenter": DC,
        "Node": "n1",
        "Address": "10.0.0.1",
        "Service": {"Service": "web"},
        "Check": {"Name": "alive", "Status": "passing", "ServiceID": "web"},
    }
    await env.call("Catalog.Register", register)
    nodes = await env.call("Catalog.ListNodes", {"Datacenter": DC})
    health = await env.call("Health.ServiceNodes", {"Datacenter": DC, "ServiceName": "web"})
    async with trio.open_nursery() as nursery:
        waiting_nodes = start(
            nursery,
            env.call,
            "Catalog.ListNodes",
            {"Datacenter": DC, "MinQueryIndex": nodes["Index"]},
        )
        waiting_health = start(
            nursery,
            env.call,
            "Health.ServiceNodes",
            {"Datacenter": DC, "ServiceName": "web", "MinQueryIndex": health["Index"]},
        )
        await trio.testing.wait_all_tasks_blocked()
        await kv_set(env, "unrelated")
        await env.call("Catalog.Register", register)  # identical node and service: no change
        await trio.testing.wait_all_tasks_blocked()
        assert not waiting_nodes.done.is_set()
        # The check is rewritten (0.7 always writes checks): health wakes, the node list not.
        await waiting_health.done.wait()
        assert not waiting_nodes.done.is_set()
        await env.call("Catalog.Register", {**register, "Address": "10.0.0.2"})
        await waiting_nodes.done.wait()
    assert waiting_nodes.reply["Nodes"][0]["Address"] == "10.0.0.2"
    assert waiting_health.reply["Index"] > health["Index"]


@pytest.mark.parametrize(
    ("max_query_time", "low", "high"),
    [(2 * SECOND, 2.0, 2.125), (0, 300.0, 318.75), (3600 * SECOND, 600.0, 637.5)],
)
async def test_timeout_clamps_and_jitter(
    autojump_clock: trio.testing.MockClock, max_query_time: int, low: float, high: float
) -> None:
    env = in_process()
    await kv_set(env, "k")
    first = await env.call("KVS.Get", {"Datacenter": DC, "Key": "k"})
    began = trio.current_time()
    again = await env.call(
        "KVS.Get",
        {
            "Datacenter": DC,
            "Key": "k",
            "MinQueryIndex": first["Index"],
            "MaxQueryTime": max_query_time,
        },
    )
    waited = trio.current_time() - began
    assert low <= waited < high
    assert again == first  # same answer, same index
    assert env.catalog.hub.waiting == 0


async def test_an_index_below_the_wanted_one_blocks_and_a_later_write_releases_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    env = in_process()
    await kv_set(env, "k")
    async with trio.open_nursery() as nursery:
        pending = start(
            nursery, env.call, "KVS.Get", {"Datacenter": DC, "Key": "k", "MinQueryIndex": 10_000}
        )
        await trio.testing.wait_all_tasks_blocked()
        await kv_set(env, "k", b"again")  # index still below 10000: wait on
        await trio.testing.wait_all_tasks_blocked()
        assert not pending.done.is_set()
        assert env.catalog.hub.woken == 1 and env.catalog.hub.waiting == 1
        nursery.cancel_scope.cancel()
    assert env.catalog.hub.waiting == 0  # cancellation leaves no waiter behind


async def test_a_missing_node_never_blocks_and_restore_wakes_everyone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    env = in_process()
    began = trio.current_time()
    reply = await env.call(
        "Catalog.NodeServices", {"Datacenter": DC, "Node": "ghost", "MinQueryIndex": 5}
    )
    assert reply["Index"] == 0 and reply["NodeServices"] is None
    assert trio.current_time() == began
    # A table never written has index 0: no blocking either.
    assert (await env.call("Session.List", {"Datacenter": DC, "MinQueryIndex": 5}))["Index"] == 0
    assert trio.current_time() == began
    await kv_set(env, "k")
    current = await env.call("KVS.Get", {"Datacenter": DC, "Key": "k"})
    async with trio.open_nursery() as nursery:
        pending = start(
            nursery,
            env.call,
            "KVS.Get",
            {"Datacenter": DC, "Key": "k", "MinQueryIndex": current["Index"] + 100},
        )
        await trio.testing.wait_all_tasks_blocked()
        env.catalog.hub.restore(io.BytesIO(env.fsm.snapshot_bytes()))
        await trio.testing.wait_all_tasks_blocked()
        assert env.catalog.hub.woken == 1  # re-ran after the restore, and waits again
        nursery.cancel_scope.cancel()
    assert not pending.done.is_set()
