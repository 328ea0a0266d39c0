from pathlib import Path

import pytest

from tests.conftest import write_image
from vestis.data.importers import import_dataset
from vestis.data.taxonomy import load_taxonomy
from vestis.errors import VestisError


def _catalog(root: Path) -> Path:
    src = root / "catalog"
    for rel in (
        "category/shirt/a.jpg",
        "category/shirt/b.jpg",
        "category/shirt/d.png",
        "category/dress/c.jpg",
        "colour/red/a.jpg",
        "colour/red/c.jpg",
        "colour/red/d.jpg",  # another file than d.png: same id, not the same item
        "colour/blue/a.jpg",
        "sale/yes/b.jpg",
    ):
        write_image(src / rel, size=(8, 8))
    (src / "notes.txt").write_text("not an attribute")
    (src / "category" / "readme.md").write_text("not a value")
    (src / "category" / "shirt" / "x.txt").write_text("not an image")
    (src / ".hidden").mkdir()
    return src


EXPECTED = """\
id,image,group,split,title,category,colour,sale
c,../catalog/category/dress/c.jpg,,,,dress,red,
a,../catalog/category/shirt/a.jpg,,,,shirt,blue|red,
b,../catalog/category/shirt/b.jpg,,,,shirt,,yes
d,../catalog/category/shirt/d.png,,,,shirt,,
"""


def test_merged_rows_kinds_and_category(tmp_path):
    src = _catalog(tmp_path)
    out = tmp_path / "out"
    report = import_dataset("folders", src, out)
    assert (out / "manifest.csv").read_text() == EXPECTED
    assert (report.rows_read, report.rows_written) == (9, 4)
    assert report.skipped == {"merged with an earlier row (same file name)": 4, "duplicate id": 1}
    assert report.examples["duplicate id"] == ["colour/red/d.jpg: id 'd' already used by d.png"]
    assert report.details["ignored_files"] == 3
    tax = load_taxonomy(out / "taxonomy.yaml")
    assert tax.name == "catalog"
    assert tax.category_attribute == "category"
    # colour: item a sits under two values -> multi; sale: one value -> a presence flag (multi)
    assert [(a.name, a.kind, a.values) for a in tax] == [
        ("category", "single", ("dress", "shirt")),
        ("colour", "multi", ("blue", "red")),
        ("sale", "multi", ("yes",)),
    ]


def test_copy_and_reserved_names(tmp_path):
    src = _catalog(tmp_path)
    out = tmp_path / "out"
    import_dataset("folders", src, out, copy=True)
    rows = (out / "manifest.csv").read_text().splitlines()
    assert rows[1] == "c,images/category/dress/c.jpg,,,,dress,red,"
    assert (out / "images" / "category" / "dress" / "c.jpg").is_file()
    write_image(src / "split" / "train" / "z.jpg", size=(8, 8))
    with pytest.raises(VestisError, match="attribute 'split' is a reserved manifest column"):
        import_dataset("folders", src, out)
