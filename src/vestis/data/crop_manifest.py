"""Stage-2 training data from stage 1: crops of the detector's boxes, labelled from the matching ground truth.

The hierarchical pipeline's paper trains the second stage on crops at the *predicted* boxes, so the classifiers
see the framing they will see in use. :func:`build_crops` runs a :class:`~vestis.inference.detector.Detector` on
every scene of one or more COCO annotation files (``vestis synth --scenes``, or composites of real photos,
``vestis synth --scenes --from MANIFEST``), matches each predicted box to a ground-truth box
(:func:`match_predictions`: greedy by score, the highest IoU at or above a threshold, any class, each
ground-truth box at most once) and writes::

    DIR/images/<scene>_<k>.jpg   the crop of the k-th predicted box of the scene (by score), when it matched
    DIR/manifest.csv             id, image, group (the product, else the scene), split, the ground truth's labels,
                                 meta_object_type (the predicted class), meta_score, meta_iou, meta_scene
    DIR/taxonomy.yaml            the attributes that occur, the category attribute, metadata
                                 (object_type, score, iou, scene)
    DIR/crops.json               counts: scenes, predictions, matched, unmatched predictions, missed ground truth,
                                 per class, and the labels left out

A label that would not validate against the taxonomy (an attribute it lacks, an unknown value, several values of a
single-label attribute, a value of an attribute that does not apply to the crop's category) is left out and
counted in ``crops.json``, so the manifest always passes ``vestis validate``.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vestis.data.crops import crop_box
from vestis.data.detection import read_coco_detection
from vestis.data.images import load_image
from vestis.data.importers._common import load_json
from vestis.data.manifest import SPLITS, Manifest, Record, write_manifest
from vestis.data.taxonomy import Attribute, Taxonomy, load_taxonomy, save_taxonomy
from vestis.errors import VestisError
from vestis.io import atomic_write_bytes, atomic_write_text
from vestis.models.hierarchical.layout import OBJECT_TYPE_META

if TYPE_CHECKING:
    from vestis.inference.detector import Detector

__all__ = ["CROP_METADATA", "CropsResult", "SceneAnnotations", "build_crops", "match_predictions", "read_scenes"]

CROP_METADATA = (OBJECT_TYPE_META, "score", "iou", "scene")
"""The metadata columns (``meta_<name>``) of a crops manifest."""
OUTPUTS = ("manifest.csv", "taxonomy.yaml", "crops.json")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_JPEG_QUALITY = 95


def match_predictions(
    pred_boxes: np.ndarray | torch.Tensor,
    pred_scores: np.ndarray | torch.Tensor,
    gt_boxes: np.ndarray | torch.Tensor,
    iou_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Match predicted boxes to ground-truth boxes, greedily by decreasing score.

    Each prediction in turn (by decreasing score, ties by index) takes the ground-truth box not yet taken with
    which it has the highest IoU (:func:`vestis.models.detection.box_iou`; ties: the lower index), when that IoU
    is at least ``iou_threshold``. Classes are not compared.

    Args:
        pred_boxes: ``(P, 4)`` xyxy.
        pred_scores: ``(P,)``.
        gt_boxes: ``(G, 4)`` xyxy in the same pixels.
        iou_threshold: the least IoU of a match, in ``(0, 1]``.

    Returns:
        ``(match, iou)``: per prediction the index of its ground-truth box or -1 (int64 ``(P,)``), and the IoU
        of the match (0 when unmatched; float32 ``(P,)``).
    """
    from vestis.models.detection import box_iou

    if not (isinstance(iou_threshold, int | float) and math.isfinite(iou_threshold) and 0 < iou_threshold <= 1):
        raise VestisError(f"iou: expected a threshold in (0, 1], got {iou_threshold!r}")
    pb = torch.as_tensor(np.asarray(pred_boxes, dtype=np.float32)).reshape(-1, 4)
    ps = torch.as_tensor(np.asarray(pred_scores, dtype=np.float32)).reshape(-1)
    gb = torch.as_tensor(np.asarray(gt_boxes, dtype=np.float32)).reshape(-1, 4)
    if len(pb) != len(ps):
        raise VestisError(f"match: {len(pb)} predicted boxes but {len(ps)} scores")
    match = np.full(len(pb), -1, dtype=np.int64)
    ious = np.zeros(len(pb), dtype=np.float32)
    if len(pb) == 0 or len(gb) == 0:
        return match, ious
    iou = box_iou(pb, gb).numpy()  # (P, G)
    taken = np.zeros(len(gb), dtype=bool)
    for p in torch.argsort(ps, descending=True, stable=True).tolist():
        row = np.where(taken, -1.0, iou[p])
        g = int(np.argmax(row))  # the first of equal maxima
        if row[g] >= iou_threshold:
            match[p], ious[p], taken[g] = g, row[g], True
    return match, ious


