import json
from pathlib import Path

from PIL import Image

from tests.conftest import write_image
from vestis.data.importers import import_dataset
from vestis.data.taxonomy import load_taxonomy

CATEGORIES = [
    {"id": 0, "name": "shirt, blouse", "supercategory": "upperbody", "level": 2},
    {"id": 1, "name": "pants", "supercategory": "lowerbody", "level": 2},
    {"id": 2, "name": "dress", "supercategory": "wholebody", "level": 2},
    {"id": 3, "name": "neckline", "supercategory": "garment parts", "level": 2},
    {"id": 4, "name": "zipper", "supercategory": "closures", "level": 2},
]
ATTRIBUTES = [
    {"id": 7, "name": "maxi (length)", "supercategory": "length", "level": 1},
    {"id": 0, "name": "symmetrical", "supercategory": "silhouette", "level": 1},
    {"id": 1, "name": "regular (fit)", "supercategory": "silhouette", "level": 1},
    {"id": 2, "name": "v-neck", "supercategory": "neckline type", "level": 1},
    {"id": 3, "name": "round (neck)", "supercategory": "neckline type", "level": 1},
    {"id": 4, "name": "floral", "supercategory": "textile pattern", "level": 1},
    {"id": 5, "name": "fly (opening)", "supercategory": "opening type", "level": 1},
]


def _ann(aid: int, image_id: int, cid: int, bbox: list[float], attrs: list[int]) -> dict:
    return {"id": aid, "image_id": image_id, "category_id": cid, "bbox": bbox, "attribute_ids": attrs, "iscrowd": 0}


TRAIN = {
    "images": [{"id": i, "file_name": f"{n}.jpg", "width": 100, "height": 100} for i, n in enumerate("abcde", 1)],
    "annotations": [
        _ann(11, 1, 0, [10, 10, 40, 40], [4]),  # shirt
        _ann(12, 1, 1, [10, 50, 40, 45], [1, 5]),  # pants: the largest whole item of image a
        _ann(13, 1, 3, [20, 12, 10, 5], [2]),  # neckline part, centre inside the shirt
        _ann(21, 2, 3, [0, 0, 50, 50], [3]),  # a part larger than the dress: never the main item
        _ann(22, 2, 2, [0, 0, 40, 40], [7, 99]),  # 99: no such attribute
        _ann(41, 3, 0, [0, 0, 10, 10], []),  # image c has no file
        _ann(51, 4, 42, [0, 0, 10, 10], []),  # unknown category
    ],
    "categories": CATEGORIES,
    "attributes": ATTRIBUTES,
}
VAL = {
    "images": [{"id": 1, "file_name": "f.jpg", "width": 100, "height": 100}],
    "annotations": [_ann(61, 1, 2, [0, 0, 10, 10], [0])],
    "categories": CATEGORIES,
    "attributes": ATTRIBUTES,
}


def _dataset(root: Path) -> Path:
    src = root / "imat"
    src.mkdir()
    (src / "instances_attributes_train2020.json").write_text(json.dumps(TRAIN))
    (src / "instances_attributes_val2020.json").write_text(json.dumps(VAL))
    for n in "abde":
        write_image(src / "train" / f"{n}.jpg", size=(100, 100))
    write_image(src / "test" / "f.jpg", size=(100, 100))  # the CVDF archive puts val images in test/
    return src


# attribute groups in the order of their first attribute id (the file lists id 7 first)
EXPECTED = """\
id,image,group,split,title,category,silhouette,neckline_type,textile_pattern,opening_type,length
a,../imat/train/a.jpg,,train,,pants,regular (fit),v-neck,floral,fly (opening),
b,../imat/train/b.jpg,,train,,dress,,round (neck),,,maxi (length)
f,../imat/test/f.jpg,,val,,dress,symmetrical,,,,
"""


def test_one_row_per_image(tmp_path):
    src = _dataset(tmp_path)
    out = tmp_path / "out"
    report = import_dataset("imaterialist-2021", src, out)
    assert (out / "manifest.csv").read_text() == EXPECTED
    assert (report.rows_read, report.rows_written) == (6, 3)
    assert report.skipped == {"no image": 1, "no annotation": 2}
    assert report.labels_dropped == {
        "attributes: unknown attribute id": 1,
        "category: annotation with an unknown category_id": 1,
    }
    tax = load_taxonomy(out / "taxonomy.yaml")
    assert tax["category"].values == ("shirt, blouse", "pants", "dress", "neckline", "zipper")
    assert dict(tax.hierarchy) == {
        "upperbody": ("shirt, blouse",),
        "lowerbody": ("pants",),
        "wholebody": ("dress",),
        "garment parts": ("neckline",),
        "closures": ("zipper",),
    }
    assert tax["silhouette"].values == ("symmetrical", "regular (fit)")
    assert all(tax[g].kind == "multi" for g in tax.names[1:])
    assert tax["neckline_type"].roi == "small" and tax["textile_pattern"].roi == "large"


EXPECTED_CROPS = """\
id,image,group,split,title,category,silhouette,neckline_type,textile_pattern,opening_type,length
a-11,images/a-11.jpg,a,train,,"shirt, blouse",,v-neck,floral,,
a-12,images/a-12.jpg,a,train,,pants,regular (fit),,,fly (opening),
b-22,images/b-22.jpg,b,train,,dress,,round (neck),,,maxi (length)
f-61,images/f-61.jpg,f,val,,dress,symmetrical,,,,
"""


def test_crop_one_row_per_item_with_the_parts_inside(tmp_path):
    src = _dataset(tmp_path)
    out = tmp_path / "out"
    report = import_dataset("imaterialist-2021", src, out, crop=True)
    assert (out / "manifest.csv").read_text() == EXPECTED_CROPS
    assert (report.rows_read, report.rows_written) == (6, 4)
    assert report.skipped == {"no image": 1, "unknown value": 1}
    with Image.open(out / "images" / "a-12.jpg") as im:
        assert im.size == (40, 45)


def test_groups_keep_the_chosen_supercategories(tmp_path):
    src = _dataset(tmp_path)
    report = import_dataset("imaterialist-2021", src, tmp_path / "out", groups=["neckline type", "length"])
    lines = (tmp_path / "out" / "manifest.csv").read_text().splitlines()
    assert lines[0] == "id,image,group,split,title,category,neckline_type,length"
    assert lines[1:] == [
        "a,../imat/train/a.jpg,,train,,pants,v-neck,",
        "b,../imat/train/b.jpg,,train,,dress,round (neck),maxi (length)",
        "f,../imat/test/f.jpg,,val,,dress,,",
    ]
    # attributes of groups left out on purpose are not "unknown"; id 99 still is
    assert report.labels_dropped["attributes: unknown attribute id"] == 1
