"""iMaterialist-Fashion-2021 (FGVC8; the Fashionpedia annotations): COCO-style JSON with attributes.

Layout: ``instances_attributes_train2020.json`` and/or ``instances_attributes_val2020.json`` in ``src``
(split ``train`` / ``val``), or ``src`` is one such JSON file. An image ``file_name`` is looked up in
``src/train``, ``src/test``, ``src/val``, ``src/images`` and ``src`` (the Kaggle and CVDF archives unpack to
these), or in ``image_dir`` when given. Each file has ``images``, ``annotations`` (``category_id``,
``attribute_ids``, ``bbox`` = ``[x, y, w, h]``), ``categories`` and ``attributes`` (``supercategory`` =
the attribute group).

Taxonomy (``name: imaterialist-2021``):

* ``category`` (category attribute): the categories in id order; hierarchy = category ``supercategory``
  (upperbody, lowerbody, wholebody, ... garment parts, closures, decorations) -> categories.
* one multi-label attribute per attribute ``supercategory``, named as a column-safe slug (``neckline type``
  -> ``neckline_type``), values = attribute names in id order. ``groups`` restricts them;
  :data:`PAPER_GROUPS` are the six used by the multi-scale paper. ROI: small for neckline type, opening
  type and waistline (:data:`SMALL_ROI`), large for the others.

Rows: by default one per image (the multi-scale paper's image-level setting): the category is that of the
main item, the largest box among whole items (any category outside garment parts, closures and
decorations; the largest item when there is none); the attribute groups are the union of the attributes of
every item in the image (``neckline type``, for instance, sits on ``neckline`` part items). With ``crop``:
one row per whole item, cropped to its box (``images/<image>-<annotation id>.jpg``, ``group`` = the image),
with its own attributes plus those of the part items whose box centre lies inside its box.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vestis.data.images import ImageError
from vestis.data.importers._common import (
    IMPORTERS,
    SKIP_DUPLICATE,
    SKIP_NO_IMAGE,
    SKIP_UNKNOWN_VALUE,
    ImportContext,
    Imported,
    ImportReport,
    UnsafePath,
    load_json,
    slug,
)
from vestis.data.manifest import Record
from vestis.data.taxonomy import Attribute
from vestis.errors import VestisError

__all__ = ["PAPER_GROUPS", "PART_SUPERCATEGORIES", "SMALL_ROI", "read_imaterialist"]

PAPER_GROUPS = ("length", "neckline type", "opening type", "silhouette", "textile pattern", "waistline")
PART_SUPERCATEGORIES = frozenset({"garment parts", "closures", "decorations"})
SMALL_ROI = frozenset({"neckline_type", "opening_type", "waistline"})
_FILES = {"train": "instances_attributes_train2020.json", "val": "instances_attributes_val2020.json"}
_IMAGE_DIRS = ("train", "test", "val", "images", ".")


def _sources(src: Path) -> list[tuple[Path, str | None]]:
    if src.is_file():
        split = "train" if "train" in src.name else "val" if "val" in src.name else None
        return [(src, split)]
    found = [(src / name, split) for split, name in _FILES.items() if (src / name).is_file()]
    if not found:
        raise VestisError(f"{src}: neither {_FILES['train']} nor {_FILES['val']} found")
    return found


def _list(data: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    v = data.get(key)
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise VestisError(f"{path}: {key}: expected a list of objects")
    return v


def _box(ann: dict[str, Any]) -> tuple[float, float, float, float] | None:
    """``(x1, y1, x2, y2)`` from a COCO ``[x, y, w, h]`` box with an area, else ``None``."""
    b = ann.get("bbox")
    if not isinstance(b, list) or len(b) != 4 or not all(isinstance(v, int | float) for v in b):
        return None
    x, y, w, h = (float(v) for v in b)
    return (x, y, x + w, y + h) if w > 0 and h > 0 else None


def _area(box: tuple[float, float, float, float] | None) -> float:
    return 0.0 if box is None else (box[2] - box[0]) * (box[3] - box[1])


class _Ontology:
    """Categories and attribute groups gathered from the JSON files (train and val share them)."""

    def __init__(self, groups: Sequence[str] | None) -> None:
        self.wanted = {slug(g) for g in groups} if groups is not None else None
        self.cat_names: dict[int, str] = {}
        self.cat_super: dict[str, str] = {}
        self.attr_of: dict[int, tuple[str, str]] = {}  # attribute id -> (attribute column, value)
        self.group_values: dict[str, list[str]] = {}
        self.ignored: set[int] = set()  # attribute ids of groups left out on purpose

    def add(self, data: dict[str, Any], path: Path) -> None:
        for c in _list(data, "categories", path):
            if not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
                raise VestisError(f"{path}: categories: expected id (int) and name (str), got {c}")
            name = c["name"].strip()
            self.cat_names[c["id"]] = name
            self.cat_super[name] = str(c.get("supercategory") or "other").strip()
        for a in sorted(_list(data, "attributes", path), key=lambda a: a.get("id", 0)):
            if not isinstance(a.get("id"), int) or not isinstance(a.get("name"), str):
                raise VestisError(f"{path}: attributes: expected id (int) and name (str), got {a}")
            group = slug(str(a.get("supercategory") or "attributes"))
            if self.wanted is not None and group not in self.wanted:
                self.ignored.add(a["id"])
                continue
            value = a["name"].strip()
            self.attr_of[a["id"]] = (group, value)
            vals = self.group_values.setdefault(group, [])
            if value not in vals:
                vals.append(value)

    def known(self, ann: dict[str, Any]) -> bool:
        return ann.get("category_id") in self.cat_names

    def category(self, ann: dict[str, Any]) -> str:
        return self.cat_names[ann["category_id"]]

    def is_part(self, ann: dict[str, Any]) -> bool:
        return self.cat_super[self.category(ann)] in PART_SUPERCATEGORIES

    def labels(self, ann: dict[str, Any], items: Sequence[dict[str, Any]], report: ImportReport) -> dict[str, Any]:
        """``category`` of ``ann`` plus the attribute groups of every annotation in ``items``."""
        out: dict[str, list[str]] = {}
        unknown = 0
        for a in items:
            for i in a.get("attribute_ids") or ():
                if i in self.attr_of:
                    g, v = self.attr_of[i]
                    if v not in out.setdefault(g, []):
                        out[g].append(v)
                elif i not in self.ignored:
                    unknown += 1
        if unknown:
            report.drop_label("attributes", "unknown attribute id", unknown)
        labels: dict[str, tuple[str, ...]] = {"category": (self.category(ann),)}
        for g, vs in out.items():
            labels[g] = tuple(sorted(vs, key=self.group_values[g].index))
        return labels


def _contains(box: tuple[float, float, float, float], inner: tuple[float, float, float, float] | None) -> bool:
    """Whether the centre of ``inner`` lies inside ``box``."""
    if inner is None:
        return False
    cx, cy = (inner[0] + inner[2]) / 2, (inner[1] + inner[3]) / 2
    return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


@IMPORTERS.register("imaterialist-2021", crop=True)
def read_imaterialist(
    src: Path, ctx: ImportContext, *, groups: Sequence[str] | None = None, image_dir: str | None = None
) -> Imported:
    """Read the instance-attribute JSON files.

    Args:
        src: the dataset folder or one JSON file.
        ctx: import context.
        groups: attribute supercategories to keep (names or slugs, e.g. :data:`PAPER_GROUPS`); all by default.
        image_dir: the image folder, when not one of the usual places.
    """
    root = src.parent if src.is_file() else src
    dirs = [Path(image_dir)] if image_dir else [root / d for d in _IMAGE_DIRS]
    onto = _Ontology(groups)
    records: list[Record] = []
    seen: set[str] = set()
    for path, split in _sources(src):
        data = load_json(path)
        if not isinstance(data, dict):
            raise VestisError(f"{path}: expected a COCO-style JSON object")
        onto.add(data, path)
        anns_by_image: dict[Any, list[dict[str, Any]]] = {}
        for ann in _list(data, "annotations", path):
            anns_by_image.setdefault(ann.get("image_id"), []).append(ann)
        for img in _list(data, "images", path):
            anns = anns_by_image.get(img.get("id"), [])
            read = _image_rows if not ctx.crop else _item_rows
            records += read(img, anns, onto, dirs, split, seen, ctx, f"{path.name}: image {img.get('id')}")
    hierarchy: dict[str, list[str]] = {}
    for cid in sorted(onto.cat_names):
        hierarchy.setdefault(onto.cat_super[onto.cat_names[cid]], []).append(onto.cat_names[cid])
    attributes = [
        Attribute("category", "single", tuple(onto.cat_names[c] for c in sorted(onto.cat_names)), roi="large")
    ]
    attributes += [
        Attribute(g, "multi", tuple(v), roi="small" if g in SMALL_ROI else "large")
        for g, v in onto.group_values.items()
    ]
    return Imported(
        records=records,
        attributes=attributes,
        category_attribute="category",
        hierarchy=hierarchy,
        name="imaterialist-2021",
    )


def _image_rows(
    img: dict[str, Any],
    anns: list[dict[str, Any]],
    onto: _Ontology,
    dirs: Sequence[Path],
    split: str | None,
    seen: set[str],
    ctx: ImportContext,
    where: str,
) -> list[Record]:
    """One row for the image: the main item's category, the attributes of every item."""
    report = ctx.report
    report.rows_read += 1
    file_name = img.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        report.skip("unparseable entry", f"{where}: expected a file_name")
        return []
    try:
        path = ctx.find(file_name, *dirs)
    except UnsafePath as e:
        ctx.skip_unsafe(e, where)
        return []
    if path is None:
        report.skip(SKIP_NO_IMAGE, f"{where}: {file_name} not found")
        return []
    stem = Path(file_name).with_suffix("").as_posix()
    if stem in seen:
        report.skip(SKIP_DUPLICATE, f"{where}: {file_name} already imported")
        return []
    items = [a for a in anns if onto.known(a)]
    if len(items) < len(anns):
        report.drop_label("category", "annotation with an unknown category_id", len(anns) - len(items))
    if not items:
        report.skip("no annotation", f"{where}: no item with a known category")
        return []
    seen.add(stem)
    whole = [a for a in items if not onto.is_part(a)] or items
    main = max(whole, key=lambda a: _area(_box(a)))  # max() keeps the first of equal areas
    labels = onto.labels(main, items, report)
    try:
        image = ctx.image(path, file_name)
    except UnsafePath as e:
        ctx.skip_unsafe(e, where)
        return []
    return [Record(id=stem, image=image, labels=labels, split=split)]


