"""Retrieval metrics against naive Python loops and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vestis.errors import VestisError
from vestis.eval.retrieval import (
    ManipulationQuery,
    manipulation_queries,
    mean_average_precision,
    multi_manipulation_queries,
    ndcg_at_k,
    ndcg_scores,
    recall_at_k,
    stack_codes,
    topk_hits,
    topk_retrieval_accuracy,
    triplet_accuracy,
)


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _random_set(seed: int, n: int = 40, d: int = 4):
    rng = np.random.default_rng(seed)
    emb = {"color": _unit(rng, n, d), "sleeve": _unit(rng, n, d + 1)}
    codes = {"color": rng.integers(-1, 3, size=n), "sleeve": rng.integers(-1, 4, size=n)}
    return emb, codes


# --- naive references ---------------------------------------------------------------------------------------


def _naive_order(scores: list[float], rel: list[float]) -> list[int]:
    """Best first; ties: less relevant first, then lower index ("ties count wrong")."""
    return sorted(range(len(scores)), key=lambda j: (-scores[j], rel[j], j))


def _naive_condition(q_emb, q_codes, g_emb, g_codes, same):
    """For each labelled query: (scores, relevance) over the labelled gallery rows, itself left out if same."""
    out = []
    for i in range(len(q_codes)):
        if q_codes[i] < 0:
            continue
        scores, rel = [], []
        for j in range(len(g_codes)):
            if g_codes[j] < 0 or (same and i == j):
                continue
            scores.append(float(sum(a * b for a, b in zip(q_emb[i], g_emb[j], strict=True))))
            rel.append(1.0 if g_codes[j] == q_codes[i] else 0.0)
        out.append((scores, rel))
    return out


def _naive_recall(q_emb, q_codes, g_emb, g_codes, k, same):
    res = _naive_condition(q_emb, q_codes, g_emb, g_codes, same)
    hits = [any(rel[j] for j in _naive_order(s, rel)[:k]) for s, rel in res]
    return sum(hits) / len(hits)


def _naive_ap(q_emb, q_codes, g_emb, g_codes, same):
    aps = []
    for s, rel in _naive_condition(q_emb, q_codes, g_emb, g_codes, same):
        ranked = [rel[j] for j in _naive_order(s, rel)]
        found, total = 0, 0.0
        for pos, r in enumerate(ranked, 1):
            if r:
                found += 1
                total += found / pos
        aps.append(total / found if found else 0.0)
    return aps


def _naive_vectors(q, g, targets, labels, k, exclude_self, ignore_missing):
    """Per query: (hit, ndcg) by the papers' loops (L2 distance, ties count wrong)."""
    hits, ndcgs = [], []
    for i in range(len(q)):
        dist, rel, full = [], [], []
        for j in range(len(g)):
            if exclude_self and i == j:
                continue
            dist.append(float(sum((a - b) ** 2 for a, b in zip(q[i], g[j], strict=True))))
            cols = [c for c in range(targets.shape[1]) if not (ignore_missing and targets[i, c] < 0)]
            eq = [labels[j, c] == targets[i, c] for c in cols]
            rel.append(sum(eq) / len(cols))
            full.append(all(eq))
        order = sorted(range(len(dist)), key=lambda j: (dist[j], rel[j], j))[:k]
        hits.append(any(full[j] for j in order))
        dcg = sum((2 ** rel[j] - 1) / math.log(pos + 1) for pos, j in enumerate(order, 1))
        idcg = sum(1 / math.log(pos + 1) for pos in range(1, len(order) + 1))
        ndcgs.append(dcg / idcg)
    return np.array(hits), np.array(ndcgs)


# --- triplet accuracy ---------------------------------------------------------------------------------------


def test_triplet_accuracy_hand_case_ties_count_wrong():
    e = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.6, 0.8]])
    emb = {"color": e, "sleeve": e}
    # color: (0,1,2) s_ap 0.6 > s_an 0 -> ok; (0,1,3) tie 0.6 = 0.6 -> wrong; sleeve: (2,1,0) 0.8 > 0 -> ok
    out = triplet_accuracy(emb, {"color": np.array([[0, 1, 2], [0, 1, 3]]), "sleeve": np.array([[2, 1, 0]])})
    assert out == {"overall": pytest.approx(2 / 3), "color": 0.5, "sleeve": 1.0}


