"""``vestis explain --out``: a non-empty folder is refused unless --overwrite, which removes only the files the
earlier run's explain.json lists, so explain.json and the overlays in the folder always agree."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import vestis.cli
from tests.service.outfit_fixtures import stage2_checkpoint
from vestis.errors import VestisError
from vestis.inference.explain import explain

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return stage2_checkpoint(tmp_path_factory.mktemp("exp") / "rnn_va.ckpt", image_size=64)


def test_an_earlier_runs_files_go_and_nothing_else(ckpt, tmp_path):
    crop = tmp_path / "crop.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(crop)
    out = tmp_path / "why"
    out.mkdir()
    earlier = [f"garment{k}_{s}.png" for k in range(3) for s in ("a1_category", "a2_attributes")]
    for name in [*earlier, "garment7_a1_category.png", "notes.txt"]:
        (out / name).write_bytes(b"x")
    listing = {"garments": [{"files": {"a1": earlier[2 * k], "a2": earlier[2 * k + 1]}} for k in range(3)]}
    listing["garments"][0]["files"]["evil"] = "../outside.txt"  # never followed out of the folder
    (tmp_path / "outside.txt").write_text("keep")
    (out / "explain.json").write_text(json.dumps(listing))
    with pytest.raises(VestisError, match="not empty; pass --overwrite"):
        explain(ckpt, crop, out, device="cpu")
    res = runner.invoke(vestis.cli.app, ["explain", str(ckpt), str(crop), "--out", str(out), "--device", "cpu"])
    assert res.exit_code != 0 and "--overwrite" in res.output
    res = runner.invoke(
        vestis.cli.app, ["explain", str(ckpt), str(crop), "--out", str(out), "--device", "cpu", "--overwrite"]
    )
    assert res.exit_code == 0, res.output
    body = json.loads((out / "explain.json").read_text())
    assert [g["files"] for g in body["garments"]] == [
        {"a1": "garment0_a1_category.png", "a2": "garment0_a2_attributes.png"}
    ]
    # this run's overlays, its explain.json, and the files the earlier explain.json did not list
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["garment0_a1_category.png", "garment0_a2_attributes.png", "explain.json", "garment7_a1_category.png",
         "notes.txt"]
    )  # fmt: skip
    assert Image.open(out / "garment0_a1_category.png").size == (30, 40)
    assert (tmp_path / "outside.txt").read_text() == "keep"
