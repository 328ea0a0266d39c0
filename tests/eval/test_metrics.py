"""Metric functions against scikit-learn, naive loops, MMFashion's own code and hand-computed cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from vestis.errors import VestisError
from vestis.eval.metrics import (
    accuracy,
    average_per_class_accuracy,
    calibrate_thresholds,
    macro_f1,
    micro_f1,
    micro_prf,
    one_hot,
    per_class_accuracy,
    per_value_prf,
    precision_recall_curve_data,
    recall_at_k,
    recall_at_k_mmfashion,
    topk_accuracy,
    weighted_f1,
)

SEEDS = range(6)


def _multi_case(seed: int, n: int = 40, k: int = 7, *, ties: bool = False):
    """Random multi-label probabilities, multi-hot targets and a mask that drops about a fifth of the rows."""
    rng = np.random.default_rng(seed)
    probs = rng.random((n, k))
    if ties:
        probs = np.round(probs, 1)  # many ties, and probabilities exactly at 0.3
    targets = (rng.random((n, k)) < 0.3).astype(np.float32)
    mask = rng.random(n) > 0.2
    return probs, targets, mask


def _single_case(seed: int, n: int = 50, k: int = 7, *, present: int | None = None):
    """Random softmax probabilities and class indices (-1 on unlabelled rows); ``present`` limits the classes used."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, present or k, size=n)
    mask = rng.random(n) > 0.2
    labels[~mask] = -1
    return probs, labels, mask


# --- thresholded metrics --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_micro_f1_matches_sklearn(seed: int, ties: bool) -> None:
    probs, targets, mask = _multi_case(seed, ties=ties)
    pred = probs[mask] >= 0.3
    want = skm.f1_score(targets[mask], pred, average="micro", zero_division=0)
    assert micro_f1(probs, targets, 0.3, mask) == pytest.approx(want)
    p, r, f = micro_prf(probs, targets, 0.3, mask)
    assert p == pytest.approx(skm.precision_score(targets[mask], pred, average="micro", zero_division=0))
    assert r == pytest.approx(skm.recall_score(targets[mask], pred, average="micro", zero_division=0))
    assert f == pytest.approx(want)


@pytest.mark.parametrize("seed", SEEDS)
def test_per_value_thresholds_match_sklearn(seed: int) -> None:
    probs, targets, mask = _multi_case(seed)
    thr = np.linspace(0.1, 0.9, probs.shape[1])
    pred = probs[mask] >= thr[None, :]
    assert micro_f1(probs, targets, thr, mask) == pytest.approx(
        skm.f1_score(targets[mask], pred, average="micro", zero_division=0)
    )
    prf = per_value_prf(probs, targets, thr, mask)
    p, r, f, s = skm.precision_recall_fscore_support(targets[mask], pred, average=None, zero_division=0)
    np.testing.assert_allclose(prf.precision, p)
    np.testing.assert_allclose(prf.recall, r)
    np.testing.assert_allclose(prf.f1, f)
    np.testing.assert_array_equal(prf.support, s)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_per_value_prf_matches_sklearn(seed: int, ties: bool) -> None:
    probs, targets, mask = _multi_case(seed, ties=ties)
    pred = probs[mask] >= 0.3
    p, r, f, s = skm.precision_recall_fscore_support(targets[mask], pred, average=None, zero_division=0)
    prf = per_value_prf(probs, targets, 0.3, mask)
    np.testing.assert_allclose(prf.precision, p)
    np.testing.assert_allclose(prf.recall, r)
    np.testing.assert_allclose(prf.f1, f)
    np.testing.assert_array_equal(prf.support, s)


