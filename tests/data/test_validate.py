"""Every validation problem kind on small manifests with real tiny image files, and clean_catalog."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import require_shared, write_image
from vestis.data.manifest import Manifest, Record, read_manifest
from vestis.data.taxonomy import Taxonomy, save_taxonomy
from vestis.data.validate import (
    ValidationProblem,
    clean_catalog,
    problem_kind,
    summarize,
    validate_file,
    validate_manifest,
)
from vestis.errors import VestisError

TAX = Taxonomy.from_dict(
    {
        "category_attribute": "category",
        "attributes": [
            {"name": "category", "values": ["shirt", "trousers"]},
            {"name": "colour", "values": ["red", "blue", "green"]},
            {"name": "closure", "values": ["buttons", "zip"], "applies_to": ["trousers"]},
            {"name": "occasion", "kind": "multi", "values": ["casual", "party", "work"]},
        ],
    }
)
HEADER = "id,image,group,split,title,meta_year,category,colour,closure,occasion"


def _catalog(tmp_path: Path, rows: list[str], header: str = HEADER, images: bool = True) -> Manifest:
    """Write ``manifest.csv`` (header on line 1, ``rows`` from line 2) and a valid JPEG for each image named."""
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    m = read_manifest(path)
    if images:
        for r in m.records:
            if not m.image_path(r).exists():
                write_image(m.image_path(r))
    return m


def _found(problems) -> list[tuple[int, str, str]]:
    return [(p.line, p.field, problem_kind(p)) for p in problems]


def test_valid_manifest(tmp_path):
    m = _catalog(
        tmp_path,
        [
            "a,img/a.jpg,g1,train,Red shirt,2012,shirt,red,,casual|party",
            "b,img/b.jpg,g1,train,,,trousers,blue,zip,work",
            "c,img/c.jpg,,test,,,,green,buttons,",  # unknown category: closure may apply
            "d,img/d.jpg,g2,,,,shirt,,,",
        ],
    )
    assert validate_manifest(m, TAX) == []


def test_unknown_column_csv(tmp_path):
    m = _catalog(tmp_path, ["a,a.jpg,shirt,red,silk"], header="id,image,category,colour,fabric")
    problems = validate_manifest(m, TAX)
    assert _found(problems) == [(1, "fabric", "unknown-column")]
    assert str(problems[0]) == (
        f"{m.path}:1: fabric: unknown attribute column; expected one of "
        "['category', 'colour', 'closure', 'occasion'], a reserved column (id, image, group, split, title) "
        "or meta_<name> for free text"
    )


def test_unknown_column_jsonl_points_at_first_use(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [{"id": "a", "image": "a.jpg"}, {"id": "b", "image": "b.jpg", "fabric": "silk", "meta_x": "1"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    m = read_manifest(path)
    assert _found(validate_manifest(m, TAX, check_images=False)) == [(2, "fabric", "unknown-column")]


def test_unknown_value(tmp_path):
    m = _catalog(tmp_path, ["a,a.jpg,,,,,shirt,red,,", "b,b.jpg,,,,,shirt,teal,,casual|disco"])
    problems = validate_manifest(m, TAX)
    assert _found(problems) == [(3, "colour", "unknown-value"), (3, "occasion", "unknown-value")]
    assert problems[0].message == "unknown value 'teal'; expected one of ['red', 'blue', 'green']"
    assert problems[1].message == "unknown value 'disco'; expected one of ['casual', 'party', 'work']"


def test_unknown_category(tmp_path):
    m = _catalog(tmp_path, ["a,a.jpg,,,,,skirt,red,zip,"])
    problems = validate_manifest(m, TAX)
    # the category is unknown, so whether closure applies cannot be told: only one problem
    assert _found(problems) == [(2, "category", "unknown-category")]
    assert problems[0].message == "unknown category 'skirt'; expected one of ['shirt', 'trousers']"


def test_several_values_in_single_label_attribute(tmp_path):
    m = _catalog(tmp_path, ["a,a.jpg,,,,,shirt,red|blue,,casual|party|work"])
    problems = validate_manifest(m, TAX)
    assert _found(problems) == [(2, "colour", "multiple-values")]
    assert problems[0].message == "several values ['red', 'blue'] in a single-label attribute; expected exactly one"


def test_several_categories(tmp_path):
    m = _catalog(tmp_path, ["a,a.jpg,,,,,shirt|trousers,,zip,"])
    # ambiguous category: multiple-values, and closure is not judged
    assert _found(validate_manifest(m, TAX)) == [(2, "category", "multiple-values")]


def test_value_for_attribute_that_does_not_apply(tmp_path):
    m = _catalog(tmp_path, ["a,a.jpg,,,,,trousers,,zip,", "b,b.jpg,,,,,shirt,,buttons,"])
    problems = validate_manifest(m, TAX)
    assert _found(problems) == [(3, "closure", "not-applicable")]
    assert problems[0].message == (
        "value given, but the attribute does not apply to category 'shirt'; expected empty (applies to ['trousers'])"
    )


def test_duplicate_ids_report_both_lines(tmp_path):
    m = _catalog(tmp_path, ["a,a.jpg,,,,,,,,", "b,b.jpg,,,,,,,,", "a,a2.jpg,,,,,,,,"])
    problems = validate_manifest(m, TAX)
    assert _found(problems) == [(2, "id", "duplicate-id"), (4, "id", "duplicate-id")]
    assert problems[0].message == "duplicate id 'a' (also on line 4); expected a unique id per row"
    assert problems[1].message == "duplicate id 'a' (also on line 2); expected a unique id per row"


def test_group_spanning_splits(tmp_path):
    m = _catalog(
        tmp_path,
        [
            "a,a.jpg,g1,train,,,,,,",
            "b,b.jpg,g1,test,,,,,,",
            "c,c.jpg,g1,train,,,,,,",
            "d,d.jpg,g1,,,,,,,",  # no split yet: does not conflict
            "e,e.jpg,g2,val,,,,,,",
            "f,f.jpg,,test,,,,,,",
        ],
    )
    problems = validate_manifest(m, TAX)
    assert _found(problems) == [(3, "split", "group-split")]
    assert problems[0].message == (
        "group 'g1' spans several splits (train: 2, test: 1); "
        "expected one split per group ('train' holds most of its rows)"
    )


def _truncated_jpeg(path: Path) -> Path:
    rng_img = Image.effect_noise((64, 64), 60).convert("RGB")
    buf = io.BytesIO()
    rng_img.save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_image_problems(tmp_path):
    write_image(tmp_path / "ok.jpg")
    _truncated_jpeg(tmp_path / "cut.jpg")
    (tmp_path / "text.jpg").write_text("this is not an image\n", encoding="utf-8")
    # a 5000x5000 1-bit PNG is a few kB on disk: the cap must be enforced from the header
    Image.new("1", (5000, 5000)).save(tmp_path / "huge.png")
    rows = [
        "a,ok.jpg,,,,,,,,",
        "b,missing.jpg,,,,,,,,",
        "c,cut.jpg,,,,,,,,",
        "d,text.jpg,,,,,,,,",
        "e,huge.png,,,,,,,,",
        "f,ok.jpg,,,,,,,,",
        "g,text.jpg,,,,,,,,",  # a shared file is reported on every row that uses it
    ]
    m = _catalog(tmp_path, rows, images=False)
    calls: list[tuple[int, int]] = []
    problems = validate_manifest(m, TAX, max_pixels=1_000_000, workers=3, progress=lambda d, t: calls.append((d, t)))
    assert _found(problems) == [
        (3, "image", "missing-image"),
        (4, "image", "bad-image"),
        (5, "image", "bad-image"),
        (6, "image", "image-too-large"),
        (8, "image", "bad-image"),
    ]
    msgs = {p.line: p.message for p in problems}
    assert "missing.jpg" in msgs[3] and "not found" in msgs[3]
    assert msgs[4].startswith("truncated image")
    assert msgs[5].startswith("not a readable image")
    assert "5000x5000 = 25,000,000 pixels, over the cap of 1,000,000" in msgs[6]
    assert msgs[8] == msgs[5]
    # five distinct files: one call before the first and one after each
    assert calls == [(0, 5), (1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert validate_manifest(m, TAX, check_images=False) == []
    assert validate_manifest(m.subset(m.records[4:5]), TAX) == []  # under the default cap


def test_format_problems_are_included(tmp_path):
    m = _catalog(tmp_path, ["a,a.jpg,,validation,,,,,,", "b,b.jpg,too,few", "c,c.jpg,,,,,,teal,,"])
    problems = validate_manifest(m, TAX)
    assert _found(problems) == [(2, "split", "format"), (3, "row", "format"), (4, "colour", "unknown-value")]
    assert summarize(problems) == {"format": 2, "unknown-value": 1}


def test_validate_file_finds_taxonomy_beside_manifest(tmp_path):
    save_taxonomy(TAX, tmp_path / "taxonomy.yaml")
    _catalog(tmp_path, ["a,a.jpg,,,,,shirt,red,,", "b,b.jpg,,,,,shirt,teal,,"])
    m, tax, problems = validate_file(tmp_path / "manifest.csv")
    assert tax == TAX
    assert len(m) == 2
    assert _found(problems) == [(3, "colour", "unknown-value")]


def test_problem_is_printed_as_file_line_field_message():
    p = ValidationProblem("m.csv", 3, "colour", "unknown value 'x'", "unknown-value")
    assert str(p) == "m.csv:3: colour: unknown value 'x'"
    assert problem_kind(p) == "unknown-value"


# --- clean_catalog ------------------------------------------------------------------------------------------------
def _dirty(tmp_path: Path) -> Manifest:
    return _catalog(
        tmp_path,
        [
            "a,a.jpg,,,,,shirt,red,,",
            "b,b.jpg,,,,,shirt,teal,buttons,",  # two problems
            "c,c.jpg,,,,,trousers,blue,zip,",
            "d,d.jpg,too,few",  # rejected by the reader
        ],
    )


def test_clean_catalog_refuses_without_skip(tmp_path):
    m = _dirty(tmp_path)
    problems = validate_manifest(m, TAX)
    with pytest.raises(VestisError) as exc:
        clean_catalog(m, TAX, problems, skip_invalid=False, skipped_path=tmp_path / "skipped.csv")
    msg = str(exc.value)
    assert msg.startswith(f"{m.path}: 3 problem(s) in the catalog:")
    assert f"{m.path}:3: colour: unknown value 'teal'" in msg
    assert f"{m.path}:5: row: expected 10 fields, got 4" in msg
    assert "--skip-invalid" in msg
    assert not (tmp_path / "skipped.csv").exists()


def test_clean_catalog_skips_and_lists_rows(tmp_path):
    m = _dirty(tmp_path)
    problems = validate_manifest(m, TAX)
    out = tmp_path / "run" / "skipped.csv"
    kept = clean_catalog(m, TAX, problems, skip_invalid=True, skipped_path=out)
    assert [r.id for r in kept] == ["a", "c"]
    assert kept.attributes == m.attributes and kept.root == m.root
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [(r["id"], r["line"]) for r in rows] == [("b", "3"), ("", "5")]
    assert rows[0]["reasons"] == (
        "colour: unknown value 'teal'; expected one of ['red', 'blue', 'green']; "
        "closure: value given, but the attribute does not apply to category 'shirt'; "
        "expected empty (applies to ['trousers'])"
    )
    assert rows[1]["reasons"] == "row: expected 10 fields, got 4"


def test_clean_catalog_without_problems_returns_manifest(tmp_path):
    m = _catalog(tmp_path, ["a,a.jpg,,,,,shirt,red,,"])
    assert clean_catalog(m, TAX, [], skip_invalid=False, skipped_path=tmp_path / "s.csv") is m
    assert not (tmp_path / "s.csv").exists()


def test_clean_catalog_unknown_column_cannot_be_skipped(tmp_path):
    m = _catalog(tmp_path, ["a,a.jpg,shirt,silk"], header="id,image,category,fabric")
    problems = validate_manifest(m, TAX)
    with pytest.raises(VestisError, match=r"concern the whole file.*\n.*:1: fabric: unknown attribute column"):
        clean_catalog(m, TAX, problems, skip_invalid=True, skipped_path=None)


def test_clean_catalog_nothing_left(tmp_path):
    m = _catalog(tmp_path, ["a,a.jpg,,,,,shirt,teal,,"])
    with pytest.raises(VestisError, match="every row has a problem"):
        clean_catalog(m, TAX, validate_manifest(m, TAX), skip_invalid=True, skipped_path=None)


def test_clean_catalog_lists_at_most_twenty(tmp_path):
    m = _catalog(tmp_path, [f"r{i},r{i}.jpg,,,,,shirt,teal,," for i in range(25)])
    with pytest.raises(VestisError) as exc:
        clean_catalog(m, TAX, validate_manifest(m, TAX), skip_invalid=False, skipped_path=None)
    msg = str(exc.value)
    assert msg.count("unknown value 'teal'") == 20
    assert "... and 5 more" in msg


def test_clean_catalog_needs_distinct_lines():
    m = Manifest([Record("a", "a.jpg", {"colour": ("teal",)}), Record("b", "b.jpg")], attributes=["colour"])
    problems = validate_manifest(m, TAX, check_images=False)
    assert _found(problems) == [(0, "colour", "unknown-value")]
    with pytest.raises(VestisError, match="do not carry distinct line numbers"):
        clean_catalog(m, TAX, problems, skip_invalid=True, skipped_path=None)


@pytest.mark.realdata
def test_real_images(tmp_path):
    root = require_shared("fashion-product")
    ids = [line.split(",", 1)[0] for line in (root / "styles.csv").read_text(encoding="utf-8").splitlines()[1:41]]
    rows = [f"{i},{root / 'images' / f'{i}.jpg'},,,,,,,," for i in ids]
    m = _catalog(tmp_path, rows, images=False)
    problems = validate_manifest(m, TAX, workers=2)
    absent = {i for i in ids if not (root / "images" / f"{i}.jpg").is_file()}
    assert 0 < len(absent) < len(ids)  # styles.csv lists more products than there are photos
    assert {p.line - 2 for p in problems} == {ids.index(i) for i in absent}
    assert {problem_kind(p) for p in problems} == {"missing-image"}


def test_root_confinement_reports_and_never_opens_images_outside(tmp_path, monkeypatch):
    import vestis.data.validate as validate_mod

    cat = tmp_path / "cat"
    write_image(cat / "ok.jpg")
    write_image(tmp_path / "outside.jpg")
    os.symlink("/etc/passwd", cat / "link.jpg")
    (cat / "folder.jpg").mkdir()
    (cat / "sub").mkdir()
    rows = [
        "a,ok.jpg,,,,,,,,",
        "b,../outside.jpg,,,,,,,,",
        "c,/etc/passwd,,,,,,,,",
        "d,link.jpg,,,,,,,,",
        "e,sub/../ok.jpg,,,,,,,,",  # '..' that stays inside is fine
        f"f,{cat / 'ok.jpg'},,,,,,,,",  # so is an absolute path inside the root
        "g,gone.jpg,,,,,,,,",
        "h,folder.jpg,,,,,,,,",
    ]
    m = _catalog(cat, rows, images=False)
    opened: list[str] = []
    real_check = validate_mod.check_image

    def spy(path, **kw):
        opened.append(os.path.realpath(path))
        return real_check(path, **kw)

    monkeypatch.setattr(validate_mod, "check_image", spy)
    problems = validate_manifest(m, TAX, root=cat)
    assert _found(problems) == [
        (3, "image", "outside-root"),
        (4, "image", "outside-root"),
        (5, "image", "outside-root"),
        (8, "image", "missing-image"),
        (9, "image", "bad-image"),
    ]
    msgs = {p.line: p.message for p in problems}
    assert (
        msgs[5]
        == f"'{cat / 'link.jpg'}' lies outside '{cat}' (it resolves to /etc/passwd); expected an image inside --root"
    )
    assert msgs[9] == f"'{cat / 'folder.jpg'}' is not a regular file; expected an image file"
    assert "/etc/passwd" not in opened and str(tmp_path / "outside.jpg") not in opened
    assert summarize(problems)["outside-root"] == 3
    # without --root the same manifest opens /etc/passwd and calls it a bad image
    opened.clear()
    without = validate_manifest(m, TAX)
    assert "/etc/passwd" in opened and (4, "image", "bad-image") in _found(without)
    # the root check needs no image decoding
    kinds = [k for _, _, k in _found(validate_manifest(m, TAX, check_images=False, root=cat))]
    assert kinds == ["outside-root"] * 3 + ["bad-image"]
    with pytest.raises(VestisError, match="root: expected an existing folder"):
        validate_manifest(m, TAX, root=tmp_path / "nope")


def test_confined_image_path_resolves_and_refuses(tmp_path):
    from vestis.data.catalog import UnsafePath, confined_image_path

    real = tmp_path / "real"
    write_image(real / "a.jpg")
    os.symlink(real, tmp_path / "linked")  # the root itself may be a symlink
    records = [Record("a", "a.jpg"), Record("b", "../real/a.jpg"), Record("c", "/etc/hostname")]
    m = Manifest(records, [], root=tmp_path / "linked")
    assert confined_image_path(m, m.records[0], tmp_path / "linked") == real / "a.jpg"
    assert confined_image_path(m, m.records[1], tmp_path / "linked") == real / "a.jpg"  # '..' back inside
    with pytest.raises(UnsafePath) as exc:
        confined_image_path(m, m.records[2], tmp_path / "linked")
    assert exc.value.kind == "outside"