@dataclass(frozen=True)
class SceneAnnotations:
    """One scene of a COCO file with its ground-truth boxes and their labels.

    Attributes:
        path: the image file.
        width: the width the JSON gives.
        height: the height the JSON gives.
        image_id: the JSON's image id.
        boxes: ``(G, 4)`` float32 xyxy pixels (crowd and empty boxes left out, clipped to the image).
        labels: ``(G,)`` int64 class indices.
        attributes: per box, its ``attributes`` (attribute -> values).
        products: per box, its ``product_id`` as text, or ``None``.
    """

    path: Path
    width: int
    height: int
    image_id: int
    boxes: np.ndarray
    labels: np.ndarray
    attributes: tuple[dict[str, tuple[str, ...]], ...]
    products: tuple[str | None, ...]


def _ann_labels(value: Any, where: str) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise VestisError(f"{where}: attributes: expected an object of attribute -> list of values")
    out = {}
    for k, v in value.items():
        vals = [v] if isinstance(v, str) else v
        if not isinstance(vals, list) or not all(isinstance(x, str) for x in vals):
            raise VestisError(f"{where}: attributes.{k}: expected a string or a list of strings, got {v!r}")
        clean = tuple(dict.fromkeys(x.strip() for x in vals if x.strip()))
        if clean:
            out[str(k)] = clean
    return out


def read_scenes(path: str | os.PathLike[str], classes: Sequence[str]) -> list[SceneAnnotations]:
    """The scenes of a COCO detection file with each box's ``attributes`` and ``product_id``.

    The file is checked by :func:`vestis.data.detection.read_coco_detection` (categories mapped to ``classes``),
    whose box rules (crowd and empty boxes left out, clipping) decide which annotations count.

    Raises:
        VestisError: anything ``read_coco_detection`` refuses, or a malformed ``attributes`` or ``product_id``.
    """
    path = Path(path)
    images, _ = read_coco_detection(path, classes=classes)
    data = load_json(path)
    per_image: dict[Any, list[tuple[list[float], dict[str, tuple[str, ...]], str | None]]] = {
        im.image_id: [] for im in images
    }
    sizes = {im.image_id: (im.width, im.height) for im in images}
    for i, a in enumerate(data.get("annotations", [])):
        where = f"{path}: annotations[{i}]"
        if a.get("iscrowd", 0):
            continue
        w, h = sizes[int(a["image_id"])]
        x, y, bw, bh = a["bbox"]
        x0, y0 = min(max(x, 0.0), w), min(max(y, 0.0), h)
        x1, y1 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
        if x1 <= x0 or y1 <= y0:
            continue
        product = a.get("product_id")
        if product is not None and (isinstance(product, bool) or not isinstance(product, str | int)):
            raise VestisError(f"{where}: product_id: expected a string or an integer, got {product!r}")
        labels = _ann_labels(a.get("attributes"), where)
        per_image[int(a["image_id"])].append(([x0, y0, x1, y1], labels, None if product is None else str(product)))
    out = []
    for im in images:
        rows = per_image[im.image_id]
        boxes = np.asarray([r[0] for r in rows], dtype=np.float32).reshape(-1, 4)
        if boxes.shape != im.boxes.shape or not np.allclose(boxes, im.boxes):
            raise VestisError(f"{path}: images id {im.image_id}: the boxes could not be paired with their annotations")
        out.append(
            SceneAnnotations(
                path=im.path,
                width=im.width,
                height=im.height,
                image_id=im.image_id,
                boxes=im.boxes,
                labels=im.labels,
                attributes=tuple(r[1] for r in rows),
                products=tuple(r[2] for r in rows),
            )
        )
    return out


