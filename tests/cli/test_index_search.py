"""`vestis index` and `vestis search`: the library's results through the CLI, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import vestis.cli
from tests.retrieval.test_catalog_index import csn_setup  # noqa: F401  (a fixture)
from vestis.retrieval.catalog_index import CatalogIndex

pytest.importorskip("faiss", reason="the FAISS backend needs faiss-cpu (pip install 'vestis[search]')")
runner = CliRunner()


def _search(*args: str):
    return runner.invoke(vestis.cli.app, ["search", *args])


def test_index_then_search_as_json_equals_the_library(csn_setup, tmp_path):  # noqa: F811
    manifest, ckpt, _ = csn_setup
    out = tmp_path / "index"
    res = runner.invoke(
        vestis.cli.app,
        ["index", str(ckpt), str(manifest), "--out", str(out), "--index-type", "hnsw", "-w", "0", "--no-progress"],
    )
    assert res.exit_code == 0, res.output
    assert f"indexed 40 items (faiss hnsw) in {out}" in res.stdout
    args = ["--id", "000009", "--set", "colour=black", "--only", "colour,category", "--where", "category=shirt|t-shirt"]
    res = _search(str(out), *args, "--k", "5", "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    with CatalogIndex.open(out) as idx:
        want = idx.search(
            "000009",
            set={"colour": "black"},
            only=["colour", "category"],
            where={"category": ["shirt", "t-shirt"]},
            k=5,
        )
    assert [h["id"] for h in got] == [h.id for h in want] and got
    assert got[0]["per_attribute"] == pytest.approx(want[0].per_attribute) and set(got[0]["per_attribute"]) == {
        "colour",
        "category",
    }
    assert all(h["attributes"]["category"] in ("shirt", "t-shirt") for h in got)
    # a rerun on a complete index is refused in one line; --restart rebuilds it
    res = runner.invoke(vestis.cli.app, ["index", str(ckpt), str(manifest), "--out", str(out), "-w", "0"])
    assert res.exit_code == 1 and "already holds a complete index; pass --restart" in res.output
    assert "Traceback" not in res.output


def test_search_by_image_prints_a_table(csn_setup):  # noqa: F811
    manifest, _, index = csn_setup
    res = _search(str(index), "--image", str(manifest.parent / "images" / "000003.jpg"), "--k", "3")
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stdout.splitlines() if "000" in ln]
    assert len(lines) == 3 and "000003" in lines[0] and "0.000" in lines[0]  # the image itself, distance 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--id", "000001", "--image", "x.jpg"], "expected exactly one query: --image FILE or --id ID"),
        ([], "expected exactly one query"),
        (["--id", "nope"], "id 'nope': not in the index; known ids include 000000"),
        (["--id", "000001", "--set", "colour"], "--set 'colour': expected ATTRIBUTE=VALUE"),
        (["--id", "000001", "--set", "colour=red|blue"], "--set colour: expected one value"),
        (["--id", "000001", "--set", "hue=red"], "set: unknown attribute 'hue'; expected one of category"),
        (["--id", "000001", "--where", "category=boots"], "category='boots' is not a value of category"),
        (["--id", "000001", "--only", "colour,hat"], "only: unknown attribute 'hat'"),
        (["--image", "missing.jpg"], "missing.jpg"),
    ],
)
def test_bad_searches_are_one_line_errors(csn_setup, args, message):  # noqa: F811
    res = _search(str(csn_setup[2]), *args)
    assert res.exit_code == 1, res.output
    assert message in res.output and "Traceback" not in res.output
    assert res.output.strip().startswith("error:")


def test_bad_index_arguments(csn_setup, tmp_path):  # noqa: F811
    manifest, ckpt, _ = csn_setup
    res = _search(str(tmp_path), "--id", "1")
    assert res.exit_code == 1 and "not a vestis catalog index (no index.json)" in res.output
    res = runner.invoke(
        vestis.cli.app, ["index", str(ckpt), str(manifest), "--out", str(tmp_path / "i"), "--backend", "x"]
    )
    assert res.exit_code == 1 and "backend: expected one of ['faiss', 'milvus']" in res.output
    res = runner.invoke(vestis.cli.app, ["index", str(ckpt), str(tmp_path / "none"), "--out", str(tmp_path / "i")])
    assert res.exit_code == 1 and "no such folder, manifest or image" in res.output


def test_ivfpq_with_parameters_finds_the_exact_neighbours(csn_setup, tmp_path):  # noqa: F811
    """IVF-PQ codes rank the candidates, the stored vectors re-rank them: recall@10 against the flat index."""
    manifest, ckpt, flat = csn_setup
    out = tmp_path / "pq"
    params = ["--param", "nlist=2", "--param", "m=40", "--param", "nbits=4", "--param", "nprobe=2"]
    res = runner.invoke(vestis.cli.app, ["index", str(ckpt), str(manifest), "--out", str(out), "--index-type", "ivfpq",
                                         *params, "-w", "0", "--no-progress"])  # fmt: skip
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "index.json").read_text())
    assert meta["backend"]["kind"] == "ivfpq" and meta["backend"]["params"]["nlist"] == 2
    with CatalogIndex.open(out) as pq, CatalogIndex.open(flat) as exact:
        recall = []
        for q in exact.items.ids[:10]:
            want = {h.id for h in exact.search(q, k=10)}
            got = pq.search(q, k=10)
            recall.append(len(want & {h.id for h in got}) / 10)
            qv = np.asarray(exact.vectors[exact.row(q)])
            for h in got:  # scores are the exact inner products, whatever the codes
                assert h.score == pytest.approx(float(np.asarray(exact.vectors[exact.row(h.id)]) @ qv), abs=1e-4)
        assert np.mean(recall) >= 0.8, recall
    res = runner.invoke(vestis.cli.app, ["index", str(ckpt), str(manifest), "--out", str(out), "--param", "nlist"])
    assert res.exit_code == 1 and "--param 'nlist': expected KEY=N with a whole number N" in res.output


def test_index_into_a_milvus_uri_and_search_it(csn_setup, tmp_path, monkeypatch):  # noqa: F811
    """--milvus-uri / --collection (a server's URI in production; another milvus-lite file here)."""
    pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install 'vestis[search]')")
    pytest.importorskip("milvus_lite", reason="milvus-lite has no wheel for this platform (pip install milvus-lite)")
    manifest, ckpt, faiss_index = csn_setup
    monkeypatch.setenv("VESTIS_MILVUS_TOKEN", "root:s3cret")
    out, uri = tmp_path / "index", str(tmp_path / "server" / "milvus.db")
    res = runner.invoke(
        vestis.cli.app,
        ["index", str(ckpt), str(manifest), "--out", str(out), "--backend", "milvus", "--milvus-uri", uri,
         "--collection", "shop", "-w", "0", "--no-progress"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "index.json").read_text())
    assert (meta["backend"]["uri"], meta["backend"]["collection"]) == (uri, "shop") and "s3cret" not in str(meta)
    res = _search(str(out), "--id", "000009", "--where", "category=shirt|t-shirt", "--k", "5", "--json")
    assert res.exit_code == 0, res.output
    with CatalogIndex.open(faiss_index) as idx:
        want = idx.search("000009", where={"category": ["shirt", "t-shirt"]}, k=5)
    assert [h["id"] for h in json.loads(res.stdout)] == [h.id for h in want]
    res = runner.invoke(vestis.cli.app, ["index", str(ckpt), str(manifest), "--out", str(tmp_path / "f"),
                                         "--milvus-uri", uri])  # fmt: skip
    assert res.exit_code == 1 and "needs backend milvus" in res.output
