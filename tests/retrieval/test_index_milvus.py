"""The Milvus backend on milvus-lite (the embedded engine) against exact NumPy brute force."""

from __future__ import annotations

import fcntl

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install 'vestis[search]')")
pytest.importorskip("milvus_lite", reason="milvus-lite has no wheel for this platform (pip install milvus-lite)")

from vestis.errors import VestisError
from vestis.retrieval.index import MilvusIndex, create_index, open_index
from vestis.retrieval.index.synthetic import clustered_vectors

LAYOUT = (("colour", 8), ("fit", 8))
DIM = 16
N = 600
CATS = ("Shirts", "Tops", "Jeans")


@pytest.fixture(scope="module")
def data():
    x, codes = clustered_vectors(N + 12, LAYOUT, values=5, noise=0.5, seed=7)
    ids = np.arange(N, dtype=np.int64) * 3 + 2
    category = [CATS[c] for c in codes[:N, 0] % 3]
    return ids, x[:N], x[N:], category


def brute(ids, x, q, k, keep=None):
    if keep is not None:
        ids, x = ids[keep], x[keep]
    s = q @ x.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(s, order, axis=1)


def recall(found, exact):
    return np.mean([len(set(f[f >= 0]) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)])


@pytest.fixture
def index(tmp_path, data):
    ids, x, _, category = data
    fields = {"category": "str", "year": "int"}
    with create_index("milvus", "flat", DIM, path=tmp_path / "items.db", fields=fields) as ix:
        years = [None if i % 4 == 0 else 2000 + i % 20 for i in range(N)]
        ix.add(ids, x, fields={"category": category, "year": years})
        yield ix


def test_flat_is_exact(index, data):
    ids, x, q, _ = data
    got_i, got_s = index.search(q, 10)
    want_i, want_s = brute(ids, x, q, 10)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-5)
    assert len(index) == N and index.info()["kind"] == "flat"


