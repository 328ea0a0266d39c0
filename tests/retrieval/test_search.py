"""Brute-force ranking against a naive full sort."""

from __future__ import annotations

import numpy as np
import pytest

from vestis.errors import VestisError
from vestis.retrieval import rank


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _sets(seed=0, q=9, g=40):
    rng = np.random.default_rng(seed)
    dims = {"color": 3, "fit": 4, "sleeve": 2}
    return {a: _unit(rng, q, d) for a, d in dims.items()}, {a: _unit(rng, g, d) for a, d in dims.items()}


def _naive(query, gallery, attrs, k, exclude_self=False):
    n_q = len(next(iter(query.values())))
    n_g = len(next(iter(gallery.values())))
    idx, val = [], []
    for i in range(n_q):
        scores = []
        for j in range(n_g):
            if exclude_self and i == j:
                continue
            scores.append((-sum(float(np.dot(query[a][i], gallery[a][j])) for a in attrs), j))
        best = sorted(scores)[:k]
        idx.append([j for _, j in best])
        val.append([-s for s, _ in best])
    return np.array(idx), np.array(val)


@pytest.mark.parametrize("attrs", [None, ["fit"], ["color", "sleeve"]])
@pytest.mark.parametrize("k", [1, 5, 40, 100])
def test_rank_matches_naive_sort(attrs, k):
    query, gallery = _sets()
    idx, val = rank(query, gallery, attributes=attrs, k=k)
    ref_idx, ref_val = _naive(query, gallery, attrs or list(query), k)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(val, ref_val, rtol=1e-5, atol=1e-6)
    assert idx.dtype == np.int64 and val.dtype == np.float32


def test_rank_is_squared_l2_over_the_kept_parts():
    query, gallery = _sets(1)
    idx, _ = rank(query, gallery, attributes=["color", "fit"], k=40)
    q = np.concatenate([query["color"], query["fit"]], axis=1)
    g = np.concatenate([gallery["color"], gallery["fit"]], axis=1)
    d = ((q[:, None, :] - g[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(idx, np.argsort(d, axis=1, kind="stable"))


@pytest.mark.parametrize("chunk", [1, 2, 7, 1000])
def test_rank_chunked_and_self_excluded(chunk):
    query, _ = _sets(2, q=15)
    idx, val = rank(query, query, k=4, exclude_self=True, chunk_size=chunk)
    ref_idx, ref_val = _naive(query, query, list(query), 4, exclude_self=True)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(val, ref_val, rtol=1e-5, atol=1e-6)
    assert not (idx == np.arange(15)[:, None]).any()
    assert rank(query, query, k=20, exclude_self=True)[0].shape == (15, 14)


def test_rank_ties_go_to_the_lower_index():
    q = {"c": np.array([[1.0, 0.0]])}
    g = {"c": np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])}
    idx, val = rank(q, g, k=3)
    assert idx.tolist() == [[1, 3, 0]]
    np.testing.assert_allclose(val, [[1.0, 1.0, 0.0]])


def test_rank_rejects_bad_input():
    query, gallery = _sets()
    with pytest.raises(VestisError, match="no sub-embedding"):
        rank(query, {"color": gallery["color"]}, k=3)
    with pytest.raises(VestisError, match="dimension"):
        rank(query, {**gallery, "fit": gallery["color"]}, k=3)
    with pytest.raises(VestisError, match="k: expected"):
        rank(query, gallery, k=0)
    with pytest.raises(VestisError, match="same set"):
        rank(query, gallery, k=3, exclude_self=True)
    with pytest.raises(VestisError, match="finite"):
        rank({**query, "fit": np.full((9, 4), np.nan)}, gallery, k=3)
    with pytest.raises(VestisError, match="at least one"):
        rank(query, gallery, attributes=[], k=3)
    with pytest.raises(VestisError, match="chunk_size"):
        rank(query, gallery, k=3, chunk_size=0)
