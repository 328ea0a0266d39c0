"""The catalog index: build, search against brute force, manipulation, --only, --where, updates, resume after kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from vestis.config import Config, load_config
from vestis.data.manifest import read_manifest
from vestis.data.synthetic import generate_catalog
from vestis.errors import VestisError
from vestis.inference.embedder import Embedder
from vestis.retrieval.catalog_index import CatalogIndex
from vestis.retrieval.index_build import JOURNAL, build_index
from vestis.retrieval.search import rank

pytest.importorskip("faiss", reason="the FAISS backend needs faiss-cpu (pip install 'vestis[search]')")

SIZE = 48
QUIET = {"progress": False, "log": lambda *_: None, "check_images": False}


def make_catalog(root: Path, n: int = 40) -> Path:
    generate_catalog(root, n=n, size=SIZE, seed=3)
    return root / "manifest.csv"


def train_tiny(manifest: Path, out: Path, *overrides: str) -> Path:
    """One short epoch of the ``tiny`` preset (seconds on a CPU); the checkpoint it leaves."""
    from vestis.train.loop import train

    cfg = load_config(
        "tiny",
        [f"data.image_size={SIZE}", "data.augment.enabled=false", "train.epochs=1", "train.max_steps=2", *overrides],
    )
    torch.manual_seed(0)
    r = train(cfg, manifest, out, device="cpu", **QUIET)
    return r.best if r.best.exists() else r.last


@pytest.fixture(scope="session")
def csn_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """``(manifest, csn checkpoint, flat FAISS index)`` on a 40-image synthetic catalog."""
    root = tmp_path_factory.mktemp("catalog")
    manifest = make_catalog(root / "cat")
    ckpt = train_tiny(manifest, root / "run", "model.name=csn", "model.embedding_dim=16", "train.pk_values=4",
                      "train.pk_images=2")  # fmt: skip
    build_index(ckpt, manifest, root / "index", workers=0, batch_size=16)
    return manifest, ckpt, root / "index"


@pytest.fixture
def idx(csn_setup):
    with CatalogIndex.open(csn_setup[2]) as index:
        yield index


def _gallery(index: CatalogIndex) -> dict[str, np.ndarray]:
    v = np.asarray(index.vectors)
    out, start = {}, 0
    for attr, d in index.layout:
        out[attr] = v[:, start : start + d]
        start += d
    return out


def test_vectors_are_the_embedders_and_labels_the_manifests(csn_setup, idx):
    manifest, ckpt, _ = csn_setup
    m = read_manifest(manifest)
    assert idx.items.ids == [r.id for r in m.records]  # input order, dense keys
    assert idx.items.keys.tolist() == list(range(len(m.records)))
    assert idx.items.images == [r.image for r in m.records]  # relative to the catalog root
    from PIL import Image

    emb = Embedder.from_path(ckpt, device="cpu")
    ref = emb.embed([Image.open(m.image_path(r)).convert("RGB") for r in m.records[:6]])
    want = np.concatenate([ref[a] for a, _ in emb.layout], axis=1)
    np.testing.assert_allclose(np.asarray(idx.vectors[:6]), want, atol=1e-5)
    for r in m.records:
        for attr in idx.taxonomy.names:
            label = idx.items.labels[attr][idx.row(r.id)]
            assert label == ("|".join(r.labels[attr]) if attr in r.labels else None)
    meta = json.loads((csn_setup[2] / "index.json").read_text())
    assert meta["count"] == 40 and meta["backend"]["kind"] == "flat" and meta["model"]["path"] == str(ckpt.absolute())
    assert not (csn_setup[2] / JOURNAL).exists()


def test_predictions_come_from_the_recognition_columns(csn_setup, idx):
    """A CSN with columns predicts with its own logits: the argmax of each column, as the model computes it."""
    manifest, ckpt, _ = csn_setup
    from vestis.train.checkpoint import load_checkpoint, rebuild_model

    model = rebuild_model(load_checkpoint(ckpt), source=str(ckpt), map_location="cpu").eval()
    emb = Embedder.from_path(ckpt, device="cpu")
    m = read_manifest(manifest)
    from PIL import Image

    batch = emb.preprocess([Image.open(m.image_path(r)).convert("RGB") for r in m.records[:5]])
    mod = emb.module
    with torch.no_grad():
        logits = model((torch.from_numpy(batch).float() / 255 - mod.mean) / mod.std)["logits"]
    cat = idx.taxonomy["category"]
    for i in range(5):
        assert idx.items.preds["category"][i] == cat.values[int(logits["category"][i].argmax())]
        p = logits["category"][i].softmax(0).max().item()
        assert idx.items.scores["category"][i] == pytest.approx(p, abs=1e-5)


def test_search_by_id_equals_brute_force(idx):
    gal = _gallery(idx)
    for qrow in (0, 7, 23):
        hits = idx.search(idx.items.ids[qrow], k=10, exclude_query=False)
        ref_i, ref_s = rank({a: g[qrow : qrow + 1] for a, g in gal.items()}, gal, k=10)
        assert [h.id for h in hits] == [idx.items.ids[i] for i in ref_i[0]]
        np.testing.assert_allclose([h.score for h in hits], ref_s[0], atol=1e-4)
        for h in hits:
            g = idx.row(h.id)
            for a in idx.taxonomy.names:  # s_t by hand
                assert h.per_attribute[a] == pytest.approx(float(gal[a][g] @ gal[a][qrow]), abs=1e-5)
            assert h.distance == pytest.approx(sum(2 - 2 * s for s in h.per_attribute.values()), abs=1e-5)
    # the item itself is left out by default
    hits = idx.search(idx.items.ids[0], k=5)
    assert idx.items.ids[0] not in [h.id for h in hits] and len(hits) == 5


def test_search_by_image_equals_search_by_its_id(csn_setup, idx):
    manifest = csn_setup[0]
    path = manifest.parent / idx.items.images[3]
    by_image = idx.search(path, k=6)
    by_id = idx.search(idx.items.ids[3], k=5)
    assert by_image[0].id == idx.items.ids[3] and by_image[0].distance == pytest.approx(0, abs=1e-4)
    assert [h.id for h in by_image[1:]] == [h.id for h in by_id]


def test_only_keeps_the_chosen_attributes(idx):
    gal = _gallery(idx)
    kept = ["colour", "category"]
    hits = idx.search(idx.items.ids[5], only=kept, k=8, exclude_query=False)
    ref_i, ref_s = rank({a: g[5:6] for a, g in gal.items()}, gal, attributes=kept, k=8)
    assert [h.id for h in hits] == [idx.items.ids[i] for i in ref_i[0]]
    assert all(set(h.per_attribute) == set(kept) for h in hits)
    np.testing.assert_allclose([h.score for h in hits], ref_s[0], atol=1e-4)


def test_set_replaces_the_sub_embedding_by_the_prototype(csn_setup, idx):
    """The prototype is the re-normalised mean colour sub-embedding of the items labelled black, by hand."""
    gal = _gallery(idx)
    m = read_manifest(csn_setup[0])
    black = [i for i, r in enumerate(m.records) if r.labels.get("colour") == ("black",)]
    assert black, "the synthetic catalog should hold black items"
    proto = gal["colour"][black].mean(axis=0)
    proto /= np.linalg.norm(proto)
    q = {a: g[9:10].copy() for a, g in gal.items()}
    q["colour"] = proto[None]
    hits = idx.search(idx.items.ids[9], set={"colour": "black"}, k=10, exclude_query=False)
    ref_i, ref_s = rank(q, gal, k=10)
    assert [h.id for h in hits] == [idx.items.ids[i] for i in ref_i[0]]
    np.testing.assert_allclose([h.score for h in hits], ref_s[0], atol=1e-4)
    for h in hits:
        assert h.per_attribute["colour"] == pytest.approx(float(gal["colour"][idx.row(h.id)] @ proto), abs=1e-5)
    # additive: q + p(new) - p(old), the old value being the query's label, normalised again
    old = m.records[9].labels.get("colour")
    if old and old != ("black",):
        rows_old = [i for i, r in enumerate(m.records) if r.labels.get("colour") == old]
        p_old = gal["colour"][rows_old].mean(axis=0)
        p_old /= np.linalg.norm(p_old)
        moved = gal["colour"][9] + proto - p_old
        moved /= np.linalg.norm(moved)
        hits = idx.search(idx.items.ids[9], set={"colour": "black"}, additive=True, k=3, exclude_query=False)
        h = hits[0]
        assert h.per_attribute["colour"] == pytest.approx(float(gal["colour"][idx.row(h.id)] @ moved), abs=1e-5)


def test_where_filters_on_label_else_prediction(idx):
    gal = _gallery(idx)
    value = lambda r: idx.items.value("category", r)  # noqa: E731
    wanted = {"shirt", "t-shirt", "sneaker"}
    allowed = [r for r in range(len(idx)) if value(r) in wanted]
    assert 0 < len(allowed) < len(idx)
    hits = idx.search(idx.items.ids[2], where={"category": sorted(wanted)}, k=40, exclude_query=False)
    assert sorted(idx.row(h.id) for h in hits) == allowed  # every match, nothing else
    sub = {a: g[allowed] for a, g in gal.items()}
    ref_i, _ = rank({a: g[2:3] for a, g in gal.items()}, sub, k=5)
    assert [h.id for h in hits[:5]] == [idx.items.ids[allowed[i]] for i in ref_i[0]]
    # a label wins over the prediction: an item labelled otherwise never matches its prediction's value
    mismatch = [
        r for r in range(len(idx)) if idx.items.labels["category"][r] not in (None, idx.items.preds["category"][r])
    ]
    if mismatch:
        r = mismatch[0]
        pred = idx.items.preds["category"][r]
        hits = idx.search(idx.items.ids[0], where={"category": [pred]}, k=40, exclude_query=False)
        assert idx.items.ids[r] not in [h.id for h in hits]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"set": {"colr": "black"}}, "unknown attribute 'colr'; expected one of category, colour"),
        ({"set": {"colour": "mauve"}}, "colour='mauve' is not a value of colour; expected one of"),
        ({"only": ["sleeve", "hat"]}, "only: unknown attribute 'hat'"),
        ({"where": {"category": ["boots"]}}, "where: category='boots' is not a value of category"),
        ({"where": {"size": ["M"]}}, "where: unknown attribute 'size'"),
        ({"only": []}, "only: expected at least one attribute"),
        ({"k": 0}, "k: expected an integer >= 1"),
    ],
)
def test_bad_queries_name_what_is_valid(idx, kwargs, message):
    with pytest.raises(VestisError) as e:
        idx.search(idx.items.ids[0], **kwargs)
    assert message in str(e.value)


def test_unknown_id_and_missing_image(idx, tmp_path):
    with pytest.raises(VestisError, match="'nope': neither an id in the index nor an image file; ids include 000000"):
        idx.search("nope")
    with pytest.raises(VestisError, match="id 'nope': not in the index"):
        idx.item("nope")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(VestisError, match=r"bad\.jpg"):
        idx.search(bad)


def test_remove_and_add_in_place(csn_setup, tmp_path):
    manifest = csn_setup[0]
    path = tmp_path / "index"
    shutil.copytree(csn_setup[2], path)
    gone = ["000004", "000011"]
    with CatalogIndex.open(path) as index:
        before = {i: index.vectors[index.row(i)].copy() for i in gone}
        assert index.remove(gone) == 2
        assert len(index) == 38
        assert not set(gone) & {h.id for h in index.search("000005", k=40)}
        with pytest.raises(VestisError, match="'000004': not in the index"):
            index.remove(["000004"])
    with CatalogIndex.open(path) as index:  # persisted
        assert len(index) == 38 and len(index.backend) == 38
        m = read_manifest(manifest)
        back = tmp_path / "back.csv"
        rows = [r for r in manifest.read_text().splitlines() if r.split(",")[0] in ("id", *gone)]
        back.write_text("\n".join(rows).replace("images/", f"{m.root}/images/") + "\n")
        assert index.add(back) == 2
        assert len(index) == 40 and sorted(index.items.keys[-2:].tolist()) == [40, 41]  # fresh, stable keys
        for i in gone:
            np.testing.assert_allclose(index.vectors[index.row(i)], before[i], atol=1e-5)
            assert index.search(i, k=1, exclude_query=False)[0].id == i
            assert (
                index.items.labels["colour"][index.row(i)] == "|".join(m.records[int(i)].labels.get("colour", ()))
                or None
            )
        with pytest.raises(VestisError, match="ids already in the index: 000004"):
            index.add(back)


def test_a_complete_index_is_not_rebuilt_without_restart(csn_setup, tmp_path):
    manifest, ckpt, _ = csn_setup
    with pytest.raises(VestisError, match="already holds a complete index; pass --restart"):
        build_index(ckpt, manifest, csn_setup[2], workers=0)
    with pytest.raises(VestisError, match="backend: expected one of"):
        build_index(ckpt, manifest, tmp_path / "x", backend="annoy")
    with pytest.raises(VestisError, match="index type: expected one of"):
        build_index(ckpt, manifest, tmp_path / "x", kind="lsh")


def test_classifier_checkpoint_gives_attribute_based_sub_embeddings(csn_setup, tmp_path):
    """A classifier indexes through its branches, and predicts with its own heads (as vestis predict does)."""
    from vestis.data.taxonomy import load_taxonomy
    from vestis.inference.predictor import Predictor
    from vestis.models import create_model
    from vestis.train.checkpoint import save_checkpoint

    manifest = csn_setup[0]
    cfg = load_config("tiny", [f"data.image_size={SIZE}", "model.name=a3"])
    tax = load_taxonomy(manifest.parent / "taxonomy.yaml")
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "a3.ckpt", model=create_model(cfg.model, tax), config=cfg, taxonomy=tax)
    r = build_index(ckpt, manifest, tmp_path / "index", kind="hnsw", workers=0)
    assert r.count == 40
    with CatalogIndex.open(tmp_path / "index") as index:
        emb = Embedder.from_path(ckpt, device="cpu")
        assert index.layout == emb.layout
        pred = Predictor.from_path(ckpt, device="cpu")
        from vestis.inference.tagging import tag_catalog

        tags = tmp_path / "tags.jsonl"
        tag_catalog(pred, [manifest], tags, workers=0)
        rows = {json.loads(x)["id"]: json.loads(x) for x in tags.read_text().splitlines()}
        for i in index.items.ids[:10]:
            want = rows[i]["attributes"]["category"]["value"]
            assert index.items.preds["category"][index.row(i)] == want
        hits = index.search(index.items.ids[0], k=5, exclude_query=False)
        assert hits[0].id == index.items.ids[0]


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_killed_build_resumes_with_every_image_once(csn_setup, tmp_path):
    manifest, ckpt, _ = csn_setup
    n = 400
    m = read_manifest(manifest)
    paths = [m.image_path(r) for r in m.records]
    big = tmp_path / "big.csv"
    big.write_text("id,image\n" + "\n".join(f"r{i:05d},{paths[i % len(paths)]}" for i in range(n)) + "\n")
    out = tmp_path / "index"
    cmd = [sys.executable, "-m", "vestis", "index", str(ckpt), str(big), "--out", str(out)]
    cmd += ["--batch-size", "1", "--workers", "0", "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = out / JOURNAL
    deadline = time.monotonic() + 120
    while proc.poll() is None and _lines(journal) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail(f"the build ended before it could be killed (rc {proc.returncode}): {proc.stderr.read().decode()}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    done = _lines(journal)
    assert 20 <= done < n and not (out / "index.json").exists()
    with journal.open("ab") as f:  # as if the kill had hit in the middle of a write
        f.write(b'{"id": "r99999", "image": "x.jp')
    r = build_index(ckpt, big, out, workers=0, batch_size=64)
    assert r.done_before == done and r.embedded == n - done and r.count == n
    with CatalogIndex.open(out) as index:
        assert sorted(index.items.ids) == [f"r{i:05d}" for i in range(n)]  # every image exactly once
        assert len(index.backend) == n and index.vectors.shape == (n, sum(d for _, d in index.layout))
        # the vectors journalled before the kill are those of the same images embedded after it
        same = [index.row(f"r{i:05d}") for i in (0, (n // len(paths) - 1) * len(paths))]  # one image, twice
        np.testing.assert_allclose(index.vectors[same[0]], index.vectors[same[-1]], atol=1e-5)
    assert not journal.exists()


def test_onnx_model_predicts_from_the_nearest_prototype(csn_setup, idx, tmp_path):
    """An ONNX embedder has no recognition columns: each attribute is the value of the most similar prototype."""
    from vestis.inference.export import export_onnx

    manifest, ckpt, _ = csn_setup
    onnx = export_onnx(ckpt, tmp_path / "csn.onnx", opset=17, check_images=0).path
    build_index(onnx, manifest, tmp_path / "o", workers=0)
    with CatalogIndex.open(tmp_path / "o") as ox:
        np.testing.assert_allclose(np.asarray(ox.vectors), np.asarray(idx.vectors), atol=1e-4)
        gal = _gallery(ox)
        protos = ox.prototypes
        values = ox.taxonomy["colour"].values
        for r in range(len(ox)):
            sims = protos.vectors["colour"] @ gal["colour"][r]  # (V,)
            cat = ox.items.value("category", r)
            if ox.taxonomy["colour"].applies(cat):
                assert ox.items.preds["colour"][r] == values[int(protos.values["colour"][sims.argmax()])]
                assert ox.items.scores["colour"][r] == pytest.approx(float(sims.max()), abs=1e-5)


def test_prototypes_from_another_manifest(csn_setup, idx, tmp_path):
    manifest, ckpt, _ = csn_setup
    lines = manifest.read_text().splitlines()
    header = lines[0].split(",")
    col = header.index("colour")
    keep = [ln.split(",") for ln in lines[1:13]]
    rows = [",".join(["id", "image", "colour"])] + [",".join([c[0], c[1], c[col]]) for c in keep]
    (manifest.parent / "protos.csv").write_text("\n".join(rows) + "\n")
    build_index(ckpt, manifest, tmp_path / "p", workers=0, prototypes=manifest.parent / "protos.csv")
    with CatalogIndex.open(tmp_path / "p") as px:
        gal = _gallery(px)
        labelled = {}
        for c in keep:
            if c[col]:
                labelled.setdefault(c[col], []).append(px.row(c[0]))
        values = px.taxonomy["colour"].values
        got = {values[int(v)]: px.prototypes.vectors["colour"][i] for i, v in enumerate(px.prototypes.values["colour"])}
        assert set(got) == set(labelled)  # only the values of the prototype manifest
        for v, rws in labelled.items():
            mean = gal["colour"][rws].mean(axis=0)
            np.testing.assert_allclose(got[v], mean / np.linalg.norm(mean), atol=1e-5)
        assert px.prototypes.values.get("pattern", np.zeros(0)).size == 0  # no pattern column: no prototypes
        with pytest.raises(VestisError, match="set: pattern='solid' has no prototype"):
            px.search("000000", set={"pattern": "solid"})


def test_a_second_build_of_the_same_directory_is_refused(csn_setup, tmp_path):
    from vestis.inference.journal import Journal

    manifest, ckpt, _ = csn_setup
    holder = Journal(tmp_path / "i" / JOURNAL)
    try:
        with pytest.raises(VestisError, match="another vestis index is building this directory"):
            build_index(ckpt, manifest, tmp_path / "i", workers=0)
    finally:
        holder.close()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own, about its configuration defaults
def test_ray_engine_builds_the_local_index(csn_setup, idx, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'vestis[ray]'")
    pytest.importorskip("ray.data", reason="Ray Data is an optional extra: pip install 'vestis[ray]'")
    manifest, ckpt, _ = csn_setup
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        r = build_index(ckpt, manifest, tmp_path / "r", engine="ray", batch_size=8, workers=1, device="cpu")
    finally:
        ray.shutdown()
    assert r.count == 40
    with CatalogIndex.open(tmp_path / "r") as rx:
        assert rx.items.ids == idx.items.ids
        np.testing.assert_allclose(np.asarray(rx.vectors), np.asarray(idx.vectors), atol=1e-5)
        assert rx.items.preds == idx.items.preds


def test_unreadable_images_are_left_out_and_listed(csn_setup, tmp_path):
    manifest, ckpt, _ = csn_setup
    m = read_manifest(manifest)
    (tmp_path / "broken.jpg").write_bytes(b"not a JPEG")
    rows = [f"{r.id},{m.image_path(r)}" for r in m.records[:3]] + [f"bad,{tmp_path / 'broken.jpg'}"]
    (tmp_path / "m.csv").write_text("id,image\n" + "\n".join(rows) + "\n")
    r = build_index(ckpt, tmp_path / "m.csv", tmp_path / "i", workers=0)
    assert (r.count, r.errors, r.embedded) == (3, 1, 3)
    skipped = json.loads((tmp_path / "i" / "skipped.json").read_text())
    assert [s["id"] for s in skipped] == ["bad"] and "not a readable image" in skipped[0]["error"]
    with CatalogIndex.open(tmp_path / "i") as index:
        assert index.items.ids == [x.id for x in m.records[:3]]
        assert all(lab is None for lab in index.items.labels["colour"])  # an image list has no labels


def test_query_images_go_through_the_decoders_pixel_cap(csn_setup, idx, monkeypatch):
    from PIL import Image

    import vestis.retrieval.catalog_embed as catalog_embed

    path = csn_setup[0].parent / idx.items.images[0]
    monkeypatch.setattr(catalog_embed, "max_pixels", lambda _emb: 100)  # a 48 x 48 image is over it
    with pytest.raises(VestisError, match="over the cap"):
        idx.search(path)
    with pytest.raises(VestisError, match="query image: 48x48 pixels, over the cap of 100"):
        idx.search(Image.open(path))


def test_a_crash_while_adding_is_detected_on_open(csn_setup, tmp_path, monkeypatch):
    """The files of an interrupted update disagree on the count: opening refuses them instead of mixing rows up."""
    import vestis.retrieval.catalog_store as store

    path = tmp_path / "index"
    shutil.copytree(csn_setup[2], path)
    with CatalogIndex.open(path) as index:
        index.remove(["000001"])

    def crash(*_a, **_k):
        raise OSError("disk gone")

    m = read_manifest(csn_setup[0])
    (tmp_path / "one.csv").write_text(f"id,image\n000001,{m.image_path(m.records[1])}\n")
    with CatalogIndex.open(path) as index:
        monkeypatch.setattr(store, "write_items", crash)
        with pytest.raises(OSError, match="disk gone"):
            index.add(tmp_path / "one.csv")
    monkeypatch.undo()
    with pytest.raises(VestisError, match=r"the index files disagree.*rebuild it with `vestis index --restart`"):
        CatalogIndex.open(path)


def test_a_foreign_journal_is_an_error_naming_the_row(csn_setup, tmp_path):
    manifest, ckpt, _ = csn_setup
    out = tmp_path / "i"
    out.mkdir()
    (out / JOURNAL).write_text(json.dumps({"id": "000000", "image": "x.jpg", "vector": "AAAAAA=="}) + "\n")
    with pytest.raises(VestisError, match=r"build\.jsonl: row '000000': 'vector' has 1 numbers, expected 160"):
        build_index(ckpt, manifest, out, workers=0)
    (out / JOURNAL).write_text(json.dumps({"id": "000000", "image": "x.jpg", "vector": "a!"}) + "\n")
    with pytest.raises(VestisError, match="row '000000': 'vector' is not base64 float32"):
        build_index(ckpt, manifest, out, workers=0)


def test_an_interrupted_build_resumes_only_with_its_model(csn_setup, tmp_path):
    from vestis.data.taxonomy import load_taxonomy
    from vestis.models import create_model
    from vestis.train.checkpoint import load_checkpoint, save_checkpoint

    manifest, ckpt, _ = csn_setup
    seen = []

    def crash(n):
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt  # as a user's Ctrl-C after two batches

    with pytest.raises(KeyboardInterrupt):
        build_index(ckpt, manifest, tmp_path / "i", workers=0, batch_size=8, on_batch=crash)
    assert _lines(tmp_path / "i" / JOURNAL) == 16 and not (tmp_path / "i" / "index.json").exists()
    # another model of the same widths must not finish it: its vectors would not compare with the journalled ones
    cfg = Config.from_dict(load_checkpoint(ckpt)["config"])
    tax = load_taxonomy(manifest.parent / "taxonomy.yaml")
    torch.manual_seed(7)
    other = save_checkpoint(tmp_path / "other.ckpt", model=create_model(cfg.model, tax), config=cfg, taxonomy=tax)
    with pytest.raises(VestisError, match=rf"the unfinished build there embeds with .*{ckpt.name}.*pass --restart"):
        build_index(other, manifest, tmp_path / "i", workers=0)
    r = build_index(ckpt, manifest, tmp_path / "i", workers=0)
    assert (r.done_before, r.embedded, r.count) == (16, 24, 40)
    assert not (tmp_path / "i" / "build.model.json").exists()


def test_ivfpq_candidates_are_re_ranked_exactly(csn_setup, idx, tmp_path):
    """An IVF-PQ index returns IVFPQ_REFINE x k candidates; their exact scores order the hits as a flat index does."""
    from vestis.retrieval.catalog_index import IVFPQ_REFINE

    manifest, ckpt, _ = csn_setup
    build_index(ckpt, manifest, tmp_path / "pq", kind="ivfpq", params={"nlist": 2, "nprobe": 2, "nbits": 4}, workers=0)
    with CatalogIndex.open(tmp_path / "pq") as pq:
        asked = []
        search = pq.backend.search
        pq.backend.search = lambda q, k, **kw: asked.append(k) or search(q, k, **kw)
        for q in ("000000", "000013", "000021"):
            got = pq.search(q, k=5)
            want = idx.search(q, k=5)
            assert [h.id for h in got] == [h.id for h in want]
            assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
        assert asked == [(5 + 1) * IVFPQ_REFINE] * 3  # k + the query itself, times the refine factor
