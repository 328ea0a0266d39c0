"""FAISS indexes against exact NumPy brute force: exactness, recall bounds, deletes, filters, persistence."""

from __future__ import annotations

import os

import numpy as np
import pytest

faiss = pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install 'vestis[search]')")

from vestis.errors import VestisError  # noqa: E402
from vestis.retrieval.index import INDEXES, FaissIndex, create_index, open_index  # noqa: E402
from vestis.retrieval.index import faiss_index as fi  # noqa: E402
from vestis.retrieval.index.faiss_index import ivfpq_defaults  # noqa: E402
from vestis.retrieval.index.synthetic import clustered_vectors  # noqa: E402

LAYOUT = (("colour", 8), ("fit", 8), ("sleeve", 8), ("neck", 8))
DIM = 32
N = 1500


@pytest.fixture(autouse=True)
def _one_thread():
    # on a few shared cores OpenMP threads spin-waiting on each other make these small cases several times slower
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    x, _ = clustered_vectors(N + 40, LAYOUT, values=6, noise=0.5, seed=3)
    ids = np.arange(N, dtype=np.int64) * 5 + 11  # sparse, not positions: catches id / row mix-ups
    return ids, x[:N], x[N:]  # ids, gallery (N, D), queries (40, D)


def brute(ids, x, q, k, allow=None):
    """Naive exact top-k by inner product over the rows whose id is in ``allow``."""
    keep = np.ones(len(ids), bool) if allow is None else np.isin(ids, allow)
    ids, x = ids[keep], x[keep]
    s = q @ x.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(s, order, axis=1)


def recall(found, exact):
    return np.mean([len(set(f[f >= 0]) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)])


def build(kind, path, ids, x, **params):
    index = create_index("faiss", kind, DIM, path=path, **params)
    index.add(ids, x)
    return index


def test_clustered_vectors_layout():
    x, codes = clustered_vectors(60, LAYOUT, values=[2, 3, 4, 5], seed=1)
    assert x.shape == (60, DIM) and x.dtype == np.float32 and codes.shape == (60, 4)
    norms = np.linalg.norm(x.reshape(60, 4, 8), axis=2)  # (N, T): every sub-embedding is a unit vector
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    assert (codes.min(axis=0) >= 0).all() and (codes.max(axis=0) < [2, 3, 4, 5]).all()
    again, again_codes = clustered_vectors(60, LAYOUT, values=[2, 3, 4, 5], seed=1)
    np.testing.assert_array_equal(x, again)
    np.testing.assert_array_equal(codes, again_codes)
    # items sharing every value are nearer than items sharing none
    x, codes = clustered_vectors(60, LAYOUT, values=2, seed=2)
    same = [(i, j) for i in range(60) for j in range(i) if (codes[i] == codes[j]).all()]
    diff = [(i, j) for i in range(60) for j in range(i) if (codes[i] != codes[j]).all()]
    assert same and diff
    assert min(x[i] @ x[j] for i, j in same) > max(x[i] @ x[j] for i, j in diff)


def test_registry_and_unknown_backend():
    assert {"faiss", "milvus"} <= set(INDEXES)
    with pytest.raises(VestisError, match=r"unknown index backend 'annoy'.*faiss"):
        create_index("annoy", "flat", 4, path="x")


def test_flat_is_exact(tmp_path, data):
    ids, x, q = data
    index = build("flat", tmp_path / "f.faiss", ids, x)
    got_i, got_s = index.search(q, 10)
    want_i, want_s = brute(ids, x, q, 10)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-5)
    assert got_i.dtype == np.int64 and got_s.dtype == np.float32 and len(index) == N


@pytest.mark.parametrize(("kind", "params", "bound"), [("hnsw", {}, 0.95), ("ivfpq", {"nprobe": 16}, 0.65)])
def test_ann_recall_on_clustered_data(tmp_path, data, kind, params, bound):
    ids, x, q = data
    index = build(kind, tmp_path / "a.faiss", ids, x, **params)
    got, scores = index.search(q, 10)
    want, _ = brute(ids, x, q, 10)
    assert recall(got, want) >= bound
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    if kind == "ivfpq":  # scanning every list leaves only the product-quantisation error
        full, _ = index.search(q, 10, nprobe=index.params["nlist"])
        assert recall(full, want) >= recall(got, want) - 1e-9