@pytest.mark.parametrize("seed", SEEDS)
def test_macro_f1_matches_sklearn_over_values_that_occur(seed: int) -> None:
    probs, targets, mask = _multi_case(seed, k=9)
    targets[:, 0] = 0  # a value never true...
    probs[:, 0] = 0.01  # ...and never predicted: left out of the mean
    targets[:, 1] = 0  # a value never true but predicted: F1 0, counted
    pred = probs[mask] >= 0.3
    occurs = np.flatnonzero(targets[mask].any(axis=0) | pred.any(axis=0))
    assert 0 not in occurs and 1 in occurs
    want = skm.f1_score(targets[mask], pred, average="macro", labels=occurs, zero_division=0)
    assert macro_f1(probs, targets, 0.3, mask) == pytest.approx(want)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda n: st.integers(1, 4).flatmap(
            lambda k: st.tuples(
                st.lists(st.sampled_from([0.0, 0.1, 0.29, 0.3, 0.31, 0.9]), min_size=n * k, max_size=n * k),
                st.lists(st.integers(0, 1), min_size=n * k, max_size=n * k),
                st.just((n, k)),
            )
        )
    )
)
def test_micro_f1_matches_sklearn_on_small_edge_cases(case) -> None:
    p, t, shape = case
    probs, targets = np.array(p).reshape(shape), np.array(t).reshape(shape)
    # micro-F1 over (item, value) pairs is the binary F1 of the flattened pairs; sklearn would read an
    # (N, 1) indicator as class labels, so the flattened form is the reference for every K
    want = skm.f1_score(targets.ravel(), probs.ravel() >= 0.3, average="binary", zero_division=0)
    assert micro_f1(probs, targets) == pytest.approx(want)


def test_thresholded_metrics_hand_case() -> None:
    # a single-label attribute scored the multi-scale paper's way: one-hot targets, threshold 0.3
    probs = np.array(
        [
            [0.5, 0.3, 0.1, 0.1],  # true 0: predicts {0, 1}: TP on 0, FP on 1 (0.3 >= 0.3)
            [0.2, 0.4, 0.3, 0.1],  # true 2: predicts {1, 2}: TP on 2, FP on 1
            [0.1, 0.1, 0.6, 0.2],  # true 2: predicts {2}: TP
            [0.4, 0.3, 0.2, 0.1],  # unlabelled: ignored
        ]
    )
    labels = np.array([0, 2, 2, -1])
    mask = np.array([True, True, True, False])
    targets = one_hot(labels, 4)
    # TP 3, FP 2, FN 0
    assert micro_prf(probs, targets, 0.3, mask) == pytest.approx((3 / 5, 1.0, 6 / 8))
    prf = per_value_prf(probs, targets, 0.3, mask)
    np.testing.assert_allclose(prf.precision, [1, 0, 1, 0])
    np.testing.assert_allclose(prf.recall, [1, 0, 1, 0])
    np.testing.assert_allclose(prf.f1, [1, 0, 1, 0])
    np.testing.assert_array_equal(prf.support, [1, 0, 2, 0])
    # value 3 is neither true nor predicted: mean over values 0, 1, 2
    assert macro_f1(probs, targets, 0.3, mask) == pytest.approx(2 / 3)
    # at 0.5 the first row's value 1 and second row's values drop: TP 2 (rows 0, 2), FN 1 (row 1)
    assert micro_f1(probs, targets, 0.5, mask) == pytest.approx(4 / 5)


def test_unlabelled_rows_are_excluded_whatever_they_hold() -> None:
    probs, targets, mask = _multi_case(3)
    noisy = targets.copy()
    noisy[~mask] = 7  # not a valid target; never read
    assert micro_f1(probs, noisy, 0.3, mask) == micro_f1(probs[mask], targets[mask], 0.3)
    assert per_value_prf(probs, noisy, 0.3, mask).support.sum() == targets[mask].sum()


def test_empty_and_degenerate_inputs() -> None:
    probs = np.full((3, 2), 0.1)
    none = np.zeros((3, 2))
    assert np.isnan(micro_f1(probs, none, 0.3, np.zeros(3, bool)))
    assert np.isnan(macro_f1(probs, none, 0.3, np.zeros(3, bool)))
    assert np.isnan(per_value_prf(probs, none, 0.3, np.zeros(3, bool)).f1).all()
    # rows exist but nothing is true or predicted: zero_division=0
    assert micro_f1(probs, none) == 0.0
    assert macro_f1(probs, none) == 0.0


