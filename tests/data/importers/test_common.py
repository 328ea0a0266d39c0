import json

import pytest

from tests.conftest import write_image
from vestis.data.importers import FORMATS, format_options, import_dataset
from vestis.data.importers._common import ImportContext, Imported, ImportReport, finalize, slug
from vestis.data.manifest import Record, read_manifest
from vestis.data.taxonomy import Attribute, load_taxonomy
from vestis.data.validate import validate_manifest
from vestis.errors import VestisError


def test_registered_formats_and_options():
    assert FORMATS == (
        "clothing-attributes",
        "coco",
        "deepfashion-attributes",
        "deepfashion2",
        "fashion-product",
        "fashionai",
        "folders",
        "imaterialist-2021",
    )
    assert format_options("imaterialist-2021") == {"groups": None, "image_dir": None}
    assert format_options("clothing-attributes") == {"partial_groups": "missing"}
    assert format_options("folders") == {}


def test_dispatch_errors(tmp_path):
    src = tmp_path / "src"
    write_image(src / "colour" / "red" / "a.jpg", size=(8, 8))
    out = tmp_path / "out"
    with pytest.raises(VestisError, match="unknown import format 'nope'; registered: clothing-attributes, coco"):
        import_dataset("nope", src, out)
    with pytest.raises(VestisError, match=r"folders: unknown option\(s\) \['groups'\]; expected none"):
        import_dataset("folders", src, out, groups=["x"])
    crops = r"\['deepfashion-attributes', 'imaterialist-2021'\]"
    with pytest.raises(VestisError, match=r"folders: --crop is not supported; formats with crops: " + crops):
        import_dataset("folders", src, out, crop=True)
    with pytest.raises(VestisError, match=r"rare: expected one of \['other', 'drop'\], got 'keep'"):
        import_dataset("folders", src, out, rare="keep")
    with pytest.raises(VestisError, match="min_count: expected a whole number >= 0, got -1"):
        import_dataset("folders", src, out, min_count=-1)
    with pytest.raises(VestisError, match="dataset not found"):
        import_dataset("folders", tmp_path / "absent", out)
    assert not out.exists()


def _imported() -> Imported:
    def rec(i: int, **labels: tuple[str, ...]) -> Record:
        return Record(id=str(i), image=f"{i}.jpg", labels=dict(labels))

    return Imported(
        records=[
            rec(1, category=("shirt",), collar=("yes",)),
            rec(2, category=("polo",), collar=("no",)),
            rec(3, category=("shirt",), collar=("no",)),
            rec(4, category=("dress",)),
            rec(5, category=("dress",)),
            rec(6, category=("jeans",), rise=("low",)),
            rec(7, rise=("low",)),
            rec(8, collar=("maybe",)),  # not a value of collar
            rec(9, collar=("yes", "no")),  # two values in a single-label attribute
        ],
        attributes=[
            Attribute("category", "single", ("shirt", "polo", "dress", "jeans")),
            Attribute("collar", "single", ("yes", "no"), applies_to=("shirt", "polo")),
            Attribute("rise", "multi", ("low",), applies_to=("jeans",)),
        ],
        category_attribute="category",
        hierarchy={"upper": ["shirt", "polo"], "full": ["dress"], "lower": ["jeans"]},
        name="toy",
    )


def _finalize(tmp_path, **kw) -> ImportReport:
    report = ImportReport("toy", "src", str(tmp_path))
    ctx = ImportContext("toy", tmp_path, tmp_path, copy=False, crop=False, report=report)
    report.rows_read = 9
    return finalize(_imported(), ctx, **kw)


