"""``vestis synth`` in-process: the three outputs, and clear errors for bad flag values."""

import json

import pytest
from typer.testing import CliRunner

import vestis.cli
from vestis.data.catalog import load_catalog
from vestis.data.validate import validate_manifest


def test_synth_writes_a_valid_catalog(tmp_path):
    out = tmp_path / "cat"
    res = CliRunner().invoke(vestis.cli.app, ["synth", "--out", str(out), "--n", "12", "--size", "48", "--scenes"])
    assert res.exit_code == 0, res.output
    assert (out / "manifest.csv").is_file() and (out / "taxonomy.yaml").is_file()
    assert len(list((out / "images").iterdir())) == 12
    manifest, taxonomy = load_catalog(out / "manifest.csv")
    assert len(manifest) == 12 and validate_manifest(manifest, taxonomy) == []
    coco = json.loads((out / "scenes" / "annotations.json").read_text())
    assert coco["images"] and coco["annotations"]
    assert str(out / "images") in res.output


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--n", "0", "n"), ("--missing-rate", "1.5", "missing_rate"), ("--size", "8", "size")],
)
def test_bad_values_exit_1(tmp_path, flag, value, message):
    res = CliRunner().invoke(vestis.cli.app, ["synth", "--out", str(tmp_path / "x"), flag, value])
    assert res.exit_code == 1
    assert "error:" in res.output and message in res.output
    assert not (tmp_path / "x" / "manifest.csv").exists()