def test_ivfpq_rerank_from_memory_map(tmp_path, data):
    ids, x, q = data
    rows = np.zeros((int(ids.max()) + 1, DIM), np.float32)
    rows[ids] = x  # row i holds the vector of id i, as a catalog's vectors.npy does
    np.save(tmp_path / "vectors.npy", rows)
    index = build("ivfpq", tmp_path / "q.faiss", ids, x, nprobe=16)
    want, _ = brute(ids, x, q, 10)
    bare, _ = index.search(q, 10)
    index.attach_vectors(np.load(tmp_path / "vectors.npy", mmap_mode="r"), refine=8)
    got, scores = index.search(q, 10)
    assert recall(got, want) >= 0.95 > recall(bare, want)
    # re-ranked scores are the exact inner products of the returned ids
    exact = np.einsum("qd,qkd->qk", q, rows[got])
    np.testing.assert_allclose(scores, exact, rtol=1e-5, atol=1e-5)
    off, _ = index.search(q, 10, refine=0)
    np.testing.assert_array_equal(off, bare)
    with pytest.raises(VestisError, match="holds id 7506"):
        index.attach_vectors(rows[:100])
    with pytest.raises(VestisError, match="only an ivfpq index re-ranks"):
        build("flat", tmp_path / "f.faiss", ids, x).attach_vectors(rows)


def test_ivfpq_defaults_sized_from_n():
    # sqrt(10000)=100 lists (<= 10000 // 39); 448 = 2 * 224 (4-bit fast-scan codes); nprobe 100 // 4
    assert ivfpq_defaults(10_000, 448) == {"nlist": 100, "m": 224, "nbits": 4, "nprobe": 25}
    assert ivfpq_defaults(1_000_000, 448) == {"nlist": 1000, "m": 224, "nbits": 4, "nprobe": 250}
    # 500 vectors: 500 // 39 = 12 lists, nprobe at least 8; dim 30: the largest divisor <= 15 is 15
    assert ivfpq_defaults(500, 30) == {"nlist": 12, "m": 15, "nbits": 4, "nprobe": 8}


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_remove_then_add_in_place(tmp_path, data, kind):
    ids, x, q = data
    index = build(kind, tmp_path / "r.faiss", ids, x, **({"nprobe": 64} if kind == "ivfpq" else {}))
    first, _ = index.search(q, 5)
    gone = np.unique(first[:, 0])  # the current best hits: removing them must change the answers
    assert index.remove(np.concatenate([gone, gone, [10**9]])) == gone.size  # repeats and unknown ids ignored
    assert len(index) == N - gone.size
    after, _ = index.search(q, 10)
    assert not np.isin(after, gone).any()
    keep = ~np.isin(ids, gone)
    want, _ = brute(ids[keep], x[keep], q, 10)
    if kind == "flat":
        np.testing.assert_array_equal(after, want)
    else:  # HNSW filters its tombstones inside the search; IVF-PQ is capped by quantisation (see the recall test)
        assert recall(after, want) >= (0.95 if kind == "hnsw" else 0.6)
    # back in: the removed vectors are found again (for HNSW this goes through a rebuild of the graph)
    index.add(gone, x[np.isin(ids, gone)])
    assert len(index) == N
    again, _ = index.search(q, 1)
    if kind != "ivfpq":
        np.testing.assert_array_equal(again[:, 0], first[:, 0])
    assert index.info()["tombstones"] == 0


def test_hnsw_tombstones_and_rebuild(tmp_path, data):
    ids, x, q = data
    index = build("hnsw", tmp_path / "h.faiss", ids, x)
    dead = ids[::3]
    index.remove(dead)
    assert index.info()["tombstones"] == dead.size
    before, _ = index.search(q, 10)
    assert not np.isin(before, dead).any() and (before >= 0).all()  # filtered inside the search: rows stay full
    dead = np.union1d(dead, before[:, 0])  # more removals after a search: the tombstone filter must follow them
    index.remove(before[:, 0])
    before, _ = index.search(q, 10)
    assert not np.isin(before, dead).any()
    index.rebuild()
    assert index.info()["tombstones"] == 0 and len(index) == N - dead.size
    assert index._index.ntotal == N - dead.size  # the graph itself no longer holds them
    after, _ = index.search(q, 10)
    keep = ~np.isin(ids, dead)
    want, _ = brute(ids[keep], x[keep], q, 10)
    assert recall(after, want) >= 0.95 and recall(before, want) >= 0.95


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
@pytest.mark.parametrize("selective", [True, False])
def test_allow_prefilter(tmp_path, data, kind, selective, monkeypatch):
    ids, x, q = data
    if not selective:
        monkeypatch.setattr(fi, "_EXACT_ALLOW", 0)  # HNSW: the in-graph selector rather than the exact scan
    index = build(kind, tmp_path / "p.faiss", ids, x, **({"nprobe": 64} if kind == "ivfpq" else {}))
    rng = np.random.default_rng(1)
    allow = rng.choice(ids, size=40 if selective else 700, replace=False)
    index.remove(allow[:5])  # removed ids must not come back through the allow list
    got, scores = index.search(q, 10, allow=np.concatenate([allow, allow[:3], [10**9]]))
    live = allow[5:]
    assert np.isin(got[got >= 0], live).all()
    want, want_s = brute(ids, x, q, 10, allow=live)
    if kind == "flat" or (kind == "hnsw" and selective):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(scores, want_s, rtol=1e-5, atol=1e-5)
    else:
        assert recall(got, want) >= (0.9 if kind == "hnsw" else 0.6)


