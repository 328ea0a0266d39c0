"""Confidence calibration of single-label predictions: reliability bins and the expected calibration error.

The standard definition (Guo et al., 2017, "On Calibration of Modern Neural Networks"): the top-1 confidence
of each labelled item falls into one of ``B`` equal-width bins ``((b-1)/B, b/B]``; the ECE is the
item-weighted mean gap between each bin's accuracy and its mean confidence,
``sum_b |B_b| / n * |acc(B_b) - conf(B_b)|``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from vestis.errors import VestisError

__all__ = ["ECE_BINS", "Reliability", "expected_calibration_error", "reliability_bins"]

ECE_BINS = 15  # the bin count of Guo et al. and of most later papers, so numbers compare across them


@dataclass(frozen=True)
class Reliability:
    """Per-bin statistics of the top-1 confidence.

    Attributes:
        edges: ``(B + 1,)`` bin edges from 0 to 1.
        count: ``(B,)`` labelled items per bin.
        confidence: ``(B,)`` mean top-1 confidence per bin (nan where empty).
        accuracy: ``(B,)`` share of correct top-1 predictions per bin (nan where empty).
    """

    edges: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        """The expected calibration error; nan when no item is binned."""
        n = int(self.count.sum())
        if n == 0:
            return float("nan")
        full = self.count > 0
        gaps = np.abs(self.accuracy[full] - self.confidence[full])
        return float((self.count[full] * gaps).sum() / n)


def reliability_bins(
    probs: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None, n_bins: int = ECE_BINS
) -> Reliability:
    """Bin the labelled items' top-1 confidence into ``n_bins`` equal-width bins ``((b-1)/B, b/B]``.

    Args:
        probs: ``(N, K)`` class probabilities.
        labels: ``(N,)`` int class indices (``-1`` where missing).
        mask: ``(N,)`` labelled rows; ``None`` means every row with a label >= 0.
        n_bins: number of bins.

    Raises:
        VestisError: shapes that do not match, or ``n_bins`` < 1.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if n_bins < 1:
        raise VestisError(f"n_bins: expected at least 1, got {n_bins}")
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise VestisError(f"probs {p.shape} and labels {y.shape}: expected (N, K) and (N,)")
    m = y >= 0 if mask is None else np.asarray(mask, dtype=bool) & (y >= 0)
    p, y = p[m], y[m]
    conf = p.max(axis=1) if len(p) else np.zeros(0)
    correct = (p.argmax(axis=1) == y).astype(np.float64) if len(p) else np.zeros(0)
    # bin b holds confidences in ((b-1)/B, b/B]: ceil gives the right-closed bins, 0 joins the first one
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(idx, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return Reliability(np.linspace(0.0, 1.0, n_bins + 1), count, confidence, accuracy)


def expected_calibration_error(
    probs: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None, n_bins: int = ECE_BINS
) -> float:
    """The ECE of single-label predictions (see the module docstring); nan without a labelled item."""
    return reliability_bins(probs, labels, mask, n_bins).ece
