"""The decode workers: uploads are decoded in a bounded thread pool of their own, never on the event loop.

Pillow releases the GIL while it decodes and resamples, so a few threads decode in parallel with each other, the
event loop (HTTP) and the model thread. The pool is bounded twice: ``workers`` threads decode at once, and at most
``queue`` more images wait for a thread; an image arriving when both are taken is refused at once with
:class:`~vestis.service.batching.Overloaded` (the service answers 503 with ``Retry-After``, counted as shed for
``decode``), so a flood queues neither without bound nor behind the other requests' decoding.

The pool does not replace the memory budget (:mod:`vestis.service.budget`): an image holds its share of the budget
*before* it is given to the pool and until its decoded pixels are reduced to the model input, so however many
images the pool holds, the decoded pixels in memory stay within the budget.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from vestis.service.batching import Overloaded

__all__ = ["DEFAULT_MAX_DECODE_WORKERS", "DecodePool", "default_decode_workers"]

T = TypeVar("T")
DEFAULT_MAX_DECODE_WORKERS = 16


def default_decode_workers() -> int:
    """One decode worker per CPU core this process may use, at least 2 (one large image then does not hold up every
    other request's decoding) and at most :data:`DEFAULT_MAX_DECODE_WORKERS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(2, min(DEFAULT_MAX_DECODE_WORKERS, cores))


class DecodePool:
    """A thread pool of ``workers`` threads that takes at most ``workers + queue`` tasks at once.

    Used from one event loop (the counter is not locked); the threads run the tasks.

    Args:
        workers: decode threads.
        queue: tasks that may wait for a thread (0: none wait; a task finding every thread busy is refused).

    Example:
        >>> pool = DecodePool(workers=2, queue=8)
        >>> array = await pool.run(decode_and_reduce, raw)  # Overloaded when 10 are already in the pool
    """

    def __init__(self, workers: int, queue: int) -> None:
        if workers < 1:
            raise ValueError(f"workers: expected >= 1, got {workers}")
        if queue < 0:
            raise ValueError(f"queue: expected >= 0, got {queue}")
        self.workers = workers
        self.capacity = workers + queue
        self.pending = 0  # tasks given to the threads and not finished (running or waiting)
        self.peak = 0  # the most at once since the start (tests, benchmarks)
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Start the threads (lazily: a thread is created when a task needs it)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="vestis-decode")

    def stop(self) -> None:
        """Stop taking tasks; the queued ones are cancelled, running ones finish in their threads."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a decode thread, or :class:`Overloaded` at once when the pool is full.

        Raises:
            RuntimeError: the pool is not started.
            Overloaded: ``workers + queue`` tasks are already in the pool.
            Exception: whatever ``fn`` raised.
        """
        if self._executor is None:
            raise RuntimeError("the decode pool is not started")
        if self.pending >= self.capacity:
            raise Overloaded(
                f"the decode pool is full: {self.pending} images decoding or waiting for one of "
                f"{self.workers} decode threads",
                retry_after=1.0,
            )
        self.pending += 1
        self.peak = max(self.peak, self.pending)
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # a client that went away: its image may be decoding still, and holds its slot (and the caller its
            # memory) until the thread is done with the pixels
            if not future.done():
                await asyncio.wait([future])
            raise
        finally:
            self.pending -= 1
