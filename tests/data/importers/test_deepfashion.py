from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_image
from vestis.data.importers import import_dataset
from vestis.data.taxonomy import load_taxonomy
from vestis.errors import VestisError

B1, B2 = "img/Floral_Blouse/img_00000001.jpg", "img/Floral_Blouse/img_00000002.jpg"
J1 = "img/Skinny_Jeans/img_00000001.jpg"
D1, D2, D3, D4 = (f"img/Boho_Dress/img_0000000{i}.jpg" for i in (1, 2, 3, 4))


def _list(path: Path, header: str, rows: list[str]) -> None:
    """An official list file: the row count, a header line, then the rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([str(len(rows)), header, *rows]) + "\n")


def _dataset(root: Path, *, boxes: bool = True) -> Path:
    src = root / "df"
    anno = src / "Anno"
    _list(
        anno / "list_category_cloth.txt",
        "category_name  category_type",
        ["Blouse                       1", "Jeans                        2", "Dress                        3"],
    )
    # names with spaces; "floral" twice in the texture group (merged into one value)
    attrs = ["floral", "abstract print", "denim", "a-line", "peter pan collar", "boho", "floral"]
    types = [1, 1, 2, 3, 4, 5, 1]
    _list(
        anno / "list_attr_cloth.txt",
        "attribute_name  attribute_type",
        [f"{a:<29}{t}" for a, t in zip(attrs, types, strict=True)],
    )
    _list(
        anno / "list_category_img.txt",
        "image_name  category_label",
        [f"{B1}    1", f"{B2}    1", f"{J1}    2", f"{D1}    3", f"{D2}    4", f"{D3}    3", f"{D4}"],
    )
    _list(
        anno / "list_attr_img.txt",
        "image_name  attribute_labels",
        [
            f"{B1}  1 -1 -1 -1 1 -1 -1",
            f"{B2}  -1 1 -1 -1 -1 1 1",
            f"{J1}  -1 -1 1 0 -1 -1 -1",
            f"{D1}  -1 -1 -1 1 -1 1 x",  # malformed: only this row's attributes are lost
        ],
    )
    box_rows = [f"{B1}  005 006 025 020", f"{B2}  000 000 040 030", f"{J1}  010 002 030 028"]
    if boxes:
        _list(anno / "list_bbox.txt", "image_name  x_1  y_1  x_2  y_2", box_rows)
    _list(
        src / "Eval" / "list_eval_partition.txt",
        "image_name  evaluation_status",
        [f"{B1}  train", f"{B2}  val", f"{J1}  test", f"{D1}  train", f"{D2}  train", f"{D3}  test", f"{D4}  val"],
    )
    for name in (B1, B2, J1, D1, D2, D4):
        write_image(src / name, size=(40, 30))
    return src


EXPECTED = """\
id,image,group,split,title,category,texture,fabric,shape,part,style
Floral_Blouse/img_00000001,../df/img/Floral_Blouse/img_00000001.jpg,,train,Floral Blouse,Blouse,floral,,,\
peter pan collar,
Floral_Blouse/img_00000002,../df/img/Floral_Blouse/img_00000002.jpg,,val,Floral Blouse,Blouse,\
floral|abstract print,,,,boho
Skinny_Jeans/img_00000001,../df/img/Skinny_Jeans/img_00000001.jpg,,test,Skinny Jeans,Jeans,,denim,,,
Boho_Dress/img_00000001,../df/img/Boho_Dress/img_00000001.jpg,,train,Boho Dress,Dress,,,,,
"""


def test_manifest_report_and_taxonomy(tmp_path):
    src = _dataset(tmp_path)
    out = tmp_path / "out"
    report = import_dataset("deepfashion-attributes", src, out)
    assert (out / "manifest.csv").read_text() == EXPECTED
    assert (report.rows_read, report.rows_written) == (7, 4)
    assert report.skipped == {"unknown value": 1, "no image": 1, "unparseable line": 1}
    assert report.examples["unknown value"] == ["list_category_img.txt:7: category_label 4 not in 1..3"]
    assert report.labels_dropped == {
        "attributes: unparseable line in list_attr_img.txt (expected 7 values of 1, -1 or 0)": 1
    }
    tax = load_taxonomy(out / "taxonomy.yaml")
    assert tax.category_attribute == "category"
    assert tax["category"].values == ("Blouse", "Jeans", "Dress")
    assert dict(tax.hierarchy) == {"upper-body": ("Blouse",), "lower-body": ("Jeans",), "full-body": ("Dress",)}
    assert [(a.name, a.kind, a.values, a.roi) for a in tax][1:] == [
        ("texture", "multi", ("floral", "abstract print"), "large"),
        ("fabric", "multi", ("denim",), "large"),
        ("shape", "multi", ("a-line",), "large"),
        ("part", "multi", ("peter pan collar",), "small"),
        ("style", "multi", ("boho",), "large"),
    ]


def test_crop_writes_the_box_and_skips_rows_without_one(tmp_path):
    src = _dataset(tmp_path)
    out = tmp_path / "out"
    report = import_dataset("deepfashion-attributes", src, out, crop=True)
    # D1 has an image but no box
    assert report.skipped == {"unknown value": 1, "no image": 1, "unparseable line": 1, "no box": 1}
    rows = (out / "manifest.csv").read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == [
        "images/Floral_Blouse/img_00000001.jpg",
        "images/Floral_Blouse/img_00000002.jpg",
        "images/Skinny_Jeans/img_00000001.jpg",
    ]
    with Image.open(out / "images" / "Floral_Blouse" / "img_00000001.jpg") as im:
        assert im.size == (20, 14)
    with Image.open(out / "images" / "Skinny_Jeans" / "img_00000001.jpg") as im:
        assert im.size == (20, 26)
    # the crop holds the pixels of the box (JPEG re-encoding: close, not equal); one pixel off is far worse
    with Image.open(src / B1) as orig, Image.open(out / "images" / "Floral_Blouse" / "img_00000001.jpg") as im:
        crop = np.asarray(im, dtype=float)
        assert np.abs(crop - np.asarray(orig.crop((5, 6, 25, 20)), dtype=float)).mean() < 4
        assert np.abs(crop - np.asarray(orig.crop((6, 6, 26, 20)), dtype=float)).mean() > 8


def test_crop_needs_the_box_list_and_layout_errors(tmp_path):
    src = _dataset(tmp_path, boxes=False)
    with pytest.raises(VestisError, match="--crop needs the box list"):
        import_dataset("deepfashion-attributes", src, tmp_path / "out", crop=True)
    with pytest.raises(VestisError, match="no Anno/"):
        import_dataset("deepfashion-attributes", tmp_path, tmp_path / "out")
    (src / "Anno" / "list_category_cloth.txt").write_text("3\ncategory_name  category_type\nBlouse 7\n")
    with pytest.raises(VestisError, match=r"list_category_cloth\.txt:3: type: expected a name then one of \[1, 2, 3\]"):
        import_dataset("deepfashion-attributes", src, tmp_path / "out")
