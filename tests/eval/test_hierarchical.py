"""Stage-2 metrics: hand cases, a naive per-item recall and scikit-learn's average precision."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from vestis.errors import VestisError
from vestis.eval.hierarchical import attribute_map, evaluate_stage2, item_recall_at_k

PROBS = np.array([[0.9, 0.8, 0.1, 0.0], [0.1, 0.2, 0.9, 0.3], [0.5, 0.4, 0.3, 0.2]])
TARGETS = np.array([[1, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])


def test_item_recall_hand_case_differs_from_pooled() -> None:
    # item 0: top-2 {0, 1} holds 1 of its 2 true; item 1: top-2 {2, 3} holds its 1 true; item 2 has none
    assert item_recall_at_k(PROBS, TARGETS, 2) == pytest.approx((0.5 + 1.0) / 2)
    out = evaluate_stage2(np.eye(3), np.arange(3), PROBS, TARGETS, recall_k=(2,))
    assert out["attribute_recall@2"] == pytest.approx(0.75)
    assert out["attribute_recall_pooled@2"] == pytest.approx(2 / 3)  # 2 found of 3 true
    # MMFashion: per-value recall over values with positives: value 0: 1/1, value 2: 1/2 -> mean 0.75
    assert out["attribute_recall_mmfashion@2"] == pytest.approx(0.75)
    assert item_recall_at_k(PROBS, np.zeros((3, 4), dtype=int), 2) != item_recall_at_k(PROBS, TARGETS, 2)
    assert np.isnan(item_recall_at_k(PROBS, np.zeros((3, 4), dtype=int), 2))


def test_item_recall_against_naive_loop_with_missing_entries() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((40, 9))
    targets = rng.choice([-1, 0, 1], size=(40, 9), p=[0.2, 0.6, 0.2])
    for k in (1, 3, 5):
        per_item = []
        for p, t in zip(probs, targets, strict=True):
            true = {j for j in range(9) if t[j] == 1}
            if true:
                top = sorted(range(9), key=lambda j: (-p[j], j))[:k]
                per_item.append(len(true & set(top)) / len(true))
        assert item_recall_at_k(probs, targets, k) == pytest.approx(np.mean(per_item))


def test_attribute_map_hand_case_and_sklearn() -> None:
    probs = np.array([[0.9, 0.2, 0.5, 0.99], [0.1, 0.8, 0.4, 0.3], [0.3, 0.1, 0.2, 0.2]])
    targets = np.array(
        [
            [1, 0, 0, -1],  # attribute 3's highest score is missing, so it does not count
            [0, 1, 0, 0],
            [0, 0, 0, 1],
        ]
    )
    m, ap = attribute_map(probs, targets)
    # a0: the positive ranks first (1.0); a1: its positive (0.8) ranks first too (1.0)
    # a2: no positive (nan, excluded); a3 among labelled rows (1, 2): 0.3 (neg) > 0.2 (pos): AP 0.5
    assert ap[0] == 1.0 and ap[1] == 1.0 and np.isnan(ap[2]) and ap[3] == pytest.approx(0.5)
    assert m == pytest.approx(2.5 / 3)
    rng = np.random.default_rng(1)
    p = rng.random((30, 5))
    t = rng.integers(0, 2, (30, 5))
    expected = np.mean([average_precision_score(t[:, j], p[:, j]) for j in range(5)])
    assert attribute_map(p, t)[0] == pytest.approx(expected)


def test_evaluate_stage2_topk_with_missing_and_incompatible_rate() -> None:
    cp = np.array([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.1, 0.6, 0.3], [0.5, 0.4, 0.1]])
    y = np.array([1, 2, 2, -1])
    ap = np.array([[0.9, 0.1], [0.2, 0.7], [0.8, 0.9], [0.6, 0.6]])
    at = np.array([[1, 0], [0, 1], [1, -1], [-1, -1]])
    allowed = np.array([[True, False], [True, True], [False, True]])
    out = evaluate_stage2(cp, y, ap, at, topk=(1, 2, 3), allowed=allowed)
    assert out["category_top1"] == pytest.approx(1 / 3)  # only row 1 right; row 3 unlabelled
    assert out["category_top2"] == pytest.approx(1.0)  # row 0: 1 is 2nd; row 2: 2 is 2nd
    assert out["category_top3"] == 1.0
    # argmax categories 0, 2, 1, 0; predicted (>= 0.5): row0 a0; row1 a1; row2 a0, a1; row3 a0, a1 (a1 not for 0)
    assert out["incompatible_rate"] == pytest.approx(1 / 6)
    assert out["incompatible_item_rate"] == pytest.approx(1 / 4)
    assert {"attribute_recall@3", "attribute_recall@5", "attribute_map"} <= set(out)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((np.eye(2), np.array([0, 1]), np.zeros((2, 2)), np.array([[0, 2], [0, 0]])), "0, 1 or -1"),
        ((np.eye(2), np.array([0.0, 1.0]), np.zeros((2, 2)), np.zeros((2, 2))), "category labels"),
        ((np.eye(2), np.array([0, 1]), np.zeros((3, 2)), np.zeros((3, 2))), "rows"),
        ((np.eye(2), np.array([0, 1]), np.zeros((2, 2)), np.zeros((2, 3))), "attribute targets"),
    ],
)
def test_bad_input_is_a_vestis_error(args: tuple, match: str) -> None:
    with pytest.raises(VestisError, match=match):
        evaluate_stage2(*args)


def test_bad_k() -> None:
    with pytest.raises(VestisError, match="k"):
        item_recall_at_k(PROBS, TARGETS, 0)
