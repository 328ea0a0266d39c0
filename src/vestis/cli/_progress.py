"""Progress of a command that works through a known number of items: a bar on a terminal, else plain lines."""

from __future__ import annotations

import sys
import time
from typing import Any


class StepProgress:
    """``progress(done, total)`` callbacks shown on stderr.

    On a terminal a Rich bar; otherwise (a CI log, a pipe) one line each time ``every`` more items are done, and
    a last line at the end, so the progress is visible as it happens.

    Args:
        enabled: show anything at all.
        label: what is being done (``detecting``).
        unit: what an item is (``images``, ``scenes``).
        every: items between two plain lines.
    """

    def __init__(self, enabled: bool, label: str, unit: str, every: int = 50) -> None:
        self._enabled, self._label, self._unit, self._every = enabled, label, unit, max(1, every)
        self._lines = enabled and not sys.stderr.isatty()
        self._bar: Any = None
        self._task: Any = None
        self._next = self._every
        self._last = (0, 0)
        self._printed = 0
        self._t0 = time.perf_counter()

    def __enter__(self) -> StepProgress:
        if self._enabled and not self._lines:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn(self._label),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._bar.add_task(self._label, total=None)
            self._bar.start()
        return self

    def _line(self, done: int, total: int) -> None:
        self._printed = done
        rate = done / max(1e-9, time.perf_counter() - self._t0)
        print(f"{self._label}: {done}/{total} {self._unit}, {rate:.4g} {self._unit}/s", file=sys.stderr, flush=True)

    def __call__(self, done: int, total: int) -> None:
        self._last = (done, total)
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)
        elif self._lines and done >= self._next:
            self._line(done, total)
            self._next = (done // self._every + 1) * self._every

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self._lines and self._last[0] != self._printed:  # the last, partial stretch
            self._line(*self._last)
