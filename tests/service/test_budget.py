"""The decode memory budget: who holds how much, in what order, and what a timeout or a cancellation leaves."""

from __future__ import annotations

import asyncio

import pytest

from vestis.service.batching import Overloaded
from vestis.service.budget import MemoryBudget


async def _hold(budget: MemoryBudget, name: str, nbytes: int, log: list[str], release: asyncio.Event) -> None:
    async with budget.reserve(nbytes, timeout=5):
        log.append(f"+{name}")
        await release.wait()
    log.append(f"-{name}")


def test_reservations_over_the_capacity_wait_and_are_served_in_order():
    async def main() -> tuple[list[str], int, int]:
        budget = MemoryBudget(100)
        log: list[str] = []
        events = {k: asyncio.Event() for k in "abcd"}
        tasks = [
            asyncio.create_task(_hold(budget, "a", 60, log, events["a"])),
            asyncio.create_task(_hold(budget, "b", 50, log, events["b"])),  # does not fit beside a
            asyncio.create_task(_hold(budget, "c", 10, log, events["c"])),  # fits, but b came first
            asyncio.create_task(_hold(budget, "d", 41, log, events["d"])),
        ]
        await asyncio.sleep(0.01)
        waiting = budget.waiting
        events["a"].set()  # b (50) and c (10) fit now, d (41) does not: 50 + 10 + 41 > 100
        await asyncio.sleep(0.01)
        in_use = budget.in_use
        for k in "bcd":
            events[k].set()
        await asyncio.gather(*tasks)
        assert budget.in_use == 0
        return log, waiting, in_use

    log, waiting, in_use = asyncio.run(main())
    assert waiting == 3 and in_use == 60  # b + c after a left
    assert log[:4] == ["+a", "-a", "+b", "+c"]
    assert log.index("+d") > min(log.index("-b"), log.index("-c"))


def test_the_peak_never_exceeds_the_capacity_under_many_concurrent_holders():
    async def main() -> MemoryBudget:
        budget = MemoryBudget(1000)

        async def one(i: int) -> None:
            async with budget.reserve(100 + 37 * (i % 7), timeout=5):
                await asyncio.sleep(0.001 * (i % 3))

        await asyncio.gather(*[one(i) for i in range(60)])
        return budget

    budget = asyncio.run(main())
    assert budget.in_use == 0 and budget.waiting == 0
    assert 800 < budget.peak <= 1000


def test_a_timeout_is_overloaded_and_frees_its_place():
    async def main() -> tuple[Overloaded, list[str], int]:
        budget = MemoryBudget(100)
        log: list[str] = []
        release = asyncio.Event()
        holder = asyncio.create_task(_hold(budget, "a", 90, log, release))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as e:
            async with budget.reserve(50, timeout=0.05):
                raise AssertionError("never granted")
        after_timeout = budget.waiting
        # a small reservation that fits is not blocked by the one that gave up
        async with budget.reserve(10, timeout=0.05):
            log.append("small")
        release.set()
        await holder
        return e.value, log, after_timeout

    err, log, waiting = asyncio.run(main())
    assert waiting == 0 and log == ["+a", "small", "-a"]
    assert err.retry_after == 1.0 and "90 of 100 bytes held, 50 more needed" in str(err)


def test_a_cancelled_waiter_unblocks_the_ones_behind_it():
    async def main() -> list[str]:
        budget = MemoryBudget(100)
        log: list[str] = []
        release = asyncio.Event()
        holder = asyncio.create_task(_hold(budget, "a", 60, log, release))
        await asyncio.sleep(0.01)
        big = asyncio.create_task(_hold(budget, "big", 80, log, asyncio.Event()))  # waits for a
        await asyncio.sleep(0.01)
        small = asyncio.create_task(_hold(budget, "small", 30, log, release))  # fits, but queued behind big
        await asyncio.sleep(0.01)
        assert log == ["+a"]
        big.cancel()  # the client went away
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(holder, small)
        assert budget.in_use == 0 and budget.waiting == 0
        return log

    log = asyncio.run(main())
    assert log[:2] == ["+a", "+small"]


def test_an_image_larger_than_the_budget_runs_alone():
    async def main() -> list[str]:
        budget = MemoryBudget(100)
        log: list[str] = []
        events = [asyncio.Event(), asyncio.Event()]
        t1 = asyncio.create_task(_hold(budget, "a", 30, log, events[0]))
        await asyncio.sleep(0.01)
        t2 = asyncio.create_task(_hold(budget, "huge", 500, log, events[1]))
        await asyncio.sleep(0.01)
        assert log == ["+a"]
        events[0].set()
        await asyncio.sleep(0.01)
        assert budget.in_use == 500
        events[1].set()
        await asyncio.gather(t1, t2)
        return log

    assert asyncio.run(main()) == ["+a", "-a", "+huge", "-huge"]


def test_zero_bytes_never_wait_and_bad_capacity_is_refused():
    async def main() -> None:
        budget = MemoryBudget(10)
        async with budget.reserve(10, timeout=1), budget.reserve(0, timeout=0.001):
            assert budget.in_use == 10

    asyncio.run(main())
    with pytest.raises(ValueError, match="capacity"):
        MemoryBudget(0)
