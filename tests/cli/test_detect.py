"""``vestis detect``: COCO results that pycocotools loads, and metrics equal to COCOeval's on the written files."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import vestis.cli
from tests.inference.conftest import make_checkpoint
from tests.inference.detector_fixtures import FULL_IMAGE_BIAS, full_image_checkpoint, sigmoid

COCO = pytest.importorskip("pycocotools.coco").COCO
COCOeval = pytest.importorskip("pycocotools.cocoeval").COCOeval

runner = CliRunner()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    res = runner.invoke(vestis.cli.app, ["synth", "-o", str(out), "--scenes", "--n", "8", "--size", "64"])
    assert res.exit_code == 0, res.output
    return out / "scenes" / "annotations.json"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return full_image_checkpoint(tmp_path_factory.mktemp("det") / "det.ckpt")


def _coco(path: Path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _cocoeval(gt: Path, results: Path) -> np.ndarray:
    """COCOeval's summary numbers (mAP, AP50, AP75, ..., AR@100 at index 8) from the files alone."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt))
        ev = COCOeval(coco, coco.loadRes(str(results)), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_results_of_an_annotations_file(tmp_path, scenes, ckpt):
    out = tmp_path / "boxes.json"
    res = runner.invoke(vestis.cli.app, ["detect", str(ckpt), str(scenes), "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    results = json.loads(out.read_text())
    doc = json.loads(scenes.read_text())
    # the whole-image detector: per image an upper-body and a footwear box covering the image, by score
    expected = [
        {"image_id": im["id"], "category_id": c, "bbox": [0.0, 0.0, float(im["width"]), float(im["height"])]}
        for im in doc["images"]
        for c in (1, 4)
    ]
    assert [{k: v for k, v in r.items() if k != "score"} for r in results] == expected
    scores = [r["score"] for r in results]
    np.testing.assert_allclose(scores, [sigmoid(FULL_IMAGE_BIAS[0]), sigmoid(FULL_IMAGE_BIAS[3])] * 2, rtol=1e-6)
    assert len(_coco(scenes).loadRes(str(out)).getAnnIds()) == len(results)
    metrics = json.loads((tmp_path / "boxes.metrics.json").read_text())
    assert metrics["min_score"] == 0.0 and metrics["images"] == len(doc["images"])
    stats = _cocoeval(scenes, out)
    assert [metrics[k] for k in ("map", "ap50", "ap75", "ar100")] == pytest.approx(
        [stats[0], stats[1], stats[2], stats[8]]
    )
    assert "mAP" in res.output and "AR@100" in res.output and "footwear" in res.output


def test_metrics_against_ground_truth_match_cocoeval(tmp_path, scenes, ckpt):
    # ground truth with a whole-image upper-body box added to each scene: the detector finds those, not the others
    doc = json.loads(scenes.read_text())
    for im in doc["images"]:
        doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": im["id"], "category_id": 1,
                                   "bbox": [0, 0, im["width"], im["height"]], "area": im["width"] * im["height"],
                                   "iscrowd": 0})  # fmt: skip
    gt = scenes.parent / "gt_whole.json"
    gt.write_text(json.dumps(doc))
    out = tmp_path / "folder.json"
    args = ["detect", str(ckpt), str(scenes.parent / "images"), "--gt", str(gt), "--out", str(out), "--device", "cpu"]
    res = runner.invoke(vestis.cli.app, args)
    assert res.exit_code == 0, res.output
    results = json.loads(out.read_text())
    names = {im["id"]: Path(im["file_name"]).name for im in doc["images"]}
    listing = json.loads((tmp_path / "folder.images.json").read_text())
    # a folder's images take the ground truth's ids, matched by file
    assert {im["id"]: Path(im["file_name"]).name for im in listing["images"]} == names
    assert {r["image_id"] for r in results} == set(names)
    metrics = json.loads((tmp_path / "folder.metrics.json").read_text())
    stats = _cocoeval(gt, out)
    assert 0 < metrics["map"] < 1
    assert [metrics[k] for k in ("map", "ap50", "ap75", "ar100")] == pytest.approx(
        [stats[0], stats[1], stats[2], stats[8]]
    )


def test_min_score_folders_without_ground_truth_and_refusals(tmp_path, scenes, ckpt):
    out = tmp_path / "b.json"
    args = ["detect", str(ckpt), str(scenes.parent / "images"), "--out", str(out), "--device", "cpu"]
    res = runner.invoke(vestis.cli.app, [*args, "--min-score", "0.9"])  # footwear's 0.88 is below
    assert res.exit_code == 0, res.output
    results = json.loads(out.read_text())
    assert [r["category_id"] for r in results] == [1, 1] and [r["image_id"] for r in results] == [1, 2]
    assert not (tmp_path / "b.metrics.json").exists()
    classifier = make_checkpoint(tmp_path / "classifier.ckpt")
    res = runner.invoke(vestis.cli.app, ["detect", str(classifier), str(scenes), "--out", str(tmp_path / "c.json")])
    assert res.exit_code == 1 and "is not a detector" in res.output
    res = runner.invoke(vestis.cli.app, [*args[:2], str(scenes), str(scenes.parent / "images"), "--out", str(out)])
    assert res.exit_code == 1 and "the only IMAGES argument" in res.output
    stray = tmp_path / "stray.png"
    stray.write_bytes((scenes.parent / "images" / "scene_000000.jpg").read_bytes())
    res = runner.invoke(vestis.cli.app, ["detect", str(ckpt), str(stray), "--gt", str(scenes), "--out", str(out)])
    assert res.exit_code == 1 and "not an image of the ground truth" in res.output
