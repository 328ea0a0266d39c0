"""Reports: every file is written, metrics.json round-trips, the HTML is self-contained and holds the tables."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.eval.bootstrap import bootstrap_ci
from vestis.eval.evaluator import evaluate_predictions
from vestis.eval.metrics import calibrate_thresholds, one_hot
from vestis.eval.reference import reference_probs, value_frequencies
from vestis.eval.report import write_report
from vestis.eval.report_sections import confident_mistakes, meta_breakdowns

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def case():
    tax = Taxonomy.from_dict(
        {
            "attributes": [
                {"name": "category", "kind": "single", "values": ["tee", "shirt", "dress"], "roi": "large"},
                {"name": "sleeve length", "kind": "single", "values": ["short", "long"], "roi": "small"},
                {"name": "pattern", "kind": "multi", "values": ["stripes", "dots", "floral", "plain"], "roi": "large"},
                {"name": "closure", "kind": "single", "values": ["buttons", "zip"]},
            ]
        }
    )
    rng = np.random.default_rng(0)
    n = 30
    probs, targets, masks = {}, {}, {}
    for a in tax:
        k = a.num_values
        if a.kind == "single":
            y = rng.integers(0, k, n)
            logits = rng.normal(size=(n, k)) + 2.0 * one_hot(y, k)  # informative, not perfect
            probs[a.name] = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            targets[a.name] = y
        else:
            targets[a.name] = (rng.random((n, k)) < 0.4).astype(np.float32)
            probs[a.name] = np.clip(0.5 * targets[a.name] + 0.6 * rng.random((n, k)), 0, 1)
        masks[a.name] = rng.random(n) > 0.2
    masks["closure"][:] = False  # an attribute without labelled rows: no figures, a row of dashes
    targets["closure"][:] = -1
    for a in tax:
        if a.kind == "single":
            targets[a.name] = np.where(masks[a.name], targets[a.name], -1)
    thr = {"pattern": calibrate_thresholds(probs["pattern"], targets["pattern"], masks["pattern"])}
    metrics = evaluate_predictions(tax, probs, targets, masks, thresholds=thr)
    metrics["reference"] = evaluate_predictions(tax, reference_probs(value_frequencies(tax, targets, masks), n),
                                                targets, masks)  # fmt: skip
    metrics["summary_ci"] = bootstrap_ci(tax, probs, targets, masks, n_resamples=200)
    metrics["selection"] = {"metric": "mean_kind_score", "value": 0.61, "epoch": 2, "mode": "max"}
    metrics["threshold_choice"] = {
        "pattern": {v: {"threshold": float(t), "source": "calibrated" if j % 2 else "default", "positives": 10 + j}
                    for j, (v, t) in enumerate(zip(tax["pattern"].values, thr["pattern"], strict=True))}
    }  # fmt: skip
    shops = ["north", "south", None] * 10
    metrics["breakdowns"] = meta_breakdowns(tax, probs, targets, masks, {"shop": shops}, 0.3)
    return tax, probs, targets, masks, metrics


HISTORY = [
    {"epoch": 1, "train": {"loss": 1.2}, "val": {"mean_kind_score": 0.4}},
    {"epoch": 2, "train": {"loss": 0.8}, "val": {"mean_kind_score": 0.61}},
]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(30):
        path = folder / f"{i}.png"
        Image.new("RGB", (300, 200), (8 * i, 100, 200)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def report(case, images, tmp_path_factory):
    tax, probs, targets, masks, metrics = case
    out = tmp_path_factory.mktemp("report")
    extra = {"model": {"name": "a3", "backbone": "efficientnetv2_s"}, "checkpoint": "runs/x/best.ckpt", "epochs": 3}
    written = write_report(
        metrics, out, probs=probs, targets=targets, masks=masks, taxonomy=tax, title="Run <7> & co", extra=extra,
        history=HISTORY, images=images,
    )  # fmt: skip
    return out, written


def test_writes_every_file_and_nothing_else(case, report) -> None:
    out, written = report
    expected = {
        "metrics.json",
        "report.md",
        "report.html",
        "figures/f1_by_attribute.png",
        "figures/training_curves.png",
        "figures/reliability_category.png",
        "figures/reliability_sleeve_length.png",
        "figures/confusion_category.png",
        "figures/confusion_sleeve_length.png",
        "figures/pr_category.png",
        "figures/pr_sleeve_length.png",
        "figures/pr_pattern.png",
    }
    tax, probs, targets, masks, _ = case
    for name, slug in (("category", "category"), ("sleeve length", "sleeve_length"), ("pattern", "pattern")):
        n = len(confident_mistakes(tax[name], probs[name], targets[name], masks[name], 0.3))
        assert n > 0
        expected |= {f"figures/errors/{slug}_{i}.jpg" for i in range(1, n + 1)}
    assert set(written) == expected
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == expected  # no temporary files left behind
    for rel, path in written.items():
        assert path == (out / rel).resolve()
        if rel.endswith(".png"):
            assert path.read_bytes().startswith(PNG_MAGIC)
        if rel.endswith(".jpg"):  # small JPEG thumbnails of the 300 x 200 images
            with Image.open(path) as im:
                assert im.format == "JPEG" and im.size == (128, 85)


def test_metrics_json_round_trips(case, report) -> None:
    out, _ = report
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8")) == case[-1]


def test_html_is_self_contained_with_tables(case, report) -> None:
    out, written = report
    metrics = case[-1]
    text = (out / "report.html").read_text(encoding="utf-8")
    assert "<title>Run &lt;7&gt; &amp; co</title>" in text
    table = re.search(r'<table class="attributes">(.*?)</table>', text, re.S).group(1)
    for name, r in metrics["attributes"].items():
        row = re.search(rf"<tr><td>{re.escape(name)}</td>(.*?)</tr>", table).group(1)
        want = "–" if r["micro_f1"] is None else f"{r['micro_f1']:.3f}"
        assert f"<td>{want}</td>" in row
    assert "micro-F1 calibrated" in table
    # figures are embedded, not linked: the file can be mailed on its own
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 9
    assert all(base64.b64decode(b).startswith(PNG_MAGIC) for b in images)
    thumbs = re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(thumbs) == sum(1 for rel in written if rel.endswith(".jpg")) > 0
    assert text.count('<div class="gallery">') == 3
    assert 'src="figures/' not in text
    # run information, flattened
    run = re.search(r'<table class="run">(.*?)</table>', text, re.S).group(1)
    assert "<td>model.backbone</td><td>efficientnetv2_s</td>" in run
    assert "<td>checkpoint</td><td>runs/x/best.ckpt</td>" in run
    # per-value and per-class details
    assert "<h2>sleeve length</h2>" in text and "Per-class accuracy (argmax)" in text
    assert "Calibrated thresholds" in text


def test_markdown_links_existing_figures(case, report) -> None:
    out, _ = report
    text = (out / "report.md").read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 9 + sum(1 for link in links if link.endswith(".jpg"))
    assert all((out / link).is_file() for link in links)
    assert text.startswith("# Run <7> & co\n")
    assert "| model.name | a3 |" in text
    pattern = case[-1]["attributes"]["pattern"]
    assert re.search(rf"\| pattern \| multi \| large \| {pattern['n']} \| {pattern['micro_f1']:.3f} \|", text)


def test_rewrite_replaces_files(case, tmp_path: Path) -> None:
    tax, probs, targets, masks, metrics = case
    only = {k: v for k, v in metrics.items() if k != "attributes"}
    only["attributes"] = {"category": metrics["attributes"]["category"]}
    first = write_report(metrics, tmp_path, probs=probs, targets=targets, masks=masks, taxonomy=tax)
    second = write_report(only, tmp_path, probs=probs, targets=targets, masks=masks, taxonomy=tax)
    assert set(second) < set(first)
    assert json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8")) == only
    assert "Run" not in (tmp_path / "report.md").read_text(encoding="utf-8").split("## Summary")[0]


def test_missing_arrays_are_reported(case, tmp_path: Path) -> None:
    tax, probs, targets, masks, metrics = case
    without = {k: v for k, v in masks.items() if k != "pattern"}
    with pytest.raises(VestisError, match="masks: no entry for attribute 'pattern'"):
        write_report(metrics, tmp_path, probs=probs, targets=targets, masks=without, taxonomy=tax)
