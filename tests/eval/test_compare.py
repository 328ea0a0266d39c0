"""`vestis evaluate --compare`: the comparison on a hand case checked against scikit-learn, and end to end on a tiny
model scored on a catalog and on its degraded copy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score
from torch.utils.data import DataLoader
from typer.testing import CliRunner

import vestis
import vestis.cli
from vestis.config import load_config
from vestis.data.dataset import AttributeDataset, EncodedTargets, encode_targets
from vestis.data.manifest import Manifest, Record, read_manifest, write_manifest
from vestis.data.synthetic import generate_catalog
from vestis.data.taxonomy import Attribute, Taxonomy, load_taxonomy, save_taxonomy
from vestis.eval.compare import compare_predictions, tvd
from vestis.inference.batch import predict_loader
from vestis.train.loop import train

TAX = Taxonomy((Attribute("colour", "single", ("red", "blue", "green")), Attribute("tags", "multi", ("a", "b"))))


def _probs(pred: list[int], k: int = 3) -> np.ndarray:
    p = np.full((len(pred), k), 0.1)
    p[np.arange(len(pred)), pred] = 0.8
    return p


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_hand_case_against_scikit_learn() -> None:
    ya, pa = np.array([0, 0, 1, 1, 2, 0]), [0, 1, 1, 1, 2, 0]  # the last row is unlabelled (mask)
    yb, pb = np.array([0, 1, 1, 1, 1, 0]), [2, 1, 0, 1, 1, 0]
    ma, mb = np.array([1, 1, 1, 1, 1, 0], bool), np.ones(6, bool)
    ta = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0], [0, 1]], np.float32)
    tb = np.array([[0, 1], [0, 1], [0, 1], [1, 1], [0, 0], [0, 0]], np.float32)
    mta, mtb = np.array([1, 1, 1, 0, 1, 1], bool), np.array([1, 1, 1, 1, 0, 0], bool)
    qa = np.array([[0.9, 0.1], [0.5, 0.2], [0.1, 0.7], [0.9, 0.9], [0.2, 0.1], [0.4, 0.4]])
    qb = np.array([[0.1, 0.9], [0.6, 0.6], [0.1, 0.1], [0.8, 0.1], [0.9, 0.9], [0.1, 0.1]])
    enc_a = EncodedTargets({"colour": np.where(ma, ya, -1), "tags": ta}, {"colour": ma, "tags": mta})
    enc_b = EncodedTargets({"colour": yb, "tags": tb}, {"colour": mb, "tags": mtb})
    r = compare_predictions(TAX, {"colour": _probs(pa), "tags": qa}, enc_a, {"colour": _probs(pb), "tags": qb}, enc_b,
                            threshold=0.3)  # fmt: skip
    c = r["attributes"]["colour"]
    acc_a = accuracy_score(ya[ma], np.array(pa)[ma])
    acc_b = accuracy_score(yb, pb)
    assert c["a"]["accuracy"] == pytest.approx(acc_a) == 0.8 and c["b"]["accuracy"] == pytest.approx(acc_b)
    assert c["drop"]["accuracy"] == pytest.approx(acc_a - acc_b)
    bal_a, bal_b = balanced_accuracy_score(ya[ma], np.array(pa)[ma]), balanced_accuracy_score(yb, pb)
    assert c["a"]["average_per_class_accuracy"] == pytest.approx(bal_a)
    assert c["b"]["average_per_class_accuracy"] == pytest.approx(bal_b)  # only classes present: red, blue
    assert c["b"]["per_class_accuracy"] == {"red": 0.5, "blue": 0.75, "green": None}
    assert c["drop"]["per_class_accuracy"] == {"red": 0.0, "blue": pytest.approx(0.25), "green": None}
    cm_a = confusion_matrix(ya[ma], np.array(pa)[ma], labels=[0, 1, 2], normalize="true")
    with np.errstate(invalid="ignore"):
        cm_b = confusion_matrix(yb, pb, labels=[0, 1, 2], normalize="true")
    expected = cm_b - cm_a
    expected[2] = np.nan  # green: no item in B (scikit-learn writes 0 for an empty row)
    got = np.array([[np.nan if x is None else x for x in row] for row in c["confusion_diff"]])
    np.testing.assert_allclose(got, expected, equal_nan=True)
    assert c["confusion_b"] == confusion_matrix(yb, pb, labels=[0, 1, 2]).tolist()
    # labels: A red 2, blue 2, green 1; B red 2, blue 4 -> TVD = (|.4-1/3| + |.4-2/3| + |.2-0|) / 2
    d = c["distribution"]
    assert d["label_tvd"] == pytest.approx((abs(0.4 - 1 / 3) + abs(0.4 - 2 / 3) + 0.2) / 2)
    assert d["a"] == pytest.approx({"red": 0.4, "blue": 0.4, "green": 0.2})
    # predictions: A red 1, blue 3, green 1; B red 2, blue 3, green 1
    assert d["predicted_tvd"] == pytest.approx(0.5 * (abs(0.2 - 2 / 6) + abs(0.6 - 0.5) + abs(0.2 - 1 / 6)))
    t = r["attributes"]["tags"]
    f1a = f1_score(ta[mta], qa[mta] >= 0.3, average="micro")
    f1b = f1_score(tb[mtb], qb[mtb] >= 0.3, average="micro")
    assert t["a"]["micro_f1"] == pytest.approx(f1a) and t["drop"]["micro_f1"] == pytest.approx(f1a - f1b)
    # positives: A a 3, b 3 (row 3 unlabelled); B a 1, b 4 -> TVD = |3/6 - 1/5|
    assert t["distribution"]["label_tvd"] == pytest.approx(abs(3 / 6 - 1 / 5))
    s = r["summary"]
    assert s["mean_accuracy_drop"] == pytest.approx(acc_a - acc_b) and s["mean_accuracy_b"] == pytest.approx(acc_b)


def test_tvd_edges() -> None:
    assert tvd(np.array([1, 0]), np.array([0, 3])) == 1.0 and tvd(np.array([2, 2]), np.array([1, 1])) == 0.0
    assert tvd(np.zeros(2), np.array([1, 0])) is None


def _subset(src: Path, dst: Path, images: Path, keep: tuple[str, ...]) -> Path:
    """``dst/manifest.csv`` + taxonomy.yaml: the catalog at ``src`` with only the ``keep`` attributes, its images
    referenced by absolute path under ``images`` (a small taxonomy keeps the test to a few figures)."""
    m, tax = read_manifest(src / "manifest.csv"), load_taxonomy(src / "taxonomy.yaml")
    dst.mkdir(parents=True, exist_ok=True)
    save_taxonomy(Taxonomy(tuple(tax[a] for a in keep), category_attribute="category"), dst / "taxonomy.yaml")
    rows = [
        Record(r.id, str((images / Path(r.image).name).absolute()), {a: r.labels[a] for a in keep if a in r.labels},
               group=r.group, title=r.title)
        for r in m.records
    ]  # fmt: skip
    return write_manifest(Manifest(rows, attributes=list(keep)), dst / "manifest.csv")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_catalog(root, n=40, size=32, seed=5)
    prod = tmp_path_factory.mktemp("prod_images")
    for p in (root / "images").glob("*.jpg"):  # production: tiny photos, upscaled and re-compressed
        im = Image.open(p).convert("RGB")
        im.resize((8, 8)).resize(im.size).save(prod / p.name, quality=30)
    a = _subset(root, root / "a", root / "images", ("category", "colour"))
    b = _subset(root, root / "b", prod, ("category", "colour"))
    cfg = load_config("tiny", ["data.image_size=32", "data.augment.enabled=false", "train.epochs=1",
                               "train.max_steps=2"])  # fmt: skip
    run = tmp_path_factory.mktemp("run")
    train(cfg, a, run, progress=False, log=lambda *_: None)
    return a, b, run / "best.ckpt"


def _independent(ckpt: Path, data: Path) -> tuple[dict[str, np.ndarray], EncodedTargets]:
    model = vestis.load(ckpt)
    m = read_manifest(data)
    ds = AttributeDataset(m, model.taxonomy, model.config.data)
    probs = predict_loader(model, DataLoader(ds, batch_size=16), model.config.data, model.taxonomy, torch.device("cpu"))
    return probs, encode_targets(m.records, model.taxonomy)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_cli_compare_end_to_end(sets, tmp_path: Path) -> None:
    a, b, ckpt = sets
    out = tmp_path / "cmp"
    args = ["evaluate", str(ckpt), "--data", str(a), "--compare", str(b), "--out", str(out), "--split", "all",
            "--workers", "0", "--device", "cpu"]  # fmt: skip
    res = CliRunner().invoke(vestis.cli.app, args)
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    (pa, ea), (pb, eb) = _independent(ckpt, a), _independent(ckpt, b)
    model = vestis.load(ckpt)
    for attr in model.taxonomy:
        r = metrics["attributes"][attr.name]
        if attr.kind != "single":
            continue
        for side, probs, enc in (("a", pa, ea), ("b", pb, eb)):
            m = enc.masks[attr.name]
            y, pred = enc.targets[attr.name][m], probs[attr.name][m].argmax(axis=1)
            assert r[side]["n"] == int(m.sum())
            assert r[side]["accuracy"] == pytest.approx(accuracy_score(y, pred))
            assert r[side]["average_per_class_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
        assert r["distribution"]["label_tvd"] == pytest.approx(0.0)  # the same labels in both sets
    assert metrics["run"]["a"]["items"] == metrics["run"]["b"]["items"] == 40
    md = (out / "compare.md").read_text(encoding="utf-8")
    assert "| category | single |" in md and "figures/confusion_diff_00.png" in md
    assert "<table>" in (out / "compare.html").read_text(encoding="utf-8")
    for rel in metrics["figures"]["category"]:
        assert (out / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "category" in res.output and "compare.html" in res.output


def test_cli_compare_refusals(sets, tmp_path: Path) -> None:
    a, b, ckpt = sets
    base = ["evaluate", str(ckpt), "--data", str(a), "--out", str(tmp_path / "x"), "--workers", "0"]
    res = CliRunner().invoke(vestis.cli.app, [*base, "--compare", str(b), "--compare-split", "prod"])
    assert res.exit_code == 1 and "--compare-split 'prod'" in res.output
    res = CliRunner().invoke(vestis.cli.app, [*base, "--compare", str(tmp_path / "none.csv")])
    assert res.exit_code == 1 and "manifest not found" in res.output
    other = tmp_path / "tax.yaml"
    other.write_text("attributes:\n  - {name: colour, kind: single, values: [x, y]}\n", encoding="utf-8")
    res = CliRunner().invoke(vestis.cli.app, [*base, "--compare", str(b), "--compare-taxonomy", str(other)])
    assert res.exit_code == 1 and "taxonomy differs" in res.output
