import json
from pathlib import Path

import pytest

from tests.conftest import write_image
from vestis.data.importers import import_dataset
from vestis.data.importers.deepfashion2 import CATEGORIES, TABLE1
from vestis.data.taxonomy import load_taxonomy
from vestis.errors import VestisError


def _item(cid: int, box: list[float]) -> dict:
    name = CATEGORIES[cid - 1] if 1 <= cid <= 13 else "?"
    return {"category_id": cid, "category_name": name, "bounding_box": box, "style": 1, "occlusion": 1}


ANNOS = {
    "train/000001": {
        "source": "user",
        "pair_id": 1,
        "item1": _item(1, [10, 10, 30, 40]),
        "item2": _item(8, [5, 30, 35, 60]),
    },
    "train/000002": {
        "source": "shop",
        "pair_id": 1,
        "item1": _item(11, [0, 0, 20, 20]),
        "item2": _item(14, [0, 0, 5, 5]),  # no such category
        "item3": _item(5, [5, 5, 5, 10]),  # no width
    },
    "train/000003": {"source": "user", "pair_id": 2, "item1": _item(99, [0, 0, 5, 5])},
    "train/000004": {"source": "user", "pair_id": 3, "item1": _item(1, [0, 0, 5, 5])},  # image missing
    # equal areas: the first item is the main one
    "validation/000001": {
        "source": "user",
        "pair_id": 7,
        "item2": _item(9, [0, 0, 10, 20]),
        "item1": _item(6, [1, 2, 11, 22]),
    },
}


def _dataset(root: Path) -> Path:
    src = root / "df2"
    for key, anno in ANNOS.items():
        split, stem = key.split("/")
        path = src / split / "annos" / f"{stem}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(anno))
        if stem != "000004" or split != "train":
            write_image(src / split / "image" / f"{stem}.jpg", size=(40, 64))
    (src / "train" / "annos" / "000005.json").write_text("{not json")
    write_image(src / "train" / "image" / "000005.jpg", size=(40, 64))
    return src


EXPECTED = """\
id,image,group,split,title,meta_source,category,object_type
train/000001,../df2/train/image/000001.jpg,train/pair-1,train,,user,trousers,lower-body
train/000002,../df2/train/image/000002.jpg,train/pair-1,train,,shop,long sleeve dress,full-body
validation/000001,../df2/validation/image/000001.jpg,validation/pair-7,val,,user,sling,upper-body
"""


def test_manifest_coco_and_report(tmp_path):
    src = _dataset(tmp_path)
    out = tmp_path / "out"
    report = import_dataset("deepfashion2", src, out)
    assert (out / "manifest.csv").read_text() == EXPECTED
    assert (report.rows_read, report.rows_written) == (6, 3)
    assert report.skipped == {"no image": 1, "no valid item": 1, "unparseable file": 1}
    assert report.details["items_dropped"] == {"unknown category_id": 2, "box without area": 1}

    coco = json.loads((out / "coco.json").read_text())
    assert coco["categories"] == [
        {"id": 1, "name": "upper-body", "supercategory": "garment"},
        {"id": 2, "name": "lower-body", "supercategory": "garment"},
        {"id": 3, "name": "full-body", "supercategory": "garment"},
    ]
    assert coco["images"] == [
        {"id": 1, "file_name": "../df2/train/image/000001.jpg", "width": 40, "height": 64},
        {"id": 2, "file_name": "../df2/train/image/000002.jpg", "width": 40, "height": 64},
        {"id": 3, "file_name": "../df2/validation/image/000001.jpg", "width": 40, "height": 64},
    ]
    got = [
        (a["id"], a["image_id"], a["category_id"], a["bbox"], a["area"], a["df2_category"]) for a in coco["annotations"]
    ]
    assert got == [
        (1, 1, 1, [10.0, 10.0, 20.0, 30.0], 600.0, "short sleeve top"),
        (2, 1, 2, [5.0, 30.0, 30.0, 30.0], 900.0, "trousers"),
        (3, 2, 3, [0.0, 0.0, 20.0, 20.0], 400.0, "long sleeve dress"),
        (4, 3, 1, [1.0, 2.0, 10.0, 20.0], 200.0, "sling"),
        (5, 3, 2, [0.0, 0.0, 10.0, 20.0], 200.0, "skirt"),
    ]
    assert [a["df2_category_id"] for a in coco["annotations"]] == [1, 8, 11, 6, 9]
    assert all(a["iscrowd"] == 0 for a in coco["annotations"])
    assert report.files == ["manifest.csv", "taxonomy.yaml", "coco.json", "import_report.json"]

    tax = load_taxonomy(out / "taxonomy.yaml")
    assert tax.category_attribute == "category"
    assert tax["category"].values == CATEGORIES
    assert tax["object_type"].values == ("upper-body", "lower-body", "full-body")
    assert tax.object_type("vest dress") == "full-body"
    assert tax.metadata == ("source",)


def test_table1_object_types():
    # Papadopoulos et al., Table 1: six upper-body, three lower-body and four full-body DF2 categories
    assert TABLE1["upper-body"] == (
        "short sleeve top",
        "long sleeve top",
        "short sleeve outwear",
        "long sleeve outwear",
        "vest",
        "sling",
    )
    assert TABLE1["lower-body"] == ("shorts", "trousers", "skirt")
    assert TABLE1["full-body"] == ("short sleeve dress", "long sleeve dress", "vest dress", "sling dress")
    assert sorted(c for cs in TABLE1.values() for c in cs) == sorted(CATEGORIES)


def test_single_split_folder_and_missing_layout(tmp_path):
    src = _dataset(tmp_path)
    report = import_dataset("deepfashion2", src / "validation", tmp_path / "val")
    assert (tmp_path / "val" / "manifest.csv").read_text().splitlines()[1] == (
        "000001,../df2/validation/image/000001.jpg,pair-7,,,user,sling,upper-body"
    )
    assert report.rows_written == 1
    with pytest.raises(VestisError, match="no annos/ folder"):
        import_dataset("deepfashion2", src / "train" / "image", tmp_path / "x")
