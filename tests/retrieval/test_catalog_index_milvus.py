"""The catalog index on the Milvus backend (milvus-lite): native filters, a collection elsewhere, in-place updates."""

from __future__ import annotations

import numpy as np
import pytest

from tests.retrieval.test_catalog_index import csn_setup, idx  # noqa: F401  (fixtures)
from vestis.data.manifest import read_manifest
from vestis.errors import VestisError
from vestis.retrieval.catalog_index import CatalogIndex
from vestis.retrieval.index_build import build_index

pytest.importorskip("faiss", reason="the FAISS backend needs faiss-cpu (pip install 'vestis[search]')")
pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install 'vestis[search]')")
pytest.importorskip("milvus_lite", reason="milvus-lite has no wheel for this platform (pip install milvus-lite)")


def test_milvus_backend_gives_the_faiss_results(csn_setup, idx, tmp_path):  # noqa: F811
    pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install 'vestis[search]')")
    pytest.importorskip("milvus_lite", reason="milvus-lite has no wheel for this platform (pip install milvus-lite)")
    manifest, ckpt, _ = csn_setup
    build_index(ckpt, manifest, tmp_path / "m", backend="milvus", workers=0)
    assert (tmp_path / "m" / "milvus.db").exists()
    with CatalogIndex.open(tmp_path / "m") as mil:
        calls = []
        search = mil.backend.search

        def spy(*a, **kw):
            calls.append(kw)
            return search(*a, **kw)

        mil.backend.search = spy
        occasions = idx.taxonomy["occasion"].values
        for q, where in (
            ("000000", {"category": ["shirt", "sneaker", "t-shirt"]}),
            ("000013", {"category": ["shirt", "sneaker", "t-shirt"]}),
            ("000013", {"occasion": list(occasions[:2])}),  # multi-label: any of the item's values
            ("000007", {"occasion": [occasions[0]], "category": ["shirt", "t-shirt", "dress"]}),
        ):
            got = [h.id for h in mil.search(q, k=8, where=where)]
            assert got == [h.id for h in idx.search(q, k=8, where=where)]
            assert set(got) <= {
                idx.items.ids[r] for r in np.flatnonzero(np.isin(idx.items.keys, idx.allowed_keys(where)))
            }
        # the filter ran inside Milvus, as an expression on the attribute fields, not as an id list
        assert all(kw.get("allow") is None and "array_contains_any(attr_" in kw["expr"] for kw in calls)
        mil.backend.search = search
        assert mil.remove(["000001"]) == 1 and len(mil.backend) == 39
        assert "000001" not in {h.id for h in mil.search("000000", k=39)}
        # added back in place: its attribute fields go in with it, so the native filter finds it again
        m = read_manifest(manifest)
        back = tmp_path / "back.csv"
        rows = [r for r in manifest.read_text().splitlines() if r.split(",")[0] in ("id", "000001")]
        back.write_text("\n".join(rows).replace("images/", f"{m.root}/images/") + "\n")
        assert mil.add(back) == 1 and len(mil.backend) == 40
        where = {"category": [mil.items.value("category", mil.row("000001"))]}
        got = mil.search("000001", k=40, where=where, exclude_query=False)
        assert "000001" in {h.id for h in got}
        assert [h.id for h in got] == [h.id for h in idx.search("000001", k=40, where=where, exclude_query=False)]


def test_a_collection_at_a_milvus_uri(csn_setup, idx, tmp_path, monkeypatch):  # noqa: F811
    """--milvus-uri: the collection lives at the URI (a server's, here another milvus-lite file), not in the index
    folder; two indexes share it under their own collections; a rebuild replaces its collection; credentials come
    from the environment and are never written to the index."""
    from vestis.retrieval.index.milvus_index import MilvusIndex

    manifest, ckpt, _ = csn_setup
    uri = str(tmp_path / "server" / "milvus.db")
    monkeypatch.setenv("VESTIS_MILVUS_TOKEN", "root:s3cret")
    for name in ("shop_a", "shop_b"):
        build_index(ckpt, manifest, tmp_path / name, backend="milvus", milvus_uri=uri, collection=name, workers=0)
        assert not (tmp_path / name / "milvus.db").exists()
        assert "s3cret" not in (tmp_path / name / "index.json").read_text()
    build_index(ckpt, manifest, tmp_path / "shop_a", backend="milvus", milvus_uri=uri, collection="shop_a",
                workers=0, restart=True)  # fmt: skip
    where = {"category": ["shirt", "t-shirt"]}
    for name in ("shop_a", "shop_b"):
        with CatalogIndex.open(tmp_path / name) as mil:
            assert (mil.backend.collection, len(mil.backend)) == (name, len(idx))
            assert [h.id for h in mil.search("000003", k=6, where=where)] == [
                h.id for h in idx.search("000003", k=6, where=where)
            ]
    with MilvusIndex.open(uri, collection="shop_b") as ix:  # someone else's collection on the same server
        ix._live().create_collection("theirs", dimension=4)
    with pytest.raises(VestisError, match="not made by vestis; not replacing it"):
        build_index(ckpt, manifest, tmp_path / "x", backend="milvus", milvus_uri=uri, collection="theirs", workers=0)
    with pytest.raises(VestisError, match="needs backend milvus"):
        build_index(ckpt, manifest, tmp_path / "y", milvus_uri=uri, workers=0)
