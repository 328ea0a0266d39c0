"""Outfit composites from product photos: the studio mask, exact boxes and object types, group-aware splits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vestis.data.composites import OBJECT_TYPES, build_composites, product_mask
from vestis.errors import VestisError

# one saturated colour per product kind, so a scene's pixels tell which product they show
COLOURS = {"Topwear": (220, 20, 20), "Bottomwear": (20, 20, 220), "Dress": (20, 180, 20), "Shoes": (200, 0, 200)}
TYPE = {"Topwear": "upper-body", "Bottomwear": "lower-body", "Dress": "full-body", "Shoes": "footwear"}


def studio_shot(colour, w=60, h=80, box=(10, 15, 50, 70)) -> np.ndarray:
    img = np.full((h, w, 3), 255, np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = colour
    return img


def test_the_mask_is_the_product_on_a_white_studio_background():
    img = studio_shot((90, 60, 30))
    img[30:40, 20:30] = 255  # a white print inside the garment: still garment
    img[2, 2] = (0, 0, 0)  # a speck of dust on the background: not garment
    img[5:7, 55:58] = (250, 250, 250)  # near-white: background at the default threshold
    want = np.zeros(img.shape[:2], bool)
    want[15:70, 10:50] = True
    np.testing.assert_array_equal(product_mask(img), want)
    with pytest.raises(VestisError, match=r"\(H, W, 3\)"):
        product_mask(img[..., 0])


@pytest.fixture
def catalog(tmp_path):
    rows = ["id,image,split,subCategory"]
    (tmp_path / "img").mkdir()
    for i in range(24):
        kind = list(COLOURS)[i % 4] if i < 20 else "Watches"  # watches have no object type: never used
        Image.fromarray(studio_shot(COLOURS.get(kind, (0, 0, 0)))).save(tmp_path / "img" / f"p{i}.png")
        split = "test" if i % 6 == 0 else "train"
        rows.append(f"p{i},img/p{i}.png,{split},{kind}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "manifest.csv"


@pytest.mark.parametrize("mode", ["cutout", "card"])
def test_boxes_types_and_splits(catalog, tmp_path, mode):
    res = build_composites(catalog, tmp_path / "out", n=12, size=128, mode=mode, seed=3)
    assert set(res.annotations) == {"train", "test"}  # no val row in this manifest
    ids = {"test": {f"p{i}" for i in range(0, 20, 6)}, "train": {f"p{i}" for i in range(20) if i % 6}}
    for split, path in res.annotations.items():
        doc = json.loads(path.read_text())
        assert [c["name"] for c in doc["categories"]] == list(OBJECT_TYPES)
        assert {a["product_id"] for a in doc["annotations"]} <= ids[split]  # a test product only in test scenes
        for im in doc["images"]:
            scene = np.asarray(Image.open(path.parent / im["file_name"]).convert("RGB")).astype(int)
            boxes = [a for a in doc["annotations"] if a["image_id"] == im["id"]]
            assert 1 <= len(boxes) <= 4
            for a in boxes:
                kind = a["attributes"]["subCategory"][0]
                assert OBJECT_TYPES[a["category_id"] - 1] == TYPE[kind]
                x, y, w, h = a["bbox"]
                crop = scene[y : y + h, x : x + w]
                near = (np.abs(crop - np.array(COLOURS[kind])).max(axis=2) < 60).mean()
                if mode == "cutout":  # the box is tight around the garment's own colour (JPEG blurs edges)
                    assert near > 0.6, (split, im["file_name"], a)
                    assert a["area"] <= w * h
                else:  # a card shows the white studio background around the garment too
                    assert near > 0.2 and (np.abs(crop - 255).max(axis=2) < 40).mean() > 0.1


def test_bad_requests(catalog, tmp_path):
    with pytest.raises(VestisError, match="no label column 'articleType'"):
        build_composites(catalog, tmp_path / "o", type_column="articleType")
    with pytest.raises(VestisError, match="mode"):
        build_composites(catalog, tmp_path / "o", mode="collage")
    with pytest.raises(VestisError, match="no product whose"):
        build_composites(catalog, tmp_path / "o", types={"Jackets": "upper-body"})


def test_synth_scenes_from_a_manifest(catalog, tmp_path):
    from typer.testing import CliRunner

    import vestis.cli

    run = CliRunner().invoke
    res = run(vestis.cli.app, ["synth", "--out", str(tmp_path / "o"), "--scenes", "--from", str(catalog), "--n", "6",
                               "--size", "96", "--mode", "card"])  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "o" / "scenes" / "test" / "annotations.json").read_text())
    assert doc["images"][0]["width"] == 96 and doc["annotations"]
    assert "boxes of" in res.output
    res = run(vestis.cli.app, ["synth", "--out", str(tmp_path / "p"), "--from", str(catalog)])
    assert res.exit_code == 1 and "pass --scenes" in res.output