@dataclass
class CropsResult:
    """What :func:`build_crops` wrote.

    Attributes:
        out: the output folder.
        manifest: ``DIR/manifest.csv``.
        taxonomy: ``DIR/taxonomy.yaml``.
        summary_path: ``DIR/crops.json``.
        summary: the counts written to ``crops.json``.
    """

    out: Path
    manifest: Path
    taxonomy: Path
    summary_path: Path
    summary: dict[str, Any] = field(default_factory=dict)


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise VestisError(f"{out}: --out exists and is not a folder; expected a folder for the crops")
    images = out / "images"
    if images.is_symlink():  # writing through it would put the crops wherever it leads, outside --out
        raise VestisError(f"{images}: a symbolic link; the crops go into a real folder inside --out (remove the link)")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise VestisError(f"{out}: the output folder is not empty; pass --overwrite to replace its crops")
        # only what an earlier run wrote goes: the crops and the three files
        if images.is_dir():
            shutil.rmtree(images)
        for name in OUTPUTS:
            (out / name).unlink(missing_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)


def _scene_keys(files: Sequence[Path], scenes: Sequence[Sequence[SceneAnnotations]]) -> list[list[str]]:
    """A unique, file-name-safe id per scene: the image's stem, prefixed by its file's folder when several files
    are given (the position of the file when folder names repeat), made unique with the image id."""
    parents = [f.parent.name or "scenes" for f in files]
    if len(files) > 1 and len(set(parents)) < len(parents):
        parents = [f"{p}{i + 1}" for i, p in enumerate(parents)]
    seen: set[str] = set()
    keys = []
    for parent, items in zip(parents, scenes, strict=True):
        row = []
        for s in items:
            stem = _UNSAFE.sub("_", s.path.stem).strip("._") or "scene"
            key = f"{_UNSAFE.sub('_', parent)}_{stem}" if len(files) > 1 else stem
            if key in seen:
                key = f"{key}-{s.image_id}"
            seen.add(key)
            row.append(key)
        keys.append(row)
    return keys


