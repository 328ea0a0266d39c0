"""Bootstrap intervals against a naive loop of full evaluations on the same resamples."""

from __future__ import annotations

import numpy as np
import pytest

from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.eval.bootstrap import HEADLINE_METRICS, bootstrap_ci, resample_indices
from vestis.eval.evaluator import evaluate_predictions

TAX = Taxonomy.from_dict(
    {
        "attributes": [
            {"name": "category", "kind": "single", "values": ["tee", "shirt", "dress"]},
            {"name": "tags", "kind": "multi", "values": ["a", "b", "c", "d"]},
            {"name": "rare", "kind": "single", "values": ["x", "y"]},
        ]
    }
)


def _case(n: int = 40):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(n, 3))
    probs = {
        "category": np.exp(logits) / np.exp(logits).sum(1, keepdims=True),
        "tags": rng.random((n, 4)),
        "rare": np.tile([0.6, 0.4], (n, 1)),
    }
    masks = {"category": rng.random(n) > 0.2, "tags": rng.random(n) > 0.3, "rare": np.zeros(n, bool)}
    masks["rare"][:2] = True  # labelled twice: many resamples miss it, where it must count as undefined
    targets = {
        "category": np.where(masks["category"], rng.integers(0, 3, n), -1),
        "tags": (rng.random((n, 4)) < 0.3).astype(np.float32),
        "rare": np.where(masks["rare"], 1, -1),
    }
    return probs, targets, masks


def test_matches_naive_full_evaluations() -> None:
    probs, targets, masks = _case()
    b = 60
    ci = bootstrap_ci(TAX, probs, targets, masks, threshold=0.3, n_resamples=b, seed=7)
    naive: dict[str, list[float]] = {k: [] for k in HEADLINE_METRICS}
    for idx in resample_indices(40, b, 7):
        m = evaluate_predictions(
            TAX, {k: v[idx] for k, v in probs.items()}, {k: v[idx] for k, v in targets.items()},
            {k: v[idx] for k, v in masks.items()}, threshold=0.3,
        )  # fmt: skip
        for k in HEADLINE_METRICS:
            if m["summary"][k] is not None:
                naive[k].append(m["summary"][k])
    for k in HEADLINE_METRICS:
        assert ci[k] == pytest.approx(list(np.percentile(naive[k], [2.5, 97.5])), abs=1e-12), k
        assert ci[k][0] <= ci[k][1]


def test_seeded_and_errors() -> None:
    probs, targets, masks = _case()
    a = bootstrap_ci(TAX, probs, targets, masks, n_resamples=100, seed=3)
    assert a == bootstrap_ci(TAX, probs, targets, masks, n_resamples=100, seed=3)
    assert a != bootstrap_ci(TAX, probs, targets, masks, n_resamples=100, seed=4)
    with pytest.raises(VestisError, match="n_resamples"):
        bootstrap_ci(TAX, probs, targets, masks, n_resamples=0)
    with pytest.raises(VestisError, match="level"):
        bootstrap_ci(TAX, probs, targets, masks, level=1.5)
