import json
from pathlib import Path

import pytest

from tests.conftest import write_image
from vestis.data.importers import import_dataset
from vestis.data.taxonomy import load_taxonomy
from vestis.errors import VestisError

COCO = {
    "images": [
        {"id": 10, "file_name": "x1.jpg"},  # no size: read from the header
        {"id": 11, "file_name": "x2.jpg", "width": 30, "height": 20},
        {"id": 12, "file_name": "missing.jpg", "width": 30, "height": 20},
        {"id": 13},
        {"id": 10, "file_name": "x3.jpg"},
        {"id": 14, "file_name": "x4.jpg", "width": 30, "height": 20},
    ],
    "annotations": [
        {"id": 100, "image_id": 10, "category_id": 3, "bbox": [1, 2, 10, 5]},
        {
            "id": 101,
            "image_id": 10,
            "category_id": 1,
            "bbox": [0, 0, 4, 4],
            "area": 12.5,
            "iscrowd": 0,
            "segmentation": [[0, 0, 4, 0, 4, 4]],
        },
        {"id": 102, "image_id": 11, "category_id": 3, "bbox": [0, 0, 0, 5]},
        {"id": 103, "image_id": 12, "category_id": 3, "bbox": [0, 0, 5, 5]},
        {"id": 104, "image_id": 11, "category_id": 9, "bbox": [0, 0, 5, 5]},
        {"id": 105, "image_id": 11, "category_id": 1, "bbox": [2, 2, 3, 3]},
    ],
    "categories": [{"id": 3, "name": "top", "supercategory": "garment"}, {"id": 1, "name": "shoe"}],
}


def _dataset(root: Path, coco: dict = COCO) -> Path:
    """The COCO layout: annotations/instances_shop.json and the images in shop/."""
    data = root / "data"
    (data / "annotations").mkdir(parents=True)
    path = data / "annotations" / "instances_shop.json"
    path.write_text(json.dumps(coco))
    for n in ("x1", "x2", "x3", "x4"):
        write_image(data / "shop" / f"{n}.jpg", size=(30, 20))
    return path


EXPECTED = """\
id,image,group,split,title,objects
x1,../data/shop/x1.jpg,,,,shoe|top
x2,../data/shop/x2.jpg,,,,shoe
x4,../data/shop/x4.jpg,,,,
"""


def test_manifest_and_normalised_coco(tmp_path):
    path = _dataset(tmp_path)
    out = tmp_path / "out"
    report = import_dataset("coco", path, out)
    assert (out / "manifest.csv").read_text() == EXPECTED
    assert (report.rows_read, report.rows_written) == (6, 3)
    assert report.skipped == {"no image": 1, "unparseable entry": 1, "duplicate id": 1}
    assert report.details["annotations_dropped"] == {
        "box without area": 1,
        "unknown or skipped image": 1,
        "unknown category_id": 1,
    }
    coco = json.loads((out / "coco.json").read_text())
    assert coco["images"] == [
        {"id": 1, "file_name": "../data/shop/x1.jpg", "width": 30, "height": 20},
        {"id": 2, "file_name": "../data/shop/x2.jpg", "width": 30, "height": 20},
        {"id": 3, "file_name": "../data/shop/x4.jpg", "width": 30, "height": 20},
    ]
    assert coco["annotations"] == [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1.0, 2.0, 10.0, 5.0], "area": 50.0, "iscrowd": 0},
        {
            "id": 2,
            "image_id": 1,
            "category_id": 1,
            "bbox": [0.0, 0.0, 4.0, 4.0],
            "area": 12.5,
            "iscrowd": 0,
            "segmentation": [[0, 0, 4, 0, 4, 4]],
        },
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [2.0, 2.0, 3.0, 3.0], "area": 9.0, "iscrowd": 0},
    ]
    assert coco["categories"] == [
        {"id": 1, "name": "shoe", "supercategory": ""},
        {"id": 3, "name": "top", "supercategory": "garment"},
    ]
    tax = load_taxonomy(out / "taxonomy.yaml")
    assert [(a.name, a.kind, a.values) for a in tax] == [("objects", "multi", ("shoe", "top"))]
    assert tax.name == "instances_shop"


def test_split_option_folder_source_and_errors(tmp_path):
    path = _dataset(tmp_path)
    import_dataset("coco", path.parent.parent, tmp_path / "out", split="val")  # the folder: annotations/*.json
    lines = (tmp_path / "out" / "manifest.csv").read_text().splitlines()
    assert [x.split(",")[3] for x in lines[1:]] == ["val", "val", "val"]
    with pytest.raises(VestisError, match=r"split: expected one of \['train', 'val', 'test'\]"):
        import_dataset("coco", path, tmp_path / "out", split="dev")
    bad = dict(COCO, categories=[{"id": 1, "name": "a|b"}])
    path.write_text(json.dumps(bad))
    with pytest.raises(VestisError, match=r"category 1: expected a non-empty name without '\|'"):
        import_dataset("coco", path, tmp_path / "out")
    path.write_text("{")
    with pytest.raises(VestisError, match=r"instances_shop\.json:1: json: not valid JSON"):
        import_dataset("coco", path, tmp_path / "out")
