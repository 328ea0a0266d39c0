"""COCO box data for the detector: reading, class mapping, letterbox, balancing statistics and down-sampling."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from vestis.data.detection import (
    OBJECT_TYPES,
    DetectionDataset,
    box_class_stats,
    collate_detection,
    downsample_to_mean_ir,
    letterbox,
    letterbox_boxes,
    object_type,
    read_coco_detection,
    unletterbox_boxes,
    upsample_to_mean_ir,
)
from vestis.data.synthetic import generate_catalog
from vestis.errors import VestisError


def _write(root: Path, doc: dict[str, Any]) -> Path:
    path = root / "annotations.json"
    path.write_text(json.dumps(doc))
    return path


def _scene(root: Path) -> dict[str, Any]:
    (root / "images").mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 0, 0), (10, 5, 20, 15))  # a red 10 x 10 square at x 10..20, y 5..15
    img.save(root / "images" / "a.png")
    Image.new("RGB", (30, 30)).save(root / "images" / "b.png")
    return {
        "images": [
            {"id": 7, "file_name": "a.png", "width": 40, "height": 20},
            {"id": 9, "file_name": "b.png", "width": 30, "height": 30},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 5, 10, 10]},
            {"id": 2, "image_id": 7, "category_id": 4, "bbox": [30, 10, 20, 20]},  # clipped to the image
            {"id": 3, "image_id": 7, "category_id": 2, "bbox": [0, 0, 5, 5], "iscrowd": 1},  # crowd: left out
            {"id": 4, "image_id": 9, "category_id": 2, "bbox": [3, 3, 0, 8]},  # no width: left out
        ],
        "categories": [
            {"id": 1, "name": "upper body"},
            {"id": 2, "name": "Lower_Body"},
            {"id": 4, "name": "footwear"},
        ],
    }


def test_object_type_spellings_and_deepfashion2() -> None:
    assert object_type("upper body") == object_type("Upper-Body") == object_type("upper_body") == "upper-body"
    assert object_type("short sleeve top") == "upper-body"
    assert object_type("Sling Dress") == "full-body"
    assert object_type("trousers") == "lower-body"
    assert object_type("hat") is None


def test_read_maps_clips_and_skips(tmp_path: Path) -> None:
    images, names = read_coco_detection(_write(tmp_path, _scene(tmp_path)))
    assert names == OBJECT_TYPES
    a, b = images
    assert a.path == tmp_path / "images" / "a.png" and (a.width, a.height, a.image_id) == (40, 20, 7)
    assert a.boxes.tolist() == [[10, 5, 20, 15], [30, 10, 40, 20]]
    assert a.labels.tolist() == [0, 3]
    assert b.boxes.shape == (0, 4) and b.labels.shape == (0,)
    own, own_names = read_coco_detection(tmp_path / "annotations.json", classes=None)
    assert own_names == ("upper body", "Lower_Body", "footwear") and own[0].labels.tolist() == [0, 2]


def test_read_synthetic_scenes(tmp_path: Path) -> None:
    result = generate_catalog(tmp_path, n=4, size=32, scenes=True, scene_count=2, workers=1, image_format="png")
    ds = DetectionDataset(result.scenes_annotations, image_size=96)
    assert len(ds) == 2 and ds.classes == OBJECT_TYPES
    doc = json.loads(result.scenes_annotations.read_text())
    assert sum(len(im.boxes) for im in ds.images) == len(doc["annotations"]) > 0
    x, target = ds[0]
    assert x.shape == (3, 96, 96) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    first = doc["annotations"][0]
    x0, y0, w, h = first["bbox"]
    scale = 96 / doc["images"][0]["width"]
    assert target["boxes"][0].tolist() == pytest.approx([x0 * scale, y0 * scale, (x0 + w) * scale, (y0 + h) * scale])
    name = next(c["name"] for c in doc["categories"] if c["id"] == first["category_id"])
    assert OBJECT_TYPES[int(target["labels"][0])] == object_type(name)


def test_letterbox_moves_boxes_with_the_pixels(tmp_path: Path) -> None:
    ds = DetectionDataset(_write(tmp_path, _scene(tmp_path)), image_size=80)
    x, target = ds[0]
    lb = target["letterbox"]
    assert (lb.scale_x, lb.scale_y, lb.pad_x, lb.pad_y) == (2.0, 2.0, 0, 20)  # 40 x 20 -> 80 x 40, centred
    x0, y0, x1, y1 = target["boxes"][0].tolist()
    assert (x0, y0, x1, y1) == (20, 30, 40, 50)
    red = x[0] - x[1]  # (S, S) red minus green
    assert bool((red[int(y0) + 1 : int(y1) - 1, int(x0) + 1 : int(x1) - 1] > 0.9).all())
    assert float(red[int(y0) - 2, int(x0) + 5]) < 0.1 and float(red[int(y0) + 5, int(x1) + 1]) < 0.1
    assert float(x[:, :20].abs().max()) == 0.0  # the padding band above the image
    back = unletterbox_boxes(target["boxes"], lb)
    assert np.allclose(back, ds.images[0].boxes)
    images, targets = collate_detection([ds[0], ds[1]])
    assert images.shape == (2, 3, 80, 80) and [len(t["boxes"]) for t in targets] == [2, 0]


def test_letterbox_tall_image_and_normalisation(tmp_path: Path) -> None:
    img, lb = letterbox(Image.new("RGB", (10, 40), (255, 255, 255)), 20)
    assert img.size == (20, 20) and (lb.pad_x, lb.pad_y) == (7, 0)
    assert letterbox_boxes(np.array([[0, 0, 10, 40]]), lb).tolist() == [[7, 0, 12, 20]]
    with pytest.raises(VestisError, match="size must be positive"):
        letterbox(img, 0)
    ds = DetectionDataset(_write(tmp_path, _scene(tmp_path)), image_size=40, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x, _ = ds[1]
    assert torch.allclose(x, torch.full_like(x, -1.0))  # a black image (and black padding) -> (0 - 0.5) / 0.5


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["categories"].append({"id": 5, "name": "hat"}), r"categories\[3\]: 'hat' is not one of"),
        (lambda d: d["images"][0].update(file_name="../a.png"), r"images\[0\]: file_name: '../a.png' must be relative"),
        (lambda d: d["images"][1].update(file_name="zz.png"), r"images\[1\]: file_name: 'zz.png' not found"),
        (lambda d: d["images"][1].update(id=7), r"images\[1\]: duplicate image id 7"),
        (lambda d: d["images"][0].update(width=0), r"images\[0\]: width and height"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotations\[0\]: bbox: expected"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]), r"annotations\[0\]: bbox: expected"),
        (lambda d: d["annotations"][1].update(image_id=99), r"annotations\[1\]: image_id 99"),
        (lambda d: d["annotations"][1].update(category_id=3), r"annotations\[1\]: category_id 3"),
        (lambda d: d.update(categories=[]), "categories: expected a non-empty list"),
        (lambda d: d.update(images={}), "images and annotations: expected lists"),
    ],
)
def test_malformed_json_names_the_entry(tmp_path: Path, edit: Any, message: str) -> None:
    doc = _scene(tmp_path)
    edit(doc)
    path = _write(tmp_path, doc)
    with pytest.raises(VestisError, match=message) as e:
        read_coco_detection(path)
    assert str(path) in str(e.value)


def test_unparseable_json_and_size_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "annotations.json"
    path.write_text('{"images": [\n  oops]}')
    with pytest.raises(VestisError, match=r"annotations.json:2: json: not valid JSON"):
        read_coco_detection(path)
    doc = _scene(tmp_path)
    doc["images"][1]["width"] = 31
    ds = DetectionDataset(_write(tmp_path, doc), image_size=32)
    with pytest.raises(VestisError, match="image is 30x30, the JSON says 31x30"):
        ds[1]


def test_box_class_stats_hand_case() -> None:
    # counts: class 0 in 4 images, class 1 in 2 -> IR (1, 2), MeanIR 1.5
    sets = [[0], [0, 0], [0], [1], [0, 1]]
    s = box_class_stats(sets, classes=[0, 1, 2])
    assert s["counts"] == {"0": 4, "1": 2, "2": 0}
    assert s["ir"] == {"0": 1.0, "1": 2.0, "2": None}
    assert s["mean_ir"] == pytest.approx(1.5)
    # only the image holding both classes has a non-zero SCUMBLE: 1 - sqrt(1 * 2) / 1.5
    assert s["scumble"] == pytest.approx((1 - math.sqrt(2) / 1.5) / 5)


def test_downsample_single_label_reaches_mean_ir_one() -> None:
    sets = [[0]] * 6 + [[1]] * 3 + [[2]] * 2 + [[]]
    before = box_class_stats(sets)
    assert before["mean_ir"] == pytest.approx((1 + 2 + 3) / 3)
    keep = downsample_to_mean_ir(sets, seed=0)
    after = box_class_stats([sets[i] for i in keep])
    assert after["counts"] == {"0": 2, "1": 2, "2": 2}
    assert after["mean_ir"] == 1.0 and after["scumble"] == 0.0
    assert 11 in keep and 11 not in downsample_to_mean_ir(sets, seed=0, keep_empty=False)  # the empty image
    assert keep == downsample_to_mean_ir(sets, seed=0)
    assert len({tuple(downsample_to_mean_ir(sets, seed=s)) for s in range(10)}) > 1  # the choice is random
    assert downsample_to_mean_ir([[], []]) == [0, 1]


def test_downsample_multi_label_caps_every_class() -> None:
    rng = np.random.default_rng(0)
    sets = [
        sorted(set(rng.choice(4, size=rng.integers(1, 3), p=[0.55, 0.25, 0.15, 0.05]).tolist())) for _ in range(300)
    ]
    before = box_class_stats(sets, classes=range(4))
    keep = downsample_to_mean_ir(sets, seed=1)
    after = box_class_stats([sets[i] for i in keep], classes=range(4))
    rarest = min(before["counts"], key=before["counts"].get)
    cap = before["counts"][rarest]
    assert after["counts"][rarest] == cap  # the rarest class keeps every image
    assert all(c <= cap for c in after["counts"].values())
    assert after["mean_ir"] < before["mean_ir"]


def test_upsample_single_label_reaches_mean_ir_one() -> None:
    sets = [[0]] * 6 + [[1]] * 3 + [[2]] * 2 + [[]]
    picked = upsample_to_mean_ir(sets, seed=0)
    assert picked[: len(sets)] == list(range(len(sets)))  # every image once, then the repeats
    after = box_class_stats([sets[i] for i in picked])
    assert after["counts"] == {"0": 6, "1": 6, "2": 6} and after["mean_ir"] == 1.0
    assert picked == upsample_to_mean_ir(sets, seed=0)
    # class 2 has 2 images: at most 2 uses each reaches only 4 of the 6
    capped = box_class_stats([sets[i] for i in upsample_to_mean_ir(sets, seed=0, max_factor=2)])
    assert capped["counts"] == {"0": 6, "1": 6, "2": 4}


def test_upsample_prefers_images_without_the_frequent_class() -> None:
    sets = [[0]] * 5 + [[0, 1]] + [[1]]  # class 1: 2 images, one of them also holds the frequent class 0
    picked = upsample_to_mean_ir(sets, seed=3)
    repeats = picked[len(sets) :]
    # the image of class 1 alone first, up to max_factor (4 uses: 3 repeats), then the shared one once
    assert repeats == [6, 6, 6, 5]
    assert box_class_stats([sets[i] for i in picked])["counts"] == {"0": 7, "1": 6}
