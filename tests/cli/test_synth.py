"""`vestis synth` in-process: the three outputs (plus ground truth and scenes), and exit 1 on bad values."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import vestis.cli
from vestis.data.manifest import read_manifest
from vestis.data.taxonomy import load_taxonomy

runner = CliRunner()


def test_synth_writes_the_catalog(tmp_path):
    out = tmp_path / "cat"
    args = ["synth", "--out", str(out), "--n", "12", "--size", "48", "--seed", "4", "--workers", "1"]
    res = runner.invoke(vestis.cli.app, [*args, "--scenes", "--missing-rate", "0", "--label-noise", "0"])
    assert res.exit_code == 0, res.output
    m = read_manifest(out / "manifest.csv")
    assert len(m) == 12 and m.problems == []
    assert all((out / r.image).is_file() and r.image.endswith(".jpg") for r in m)
    assert load_taxonomy(out / "taxonomy.yaml").names == m.attributes
    # no noise and nothing missing: the manifest is the ground truth
    assert (out / "manifest.csv").read_bytes() == (out / "ground_truth.csv").read_bytes()
    doc = json.loads((out / "scenes" / "annotations.json").read_text())
    assert len(doc["images"]) == 3  # n // 4
    assert f"wrote 12 images of {len({r.group for r in m})} products to {out / 'images'}" in res.stdout
    assert f"manifest:     {out / 'manifest.csv'}" in res.stdout
    assert f"taxonomy:     {out / 'taxonomy.yaml'}" in res.stdout
    assert f"in {out / 'scenes' / 'annotations.json'}" in res.stdout


def test_synthetic_catalog_passes_vestis_validate(tmp_path):
    res = runner.invoke(vestis.cli.app, ["synth", "-o", str(tmp_path), "--n", "10", "--size", "32", "--format", "png"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(vestis.cli.app, ["validate", str(tmp_path / "manifest.csv")])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--n", "0"], "n: expected a positive integer, got 0"),
        (["--missing-rate", "1.5"], "missing_rate: expected a probability between 0 and 1, got 1.5"),
        (["--label-noise", "2"], "label_noise: expected a probability between 0 and 1, got 2.0"),
        (["--format", "gif"], "image_format: expected 'jpg' or 'png', got 'gif'"),
    ],
)
def test_bad_values_exit_1_with_a_clear_message(tmp_path, flags, message):
    res = runner.invoke(vestis.cli.app, ["synth", "--out", str(tmp_path / "x"), *flags])
    assert res.exit_code == 1
    assert f"error: synthetic catalog: {message}" in res.output
    assert not (tmp_path / "x").exists()  # refused before anything is written
