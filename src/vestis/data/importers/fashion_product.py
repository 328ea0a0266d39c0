"""Kaggle Fashion Product Images: ``styles.csv`` + ``images/<id>.jpg``.

Taxonomy (``name: fashion-product``), values as they occur in the imported rows, sorted alphabetically:

* ``gender``, ``masterCategory``, ``subCategory``, ``articleType`` (the category attribute),
  ``baseColour``, ``season``, ``usage``: single-label, named as the file's columns. ``roi: large`` for
  ``baseColour`` and the three category levels (the whole product shows them); none for the others.
* ``title`` from ``productDisplayName``; ``year`` as the metadata column ``meta_year``.
* Hierarchy: ``subCategory`` -> ``articleType``. ``subCategory`` (Topwear, Bottomwear, Shoes, Dress, ...) is the
  closest level to the object types of the hierarchical-label paper (upper body, lower body, footwear,
  full body); ``masterCategory`` is too coarse (Apparel holds tops, bottoms and dresses). A few article types
  occur under two sub-categories (e.g. Sandals under Shoes and Sandal): each is placed under the one holding
  most of its rows (the first alphabetically on a tie) and the rows that disagree are counted in
  ``details.hierarchy_conflicts``. The ``subCategory`` labels themselves stay as written.

File quirks handled: 22 rows have unquoted commas in ``productDisplayName`` (a line is split into at most
10 fields, the last takes the rest); empty cells and the literal ``NA`` are missing. Rows without an image
are skipped as ``no image``; lines with fewer than 10 fields as ``unparseable line``; repeated ids as ``duplicate id``;
an id that is not a plain file name (``../../secret/s``) as ``unsafe path``.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

from vestis.data.importers._common import (
    IMPORTERS,
    SKIP_DUPLICATE,
    SKIP_NO_IMAGE,
    SKIP_UNPARSEABLE,
    ImportContext,
    Imported,
    UnsafePath,
    clean_value,
    require_file,
)
from vestis.data.manifest import Record
from vestis.data.taxonomy import Attribute
from vestis.data.textio import allow_large_csv_fields, open_utf8
from vestis.errors import VestisError

__all__ = ["ATTRIBUTES", "COLUMNS", "read_fashion_product"]

COLUMNS = (
    "id",
    "gender",
    "masterCategory",
    "subCategory",
    "articleType",
    "baseColour",
    "season",
    "year",
    "usage",
    "productDisplayName",
)
ATTRIBUTES = ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")
_LARGE_ROI = frozenset({"masterCategory", "subCategory", "articleType", "baseColour"})
CATEGORY = "articleType"
OBJECT_TYPE = "subCategory"


def _split(line: str) -> list[str]:
    """At most ``len(COLUMNS)`` fields; the last one keeps any further commas (unquoted titles)."""
    n = len(COLUMNS)
    if '"' not in line:
        return line.split(",", n - 1)
    try:
        fields = next(csv.reader([line]))
    except csv.Error:  # a quoted field over MAX_CSV_FIELD: the line is unparseable
        return []
    return [*fields[: n - 1], ",".join(fields[n - 1 :])] if len(fields) > n else fields


def _sort_key(v: str) -> tuple[str, str]:
    return (v.casefold(), v)


@IMPORTERS.register("fashion-product", crop=False)
def read_fashion_product(src: Path, ctx: ImportContext, *, image_dir: str = "images") -> Imported:
    """Read ``src/styles.csv`` and the images in ``src/<image_dir>``.

    Args:
        src: the dataset folder.
        ctx: import context.
        image_dir: image folder inside ``src`` (``<id>.jpg`` files).
    """
    styles = require_file(src / "styles.csv", "styles.csv (Fashion Product Images label file)")
    images = src / image_dir
    report = ctx.report
    records: list[Record] = []
    seen: set[str] = set()
    allow_large_csv_fields()  # a quoted title over the csv module's 128 KiB default is still a title
    with open_utf8(styles, "styles.csv") as f:
        header = [h.strip() for h in f.readline().rstrip("\r\n").split(",")]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise VestisError(f"{styles}:1: header: missing column(s) {missing}; expected {', '.join(COLUMNS)}")
        if tuple(header) != COLUMNS:
            raise VestisError(f"{styles}:1: header: expected the columns {', '.join(COLUMNS)} in this order")
        for lineno, raw in enumerate(f, start=2):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            report.rows_read += 1
            fields = _split(line)
            where = f"{styles.name}:{lineno}"
            if len(fields) < len(COLUMNS):
                report.skip(SKIP_UNPARSEABLE, f"{where}: expected {len(COLUMNS)} fields, got {len(fields)}")
                continue
            row = dict(zip(COLUMNS, fields, strict=True))
            rid = clean_value(row["id"])
            if rid is None:
                report.skip(SKIP_UNPARSEABLE, f"{where}: id: expected a product id")
                continue
            if rid in seen:
                report.skip(SKIP_DUPLICATE, f"{where}: id {rid!r} already seen")
                continue
            seen.add(rid)
            try:
                ctx.check_name(rid)  # the id names the image file: '../../secret/s' must not
                path = ctx.find(f"{rid}.jpg", images)
                if path is None:
                    report.skip(SKIP_NO_IMAGE, f"{where}: {image_dir}/{rid}.jpg not found")
                    continue
                image = ctx.image(path, f"{rid}.jpg")
            except UnsafePath as e:
                ctx.skip_unsafe(e, where)
                continue
            labels = {a: (v,) for a in ATTRIBUTES if (v := clean_value(row[a])) is not None}
            year = clean_value(row["year"])
            records.append(
                Record(
                    id=rid,
                    image=image,
                    labels=labels,
                    title=clean_value(row["productDisplayName"]),
                    meta={"year": year} if year is not None else {},
                )
            )
    attributes = []
    for name in ATTRIBUTES:
        values = sorted({r.labels[name][0] for r in records if name in r.labels}, key=_sort_key)
        attributes.append(Attribute(name, "single", tuple(values), roi="large" if name in _LARGE_ROI else None))
    hierarchy, conflicts = _hierarchy(records)
    if conflicts:
        report.details["hierarchy_conflicts"] = conflicts
    return Imported(
        records=records,
        attributes=attributes,
        category_attribute=CATEGORY,
        hierarchy=hierarchy,
        metadata=["year"],
        name="fashion-product",
    )


def _hierarchy(records: list[Record]) -> tuple[dict[str, list[str]], dict[str, dict[str, int]]]:
    """subCategory -> articleTypes, each article type under its most frequent sub-category."""
    pairs: dict[str, Counter[str]] = defaultdict(Counter)
    for r in records:
        if CATEGORY in r.labels and OBJECT_TYPE in r.labels:
            pairs[r.labels[CATEGORY][0]][r.labels[OBJECT_TYPE][0]] += 1
    hierarchy: dict[str, list[str]] = defaultdict(list)
    conflicts: dict[str, dict[str, int]] = {}
    for category in sorted(pairs, key=_sort_key):
        parents = pairs[category]
        parent = min(parents, key=lambda p: (-parents[p], _sort_key(p)))
        hierarchy[parent].append(category)
        if len(parents) > 1:
            conflicts[category] = dict(sorted(parents.items(), key=lambda kv: (-kv[1], kv[0])))
    return {p: hierarchy[p] for p in sorted(hierarchy, key=_sort_key)}, conflicts