def test_triplet_accuracy_matches_naive_loop():
    emb, _ = _random_set(0)
    rng = np.random.default_rng(1)
    trips = {a: rng.integers(0, 40, size=(25, 3)) for a in emb}
    out = triplet_accuracy(emb, trips)
    wins = 0
    for a, t in trips.items():
        ok = [float(emb[a][x] @ emb[a][p]) > float(emb[a][x] @ emb[a][n]) for x, p, n in t]
        assert out[a] == pytest.approx(sum(ok) / len(ok))
        wins += sum(ok)
    assert out["overall"] == pytest.approx(wins / 50)


def test_triplet_accuracy_rejects_bad_input():
    emb, _ = _random_set(0)
    with pytest.raises(VestisError, match="row indices"):
        triplet_accuracy(emb, {"color": np.array([[0, 1, 40]])})
    with pytest.raises(VestisError, match="no embeddings"):
        triplet_accuracy(emb, {"fit": np.array([[0, 1, 2]])})
    bad = {"color": np.full((3, 2), np.nan)}
    with pytest.raises(VestisError, match="finite"):
        triplet_accuracy(bad, {"color": np.array([[0, 1, 2]])})
    assert math.isnan(triplet_accuracy(emb, {"color": np.zeros((0, 3), dtype=np.int64)})["overall"])


# --- R@K and mAP ----------------------------------------------------------------------------------------------


def test_recall_at_k_hand_case_self_excluded_and_ties():
    e = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    codes = np.array([0, 1, 0, 1])
    out = recall_at_k({"c": e}, {"c": codes}, ks=(1, 2))
    # row 0: rows 1 and 2 tie at 1.0; the non-match (1) goes first -> miss at K=1, hit at K=2.
    # row 1: ties 0 and 2 are non-matches, row 3 (its match) scores 0 -> rank 3: miss at 1 and 2.
    # row 2: like row 0. row 3: all score 0, non-matches 0 and 2 first -> rank 3: misses.
    assert out["c"] == {1: 0.0, 2: 0.5}
    assert out["overall"] == {1: 0.0, 2: 0.5}
    # without self-exclusion the query ties with its non-matches (ties count wrong); only row 3 finds itself
    assert recall_at_k({"c": e}, {"c": codes}, ks=(1,), exclude_self=False)["c"][1] == 0.25


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_at_k_matches_naive_loop(seed):
    emb, codes = _random_set(seed)
    out = recall_at_k(emb, codes, ks=(1, 5, 10))
    n_all, pooled = 0, {1: 0.0, 5: 0.0, 10: 0.0}
    for a in emb:
        n_q = int((codes[a] >= 0).sum())
        for k in (1, 5, 10):
            ref = _naive_recall(emb[a], codes[a], emb[a], codes[a], k, True)
            assert out[a][k] == pytest.approx(ref)
            pooled[k] += ref * n_q
        n_all += n_q
    assert out["overall"] == pytest.approx({k: v / n_all for k, v in pooled.items()})


def test_recall_at_k_separate_gallery_matches_naive_loop():
    emb, codes = _random_set(3, n=15)
    g_emb, g_codes = _random_set(4, n=30)
    out = recall_at_k(emb, codes, ks=(5,), gallery=(g_emb, g_codes))
    for a in emb:
        assert out[a][5] == pytest.approx(_naive_recall(emb[a], codes[a], g_emb[a], g_codes[a], 5, False))


def test_recall_at_k_chunked_equals_one_block(monkeypatch):
    import vestis.eval._retrieval_core as mod

    emb, codes = _random_set(5, n=60)
    whole = recall_at_k(emb, codes)
    monkeypatch.setattr(mod, "CHUNK_ELEMENTS", 7)  # one query row per block
    assert recall_at_k(emb, codes) == whole


def test_mean_average_precision_hand_case():
    e = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    codes = np.array([0, 1, 0, 1])
    out = mean_average_precision({"c": e}, {"c": codes})
    # q0: ranks 1 (0.8, miss), 2 (0.6, hit), 3 (0, miss) -> AP 1/2
    # q1: 0 (0.8 miss), 2 (0.96 miss), 3 (0.6 hit): order 2, 0, 3 -> AP 1/3
    # q2: 1 (0.96 miss), 0 (0.6 hit), 3 (0.8 miss): order 1, 3, 0 -> AP 1/3
    # q3: 2 (0.8 miss), 1 (0.6 hit), 0 (0 miss) -> AP 1/2
    assert out["c"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 3 + 1 / 2) / 4)
    assert out["overall"] == pytest.approx(out["c"])