def _item_rows(
    img: dict[str, Any],
    anns: list[dict[str, Any]],
    onto: _Ontology,
    dirs: Sequence[Path],
    split: str | None,
    seen: set[str],
    ctx: ImportContext,
    where: str,
) -> list[Record]:
    """One cropped row per whole item, with the attributes of the parts inside its box."""
    report = ctx.report
    file_name = img.get("file_name")
    rows = [a for a in anns if not (onto.known(a) and onto.is_part(a))]
    if not isinstance(file_name, str) or not file_name:
        for _ in rows:
            report.rows_read += 1
            report.skip("unparseable entry", f"{where}: expected a file_name")
        return []
    unsafe: UnsafePath | None = None
    try:
        path = ctx.find(file_name, *dirs)
    except UnsafePath as e:
        path, unsafe = None, e
    stem = Path(file_name).with_suffix("").as_posix()
    parts = [(a, _box(a)) for a in anns if onto.known(a) and onto.is_part(a)]
    out = []
    for ann in rows:
        report.rows_read += 1
        if unsafe is not None:
            ctx.skip_unsafe(unsafe, where)
            continue
        rid = f"{stem}-{ann.get('id')}"
        w = f"{where}: annotation {ann.get('id')}"
        if not onto.known(ann):
            report.skip(SKIP_UNKNOWN_VALUE, f"{w}: category_id {ann.get('category_id')!r} unknown")
            continue
        if path is None:
            report.skip(SKIP_NO_IMAGE, f"{w}: {file_name} not found")
            continue
        box = _box(ann)
        if box is None:
            report.skip("no box", f"{w}: bbox missing or without area")
            continue
        if rid in seen:
            report.skip(SKIP_DUPLICATE, f"{w}: already imported")
            continue
        try:
            # the annotation id is part of the crop's file name: one that is not a plain name is refused
            cropped = ctx.crop_image(path, box, f"{rid}{Path(file_name).suffix or '.jpg'}")
        except UnsafePath as e:
            ctx.skip_unsafe(e, w)
            continue
        except ImageError as e:
            report.skip("unreadable image", f"{w}: {e}")
            continue
        if cropped is None:
            report.skip("empty box", f"{w}: box outside the image")
            continue
        seen.add(rid)
        inside = [p for p, pb in parts if _contains(box, pb)]
        labels = onto.labels(ann, [ann, *inside], report)
        out.append(Record(id=rid, image=cropped[0], labels=labels, group=stem, split=split))
    return out
