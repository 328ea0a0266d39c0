"""The torch Dataset: image tensor + per-attribute targets + per-attribute masks.

A mask is 1 where the attribute is labelled and 0 where it is missing or does not apply to the item's
category, so losses and metrics can ignore those rows (multi-scale paper §5.2: "we ignore the loss of the
missing attributes"). Target conventions, shared with the losses and the evaluator:

* single-label attribute: ``int64`` class index, ``-1`` when missing;
* multi-label attribute: ``float32`` multi-hot vector ``(K,)``, all zeros when missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from vestis.config import DataConfig
from vestis.data.images import load_image
from vestis.data.manifest import Manifest, Record
from vestis.data.taxonomy import Taxonomy
from vestis.data.transforms import LetterboxResize
from vestis.errors import VestisError

__all__ = ["AttributeDataset", "EncodedTargets", "encode_targets"]


@dataclass
class EncodedTargets:
    """Targets and masks of a list of records, as arrays (one row per record)."""

    targets: dict[str, np.ndarray]  # single: (N,) int64 (-1 missing); multi: (N, K) float32
    masks: dict[str, np.ndarray]  # (N,) bool

    def __len__(self) -> int:
        return len(next(iter(self.masks.values()))) if self.masks else 0


def encode_targets(records: list[Record], taxonomy: Taxonomy) -> EncodedTargets:
    """Encode labels; unknown values or several values in a single-label attribute raise (validate first)."""
    n = len(records)
    targets: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    cat_attr = taxonomy.category_attribute
    categories = [(r.labels.get(cat_attr) or (None,))[0] if cat_attr else None for r in records]
    for attr in taxonomy:
        mask = np.zeros(n, dtype=bool)
        if attr.kind == "single":
            t = np.full(n, -1, dtype=np.int64)
        else:
            t = np.zeros((n, attr.num_values), dtype=np.float32)
        for i, r in enumerate(records):
            vals = r.labels.get(attr.name)
            if not vals or not attr.applies(categories[i]):
                continue
            if attr.kind == "single":
                if len(vals) > 1:
                    raise VestisError(f"row {r.id!r}: {attr.name}: single-label attribute has several values {vals}")
                t[i] = attr.index(vals[0])
            else:
                for v in vals:
                    t[i, attr.index(v)] = 1.0
            mask[i] = True
        targets[attr.name] = t
        masks[attr.name] = mask
    return EncodedTargets(targets, masks)


class AttributeDataset(Dataset):
    """Items of a manifest as ``{"image": uint8 (3,S,S), "targets": {...}, "masks": {...}, "index": i}``.

    Images are decoded in the worker with libjpeg DCT scaling when the file is much larger than the
    target size, and letterboxed to a square. Augmentation and normalisation happen on the batch
    (:class:`vestis.data.transforms.BatchAugment`).
    """

    def __init__(self, manifest: Manifest, taxonomy: Taxonomy, cfg: DataConfig) -> None:
        self.manifest = manifest
        self.taxonomy = taxonomy
        self.cfg = cfg
        self.encoded = encode_targets(manifest.records, taxonomy)
        self.resize = LetterboxResize(cfg.image_size, cfg.pad_value)

    def __len__(self) -> int:
        return len(self.manifest.records)

    def load(self, index: int) -> torch.Tensor:
        rec = self.manifest.records[index]
        img = load_image(self.manifest.image_path(rec), max_pixels=self.cfg.max_pixels, min_side=self.cfg.image_size)
        return self.resize(img)  # (3, S, S) uint8

    def __getitem__(self, index: int) -> dict:
        enc = self.encoded
        return {
            "image": self.load(index),
            "targets": {k: torch.from_numpy(np.asarray(v[index])) for k, v in enc.targets.items()},
            "masks": {k: torch.tensor(bool(v[index])) for k, v in enc.masks.items()},
            "index": index,
        }