@pytest.mark.parametrize("seed", [0, 1])
def test_mean_average_precision_matches_naive_loop(seed):
    emb, codes = _random_set(seed)
    # quantised embeddings create exact ties, which count against the model
    emb = {a: np.round(e * 2) / 2 for a, e in emb.items()}
    out = mean_average_precision(emb, codes)
    all_aps = []
    for a in emb:
        aps = _naive_ap(emb[a], codes[a], emb[a], codes[a], True)
        assert out[a] == pytest.approx(np.mean(aps))
        all_aps += aps
    assert out["overall"] == pytest.approx(np.mean(all_aps))
    g_emb, g_codes = _random_set(seed + 10, n=25)
    sep = mean_average_precision(emb, codes, gallery=(g_emb, g_codes))
    for a in emb:
        assert sep[a] == pytest.approx(np.mean(_naive_ap(emb[a], codes[a], g_emb[a], g_codes[a], False)))


def test_a_collapsed_model_scores_worst():
    codes = {"c": np.array([0, 0, 1, 1, 2, 2])}
    emb = {"c": np.tile([[1.0, 0.0]], (6, 1))}
    assert recall_at_k(emb, codes, ks=(1, 4))["c"] == {1: 0.0, 4: 0.0}
    # each query's one relevant row comes after the 4 tied non-matches
    assert mean_average_precision(emb, codes)["c"] == pytest.approx(1 / 5)


def test_condition_metrics_reject_bad_input():
    emb, codes = _random_set(0)
    with pytest.raises(VestisError, match="no codes"):
        recall_at_k(emb, {"color": codes["color"]})
    with pytest.raises(VestisError, match="reserved"):
        recall_at_k({"overall": emb["color"]}, {"overall": codes["color"]})
    with pytest.raises(VestisError, match="cut-offs"):
        recall_at_k(emb, codes, ks=(0,))
    with pytest.raises(VestisError, match="same set"):
        mean_average_precision(emb, codes, gallery=_random_set(1, n=10), exclude_self=True)
    with pytest.raises(VestisError, match="integer codes"):
        mean_average_precision(emb, {a: c.astype(float) for a, c in codes.items()})
    with pytest.raises(VestisError, match="a pair"):
        recall_at_k(emb, codes, gallery=emb)


# --- whole-vector protocols -----------------------------------------------------------------------------------


def _vector_case(seed: int, q: int = 12, g: int = 30, t: int = 3):
    rng = np.random.default_rng(seed)
    qv, gv = _unit(rng, q, 5), _unit(rng, g, 5)
    labels = rng.integers(-1, 2, size=(g, t))
    targets = rng.integers(-1, 2, size=(q, t))
    return qv, gv, targets, labels


@pytest.mark.parametrize("ignore_missing", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_and_ndcg_match_naive_loops(seed, ignore_missing):
    qv, gv, targets, labels = _vector_case(seed)
    if ignore_missing:
        targets[targets[:, 0] < 0, 0] = 0  # every target keeps one labelled attribute
    for k in (1, 5, 30, 100):
        hits, ndcg = _naive_vectors(qv, gv, targets, labels, k, False, ignore_missing)
        got = topk_hits(qv, gv, targets, labels, k, ignore_missing=ignore_missing)
        np.testing.assert_array_equal(got, hits)
        np.testing.assert_allclose(ndcg_scores(qv, gv, targets, labels, k, ignore_missing=ignore_missing), ndcg)
        acc = topk_retrieval_accuracy(qv, gv, targets, labels, k, ignore_missing=ignore_missing)
        assert acc == pytest.approx(hits.mean())
        assert ndcg_at_k(qv, gv, targets, labels, k, ignore_missing=ignore_missing) == pytest.approx(ndcg.mean())


def test_topk_and_ndcg_self_excluded_and_attribute_subset():
    rng = np.random.default_rng(7)
    v = _unit(rng, 25, 4)
    labels = rng.integers(0, 3, size=(25, 3))
    hits, ndcg = _naive_vectors(v, v, labels, labels, 5, True, False)
    np.testing.assert_array_equal(topk_hits(v, v, labels, labels, 5, exclude_self=True), hits)
    np.testing.assert_allclose(ndcg_scores(v, v, labels, labels, 5, exclude_self=True), ndcg)
    # without exclusion each query retrieves itself first: every query succeeds
    assert topk_retrieval_accuracy(v, v, labels, labels, 1) == 1.0
    sub_hits, sub_ndcg = _naive_vectors(v, v, labels[:, [0, 2]], labels[:, [0, 2]], 5, True, False)
    np.testing.assert_array_equal(topk_hits(v, v, labels, labels, 5, [0, 2], exclude_self=True), sub_hits)
    np.testing.assert_allclose(ndcg_scores(v, v, labels, labels, 5, [0, 2], exclude_self=True), sub_ndcg)


def test_topk_and_ndcg_hand_case():
    q = np.array([[1.0, 0.0]])
    g = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    target = np.array([[0, 1]])
    labels = np.array([[0, 0], [0, 1], [1, 1]])  # relevance 1/2, 1, 1/2
    assert topk_hits(q, g, target, labels, 1).tolist() == [False]
    assert topk_hits(q, g, target, labels, 2).tolist() == [True]
    # NDCG@2: gains (2^0.5 - 1) / log2(2) + (2^1 - 1) / log2(3); ideal 1 + 1 / log2(3)
    expected = ((2**0.5 - 1) + 1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(q, g, target, labels, 2) == pytest.approx(expected)
    # a missing target value matches only a missing gallery value unless it is ignored
    assert topk_hits(q, g, np.array([[-1, 1]]), labels, 3).tolist() == [False]
    assert topk_hits(q, g, np.array([[-1, 1]]), labels, 1, ignore_missing=True).tolist() == [False]
    assert topk_hits(q, g, np.array([[-1, 1]]), labels, 2, ignore_missing=True).tolist() == [True]


def test_topk_ties_count_wrong():
    q = np.array([[1.0, 0.0]])
    g = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])  # every row at the same distance
    labels = np.array([[1], [1], [0]])
    assert topk_hits(q, g, np.array([[0]]), labels, 2).tolist() == [False]
    assert topk_hits(q, g, np.array([[0]]), labels, 3).tolist() == [True]
    assert ndcg_at_k(q, g, np.array([[0]]), labels, 1) == 0.0


