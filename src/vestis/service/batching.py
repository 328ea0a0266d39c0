"""Dynamic micro-batching: items from concurrent requests share one model call.

Requests put their items on an :class:`asyncio.Queue` and await one future per item. A single worker
task takes the first waiting item, then keeps collecting until it holds ``max_batch_size`` items or
``max_wait_s`` has passed *since that first item arrived* (so items that queued up while the previous
batch ran do not wait twice), runs the batch function in an executor thread, and resolves the futures
in order. The event loop never blocks on the model, and the model sees one caller at a time.

Closing early (``close="early"``, what the service uses): waiting only pays when another item is on its way.
Callers announce their items with :meth:`MicroBatcher.admit` before they decode them; when the queue is empty
and no admitted caller is still preparing items, the batch runs at once instead of waiting out
``max_wait_s``. A lone request then pays no wait at all, and under load batches still fill, from the items that
queued while the previous batch ran and from those still being decoded. ``close="deadline"`` always waits up to
``max_wait_s`` for items nobody announced.

A batch that raises is retried item by item, so one bad input fails only its own request; the worker
itself never dies from a batch function's exception.

Load shedding: with ``max_queue_wait_s`` set, a caller whose items would wait longer than that for their
batch is refused at once with :class:`Overloaded` (the service answers 503 with ``Retry-After``) instead
of joining a queue that only grows: under overload the accepted requests keep a bounded latency and the
others learn immediately when to come back. The wait is the items in flight (announced through
:meth:`MicroBatcher.admit` by callers still preparing theirs, queued, or in the running batch) over the
measured throughput: items finished per second while there was work, which on a saturated machine
includes everything else competing for the CPU (decoding, HTTP), not only the model. The age of the
oldest queued item is checked too, in case the estimate runs behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BatchStats", "MicroBatcher", "Overloaded"]

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("vestis.service")


# weight of the newest batch in the running estimate of seconds per batch
_EWMA_ALPHA = 0.3
CLOSE_POLICIES = ("early", "deadline")

# the admission of the running task (request), so that its submit() can mark its items as no longer in preparation
_ADMISSION: contextvars.ContextVar[_Admission | None] = contextvars.ContextVar("vestis_admission", default=None)


class Overloaded(RuntimeError):
    """The wait would exceed the configured bound; come back in ``retry_after`` seconds.

    Attributes:
        retry_after: whole seconds (>= 1) after which a retry is likely to be accepted.
    """

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class BatchStats:
    """What one call of the batch function did: how many items, how long it took (seconds), and how long
    each item had waited in the queue before the call (``queue_waits``, seconds; empty for a retry)."""

    size: int
    seconds: float
    failed: bool = False
    queue_waits: tuple[float, ...] = ()


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
        max_queue_wait_s: shed load: refuse callers whose items would wait longer than this for their
            batch (:class:`Overloaded`); ``None`` queues without bound.
        close: ``early``: a batch runs as soon as the queue is empty and no admitted caller is still preparing
            items (``max_wait_s`` bounds the wait for those); ``deadline``: it waits up to ``max_wait_s`` for
            any item.

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
        max_queue_wait_s: float | None = None,
        close: str = "deadline",
    ) -> None:
        if close not in CLOSE_POLICIES:
            raise ValueError(f"close: expected one of {list(CLOSE_POLICIES)}, got {close!r}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: expected >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s: expected >= 0, got {max_wait_s}")
        if max_queue_wait_s is not None and max_queue_wait_s <= 0:
            raise ValueError(f"max_queue_wait_s: expected > 0 or None, got {max_queue_wait_s}")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.executor = executor
        self.on_batch = on_batch
        self.max_queue_wait_s = max_queue_wait_s
        self.close = close
        self._preparing = 0  # items admitted whose caller has not submitted them yet (still decoding)
        self._queue: asyncio.Queue[_Pending[T, R]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._current: list[_Pending[T, R]] = []
        self._enqueued: deque[float] = deque()  # enqueue times of the queued items, oldest first
        self._batch_s: float | None = None  # running estimate of seconds per batch call
        self._batch_started: float | None = None  # loop time the running call started
        self._item_s: float | None = None  # running estimate of seconds per finished item while busy
        self._busy_since = 0.0  # loop time the items in flight last went from none to some
        self._last_done = 0.0  # loop time the last call finished

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
        self._enqueued.clear()

    @property
    def in_flight(self) -> int:
        """Items admitted and not finished, each once: still being prepared (admitted, not submitted yet), queued,
        or in the running batch."""
        return self._preparing + self.depth + len(self._current)

    def _arrive(self) -> None:
        if self.in_flight == 0:  # a busy period starts: the idle time before it is no measure of throughput
            self._busy_since = asyncio.get_running_loop().time()

    def estimated_wait(self, n: int = 1) -> float:
        """Seconds until ``n`` new items would be finished: the items in flight and them, over the throughput.

        Before any call has finished it is 0; before the throughput is known, it counts batches of the
        measured duration.
        """
        if self._item_s is not None:
            return (self.in_flight + n) * self._item_s
        if self._batch_s is None:
            return 0.0
        return math.ceil((self.in_flight + n) / self.max_batch_size) * self._batch_s

    def _check_load(self, n: int) -> None:
        if self.max_queue_wait_s is None:
            return
        wait = self.estimated_wait(n)
        oldest = asyncio.get_running_loop().time() - self._enqueued[0] if self._enqueued else 0.0
        if max(wait, oldest) > self.max_queue_wait_s:
            raise Overloaded(
                f"{self.in_flight} images ahead; the wait would be about {max(wait, oldest):.1f} s, "
                f"over the bound of {self.max_queue_wait_s:g} s",
                retry_after=max(1.0, math.ceil(max(wait, oldest))),
            )

    def admit(self, n: int) -> contextlib.AbstractContextManager[None]:
        """Reserve places for ``n`` items a caller is still preparing (decoding), or shed the caller now.

        Use the result at once in a ``with`` statement: while inside, the ``n`` items count as queued in
        :meth:`estimated_wait`, so callers arriving together are refused before they spend work on items
        that would wait too long. Submit them with ``submit(items, shed=False)`` inside the block.

        Raises:
            Overloaded: the items would wait longer than ``max_queue_wait_s`` (raised by this call, not
                by the ``with``, so that nothing inside the block is mistaken for it).
        """
        self._check_load(n)
        return _Admission(self, n)

    async def submit(self, items: Sequence[T], *, shed: bool = True) -> list[R]:
        """Queue ``items`` and wait for their results (in order).

        Args:
            items: the items.
            shed: refuse them with :class:`Overloaded` when they would wait too long (False: they were
                already admitted by :meth:`admit`).

        Raises:
            RuntimeError: the batcher is not running.
            Overloaded: shed (nothing was queued).
            Exception: whatever the batch function raised for one of these items.
        """
        if not self.running or self._queue is None:
            raise RuntimeError("the batcher is not running")
        if shed:
            self._check_load(len(items))
        self._arrive()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[R]] = []
        for item in items:
            future: asyncio.Future[R] = loop.create_future()
            now = loop.time()
            self._queue.put_nowait(_Pending(item, future, now))
            self._enqueued.append(now)
            futures.append(future)
        admission = _ADMISSION.get()
        if admission is not None and admission.batcher is self:
            admission.submitted()  # after queueing them: the items stay in flight throughout (the busy period)
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            # a failed sibling or a disconnected client: the worker skips cancelled items
            for f in futures:
                f.cancel()
            raise

    async def _collect(self, queue: asyncio.Queue[_Pending[T, R]]) -> list[_Pending[T, R]]:
        loop = asyncio.get_running_loop()
        first = await self._get(queue)
        batch = [first]
        deadline = first.enqueued + self.max_wait_s
        while len(batch) < self.max_batch_size:
            try:
                batch.append(queue.get_nowait())
                self._enqueued.popleft()
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0 or (self.close == "early" and self._preparing <= 0):
                break
            try:
                # Queue.get is cancellation-safe: on timeout no item is taken
                async with asyncio.timeout(remaining):
                    batch.append(await self._get(queue))
            except TimeoutError:
                break
        return batch

    async def _get(self, queue: asyncio.Queue[_Pending[T, R]]) -> _Pending[T, R]:
        p = await queue.get()
        self._enqueued.popleft()  # every item is put with its time and taken once, in the same order
        return p

    async def _loop(self) -> None:
        assert self._queue is not None
        while True:
            batch = await self._collect(self._queue)
            self._current = [p for p in batch if not p.future.done()]
            if self._current:
                await self._run(self._current)
            self._current = []

    async def _call(self, items: list[T], queue_waits: tuple[float, ...] = ()) -> list[R]:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        self._batch_started = loop.time()
        failed = True
        try:
            out = list(await loop.run_in_executor(self.executor, self.fn, items))
            if len(out) != len(items):
                raise RuntimeError(f"the batch function returned {len(out)} results for {len(items)} items")
            failed = False
            return out
        finally:
            seconds = time.perf_counter() - t0
            self._batch_started = None
            now = loop.time()
            busy = now - max(self._last_done, self._busy_since)  # since the previous call ended, or work arrived
            if busy > 0 and items:
                # averaged as seconds per item, not items per second: one quick call must not make the
                # estimate optimistic (the mean of rates overweights short intervals)
                per_item = busy / len(items)
                self._item_s = (
                    per_item if self._item_s is None else (1 - _EWMA_ALPHA) * self._item_s + _EWMA_ALPHA * per_item
                )
            self._last_done = now
            self._batch_s = (
                seconds if self._batch_s is None else (1 - _EWMA_ALPHA) * self._batch_s + _EWMA_ALPHA * seconds
            )
            if self.on_batch is not None:
                try:
                    self.on_batch(BatchStats(len(items), seconds, failed, queue_waits))
                except Exception:  # metrics must never break serving
                    log.exception("on_batch callback failed")

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        now = asyncio.get_running_loop().time()
        try:
            results = await self._call([p.item for p in batch], tuple(now - p.enqueued for p in batch))
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


class _Admission:
    def __init__(self, batcher: MicroBatcher, n: int) -> None:
        self.batcher, self.n = batcher, n
        self.preparing = False
        self.token: contextvars.Token[_Admission | None] | None = None

    def __enter__(self) -> None:
        self.batcher._arrive()
        self.batcher._preparing += self.n
        self.preparing = True
        self.token = _ADMISSION.set(self)

    def submitted(self) -> None:
        """The caller handed its items over: they are queued, no longer on their way."""
        if self.preparing:
            self.preparing = False
            self.batcher._preparing -= self.n

    def __exit__(self, *exc: object) -> None:
        if self.preparing:  # left without submitting (a decoding error): nobody is coming (a waiting batch
            # notices at its next arrival or at its deadline)
            self.preparing = False
            self.batcher._preparing -= self.n
        if self.token is not None:
            _ADMISSION.reset(self.token)
            self.token = None


def _succeed(p: _Pending[T, R], result: R) -> None:
    if not p.future.done():  # done: the caller went away
        p.future.set_result(result)


def _fail(p: _Pending[T, R], error: BaseException) -> None:
    if not p.future.done():
        p.future.set_exception(error)
