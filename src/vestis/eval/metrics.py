"""Attribute metrics on predicted probabilities: pure NumPy, one attribute at a time.

Conventions shared by every function:

* ``probs`` is ``(N, K)``: one row per item, one column per value of one attribute (softmax
  probabilities for a single-label attribute, sigmoid ones for a multi-label attribute).
* ``targets`` is a multi-hot ``(N, K)`` array of 0/1; a single-label attribute passes its class
  indices through :func:`one_hot`. ``labels`` is an integer ``(N,)`` array of class indices.
* ``mask`` is an optional ``(N,)`` bool array. Rows where it is false carry no label for the
  attribute (it does not apply to the item, or the annotators disagreed) and are left out of every
  count, exactly as the multi-task loss ignores them. Their targets are never read, so a missing
  single label may be stored as ``-1``.
* A value is predicted when ``prob >= threshold``; the multi-scale paper scores at 0.3. A threshold
  is a float or a ``(K,)`` array of per-value thresholds (see
  :func:`~vestis.eval.thresholds.calibrate_thresholds`).
* Ranking ties go to the lower value index, so top-1 always agrees with ``argmax``.
* A metric over zero rows is ``nan``. A ratio whose denominator is zero over a non-empty set of rows
  is 0, as scikit-learn's ``zero_division=0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from vestis.errors import VestisError
from vestis.eval._inputs import check_mask as _mask
from vestis.eval._inputs import check_probs as _probs
from vestis.eval._inputs import labelled_multi as _multi
from vestis.eval.thresholds import DEFAULT_THRESHOLD, calibrate_thresholds  # re-exported: its old home

__all__ = [
    "DEFAULT_THRESHOLD",
    "PRF",
    "PRCurve",
    "accuracy",
    "average_per_class_accuracy",
    "calibrate_thresholds",
    "macro_f1",
    "micro_f1",
    "micro_prf",
    "one_hot",
    "per_class_accuracy",
    "per_value_prf",
    "precision_recall_curve_data",
    "recall_at_k",
    "recall_at_k_mmfashion",
    "topk_accuracy",
    "weighted_f1",
]


@dataclass(frozen=True)
class PRF:
    """Per-value precision, recall, F1 (float ``(K,)``) and support (int ``(K,)``: labelled positives)."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray


@dataclass(frozen=True)
class PRCurve:
    """A precision-recall curve as :func:`sklearn.metrics.precision_recall_curve` returns it.

    Attributes:
        precision: precision at each threshold, ending with 1.
        recall: recall at each threshold (decreasing), ending with 0.
        thresholds: the increasing score thresholds; one fewer than ``precision``.
        average_precision: the area summary of :func:`sklearn.metrics.average_precision_score`.
    """

    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray
    average_precision: float


# --- input checks ---------------------------------------------------------------------------------------------


