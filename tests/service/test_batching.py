"""The micro-batcher alone: who lands in which batch, in what order, and what happens on failure."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import pytest

from vestis.service.batching import BatchStats, MicroBatcher, Overloaded


class Recorder:
    """A batch function: x -> 10 x, raising on negative items; records every batch it was called with."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        if any(x < 0 for x in items):
            raise ValueError(f"negative item in {items}")
        return [10 * x for x in items]


def _run(batcher: MicroBatcher, body: Callable[[MicroBatcher], Awaitable]) -> object:
    async def main() -> object:
        await batcher.start()
        try:
            return await body(batcher)
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_concurrent_callers_share_a_batch_and_get_their_own_results():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=16, max_wait_s=0.2)

    async def body(b: MicroBatcher) -> list[list[int]]:
        return await asyncio.gather(*[b.submit([i]) for i in range(8)])

    results = _run(batcher, body)
    assert results == [[10 * i] for i in range(8)]
    assert fn.batches == [list(range(8))]


def test_batches_are_cut_at_max_batch_size_in_arrival_order():
    fn = Recorder()
    stats: list[BatchStats] = []
    batcher = MicroBatcher(fn, max_batch_size=4, max_wait_s=0.2, on_batch=stats.append)

    async def body(b: MicroBatcher) -> list[list[int]]:
        return await asyncio.gather(b.submit([0, 1, 2]), b.submit([3, 4, 5, 6]), b.submit([7, 8, 9]))

    assert _run(batcher, body) == [[0, 10, 20], [30, 40, 50, 60], [70, 80, 90]]
    assert fn.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [s.size for s in stats] == [4, 4, 2] and not any(s.failed for s in stats)


def test_max_batch_size_one_runs_every_item_alone():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=1, max_wait_s=0.2)

    async def body(b: MicroBatcher) -> list[list[int]]:
        return await asyncio.gather(b.submit([1, 2]), b.submit([3]))

    assert _run(batcher, body) == [[10, 20], [30]]
    assert fn.batches == [[1], [2], [3]]


def test_zero_wait_takes_only_what_is_queued():
    fn = Recorder()
    gate = threading.Event()

    def slow(items: list[int]) -> list[int]:
        gate.wait(5)
        return fn(items)

    batcher = MicroBatcher(slow, max_batch_size=16, max_wait_s=0.0)

    async def body(b: MicroBatcher) -> list[list[int]]:
        first = asyncio.ensure_future(b.submit([1]))
        await asyncio.sleep(0.05)  # the worker is now blocked on the first batch
        rest = [asyncio.ensure_future(b.submit([x])) for x in (2, 3, 4)]
        await asyncio.sleep(0.05)
        assert b.depth == 3
        gate.set()
        return [await first] + [await r for r in rest]

    assert _run(batcher, body) == [[10], [20], [30], [40]]
    assert fn.batches == [[1], [2, 3, 4]]  # what queued during the first batch went together, without waiting


def test_a_failing_batch_is_retried_item_by_item():
    fn = Recorder()
    stats: list[BatchStats] = []
    batcher = MicroBatcher(fn, max_batch_size=8, max_wait_s=0.2, on_batch=stats.append)

    async def body(b: MicroBatcher) -> list[object]:
        return await asyncio.gather(b.submit([1]), b.submit([-1]), b.submit([2, 3]), return_exceptions=True)

    ok1, bad, ok2 = _run(batcher, body)
    assert ok1 == [10] and ok2 == [20, 30]
    assert isinstance(bad, ValueError) and str(bad) == "negative item in [-1]"
    assert fn.batches == [[1, -1, 2, 3], [1], [-1], [2], [3]]
    assert [s.failed for s in stats] == [True, False, True, False, False]


def test_the_worker_survives_failures():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=8, max_wait_s=0.0)

    async def body(b: MicroBatcher) -> list[int]:
        with pytest.raises(ValueError):
            await b.submit([-5])
        assert b.running
        return await b.submit([4])

    assert _run(batcher, body) == [40]


def test_wrong_number_of_results_is_an_error():
    batcher = MicroBatcher(lambda items: items[:-1], max_batch_size=4, max_wait_s=0.0)

    async def body(b: MicroBatcher) -> None:
        with pytest.raises(RuntimeError, match="returned 0 results for 1 items"):
            await b.submit([1])

    _run(batcher, body)


