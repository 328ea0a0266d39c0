"""Threshold calibration with a fallback to the default for values with too few validation positives."""

import numpy as np
import pytest

from vestis.errors import VestisError
from vestis.eval import metrics
from vestis.eval.thresholds import DEFAULT_THRESHOLD, calibrate_thresholds, choose_thresholds

# column 0: 3 positives, best cut keeps the top 3 (F1 = 2*3/(3+3) = 1), midway between 0.6 and 0.4 -> 0.5
# column 1: 1 positive at 0.7, best cut keeps the top 1 (F1 = 1), midway between 0.7 and 0.5 -> 0.6
# column 2: no positive
PROBS = np.array(
    [
        [0.9, 0.7, 0.2],
        [0.8, 0.5, 0.1],
        [0.6, 0.4, 0.3],
        [0.4, 0.3, 0.6],
        [0.1, 0.2, 0.5],
    ]
)
TARGETS = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])


def test_metrics_reexports_the_same_function() -> None:
    assert metrics.calibrate_thresholds is calibrate_thresholds
    assert metrics.DEFAULT_THRESHOLD == DEFAULT_THRESHOLD == 0.3


def test_every_value_with_a_positive_is_calibrated_by_default() -> None:
    np.testing.assert_allclose(calibrate_thresholds(PROBS, TARGETS, default=0.25), [0.5, 0.6, 0.25])


def test_values_below_min_positives_keep_the_default() -> None:
    choice = choose_thresholds(PROBS, TARGETS, default=0.25, min_positives=2)
    np.testing.assert_allclose(choice.thresholds, [0.5, 0.25, 0.25])
    assert choice.calibrated.tolist() == [True, False, False]
    assert choice.positives.tolist() == [3, 1, 0]
    assert choice.to_dict(["a", "b", "c"]) == {
        "a": {"threshold": 0.5, "source": "calibrated", "positives": 3},
        "b": {"threshold": 0.25, "source": "default", "positives": 1},
        "c": {"threshold": 0.25, "source": "default", "positives": 0},
    }
    # exactly min_positives is enough
    assert choose_thresholds(PROBS, TARGETS, min_positives=3).calibrated.tolist() == [True, False, False]
    assert not choose_thresholds(PROBS, TARGETS, min_positives=4).calibrated.any()


def test_positives_are_counted_on_labelled_rows_only() -> None:
    mask = np.array([True, False, True, True, True])  # row 1 (a positive of column 0) carries no label
    choice = choose_thresholds(PROBS, TARGETS, mask, min_positives=3)
    assert choice.positives.tolist() == [2, 1, 0]
    assert not choice.calibrated.any()
    np.testing.assert_allclose(choice.thresholds, [0.3, 0.3, 0.3])


def test_calibrated_values_equal_an_unrestricted_calibration() -> None:
    rng = np.random.default_rng(3)
    probs = rng.random((40, 6))
    targets = (rng.random((40, 6)) < np.linspace(0.05, 0.6, 6)).astype(int)
    full = calibrate_thresholds(probs, targets)
    choice = choose_thresholds(probs, targets, min_positives=8, default=0.4)
    pos = targets.sum(axis=0)
    assert choice.positives.tolist() == pos.tolist()
    np.testing.assert_allclose(choice.thresholds, np.where(pos >= 8, full, 0.4))
    assert 0 < choice.calibrated.sum() < 6  # the case exercises both branches


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_min_positives_must_be_a_positive_integer(bad) -> None:
    with pytest.raises(VestisError, match="min_positives: expected an integer >= 1"):
        choose_thresholds(PROBS, TARGETS, min_positives=bad)


def test_hostile_inputs_are_one_line_errors() -> None:
    with pytest.raises(VestisError, match="targets: expected a multi-hot array of shape"):
        choose_thresholds(PROBS, TARGETS[:, :2])
    with pytest.raises(VestisError, match="finite"):
        choose_thresholds(np.full((2, 2), np.nan), np.zeros((2, 2)))
    with pytest.raises(VestisError, match="value names"):
        choose_thresholds(PROBS, TARGETS).to_dict(["a"])


def test_no_labelled_row_keeps_every_default() -> None:
    choice = choose_thresholds(PROBS, TARGETS, np.zeros(5, dtype=bool), default=0.2)
    np.testing.assert_allclose(choice.thresholds, [0.2, 0.2, 0.2])
    assert choice.positives.tolist() == [0, 0, 0]