def test_one_hot() -> None:
    np.testing.assert_array_equal(one_hot(np.array([2, -1, 0]), 3), [[0, 0, 1], [0, 0, 0], [1, 0, 0]])
    with pytest.raises(VestisError, match="out of range"):
        one_hot(np.array([3]), 3)
    with pytest.raises(VestisError, match="integer"):
        one_hot(np.array([0.0]), 3)


# --- single-label ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 3, 5])
def test_topk_accuracy_matches_sklearn(seed: int, k: int) -> None:
    probs, labels, mask = _single_case(seed)
    want = skm.top_k_accuracy_score(labels[mask], probs[mask], k=k, labels=np.arange(7))
    assert topk_accuracy(probs, labels, k, mask) == pytest.approx(want)


@pytest.mark.parametrize("seed", SEEDS)
def test_accuracy_matches_sklearn(seed: int) -> None:
    probs, labels, mask = _single_case(seed)
    assert accuracy(probs, labels, mask) == pytest.approx(skm.accuracy_score(labels[mask], probs[mask].argmax(1)))


def test_topk_ties_go_to_the_lower_index() -> None:
    probs = np.array([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2], [0.2, 0.4, 0.4]])
    assert topk_accuracy(probs, np.array([0, 1, 2]), 1) == pytest.approx(1 / 3)  # only row 0 hits
    assert accuracy(probs, np.array([0, 1, 1])) == pytest.approx(2 / 3)  # agrees with argmax
    assert topk_accuracy(probs, np.array([1, 2, 0]), 2) == pytest.approx(1 / 3)
    assert topk_accuracy(probs, np.array([2, 2, 0]), 3) == 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_per_class_accuracy_is_per_class_recall(seed: int) -> None:
    probs, labels, mask = _single_case(seed, n=60, present=5)  # classes 5 and 6 never occur
    pred = probs[mask].argmax(1)
    acc, support = per_class_accuracy(probs, labels, mask)
    want = skm.recall_score(labels[mask], pred, labels=np.arange(7), average=None, zero_division=0)
    present = np.bincount(labels[mask], minlength=7) > 0
    np.testing.assert_allclose(acc[present], want[present])
    assert np.isnan(acc[~present]).all()
    np.testing.assert_array_equal(support, np.bincount(labels[mask], minlength=7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that predictions hold classes absent from the truth
        balanced = skm.balanced_accuracy_score(labels[mask], pred)
    assert average_per_class_accuracy(probs, labels, mask) == pytest.approx(balanced)


@pytest.mark.parametrize("seed", SEEDS)
def test_weighted_f1_matches_scikit_learn(seed: int) -> None:
    probs, labels, mask = _single_case(seed, n=60, present=5)  # predictions may name classes absent from the truth
    pred = probs[mask].argmax(1)
    want = skm.f1_score(labels[mask], pred, average="weighted", zero_division=0)
    assert weighted_f1(probs, labels, mask) == pytest.approx(want)


def test_weighted_f1_hand_computed() -> None:
    # truth 0,0,0,1 / prediction 0,0,1,1: F1_0 = 2*2/(2+3) = 0.8, F1_1 = 2*1/(2+1) = 2/3; weights 3 and 1
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    assert weighted_f1(probs, np.array([0, 0, 0, 1])) == pytest.approx((3 * 0.8 + 2 / 3) / 4)
    assert np.isnan(weighted_f1(probs, np.array([0, 0, 0, 1]), np.zeros(4, bool)))


def test_average_per_class_accuracy_reproduces_softlines_table_5() -> None:
    # Softlines paper, Table 5: per-class accuracies of the neck-style classifier and their mean, 60.01 %
    table = [81.33, 55.33, 81.61, 81.09, 52.51, 70.95, 35.37, 21.21, 86.85, 61.36, 32.47]
    k, per_class = len(table), 10_000
    labels = np.repeat(np.arange(k), per_class)
    correct = np.concatenate([np.arange(per_class) < round(a * 100) for a in table])
    pred = np.where(correct, labels, (labels + 1) % k)
    probs = np.full((labels.size, k), 0.01)
    probs[np.arange(labels.size), pred] = 0.9
    acc, support = per_class_accuracy(probs, labels)
    np.testing.assert_allclose(acc * 100, table)
    np.testing.assert_array_equal(support, np.full(k, per_class))
    assert round(100 * average_per_class_accuracy(probs, labels), 2) == 60.01
    assert accuracy(probs, labels) == pytest.approx(np.mean(table) / 100)  # balanced classes: the same


def test_multi_class_accuracy_and_average_per_class_accuracy_differ_under_imbalance() -> None:
    # four items of class 0, one of class 1, everything predicted as class 0
    probs = np.tile([0.7, 0.2, 0.1], (5, 1))
    labels = np.array([0, 0, 0, 0, 1])
    assert accuracy(probs, labels) == pytest.approx(0.8)
    acc, support = per_class_accuracy(probs, labels)
    np.testing.assert_array_equal(acc[:2], [1.0, 0.0])
    assert np.isnan(acc[2])  # class 2 has no item: no accuracy, and not part of the average
    np.testing.assert_array_equal(support, [4, 1, 0])
    assert average_per_class_accuracy(probs, labels) == pytest.approx(0.5)
    assert np.isnan(average_per_class_accuracy(probs, labels, np.zeros(5, bool)))


def test_single_label_input_errors() -> None:
    probs = np.full((2, 3), 1 / 3)
    with pytest.raises(VestisError, match="row 1 is labelled"):
        accuracy(probs, np.array([0, -1]))
    assert accuracy(probs, np.array([0, -1]), np.array([True, False])) == 1.0
    with pytest.raises(VestisError, match="integer class indices"):
        accuracy(probs, np.array([0.0, 1.0]))
    with pytest.raises(VestisError, match="shape"):
        accuracy(probs, np.array([0, 1, 2]))
    with pytest.raises(VestisError, match="positive integer"):
        topk_accuracy(probs, np.array([0, 1]), 0)
    with pytest.raises(VestisError, match="finite"):
        accuracy(np.array([[np.nan, 0.5]]), np.array([0]))


# --- multi-label ranking --------------------------------------------------------------------------------------


def _naive_recall_at_k(probs: np.ndarray, targets: np.ndarray, k: int) -> float:
    found = total = 0
    for p, t in zip(probs, targets, strict=True):
        top = sorted(range(len(p)), key=lambda j: (-p[j], j))[:k]
        found += sum(int(t[j]) for j in top)
        total += int(t.sum())
    return found / total


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("ties", [False, True])
def test_recall_at_k_matches_naive_loop(seed: int, k: int, ties: bool) -> None:
    probs, targets, mask = _multi_case(seed, k=9, ties=ties)
    want = _naive_recall_at_k(probs[mask], targets[mask], k)
    assert recall_at_k(probs, targets, k, mask) == pytest.approx(want)


class _MMFashionAttrCalculator:
    """The recall part of MMFashion's ``AttrCalculator`` (attr_predict_eval.py), transcribed line by line."""

    def __init__(self, num_classes: int, top: int, topn: int = 50) -> None:
        self.top, self.topn = top, topn
        self.tp, self.fn = np.zeros(num_classes), np.zeros(num_classes)

    def collect_result(self, data: np.ndarray, target: np.ndarray) -> None:
        for i in range(data.shape[0]):
            indexes = np.argsort(data[i])[::-1][: self.top]
            for j, t in enumerate(target[i]):
                if t == 1:
                    if j in indexes:
                        self.tp[j] += 1
                    else:
                        self.fn[j] += 1

    def compute_one_recall(self) -> float:
        empty = 0
        recall = np.zeros(self.tp.shape)
        for i in range(len(self.tp)):
            if self.tp[i] + self.fn[i] == 0:
                empty += 1
                continue
            recall[i] = float(self.tp[i]) / float(self.tp[i] + self.fn[i])
        sorted_recall = sorted(recall)[::-1]
        return 100 * sum(sorted_recall[: self.topn]) / min(self.topn, len(sorted_recall) - empty)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("k", "num_values", "top_n"), [(3, 9, 50), (5, 9, 50), (3, 80, 50), (5, 80, 10)])
def test_recall_at_k_mmfashion_matches_mmfashion_code(seed: int, k: int, num_values: int, top_n: int) -> None:
    probs, targets, mask = _multi_case(seed, n=60, k=num_values)
    targets[:, :3] = 0  # values without positives are skipped, as MMFashion's "empty" ones
    ref = _MMFashionAttrCalculator(num_values, k, top_n)
    ref.collect_result(probs[mask], targets[mask])
    got = recall_at_k_mmfashion(probs, targets, k, mask, top_n=top_n)
    assert 100 * got == pytest.approx(ref.compute_one_recall())
    # the altered recall is never below the plain macro recall over values with positives
    pos = targets[mask].sum(0)
    top = np.argsort(-probs[mask], axis=1, kind="stable")[:, :k]
    hits = np.zeros(num_values)
    for row, t in zip(top, targets[mask], strict=True):
        hits[row] += t[row]
    assert got >= (hits[pos > 0] / pos[pos > 0]).mean() - 1e-12


_PATTERN_PROBS = np.array(
    [
        [0.9, 0.2, 0.35, 0.1],
        [0.1, 0.8, 0.6, 0.05],
        [0.9, 0.9, 0.9, 0.9],  # unlabelled
        [0.2, 0.25, 0.1, 0.4],
    ]
)
_PATTERN_TARGETS = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1]])
_PATTERN_MASK = np.array([True, True, False, True])


