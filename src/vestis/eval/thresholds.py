"""Per-value decision thresholds calibrated on validation data, and where they fall back to the default.

A threshold tuned to the F1 of a value seen only a few times on the validation split is noise: on
~60 validation items the calibrated thresholds scored below the fixed one on the test split. So a value
is calibrated only when the validation split holds at least ``min_positives`` labelled positives of it;
the others keep the default threshold, and :class:`ThresholdChoice` records which one each value got and
why (its positive count)::

    choice = choose_thresholds(probs, targets, mask, default=0.3, min_positives=10)
    choice.thresholds          # (K,) floats, the default where not calibrated
    choice.to_dict(values)     # {value: {"threshold": t, "source": "calibrated" | "default", "positives": n}}

Inputs follow the conventions of :mod:`vestis.eval.metrics` (``probs`` and multi-hot ``targets`` ``(N, K)``,
an optional ``(N,)`` mask of labelled rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from vestis.errors import VestisError
from vestis.eval._inputs import labelled_multi

__all__ = ["DEFAULT_THRESHOLD", "ThresholdChoice", "calibrate_thresholds", "choose_thresholds"]

DEFAULT_THRESHOLD = 0.3  # the multi-scale paper's decision threshold (§5.3, Figure 6)


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold of each value of one attribute and whether it was calibrated.

    Attributes:
        thresholds: float ``(K,)``: the calibrated threshold, or the default where not calibrated.
        calibrated: bool ``(K,)``: the value had enough labelled positives to be calibrated.
        positives: int ``(K,)``: labelled positives of each value in the calibration data.
    """

    thresholds: np.ndarray
    calibrated: np.ndarray
    positives: np.ndarray

    def to_dict(self, values: Sequence[str]) -> dict[str, dict[str, Any]]:
        """JSON-ready ``{value: {"threshold", "source": "calibrated" | "default", "positives"}}``.

        Args:
            values: the attribute's value names, in column order.

        Raises:
            VestisError: ``values`` does not name every column.
        """
        if len(values) != len(self.thresholds):
            raise VestisError(f"values: expected {len(self.thresholds)} value names, got {len(values)}")
        return {
            v: {
                "threshold": float(self.thresholds[j]),
                "source": "calibrated" if self.calibrated[j] else "default",
                "positives": int(self.positives[j]),
            }
            for j, v in enumerate(values)
        }


def _check_min_positives(min_positives: int) -> int:
    if isinstance(min_positives, bool) or not isinstance(min_positives, int | np.integer) or min_positives < 1:
        raise VestisError(f"min_positives: expected an integer >= 1, got {min_positives!r}")
    return int(min_positives)


def _best_cuts(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The F1-optimal threshold of every column of the labelled ``p`` (float ``(n, K)``), ``t`` (bool ``(n, K)``).

    Columns without a positive get a meaningless value; the caller replaces it.
    """
    n, k = p.shape
    order = np.argsort(-p, axis=0, kind="stable")  # (n, K), each column by decreasing probability
    s = np.take_along_axis(p, order, axis=0).astype(np.float64)  # (n, K) sorted probabilities
    tp = np.cumsum(np.take_along_axis(t, order, axis=0), axis=0)  # (n, K) TP when the first i+1 are kept
    positives = tp[-1]  # (K,)
    kept = np.arange(1, n + 1)[:, None]  # (n, 1)
    f1 = 2.0 * tp / (kept + positives[None, :])
    # a cut is only realisable by a threshold at the end of a run of tied probabilities
    end = np.ones_like(s, dtype=bool)
    end[:-1] = s[:-1] != s[1:]
    f1 = np.where(end, f1, -1.0)
    best = np.argmax(f1, axis=0)  # first maximum = highest threshold = fewest predictions
    cols = np.arange(k)
    last = s[best, cols]
    nxt = np.where(best + 1 < n, s[np.minimum(best + 1, n - 1), cols], 0.0)
    mid = np.where(best + 1 < n, (last + nxt) / 2.0, 0.0)
    # (a + b) / 2 can round onto b for adjacent floats; the kept probability itself is then the cut
    return np.where((best + 1 < n) & (mid <= nxt), last, mid)


def choose_thresholds(
    probs: ArrayLike,
    targets: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    default: float = DEFAULT_THRESHOLD,
    min_positives: int = 1,
) -> ThresholdChoice:
    """Calibrate the values with at least ``min_positives`` labelled positives; the others keep ``default``.

    A calibrated value gets the threshold that maximises its F1 on this data. For each value the items are
    sorted by decreasing probability and every cut between two distinct probabilities is scored
    (``F1 = 2 TP / (#predicted + #positives)``): an exact sweep, the same optimum as a brute-force search
    over all thresholds. Among equally good cuts the one predicting the fewest items wins. The threshold
    lies midway between the last probability kept and the next lower one (0 when every item is kept), so
    ``probs >= threshold`` reproduces the chosen cut with a margin.

    Args:
        probs: ``(N, K)`` validation probabilities.
        targets: ``(N, K)`` multi-hot truth (one-hot for a single-label attribute).
        mask: ``(N,)`` labelled rows; ``None`` means all.
        default: threshold of the values that are not calibrated.
        min_positives: fewest labelled positives a value needs to be calibrated (at least 1: a value without
            positives has no F1 to maximise).

    Returns:
        The thresholds, which values were calibrated and every value's positive count.

    Raises:
        VestisError: malformed inputs (see :mod:`vestis.eval.metrics`) or ``min_positives < 1``.
    """
    need = _check_min_positives(min_positives)
    p, t = labelled_multi(probs, targets, mask)
    positives = t.sum(axis=0).astype(np.int64)  # (K,)
    out = np.full(p.shape[1], float(default))
    calibrated = positives >= need
    if calibrated.any():
        out[calibrated] = _best_cuts(p, t)[calibrated]
    return ThresholdChoice(thresholds=out, calibrated=calibrated, positives=positives)


def calibrate_thresholds(
    probs: ArrayLike,
    targets: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    default: float = DEFAULT_THRESHOLD,
    min_positives: int = 1,
) -> np.ndarray:
    """Per-value thresholds that maximise each value's F1 on validation data (see :func:`choose_thresholds`).

    Args:
        probs: ``(N, K)`` validation probabilities.
        targets: ``(N, K)`` multi-hot truth (one-hot for a single-label attribute).
        mask: ``(N,)`` labelled rows; ``None`` means all.
        default: threshold of values with fewer than ``min_positives`` positive items.
        min_positives: fewest labelled positives a value needs to be calibrated; 1 calibrates every value that
            has a positive.

    Returns:
        Float ``(K,)`` thresholds.
    """
    return choose_thresholds(probs, targets, mask, default=default, min_positives=min_positives).thresholds
