"""Box data for the garment detector: COCO detection JSON -> images, xyxy boxes and object-type classes.

:func:`read_coco_detection` reads the JSON that ``vestis synth --scenes`` (``scenes/annotations.json``), the
DeepFashion2 importer and the COCO importer (``coco.json``) write. An image ``file_name`` is looked up under
``image_root`` when given, else beside the JSON and in ``images/`` beside it. Category names are mapped to the
paper's four object types (Table 1): ``upper body``, ``upper_body`` and ``Upper-Body`` are all ``upper-body``,
and a DeepFashion2 category (``short sleeve top``) is mapped to its object type. ``classes=None`` keeps the
file's own categories in id order instead.

:class:`DetectionDataset` letterboxes each image to ``image_size`` square (aspect kept, centred, padded) and
transforms its boxes the same way; :func:`unletterbox_boxes` maps predicted boxes back to the original pixels.

Balancing (the paper's §4.1, multi-label definitions over the box classes present in each image):
:func:`box_class_stats` gives IR per class, MeanIR and SCUMBLE (the formulas of :mod:`vestis.data.stats`), and
:func:`downsample_to_mean_ir` randomly drops images until every class is in at most as many images as the
rarest one, which brings MeanIR to 1 when no image holds two classes.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from vestis.data.images import load_image
from vestis.data.importers._common import load_json
from vestis.data.importers.deepfashion2 import TABLE1
from vestis.data.stats import imbalance_ratios, mean_ir, scumble
from vestis.errors import VestisError

__all__ = [
    "OBJECT_TYPES",
    "DetectionDataset",
    "DetectionImage",
    "Letterbox",
    "box_class_stats",
    "collate_detection",
    "downsample_to_mean_ir",
    "letterbox",
    "letterbox_boxes",
    "object_type",
    "read_coco_detection",
    "unletterbox_boxes",
    "upsample_to_mean_ir",
]

# Table 1 of the hierarchical pipeline paper: the object types of stage 1, in class-index order.
OBJECT_TYPES: tuple[str, ...] = ("upper-body", "lower-body", "full-body", "footwear")
_DF2_TYPE = {c: t for t, cs in TABLE1.items() for c in cs}


def object_type(name: str) -> str | None:
    """The object type of a category name (an object type in any spelling, or a DeepFashion2 category)."""
    key = " ".join(name.strip().lower().replace("_", " ").replace("-", " ").split())
    if key in _DF2_TYPE:
        return _DF2_TYPE[key]
    dashed = key.replace(" ", "-")
    return dashed if dashed in OBJECT_TYPES else None


@dataclass(frozen=True)
class DetectionImage:
    """One annotated image.

    Attributes:
        path: the image file.
        width: width in pixels, from the JSON.
        height: height in pixels, from the JSON.
        boxes: ``(N, 4)`` float32 xyxy in pixels.
        labels: ``(N,)`` int64 class indices.
        image_id: the JSON's image id.
    """

    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    image_id: int


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _class_map(cats: Any, where: str, classes: Sequence[str] | None) -> tuple[dict[Any, int], tuple[str, ...]]:
    if not isinstance(cats, list) or not cats:
        raise VestisError(f"{where}: categories: expected a non-empty list of {{id, name}}")
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not _num(c.get("id")):
            raise VestisError(f"{where}: categories[{i}]: expected {{id: number, name: string}}")
    if classes is None:
        names = tuple(c["name"].strip() for c in sorted(cats, key=lambda c: c["id"]))
        return {c["id"]: names.index(c["name"].strip()) for c in cats}, names
    names = tuple(classes)
    mapping = {}
    for i, c in enumerate(cats):
        t = (
            object_type(c["name"])
            if names == OBJECT_TYPES
            else (c["name"].strip() if c["name"].strip() in names else None)
        )
        if t is None or t not in names:
            raise VestisError(f"{where}: categories[{i}]: {c['name']!r} is not one of the classes {', '.join(names)}")
        mapping[c["id"]] = names.index(t)
    return mapping, names


def _image_path(file_name: Any, dirs: Sequence[Path], where: str) -> Path:
    if not isinstance(file_name, str) or not file_name.strip():
        raise VestisError(f"{where}: file_name: expected a relative path")
    rel = PurePosixPath(file_name.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts:
        raise VestisError(f"{where}: file_name: {file_name!r} must be relative, without '..'")
    for d in dirs:
        if (d / rel).is_file():
            return d / rel
    raise VestisError(f"{where}: file_name: {file_name!r} not found in {', '.join(str(d) for d in dirs)}")


def read_coco_detection(
    path: str | Path, *, classes: Sequence[str] | None = OBJECT_TYPES, image_root: str | Path | None = None
) -> tuple[list[DetectionImage], tuple[str, ...]]:
    """Read a COCO detection JSON.

    Crowd annotations (``iscrowd: 1``) and boxes of zero width or height are left out, as COCO's evaluation
    ignores them; a box is clipped to its image.

    Args:
        path: the JSON file.
        classes: the class names, index order; the default maps categories to :data:`OBJECT_TYPES`;
            ``None``: the file's categories by id.
        image_root: the folder ``file_name`` is relative to (default: beside the JSON, then ``images/``).

    Returns:
        the images in JSON order (those without a box too) and the class names.

    Raises:
        VestisError: ``file: images[i]: ...`` for the first malformed entry, unknown category or missing image.
    """
    path = Path(path)
    data = load_json(path)
    where = str(path)
    if not isinstance(data, dict):
        raise VestisError(f"{where}: expected a COCO object with images, annotations and categories")
    cat_index, names = _class_map(data.get("categories"), where, classes)
    dirs = [Path(image_root)] if image_root is not None else [path.parent, path.parent / "images"]
    images = data.get("images")
    anns = data.get("annotations", [])
    if not isinstance(images, list) or not isinstance(anns, list):
        raise VestisError(f"{where}: images and annotations: expected lists")
    info: dict[Any, tuple[Path, int, int]] = {}
    order = []
    for i, im in enumerate(images):
        at = f"{where}: images[{i}]"
        if not isinstance(im, dict) or not _num(im.get("id")):
            raise VestisError(f"{at}: expected {{id, file_name, width, height}}")
        w, h = im.get("width"), im.get("height")
        if not (_num(w) and _num(h) and w >= 1 and h >= 1):
            raise VestisError(f"{at}: width and height: expected positive numbers, got {w!r} and {h!r}")
        if im["id"] in info:
            raise VestisError(f"{at}: duplicate image id {im['id']!r}")
        info[im["id"]] = (_image_path(im.get("file_name"), dirs, at), int(w), int(h))
        order.append(im["id"])
    boxes: dict[Any, list[list[float]]] = {k: [] for k in info}
    labels: dict[Any, list[int]] = {k: [] for k in info}
    for i, a in enumerate(anns):
        at = f"{where}: annotations[{i}]"
        if not isinstance(a, dict):
            raise VestisError(f"{at}: expected an object")
        if a.get("image_id") not in info:
            raise VestisError(f"{at}: image_id {a.get('image_id')!r} is not an image of the file")
        if a.get("category_id") not in cat_index:
            raise VestisError(f"{at}: category_id {a.get('category_id')!r} is not a category of the file")
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_num(v) for v in bbox)) or min(bbox[2:]) < 0:
            raise VestisError(f"{at}: bbox: expected [x, y, w, h] with w, h >= 0, got {bbox!r}")
        if a.get("iscrowd", 0):
            continue
        _, w, h = info[a["image_id"]]
        x0, y0 = min(max(bbox[0], 0.0), w), min(max(bbox[1], 0.0), h)
        x1, y1 = min(max(bbox[0] + bbox[2], 0.0), w), min(max(bbox[1] + bbox[3], 0.0), h)
        if x1 <= x0 or y1 <= y0:
            continue
        boxes[a["image_id"]].append([x0, y0, x1, y1])
        labels[a["image_id"]].append(cat_index[a["category_id"]])
    out = [
        DetectionImage(
            path=info[k][0],
            width=info[k][1],
            height=info[k][2],
            boxes=np.asarray(boxes[k], dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels[k], dtype=np.int64),
            image_id=int(k),
        )
        for k in order
    ]
    return out, names


@dataclass(frozen=True)
class Letterbox:
    """How :func:`letterbox` placed an image: ``new = old * scale + pad`` along each axis."""

    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int


def letterbox(image: Image.Image, size: int, fill: tuple[int, int, int] = (0, 0, 0)) -> tuple[Image.Image, Letterbox]:
    """Resize ``image`` to fit a ``size x size`` square with its aspect ratio, centred on a ``fill`` background."""
    if size < 1:
        raise VestisError(f"letterbox: size must be positive, got {size}")
    w, h = image.size
    s = size / max(w, h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    pad_x, pad_y = (size - nw) // 2, (size - nh) // 2
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(image.convert("RGB").resize((nw, nh), Image.Resampling.BILINEAR), (pad_x, pad_y))
    return canvas, Letterbox(nw / w, nh / h, pad_x, pad_y)


def letterbox_boxes(boxes: np.ndarray | Tensor, lb: Letterbox) -> np.ndarray:
    """``(N, 4)`` xyxy boxes of the original image in the letterboxed image's pixels."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scale = np.array([lb.scale_x, lb.scale_y, lb.scale_x, lb.scale_y], dtype=np.float32)
    pad = np.array([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y], dtype=np.float32)
    return b * scale + pad


