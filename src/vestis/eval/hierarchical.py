"""Stage-2 metrics as the hierarchical label-sharing paper reports them (Tables 6 and 7).

* category top-1/3/5 accuracy (:func:`~vestis.eval.metrics.topk_accuracy`);
* attribute recall@k, conventional: ``|top_k(i) ∩ T_i| / |T_i|`` averaged over the items with at least one true
  attribute (:func:`item_recall_at_k`). Beside it, ``attribute_recall_pooled@k`` is DeepFashion's pooled form
  ``sum_i |top_k(i) ∩ T_i| / sum_i |T_i|`` (:func:`~vestis.eval.metrics.recall_at_k`), and
  ``attribute_recall_mmfashion@k`` the "altered recall" of MMFashion's evaluation that the paper puts in
  parentheses (:func:`~vestis.eval.metrics.recall_at_k_mmfashion`). The three differ; their names say which is which;
* attribute mAP: :func:`sklearn.metrics.average_precision_score` per attribute over its labelled items, averaged
  over the attributes with at least one positive;
* with a category -> allowed-attributes matrix, the incompatible-prediction rates of
  :func:`~vestis.models.hierarchical.consistency.apply_taxonomy` (before suppression).

Targets: categories (N,) with ``-1`` for missing; attributes (N, A) in {0, 1} with ``-1`` for missing entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from vestis.errors import VestisError
from vestis.eval._inputs import check_probs
from vestis.eval.metrics import recall_at_k, recall_at_k_mmfashion, topk_accuracy
from vestis.models.hierarchical.consistency import apply_taxonomy

__all__ = ["attribute_map", "evaluate_stage2", "item_recall_at_k"]


def _attribute_targets(probs: ArrayLike, targets: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = check_probs(probs)
    t = np.asarray(targets)
    if t.shape != p.shape:
        raise VestisError(f"attribute targets: expected shape {p.shape} like the probabilities, got {t.shape}")
    if not np.isin(t, (-1, 0, 1)).all():
        raise VestisError("attribute targets: expected 0, 1 or -1 (missing)")
    return p, t.astype(np.int64)


def item_recall_at_k(probs: ArrayLike, targets: ArrayLike, k: int) -> float:
    """Per-item recall at top-k, averaged over the items with at least one true attribute.

    Args:
        probs: (N, A) attribute probabilities.
        targets: (N, A) in {0, 1, -1}; ``-1`` (missing) counts as not true.
        k: how many top-ranked attributes per item (ties to the lower index).

    Returns:
        The mean recall; ``nan`` when no item has a true attribute.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise VestisError(f"k: expected a positive integer, got {k!r}")
    p, t = _attribute_targets(probs, targets)
    true = t == 1
    n_true = true.sum(axis=1)
    rows = n_true > 0
    if not rows.any():
        return float("nan")
    top = np.argsort(-p[rows], axis=1, kind="stable")[:, :k]  # (M, k)
    hits = np.take_along_axis(true[rows], top, axis=1).sum(axis=1)
    return float((hits / n_true[rows]).mean())


def attribute_map(probs: ArrayLike, targets: ArrayLike) -> tuple[float, np.ndarray]:
    """Mean average precision over attributes.

    Args:
        probs: (N, A) attribute probabilities.
        targets: (N, A) in {0, 1, -1}; each attribute is scored on the items where it is labelled.

    Returns:
        ``(mAP, ap)``: the mean over attributes with at least one positive (``nan`` if none) and the (A,) AP per
        attribute (``nan`` where there is no positive).
    """
    from sklearn.metrics import average_precision_score

    p, t = _attribute_targets(probs, targets)
    ap = np.full(p.shape[1], np.nan)
    for j in range(p.shape[1]):
        keep = t[:, j] >= 0
        if (t[keep, j] == 1).any():
            ap[j] = average_precision_score(t[keep, j], p[keep, j])
    present = ~np.isnan(ap)
    return (float(ap[present].mean()) if present.any() else float("nan")), ap


def evaluate_stage2(
    category_probs: ArrayLike,
    category_labels: ArrayLike,
    attribute_probs: ArrayLike,
    attribute_targets: ArrayLike,
    *,
    topk: Sequence[int] = (1, 3, 5),
    recall_k: Sequence[int] = (3, 5),
    allowed: ArrayLike | None = None,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Every stage-2 metric in one flat dict.

    Args:
        category_probs: (N, C) softmax probabilities.
        category_labels: (N,) true categories, ``-1`` for missing.
        attribute_probs: (N, A) sigmoid probabilities.
        attribute_targets: (N, A) in {0, 1, -1}.
        topk: the k of ``category_top{k}``.
        recall_k: the k of the attribute recalls.
        allowed: optional (C, A) booleans; adds ``incompatible_rate`` and ``incompatible_item_rate`` measured on
            the argmax categories before suppression.
        threshold: the probability at which an attribute counts as predicted, for the incompatible rates.

    Returns:
        ``category_top{k}``, ``attribute_recall@k``, ``attribute_recall_pooled@k``,
        ``attribute_recall_mmfashion@k``, ``attribute_map`` and, with ``allowed``, the two rates.
    """
    cp = check_probs(category_probs)
    y = np.asarray(category_labels)
    if y.shape != (cp.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise VestisError(f"category labels: expected ({cp.shape[0]},) integers, got {y.shape} {y.dtype}")
    ap, at = _attribute_targets(attribute_probs, attribute_targets)
    if ap.shape[0] != cp.shape[0]:
        raise VestisError(f"attribute probabilities: expected {cp.shape[0]} rows, got {ap.shape[0]}")
    out: dict[str, float] = {}
    for k in topk:
        out[f"category_top{k}"] = topk_accuracy(cp, y, k, mask=y >= 0)
    labelled = (at >= 0).any(axis=1)
    positive = np.where(at == 1, 1, 0)
    for k in recall_k:
        out[f"attribute_recall@{k}"] = item_recall_at_k(ap, at, k)
        out[f"attribute_recall_pooled@{k}"] = recall_at_k(ap, positive, k, mask=labelled)
        out[f"attribute_recall_mmfashion@{k}"] = recall_at_k_mmfashion(ap, positive, k, mask=labelled)
    out["attribute_map"] = attribute_map(ap, at)[0]
    if allowed is not None:
        _, rates = apply_taxonomy(ap, cp.argmax(axis=1), allowed, threshold)
        out.update(rates)
    return out
