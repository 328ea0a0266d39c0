"""Dynamic micro-batching: items from concurrent requests share one model call.

Requests put their items on an :class:`asyncio.Queue` and await one future per item. A single worker
task takes the first waiting item, then keeps collecting until it holds ``max_batch_size`` items or
``max_wait_s`` has passed *since that first item arrived* (so items that queued up while the previous
batch ran do not wait twice), runs the batch function in an executor thread, and resolves the futures
in order. The event loop never blocks on the model, and the model sees one caller at a time.

A batch that raises is retried item by item, so one bad input fails only its own request; the worker
itself never dies from a batch function's exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BatchStats", "MicroBatcher"]

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("vestis.service")


@dataclass(frozen=True)
class BatchStats:
    """What one call of the batch function did: how many items and how long it took (seconds)."""

    size: int
    seconds: float
    failed: bool = False


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued: float


class MicroBatcher(Generic[T, R]):
    """Collect items from concurrent callers into batches for ``fn``.

    Args:
        fn: the batch function: a list of items -> one result per item, in order. It runs in ``executor``.
        max_batch_size: the most items in one call of ``fn``.
        max_wait_s: how long the first item of a batch may wait for others; 0 takes only what is queued.
        executor: where ``fn`` runs; ``None`` is the loop's default thread pool.
        on_batch: called on the event loop after every call of ``fn`` (metrics).

    Example:
        >>> batcher = MicroBatcher(model_fn, max_batch_size=16, max_wait_s=0.01)
        >>> await batcher.start()
        >>> results = await batcher.submit([x1, x2])  # may share a call with other requests' items
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int = 16,
        max_wait_s: float = 0.01,
        executor: Executor | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: expected >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s: expected >= 0, got {max_wait_s}")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.executor = executor
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Pending[T, R]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._current: list[_Pending[T, R]] = []

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    @property
    def depth(self) -> int:
        """Items waiting for a batch (not counting the batch being run)."""
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        """Start the worker on the running event loop."""
        if self.running:
            return
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._loop(), name="vestis-batcher")

    async def stop(self) -> None:
        """Stop the worker; callers still waiting get a :class:`RuntimeError`."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        pending = list(self._current)
        while self._queue is not None and not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for p in pending:
            if not p.future.done():
                p.future.set_exception(RuntimeError("the service is shutting down"))
        self._current = []

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Queue ``items`` and wait for their results (in order).

        Raises:
            RuntimeError: the batcher is not running.
            Exception: whatever the batch function raised for one of these items.
        """
        if not self.running or self._queue is None:
            raise RuntimeError("the batcher is not running")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[R]] = []
        for item in items:
            future: asyncio.Future[R] = loop.create_future()
            self._queue.put_nowait(_Pending(item, future, loop.time()))
            futures.append(future)
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            # a failed sibling or a disconnected client: the worker skips cancelled items
            for f in futures:
                f.cancel()
            raise

    async def _collect(self, queue: asyncio.Queue[_Pending[T, R]]) -> list[_Pending[T, R]]:
        loop = asyncio.get_running_loop()
        first = await queue.get()
        batch = [first]
        deadline = first.enqueued + self.max_wait_s
        while len(batch) < self.max_batch_size:
            try:
                batch.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                # Queue.get is cancellation-safe: on timeout no item is taken
                async with asyncio.timeout(remaining):
                    batch.append(await queue.get())
            except TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        assert self._queue is not None
        while True:
            batch = await self._collect(self._queue)
            self._current = [p for p in batch if not p.future.done()]
            if self._current:
                await self._run(self._current)
            self._current = []

    async def _call(self, items: list[T]) -> list[R]:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        failed = True
        try:
            out = list(await loop.run_in_executor(self.executor, self.fn, items))
            if len(out) != len(items):
                raise RuntimeError(f"the batch function returned {len(out)} results for {len(items)} items")
            failed = False
            return out
        finally:
            if self.on_batch is not None:
                try:
                    self.on_batch(BatchStats(len(items), time.perf_counter() - t0, failed))
                except Exception:  # metrics must never break serving
                    log.exception("on_batch callback failed")

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        try:
            results = await self._call([p.item for p in batch])
        except Exception as e:
            if len(batch) == 1:
                _fail(batch[0], e)
                return
            log.warning("a batch of %d failed (%s: %s); retrying its items one by one", len(batch), type(e).__name__, e)
            for p in batch:
                if p.future.done():
                    continue
                try:
                    result = (await self._call([p.item]))[0]
                except Exception as e1:
                    _fail(p, e1)
                else:
                    _succeed(p, result)
            return
        for p, r in zip(batch, results, strict=True):
            _succeed(p, r)


def _succeed(p: _Pending[T, R], result: R) -> None:
    if not p.future.done():  # done: the caller went away
        p.future.set_result(result)


def _fail(p: _Pending[T, R], error: BaseException) -> None:
    if not p.future.done():
        p.future.set_exception(error)
