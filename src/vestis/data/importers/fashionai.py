"""FashionAI attributes (Alibaba Tianchi 2018): ``Annotations/label.csv`` + ``Images/<dimension>/<name>.jpg``.

``label.csv`` has no header; each line is ``image path,dimension,value string``, e.g.
``Images/skirt_length_labels/x.jpg,skirt_length_labels,nnynnn``: one character per value of the dimension,
``y`` = the value, ``n`` = not it, ``m`` = maybe. Each image is labelled in one dimension only; the other
seven cells of its row are missing.

Taxonomy (``name: fashionai``): one single-label attribute per dimension, named without the ``_labels``
suffix, values with the official names in the official order (:data:`DIMENSIONS`; the official list's
``One<TAB>Shoulder Neckline`` is written with a space, ``Sweat Heart Neck`` is kept as published). ROI: small
for the collar, lapel, neck and neckline designs and sleeve length; large for coat, skirt and pant length.

The label is the position of the single ``y``; ``m`` marks are ignored (counted in ``details.maybe_marks``).
Skipped: ``no image``; ``unsafe path`` (an image path with ``..`` or a root); ``unknown dimension``;
``unknown value`` (wrong length or characters other than y/n/m); ``no 'y'`` (only maybes); ``several 'y'``;
``duplicate id`` (the same image twice in one dimension).
"""

from __future__ import annotations

import csv
from pathlib import Path

from vestis.data.importers._common import (
    IMPORTERS,
    SKIP_DUPLICATE,
    SKIP_NO_IMAGE,
    SKIP_UNKNOWN_VALUE,
    SKIP_UNPARSEABLE,
    ImportContext,
    Imported,
    UnsafePath,
    require_file,
)
from vestis.data.manifest import Record
from vestis.data.taxonomy import Attribute

__all__ = ["DIMENSIONS", "attribute_name", "read_fashionai"]

DIMENSIONS: dict[str, tuple[str, ...]] = {
    "skirt_length_labels": (
        "Invisible",
        "Short Length",
        "Knee Length",
        "Midi Length",
        "Ankle Length",
        "Floor Length",
    ),
    "coat_length_labels": (
        "Invisible",
        "High Waist Length",
        "Regular Length",
        "Long Length",
        "Micro Length",
        "Knee Length",
        "Midi Length",
        "Ankle&Floor Length",
    ),
    "collar_design_labels": ("Invisible", "Shirt Collar", "Peter Pan", "Puritan Collar", "Rib Collar"),
    "lapel_design_labels": ("Invisible", "Notched", "Collarless", "Shawl Collar", "Plus Size Shawl"),
    "neck_design_labels": ("Invisible", "Turtle Neck", "Ruffle Semi-High Collar", "Low Turtle Neck", "Draped Collar"),
    "neckline_design_labels": (
        "Invisible",
        "Strapless Neck",
        "Deep V Neckline",
        "Straight Neck",
        "V Neckline",
        "Square Neckline",
        "Off Shoulder",
        "Round Neckline",
        "Sweat Heart Neck",
        "One Shoulder Neckline",
    ),
    "pant_length_labels": ("Invisible", "Short Pant", "Mid Length", "3/4 Length", "Cropped Pant", "Full Length"),
    "sleeve_length_labels": (
        "Invisible",
        "Sleeveless",
        "Cup Sleeves",
        "Short Sleeves",
        "Elbow Sleeves",
        "3/4 Sleeves",
        "Wrist Length",
        "Long Sleeves",
        "Extra Long Sleeves",
    ),
}
_SMALL_ROI = frozenset({"collar_design", "lapel_design", "neck_design", "neckline_design", "sleeve_length"})
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def attribute_name(dimension: str) -> str:
    """``'skirt_length_labels'`` -> ``'skirt_length'``."""
    return dimension.removesuffix("_labels")


@IMPORTERS.register("fashionai", crop=False)
def read_fashionai(src: Path, ctx: ImportContext) -> Imported:
    """Read ``src/Annotations/label.csv``; image paths in it are relative to ``src``.

    Args:
        src: the dataset folder.
        ctx: import context.
    """
    labels_file = require_file(src / "Annotations" / "label.csv", "Annotations/label.csv (FashionAI labels)")
    report = ctx.report
    rows: dict[str, Record] = {}
    maybe = 0
    with open(labels_file, encoding="utf-8-sig", newline="") as f:
        for lineno, fields in enumerate(csv.reader(f), start=1):
            if not any(x.strip() for x in fields):
                continue
            fields = [x.strip() for x in fields]
            header = (
                lineno == 1
                and len(fields) >= 2
                and fields[1] not in DIMENSIONS
                and not fields[0].lower().endswith(_IMAGE_SUFFIXES)
            )
            if header:
                continue
            report.rows_read += 1
            where = f"{labels_file.name}:{lineno}"
            if len(fields) != 3 or not fields[0]:
                report.skip(SKIP_UNPARSEABLE, f"{where}: expected 'image,dimension,value string'")
                continue
            name, dimension, code = fields
            values = DIMENSIONS.get(dimension)
            if values is None:
                report.skip("unknown dimension", f"{where}: {dimension!r} is not a FashionAI dimension")
                continue
            code = code.lower()
            if len(code) != len(values) or set(code) - set("ynm"):
                report.skip(SKIP_UNKNOWN_VALUE, f"{where}: expected {len(values)} characters of y/n/m for {dimension}")
                continue
            ys = code.count("y")
            if ys != 1:
                reason = "no 'y'" if ys == 0 else "several 'y'"
                report.skip(reason, f"{where}: {code}")
                continue
            maybe += "m" in code
            try:
                path = ctx.find(name, src)
            except UnsafePath as e:
                ctx.skip_unsafe(e, where)
                continue
            if path is None:
                report.skip(SKIP_NO_IMAGE, f"{where}: {name} not found")
                continue
            rel = name.removeprefix("Images/")
            rid = str(Path(rel).with_suffix("").as_posix())
            attr = attribute_name(dimension)
            record = rows.get(rid)
            if record is None:
                rows[rid] = Record(id=rid, image=ctx.image(path, rel), labels={attr: (values[code.index("y")],)})
            elif attr in record.labels:
                report.skip(SKIP_DUPLICATE, f"{where}: {name} already labelled for {dimension}")
            else:
                # the same image in a second dimension: one item, one more label
                record.labels[attr] = (values[code.index("y")],)
                report.skip("merged with an earlier row (same image)", f"{where}: {name}")
    report.details["maybe_marks"] = maybe
    attributes = [
        Attribute(attribute_name(d), "single", vals, roi="small" if attribute_name(d) in _SMALL_ROI else "large")
        for d, vals in DIMENSIONS.items()
    ]
    return Imported(records=list(rows.values()), attributes=attributes, name="fashionai")