def test_rare_categories_fold_into_other_with_applies_to_and_hierarchy(tmp_path):
    report = _finalize(tmp_path, min_count=2, rare="other")
    tax = load_taxonomy(tmp_path / "taxonomy.yaml")
    assert tax["category"].values == ("shirt", "dress", "other")
    assert report.folded == {"category": {"polo": 1, "jeans": 1}}
    # collar applied to polo, now folded into other; rise applied only to jeans: it follows it into other
    assert tax["collar"].applies_to == ("shirt", "other")
    assert tax["rise"].applies_to == ("other",)
    assert dict(tax.hierarchy) == {"upper": ("shirt",), "full": ("dress",)}
    assert report.labels_dropped == {
        "collar: value not in the taxonomy": 1,
        "collar: several values for a single-label attribute": 1,
    }
    manifest = read_manifest(tmp_path / "manifest.csv")
    assert [r.labels for r in manifest][:2] == [
        {"category": ("shirt",), "collar": ("yes",)},
        {"category": ("other",), "collar": ("no",)},
    ]
    assert [r.labels for r in manifest][7:] == [{}, {}]
    assert validate_manifest(manifest, tax, check_images=False) == []
    on_disk = json.loads((tmp_path / "import_report.json").read_text())
    assert on_disk == report.to_dict()
    assert on_disk["rows_written"] == 9


def test_rare_categories_dropped_remove_what_depends_on_them(tmp_path):
    report = _finalize(tmp_path, min_count=2, rare="drop")
    tax = load_taxonomy(tmp_path / "taxonomy.yaml")
    assert tax["category"].values == ("shirt", "dress")
    assert tax["collar"].applies_to == ("shirt",)
    assert "rise" not in tax
    assert report.removed_attributes == {"rise": "it applies to no category left"}
    assert report.labels_dropped["category: rare value (< 2 examples) dropped"] == 2
    manifest = read_manifest(tmp_path / "manifest.csv")
    assert manifest.attributes == ["category", "collar"]
    assert manifest.records[1].labels == {"collar": ("no",)}
    # row 2 has no category any more: its collar label is not "not applicable"
    assert validate_manifest(manifest, tax, check_images=False) == []


def test_summary_lists_every_class_of_skip():
    report = ImportReport(
        format="x",
        source="s",
        out="o",
        rows_read=5,
        rows_written=3,
        labels_dropped={"c: bad": 1},
        folded={"c": {"v": 2}},
        removed_attributes={"d": "why"},
        files=["manifest.csv"],
    )
    report.skip("no image", "a:1")
    report.skip("no image", "a:2")
    assert report.rows_skipped == 2
    assert report.examples == {"no image": ["a:1", "a:2"]}
    assert report.summary() == (
        "imported x from s into o\n"
        "rows read: 5\n"
        "rows written: 3\n"
        "rows skipped: 2\n"
        "  no image: 2 (e.g. a:1)\n"
        "labels dropped (row kept, label missing): 1\n"
        "  c: bad: 1\n"
        "rare values of c: 1 (2 labels)\n"
        "attribute d left out of the taxonomy: why\n"
        "files: manifest.csv"
    )


def test_examples_are_capped_and_slugs():
    report = ImportReport("x", "s", "o")
    for i in range(8):
        report.skip("r", f"f:{i}")
    assert report.skipped == {"r": 8}
    assert report.examples["r"] == ["f:0", "f:1", "f:2", "f:3", "f:4"]
    assert slug("Textile finishing, manufacturing techniques") == "textile_finishing_manufacturing_techniques"
    assert slug(" neckline type ") == "neckline_type"


def test_values_the_taxonomy_cannot_hold_are_dropped_with_their_labels(tmp_path):
    imported = Imported(
        records=[
            Record(id="1", image="1.jpg", labels={"colour": ("red",)}),
            Record(id="2", image="2.jpg", labels={"colour": ("red|blue",)}),
            Record(id="3", image="3.jpg", labels={"colour": ("blue",)}),
        ],
        attributes=[Attribute("colour", "single", ("blue", "red", "red|blue"))],
    )
    report = ImportReport("toy", "src", str(tmp_path))
    ctx = ImportContext("toy", tmp_path, tmp_path, copy=False, crop=False, report=report)
    finalize(imported, ctx)
    assert load_taxonomy(tmp_path / "taxonomy.yaml")["colour"].values == ("blue", "red")
    assert report.details["invalid_values"] == {"colour": ["red|blue"]}
    assert report.labels_dropped == {"colour: value not in the taxonomy": 1}
    assert (tmp_path / "manifest.csv").read_text().splitlines()[2] == "2,2.jpg,,,,"