class _LabelFilter:
    """Keeps the labels that validate against the taxonomy, counting the others by reason."""

    def __init__(self, taxonomy: Taxonomy, category: str) -> None:
        self.taxonomy, self.category = taxonomy, category
        self.dropped: Counter[str] = Counter()
        self.unknown_attributes: Counter[str] = Counter()

    def __call__(self, labels: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for name, values in labels.items():
            if name not in self.taxonomy:
                self.dropped["unknown-attribute"] += 1
                self.unknown_attributes[name] += 1
                continue
            attr = self.taxonomy[name]
            known = tuple(v for v in values if v in attr.values)
            if len(known) < len(values):
                self.dropped["unknown-value"] += len(values) - len(known)
            if attr.kind == "single" and len(known) > 1:
                self.dropped["multiple-values"] += 1
                continue
            if known:
                out[name] = known
        cats = out.get(self.category, ())
        cat = cats[0] if len(cats) == 1 else None
        for name in list(out):
            if name != self.category and not self.taxonomy[name].applies(cat):
                self.dropped["not-applicable"] += 1
                del out[name]
        return out


def _crops_taxonomy(taxonomy: Taxonomy, category: str, used: set[str]) -> Taxonomy:
    """The attributes of ``taxonomy`` that occur (and the category), in its order, with the crops' metadata."""
    same = category == taxonomy.category_attribute
    attrs = []
    for a in taxonomy.attributes:
        if a.name != category and a.name not in used:
            continue
        # applies_to names the categories of the taxonomy's own category attribute: kept only when it stays
        attrs.append(a if same else Attribute(a.name, a.kind, a.values, None, a.roi, a.description))
    name = f"{taxonomy.name} crops" if taxonomy.name else "crops"
    return Taxonomy(
        attributes=tuple(attrs),
        category_attribute=category,
        hierarchy=dict(taxonomy.hierarchy) if same else {},
        metadata=CROP_METADATA,
        name=name,
    )


def _jpeg(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=_JPEG_QUALITY)
    return buf.getvalue()


def _split_of(path: Path, split_from_path: bool, split: str | None) -> str | None:
    if split_from_path and path.parent.name in SPLITS:
        return path.parent.name
    return split


def build_crops(
    detector: Detector,
    annotations: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    taxonomy: Taxonomy | str | os.PathLike[str],
    category: str | None = None,
    iou: float = 0.5,
    min_score: float = 0.3,
    nms_iou: float | None = 0.5,
    margin: float = 0.0,
    split_from_path: bool = True,
    split: str | None = None,
    batch_size: int = 8,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    object_types: Sequence[str] | None = None,
) -> CropsResult:
    """Crop every matched predicted box of every scene and write the crops manifest (module docstring).

    Args:
        detector: the stage-1 detector.
        annotations: COCO detection files whose annotations carry ``attributes`` (and ``product_id``).
        out: the output folder (new or empty, unless ``overwrite``).
        taxonomy: the taxonomy of the annotations' attributes (a :class:`Taxonomy` or a YAML path).
        category: the category attribute of the crops (default: the taxonomy's).
        iou: the least IoU of a predicted box with its ground-truth box, in ``(0, 1]``.
        min_score: the least detector score of a predicted box.
        nms_iou: the detector's class-wise NMS overlap (``None``: none).
        margin: context added around each predicted box, as a fraction of its width and height.
        split_from_path: take the split from the annotation file's folder when it is ``train``, ``val`` or ``test``.
        split: the split of the other files' crops (``None``: empty).
        batch_size: scenes per detector call.
        overwrite: replace the crops of an earlier run in ``out``.
        progress: called as ``progress(done, total)`` scenes.
        object_types: the object types the stage-2 models will index (``model.object_types``; default: the
            configuration's default, the paper's four); crops of other detector classes are counted in the summary's
            ``object_types_unknown`` (a stage-2 model reads them as an unknown object type).

    Returns:
        the paths written and the counts.

    Raises:
        VestisError: a bad argument, an unusable annotation file or image, or a non-empty ``out`` without
            ``overwrite``.
    """
    files = [Path(a) for a in annotations]
    if not files:
        raise VestisError("annotations: expected at least one COCO annotations file")
    resolved = [f.resolve() for f in files]
    dup = next((f for i, f in enumerate(files) if resolved[i] in resolved[:i]), None)
    if dup is not None:
        raise VestisError(f"{dup}: the same annotations file is given twice")
    if split is not None and split not in SPLITS:
        raise VestisError(f"--split: expected one of {list(SPLITS)}, got {split!r}")
    if not math.isfinite(margin) or margin < 0:
        raise VestisError(f"--margin: expected a fraction >= 0, got {margin}")
    if not (math.isfinite(iou) and 0 < iou <= 1):
        raise VestisError(f"--iou: expected a threshold in (0, 1], got {iou}")
    tax = taxonomy if isinstance(taxonomy, Taxonomy) else load_taxonomy(taxonomy)
    category = category or tax.category_attribute
    if category is None:
        raise VestisError("the taxonomy has no category_attribute; name the crops' category with --category")
    if category not in tax:
        raise VestisError(f"--category: {category!r} is not an attribute of the taxonomy; it has {tax.names}")
    if tax[category].kind != "single":
        raise VestisError(f"--category: {category!r} is multi-label; expected a single-label attribute")
    scenes = [read_scenes(f, detector.classes) for f in files]
    keys = _scene_keys(files, scenes)
    out = Path(out)
    _prepare_out(out, overwrite)
    classes = detector.classes
    keep = _LabelFilter(tax, category)
    records: list[Record] = []
    count: Counter[str] = Counter()
    per_class = {c: Counter({"predictions": 0, "matched": 0, "gt_boxes": 0, "missed": 0}) for c in classes}
    splits: Counter[str] = Counter()
    total, done = sum(len(s) for s in scenes), 0
    for f, items, names in zip(files, scenes, keys, strict=True):
        file_split = _split_of(f, split_from_path, split)
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            images = []
            for s in chunk:
                img = load_image(s.path, max_pixels=detector.max_pixels)
                if img.size != (s.width, s.height):
                    raise VestisError(f"{s.path}: image is {img.width}x{img.height}, {f} says {s.width}x{s.height}")
                images.append(img)
            dets = detector.detect(images, min_score=min_score, nms_iou=nms_iou, batch_size=len(images))
            for s, img, d, scene in zip(chunk, images, dets, names[start : start + batch_size], strict=True):
                match, ious = match_predictions(d.boxes, d.scores, s.boxes, iou)
                count["predictions"] += len(d)
                count["gt_boxes"] += len(s.boxes)
                for g, label in enumerate(s.labels.tolist()):
                    per_class[classes[label]]["gt_boxes"] += 1
                    if g not in match:
                        per_class[classes[label]]["missed"] += 1
                for k in range(len(d)):
                    per_class[d.names[k]]["predictions"] += 1
                    g = int(match[k])
                    if g < 0:
                        continue
                    per_class[d.names[k]]["matched"] += 1
                    count["same_class"] += int(d.labels[k] == s.labels[g])
                    x0, y0, x1, y1 = d.boxes[k].tolist()
                    crop = crop_box(img, [x0, y0, x1 - x0, y1 - y0], margin)
                    rid = f"{scene}_{k}"
                    atomic_write_bytes(out / "images" / f"{rid}.jpg", _jpeg(crop))
                    meta = {OBJECT_TYPE_META: d.names[k], "score": f"{d.scores[k]:.4f}", "iou": f"{ious[k]:.4f}",
                            "scene": scene}  # fmt: skip
                    labels = keep(s.attributes[g])
                    group = s.products[g] or scene
                    records.append(Record(rid, f"images/{rid}.jpg", labels, group, file_split, None, meta))
                    splits[file_split or ""] += 1
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    used = {a for r in records for a in r.labels}
    crops_tax = _crops_taxonomy(tax, category, used)
    attributes = [a.name for a in crops_tax.attributes]
    for r in records:
        r.labels = {a: r.labels[a] for a in attributes if a in r.labels}
    matched = len(records)
    if object_types is None:
        from vestis.config import ModelConfig

        object_types = ModelConfig().object_types
    known = set(object_types)
    unknown_types = Counter(r.meta[OBJECT_TYPE_META] for r in records if r.meta[OBJECT_TYPE_META] not in known)
    summary = {
        "annotations": [str(f) for f in files],
        "model": detector.fingerprint,
        "scenes": total,
        "predictions": count["predictions"],
        "matched": matched,
        "matched_same_class": count["same_class"],
        "unmatched_predictions": count["predictions"] - matched,
        "gt_boxes": count["gt_boxes"],
        "missed_gt": count["gt_boxes"] - matched,
        "per_class": {c: dict(v) for c, v in per_class.items()},
        "splits": {k or "(none)": v for k, v in sorted(splits.items())},
        "labels_left_out": {k: v for k, v in sorted(keep.dropped.items()) if v},
        "unknown_attributes": dict(sorted(keep.unknown_attributes.items())),
        "settings": {"iou": iou, "min_score": min_score, "nms_iou": nms_iou, "margin": margin, "category": category},
        "object_types_unknown": dict(sorted(unknown_types.items())),
    }
    manifest = Manifest(records, attributes, list(CROP_METADATA), out, out / "manifest.csv")
    tax_path = save_taxonomy(crops_tax, out / "taxonomy.yaml")
    summary_path = atomic_write_text(out / "crops.json", json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    manifest_path = write_manifest(manifest, out / "manifest.csv")  # last: a manifest means every crop is there
    return CropsResult(out, manifest_path, tax_path, summary_path, summary)
