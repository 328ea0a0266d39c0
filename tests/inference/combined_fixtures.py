"""Per-attribute runs for the combined-model tests: a three-attribute synthetic catalog at 32 px, one run whose
members trained their whole network (three different trunks) and one refined from a member with a frozen trunk
(identical trunks)."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml
from PIL import Image

from vestis.config import load_config
from vestis.data.images import load_image
from vestis.data.synthetic import generate_catalog
from vestis.train.per_attribute import train_per_attribute

ATTRIBUTES = ("category", "pattern", "occasion")  # single, single with applies_to, multi
OVERRIDES = ["data.image_size=32", "data.augment.enabled=false", "train.epochs=1", "train.max_steps=2"]
FROZEN = ["train.trainable_blocks=0", "train.freeze_bn=true"]


def small_catalog(root: Path, seed: int = 4) -> Path:
    """A 40-image synthetic catalog reduced to :data:`ATTRIBUTES` (manifest and taxonomy); its manifest path."""
    generate_catalog(root / "full", n=40, size=32, seed=seed, workers=1)
    tax = yaml.safe_load((root / "full" / "taxonomy.yaml").read_text())
    tax["attributes"] = [a for a in tax["attributes"] if a["name"] in ATTRIBUTES]
    (root / "taxonomy.yaml").write_text(yaml.safe_dump(tax, sort_keys=False))
    with (root / "full" / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    keep = ["id", "image", "group", "split", "title", *ATTRIBUTES]
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keep)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("full/" + r[k] if k == "image" else r[k]) for k in keep})
    return root / "manifest.csv"


def train_run(data: Path, out: Path, extra: list[str] | None = None, attributes: list[str] | None = None) -> Path:
    """``train_per_attribute`` with the tiny preset at 32 px, one epoch of two steps; the run folder."""
    cfg = load_config("tiny", [*OVERRIDES, *(extra or [])])
    train_per_attribute(cfg, data, out, attributes=attributes, progress=False, log=lambda *_: None)
    return out


def make_runs(root: Path) -> dict[str, Path]:
    """The catalog (``data``), a run of every attribute whose members trained apart (``free``), a run of
    ``category`` and ``pattern`` refined from ``free``'s category member with a frozen trunk (``shared``) and one of
    ``category`` and ``occasion`` refined from it with the last backbone block trained (``partial``)."""
    data = small_catalog(root / "cat")
    free = train_run(data, root / "free")
    # a frozen trunk (BatchNorm too) from one base: both members keep it bit for bit
    base = f"model.init={free / 'category' / 'best.ckpt'}"
    shared = train_run(data, root / "shared", [base, *FROZEN], attributes=["category", "pattern"])
    # the same base with its last backbone block trained: the blocks below it stay the base's
    last = ["train.trainable_blocks=1", "train.freeze_bn=true"]
    partial = train_run(data, root / "partial", [base, *last], attributes=["category", "occasion"])
    return {"data": data, "free": free, "shared": shared, "partial": partial}


def images_of(data: Path, n: int = 12) -> list[Image.Image]:
    """The first ``n`` catalog images, decoded."""
    return [load_image(p) for p in sorted((data.parent / "full" / "images").iterdir())[:n]]
