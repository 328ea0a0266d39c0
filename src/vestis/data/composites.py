"""Outfit scenes composed from real product photos, with COCO boxes of the garments' object types.

Detection needs outfit images with boxes; a product catalog has one garment per photo on a white studio
background. :func:`build_composites` places 2-4 product photos of a manifest on varied backgrounds and writes
one COCO detection file per split (``vestis synth --scenes --from MANIFEST``)::

    OUT/scenes/<split>/images/scene_000000.jpg
    OUT/scenes/<split>/annotations.json      categories: the paper's four object types (Table 1); each annotation
                                             also names its product (``product_id``) and the product's labels

A product is either cut out (``mode="cutout"``: the studio background removed by a brightness threshold, then a
morphological opening, closing and hole filling, :func:`product_mask`) or kept as a flat-lay card
(``mode="card"``: the whole photo as a rectangle). Its box is the bounding box of the pixels it shows in the
scene, after later products have covered parts of it; a product covered completely is left out. The splits
follow the manifest's (its ``split`` column, else the group-aware split of :mod:`vestis.data.splits`), so a product
of the test split only ever appears in test scenes. Object types come from a label column (fashion-product's
``subCategory``: Topwear, Bottomwear, Dress, Shoes); products of other values are not used.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from vestis.data.images import load_image
from vestis.data.manifest import Manifest, Record, read_manifest
from vestis.data.splits import split_manifest
from vestis.errors import VestisError
from vestis.io import atomic_write_bytes, atomic_write_text

__all__ = ["FASHION_PRODUCT_TYPES", "OBJECT_TYPES", "CompositeResult", "build_composites", "product_mask"]

OBJECT_TYPES = ("upper-body", "lower-body", "full-body", "footwear")  # the hierarchical paper's Table 1
# fashion-product's subCategory values that name a garment of one object type
FASHION_PRODUCT_TYPES = {"Topwear": "upper-body", "Bottomwear": "lower-body", "Dress": "full-body", "Shoes": "footwear"}
MODES = ("cutout", "card")


def product_mask(image: np.ndarray, threshold: int = 235, open_px: int = 2, close_px: int = 4) -> np.ndarray:
    """The product's pixels in a studio shot on white: ``(H, W)`` bool.

    A pixel is background when all three channels are at least ``threshold``; the foreground is then opened
    (``open_px``: drops specks of noise), closed (``close_px``: joins a garment split by a white stripe), its
    holes are filled (a white print inside a shirt stays shirt) and only its largest connected part is kept.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise VestisError(f"product_mask: expected an (H, W, 3) image, got shape {image.shape}")
    fg = ~(image >= threshold).all(axis=2)
    if open_px:
        fg = ndimage.binary_opening(fg, structure=np.ones((2 * open_px + 1,) * 2, bool))
    if close_px:
        fg = ndimage.binary_closing(fg, structure=np.ones((2 * close_px + 1,) * 2, bool))
    fg = ndimage.binary_fill_holes(fg)
    labels, n = ndimage.label(fg)
    if n > 1:
        sizes = ndimage.sum(fg, labels, index=range(1, n + 1))
        fg = labels == (int(np.argmax(sizes)) + 1)
    return fg


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A varied background: a flat colour, a linear gradient or smooth noise, ``(size, size, 3)`` uint8."""
    kind = rng.integers(3)
    if kind == 0:
        return np.broadcast_to(rng.integers(40, 230, 3, dtype=np.uint8), (size, size, 3)).copy()
    if kind == 1:
        a, b = rng.integers(20, 240, (2, 3)).astype(np.float32)
        t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
        grad = a + (b - a) * t  # (size, 1, 3)
        img = np.broadcast_to(grad, (size, size, 3))
        return np.ascontiguousarray(img if rng.random() < 0.5 else img.transpose(1, 0, 2)).astype(np.uint8)
    coarse = rng.integers(30, 230, (6, 6, 3)).astype(np.float32)
    up = ndimage.zoom(coarse, (size / 6, size / 6, 1), order=1)[:size, :size]
    return np.clip(up + rng.normal(0, 6, up.shape), 0, 255).astype(np.uint8)


def _place(canvas: np.ndarray, owner: np.ndarray, photo: np.ndarray, mask: np.ndarray, x: int, y: int, k: int) -> None:
    """Paint ``photo`` where ``mask`` is set at ``(x, y)``; ``owner`` records which product each pixel shows."""
    h, w = mask.shape
    canvas[y : y + h, x : x + w][mask] = photo[mask]
    owner[y : y + h, x : x + w][mask] = k


@dataclass
class CompositeResult:
    """What :func:`build_composites` wrote: per split its annotations file and counts."""

    annotations: dict[str, Path] = field(default_factory=dict)
    scenes: dict[str, int] = field(default_factory=dict)
    boxes: dict[str, int] = field(default_factory=dict)
    products: dict[str, int] = field(default_factory=dict)


def _typed_products(manifest: Manifest, column: str, types: Mapping[str, str]) -> list[tuple[Record, str]]:
    out = []
    for r in manifest.records:
        vals = r.labels.get(column, ())
        t = types.get(vals[0]) if len(vals) == 1 else None
        if t is not None:
            out.append((r, t))
    return out


def build_composites(
    manifest_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    n: int = 200,
    size: int = 512,
    per_scene: tuple[int, int] = (2, 4),
    mode: str = "cutout",
    type_column: str = "subCategory",
    types: Mapping[str, str] = FASHION_PRODUCT_TYPES,
    threshold: int = 235,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    seed: int = 0,
    max_pixels: int = 64_000_000,
) -> CompositeResult:
    """Compose ``n`` scenes in all (shared out over the splits by their product counts) into ``out/scenes``.

    Args:
        manifest_path: a manifest whose ``type_column`` label gives each product's object type via ``types``.
        out: the output folder.
        n: scenes over all splits.
        size: scene side in pixels.
        per_scene: the least and most products per scene (each scene holds distinct object types where it can).
        mode: ``cutout`` (background removed) or ``card`` (the whole photo).
        type_column: the label column naming the product kind.
        types: its value -> object type (one of :data:`OBJECT_TYPES`).
        threshold: the brightness at or above which a pixel of a studio shot is background (``cutout``).
        val_fraction, test_fraction, split_seed: the split of rows without a ``split`` column value.
        seed: the scenes' random seed (same seed, same files).
        max_pixels: the largest product photo decoded.

    Raises:
        VestisError: a bad argument, no usable product in the manifest, an unreadable product photo.
    """
    if mode not in MODES:
        raise VestisError(f"mode: expected one of {list(MODES)}, got {mode!r}")
    lo, hi = per_scene
    if not 1 <= lo <= hi or n < 1 or size < 64:
        raise VestisError(f"expected 1 <= per_scene[0] <= per_scene[1], n >= 1 and size >= 64; got {per_scene}, {n}, "
                          f"{size}")  # fmt: skip
    bad = sorted({t for t in types.values() if t not in OBJECT_TYPES})
    if bad:
        raise VestisError(f"types: {bad} are not object types; expected {list(OBJECT_TYPES)}")
    manifest = read_manifest(manifest_path)
    if type_column not in manifest.attributes:
        raise VestisError(f"{manifest_path}: no label column {type_column!r}; it has {manifest.attributes}")
    parts = split_manifest(manifest, val_fraction=val_fraction, test_fraction=test_fraction, seed=split_seed)
    pools = {s: _typed_products(m, type_column, types) for s, m in parts.items()}
    total = sum(len(p) for p in pools.values())
    if total == 0:
        raise VestisError(f"{manifest_path}: no product whose {type_column} is one of {sorted(types)}")
    res = CompositeResult()
    root = Path(out) / "scenes"
    for split, pool in pools.items():
        if not pool:
            continue
        count = max(1, round(n * len(pool) / total))
        ann = _compose_split(manifest, pool, root / split, count, size, (lo, hi), mode, threshold, seed, max_pixels,
                             split)  # fmt: skip
        res.annotations[split], res.scenes[split] = ann, count
        doc = json.loads(ann.read_text(encoding="utf-8"))
        res.boxes[split] = len(doc["annotations"])
        res.products[split] = len(pool)
    return res


def _compose_split(
    manifest: Manifest,
    pool: list[tuple[Record, str]],
    folder: Path,
    count: int,
    size: int,
    per_scene: tuple[int, int],
    mode: str,
    threshold: int,
    seed: int,
    max_pixels: int,
    split: str,
) -> Path:
    rng = np.random.default_rng([seed, sum(map(ord, split))])
    pick = random.Random(f"{seed}-{split}")
    by_type: dict[str, list[Record]] = {}
    for r, t in pool:
        by_type.setdefault(t, []).append(r)
    images, annotations = [], []
    for j in range(count):
        k = pick.randint(*per_scene)
        kinds = pick.sample(sorted(by_type), min(k, len(by_type)))
        kinds += [pick.choice(sorted(by_type)) for _ in range(k - len(kinds))]
        chosen = [(pick.choice(by_type[t]), t) for t in kinds]
        canvas = _background(rng, size)
        owner = np.full((size, size), -1, np.int32)
        cells = _cells(k, size, pick)
        for i, ((rec, _), (cx, cy, cw, ch)) in enumerate(zip(chosen, cells, strict=True)):
            path = manifest.image_path(rec)
            try:
                img = load_image(path, max_pixels=max_pixels)
            except VestisError as e:
                raise VestisError(f"product {rec.id}: {e}") from None
            scale = min(cw / img.width, ch / img.height) * pick.uniform(0.75, 1.0)
            w, h = max(8, int(img.width * scale)), max(8, int(img.height * scale))
            photo = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)
            mask = product_mask(photo, threshold) if mode == "cutout" else np.ones((h, w), bool)
            x = cx + pick.randint(0, max(0, cw - w))
            y = cy + pick.randint(0, max(0, ch - h))
            _place(canvas, owner, photo, mask, x, y, i)
        name = f"images/scene_{j:06d}.jpg"
        buf = _jpeg(canvas)
        atomic_write_bytes(folder / name, buf)
        images.append({"id": j + 1, "file_name": name, "width": size, "height": size})
        for i, (rec, t) in enumerate(chosen):
            ys, xs = np.nonzero(owner == i)
            if xs.size == 0:
                continue  # covered completely by later products
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            annotations.append({
                "id": len(annotations) + 1, "image_id": j + 1, "category_id": OBJECT_TYPES.index(t) + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(xs.size), "iscrowd": 0, "product_id": rec.id,
                "attributes": {a: list(v) for a, v in rec.labels.items()},
            })  # fmt: skip
    doc = {
        "info": {"description": "vestis outfit composites of real product photos; bbox [x, y, w, h] in pixels"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": t, "supercategory": "garment"} for i, t in enumerate(OBJECT_TYPES)],
    }
    path = folder / "annotations.json"
    atomic_write_text(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return path


def _cells(k: int, size: int, pick: random.Random) -> list[tuple[int, int, int, int]]:
    """``k`` slots ``(x, y, w, h)`` that tile the scene (columns, then rows), so products overlap only a little."""
    cols = 1 if k == 1 else 2
    rows = (k + cols - 1) // cols
    w, h = size // cols, size // rows
    slots = [(c * w, r * h, w, h) for r in range(rows) for c in range(cols)][:k]
    pick.shuffle(slots)
    return slots


def _jpeg(canvas: np.ndarray) -> bytes:
    import io

    b = io.BytesIO()
    Image.fromarray(canvas).save(b, format="JPEG", quality=90)
    return b.getvalue()
