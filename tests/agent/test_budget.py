"""The byte budgets' rules, on their own (no sockets)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from agentrpc.budget import ConnectionBudget, SharedBudget


async def test_a_connection_waits_past_its_limit_and_resumes_on_release() -> None:
    budget = ConnectionBudget(100)
    assert budget.try_reserve(60)
    assert not budget.try_reserve(60)  # 120 > 100 while something is queued
    got = trio.Event()

    async def producer() -> None:
        await budget.reserve(60)
        got.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert not got.is_set()
        budget.release(60)
        await got.wait()
    assert budget.used == 60


def test_one_item_above_the_limit_passes_when_nothing_is_queued() -> None:
    budget = ConnectionBudget(100)
    assert budget.try_reserve(1000)
    assert not budget.try_reserve(1)
    budget.release(1000)
    assert budget.used == 0


async def test_the_shared_budget_bounds_the_sum_but_an_empty_connection_gets_its_reserve() -> None:
    shared = SharedBudget(1000, reserve=64)
    full = [ConnectionBudget(800, shared) for _ in range(2)]
    assert full[0].try_reserve(700)
    assert not full[1].try_reserve(400)  # would pass the shared 1000
    assert full[1].try_reserve(300)
    assert shared.used == 1000
    fresh = ConnectionBudget(800, shared)
    assert fresh.try_reserve(64)  # empty: its reserve goes through
    assert not fresh.try_reserve(1)  # but no more
    big = ConnectionBudget(800, shared)
    assert not big.try_reserve(65)  # above the reserve: waits for room
    waited = trio.Event()

    async def producer() -> None:
        await big.reserve(200)
        waited.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert not waited.is_set()
        assert shared.waits == 1
        full[0].close()  # a closed connection gives everything back
        await waited.wait()
    assert shared.used == 300 + 64 + 200
    assert shared.peak == 1064


async def test_a_closed_budget_fails_its_waiters_and_later_producers() -> None:
    budget = ConnectionBudget(10)
    assert budget.try_reserve(10)

    async def producer() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await budget.reserve(5)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        budget.close()
    assert budget.used == 0
    assert not budget.try_reserve(1)
    with pytest.raises(trio.ClosedResourceError):
        await budget.reserve(1)


async def test_raising_the_shared_limit_wakes_waiters() -> None:
    shared = SharedBudget(100, reserve=0)
    first, second = ConnectionBudget(1000, shared), ConnectionBudget(1000, shared)
    assert first.try_reserve(100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(second.reserve, 50)
        await trio.testing.wait_all_tasks_blocked()
        assert second.used == 0
        shared.set_limit(200)
    assert second.used == 50
    with pytest.raises(ValueError):
        shared.set_limit(0)
