"""The majority-value reference: what a model that learnt only the training split's value frequencies scores.

A report shows it beside the model so a reader sees at once whether the model beats guessing from the label
distribution. It always outputs the same probabilities for every item: single-label, the training frequency
of each value (so its decision is the most frequent training value); multi-label, the training positive rate
of each value.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

from vestis.data.taxonomy import Taxonomy

__all__ = ["reference_probs", "value_frequencies"]


def value_frequencies(
    taxonomy: Taxonomy, targets: Mapping[str, ArrayLike], masks: Mapping[str, ArrayLike]
) -> dict[str, np.ndarray]:
    """Per attribute in ``targets``: the ``(K,)`` share of labelled training rows carrying each value.

    A single-label attribute's shares sum to 1; without a labelled row they are uniform (nothing was learnt,
    so nothing is preferred). A multi-label attribute's shares are the positive rates (0 without a labelled row).
    """
    out: dict[str, np.ndarray] = {}
    for a in taxonomy:
        if a.name not in targets:
            continue
        m = np.asarray(masks[a.name], dtype=bool)
        t = np.asarray(targets[a.name])
        k = a.num_values
        if a.kind == "single":
            counts = np.bincount(t[m & (t >= 0)].astype(np.int64), minlength=k).astype(np.float64)
            out[a.name] = counts / counts.sum() if counts.sum() else np.full(k, 1.0 / k)
        else:
            rows = t[m].astype(np.float64)
            out[a.name] = rows.mean(axis=0) if len(rows) else np.zeros(k)
    return out


def reference_probs(frequencies: Mapping[str, np.ndarray], n_items: int) -> dict[str, np.ndarray]:
    """The reference's ``(n_items, K)`` probabilities: every row is the attribute's training frequencies."""
    return {name: np.tile(np.asarray(f, dtype=np.float64), (n_items, 1)) for name, f in frequencies.items()}
