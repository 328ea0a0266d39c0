"""Reports: every file is written, metrics.json round-trips, the HTML is self-contained and holds the tables."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.eval.evaluator import evaluate_predictions
from vestis.eval.metrics import calibrate_thresholds, one_hot
from vestis.eval.report import write_report

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
    return tax, probs, targets, masks, metrics


@pytest.fixture(scope="module")
def report(case, tmp_path_factory):
    tax, probs, targets, masks, metrics = case
    out = tmp_path_factory.mktemp("report")
    extra = {"model": {"name": "a3", "backbone": "efficientnetv2_s"}, "checkpoint": "runs/x/best.ckpt", "epochs": 3}
    written = write_report(
        metrics, out, probs=probs, targets=targets, masks=masks, taxonomy=tax, title="Run <7> & co", extra=extra
    )
    return out, written


def test_writes_every_file_and_nothing_else(report) -> None:
    out, written = report
    expected = {
        "metrics.json",
        "report.md",
        "report.html",
        "figures/f1_by_attribute.png",
        "figures/confusion_category.png",
        "figures/confusion_sleeve_length.png",
        "figures/pr_category.png",
        "figures/pr_sleeve_length.png",
        "figures/pr_pattern.png",
    }
    assert set(written) == expected
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == expected  # no temporary files left behind
    for rel, path in written.items():
        assert path == (out / rel).resolve()
        if rel.endswith(".png"):
            assert path.read_bytes().startswith(PNG_MAGIC)


def test_metrics_json_round_trips(case, report) -> None:
    out, _ = report
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8")) == case[-1]


def test_html_is_self_contained_with_tables(case, report) -> None:
    out, _ = report
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
    assert len(images) == 6
    assert all(base64.b64decode(b).startswith(PNG_MAGIC) for b in images)
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
    assert len(links) == 6
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
