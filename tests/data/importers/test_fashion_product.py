import json
import os
from pathlib import Path

import pytest

from tests.conftest import require_shared, write_image
from vestis.data.importers import import_dataset
from vestis.data.taxonomy import load_taxonomy
from vestis.errors import VestisError

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
LINES = [
    "1,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt",
    # the file's quirk: unquoted commas inside productDisplayName
    "2,Men,Footwear,Shoes,Casual Shoes,White,Winter,2012,Casual,Newfeel Unisex White, Blue and Orange Casual Shoes",
    "3,Women,Apparel,Topwear,Shirts,Blue,Summer,NA,NA,Nike Women's EM Tempo 3.5\" Pink Short",
    "4,Men,Apparel,Topwear,Tshirts,NA,,2011,Sports,NA",
    "5,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,no image for this one",
    "6,Men,Apparel,Topwear",  # a broken line
    "1,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,repeated id",
    "7,Unisex,Footwear,Sandal,Sandals,Brown,Summer,2012,Casual,Sandal under Sandal",
    "8,Unisex,Footwear,Shoes,Sandals,Brown,Summer,2012,Casual,Sandal under Shoes",
    "9,Unisex,Footwear,Sandal,Sandals,Black,Summer,2012,Casual,Another sandal",
]


def _dataset(root: Path, lines: list[str] = LINES, images: tuple[int, ...] = (1, 2, 3, 4, 7, 8, 9)) -> Path:
    src = root / "fashion-product"
    src.mkdir(parents=True)
    (src / "styles.csv").write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
    for i in images:
        write_image(src / "images" / f"{i}.jpg", size=(8, 8))
    return src


EXPECTED = """\
id,image,group,split,title,meta_year,gender,masterCategory,subCategory,articleType,baseColour,season,usage
1,../fashion-product/images/1.jpg,,,Turtle Check Men Navy Blue Shirt,2011,Men,Apparel,Topwear,Shirts,Navy Blue,\
Fall,Casual
2,../fashion-product/images/2.jpg,,,"Newfeel Unisex White, Blue and Orange Casual Shoes",2012,Men,Footwear,Shoes,\
Casual Shoes,White,Winter,Casual
3,../fashion-product/images/3.jpg,,,"Nike Women's EM Tempo 3.5"" Pink Short",,Women,Apparel,Topwear,Shirts,Blue,Summer,
4,../fashion-product/images/4.jpg,,,,2011,Men,Apparel,Topwear,Tshirts,,,Sports
7,../fashion-product/images/7.jpg,,,Sandal under Sandal,2012,Unisex,Footwear,Sandal,Sandals,Brown,Summer,Casual
8,../fashion-product/images/8.jpg,,,Sandal under Shoes,2012,Unisex,Footwear,Shoes,Sandals,Brown,Summer,Casual
9,../fashion-product/images/9.jpg,,,Another sandal,2012,Unisex,Footwear,Sandal,Sandals,Black,Summer,Casual
"""


def test_manifest_report_and_taxonomy(tmp_path):
    src = _dataset(tmp_path)
    out = tmp_path / "out"
    report = import_dataset("fashion-product", src, out)
    assert (out / "manifest.csv").read_text() == EXPECTED
    assert report.rows_read == 10
    assert report.rows_written == 7
    assert report.skipped == {"no image": 1, "unparseable line": 1, "duplicate id": 1}
    assert report.examples["no image"] == ["styles.csv:6: images/5.jpg not found"]
    assert report.examples["unparseable line"] == ["styles.csv:7: expected 10 fields, got 4"]
    assert report.examples["duplicate id"] == ["styles.csv:8: id '1' already seen"]
    assert report.rows_read == report.rows_written + report.rows_skipped
    # Sandals: 2 rows under Sandal, 1 under Shoes -> placed under Sandal, the conflict reported
    assert report.details["hierarchy_conflicts"] == {"Sandals": {"Sandal": 2, "Shoes": 1}}
    on_disk = json.loads((out / "import_report.json").read_text())
    assert on_disk["skipped"] == report.skipped and on_disk["rows_written"] == 7

    tax = load_taxonomy(out / "taxonomy.yaml")
    assert tax.name == "fashion-product"
    assert tax.category_attribute == "articleType"
    assert tax.names == ["gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage"]
    assert tax["articleType"].values == ("Casual Shoes", "Sandals", "Shirts", "Tshirts")
    assert tax["baseColour"].values == ("Black", "Blue", "Brown", "Navy Blue", "White")
    assert tax["usage"].values == ("Casual", "Sports")
    assert dict(tax.hierarchy) == {"Sandal": ("Sandals",), "Shoes": ("Casual Shoes",), "Topwear": ("Shirts", "Tshirts")}
    assert tax.metadata == ("year",)
    assert tax["baseColour"].roi == "large" and tax["articleType"].roi == "large" and tax["season"].roi is None
    assert all(a.kind == "single" for a in tax)