def test_a_caller_that_goes_away_is_skipped():
    fn = Recorder()
    gate = threading.Event()

    def slow(items: list[int]) -> list[int]:
        gate.wait(5)
        return fn(items)

    batcher = MicroBatcher(slow, max_batch_size=16, max_wait_s=0.0)

    async def body(b: MicroBatcher) -> list[int]:
        first = asyncio.ensure_future(b.submit([1]))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(b.submit([2]))
        await asyncio.sleep(0.01)
        gone.cancel()
        kept = asyncio.ensure_future(b.submit([3]))
        await asyncio.sleep(0.01)
        gate.set()
        await first
        return await kept

    assert _run(batcher, body) == [30]
    assert fn.batches == [[1], [3]]


def test_submit_needs_a_running_batcher_and_stop_fails_waiting_callers():
    gate = threading.Event()

    def slow(items: list[int]) -> list[int]:
        gate.wait(5)
        return items

    async def main() -> None:
        b = MicroBatcher(slow, max_batch_size=1, max_wait_s=0.0)
        with pytest.raises(RuntimeError, match="not running"):
            await b.submit([1])
        await b.start()
        waiting = asyncio.ensure_future(b.submit([1, 2]))
        await asyncio.sleep(0.05)
        await b.stop()
        gate.set()
        with pytest.raises(RuntimeError, match="shutting down"):
            await waiting
        assert not b.running

    asyncio.run(main())


# --- load shedding -------------------------------------------------------------------------------------------
def _sleeper(seconds: float) -> Callable[[list[int]], list[int]]:
    def fn(items: list[int]) -> list[int]:
        time.sleep(seconds)
        return [10 * x for x in items]

    return fn


def test_an_overload_is_shed_and_the_accepted_wait_a_bounded_time():
    stats: list[BatchStats] = []
    bound = 0.3
    batcher = MicroBatcher(
        _sleeper(0.05), max_batch_size=2, max_wait_s=0.0, max_queue_wait_s=bound, on_batch=stats.append
    )

    async def body(b: MicroBatcher) -> tuple[list[object], list[float]]:
        await b.submit([0])  # one timed batch: the estimate needs the seconds per batch

        async def one(i: int) -> object:
            t0 = time.perf_counter()
            try:
                out = await b.submit([i])
            except Overloaded as e:
                return e
            return out, time.perf_counter() - t0

        results = await asyncio.gather(*[one(i) for i in range(1, 41)])
        return results, [w for s in stats for w in s.queue_waits]

    results, waits = _run(batcher, body)
    shed = [r for r in results if isinstance(r, Overloaded)]
    accepted = [r for r in results if not isinstance(r, Overloaded)]
    # 40 at once, 2 per 50 ms batch: about 0.3 / 0.05 * 2 = 12 fit under the bound (fewer while the throughput
    # is still measured from the first call alone); the rest is refused at once
    assert 4 <= len(accepted) <= 20 and len(shed) == 40 - len(accepted)
    assert all(e.retry_after >= 1 and "over the bound of 0.3 s" in str(e) for e in shed)
    assert [r[0] for r in accepted] == [[10 * i] for i in range(1, len(accepted) + 1)]  # the first ones, in order
    assert max(lat for _, lat in accepted) < bound + 0.5  # one batch and scheduling slack over the bound
    assert len(waits) == 1 + len(accepted) and max(waits) < bound + 0.5


def test_without_a_bound_nothing_is_shed():
    batcher = MicroBatcher(_sleeper(0.01), max_batch_size=2, max_wait_s=0.0)

    async def body(b: MicroBatcher) -> list[list[int]]:
        await b.submit([0])
        return await asyncio.gather(*[b.submit([i]) for i in range(30)])

    assert _run(batcher, body) == [[10 * i] for i in range(30)]


def test_admitted_items_count_as_queued():
    batcher = MicroBatcher(_sleeper(0.1), max_batch_size=1, max_wait_s=0.0, max_queue_wait_s=0.5)

    async def body(b: MicroBatcher) -> list[int]:
        await b.submit([0])  # the estimate: >= 0.1 s per batch of one
        with b.admit(2):  # ahead of a newcomer: these 2
            assert b.estimated_wait(1) >= 0.2
            with pytest.raises(Overloaded):
                b.admit(5)  # (2 + 5) items at <= 10 a second: >= 0.7 s
            with pytest.raises(Overloaded):
                await b.submit([1, 2, 3, 4, 5])  # the same by submit, nothing queued
            assert b.depth == 0
            out = await b.submit([7, 8], shed=False)
        with b.admit(2):  # admitted alone: 2 items at >= 4 a second (calls of <= 0.25 s) fit in 0.5 s
            pass
        return out

    assert _run(batcher, body) == [70, 80]


