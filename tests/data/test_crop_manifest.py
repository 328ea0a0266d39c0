"""The crops manifest of stage 2: greedy matching, crops of the predicted boxes, labels from the ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import vestis.cli
from tests.inference.detector_fixtures import fixed_centernet, full_image_checkpoint, sigmoid
from vestis.data.catalog import load_catalog
from vestis.data.composites import build_composites
from vestis.data.crop_manifest import CROP_METADATA, build_crops, match_predictions
from vestis.data.detection import OBJECT_TYPES, object_type
from vestis.data.taxonomy import Taxonomy
from vestis.data.validate import validate_manifest
from vestis.errors import VestisError
from vestis.inference.detector import Detector

runner = CliRunner()

G0, G1 = [0, 0, 10, 10], [20, 0, 30, 10]


def test_matching_is_greedy_by_score_each_ground_truth_once():
    preds = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 0, 30, 10], [50, 50, 60, 60]], dtype=np.float32)
    scores = np.array([0.5, 0.9, 0.1, 0.8])
    match, iou = match_predictions(preds, scores, np.array([G0, G1]), 0.5)
    # p1 (0.9) takes G0 (IoU 90/110); p3 overlaps nothing; p0 (0.5) finds G0 taken and G1 at IoU 0; p2 takes G1
    assert match.tolist() == [-1, 0, 1, -1]
    np.testing.assert_allclose(iou, [0, 90 / 110, 1, 0], rtol=1e-6)
    # above p1's IoU: p1 is unmatched and G0 is left to p0
    match, iou = match_predictions(preds, scores, np.array([G0, G1]), 0.85)
    assert match.tolist() == [0, -1, 1, -1]
    np.testing.assert_allclose(iou, [1, 0, 1, 0])


def test_matching_takes_the_highest_iou_of_any_class():
    gts = np.array([G0, G1])
    # (4, 0, 24, 10): G0 60 / 240 = 0.25, G1 40 / 260; (6, 0, 26, 10): G0 40 / 260, G1 60 / 240
    match, iou = match_predictions(np.array([[4, 0, 24, 10]]), np.array([1.0]), gts, 0.2)
    assert match.tolist() == [0] and iou[0] == pytest.approx(0.25)
    match, iou = match_predictions(np.array([[6, 0, 26, 10]]), np.array([1.0]), gts, 0.2)
    assert match.tolist() == [1] and iou[0] == pytest.approx(0.25)
    match, _ = match_predictions(np.array([[6, 0, 26, 10]]), np.array([1.0]), gts, 0.26)
    assert match.tolist() == [-1]
    assert match_predictions(np.zeros((0, 4)), np.zeros(0), gts)[0].shape == (0,)
    assert match_predictions(np.array([G0]), np.array([1.0]), np.zeros((0, 4)))[0].tolist() == [-1]
    with pytest.raises(VestisError, match=r"\(0, 1\]"):
        match_predictions(np.array([G0]), np.array([1.0]), gts, 0.0)


# --- a hand-made scene and a detector with hand-set maps (64 px, square: the letterbox is the identity) -------

TAXONOMY = {
    "name": "tiny",
    "category_attribute": "category",
    "hierarchy": {"upper": ["t-shirt"], "lower": ["trousers"], "feet": ["boot"]},
    "attributes": [
        {"name": "category", "kind": "single", "values": ["t-shirt", "boot", "trousers"]},
        {"name": "pattern", "kind": "single", "values": ["solid", "striped"]},
        {"name": "colour", "kind": "single", "values": ["red", "blue"]},
        {"name": "sleeve", "kind": "single", "values": ["short", "long"], "applies_to": ["t-shirt"]},
        {"name": "occasion", "kind": "multi", "values": ["casual", "formal", "sport"]},
    ],
}
# (class, x, y, logit, (w, h), (dx, dy)) in stride-4 cells -> boxes in pixels
PEAKS = [
    (0, 4, 4, 4.0, (6.0, 6.0), (0.0, 0.0)),  # upper-body (4, 4, 28, 28): rank 0, GT0 exactly
    (3, 12, 12, 2.0, (4.0, 4.0), (0.0, 0.0)),  # footwear (40, 40, 56, 56): rank 2, GT1 at IoU 224 / 288
    (1, 12, 3, 3.0, (2.0, 2.0), (0.0, 0.0)),  # lower-body (44, 8, 52, 16): rank 1, overlaps no box
]
ANNOTATIONS = [
    {"category_id": 1, "bbox": [4, 4, 24, 24], "product_id": "p1",
     "attributes": {"category": ["t-shirt"], "colour": ["red"], "sleeve": ["long"], "occasion": ["casual", "sport"]}},
    {"category_id": 4, "bbox": [42, 40, 16, 16], "product_id": 7,  # sleeve: not for boots; fabric: not in taxonomy
     "attributes": {"category": ["boot"], "colour": "blue", "sleeve": ["short"], "fabric": ["cotton"],
                    "occasion": "formal"}},
    {"category_id": 2, "bbox": [2, 40, 20, 20], "product_id": "p3", "attributes": {"category": ["trousers"]}},
]  # fmt: skip


def _detector() -> Detector:
    return Detector(fixed_centernet(64, PEAKS), classes=OBJECT_TYPES, image_size=64, pad_value=0, device="cpu")


def _scene(folder: Path, products: tuple[str, ...] = ("p1", 7, "p3")) -> Path:
    """``folder/annotations.json`` with one 64 x 64 scene (a smooth gradient, so a JPEG crop stays close)."""
    yy, xx = np.mgrid[0:64, 0:64]
    arr = np.stack([xx * 4, yy * 4, (xx + yy) * 2], axis=-1).astype(np.uint8)
    (folder / "images").mkdir(parents=True)
    Image.fromarray(arr).save(folder / "images" / "s.png")
    anns = [{**a, "id": i + 1, "image_id": 1, "iscrowd": 0, "product_id": p}
            for i, (a, p) in enumerate(zip(ANNOTATIONS, products, strict=True))]  # fmt: skip
    doc = {
        "images": [{"id": 1, "file_name": "images/s.png", "width": 64, "height": 64}],
        "annotations": anns,
        "categories": [{"id": i + 1, "name": t} for i, t in enumerate(OBJECT_TYPES)],
    }
    path = folder / "annotations.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_crops_of_predicted_boxes_with_the_ground_truth_labels(tmp_path):
    ann = _scene(tmp_path / "train")
    res = build_crops(_detector(), [ann], tmp_path / "crops", taxonomy=Taxonomy.from_dict(TAXONOMY))
    m, tax = load_catalog(res.manifest)
    assert validate_manifest(m, tax) == []  # images checked too
    assert [r.id for r in m] == ["s_0", "s_2"]  # predictions by score: upper-body, lower-body (unmatched), footwear
    r0, r2 = m.records
    assert r0.labels == {
        "category": ("t-shirt",),
        "colour": ("red",),
        "sleeve": ("long",),
        "occasion": ("casual", "sport"),
    }
    assert r2.labels == {"category": ("boot",), "colour": ("blue",), "occasion": ("formal",)}
    assert (r0.group, r2.group) == ("p1", "7") and (r0.split, r2.split) == ("train", "train")
    assert r0.meta == {"object_type": "upper-body", "score": f"{sigmoid(4.0):.4f}", "iou": "1.0000", "scene": "s"}
    assert r2.meta == {
        "object_type": "footwear",
        "score": f"{sigmoid(2.0):.4f}",
        "iou": f"{224 / 288:.4f}",
        "scene": "s",
    }
    # the crop is of the predicted box (40, 40, 56, 56), not of the ground truth's (42, 40, 58, 56)
    scene = np.asarray(Image.open(ann.parent / "images" / "s.png"), dtype=np.float32)
    for rec, (x0, y0, x1, y1) in ((r0, (4, 4, 28, 28)), (r2, (40, 40, 56, 56))):
        crop = np.asarray(Image.open(m.image_path(rec)), dtype=np.float32)
        assert crop.shape == (y1 - y0, x1 - x0, 3)
        assert np.abs(crop - scene[y0:y1, x0:x1]).mean() < 3.0
    # the taxonomy: the attributes that occur (pattern does not), the category, the crops' metadata
    assert tax.names == ["category", "colour", "sleeve", "occasion"] and tax.category_attribute == "category"
    assert tax.metadata == CROP_METADATA and tax["sleeve"].applies_to == ("t-shirt",) and tax.hierarchy
    s = json.loads(res.summary_path.read_text())
    assert (s["scenes"], s["predictions"], s["matched"], s["unmatched_predictions"]) == (1, 3, 2, 1)
    assert (s["gt_boxes"], s["missed_gt"], s["matched_same_class"]) == (3, 1, 2)
    assert s["per_class"]["lower-body"] == {"predictions": 1, "matched": 0, "gt_boxes": 1, "missed": 1}
    assert s["labels_left_out"] == {"not-applicable": 1, "unknown-attribute": 1}
    assert s["unknown_attributes"] == {"fabric": 1} and s["splits"] == {"train": 2}


def test_iou_threshold_margin_and_split_options(tmp_path):
    ann = _scene(tmp_path / "misc")
    tax = Taxonomy.from_dict(TAXONOMY)
    # IoU 0.78 of the footwear box is under 0.8: one crop; --split names the split of a folder that is none
    res = build_crops(_detector(), [ann], tmp_path / "a", taxonomy=tax, iou=0.8, split="val", margin=0.25)
    m, _ = load_catalog(res.manifest)
    assert [(r.id, r.split) for r in m] == [("s_0", "val")]
    # margin 0.25 of the 24 px box: 6 px more on each side, (0, 0) .. (34, 34) after clipping
    assert Image.open(m.image_path(m.records[0])).size == (34, 34)
    train = _scene(tmp_path / "train", products=("q1", "q2", "q3"))
    res = build_crops(_detector(), [train], tmp_path / "b", taxonomy=tax, split_from_path=False, split="test")
    assert {r.split for r in load_catalog(res.manifest)[0]} == {"test"}
    # several files: scene ids carry the folder; splits from the folder (train) or --split
    res = build_crops(_detector(), [ann, train], tmp_path / "c", taxonomy=tax, split="val")
    m, t = load_catalog(res.manifest)
    assert [(r.id, r.split) for r in m] == [("misc_s_0", "val"), ("misc_s_2", "val"), ("train_s_0", "train"),
                                            ("train_s_2", "train")]  # fmt: skip
    assert validate_manifest(m, t) == []
    with pytest.raises(VestisError, match="given twice"):
        build_crops(_detector(), [ann, ann], tmp_path / "d", taxonomy=tax)
    with pytest.raises(VestisError, match="--category"):
        build_crops(_detector(), [ann], tmp_path / "d", taxonomy=tax, category="occasion")


def test_a_rerun_refuses_unless_overwrite(tmp_path):
    ann = _scene(tmp_path / "train")
    tax = Taxonomy.from_dict(TAXONOMY)
    out = tmp_path / "crops"
    build_crops(_detector(), [ann], out, taxonomy=tax)
    (out / "images" / "stale.jpg").write_bytes(b"x")
    with pytest.raises(VestisError, match="--overwrite"):
        build_crops(_detector(), [ann], out, taxonomy=tax)
    build_crops(_detector(), [ann], out, taxonomy=tax, overwrite=True)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["s_0.jpg", "s_2.jpg"]


# --- the command on `vestis synth --scenes` and on composites, with a whole-image detector ---------------------


def _expected_matches(annotations: Path, iou: float) -> dict[str, int]:
    """Naive reference: the whole-image boxes (upper-body, then footwear, by score) take the largest boxes."""
    doc = json.loads(annotations.read_text())
    out = {}
    for im in doc["images"]:
        anns = [a for a in doc["annotations"] if a["image_id"] == im["id"]]
        area = im["width"] * im["height"]
        ranked = sorted(range(len(anns)), key=lambda j: -anns[j]["bbox"][2] * anns[j]["bbox"][3])  # stable
        stem = Path(im["file_name"]).stem
        for k, j in enumerate(ranked[:2]):
            if anns[j]["bbox"][2] * anns[j]["bbox"][3] / area >= iou:
                out[f"{stem}_{k}"] = anns[j]["id"]
    return out


def test_vestis_crops_on_synthetic_scenes_validates(tmp_path):
    syn = tmp_path / "syn"
    res = runner.invoke(vestis.cli.app, ["synth", "-o", str(syn), "--scenes", "--n", "8", "--size", "64"])
    assert res.exit_code == 0, res.output
    ckpt = full_image_checkpoint(tmp_path / "det.ckpt")
    ann = syn / "scenes" / "annotations.json"
    args = ["crops", str(ckpt), str(ann), "--out", str(tmp_path / "crops"), "--taxonomy", str(syn / "taxonomy.yaml"),
            "--iou", "0.1", "--split", "train", "--device", "cpu", "--no-progress"]  # fmt: skip
    res = runner.invoke(vestis.cli.app, args)
    assert res.exit_code == 0, res.output
    assert "crops cut with --margin 0: give `vestis pipeline` the same --margin" in res.output
    assert "warning: crops of detector classes" not in res.output  # the default object types
    expected = _expected_matches(ann, 0.1)
    assert expected, "the scene set should have boxes of more than a tenth of the image"
    m, _ = load_catalog(tmp_path / "crops" / "manifest.csv")
    assert {r.id for r in m} == set(expected)
    gt = {a["id"]: a for a in json.loads(ann.read_text())["annotations"]}
    for r in m:
        assert r.labels == {k: tuple(v) for k, v in gt[expected[r.id]]["attributes"].items()}
        assert r.split == "train" and r.group == r.meta["scene"] and r.meta["object_type"] in ("upper-body", "footwear")
    res = runner.invoke(vestis.cli.app, ["validate", str(tmp_path / "crops" / "manifest.csv")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(vestis.cli.app, args)  # a rerun into the same folder
    assert res.exit_code == 1 and "--overwrite" in res.output


def test_vestis_crops_on_composites_takes_splits_from_folders(tmp_path):
    syn = tmp_path / "syn"
    res = runner.invoke(vestis.cli.app, ["synth", "-o", str(syn), "--n", "24", "--size", "32", "--missing-rate", "0"])
    assert res.exit_code == 0, res.output
    hierarchy = load_catalog(syn / "manifest.csv")[1].hierarchy  # "upper body": [t-shirt, ...], ...
    types = {c: object_type(parent) for parent, cs in hierarchy.items() for c in cs}
    comp = build_composites(syn / "manifest.csv", tmp_path / "comp", n=6, size=64, type_column="category", types=types,
                            mode="card", val_fraction=0.25, test_fraction=0.25)  # fmt: skip
    files = [str(p) for _, p in sorted(comp.annotations.items())]
    assert len(files) >= 2
    ckpt = full_image_checkpoint(tmp_path / "det.ckpt")
    out = tmp_path / "crops"
    args = ["crops", str(ckpt), *files, "--out", str(out), "--taxonomy", str(syn / "taxonomy.yaml"),
            "--iou", "0.05", "--device", "cpu", "--no-progress"]  # fmt: skip
    res = runner.invoke(vestis.cli.app, args)
    assert res.exit_code == 0, res.output
    m, tax = load_catalog(out / "manifest.csv")
    assert len(m) > 0 and validate_manifest(m, tax) == []
    products = {a["product_id"] for f in files for a in json.loads(Path(f).read_text())["annotations"]}
    assert {r.split for r in m} <= set(comp.annotations) and all(r.id.startswith(f"{r.split}_") for r in m)
    assert {r.group for r in m} <= products  # a crop's group is its product (validated: one split each)