def test_allow_smaller_than_k_pads(tmp_path, data):
    ids, x, q = data
    index = build("flat", tmp_path / "s.faiss", ids, x)
    got, scores = index.search(q[:2], 5, allow=ids[:3])
    assert (got[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    assert set(got[0, :3]) == set(ids[:3])
    none, _ = index.search(q[:2], 5, allow=np.array([10**9]))
    assert (none == -1).all()
    empty = create_index("faiss", "hnsw", DIM, path=tmp_path / "e.faiss")
    e_ids, e_scores = empty.search(q[:2], 3)
    assert e_ids.shape == (2, 3) and (e_ids == -1).all() and np.isneginf(e_scores).all()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_save_open_round_trip(tmp_path, data, kind):
    ids, x, q = data
    path = tmp_path / "idx" / "vectors.faiss"
    index = build(kind, path, ids, x)
    index.remove(ids[:7])
    want = index.search(q, 10)
    index.save()
    back = open_index("faiss", path)
    assert isinstance(back, FaissIndex) and back.kind == kind and back.dim == DIM and len(back) == N - 7
    assert back.params == index.params and back.info()["tombstones"] == index.info()["tombstones"]
    got = back.search(q, 10)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # not left with mkstemp's private mode


def test_untrained_ivfpq_round_trip(tmp_path, data):
    ids, x, _ = data
    path = tmp_path / "u.faiss"
    create_index("faiss", "ivfpq", DIM, path=path, nlist=8).save()
    back = open_index("faiss", path)
    assert len(back) == 0 and back.params == {"nlist": 8}
    back.add(ids, x)
    assert len(back) == N and back.params["nlist"] == 8 and back.params["m"] == 16


def test_crash_during_save_keeps_the_old_index(tmp_path, data, monkeypatch):
    ids, x, q = data
    path = tmp_path / "c.faiss"
    index = build("hnsw", path, ids[:500], x[:500])
    index.save()
    old_bytes = path.read_bytes()
    index.add(ids[500:], x[500:])

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        index.save()
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.faiss"]  # no temporary file left behind
    back = open_index("faiss", path)
    assert len(back) == 500
    got, _ = back.search(q, 5)
    assert np.isin(got, ids[:500]).all()


def test_damaged_and_foreign_files(tmp_path, data):
    ids, x, _ = data
    path = tmp_path / "d.faiss"
    build("flat", path, ids, x).save()
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(VestisError, match="damaged"):
        open_index("faiss", path)
    path.write_bytes(b"PK\x03\x04 not an index at all")
    with pytest.raises(VestisError, match="no vestis header"):
        open_index("faiss", path)
    with pytest.raises(VestisError, match=r"missing\.faiss: expected a vestis FAISS index"):
        open_index("faiss", tmp_path / "missing.faiss")


def test_bad_input_is_a_vestis_error(tmp_path, data):
    ids, x, q = data
    index = build("flat", tmp_path / "b.faiss", ids[:10], x[:10])
    cases = [
        (lambda: index.add([1, 1], x[:2]), "distinct ids"),
        (lambda: index.add([-3], x[:1]), "non-negative"),
        (lambda: index.add([1.5], x[:1]), "integer ids"),
        (lambda: index.add([1, 2], x[:2, :5]), r"\(rows, 32\)"),
        (lambda: index.add([1, 2], x[:3]), "expected 2 rows"),
        (lambda: index.add([1], np.full((1, DIM), np.nan)), "finite"),
        (lambda: index.add(ids[:2], x[:2]), r"already in the index: \[11, 16\]"),
        (lambda: index.search(q, 0), "k: expected an integer >= 1"),
        (lambda: index.search(q[:, :4], 3), "queries"),
        (lambda: index.search(q, 3, allow=[0.5]), "allow: expected integer ids"),
        (lambda: create_index("faiss", "lsh", DIM, path="x"), "expected one of flat, hnsw, ivfpq"),
        (lambda: create_index("faiss", "hnsw", DIM, path="x", nlist=4), r"unknown parameter\(s\) \['nlist'\]"),
        (lambda: create_index("faiss", "hnsw", DIM, path="x", M=0), "M expected a positive integer"),
        (lambda: create_index("faiss", "ivfpq", DIM, path="x", m=5), "m=5 must divide the dimension 32"),
        (lambda: create_index("faiss", "flat", 0, path="x"), "dim: expected a positive integer"),
        (lambda: create_index("faiss", "ivfpq", DIM, path="x", nlist=64).add(ids[:20], x[:20]), "at least 64 vec"),
        (lambda: create_index("faiss", "ivfpq", DIM, path="x", nbits=8).add(ids[:99], x[:99]), "at least 256 vec"),
    ]
    for call, message in cases:
        with pytest.raises(VestisError, match=message):
            call()
    assert len(index) == 10  # nothing half-applied
