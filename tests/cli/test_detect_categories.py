"""``vestis detect``: COCO results use the category ids of the annotations they refer to, matched by name."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vestis.cli
from tests.inference.detector_fixtures import full_image_checkpoint
from vestis.data.detection import OBJECT_TYPES, object_type

COCO = pytest.importorskip("pycocotools.coco").COCO
COCOeval = pytest.importorskip("pycocotools.cocoeval").COCOeval

runner = CliRunner()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    res = runner.invoke(vestis.cli.app, ["synth", "-o", str(out), "--scenes", "--n", "6", "--size", "64"])
    assert res.exit_code == 0, res.output
    return out / "scenes" / "annotations.json"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return full_image_checkpoint(tmp_path_factory.mktemp("det") / "det.ckpt")


def _renumbered(scenes: Path, ids: dict[str, int], name: str = "renumbered.json") -> Path:
    """The annotations with other category ids (and another category order), as the COCO importer keeps them."""
    doc = json.loads(scenes.read_text())
    old = {c["id"]: object_type(c["name"]) for c in doc["categories"]}
    doc["categories"] = [{"id": ids[n], "name": n} for n in reversed(OBJECT_TYPES)]
    for a in doc["annotations"]:
        a["category_id"] = ids[old[a["category_id"]]]
    # a whole-image upper-body garment in every image: the whole-image detector's upper-body box matches it
    next_id = max(a["id"] for a in doc["annotations"]) + 1
    for k, im in enumerate(doc["images"]):
        w, h = im["width"], im["height"]
        doc["annotations"].append({"id": next_id + k, "image_id": im["id"], "category_id": ids["upper-body"],
                                   "bbox": [0, 0, w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
    p = scenes.parent / name
    p.write_text(json.dumps(doc))
    return p


def _stats(gt: Path, results: Path):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt))
        ev = COCOeval(coco, coco.loadRes(str(results)), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_results_carry_the_files_ids_and_score_as_vestis_does(tmp_path, scenes, ckpt):
    ids = {"upper-body": 7, "lower-body": 3, "full-body": 12, "footwear": 1}
    gt = _renumbered(scenes, ids)
    out = tmp_path / "boxes.json"
    res = runner.invoke(vestis.cli.app, ["detect", str(ckpt), str(gt), "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    results = json.loads(out.read_text())
    # the whole-image detector finds upper-body and footwear: ids 7 and 1 of this file, not the detector's 1 and 4
    assert {r["category_id"] for r in results} == {7, 1}
    cats = json.loads(out.with_name("boxes.categories.json").read_text())
    assert cats == [{"id": ids[c], "name": c} for c in OBJECT_TYPES]
    metrics = json.loads(out.with_name("boxes.metrics.json").read_text())
    assert metrics["categories"] == cats
    # pycocotools on the written files gives the mAP vestis reports
    stats = _stats(gt, out)
    assert metrics["map"] == pytest.approx(stats[0], abs=1e-6) and metrics["ap50"] == pytest.approx(stats[1], abs=1e-6)
    assert stats[1] > 0.1  # the upper-body boxes matched: the ids line up
    # with the detector's own ids the upper-body boxes would claim id 1 (footwear in this file) and match nothing
    res = runner.invoke(
        vestis.cli.app, ["detect", str(ckpt), str(gt), "--out", str(tmp_path / "d.json"), "--device", "cpu",
                         "--detector-ids"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert _stats(gt, tmp_path / "d.json")[1] < stats[1] / 2


def test_categories_that_are_not_the_object_types_are_refused(tmp_path, scenes, ckpt):
    doc = json.loads(scenes.read_text())
    # DeepFashion2-like: two categories that are both upper-body garments
    up = next(c["id"] for c in doc["categories"] if object_type(c["name"]) == "upper-body")
    doc["categories"] = [c for c in doc["categories"] if c["id"] != up] + [
        {"id": 101, "name": "short sleeve top"},
        {"id": 102, "name": "long sleeve top"},
    ]
    for a in doc["annotations"]:
        if a["category_id"] == up:
            a["category_id"] = 101
    gt = scenes.parent / "df2.json"
    gt.write_text(json.dumps(doc))
    out = tmp_path / "boxes.json"
    res = runner.invoke(vestis.cli.app, ["detect", str(ckpt), str(gt), "--out", str(out), "--device", "cpu"])
    assert res.exit_code != 0 and "no category named 'upper-body'" in res.output and "--detector-ids" in res.output
    assert not out.exists()
    res = runner.invoke(
        vestis.cli.app, ["detect", str(ckpt), str(gt), "--out", str(out), "--device", "cpu", "--detector-ids"]
    )
    assert res.exit_code == 0, res.output
    assert {r["category_id"] for r in json.loads(out.read_text())} == {1, 4}
    cats = json.loads(out.with_name("boxes.categories.json").read_text())
    assert cats == [{"id": i + 1, "name": c} for i, c in enumerate(OBJECT_TYPES)]
