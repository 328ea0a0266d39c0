"""Input checks shared by the metric functions (:mod:`vestis.eval.metrics`) and the threshold calibration
(:mod:`vestis.eval.thresholds`); see :mod:`vestis.eval.metrics` for the conventions they enforce."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from vestis.errors import VestisError

__all__ = ["check_mask", "check_probs", "labelled_multi"]


def check_probs(probs: ArrayLike) -> np.ndarray:
    """``probs`` as a finite float ``(N, K)`` array with ``K >= 1``."""
    p = np.asarray(probs)
    if p.ndim != 2 or p.shape[1] == 0:
        raise VestisError(f"probs: expected a 2-D array (items, values) with at least one value, got shape {p.shape}")
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(np.float64)
    if not np.isfinite(p).all():
        raise VestisError("probs: expected finite numbers, found NaN or inf")
    return p


def check_mask(mask: ArrayLike | None, n: int) -> np.ndarray:
    """``mask`` as a bool ``(n,)`` array; ``None`` means every row is labelled."""
    if mask is None:
        return np.ones(n, dtype=bool)
    m = np.asarray(mask)
    if m.shape != (n,):
        raise VestisError(f"mask: expected shape ({n},) to match probs, got {m.shape}")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise VestisError("mask: expected booleans (or 0/1)")
        m = m.astype(bool)
    return m


def labelled_multi(probs: ArrayLike, targets: ArrayLike, mask: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
    """The labelled rows of ``probs`` and of the multi-hot ``targets`` (as bool)."""
    p = check_probs(probs)
    t = np.asarray(targets)
    if t.shape != p.shape:
        raise VestisError(f"targets: expected a multi-hot array of shape {p.shape} like probs, got {t.shape}")
    m = check_mask(mask, p.shape[0])
    t = t[m]
    if not np.isin(t, (0, 1)).all():
        raise VestisError("targets: expected a multi-hot array of 0/1 on the labelled rows")
    return p[m], t.astype(bool)