def test_hnsw_recall(tmp_path, data):
    ids, x, q, _ = data
    with MilvusIndex.create("hnsw", DIM, path=tmp_path / "h.db", M=16, ef_construction=64) as ix:
        ix.add(ids, x)
        got, scores = ix.search(q, 10, ef_search=64)
    want, _ = brute(ids, x, q, 10)
    assert recall(got, want) >= 0.95
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_native_filters_and_allow(index, data):
    ids, x, q, category = data
    cat = np.array(category)
    got, _ = index.search(q, 10, expr='category == "Shirts"')
    want, _ = brute(ids, x, q, 10, keep=cat == "Shirts")
    np.testing.assert_array_equal(got, want)
    allow = ids[::7]
    got, _ = index.search(q, 10, allow=allow, expr='category in ["Tops", "Jeans"]')
    keep = np.isin(ids, allow) & (cat != "Shirts")
    want, _ = brute(ids, x, q, 10, keep=keep)
    np.testing.assert_array_equal(got, want)
    assert np.isin(got[got >= 0], ids[keep]).all()
    nulls, _ = index.search(q[:1], 5, expr="year is null")
    assert ((nulls[0] - 2) // 3 % 4 == 0).all()  # rows i with i % 4 == 0 (id 3i + 2) were added without a year
    few, scores = index.search(q[:2], 5, allow=ids[:2])
    assert set(few[0, :2]) == set(ids[:2]) and (few[:, 2:] == -1).all() and np.isneginf(scores[:, 2:]).all()


def test_str_list_fields_filter_with_any_of(tmp_path, data):
    """A multi-valued field (a multi-label attribute) matches an item holding any of the wanted values."""
    from vestis.retrieval.index.milvus_index import any_of

    ids, x, q, _ = data
    tags = [["formal", 'say "hi"'] if i % 3 == 0 else (["casual"] if i % 3 == 1 else []) for i in range(N)]
    tags[5] = None  # null: matches nothing
    with create_index("milvus", "flat", DIM, path=tmp_path / "t.db", fields={"tags": "str_list"}) as ix:
        ix.add(ids, x, fields={"tags": tags})
        for wanted in (["casual"], ['say "hi"'], ["casual", "formal"], ["party"]):
            got, _ = ix.search(q, 10, expr=any_of("tags", wanted))
            keep = np.array([t is not None and bool(set(t) & set(wanted)) for t in tags])
            want = brute(ids, x, q, 10, keep=keep)[0] if keep.any() else np.full((q.shape[0], 10), -1)
            np.testing.assert_array_equal(got, want)
        with pytest.raises(VestisError, match="list of strings"):
            ix.add(np.array([10**6]), x[:1], fields={"tags": ["casual"]})


def test_add_remove_in_place(index, data):
    ids, x, q, _ = data
    first, _ = index.search(q, 3)
    gone = np.unique(first[:, 0])
    assert index.remove(np.concatenate([gone, [10**9]])) == gone.size
    assert len(index) == N - gone.size
    after, _ = index.search(q, 10)
    keep = ~np.isin(ids, gone)
    np.testing.assert_array_equal(after, brute(ids, x, q, 10, keep=keep)[0])
    index.add(gone, x[np.isin(ids, gone)], fields={"category": ["Tops"] * gone.size})
    again, _ = index.search(q, 1)
    np.testing.assert_array_equal(again[:, 0], first[:, 0])
    with pytest.raises(VestisError, match="already in the index"):
        index.add(gone[:1], x[:1])


def test_persists_and_releases_the_folder(tmp_path, data):
    ids, x, q, _ = data
    path = tmp_path / "p.db"
    ix = MilvusIndex.create("hnsw", DIM, path=path, collection="shop", fields={"category": "str"})
    ix.add(ids, x)
    want = ix.search(q, 5)
    ix.save()
    lock = open(path / "LOCK", "rb")  # noqa: SIM115 - held across the close below
    with pytest.raises(BlockingIOError):  # the embedded server holds the data folder while open
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    ix.close()
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released: another process could open it now
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
    with open_index("milvus", path, collection="shop") as back:
        assert (back.kind, back.dim, back.params["M"], back.fields) == ("hnsw", DIM, 32, {"category": "str"})
        assert len(back) == N
        got = back.search(q, 5)
    np.testing.assert_array_equal(got[0], want[0])
    with pytest.raises(VestisError, match="closed"):
        back.search(q, 5)


def test_bad_input_is_a_vestis_error(index, tmp_path, data):
    _, x, q, _ = data
    cases = [
        (lambda: index.search(q, 3, expr="category =="), "search"),
        (lambda: index.search(q, 3, expr="colour == 1"), "search"),
        (lambda: index.add([5000], x[:1], fields={"size": ["M"]}), r"unknown \['size'\]"),
        (lambda: index.add([5000], x[:1], fields={"year": ["soon"]}), "not a int"),
        (lambda: index.add([5000, 5001], x[:2], fields={"category": ["a"]}), "expected 2 values"),
        (lambda: index.search(q, 20_000), "at most 16384"),
        (lambda: MilvusIndex.create("ivfpq", DIM, path=tmp_path / "i.db"), "milvus-lite has no IVF_PQ"),
        (lambda: MilvusIndex.create("flat", DIM, path=tmp_path / "x.txt"), r"must end in \.db"),
        (lambda: MilvusIndex.create("flat", DIM, path=tmp_path / "f.db", fields={"label.colour": "str"}), "field"),
        (lambda: MilvusIndex.create("flat", DIM, path=tmp_path / "f.db", fields={"c": "date"}), "expected one of"),
        (lambda: MilvusIndex.create("hnsw", DIM, path=tmp_path / "f.db", nlist=3), "unknown parameter"),
        (lambda: MilvusIndex.open(tmp_path / "absent.db"), "no milvus-lite index there"),
        (lambda: MilvusIndex.open(index.path, collection="other"), r"no collection 'other'; it has \['vestis'\]"),
        (lambda: MilvusIndex.create("flat", DIM, path=index.path), "already exists"),
    ]
    for call, message in cases:
        with pytest.raises(VestisError, match=message):
            call()
    assert len(index) == N
