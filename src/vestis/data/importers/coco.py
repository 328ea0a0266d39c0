"""Any COCO detection JSON (custom detection data): a manifest of images and a normalised ``coco.json``.

``src`` is the JSON file (or a folder holding exactly one ``.json``, directly or under ``annotations/``).
An image ``file_name`` is looked up in ``image_dir`` when given, else beside the JSON, in ``images/``
beside it, in ``../images`` and, for ``annotations/instances_<name>.json``, in ``../<name>`` (the COCO layout).

Manifest: one row per image, ``id`` = ``file_name`` without its extension; one multi-label attribute
``objects`` = the categories with at least one box in the image (values = category names in id order;
an image without a box has the cell empty).
``split`` can be set for every row.

``coco.json``: images, annotations and categories with the standard keys only (plus ``segmentation``
when present); image and annotation ids renumbered from 1; ``file_name`` relative to the output folder;
``width``/``height`` read from the image header when absent; ``area`` = ``w * h`` when absent;
``iscrowd`` defaults to 0; category ids kept.

Skipped images: ``unparseable entry`` (no ``file_name``), ``duplicate id``, ``no image``, ``unreadable image``,
``unsafe path`` (a ``file_name`` with ``..`` or a root), ``outside the source`` (a symlink leading out of the
image folder) and ``not a regular file``.
Annotations left out are counted in ``details.annotations_dropped`` (unknown image or category, box without area).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vestis.data.importers._common import (
    IMPORTERS,
    SKIP_DUPLICATE,
    SKIP_NO_IMAGE,
    ImportContext,
    Imported,
    ImportReport,
    UnsafePath,
    load_json,
)
from vestis.data.manifest import SPLITS, Record
from vestis.data.taxonomy import Attribute
from vestis.errors import VestisError

__all__ = ["read_coco"]


def _json_file(src: Path) -> Path:
    if src.is_file():
        return src
    found = sorted(src.glob("*.json")) or sorted((src / "annotations").glob("*.json"))
    if len(found) != 1:
        raise VestisError(f"{src}: expected one COCO .json file here or in annotations/, found {len(found)}")
    return found[0]


def _image_dirs(path: Path, image_dir: str | None) -> list[Path]:
    if image_dir is not None:
        return [Path(image_dir)]
    here = path.parent
    dirs = [here, here / "images", here.parent / "images"]
    if path.stem.startswith("instances_"):
        dirs.append(here.parent / path.stem.removeprefix("instances_"))
    return dirs


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@IMPORTERS.register("coco", crop=False)
def read_coco(src: Path, ctx: ImportContext, *, image_dir: str | None = None, split: str | None = None) -> Imported:
    """Read a COCO detection file.

    Args:
        src: the JSON file or a folder holding it.
        ctx: import context.
        image_dir: folder the ``file_name`` paths are relative to, when not one of the usual places.
        split: split written on every row (train/val/test).
    """
    if split is not None and split not in SPLITS:
        raise VestisError(f"split: expected one of {list(SPLITS)}, got {split!r}")
    path = _json_file(src)
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise VestisError(f"{path}: images: expected a COCO object with an 'images' list")
    categories: dict[Any, str] = {}
    for c in data.get("categories") or []:
        name = c.get("name") if isinstance(c, dict) else None
        if not isinstance(c, dict) or isinstance(c.get("id"), bool) or not isinstance(c.get("id"), int):
            raise VestisError(f"{path}: categories: expected objects with an integer id, got {c!r}")
        if not isinstance(name, str) or not name.strip() or "|" in name:
            raise VestisError(f"{path}: categories: category {c['id']}: expected a non-empty name without '|'")
        if name.strip() in categories.values():
            raise VestisError(f"{path}: categories: duplicate category name {name.strip()!r}")
        categories[c["id"]] = name.strip()
    if not categories:
        raise VestisError(f"{path}: categories: expected a non-empty list of categories")
    report = ctx.report
    dirs = _image_dirs(path, image_dir)
    records: list[Record] = []
    images: list[dict[str, Any]] = []
    new_id: dict[Any, int] = {}
    seen: set[str] = set()
    for img in data["images"]:
        report.rows_read += 1
        file_name = img.get("file_name") if isinstance(img, dict) else None
        where = f"{path.name}: image {img.get('id') if isinstance(img, dict) else img!r}"
        if not isinstance(file_name, str) or not file_name or "id" not in img:
            report.skip("unparseable entry", f"{where}: expected an id and a file_name")
            continue
        rid = Path(file_name).with_suffix("").as_posix()
        if rid in seen or img["id"] in new_id:
            report.skip(SKIP_DUPLICATE, f"{where}: {file_name} already imported")
            continue
        try:
            image_path = ctx.find(file_name, *dirs)
        except UnsafePath as e:
            ctx.skip_unsafe(e, where)
            continue
        if image_path is None:
            report.skip(SKIP_NO_IMAGE, f"{where}: {file_name} not found")
            continue
        w, h = img.get("width"), img.get("height")
        if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
            size = ctx.image_size(image_path)
            if size is None:
                report.skip("unreadable image", f"{where}: {file_name} is not a readable image")
                continue
            w, h = size
        try:
            ref = ctx.image(image_path, file_name)
        except UnsafePath as e:
            ctx.skip_unsafe(e, where)
            continue
        seen.add(rid)
        new_id[img["id"]] = len(images) + 1
        images.append({"id": len(images) + 1, "file_name": ref, "width": w, "height": h})
        records.append(Record(id=rid, image=ref, split=split))
    annotations, present = _annotations(data.get("annotations") or [], new_id, categories, report)
    order = [categories[k] for k in sorted(categories)]
    for rec, img in zip(records, images, strict=True):
        names = present.get(img["id"])
        if names:
            rec.labels["objects"] = tuple(sorted(names, key=order.index))
    coco = {
        "info": {"description": f"normalised from {path.name}"},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": c["id"], "name": c["name"].strip(), "supercategory": c.get("supercategory", "")}
            for c in sorted(data["categories"], key=lambda c: c["id"])
        ],
    }
    return Imported(
        records=records,
        attributes=[Attribute("objects", "multi", tuple(order))],
        name=path.stem,
        coco=coco,
    )


def _annotations(
    raw: list[Any], new_id: dict[Any, int], categories: dict[Any, str], report: ImportReport
) -> tuple[list[dict[str, Any]], dict[int, set[str]]]:
    """Valid annotations with renumbered ids, and the category names present per (new) image id."""
    out: list[dict[str, Any]] = []
    present: dict[int, set[str]] = {}
    dropped: dict[str, int] = {}

    def drop(reason: str) -> None:
        dropped[reason] = dropped.get(reason, 0) + 1

    for ann in raw:
        if not isinstance(ann, dict) or ann.get("image_id") not in new_id:
            drop("unknown or skipped image")
            continue
        if ann.get("category_id") not in categories:
            drop("unknown category_id")
            continue
        box = ann.get("bbox")
        if not isinstance(box, list) or len(box) != 4 or not all(_number(v) for v in box) or box[2] <= 0 or box[3] <= 0:
            drop("box without area")
            continue
        image_id = new_id[ann["image_id"]]
        a: dict[str, Any] = {
            "id": len(out) + 1,
            "image_id": image_id,
            "category_id": ann["category_id"],
            "bbox": [float(v) for v in box],
            "area": float(ann["area"]) if _number(ann.get("area")) else float(box[2] * box[3]),
            "iscrowd": int(ann.get("iscrowd", 0) or 0),
        }
        if "segmentation" in ann:
            a["segmentation"] = ann["segmentation"]
        out.append(a)
        present.setdefault(image_id, set()).add(categories[ann["category_id"]])
    if dropped:
        report.details["annotations_dropped"] = dropped
    report.details["boxes"] = len(out)
    return out, present