def _single(probs: ArrayLike, labels: ArrayLike, mask: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
    """The labelled rows of ``probs`` and of the class indices ``labels``."""
    p = _probs(probs)
    y = np.asarray(labels)
    if y.shape != (p.shape[0],):
        raise VestisError(f"labels: expected class indices of shape ({p.shape[0]},) like probs, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise VestisError(f"labels: expected integer class indices, got dtype {y.dtype}")
    m = _mask(mask, p.shape[0])
    y = y[m]
    bad = (y < 0) | (y >= p.shape[1])
    if bad.any():
        row = int(np.flatnonzero(m)[np.argmax(bad)])
        raise VestisError(
            f"labels: row {row} is labelled (mask true) but holds {int(y[bad][0])}; "
            f"expected a class index in [0, {p.shape[1]})"
        )
    return p[m], y.astype(np.int64)


def _threshold(threshold: float | ArrayLike, k: int) -> np.ndarray:
    t = np.asarray(threshold, dtype=np.float64)
    if t.ndim == 0:
        return t
    if t.shape != (k,):
        raise VestisError(f"threshold: expected a number or one threshold per value, shape ({k},), got {t.shape}")
    return t


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """``num / den`` with 0 where ``den == 0`` (scikit-learn's ``zero_division=0``)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def _topk_mask(p: np.ndarray, k: int) -> np.ndarray:
    """Bool ``(N, K)``: the ``k`` highest scores of each row, ties to the lower index."""
    k = min(k, p.shape[1])
    order = np.argsort(-p, axis=1, kind="stable")[:, :k]  # (N, k)
    out = np.zeros(p.shape, dtype=bool)
    np.put_along_axis(out, order, True, axis=1)
    return out


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise VestisError(f"k: expected a positive integer, got {k!r}")


# --- thresholded (multi-label view) -----------------------------------------------------------------------------


def one_hot(labels: ArrayLike, num_values: int) -> np.ndarray:
    """Class indices ``(N,)`` as a one-hot float ``(N, num_values)`` array; negative (missing) labels give zero rows.

    Raises:
        VestisError: a label is ``>= num_values`` or the labels are not integers.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise VestisError(f"labels: expected a 1-D integer array of class indices, got {y.dtype} {y.shape}")
    if (y >= num_values).any():
        raise VestisError(f"labels: class index {int(y.max())} out of range for {num_values} values")
    out = np.zeros((y.shape[0], num_values), dtype=np.float32)
    ok = y >= 0
    out[np.flatnonzero(ok), y[ok]] = 1.0
    return out


def _counts(
    probs: ArrayLike, targets: ArrayLike, threshold: float | ArrayLike, mask: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per-value true positives, false positives, false negatives (each ``(K,)``) and the number of rows."""
    p, t = _multi(probs, targets, mask)
    pred = p >= _threshold(threshold, p.shape[1])  # (n, K)
    tp = np.count_nonzero(pred & t, axis=0)
    fp = np.count_nonzero(pred & ~t, axis=0)
    fn = np.count_nonzero(~pred & t, axis=0)
    return tp, fp, fn, p.shape[0]


def micro_prf(
    probs: ArrayLike,
    targets: ArrayLike,
    threshold: float | ArrayLike = DEFAULT_THRESHOLD,
    mask: ArrayLike | None = None,
) -> tuple[float, float, float]:
    """Micro-averaged precision, recall and F1 over every labelled (item, value) pair of one attribute.

    Args:
        probs: ``(N, K)`` probabilities.
        targets: ``(N, K)`` multi-hot truth (one-hot for a single-label attribute).
        threshold: a value is predicted when its probability is ``>= threshold`` (float or ``(K,)``).
        mask: ``(N,)`` labelled rows; ``None`` means all.

    Returns:
        ``(precision, recall, f1)``; all ``nan`` when no row is labelled.
    """
    tp, fp, fn, n = _counts(probs, targets, threshold, mask)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    tp, fp, fn = int(tp.sum()), int(fp.sum()), int(fn.sum())
    return float(_ratio(tp, tp + fp)), float(_ratio(tp, tp + fn)), float(_ratio(2 * tp, 2 * tp + fp + fn))


def micro_f1(
    probs: ArrayLike,
    targets: ArrayLike,
    threshold: float | ArrayLike = DEFAULT_THRESHOLD,
    mask: ArrayLike | None = None,
) -> float:
    """The multi-scale paper's per-attribute score: micro-F1 of the thresholded predictions.

    Each attribute is scored as a multi-label classifier: the predicted set of an item is every value
    whose probability reaches ``threshold``, so a single-label attribute may predict no value or several
    (the paper's "no values crossed prediction threshold"). With ``TP``, ``FP``, ``FN`` counted over all
    labelled (item, value) pairs, ``F1 = 2 TP / (2 TP + FP + FN)``; equal to
    ``sklearn.metrics.f1_score(targets, probs >= threshold, average="micro", zero_division=0)``.

    Args:
        probs: ``(N, K)`` probabilities.
        targets: ``(N, K)`` multi-hot truth (one-hot for a single-label attribute, see :func:`one_hot`).
        threshold: float or per-value ``(K,)`` thresholds.
        mask: ``(N,)`` labelled rows; unlabelled rows are excluded. ``None`` means all rows.

    Returns:
        The micro-F1 in [0, 1]; ``nan`` when no row is labelled.
    """
    return micro_prf(probs, targets, threshold, mask)[2]


def per_value_prf(
    probs: ArrayLike,
    targets: ArrayLike,
    threshold: float | ArrayLike = DEFAULT_THRESHOLD,
    mask: ArrayLike | None = None,
) -> PRF:
    """Precision, recall, F1 and support of each value, as one binary classifier per value.

    Equal to ``sklearn.metrics.precision_recall_fscore_support(targets, probs >= threshold, average=None,
    zero_division=0)`` on the labelled rows; with no labelled row the scores are ``nan`` and the support 0.

    Args:
        probs: ``(N, K)`` probabilities.
        targets: ``(N, K)`` multi-hot truth.
        threshold: float or per-value ``(K,)`` thresholds.
        mask: ``(N,)`` labelled rows; ``None`` means all.
    """
    tp, fp, fn, n = _counts(probs, targets, threshold, mask)
    if n == 0:
        nan = np.full(tp.shape, np.nan)
        return PRF(nan, nan.copy(), nan.copy(), np.zeros(tp.shape, dtype=np.int64))
    return PRF(
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        support=(tp + fn).astype(np.int64),
    )


def macro_f1(
    probs: ArrayLike,
    targets: ArrayLike,
    threshold: float | ArrayLike = DEFAULT_THRESHOLD,
    mask: ArrayLike | None = None,
) -> float:
    """Unweighted mean of the per-value F1 over the values that occur.

    A value that is neither true nor predicted on any labelled row has no defined F1 and is left out,
    as scikit-learn does for class-label inputs (``labels`` = values in the truth or the predictions).
    With no such value the score is 0; with no labelled row it is ``nan``.

    Args:
        probs: ``(N, K)`` probabilities.
        targets: ``(N, K)`` multi-hot truth.
        threshold: float or per-value ``(K,)`` thresholds.
        mask: ``(N,)`` labelled rows; ``None`` means all.
    """
    tp, fp, fn, n = _counts(probs, targets, threshold, mask)
    if n == 0:
        return float("nan")
    present = (tp + fp + fn) > 0
    if not present.any():
        return 0.0
    return float(_ratio(2 * tp, 2 * tp + fp + fn)[present].mean())


# --- single-label ---------------------------------------------------------------------------------------------


def topk_accuracy(probs: ArrayLike, labels: ArrayLike, k: int, mask: ArrayLike | None = None) -> float:
    """Fraction of labelled items whose true class is among the ``k`` highest probabilities.

    Ties go to the lower class index (scikit-learn's ``top_k_accuracy_score`` sends them to the higher one;
    the two agree whenever scores are distinct). ``k >= K`` gives 1.

    Args:
        probs: ``(N, K)`` probabilities.
        labels: ``(N,)`` class indices; rows outside ``mask`` may hold ``-1``.
        k: how many top classes count as a hit.
        mask: ``(N,)`` labelled rows; ``None`` means all.

    Returns:
        The top-k accuracy; ``nan`` when no row is labelled.
    """
    _check_k(k)
    p, y = _single(probs, labels, mask)
    if p.shape[0] == 0:
        return float("nan")
    hits = _topk_mask(p, int(k))[np.arange(p.shape[0]), y]
    return float(hits.mean())


def accuracy(probs: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Multi-class accuracy (Softlines paper §3.2): items whose ``argmax`` is the true class / labelled items.

    Args:
        probs: ``(N, K)`` probabilities.
        labels: ``(N,)`` class indices.
        mask: ``(N,)`` labelled rows; ``None`` means all.
    """
    return topk_accuracy(probs, labels, 1, mask)


def per_class_accuracy(
    probs: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class accuracy (Softlines paper Table 5): for each class, the share of its items predicted as it.

    This is the recall of the ``argmax`` prediction for that class.

    Args:
        probs: ``(N, K)`` probabilities.
        labels: ``(N,)`` class indices.
        mask: ``(N,)`` labelled rows; ``None`` means all.

    Returns:
        ``(accuracy, support)``: float ``(K,)`` with ``nan`` for classes without labelled items, and the
        int ``(K,)`` count of labelled items per class.
    """
    p, y = _single(probs, labels, mask)
    k = p.shape[1]
    support = np.bincount(y, minlength=k)
    correct = np.bincount(y[p.argmax(axis=1) == y], minlength=k)
    acc = np.full(k, np.nan)
    np.divide(correct, support, out=acc, where=support > 0)
    return acc, support.astype(np.int64)


def weighted_f1(probs: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Support-weighted F1 of the ``argmax`` prediction over classes (the metric FashionCLIP reports).

    Per class ``F1_c = 2 TP_c / (predicted_c + support_c)``, averaged with weights ``support_c`` (true items per
    class): ``sklearn.metrics.f1_score(labels, argmax, average="weighted")``. Unlike the thresholded micro-F1
    it scores the single answer a single-label attribute gives. ``nan`` when no row is labelled.

    Args:
        probs: ``(N, K)`` probabilities.
        labels: ``(N,)`` class indices.
        mask: ``(N,)`` labelled rows; ``None`` means all.
    """
    p, y = _single(probs, labels, mask)
    if len(y) == 0:
        return float("nan")
    k = p.shape[1]
    pred = p.argmax(axis=1)
    support = np.bincount(y, minlength=k).astype(np.float64)
    predicted = np.bincount(pred, minlength=k).astype(np.float64)
    tp = np.bincount(y[pred == y], minlength=k).astype(np.float64)
    f1 = _ratio(2 * tp, predicted + support)
    return float((f1 * support).sum() / support.sum())


def average_per_class_accuracy(probs: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Mean of :func:`per_class_accuracy` over the classes present in the labels (Softlines paper, Tables 3 and 5).

    Equal to ``sklearn.metrics.balanced_accuracy_score(labels, argmax)``. ``nan`` when no row is labelled.

    Args:
        probs: ``(N, K)`` probabilities.
        labels: ``(N,)`` class indices.
        mask: ``(N,)`` labelled rows; ``None`` means all.
    """
    acc, support = per_class_accuracy(probs, labels, mask)
    if not (support > 0).any():
        return float("nan")
    return float(acc[support > 0].mean())


# --- multi-label ranking --------------------------------------------------------------------------------------


def recall_at_k(probs: ArrayLike, targets: ArrayLike, k: int, mask: ArrayLike | None = None) -> float:
    """Recall rate at top-k as in DeepFashion (the conventional attribute metric).

    ``sum_i |top_k(i) ∩ T_i| / sum_i |T_i|`` over labelled items ``i`` with true value set ``T_i``: the
    number of true values found in the top-k predictions over the total number of true values.

    Args:
        probs: ``(N, K)`` probabilities.
        targets: ``(N, K)`` multi-hot truth.
        k: number of top-ranked values per item (ties to the lower index).
        mask: ``(N,)`` labelled rows; ``None`` means all.

    Returns:
        The recall; ``nan`` when the labelled rows hold no true value.
    """
    _check_k(k)
    p, t = _multi(probs, targets, mask)
    total = int(t.sum())
    if total == 0:
        return float("nan")
    return float(np.count_nonzero(_topk_mask(p, int(k)) & t) / total)


def recall_at_k_mmfashion(
    probs: ArrayLike, targets: ArrayLike, k: int, mask: ArrayLike | None = None, *, top_n: int = 50
) -> float:
    """The "altered recall rate at top-k" of MMFashion's attribute evaluation.

    The hierarchical label-sharing paper (§5.2.2, Table 7 in parentheses) reports it beside the
    conventional :func:`recall_at_k` and traces it to MMFashion's evaluation protocol
    (``mmfashion/core/evaluation/attr_predict_eval.py``, ``AttrCalculator.compute_one_recall``), which
    "takes only the top-N (N=50)" into account. That code computes, for each value ``j``::

        r_j = TP_j / (TP_j + FN_j)     TP_j: items with j true and j in their top-k; FN_j: j true, not in top-k

    over the values with at least one true item, sorts the ``r_j`` in decreasing order and returns the
    mean of the ``min(N, #values with positives)`` largest. It is therefore a macro recall restricted to
    the N best-recalled values: always ``>=`` the macro recall, and usually far above :func:`recall_at_k`
    when there are many values. MMFashion prints it as a percentage; this returns a fraction.

    Args:
        probs: ``(N, K)`` probabilities.
        targets: ``(N, K)`` multi-hot truth.
        k: number of top-ranked values per item (ties to the lower index).
        mask: ``(N,)`` labelled rows; ``None`` means all.
        top_n: how many of the best per-value recalls are averaged (MMFashion: 50).

    Returns:
        The altered recall; ``nan`` when no value has a true item.
    """
    _check_k(k)
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise VestisError(f"top_n: expected a positive integer, got {top_n!r}")
    p, t = _multi(probs, targets, mask)
    positives = t.sum(axis=0)  # (K,)
    present = positives > 0
    if not present.any():
        return float("nan")
    hits = np.count_nonzero(_topk_mask(p, int(k)) & t, axis=0)
    recalls = hits[present] / positives[present]
    best = np.sort(recalls)[::-1][:top_n]
    return float(best.mean())


# --- curves ---------------------------------------------------------------------------------------------------


def precision_recall_curve_data(
    probs: ArrayLike, targets: ArrayLike, mask: ArrayLike | None = None, *, value: int | None = None
) -> PRCurve | None:
    """Precision-recall curve of one value, or micro-averaged over all (item, value) pairs.

    Args:
        probs: ``(N, K)`` probabilities.
        targets: ``(N, K)`` multi-hot truth.
        mask: ``(N,)`` labelled rows; ``None`` means all.
        value: column index of one value; ``None`` pools every pair (the micro-averaged curve).

    Returns:
        The curve, or ``None`` when there is no positive pair (a curve is undefined).
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    p, t = _multi(probs, targets, mask)
    if value is not None:
        if not 0 <= value < p.shape[1]:
            raise VestisError(f"value: column {value} out of range for {p.shape[1]} values")
        scores, truth = p[:, value], t[:, value]
    else:
        scores, truth = p.ravel(), t.ravel()
    if not truth.any():
        return None
    precision, recall, thresholds = precision_recall_curve(truth, scores)
    return PRCurve(precision, recall, thresholds, float(average_precision_score(truth, scores)))
