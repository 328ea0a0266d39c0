"""DeepFashion Category and Attribute Prediction Benchmark (``deepfashion-attributes``).

Layout: ``Anno/`` (or ``Anno_coarse/``) with ``list_category_cloth.txt``, ``list_category_img.txt``,
``list_attr_cloth.txt``, ``list_attr_img.txt``, ``list_bbox.txt``; ``Eval/list_eval_partition.txt``; the
images under ``img/`` (or ``Img/img/``). Every list file starts with the row count, then a header line,
then one row per line. Category and attribute names may contain spaces: the type is the last field.

Taxonomy (``name: deepfashion-attributes``), names as in the files, in file order:

* ``category`` (category attribute): the 50 categories; hierarchy by ``category_type``
  1 -> ``upper-body``, 2 -> ``lower-body``, 3 -> ``full-body``.
* five multi-label attributes from ``attribute_type``: ``texture`` (1), ``fabric`` (2), ``shape`` (3),
  ``part`` (4), ``style`` (5); a value is present when its column is ``1`` (``-1`` = no, ``0`` = unknown in
  the later release: neither is a positive). ROI: ``part`` small, the others large.
* ``split`` from the official partition (train/val/test); ``title`` = the folder name (the product title).

``--crop`` writes the crop to the ``list_bbox.txt`` box as ``images/<path without img/>``. Rows whose image is
missing are skipped (``no image``); an out-of-range category (``unknown value``), a malformed line
(``unparseable line``) or an image name with ``..`` or a root (``unsafe path``) skips the row too; a
malformed attribute line only drops that row's attributes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vestis.data.images import ImageError
from vestis.data.importers._common import (
    IMPORTERS,
    SKIP_NO_IMAGE,
    SKIP_UNKNOWN_VALUE,
    SKIP_UNPARSEABLE,
    ImportContext,
    Imported,
    ImportReport,
    UnsafePath,
    require_file,
)
from vestis.data.manifest import SPLITS, Record
from vestis.data.taxonomy import Attribute
from vestis.errors import VestisError

__all__ = ["ATTRIBUTE_TYPES", "CATEGORY_TYPES", "read_deepfashion_attributes"]

CATEGORY_TYPES = {1: "upper-body", 2: "lower-body", 3: "full-body"}
ATTRIBUTE_TYPES = {1: "texture", 2: "fabric", 3: "shape", 4: "part", 5: "style"}
_ROI = {"texture": "large", "fabric": "large", "shape": "large", "part": "small", "style": "large"}
_ATTR_CODES = frozenset({"1", "-1", "0"})


def _rows(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` for each data row, after the count line and the header line."""
    with open(path, encoding="utf-8") as f:
        first = f.readline().strip()
        if not first.isdigit():
            raise VestisError(f"{path}:1: count: expected the number of rows, got {first[:40]!r}")
        f.readline()
        for lineno, line in enumerate(f, start=3):
            if line.strip():
                yield lineno, line.rstrip("\r\n")


def _names_with_type(path: Path, types: dict[int, str]) -> list[tuple[str, str]]:
    """``[(name, type name)]`` from a ``name  type`` list (names may contain spaces)."""
    out = []
    for lineno, line in _rows(path):
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) not in types:
            raise VestisError(f"{path}:{lineno}: type: expected a name then one of {sorted(types)}, got {line!r}")
        out.append((parts[0].strip(), types[int(parts[1])]))
    return out


def _anno_dir(src: Path) -> Path:
    for name in ("Anno", "Anno_coarse"):
        if (src / name).is_dir():
            return src / name
    raise VestisError(f"{src}: no Anno/ (or Anno_coarse/) folder; expected the DeepFashion benchmark layout")


def _image_root(src: Path) -> Path:
    # image names start with img/; the archive unpacks either to src/img or to src/Img/img
    if not (src / "img").is_dir() and (src / "Img" / "img").is_dir():
        return src / "Img"
    return src


