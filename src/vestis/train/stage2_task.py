"""Training a stage-2 model (category and attributes of garment crops) in the one training loop.

The data is an ordinary manifest of crops (``vestis crops`` writes one from a detector's boxes): the taxonomy's
``category_attribute`` is the category, the other attributes are flattened into the model's multi-label output
(:class:`~vestis.models.hierarchical.Stage2Layout`), and the metadata column ``meta_object_type`` holds each crop's
detector class, the label-sharing models' input. The loss is the paper's: categorical cross-entropy on the
category plus binary cross-entropy on the flattened attributes, missing labels ignored; the true category is
passed for teacher forcing. The augmentation is the paper's stage-2 one (:class:`~vestis.data.crops.CropAugment`:
flip, rotation and zoom by 10 %), when ``data.augment.enabled``.

Validation scores :func:`~vestis.eval.hierarchical.evaluate_stage2` (category top-1/3/5, attribute recall@3/5 and
mAP, the rate of attributes predicted for a category they do not apply to) and selects on ``stage2_score``, the
mean of ``category_top1`` (single-label: accuracy) and ``attribute_map`` (multi-label: threshold-free).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from vestis.config import Config, DataConfig
from vestis.data.crops import CropAugment
from vestis.data.dataset import AttributeDataset
from vestis.data.taxonomy import Taxonomy
from vestis.data.transforms import prepare_batch
from vestis.errors import VestisError
from vestis.eval.hierarchical import evaluate_stage2
from vestis.losses.hierarchical import HierarchicalLoss
from vestis.models.hierarchical import OBJECT_TYPE_META, Stage2Layout
from vestis.train.cache import FeatureCache
from vestis.train.tasks import Task, Validation

__all__ = ["STAGE2_METRICS", "Stage2Loss", "Stage2Task", "crops_settings", "object_type_indices", "stage2_outputs"]

log = logging.getLogger(__name__)

STAGE2_METRICS = (
    "category_top1",
    "category_top3",
    "category_top5",
    "attribute_recall@3",
    "attribute_recall@5",
    "attribute_recall_pooled@3",
    "attribute_recall_pooled@5",
    "attribute_recall_mmfashion@3",
    "attribute_recall_mmfashion@5",
    "attribute_map",
    "incompatible_rate",
    "incompatible_item_rate",
    "stage2_score",
)


def crops_settings(manifest_path: Path | None) -> dict[str, Any] | None:
    """The settings of ``vestis crops`` (``crops.json`` beside the manifest: margin, min_score, iou), or ``None``.

    A stage-2 checkpoint stores them as ``metrics["crops"]``, so ``vestis pipeline`` crops with the same margin.
    """
    if manifest_path is None:
        return None
    path = Path(manifest_path).parent / "crops.json"
    if not path.is_file() or path.stat().st_size > 16 * 2**20:
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8")).get("settings")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(settings, dict):
        return None
    keep = {k: settings[k] for k in ("margin", "min_score", "iou", "nms_iou") if k in settings}
    margin = keep.get("margin")
    if not isinstance(margin, int | float) or isinstance(margin, bool) or not 0 <= margin <= 10:
        return None
    return keep


def object_type_indices(ds: AttributeDataset, layout: Stage2Layout) -> Tensor:
    """(N,) detector class index of each row (``meta_object_type``), ``-1`` where absent or unknown."""
    return torch.tensor(
        [layout.object_type_index(r.meta.get(OBJECT_TYPE_META)) for r in ds.manifest.records], dtype=torch.long
    )


class Stage2Loss(nn.Module):
    """:class:`~vestis.losses.hierarchical.HierarchicalLoss` on a batch's per-attribute targets and masks."""

    def __init__(self, layout: Stage2Layout) -> None:
        super().__init__()
        self.layout = layout
        self.inner = HierarchicalLoss()

    def forward(
        self, outputs: Mapping[str, Any], targets: Mapping[str, Tensor], masks: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        flat = {
            "category": self.layout.category_targets(targets, masks),
            "attributes": self.layout.flat_targets(targets, masks),
        }
        return self.inner(outputs, flat)


class Stage2Task(Task):
    """Crops -> category CE + attribute BCE; selected on ``stage2_score``."""

    default_metric = legacy_metric = "stage2_score"

    def __init__(self, cfg: Config, taxonomy: Taxonomy, train_ds: AttributeDataset, val_ds: AttributeDataset) -> None:
        super().__init__(cfg, taxonomy, train_ds, val_ds)
        if cfg.train.cache_features:
            raise VestisError("train.cache_features: a stage-2 model trains on its crops; the feature cache is off")
        self.layout = Stage2Layout.from_taxonomy(taxonomy, cfg.model.object_types)
        self.loss = Stage2Loss(self.layout)
        self.train_types = object_type_indices(train_ds, self.layout)
        self.val_types = object_type_indices(val_ds, self.layout)
        unknown = float((self.train_types < 0).float().mean()) if len(self.train_types) else 0.0
        if unknown > 0.1:
            log.warning(
                "%.0f%% of the training crops have a meta_object_type outside model.object_types %s: the label-sharing "
                "models see them as unknown", 100 * unknown, list(self.layout.object_types),
            )  # fmt: skip
        self.crops = crops_settings(train_ds.manifest.path)

    def metric_names(self) -> list[str]:
        return list(STAGE2_METRICS)

    def augmenter(self, dev: torch.device, cached: bool) -> nn.Module | None:
        aug = self.cfg.data.augment
        return CropAugment(hflip=aug.hflip).to(dev) if aug.enabled else None

    def batches(self, epoch: int, sampler: DistributedSampler, loader: DataLoader, cache: FeatureCache | None):
        return loader

    def step_inputs(
        self,
        batch: Any,
        dev: torch.device,
        augment: nn.Module | None,
        cache: FeatureCache | None,
        flip: float,
        channels_last: bool,
    ) -> tuple[tuple[Any, ...], dict[str, Tensor], dict[str, Tensor], int]:
        (x,), targets, masks, n = super().step_inputs(batch, dev, augment, None, 0.0, channels_last)
        types = self.train_types[batch["index"]].to(dev)
        return (x, types, self.layout.category_targets(targets, masks)), targets, masks, n

    def outputs(self, core: nn.Module, loader: DataLoader, types: Tensor, dev: torch.device) -> dict[str, np.ndarray]:
        """:func:`stage2_outputs` of a split."""
        return stage2_outputs(core, loader, types, self.layout, self.cfg.data, dev)

    def validate(
        self, core: nn.Module, net: nn.Module, loader: DataLoader, cache: FeatureCache | None, dev: torch.device
    ) -> Validation:
        o = self.outputs(core, loader, self.val_types, dev)
        m = evaluate_stage2(
            o["category"], o["labels"].astype(np.int64), o["attributes"], o["targets"],
            allowed=self.layout.allowed, threshold=self.cfg.train.threshold,
        )  # fmt: skip
        summary: dict[str, Any] = {k: (None if v != v else float(v)) for k, v in m.items()}
        parts = [summary.get("category_top1"), summary.get("attribute_map")]
        defined = [p for p in parts if p is not None]
        summary["stage2_score"] = float(np.mean(defined)) if defined else None
        metrics: dict[str, Any] = {"summary": summary, "stage2": dict(summary)}
        if self.crops is not None:  # how the crops were cut: `vestis pipeline` cuts the same way by default
            metrics["crops"] = self.crops
        return Validation(metrics)


@torch.no_grad()
def stage2_outputs(
    model: nn.Module, loader: DataLoader, types: Tensor, layout: Stage2Layout, data_cfg: DataConfig, dev: torch.device
) -> dict[str, np.ndarray]:
    """A stage-2 model's outputs on an :class:`~vestis.data.dataset.AttributeDataset` loader, in order.

    Args:
        model: the stage-2 model.
        loader: batches with ``image``, ``index``, ``targets`` and ``masks``.
        types: (N,) detector class of every row of the dataset (:func:`object_type_indices`).
        layout: the model's layout.
        data_cfg: the preprocessing.
        dev: where the model runs.

    Returns:
        ``category`` (N, C) softmax and ``attributes`` (N, A) sigmoid probabilities, ``labels`` (N,) category
        indices (-1 missing) and ``targets`` (N, A) flat attribute targets in {0, 1, -1}.
    """
    was = model.training
    model.eval()
    parts: dict[str, list[np.ndarray]] = {"category": [], "attributes": [], "labels": [], "targets": []}
    try:
        for batch in loader:
            x = prepare_batch(batch["image"].to(dev), data_cfg)
            out = model(x, object_types=types[batch["index"]].to(dev))
            parts["category"].append(out["category"].float().softmax(1).cpu().numpy())
            parts["attributes"].append(out["attributes"].float().sigmoid().cpu().numpy())
            parts["labels"].append(layout.category_targets(batch["targets"], batch["masks"]).numpy())
            parts["targets"].append(layout.flat_targets(batch["targets"], batch["masks"]).numpy())
    finally:
        model.train(was)
    a, c = layout.num_attributes, len(layout.categories)
    empty = {"category": (0, c), "attributes": (0, a), "labels": (0,), "targets": (0, a)}
    return {k: np.concatenate(v) if v else np.zeros(empty[k]) for k, v in parts.items()}
