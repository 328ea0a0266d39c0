"""Prototypes against naive means; replace / additive manipulation by hand."""

from __future__ import annotations

import numpy as np
import pytest

from vestis.errors import VestisError
from vestis.retrieval import GLOBAL, manipulate
from vestis.retrieval.prototypes import prototypes


def _data(seed: int = 0, n: int = 30):
    rng = np.random.default_rng(seed)
    emb = {"color": rng.normal(size=(n, 3)), "fit": rng.normal(size=(n, 2))}
    codes = {"color": rng.integers(-1, 3, size=n), "fit": rng.integers(-1, 2, size=n)}
    category = rng.integers(-1, 2, size=n)
    return emb, codes, category


@pytest.mark.parametrize("normalize", [True, False])
def test_prototypes_match_naive_means(normalize):
    emb, codes, category = _data()
    protos = prototypes(emb, codes, category=category, normalize=normalize)
    for attr in emb:
        seen = set()
        for cat in [GLOBAL, 0, 1]:
            for v in range(3):
                rows = [i for i in range(30) if codes[attr][i] == v and (cat == GLOBAL or category[i] == cat)]
                if not rows:
                    continue
                mean = np.mean([emb[attr][i] for i in rows], axis=0)
                if normalize:
                    mean = mean / np.linalg.norm(mean)
                got = protos.get(attr, v, None if cat == GLOBAL else cat)
                np.testing.assert_allclose(got, mean, rtol=1e-5, atol=1e-6)
                seen.add((cat, v))
                row = [
                    j
                    for j in range(len(protos.values[attr]))
                    if protos.categories[attr][j] == cat and protos.values[attr][j] == v
                ]
                assert protos.counts[attr][row[0]] == len(rows)
        assert len(protos.values[attr]) == len(seen)  # no prototype for a value without rows
        assert (protos.values[attr] >= 0).all()


def test_category_prototype_falls_back_to_global():
    emb = {"color": np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])}
    codes = {"color": np.array([0, 0, 1])}
    protos = prototypes(emb, codes, category=np.array([0, 1, 0]))
    np.testing.assert_allclose(protos.get("color", 0, 0), [1.0, 0.0])
    np.testing.assert_allclose(protos.get("color", 0), [np.sqrt(0.5), np.sqrt(0.5)])
    np.testing.assert_allclose(protos.get("color", 1, 1), [np.sqrt(0.5), np.sqrt(0.5)])  # never seen in category 1
    with pytest.raises(VestisError, match="no prototype"):
        protos.get("color", 2)
    with pytest.raises(VestisError, match="no attribute"):
        protos.get("fit", 0)


def _hand_protos():
    # color 0 -> [1, 0], color 1 -> [0, 1] (each the mean of one row)
    emb = {"color": np.array([[1.0, 0.0], [0.0, 1.0]]), "fit": np.array([[1.0, 0.0], [0.0, 1.0]])}
    codes = {"color": np.array([0, 1]), "fit": np.array([0, 1])}
    return prototypes(emb, codes)


def test_manipulate_replace_by_hand():
    protos = _hand_protos()
    q = {"color": np.array([0.6, 0.8]), "fit": np.array([0.8, 0.6])}
    out = manipulate(q, {"color": 0}, protos)
    np.testing.assert_allclose(out["color"], [1.0, 0.0])
    np.testing.assert_allclose(out["fit"], [0.8, 0.6])
    both = manipulate(q, {"color": 0, "fit": 1}, protos)
    np.testing.assert_allclose(both["color"], [1.0, 0.0])
    np.testing.assert_allclose(both["fit"], [0.0, 1.0])
    np.testing.assert_allclose(q["color"], [0.6, 0.8])  # the query is not modified in place


def test_manipulate_additive_by_hand():
    protos = _hand_protos()
    q = {"color": np.array([0.6, 0.8]), "fit": np.array([0.8, 0.6])}
    # old value from the query's label: q + p(0) - p(1) = [1.6, -0.2], renormalised
    out = manipulate(q, {"color": 0}, protos, mode="additive", query_codes={"color": 1})
    np.testing.assert_allclose(out["color"], np.array([1.6, -0.2]) / np.hypot(1.6, 0.2), rtol=1e-6)
    # old value predicted: the nearest prototype of [0.6, 0.8] is value 1, the same result
    pred = manipulate(q, {"color": 0}, protos, mode="additive")
    np.testing.assert_allclose(pred["color"], out["color"], rtol=1e-6)
    # the query's own value: nothing moves
    same = manipulate(q, {"color": 1}, protos, mode="additive", query_codes={"color": 1})
    np.testing.assert_allclose(same["color"], [0.6, 0.8], rtol=1e-6)
    # q + p(0) - p(1) vanishes for q = p(1) - p(0): the part falls back to the new prototype
    zero = manipulate({"color": np.array([-1.0, 1.0])}, {"color": 0}, protos, mode="additive", query_codes={"color": 1})
    np.testing.assert_allclose(zero["color"], [1.0, 0.0])


def test_manipulate_batch_with_per_row_changes():
    protos = _hand_protos()
    q = {"color": np.array([[0.6, 0.8], [0.8, 0.6], [0.0, 1.0]]), "fit": np.eye(2)[[0, 1, 0]]}
    out = manipulate(q, {"color": np.array([0, -1, 0])}, protos)
    np.testing.assert_allclose(out["color"], [[1.0, 0.0], [0.8, 0.6], [1.0, 0.0]])
    add = manipulate(q, {"color": np.array([1, 1, 0])}, protos, mode="additive", query_codes={"color": 0})
    expected = [np.array([-0.4, 1.8]), np.array([-0.2, 1.6]), np.array([0.0, 1.0])]
    np.testing.assert_allclose(add["color"], [e / np.linalg.norm(e) for e in expected], rtol=1e-6)


def test_manipulate_rejects_bad_input():
    protos = _hand_protos()
    q = {"color": np.array([0.6, 0.8])}
    with pytest.raises(VestisError, match="not in the query"):
        manipulate(q, {"fit": 0}, protos)
    with pytest.raises(VestisError, match="mode"):
        manipulate(q, {"color": 0}, protos, mode="swap")
    with pytest.raises(VestisError, match="no prototype"):
        manipulate(q, {"color": 5}, protos)
    with pytest.raises(VestisError, match="dimension"):
        manipulate({"color": np.ones(3)}, {"color": 0}, protos)
    with pytest.raises(VestisError, match="finite"):
        manipulate({"color": np.array([np.nan, 1.0])}, {"color": 0}, protos)
    empty = prototypes({"color": np.ones((2, 2))}, {"color": np.array([-1, -1])})
    with pytest.raises(VestisError, match="no prototype"):
        manipulate({"color": np.array([1.0, 0.0])}, {"color": 0}, empty, mode="additive")
    with pytest.raises(VestisError, match="codes"):
        prototypes({"color": np.ones((2, 2))}, {"color": np.array([0.0, 1.0])})
