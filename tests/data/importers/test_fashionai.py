from pathlib import Path

from tests.conftest import write_image
from vestis.data.importers import import_dataset
from vestis.data.importers.fashionai import DIMENSIONS
from vestis.data.taxonomy import load_taxonomy

LABELS = """\
Images/skirt_length_labels/a1.jpg,skirt_length_labels,nnynnn
Images/skirt_length_labels/a2.jpg,skirt_length_labels,nnnmyn
Images/collar_design_labels/c1.jpg,collar_design_labels,ynnnn
Images/collar_design_labels/c2.jpg,collar_design_labels,nnmnm
Images/collar_design_labels/c3.jpg,collar_design_labels,ynnyn
Images/collar_design_labels/c4.jpg,collar_design_labels,nnyn
Images/sleeve_length_labels/s1.jpg,sleeve_length_labels,nnnnnynnn
Images/sleeve_length_labels/s2.jpg,sleeve_length_labels,nnnnnnnyn
Images/hat_labels/h1.jpg,hat_labels,yn
Images/skirt_length_labels/a1.jpg,skirt_length_labels,nynnnn
Images/neckline_design_labels/n1.jpg,neckline_design_labels,nnnnnnnnny
a line that is not a label
"""
IMAGES = ("skirt_length_labels/a1", "skirt_length_labels/a2", "collar_design_labels/c1", "collar_design_labels/c2")
IMAGES += ("collar_design_labels/c3", "collar_design_labels/c4", "sleeve_length_labels/s1", "hat_labels/h1")
IMAGES += ("neckline_design_labels/n1",)

EXPECTED = """\
id,image,group,split,title,skirt_length,coat_length,collar_design,lapel_design,neck_design,neckline_design,\
pant_length,sleeve_length
skirt_length_labels/a1,../fai/Images/skirt_length_labels/a1.jpg,,,,Knee Length,,,,,,,
skirt_length_labels/a2,../fai/Images/skirt_length_labels/a2.jpg,,,,Ankle Length,,,,,,,
collar_design_labels/c1,../fai/Images/collar_design_labels/c1.jpg,,,,,,Invisible,,,,,
sleeve_length_labels/s1,../fai/Images/sleeve_length_labels/s1.jpg,,,,,,,,,,,3/4 Sleeves
neckline_design_labels/n1,../fai/Images/neckline_design_labels/n1.jpg,,,,,,,,,One Shoulder Neckline,,
"""


def _dataset(root: Path) -> Path:
    src = root / "fai"
    (src / "Annotations").mkdir(parents=True)
    (src / "Annotations" / "label.csv").write_text(LABELS)
    for name in IMAGES:
        write_image(src / "Images" / f"{name}.jpg", size=(8, 8))
    return src


def test_manifest_report_and_taxonomy(tmp_path):
    src = _dataset(tmp_path)
    out = tmp_path / "out"
    report = import_dataset("fashionai", src, out)
    assert (out / "manifest.csv").read_text() == EXPECTED
    assert (report.rows_read, report.rows_written) == (12, 5)
    assert report.skipped == {
        "no 'y'": 1,
        "several 'y'": 1,
        "unknown value": 1,
        "no image": 1,
        "unknown dimension": 1,
        "duplicate id": 1,
        "unparseable line": 1,
    }
    assert report.examples["unknown value"] == ["label.csv:6: expected 5 characters of y/n/m for collar_design_labels"]
    assert report.details["maybe_marks"] == 1  # a2 (c2 has maybes but no 'y': skipped before counting)

    tax = load_taxonomy(out / "taxonomy.yaml")
    assert tax.names == [
        "skirt_length",
        "coat_length",
        "collar_design",
        "lapel_design",
        "neck_design",
        "neckline_design",
        "pant_length",
        "sleeve_length",
    ]
    assert tax.category_attribute is None
    assert [len(a.values) for a in tax] == [6, 8, 5, 5, 5, 10, 6, 9]
    assert tax["coat_length"].values[-1] == "Ankle&Floor Length"
    assert tax["neck_design"].values == (
        "Invisible",
        "Turtle Neck",
        "Ruffle Semi-High Collar",
        "Low Turtle Neck",
        "Draped Collar",
    )
    assert {a.name for a in tax if a.roi == "large"} == {"skirt_length", "coat_length", "pant_length"}
    assert all(a.kind == "single" for a in tax)
    assert set(DIMENSIONS) == {f"{a}_labels" for a in tax.names}


def test_header_line_is_not_a_row_and_same_image_in_two_dimensions_merges(tmp_path):
    src = tmp_path / "fai"
    (src / "Annotations").mkdir(parents=True)
    (src / "Annotations" / "label.csv").write_text(
        "image_id,class,label\n"
        "Images/x/p.jpg,pant_length_labels,nnnnny\n"
        "Images/x/p.jpg,sleeve_length_labels,nynnnnnnn\n"
    )
    write_image(src / "Images" / "x" / "p.jpg", size=(8, 8))
    report = import_dataset("fashionai", src, tmp_path / "out")
    assert (report.rows_read, report.rows_written) == (2, 1)
    assert report.skipped == {"merged with an earlier row (same image)": 1}
    row = (tmp_path / "out" / "manifest.csv").read_text().splitlines()[1]
    assert row == "x/p,../fai/Images/x/p.jpg,,,,,,,,,,Full Length,Sleeveless"
