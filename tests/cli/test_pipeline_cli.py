"""`vestis pipeline`, then `vestis predict` (resumable, unreadable images counted) and `vestis export` on the file."""

from __future__ import annotations

import json

from typer.testing import CliRunner

import vestis.cli
from tests.inference.detector_fixtures import full_image_checkpoint
from tests.inference.pipeline_fixtures import scene, stage2_checkpoint
from vestis.inference.pipeline_format import load_pipeline_file

runner = CliRunner()


def _run(*args):
    return runner.invoke(vestis.cli.app, [str(a) for a in args], env={"COLUMNS": "200"})


def _bundle(tmp_path, *extra):
    det = full_image_checkpoint(tmp_path / "det.ckpt")
    st = stage2_checkpoint(tmp_path / "st.ckpt")
    out = tmp_path / "outfit.vestis"
    # the detector puts every class on the whole image: class-wise NMS keeps one garment per class
    res = _run("pipeline", det, st, "--out", out, "--per-type-nms", *extra)
    assert res.exit_code == 0, res.output
    return out, res


def test_pipeline_bundles_with_settings_and_refuses_swapped_arguments(tmp_path):
    out, res = _bundle(tmp_path, "--min-score", "0.9", "--max-garments", "4", "--margin", "0.2")
    bundle = load_pipeline_file(out)
    assert f"wrote {out}" in res.stdout and bundle.fingerprint in res.stdout
    assert (bundle.settings.min_score, bundle.settings.max_garments, bundle.settings.margin) == (0.9, 4, 0.2)
    res = _run("pipeline", tmp_path / "st.ckpt", tmp_path / "det.ckpt", "--out", tmp_path / "x.vestis")
    assert res.exit_code == 1 and "DETECTOR then STAGE2" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.vestis").exists()


def test_predict_writes_one_row_per_image_and_resumes(tmp_path):
    out, _ = _bundle(tmp_path)
    imgs = tmp_path / "imgs"
    scene(imgs / "a.jpg")
    scene(imgs / "b.jpg", size=(40, 56))
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    rows_file = tmp_path / "rows.jsonl"
    res = _run("predict", out, imgs, "--out", rows_file, "--workers", "0", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "2 predicted, 1 unreadable" in res.stdout
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a.jpg", "b.jpg", "broken.jpg"]
    fp = load_pipeline_file(out).fingerprint
    a, b, broken = rows
    assert set(a) == {"id", "image", "width", "height", "garments", "model"} and a["model"] == fp
    assert (b["width"], b["height"]) == (40, 56)
    assert [g["object_type"] for g in a["garments"]] == ["upper-body", "footwear"]
    assert a["garments"][0]["box"] == [0.0, 0.0, 48.0, 40.0]
    assert [g["category"] for g in a["garments"]] == ["t-shirt", "sneakers"]
    assert a["garments"][1]["suppressed"] == ["sleeve=long"] and "sleeve" not in a["garments"][1]["attributes"]
    assert "error" in broken and broken["model"] == fp
    before = rows_file.read_bytes()
    scene(imgs / "c.jpg")
    res = _run("predict", out, imgs, "--out", rows_file, "--workers", "0", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "3 of 4 images were already done" in res.stdout and "1 predicted, 0 unreadable" in res.stdout
    data = rows_file.read_bytes()
    assert data.startswith(before) and [json.loads(x)["id"] for x in data.splitlines()][-1] == "c.jpg"
    res = _run("predict", out, imgs, "--out", rows_file, "--workers", "0", "--no-progress")
    assert "4 of 4 images were already done" in res.stdout and rows_file.read_bytes() == data
    # a pipeline with other settings is another model: its rows are not mixed in
    other = tmp_path / "other"
    other.mkdir()
    out2, _ = _bundle(other, "--min-score", "0.5")
    res = _run("predict", out2, imgs, "--out", rows_file, "--workers", "0", "--no-progress")
    assert res.exit_code == 1 and "--restart" in res.output and rows_file.read_bytes() == data
    res = _run("predict", out, imgs, "--out", tmp_path / "rows.csv", "--workers", "0", "--no-progress")
    assert res.exit_code == 1 and "expected a .jsonl output" in res.output


def test_export_then_predict_with_the_exported_folder(tmp_path):
    out, _ = _bundle(tmp_path)
    folder = tmp_path / "onnx"
    res = _run("export", out, "--out", folder, "--check-images", "2")
    assert res.exit_code == 0, res.output
    assert "detector.onnx, stage2.onnx, pipeline.json" in res.stdout and "opset 17" in res.stdout
    assert "heatmap" in res.stdout and "attributes" in res.stdout
    scene(tmp_path / "imgs" / "a.jpg")
    rows = {}
    for name, model in (("torch", out), ("onnx", folder)):
        path = tmp_path / f"{name}.jsonl"
        res = _run("predict", model, tmp_path / "imgs", "--out", path, "--workers", "0", "--no-progress")
        assert res.exit_code == 0, res.output
        rows[name] = json.loads(path.read_text())
    assert rows["onnx"]["model"] == rows["torch"]["model"]
    assert [g["category"] for g in rows["onnx"]["garments"]] == [g["category"] for g in rows["torch"]["garments"]]
    for g, h in zip(rows["onnx"]["garments"], rows["torch"]["garments"], strict=True):
        assert abs(g["category_score"] - h["category_score"]) < 1e-4
    res = _run("export", out, "--out", folder, "--int8")
    assert res.exit_code == 1 and "fp32 only" in res.output
    cut = tmp_path / "cut.vestis"
    cut.write_bytes(out.read_bytes()[:1000])
    for cmd in (["predict", cut, tmp_path / "imgs", "--out", tmp_path / "x.jsonl"], ["export", cut, "--out", folder]):
        res = _run(*cmd)
        assert res.exit_code == 1 and f"{cut}: truncated" in res.output and "Traceback" not in res.output
