"""ECE and reliability bins: a hand-computed case, a naive loop over the bins, and input errors."""

from __future__ import annotations

import numpy as np
import pytest

from vestis.errors import VestisError
from vestis.eval.calibration import ECE_BINS, expected_calibration_error, reliability_bins


def test_hand_case() -> None:
    probs = np.array(
        [
            [0.95, 0.05],  # bin (14/15, 1]: correct
            [0.97, 0.03],  # same bin: wrong
            [0.30, 0.70],  # bin (10/15, 11/15]: correct
            [0.55, 0.45],  # bin (8/15, 9/15]: wrong
            [0.99, 0.01],  # unlabelled
        ]
    )
    labels = np.array([0, 1, 1, 1, -1])
    rel = reliability_bins(probs, labels)
    assert rel.count.sum() == 4 and rel.count[14] == 2 and rel.count[10] == 1 and rel.count[8] == 1
    assert rel.accuracy[14] == pytest.approx(0.5) and rel.confidence[14] == pytest.approx(0.96)
    # 2/4 * |0.5 - 0.96| + 1/4 * |1 - 0.7| + 1/4 * |0 - 0.55|
    want = 0.5 * 0.46 + 0.25 * 0.3 + 0.25 * 0.55
    assert expected_calibration_error(probs, labels) == pytest.approx(want)
    assert np.isnan(rel.accuracy[0]) and len(rel.edges) == ECE_BINS + 1


def test_agrees_with_a_naive_loop() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(500, 6)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 6, 500)
    mask = rng.random(500) > 0.2
    conf, pred = probs.max(1), probs.argmax(1)
    want = 0.0
    n = mask.sum()
    for b in range(ECE_BINS):
        lo, hi = b / ECE_BINS, (b + 1) / ECE_BINS
        inside = mask & (conf > lo) & (conf <= hi)
        if inside.any():
            want += inside.sum() / n * abs((pred[inside] == labels[inside]).mean() - conf[inside].mean())
    assert expected_calibration_error(probs, labels, mask) == pytest.approx(want)


def test_no_labelled_row_and_errors() -> None:
    assert np.isnan(expected_calibration_error(np.full((3, 2), 0.5), np.array([-1, -1, -1])))
    with pytest.raises(VestisError, match="expected \\(N, K\\) and \\(N,\\)"):
        reliability_bins(np.ones((3, 2)), np.zeros(4, int))
    with pytest.raises(VestisError, match="n_bins"):
        reliability_bins(np.ones((3, 2)), np.zeros(3, int), n_bins=0)