@IMPORTERS.register("deepfashion-attributes", crop=True)
def read_deepfashion_attributes(src: Path, ctx: ImportContext) -> Imported:
    """Read the benchmark's category, attribute, box and partition lists.

    Args:
        src: the benchmark folder.
        ctx: import context.
    """
    anno = _anno_dir(src)
    report = ctx.report
    cat_file = require_file(anno / "list_category_cloth.txt", "category list")
    categories = _names_with_type(cat_file, CATEGORY_TYPES)
    cat_names = [c for c, _ in categories]
    if len(set(cat_names)) != len(cat_names):
        raise VestisError(f"{cat_file}: category_name: duplicate category names")
    hierarchy: dict[str, list[str]] = {}
    for name, ctype in categories:
        hierarchy.setdefault(ctype, []).append(name)

    # attribute column -> (group, value); names repeated inside one group are merged into one value
    attr_file = anno / "list_attr_cloth.txt"
    columns: list[tuple[str, str]] = _names_with_type(attr_file, ATTRIBUTE_TYPES) if attr_file.is_file() else []
    groups: dict[str, list[str]] = {g: [] for g in ATTRIBUTE_TYPES.values()}
    for value, group in columns:
        if value not in groups[group]:
            groups[group].append(value)
    attrs_by_image = _attribute_rows(anno / "list_attr_img.txt", columns, report) if columns else None
    boxes = _boxes(anno / "list_bbox.txt")
    partition = _partition(src / "Eval" / "list_eval_partition.txt")
    if ctx.crop and not boxes:
        raise VestisError(f"{anno / 'list_bbox.txt'}: --crop needs the box list")
    if not partition:
        report.details["split"] = "Eval/list_eval_partition.txt not found: rows have no split"

    image_root = _image_root(src)
    img_file = require_file(anno / "list_category_img.txt", "image category list")
    records: list[Record] = []
    for lineno, line in _rows(img_file):
        report.rows_read += 1
        where = f"{img_file.name}:{lineno}"
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            report.skip(SKIP_UNPARSEABLE, f"{where}: expected 'image_name category_label'")
            continue
        name, label = parts[0], int(parts[1])
        if not 1 <= label <= len(cat_names):
            report.skip(SKIP_UNKNOWN_VALUE, f"{where}: category_label {label} not in 1..{len(cat_names)}")
            continue
        rel = name[4:] if name.startswith("img/") else name
        try:
            path = ctx.find(name, image_root)
            if path is None:
                report.skip(SKIP_NO_IMAGE, f"{where}: {name} not found")
                continue
            if ctx.crop:
                box = boxes.get(name)
                if box is None:
                    report.skip("no box", f"{where}: {name} not in list_bbox.txt")
                    continue
                try:
                    cropped = ctx.crop_image(path, box, rel)
                except ImageError as e:
                    report.skip("unreadable image", f"{where}: {e}")
                    continue
                if cropped is None:
                    report.skip("empty box", f"{where}: box {box} is outside the image")
                    continue
                image = cropped[0]
            else:
                image = ctx.image(path, rel)
        except UnsafePath as e:
            ctx.skip_unsafe(e, where)
            continue
        labels: dict[str, tuple[str, ...]] = {"category": (cat_names[label - 1],)}
        if attrs_by_image is not None:
            if name not in attrs_by_image:
                report.drop_label("attributes", "image not in list_attr_img.txt")
            elif (positives := attrs_by_image[name]) is not None:  # None: a malformed line, already counted
                by_group: dict[str, list[str]] = {}
                for col in positives:
                    value, group = columns[col]
                    vals = by_group.setdefault(group, [])
                    if value not in vals:
                        vals.append(value)
                for group, vals in by_group.items():
                    labels[group] = tuple(sorted(vals, key=groups[group].index))
        folder = Path(rel).parent.name
        records.append(
            Record(
                id=str(Path(rel).with_suffix("").as_posix()),
                image=image,
                labels=labels,
                split=partition.get(name),
                title=folder.replace("_", " ") if folder else None,
            )
        )
    attributes = [Attribute("category", "single", tuple(cat_names), roi="large")]
    attributes += [Attribute(g, "multi", tuple(v), roi=_ROI[g]) for g, v in groups.items() if v]
    return Imported(
        records=records,
        attributes=attributes,
        category_attribute="category",
        hierarchy=hierarchy,
        name="deepfashion-attributes",
    )


def _attribute_rows(
    path: Path, columns: list[tuple[str, str]], report: ImportReport
) -> dict[str, list[int] | None] | None:
    """image name -> indices of its positive attribute columns (``None`` for a malformed line); ``None`` if no file."""
    if not path.is_file():
        report.details["attributes"] = f"{path.name} not found: rows have no attribute labels"
        return None
    out: dict[str, list[int] | None] = {}
    n = len(columns)
    for _, line in _rows(path):
        parts = line.split()
        codes = parts[1:]
        if len(codes) != n or not set(codes) <= _ATTR_CODES:
            report.drop_label("attributes", f"unparseable line in {path.name} (expected {n} values of 1, -1 or 0)")
            out[parts[0]] = None
            continue
        positives: list[int] = []
        i = -1
        try:
            while True:  # list.index scans in C: far faster than a Python loop over 1,000 codes
                i = codes.index("1", i + 1)
                positives.append(i)
        except ValueError:
            pass
        out[parts[0]] = positives
    return out


def _boxes(path: Path) -> dict[str, tuple[float, float, float, float]]:
    if not path.is_file():
        return {}
    out = {}
    for lineno, line in _rows(path):
        parts = line.split()
        try:
            if len(parts) != 5:
                raise ValueError
            x1, y1, x2, y2 = (float(p) for p in parts[1:])
        except ValueError:
            raise VestisError(f"{path}:{lineno}: box: expected 'image_name x_1 y_1 x_2 y_2', got {line!r}") from None
        out[parts[0]] = (x1, y1, x2, y2)
    return out


def _partition(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    out = {}
    for lineno, line in _rows(path):
        parts = line.split()
        if len(parts) != 2 or parts[1] not in SPLITS:
            raise VestisError(f"{path}:{lineno}: evaluation_status: expected one of {list(SPLITS)}, got {line!r}")
        out[parts[0]] = parts[1]
    return out
