"""``vestis evaluate`` end to end on a tiny trained run: the report's reference, intervals, selection and curves;
ONNX fp32 and int8 files scored on the same split; the HTML in headless Chromium."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vestis
import vestis.cli
from vestis.config import load_config
from vestis.data.dataset import encode_targets
from vestis.data.manifest import read_manifest
from vestis.data.splits import split_manifest
from vestis.data.synthetic import generate_catalog
from vestis.eval.evaluator import evaluate_predictions
from vestis.eval.reference import reference_probs, value_frequencies
from vestis.train.loop import train

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_catalog(root, n=64, size=48, seed=1)
    cfg = load_config("tiny", ["data.image_size=48", "data.augment.enabled=false", "train.epochs=2",
                               "train.max_steps=4"])  # fmt: skip
    out = tmp_path_factory.mktemp("run")
    train(cfg, root / "manifest.csv", out, progress=False, log=lambda *_: None)
    return root / "manifest.csv", out / "best.ckpt"


def _evaluate(model: Path, data: Path, out: Path) -> dict:
    res = CliRunner().invoke(
        vestis.cli.app, ["evaluate", str(model), "--data", str(data), "--out", str(out), "--workers", "0"]
    )
    assert res.exit_code == 0, res.output
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def checkpoint_report(run, tmp_path_factory):
    data, ckpt = run
    out = tmp_path_factory.mktemp("report")
    return out, _evaluate(ckpt, data, out)


def test_checkpoint_report_sections(run, checkpoint_report) -> None:
    data, ckpt = run
    out, metrics = checkpoint_report
    model = vestis.load(ckpt)
    cfg, tax = model.config, model.taxonomy
    # the reference: training split's frequencies, recomputed here, scored on the test rows
    parts = split_manifest(read_manifest(data), val_fraction=cfg.data.val_fraction,
                           test_fraction=cfg.data.test_fraction, seed=cfg.data.split_seed)  # fmt: skip
    tr, te = encode_targets(parts["train"].records, tax), encode_targets(parts["test"].records, tax)
    ref = reference_probs(value_frequencies(tax, tr.targets, tr.masks), len(te))
    want = evaluate_predictions(tax, ref, te.targets, te.masks, threshold=cfg.train.threshold)
    assert metrics["reference"]["summary"] == pytest.approx(want["summary"])
    assert metrics["num_items"] == len(te)
    ci = metrics["summary_ci"]
    for k in ("mean_kind_score", "mean_micro_f1", "mean_accuracy"):
        assert ci[k][0] <= metrics["summary"][k] <= ci[k][1], k
    assert metrics["selection"] == model.metrics["selection"]
    assert metrics["threshold_choice"] == model.metrics["threshold_choice"]
    assert set(metrics["breakdowns"]) == {c for c in parts["test"].meta_columns}
    assert (out / "figures" / "training_curves.png").is_file()
    md = (out / "report.md").read_text(encoding="utf-8")
    assert f"Selection metric: {metrics['selection']['metric']} (highest wins)" in md
    assert "95% CI" in md and "reference" in md and "Threshold choice per value" in md


@pytest.mark.slow
def test_without_history_the_report_says_so(run, tmp_path) -> None:
    data, ckpt = run
    lone = tmp_path / "lone" / "best.ckpt"
    lone.parent.mkdir()
    shutil.copy(ckpt, lone)  # no history.json beside it
    _evaluate(lone, data, tmp_path / "rep")
    assert not (tmp_path / "rep" / "figures" / "training_curves.png").exists()
    assert "history.json was not found beside the checkpoint" in (tmp_path / "rep" / "report.md").read_text()


def _numbers(d, prefix=""):
    """Every numeric leaf of a metrics dict, by dotted path (None kept, to compare definedness too)."""
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_numbers(v, f"{prefix}{k}."))
        return out
    return {prefix: d} if d is None or isinstance(d, int | float) else {}


def test_onnx_fp32_and_int8(run, checkpoint_report, tmp_path) -> None:
    from vestis.inference.export import export_onnx

    data, ckpt = run
    _, ref = checkpoint_report
    # opset 17 takes the TorchScript exporter: seconds instead of a minute for the dynamo one
    fp32 = export_onnx(ckpt, tmp_path / "m.onnx", opset=17, check_images=0).path
    int8 = export_onnx(ckpt, tmp_path / "m-int8.onnx", opset=17, int8=True, calibration_images=8, check_images=4).path
    got = _evaluate(fp32, data, tmp_path / "fp32")
    a = _numbers({k: ref[k] for k in ("attributes", "summary", "reference")})
    b = _numbers({k: got[k] for k in ("attributes", "summary", "reference")})
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] is None) == (b[k] is None), k
        if a[k] is not None:
            assert b[k] == pytest.approx(a[k], abs=1e-4), k
    assert "Selection metric: not recorded" in (tmp_path / "fp32" / "report.md").read_text()
    q = _evaluate(int8, data, tmp_path / "int8")
    assert q["num_items"] == ref["num_items"] and set(q["attributes"]) == set(ref["attributes"])
    assert 0 <= q["summary"]["mean_kind_score"] <= 1
    assert "ONNX static-int8" in (tmp_path / "int8" / "report.md").read_text()

    # an ONNX file without its training configuration cannot recompute the split: one line, exit 1
    import onnx

    bare = onnx.load(str(fp32))
    kept = [p for p in bare.metadata_props if p.key != "vestis.config"]
    del bare.metadata_props[:]
    bare.metadata_props.extend(kept)
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    res = CliRunner().invoke(vestis.cli.app, ["evaluate", str(tmp_path / "bare.onnx"), "--data", str(data),
                                              "--out", str(tmp_path / "bare")])  # fmt: skip
    assert res.exit_code == 1 and "no vestis.config metadata" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "bare" / "metrics.json").exists()


def test_report_html_in_chromium(checkpoint_report) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    from tests.service.conftest import CHROMIUM_ARGS

    out, _ = checkpoint_report
    figures = [p for p in (out / "figures").rglob("*") if p.suffix in (".png", ".jpg")]
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        except Error as e:
            pytest.skip(f"Chromium cannot start here: {e}")
        try:
            page = b.new_page()
            page.goto((out / "report.html").as_uri())
            page.wait_for_load_state("load")
            widths = page.locator("img").evaluate_all("es => es.map(e => e.complete ? e.naturalWidth : 0)")
            assert len(widths) == len(figures) > 0
            assert all(w > 0 for w in widths), widths
            assert page.locator("h1").inner_text().startswith("vestis evaluation")
            assert page.locator("table.summary tr").count() > 5
        finally:
            b.close()
