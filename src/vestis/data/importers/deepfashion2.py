"""DeepFashion2: ``annos/<id>.json`` (``item1``, ``item2``, ...: ``category_id``, ``bounding_box``), ``image/<id>.jpg``.

``src`` is one split folder (holding ``annos/`` and ``image/``) or the dataset root holding ``train/``,
``validation/`` (and ``test/`` when annotated); the split is then set (``validation`` -> ``val``) and
ids are prefixed with the folder (``train/000001``) because every split numbers its images from 1.

Manifest: one row per image, labelled with its main item (the largest box; the first item on a tie):

* ``category``: the 13 DeepFashion2 categories (category attribute), in ``category_id`` order;
* ``object_type``: ``upper-body``, ``lower-body`` or ``full-body``, the re-mapping of Table 1 of the
  hierarchical-label paper (also the taxonomy's hierarchy);
* ``group`` = ``pair-<pair_id>`` (user and shop photos of one product), ``meta_source`` = ``user``/``shop``.

``coco.json`` (for the object-type detector): every valid item as a box ``[x, y, w, h]`` whose
``category_id`` is the object type (1 upper-body, 2 lower-body, 3 full-body); each annotation keeps the
DeepFashion2 category in ``df2_category_id``/``df2_category``. Image sizes come from the image headers.

Items with an unknown ``category_id`` or a box with no area are left out (``details.items_dropped``);
an image with no valid item is skipped (``no valid item``), one whose JSON is broken as ``unparseable file``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vestis.data.importers._common import (
    IMPORTERS,
    SKIP_NO_IMAGE,
    ImportContext,
    Imported,
    UnsafePath,
)
from vestis.data.manifest import Record
from vestis.data.taxonomy import Attribute
from vestis.errors import VestisError

__all__ = ["CATEGORIES", "OBJECT_TYPES", "TABLE1", "read_deepfashion2"]

CATEGORIES = (
    "short sleeve top",
    "long sleeve top",
    "short sleeve outwear",
    "long sleeve outwear",
    "vest",
    "sling",
    "shorts",
    "trousers",
    "skirt",
    "short sleeve dress",
    "long sleeve dress",
    "vest dress",
    "sling dress",
)
OBJECT_TYPES = ("upper-body", "lower-body", "full-body")
# Table 1 of Papadopoulos et al., "Attentive Hierarchical Label Sharing ...": DF2 categories per object type.
TABLE1: dict[str, tuple[str, ...]] = {
    "upper-body": CATEGORIES[0:6],
    "lower-body": CATEGORIES[6:9],
    "full-body": CATEGORIES[9:13],
}
_OBJECT_TYPE = {c: t for t, cs in TABLE1.items() for c in cs}
_SPLIT_DIRS = {"train": "train", "validation": "val", "val": "val", "test": "test"}
_ITEM = re.compile(r"item(\d+)")


def _split_folders(src: Path) -> list[tuple[Path, str | None, str]]:
    """``[(folder, split, id prefix)]``: ``src`` itself or its split sub-folders with annotations."""
    if (src / "annos").is_dir():
        return [(src, None, "")]
    found = [(src / d, s, f"{d}/") for d, s in _SPLIT_DIRS.items() if (src / d / "annos").is_dir()]
    if not found:
        raise VestisError(f"{src}: no annos/ folder, nor train/annos or validation/annos; expected DeepFashion2")
    return found


def _items(anno: dict[str, Any], dropped: dict[str, int]) -> list[tuple[int, str, list[float]]]:
    """Valid ``(category_id, category, [x1, y1, x2, y2])`` in item order; counts the invalid ones in ``dropped``."""
    keyed = sorted((int(m.group(1)), k) for k in anno if (m := _ITEM.fullmatch(k)))
    out = []
    for _, key in keyed:
        item = anno[key]
        cid = item.get("category_id") if isinstance(item, dict) else None
        box = item.get("bounding_box") if isinstance(item, dict) else None
        if isinstance(cid, bool) or not isinstance(cid, int) or not 1 <= cid <= len(CATEGORIES):
            dropped["unknown category_id"] = dropped.get("unknown category_id", 0) + 1
            continue
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
            or box[2] <= box[0]
            or box[3] <= box[1]
        ):
            dropped["box without area"] = dropped.get("box without area", 0) + 1
            continue
        out.append((cid, CATEGORIES[cid - 1], [float(v) for v in box]))
    return out


@IMPORTERS.register("deepfashion2", crop=False)
def read_deepfashion2(src: Path, ctx: ImportContext) -> Imported:
    """Read the per-image annotation files and write the manifest rows and the object-type COCO file.

    Args:
        src: a split folder or the dataset root.
        ctx: import context.
    """
    report = ctx.report
    records: list[Record] = []
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    dropped: dict[str, int] = {}
    for folder, split, prefix in _split_folders(src):
        for anno_path in sorted((folder / "annos").glob("*.json")):
            report.rows_read += 1
            stem = anno_path.stem
            where = f"{prefix}annos/{anno_path.name}"
            try:
                # the annotation files are data too: a symlink among them must not read a file elsewhere
                ctx.find(anno_path.name, folder / "annos")
                path = ctx.find(f"{stem}.jpg", folder / "image")
            except UnsafePath as e:
                ctx.skip_unsafe(e, where)
                continue
            try:
                anno = json.loads(anno_path.read_text(encoding="utf-8"))
                if not isinstance(anno, dict):
                    raise ValueError("expected a JSON object")
            except (OSError, ValueError) as e:
                report.skip("unparseable file", f"{where}: {e}")
                continue
            if path is None:
                report.skip(SKIP_NO_IMAGE, f"{where}: image/{stem}.jpg not found")
                continue
            items = _items(anno, dropped)
            if not items:
                report.skip("no valid item", f"{where}: no item with a known category and a box")
                continue
            size = ctx.image_size(path)
            if size is None:
                report.skip("unreadable image", f"{where}: image/{stem}.jpg is not a readable image")
                continue
            image = ctx.image(path, f"{prefix}{stem}.jpg")
            # main item: the largest box; max() keeps the first of equal areas
            _, main, _ = max(items, key=lambda it: (it[2][2] - it[2][0]) * (it[2][3] - it[2][1]))
            pair = anno.get("pair_id")
            source = anno.get("source")
            records.append(
                Record(
                    id=f"{prefix}{stem}",
                    image=image,
                    labels={"category": (main,), "object_type": (_OBJECT_TYPE[main],)},
                    group=f"{prefix}pair-{pair}" if pair is not None else None,
                    split=split,
                    meta={"source": str(source)} if isinstance(source, str) and source else {},
                )
            )
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": image, "width": size[0], "height": size[1]})
            for cid, name, (x1, y1, x2, y2) in items:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": OBJECT_TYPES.index(_OBJECT_TYPE[name]) + 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                        "df2_category_id": cid,
                        "df2_category": name,
                    }
                )
    if dropped:
        report.details["items_dropped"] = dropped
    report.details["boxes"] = len(annotations)
    coco = {
        "info": {"description": "DeepFashion2 boxes re-mapped to object types", "source": str(src)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": t, "supercategory": "garment"} for i, t in enumerate(OBJECT_TYPES)],
    }
    return Imported(
        records=records,
        attributes=[
            Attribute("category", "single", CATEGORIES, roi="large"),
            Attribute("object_type", "single", OBJECT_TYPES, roi="large"),
        ],
        category_attribute="category",
        hierarchy={t: list(cs) for t, cs in TABLE1.items()},
        metadata=["source"],
        name="deepfashion2",
        coco=coco,
    )