def test_topk_chunked_equals_one_block(monkeypatch):
    import vestis.eval._retrieval_core as mod

    qv, gv, targets, labels = _vector_case(4, q=20)
    whole = (topk_hits(qv, gv, targets, labels, 5), ndcg_scores(qv, gv, targets, labels, 5))
    monkeypatch.setattr(mod, "CHUNK_ELEMENTS", 1)
    np.testing.assert_array_equal(topk_hits(qv, gv, targets, labels, 5), whole[0])
    np.testing.assert_allclose(ndcg_scores(qv, gv, targets, labels, 5), whole[1])


def test_vector_metrics_reject_bad_input():
    qv, gv, targets, labels = _vector_case(0)
    with pytest.raises(VestisError, match="dimension"):
        topk_retrieval_accuracy(qv, gv[:, :3], targets, labels)
    with pytest.raises(VestisError, match="labels"):
        topk_retrieval_accuracy(qv, gv, targets[:, :2], labels)
    with pytest.raises(VestisError, match="column indices"):
        ndcg_at_k(qv, gv, targets, labels, attributes=[3])
    with pytest.raises(VestisError, match="no labelled attribute"):
        ndcg_at_k(qv, gv, np.full_like(targets, -1), labels, ignore_missing=True)
    with pytest.raises(VestisError, match="finite"):
        topk_retrieval_accuracy(np.full_like(qv, np.inf), gv, targets, labels)
    with pytest.raises(VestisError, match="cut-off"):
        topk_retrieval_accuracy(qv, gv, targets, labels, k=0)


# --- the manipulation query list ------------------------------------------------------------------------------


def test_manipulation_queries_hand_case():
    codes = np.array([[0, 0], [1, 1], [0, -1]])
    gallery = np.array([[0, 1], [1, 1], [2, 0], [0, -1], [1, -1]])
    out = manipulation_queries(codes, gallery, seed=0, per_query=10)
    got = [(m.query, m.attribute, m.value, m.target.tolist()) for m in out]
    # row 0 (0, 0): (0,1) exists [col 1 -> 1]; (1,0),(2,0): (2,0) exists [col 0 -> 2]
    # row 1 (1, 1): (0,1) exists [col 0 -> 0]; (1,0) absent
    # row 2 (0, -1): (1,-1) exists [col 0 -> 1]; col 1 unlabelled in the query: never manipulated
    assert got == [
        (0, 0, 2, [2, 0]),
        (0, 1, 1, [0, 1]),
        (1, 0, 0, [0, 1]),
        (2, 0, 1, [1, -1]),
    ]
    assert all(isinstance(m, ManipulationQuery) for m in out)
    only_col1 = manipulation_queries(codes, gallery, attributes=[1], seed=0, per_query=10)
    assert [(m.query, m.attribute, m.value) for m in only_col1] == [(0, 1, 1)]
    # ignoring missing values, (2, -1) -> (1, *) finds (1, 1) and (1, -1); (0,0) -> (2,0) still
    loose = manipulation_queries(codes, gallery, seed=0, per_query=10, ignore_missing=True)
    assert (2, 0, 2) in [(m.query, m.attribute, m.value) for m in loose]


