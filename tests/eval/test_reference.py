"""The majority-value reference: hand-counted frequencies, and its scores through the evaluator."""

from __future__ import annotations

import numpy as np
import pytest

from vestis.data.taxonomy import Taxonomy
from vestis.eval.evaluator import evaluate_predictions
from vestis.eval.reference import reference_probs, value_frequencies

TAX = Taxonomy.from_dict(
    {
        "attributes": [
            {"name": "sleeve", "kind": "single", "values": ["short", "long", "none"]},
            {"name": "tags", "kind": "multi", "values": ["a", "b"]},
            {"name": "fit", "kind": "single", "values": ["slim", "loose"]},
        ]
    }
)


def test_frequencies_by_hand() -> None:
    targets = {
        "sleeve": np.array([1, 1, 0, 2, 1, -1]),
        "tags": np.array([[1, 0], [1, 1], [0, 0], [0, 0], [1, 0], [1, 1]]),
        "fit": np.array([-1] * 6),
    }
    masks = {
        "sleeve": np.array([1, 1, 1, 1, 0, 0], bool),  # row 4 is labelled long but masked out
        "tags": np.array([1, 1, 1, 1, 0, 0], bool),
        "fit": np.zeros(6, bool),
    }
    f = value_frequencies(TAX, targets, masks)
    np.testing.assert_allclose(f["sleeve"], [0.25, 0.5, 0.25])
    np.testing.assert_allclose(f["tags"], [0.5, 0.25])
    np.testing.assert_allclose(f["fit"], [0.5, 0.5])  # nothing learnt: uniform
    p = reference_probs(f, 3)
    assert p["sleeve"].shape == (3, 3) and (p["sleeve"] == f["sleeve"]).all()


def test_reference_scores_are_the_majority_guess() -> None:
    f = {"sleeve": np.array([0.2, 0.7, 0.1])}
    labels = np.array([1, 1, 0, 2])
    m = evaluate_predictions(TAX, reference_probs(f, 4), {"sleeve": labels}, {"sleeve": np.ones(4, bool)})
    assert m["attributes"]["sleeve"]["accuracy"] == pytest.approx(0.5)  # always "long"
    assert m["summary"]["mean_kind_score"] == pytest.approx(0.5)