def unletterbox_boxes(boxes: np.ndarray | Tensor, lb: Letterbox) -> np.ndarray:
    """The inverse of :func:`letterbox_boxes`: letterboxed xyxy boxes in the original image's pixels."""
    b = np.asarray(boxes.detach().cpu() if isinstance(boxes, Tensor) else boxes, dtype=np.float32).reshape(-1, 4)
    scale = np.array([lb.scale_x, lb.scale_y, lb.scale_x, lb.scale_y], dtype=np.float32)
    pad = np.array([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y], dtype=np.float32)
    return (b - pad) / scale


class DetectionDataset(Dataset):
    """Letterboxed images with their boxes, for the detector.

    An item is ``(image, target)``: ``image`` float32 ``(3, S, S)`` (``[0, 1]``, then ``(x - mean) / std`` when
    given), ``target`` ``{"boxes": (N, 4) float32 xyxy letterboxed pixels, "labels": (N,) int64,
    "image_id": int, "letterbox": Letterbox, "size": (height, width)}`` of the original.

    Args:
        source: a COCO JSON path or the images of :func:`read_coco_detection`.
        image_size: the square side ``S`` (a multiple of 32 for the detector).
        classes: as for :func:`read_coco_detection` (ignored when ``source`` is already read).
        mean: per-channel mean on the ``[0, 1]`` scale, or ``None``.
        std: per-channel standard deviation, or ``None``.
    """

    def __init__(
        self,
        source: str | Path | Sequence[DetectionImage],
        image_size: int = 512,
        *,
        classes: Sequence[str] | None = OBJECT_TYPES,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if isinstance(source, str | Path):
            self.images, self.classes = read_coco_detection(source, classes=classes)
        else:
            self.images, self.classes = list(source), tuple(classes or ())
        self.image_size = image_size
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Any]]:
        item = self.images[i]
        with load_image(item.path) as img:
            if img.size != (item.width, item.height):
                raise VestisError(
                    f"{item.path}: image is {img.size[0]}x{img.size[1]}, the JSON says {item.width}x{item.height}"
                )
            boxed, lb = letterbox(img, self.image_size)
        x = torch.from_numpy(np.asarray(boxed, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()  # (3, S, S)
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        target = {
            "boxes": torch.from_numpy(letterbox_boxes(item.boxes, lb)),
            "labels": torch.from_numpy(item.labels.copy()),
            "image_id": item.image_id,
            "letterbox": lb,
            "size": (item.height, item.width),
        }
        return x, target

    def labelsets(self) -> list[tuple[int, ...]]:
        """The box classes present in each image (for :func:`box_class_stats`)."""
        return [tuple(sorted(set(im.labels.tolist()))) for im in self.images]


def collate_detection(batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, list[dict[str, Any]]]:
    """Stack the images ``(B, 3, S, S)``; keep the targets as a list (their box counts differ)."""
    return torch.stack([x for x, _ in batch]), [t for _, t in batch]


def box_class_stats(labelsets: Iterable[Iterable[Any]], classes: Sequence[Any] | None = None) -> dict[str, Any]:
    """IR per class, MeanIR and SCUMBLE (paper eqs. 8-10) with an image's label set = its boxes' classes.

    A class counts once per image however many boxes it has there (``h(y, Y_i)`` of eq. 8).

    Args:
        labelsets: the classes present in each image.
        classes: every class, so that one without an image is reported (IR ``None``); default: those seen.

    Returns:
        ``{"counts": {class: images}, "ir": {class: IR or None}, "mean_ir": float | None, "scumble": float | None}``.
    """
    sets = [tuple(set(s)) for s in labelsets]
    seen = Counter(c for s in sets for c in s)
    keys = list(classes) if classes is not None else sorted(seen, key=str)
    counts = {str(c): seen.get(c, 0) for c in keys}
    irs = imbalance_ratios(counts)
    return {
        "counts": counts,
        "ir": irs,
        "mean_ir": mean_ir(irs),
        "scumble": scumble([[str(c) for c in s] for s in sets], irs),
    }


def downsample_to_mean_ir(labelsets: Sequence[Iterable[Any]], seed: int = 0, keep_empty: bool = True) -> list[int]:
    """Randomly drop images so that every class is in at most as many images as the rarest class.

    Images are visited in a random order, those holding rarer classes first (an image's rank is the global
    count of its rarest class), and kept while none of their classes has reached the cap; the rarest class
    so keeps all its images. With one class per image this gives MeanIR 1 (and SCUMBLE 0); when classes share
    images the result is the greedy approximation (each class at most at the cap).

    Args:
        labelsets: the classes present in each image.
        seed: seeds the random order.
        keep_empty: keep the images without a box (background; they do not change IR).

    Returns:
        the indices of the kept images, ascending.
    """
    sets = [frozenset(s) for s in labelsets]
    counts = Counter(c for s in sets for c in s)
    if not counts:
        return list(range(len(sets))) if keep_empty else []
    cap = min(counts.values())
    order = list(range(len(sets)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: min((counts[c] for c in sets[i]), default=math.inf))  # stable: random within a rank
    kept_counts: Counter[Any] = Counter()
    keep = []
    for i in order:
        if not sets[i]:
            if keep_empty:
                keep.append(i)
            continue
        if all(kept_counts[c] < cap for c in sets[i]):
            keep.append(i)
            kept_counts.update(sets[i])
    return sorted(keep)


def upsample_to_mean_ir(labelsets: Sequence[Iterable[Any]], seed: int = 0, max_factor: int = 4) -> list[int]:
    """Repeat images of the rarer classes so that every class approaches the most frequent one's image count.

    The paper's other balancing direction: the repeats are new samples because every pass draws its own
    augmentation (the detector's random flip). Classes are topped up rarest first; each repeat is a random image
    holding the class, preferring images whose other classes are still under the target (so the frequent classes
    grow least). No image is used more than ``max_factor`` times in all, which bounds the epoch length; with one
    class per image and enough images this gives MeanIR 1.

    Args:
        labelsets: the classes present in each image.
        seed: seeds the choice of the repeated images.
        max_factor: the most times one image may appear (itself included).

    Returns:
        every image index once, then the repeats, in a deterministic order.
    """
    if max_factor < 1:
        raise VestisError(f"max_factor: expected an integer >= 1, got {max_factor}")
    sets = [frozenset(s) for s in labelsets]
    counts = Counter(c for s in sets for c in s)
    out = list(range(len(sets)))
    if not counts:
        return out
    target = max(counts.values())
    uses = Counter(out)
    rng = random.Random(seed)
    for cls in sorted(counts, key=lambda c: (counts[c], str(c))):
        holders = [i for i, s in enumerate(sets) if cls in s]
        while counts[cls] < target:
            free = [i for i in holders if uses[i] < max_factor]
            if not free:
                break
            best = [i for i in free if all(counts[c] < target for c in sets[i])] or free
            i = rng.choice(best)
            out.append(i)
            uses[i] += 1
            counts.update(sets[i])
    return out