@pytest.mark.parametrize("ignore_missing", [False, True])
def test_manipulation_queries_keep_only_existing_targets(ignore_missing):
    rng = np.random.default_rng(3)
    codes = rng.integers(-1, 3, size=(30, 3))
    gallery = rng.integers(-1, 3, size=(50, 3))
    out = manipulation_queries(codes, gallery, seed=1, per_query=50, ignore_missing=ignore_missing)

    def matches(target, row):
        cols = [c for c in range(3) if not (ignore_missing and target[c] < 0)]
        return all(row[c] == target[c] for c in cols)

    expected = set()
    for i, row in enumerate(codes):
        for t in range(3):
            if row[t] < 0:
                continue
            for v in range(3):
                if v == row[t]:
                    continue
                target = row.copy()
                target[t] = v
                if any(matches(target, g) for g in gallery):
                    expected.add((i, t, v))
    assert {(m.query, m.attribute, m.value) for m in out} == expected
    assert len(expected) > 10
    for m in out:
        assert m.target[m.attribute] == m.value and m.target[m.attribute] != codes[m.query, m.attribute]
        assert (np.delete(m.target, m.attribute) == np.delete(codes[m.query], m.attribute)).all()
    # every listed query can succeed: its target is retrievable at k = gallery size
    q = np.zeros((len(out), 2))
    g = np.zeros((50, 2))
    targets = np.stack([m.target for m in out])
    assert topk_hits(q, g, targets, gallery, 50, ignore_missing=ignore_missing).all()


def test_manipulation_queries_per_query_is_seeded_sample():
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 3, size=(20, 3))
    gallery = rng.integers(0, 3, size=(60, 3))
    full = {(m.query, m.attribute, m.value) for m in manipulation_queries(codes, gallery, seed=0, per_query=99)}
    one = manipulation_queries(codes, gallery, seed=5, per_query=1)
    assert len({m.query for m in one}) == len(one) == len({q for q, _, _ in full})
    assert {(m.query, m.attribute, m.value) for m in one} <= full
    again = manipulation_queries(codes, gallery, seed=5, per_query=1)
    assert [(m.query, m.attribute, m.value) for m in again] == [(m.query, m.attribute, m.value) for m in one]
    with pytest.raises(VestisError, match="per_query"):
        manipulation_queries(codes, gallery, seed=0, per_query=0)
    with pytest.raises(VestisError, match="columns"):
        manipulation_queries(codes, gallery[:, :2], seed=0)


@pytest.mark.parametrize("ignore_missing", [False, True])
def test_multi_manipulation_queries_match_naive_enumeration(ignore_missing):
    import itertools

    rng = np.random.default_rng(6)
    codes = rng.integers(-1, 3, size=(25, 4))
    gallery = rng.integers(-1, 3, size=(80, 4))
    out = multi_manipulation_queries(codes, gallery, 2, [0, 1, 3], seed=2, per_query=99, ignore_missing=ignore_missing)

    def matches(target, row):
        return all(row[c] == target[c] for c in range(4) if not (ignore_missing and target[c] < 0))

    expected = set()
    for i, row in enumerate(codes):
        for cols in itertools.combinations([0, 1, 3], 2):
            if any(row[c] < 0 for c in cols):
                continue
            for vals in itertools.product(*[[v for v in range(3) if v != row[c]] for c in cols]):
                target = row.copy()
                target[list(cols)] = vals
                if any(matches(target, g) for g in gallery):
                    expected.add((i, cols, vals))
    got = [(m.query, m.attributes, m.values) for m in out]
    assert set(got) == expected and len(got) == len(expected) > 5
    assert got == sorted(got)
    for m in out:
        assert (m.target[list(m.attributes)] == m.values).all()
    # one change at a time is the single-manipulation list
    single = manipulation_queries(codes, gallery, seed=3, per_query=99, ignore_missing=ignore_missing)
    multi = multi_manipulation_queries(codes, gallery, 1, seed=3, per_query=99, ignore_missing=ignore_missing)
    assert [(m.query, (m.attribute,), (m.value,)) for m in single] == [(m.query, m.attributes, m.values) for m in multi]
    with pytest.raises(VestisError, match="changes"):
        multi_manipulation_queries(codes, gallery, 0, seed=0)


def test_stack_codes():
    codes = {"a": np.array([0, -1]), "b": np.array([2, 1])}
    np.testing.assert_array_equal(stack_codes(codes), [[0, 2], [-1, 1]])
    np.testing.assert_array_equal(stack_codes(codes, ["b"]), [[2], [1]])
    with pytest.raises(VestisError, match="no codes"):
        stack_codes(codes, ["c"])
