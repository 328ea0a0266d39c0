"""A memory budget shared by all requests: bytes of decoded images in flight at once.

The body limit bounds what a request *sends*, not what it *decodes to*: a 6000 x 6000 one-bit PNG is a
few kilobytes on the wire and 180 MB once decoded to RGB. Each image reserves its decoded size (estimated
from its header) before it is decoded and gives it back once it has been reduced to the model input, so
the decoded pixels held by the whole service stay under the budget however many requests arrive together.

Reservations are served first come, first served (a large image is not overtaken forever by small ones);
a reservation that cannot be served within its timeout raises :class:`~vestis.service.batching.Overloaded`,
which the service answers with 503 and ``Retry-After``. An image larger than the whole budget is let
through alone, once nothing else is held, so the budget never makes a valid image undecodable.

Freed is not returned: glibc keeps what the decoding threads freed in their arenas, so a process that
once decoded a flood of images stays that large. :func:`trim_heap` hands the free pages back to the
system; the service calls it when the budget falls idle after a large amount was decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import math
from collections import deque
from collections.abc import AsyncIterator, Callable

from vestis.service.batching import Overloaded

__all__ = ["MemoryBudget", "trim_heap"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # glibc only; musl and macOS have none and need none
    except (OSError, AttributeError):
        return None


def trim_heap() -> bool:
    """Give the free memory of every malloc arena back to the system (glibc); ``False`` where unavailable."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class MemoryBudget:
    """First-come-first-served reservations of ``capacity`` bytes, on one event loop (not thread-safe).

    Args:
        capacity: bytes that may be reserved at once.

    Example:
        >>> budget = MemoryBudget(512 * 2**20)
        >>> async with budget.reserve(180_000_000, timeout=2.0):
        ...     ...  # decode the image, reduce it to the model input, drop it
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: expected >= 1 byte, got {capacity}")
        self.capacity = capacity
        self.in_use = 0
        self.peak = 0  # the most bytes held at once since the start (tests, benchmarks)
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        """Reservations queued behind the ones held."""
        return len(self._waiters)

    def _fits(self, nbytes: int) -> bool:
        return self.in_use + nbytes <= self.capacity or self.in_use == 0

    def _take(self, nbytes: int) -> None:
        self.in_use += nbytes
        self.peak = max(self.peak, self.in_use)

    def _release(self, nbytes: int) -> None:
        self.in_use -= nbytes
        # wake in order while the head fits; a head that does not fit blocks those behind it (fairness)
        while self._waiters:
            n, future = self._waiters[0]
            if future.done():  # timed out or cancelled; it removes itself, but be robust
                self._waiters.popleft()
                continue
            if not self._fits(n):
                break
            self._waiters.popleft()
            self._take(n)
            future.set_result(None)

    async def _acquire(self, nbytes: int, timeout: float) -> None:
        if not self._waiters and self._fits(nbytes):
            self._take(nbytes)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(future)
        except BaseException as e:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)
            if future.done() and not future.cancelled():
                self._release(nbytes)  # granted in the same instant as the timeout: give it back
            else:
                future.cancel()
                self._release(0)  # this waiter may have blocked smaller ones behind it
            if isinstance(e, TimeoutError):
                raise Overloaded(
                    f"decoded images in flight: {self.in_use:,} of {self.capacity:,} bytes held, "
                    f"{nbytes:,} more needed",
                    retry_after=max(1.0, math.ceil(timeout)),
                ) from None
            raise

    @contextlib.asynccontextmanager
    async def reserve(self, nbytes: int, timeout: float) -> AsyncIterator[None]:
        """Hold ``nbytes`` of the budget for the body of the ``async with``.

        Args:
            nbytes: the bytes to hold (0 holds nothing and never waits).
            timeout: seconds to wait for them at most.

        Raises:
            Overloaded: they did not become free within ``timeout``.
        """
        if nbytes <= 0:
            yield
            return
        await self._acquire(nbytes, timeout)
        try:
            yield
        finally:
            self._release(nbytes)