def test_recall_at_k_hand_case() -> None:
    # top-1: row 0 finds 1/1, row 1 finds 1/2 (value 1), row 3 finds 1/2 (value 3): 3 of 5
    assert recall_at_k(_PATTERN_PROBS, _PATTERN_TARGETS, 1, _PATTERN_MASK) == pytest.approx(0.6)
    # top-3 of row 3 is {3, 1, 0}: every true value is found
    assert recall_at_k(_PATTERN_PROBS, _PATTERN_TARGETS, 3, _PATTERN_MASK) == 1.0
    # per value at k=1: value 0 found 1 of 2, value 1 1/1, value 2 0/1, value 3 1/1
    assert recall_at_k_mmfashion(_PATTERN_PROBS, _PATTERN_TARGETS, 1, _PATTERN_MASK) == pytest.approx(0.625)
    # only the 2 best per-value recalls (1 and 1) count with N = 2
    assert recall_at_k_mmfashion(_PATTERN_PROBS, _PATTERN_TARGETS, 1, _PATTERN_MASK, top_n=2) == 1.0
    assert recall_at_k_mmfashion(_PATTERN_PROBS, _PATTERN_TARGETS, 1, _PATTERN_MASK, top_n=3) == pytest.approx(5 / 6)
    assert np.isnan(recall_at_k(_PATTERN_PROBS, np.zeros((4, 4)), 1))
    assert np.isnan(recall_at_k_mmfashion(_PATTERN_PROBS, np.zeros((4, 4)), 1))