def test_min_count_folds_into_other_or_drops(tmp_path):
    src = _dataset(tmp_path)
    report = import_dataset("fashion-product", src, tmp_path / "other", min_count=2)
    tax = load_taxonomy(tmp_path / "other" / "taxonomy.yaml")
    # Casual Shoes (1) and Tshirts (1) fold; Sandals (3) and Shirts (2) stay
    assert tax["articleType"].values == ("Sandals", "Shirts", "other")
    assert report.folded["articleType"] == {"Casual Shoes": 1, "Tshirts": 1}
    # "other" has no single parent: it stays out of the hierarchy
    assert dict(tax.hierarchy) == {"Sandal": ("Sandals",), "Topwear": ("Shirts",)}
    # gender: Men 3, Unisex 3, Women 1
    assert tax["gender"].values == ("Men", "Unisex", "other")
    # usage: Casual 5, Sports 1 -> Casual + other
    assert tax["usage"].values == ("Casual", "other")
    rows = (tmp_path / "other" / "manifest.csv").read_text().splitlines()
    assert rows[4].endswith(",Men,Apparel,Topwear,other,,,other")

    report = import_dataset("fashion-product", src, tmp_path / "drop", min_count=2, rare="drop")
    tax = load_taxonomy(tmp_path / "drop" / "taxonomy.yaml")
    assert tax["articleType"].values == ("Sandals", "Shirts")
    assert report.labels_dropped["articleType: rare value (< 2 examples) dropped"] == 2
    # season (Summer 4 of 7), usage (Casual 5 of 6) and baseColour (Brown 2 of 7) keep one value each:
    # a single-label attribute needs two, so they leave the taxonomy and the manifest
    assert tax.names == ["gender", "masterCategory", "subCategory", "articleType"]
    assert sorted(report.removed_attributes) == ["baseColour", "season", "usage"]
    assert report.removed_attributes["usage"] == "a single-label attribute needs two values, only 'Casual' is left"
    rows = (tmp_path / "drop" / "manifest.csv").read_text().splitlines()
    assert rows[0] == "id,image,group,split,title,meta_year,gender,masterCategory,subCategory,articleType"
    assert rows[4] == "4,../fashion-product/images/4.jpg,,,,2011,Men,Apparel,Topwear,"


def test_copy_writes_images_beside_the_manifest(tmp_path):
    src = _dataset(tmp_path, LINES[:2], images=(1, 2))
    out = tmp_path / "out"
    report = import_dataset("fashion-product", src, out, copy=True)
    rows = (out / "manifest.csv").read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == ["images/1.jpg", "images/2.jpg"]
    assert (out / "images" / "1.jpg").read_bytes() == (src / "images" / "1.jpg").read_bytes()
    # two rows: attributes with a single value (gender: Men) carry nothing to learn and are left out
    assert report.removed_attributes["gender"] == "a single-label attribute needs two values, only 'Men' is left"
    assert rows[0] == "id,image,group,split,title,meta_year,masterCategory,subCategory,articleType,baseColour,season"


def test_bad_header_is_an_error_with_file_and_line(tmp_path):
    src = tmp_path / "fp"
    src.mkdir()
    (src / "styles.csv").write_text("id,gender\n1,Men\n")
    with pytest.raises(VestisError, match=r"styles\.csv:1: header: missing column\(s\) \['masterCategory'"):
        import_dataset("fashion-product", src, tmp_path / "out")
    with pytest.raises(VestisError, match=r"styles\.csv.*not found"):
        import_dataset("fashion-product", tmp_path, tmp_path / "out")


@pytest.mark.realdata
def test_real_fashion_product(tmp_path):
    from vestis.data.validate import validate_file

    src = require_shared("fashion-product")
    lines = [x for x in (src / "styles.csv").read_text(encoding="utf-8").splitlines()[1:] if x.strip()]
    ids = [x.split(",", 1)[0] for x in lines]
    with_image = {p.stem for p in (src / "images").iterdir()}
    assert len(lines) == 44_446
    expected_written = sum(i in with_image for i in ids)
    assert expected_written == 8_222

    out = tmp_path / "fp"
    report = import_dataset("fashion-product", src, out)
    assert report.rows_read == 44_446
    assert report.rows_written == 8_222
    assert report.skipped == {"no image": 44_446 - 8_222}

    manifest, taxonomy, problems = validate_file(out / "manifest.csv", check_images=False)
    assert problems == []
    assert len(manifest) == 8_222
    assert {r.id for r in manifest} == {i for i in ids if i in with_image}
    assert all(manifest.image_path(r).is_file() for r in manifest)
    assert os.path.relpath(src / "images" / "15970.jpg", out) == manifest.records[0].image
    # the three master categories of the image subset, and every row's year as metadata
    assert set(taxonomy["masterCategory"].values) >= {"Apparel", "Footwear", "Accessories"}
    assert sum("year" in r.meta for r in manifest) == 8_222