def test_the_age_of_the_oldest_item_sheds_even_without_an_estimate():
    gate = threading.Event()

    def blocked(items: list[int]) -> list[int]:
        gate.wait(5)
        return items

    batcher = MicroBatcher(blocked, max_batch_size=1, max_wait_s=0.0, max_queue_wait_s=0.1)

    async def body(b: MicroBatcher) -> list[object]:
        running = asyncio.ensure_future(b.submit([1]))  # blocks the worker; never timed yet
        await asyncio.sleep(0.02)
        queued = asyncio.ensure_future(b.submit([2]))  # accepted: the estimate is 0 and nothing is old
        await asyncio.sleep(0.2)
        assert b.estimated_wait() == 0.0
        with pytest.raises(Overloaded, match=r"over the bound of 0\.1 s"):
            await b.submit([3])  # the queued item has waited 0.2 s > 0.1 s
        gate.set()
        return [await running, await queued]

    assert _run(batcher, body) == [[1], [2]]


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_wait_s": -1.0}, {"max_queue_wait_s": 0.0}])
def test_invalid_settings(kwargs):
    with pytest.raises(ValueError):
        MicroBatcher(lambda x: x, **kwargs)


def _admitted(b: MicroBatcher, items: list[int], decode_s: float) -> Awaitable[list[int]]:
    """A request as the service runs one: admitted, ``decode_s`` of decoding, then submitted."""

    async def request() -> list[int]:
        with b.admit(len(items)):
            await asyncio.sleep(decode_s)
            return await b.submit(items, shed=False)

    return request()


def test_early_close_runs_a_lone_request_without_waiting_out_the_deadline():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=16, max_wait_s=60.0, close="early")

    async def body(b: MicroBatcher) -> list[int]:
        # with close="deadline" this waits 60 s for company that never comes; wait_for fails the test instead
        return await asyncio.wait_for(_admitted(b, [1, 2], 0.0), timeout=10)

    assert _run(batcher, body) == [10, 20]
    assert fn.batches == [[1, 2]]


def test_early_close_still_waits_for_a_request_being_decoded():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=16, max_wait_s=30.0, close="early")

    async def body(b: MicroBatcher) -> list[list[int]]:
        # the second request is admitted first and still decoding when the first one submits: one batch
        slow = asyncio.ensure_future(_admitted(b, [5], 0.2))
        await asyncio.sleep(0)  # the slow one is admitted now
        fast = _admitted(b, [1], 0.0)
        return await asyncio.wait_for(asyncio.gather(fast, slow), timeout=10)

    assert _run(batcher, body) == [[10], [50]]
    assert fn.batches == [[1, 5]]


def test_early_close_does_not_wait_for_a_request_that_failed_to_decode():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=16, max_wait_s=0.5, close="early")

    async def broken(b: MicroBatcher) -> None:
        with b.admit(1):
            raise ValueError("corrupt image")

    async def body(b: MicroBatcher) -> list[int]:
        with pytest.raises(ValueError):
            await broken(b)
        assert b._preparing == 0  # nothing is on its way any more
        return await asyncio.wait_for(_admitted(b, [3], 0.0), timeout=10)

    assert _run(batcher, body) == [30]


def test_deadline_close_waits_for_unannounced_items():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=16, max_wait_s=0.5, close="deadline")

    async def late(b: MicroBatcher) -> list[int]:
        await asyncio.sleep(0.05)
        return await b.submit([2])

    async def body(b: MicroBatcher) -> list[list[int]]:
        return await asyncio.gather(b.submit([1]), late(b))

    assert _run(batcher, body) == [[10], [20]]
    assert fn.batches == [[1, 2]]


def test_close_policy_is_checked():
    with pytest.raises(ValueError, match="close"):
        MicroBatcher(Recorder(), close="sometimes")


def test_an_admitted_item_counts_once_in_flight_after_it_is_submitted():
    gate = threading.Event()

    def blocked(items: list[int]) -> list[int]:
        gate.wait(10)
        return items

    batcher = MicroBatcher(blocked, max_batch_size=4, max_wait_s=0.0, close="early")

    async def body(b: MicroBatcher) -> list[int]:
        with b.admit(3):
            assert b.in_flight == 3  # being decoded
            task = asyncio.ensure_future(b.submit([1, 2, 3], shed=False))
            for _ in range(100):  # until the worker holds them in its (blocked) batch
                await asyncio.sleep(0.01)
                if b._current:
                    break
            assert b.in_flight == 3  # in the running batch now, not also "being decoded"
            gate.set()
            return await task

    assert _run(batcher, body) == [1, 2, 3]