# --- thresholds and curves ------------------------------------------------------------------------------------


def _brute_force_cut(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The predicted set of the best F1 threshold among all candidates (fewest predictions on ties)."""
    best_f1, best_t = -1.0, None
    for thr in sorted({*p.tolist(), np.inf}, reverse=True):
        pred = p >= thr
        tp = int((pred & t).sum())
        f1 = 2 * tp / (pred.sum() + t.sum())
        if f1 > best_f1 + 1e-12:
            best_f1, best_t = f1, thr
    return p >= best_t


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_calibrate_thresholds_matches_brute_force(seed: int, ties: bool) -> None:
    probs, targets, mask = _multi_case(seed, n=30, k=6, ties=ties)
    targets[:, 5] = 0  # no positive: keeps the default
    thr = calibrate_thresholds(probs, targets, mask, default=0.42)
    assert thr[5] == 0.42
    p, t = probs[mask], targets[mask].astype(bool)
    for j in range(5):
        np.testing.assert_array_equal(p[:, j] >= thr[j], _brute_force_cut(p[:, j], t[:, j]), err_msg=f"value {j}")
    # the calibrated thresholds never score below the default on the same data
    assert micro_f1(probs, targets, thr, mask) >= micro_f1(probs, targets, 0.42, mask) - 1e-12


def test_calibrate_thresholds_hand_case() -> None:
    probs = np.array(
        [
            [0.9, 0.5, 0.9],
            [0.8, 0.5, 0.7],
            [0.4, 0.5, 0.5],
            [0.3, 0.5, 0.2],
            [0.1, 0.5, 0.1],
        ]
    )
    targets = np.array([[1, 0, 1], [0, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]])
    thr = calibrate_thresholds(probs, targets)
    # column 0: keeping the top 3 gives F1 = 2*2/(3+2) = 0.8, the best; midway between 0.4 and 0.3
    # column 1: no positive, default 0.3
    # column 2: top 1 and top 4 both give F1 = 2/3; the higher threshold wins: midway between 0.9 and 0.7
    np.testing.assert_allclose(thr, [0.35, 0.3, 0.8])
    # every item kept: threshold 0
    np.testing.assert_allclose(calibrate_thresholds(np.array([[0.2], [0.1]]), np.array([[1], [1]])), [0.0])


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_precision_recall_curve_matches_sklearn(seed: int) -> None:
    probs, targets, mask = _multi_case(seed)
    curve = precision_recall_curve_data(probs, targets, mask)
    p, r, thr = skm.precision_recall_curve(targets[mask].ravel(), probs[mask].ravel())
    np.testing.assert_allclose(curve.precision, p)
    np.testing.assert_allclose(curve.recall, r)
    np.testing.assert_allclose(curve.thresholds, thr)
    ap = skm.average_precision_score(targets[mask].ravel(), probs[mask].ravel())
    assert curve.average_precision == pytest.approx(ap)
    one = precision_recall_curve_data(probs, targets, mask, value=2)
    assert one.average_precision == pytest.approx(skm.average_precision_score(targets[mask, 2], probs[mask, 2]))
    targets[:, 3] = 0
    assert precision_recall_curve_data(probs, targets, mask, value=3) is None


def test_multi_label_input_errors() -> None:
    probs = np.full((2, 3), 0.5)
    with pytest.raises(VestisError, match=r"shape \(2, 3\)"):
        micro_f1(probs, np.zeros((2, 2)))
    with pytest.raises(VestisError, match="0/1"):
        micro_f1(probs, np.full((2, 3), 2))
    with pytest.raises(VestisError, match=r"mask: expected shape \(2,\)"):
        micro_f1(probs, np.zeros((2, 3)), 0.3, np.ones(3, bool))
    with pytest.raises(VestisError, match="one threshold per value"):
        micro_f1(probs, np.zeros((2, 3)), np.array([0.3, 0.3]))
    with pytest.raises(VestisError, match="2-D"):
        micro_f1(np.zeros(3), np.zeros(3))
    with pytest.raises(VestisError, match="top_n"):
        recall_at_k_mmfashion(probs, np.zeros((2, 3)), 1, top_n=0)
