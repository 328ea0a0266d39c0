"""What training a classifier and training an embedding model do differently: the loss, the batches, validation.

The loop (:mod:`vestis.train.loop`) owns everything they share: the optimiser and its schedule, mixed precision,
DDP, the frozen-trunk cache, checkpoints, resuming and early stopping. A task hands it

- ``loss``: a module mapping ``(model outputs, targets, masks)`` to a dict of named losses (the loop sums them);
- ``batches(epoch, ...)``: the epoch's batches, each a dict with ``index``, ``targets``, ``masks`` (and ``image``
  when the trunk is not cached);
- ``validate(...)``: the validation metrics (``summary`` holds the candidates for ``train.selection_metric``) and,
  for classifiers, the per-value decision thresholds calibrated on them (see :func:`calibrate_split`).

A classifier is selected by default on :func:`mean_kind_score`, the score that fits each attribute's kind: the
thresholded micro-F1 of the multi-scale paper rewards an unsure softmax attribute. A near-uniform guess over three
values clears the 0.3 threshold on all three and scores a micro-F1 of 0.5 whatever its accuracy, more than a model
that names one value and is right 45 % of the time.

A classifier trains on shuffled batches of the whole split. An embedding model (``csn``, ``triplet``, ``datrnet``,
see :mod:`vestis.models.embedding`) trains on P values x K images batches
(:class:`~vestis.data.triplets.PKBatchSampler`) with online triplet mining (`train.mining`), and is validated by
triplet accuracy on triplets built once from the validation split (the multi-column paper's validation accuracy)
and R@K.

The hierarchical pipeline's two stages are tasks too: a detector (:mod:`vestis.train.detection_task`) trains on
COCO boxes and is selected on COCO mAP; a stage-2 model (:mod:`vestis.train.stage2_task`) trains on a manifest of
garment crops and is selected on the mean of its category top-1 accuracy and attribute mAP.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from vestis.config import Config
from vestis.data.dataset import AttributeDataset, EncodedTargets
from vestis.data.taxonomy import Attribute, Taxonomy
from vestis.data.transforms import BatchAugment, prepare_batch
from vestis.data.triplets import PKBatchSampler, build_condition_triplets, default_batches, value_codes
from vestis.errors import VestisError
from vestis.eval.evaluator import evaluate_predictions
from vestis.eval.metrics import one_hot
from vestis.eval.retrieval import recall_at_k, triplet_accuracy
from vestis.eval.thresholds import choose_thresholds
from vestis.inference.batch import collect_embeddings, embed_loader, predict_loader
from vestis.losses import EmbeddingLoss, MaskedMultiTaskLoss, class_weights
from vestis.registry import MODELS
from vestis.train.cache import FeatureCache, predict_cache, random_hflip
from vestis.train.sampling import instance_weights

__all__ = [
    "Calibration",
    "ClassifierTask",
    "EmbeddingTask",
    "Task",
    "Validation",
    "calibrate_split",
    "embed_split",
    "mean_kind_score",
    "model_task",
]


@dataclass
class Calibration:
    """Per-value decision thresholds of every attribute and how each was chosen.

    Attributes:
        thresholds: attribute -> ``K`` floats (the checkpoint's ``thresholds`` field): calibrated where the
            validation split had enough positives of the value, ``train.threshold`` elsewhere.
        choice: attribute -> value -> ``{"threshold", "source": "calibrated" | "default", "positives"}`` (the
            checkpoint's ``metrics["threshold_choice"]``).
    """

    thresholds: dict[str, list[float]]
    choice: dict[str, dict[str, dict[str, Any]]]


@dataclass
class Validation:
    """One validation pass: ``metrics["summary"]`` holds the scalar candidates for the selection metric.

    ``calibrate()`` computes the thresholds only when asked (the loop asks when the epoch is the best so far);
    ``None`` for a model without decision thresholds.
    """

    metrics: dict[str, Any]
    calibrate: Callable[[], Calibration | None] = field(default=lambda: None)


def mean_kind_score(attributes: Mapping[str, Mapping[str, Any]]) -> float | None:
    """Mean over attributes of the score that fits each one's kind: ``accuracy`` for single-label attributes,
    ``micro_f1`` (at the evaluation threshold) for multi-label ones.

    Args:
        attributes: ``metrics["attributes"]`` of :func:`~vestis.eval.evaluator.evaluate_predictions`.

    Returns:
        The mean over the attributes whose score is defined (not ``None``); ``None`` when none is.
    """
    scores = [r["accuracy"] if r["kind"] == "single" else r["micro_f1"] for r in attributes.values()]
    defined = [float(x) for x in scores if x is not None]
    return float(np.mean(defined)) if defined else None


def calibrate_split(
    taxonomy: Taxonomy,
    probs: Mapping[str, np.ndarray],
    encoded: EncodedTargets,
    *,
    default: float,
    min_positives: int,
) -> Calibration:
    """Per-value thresholds from a split's probabilities, for single- and multi-label attributes alike.

    Args:
        taxonomy: the attributes (each one in ``probs``).
        probs: attribute -> ``(N, K)`` probabilities of the split's items.
        encoded: the split's targets and masks.
        default: the threshold of values with fewer than ``min_positives`` labelled positives.
        min_positives: ``train.calibration_min_positives``.
    """
    thresholds: dict[str, list[float]] = {}
    choice: dict[str, dict[str, dict[str, Any]]] = {}
    for a in taxonomy:
        c = choose_thresholds(
            probs[a.name],
            _targets_2d(a, encoded.targets[a.name]),
            encoded.masks[a.name],
            default=default,
            min_positives=min_positives,
        )
        thresholds[a.name] = [float(t) for t in c.thresholds]
        choice[a.name] = c.to_dict(a.values)
    return Calibration(thresholds, choice)


def model_task(name: str) -> str:
    """What the registered model ``name`` is trained for: ``classification``, ``embedding``, ``detection`` (stage 1
    of the hierarchical pipeline) or ``stage2`` (its category and attributes of garment crops)."""
    from vestis.models.detection import is_detector
    from vestis.models.hierarchical import is_stage2

    if is_detector(name):
        return "detection"
    if is_stage2(name):
        return "stage2"
    return str(MODELS.meta(name).get("task", "classification"))


def _weights(cfg: Config, taxonomy: Taxonomy, enc: EncodedTargets) -> dict[str, torch.Tensor] | None:
    tc = cfg.train
    if tc.class_weights == "none":
        return None
    return class_weights(taxonomy, enc.targets, enc.masks, tc.class_weights, tc.effective_beta, output=cfg.model.output)


class Task:
    """The common part: the splits, the device, the metric ``train.selection_metric: auto`` stands for."""

    default_metric = "mean_kind_score"
    # what ``auto`` stood for before train.selection_metric existed: what a resumed older run was selected on
    legacy_metric = "mean_micro_f1"

    def __init__(self, cfg: Config, taxonomy: Taxonomy, train_ds: Any, val_ds: Any) -> None:
        self.cfg, self.taxonomy, self.train_ds, self.val_ds = cfg, taxonomy, train_ds, val_ds
        self.loss: nn.Module

    def batches_per_epoch(self, loader: DataLoader) -> int:
        return len(loader)

    def metric_names(self) -> list[str] | None:
        """The keys validation's ``summary`` will hold, when known before training; ``None`` otherwise."""
        return None

    # how the loader stacks items into a batch (None: PyTorch's default)
    collate: Callable[[list[Any]], Any] | None = None

    def augmenter(self, dev: torch.device, cached: bool) -> nn.Module | None:
        """The image augmentation of training batches (``data.augment``), on ``[0, 1]`` images on the device;
        ``None`` when off or when the trunk is cached (augmentation cannot apply below it)."""
        dc = self.cfg.data
        return BatchAugment(dc.augment).to(dev) if dc.augment.enabled and not cached else None

    def step_inputs(
        self,
        batch: Any,
        dev: torch.device,
        augment: nn.Module | None,
        cache: FeatureCache | None,
        flip: float,
        channels_last: bool,
    ) -> tuple[tuple[Any, ...], dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
        """One training batch as ``(model arguments, targets, masks, number of images)``: the loop computes
        ``loss(model(*args), targets, masks)``."""
        if cache is None:
            images = batch["image"].to(dev, non_blocking=True)
            args: tuple[Any, ...] = (prepare_batch(images, self.cfg.data, augment, channels_last=channels_last),)
        else:
            args = random_hflip(*cache.inputs(batch["index"], dev), flip)
        targets = {k: v.to(dev, non_blocking=True) for k, v in batch["targets"].items()}
        masks = {k: v.to(dev, non_blocking=True) for k, v in batch["masks"].items()}
        return args, targets, masks, len(batch["index"])

    def batches(self, epoch: int, sampler: DistributedSampler, loader: DataLoader, cache: FeatureCache | None):
        raise NotImplementedError

    def validate(
        self, core: nn.Module, net: nn.Module, loader: DataLoader, cache: FeatureCache | None, dev: torch.device
    ) -> Validation:
        raise NotImplementedError


class ClassifierTask(Task):
    """Masked multi-task classification: one softmax/sigmoid branch per attribute."""

    def __init__(self, cfg: Config, taxonomy: Taxonomy, train_ds: AttributeDataset, val_ds: AttributeDataset) -> None:
        super().__init__(cfg, taxonomy, train_ds, val_ds)
        tc = cfg.train
        self.loss = MaskedMultiTaskLoss(
            taxonomy,
            class_weights=_weights(cfg, taxonomy, train_ds.encoded),
            label_smoothing=tc.label_smoothing,
            task_weights=tc.task_weights,
            output=cfg.model.output,
        )
        # per-instance weights (train.weight_column): carried by the masks, so the loss is a weighted mean
        self.weights = None
        if tc.weight_column:
            self.weights = torch.from_numpy(instance_weights(train_ds.manifest, tc.weight_column))

    def step_inputs(self, batch: Any, dev: torch.device, *rest: Any) -> Any:
        args, targets, masks, n = super().step_inputs(batch, dev, *rest)
        if self.weights is not None:
            w = self.weights[torch.as_tensor(batch["index"])].to(dev)
            masks = {k: v.to(w.dtype) * w for k, v in masks.items()}
        return args, targets, masks, n

    def batches(self, epoch: int, sampler: DistributedSampler, loader: DataLoader, cache: FeatureCache | None):
        if cache is None:
            return loader
        # this rank's batches of the epoch from the cache, in the order and sizes the loader would give
        return cache.batches(torch.tensor(list(sampler)), loader.batch_size or 1, drop_last=loader.drop_last)

    def validate(
        self, core: nn.Module, net: nn.Module, loader: DataLoader, cache: FeatureCache | None, dev: torch.device
    ) -> Validation:
        cfg, taxonomy = self.cfg, self.taxonomy
        if cache is None:
            channels_last = cfg.train.channels_last and dev.type == "cuda"
            probs = predict_loader(core, loader, cfg.data, taxonomy, dev, channels_last=channels_last)
        else:
            probs = predict_cache(net, cache, taxonomy, cfg.train.batch_size, dev)
        enc = self.val_ds.encoded
        metrics = evaluate_predictions(taxonomy, probs, enc.targets, enc.masks, threshold=cfg.train.threshold)
        metrics["summary"]["mean_kind_score"] = mean_kind_score(metrics["attributes"])

        def calibrate() -> Calibration:
            tc = cfg.train
            return calibrate_split(
                taxonomy, probs, enc, default=tc.threshold, min_positives=tc.calibration_min_positives
            )

        return Validation(metrics, calibrate)

    def metric_names(self) -> list[str]:
        # the summary of one made-up labelled row has every key a real validation summary has
        probs = {a.name: np.full((1, a.num_values), 1.0 / a.num_values) for a in self.taxonomy}
        targets = {
            a.name: np.zeros(1, dtype=np.int64) if a.kind == "single" else np.zeros((1, a.num_values))
            for a in self.taxonomy
        }
        masks = {a.name: np.ones(1, dtype=bool) for a in self.taxonomy}
        summary = evaluate_predictions(self.taxonomy, probs, targets, masks)["summary"]
        return sorted({*summary, "mean_kind_score"})


def _targets_2d(attr: Attribute, targets: np.ndarray) -> np.ndarray:
    """Targets as (N, K): single-label indices one-hot (missing rows zero), multi-label as they are."""
    return targets if attr.kind == "multi" else one_hot(targets, attr.num_values)


class EmbeddingTask(Task):
    """Attribute-aware embeddings: a triplet loss per attribute mined in P x K batches (+ recognition columns)."""

    default_metric = legacy_metric = "triplet_accuracy"

    def __init__(
        self,
        cfg: Config,
        taxonomy: Taxonomy,
        train_ds: AttributeDataset,
        val_ds: AttributeDataset,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(cfg, taxonomy, train_ds, val_ds)
        tc = cfg.train
        if tc.same_category is not None and tc.same_category not in taxonomy.names:
            raise VestisError(f"train.same_category: unknown attribute {tc.same_category!r}; expected {taxonomy.names}")
        self.loss = EmbeddingLoss(
            taxonomy,
            margin=tc.triplet_margin,
            mining=tc.mining,
            embed_reg=tc.embed_reg,
            mask_reg=tc.mask_reg,
            recognition_weight=tc.recognition_weight,
            retrieval_weight=tc.retrieval_weight,
            same_category=tc.same_category,
            class_weights=_weights(cfg, taxonomy, train_ds.encoded),
            label_smoothing=tc.label_smoothing,
        )
        codes = value_codes(taxonomy, train_ds.encoded)
        n = math.ceil(default_batches(len(train_ds), tc.pk_values, tc.pk_images) / world_size)
        self.sampler = PKBatchSampler(
            codes, p=tc.pk_values, k=tc.pk_images, batches=max(1, n), seed=tc.seed, rank=rank, world_size=world_size
        )
        self._loader = DataLoader(
            train_ds,
            batch_sampler=self.sampler,
            num_workers=cfg.data.num_workers,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if cfg.data.num_workers > 0 else None,
        )
        # fixed validation triplets: every epoch is scored on the same ones
        self.val_codes = value_codes(taxonomy, val_ds.encoded)
        self.val_triplets = build_condition_triplets(self.val_codes, seed=cfg.data.split_seed)

    def batches_per_epoch(self, loader: DataLoader) -> int:
        return len(self.sampler)

    def batches(self, epoch: int, sampler: DistributedSampler, loader: DataLoader, cache: FeatureCache | None):
        self.sampler.set_epoch(epoch)
        if cache is None:
            return self._loader
        out = []
        for idx in self.sampler:
            index = torch.as_tensor(idx, dtype=torch.long)
            out.append(
                {
                    "index": index,
                    "targets": {k: v[index] for k, v in cache.targets.items()},
                    "masks": {k: v[index] for k, v in cache.masks.items()},
                }
            )
        return out

    def outputs(
        self, core: nn.Module, net: nn.Module, loader: DataLoader, cache: FeatureCache | None, dev: torch.device
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Sub-embeddings ``{attr: (N, d)}`` and recognition probabilities ``{attr: (N, K)}`` of a split, in order."""
        return embed_split(core, net, loader, cache, self.cfg, self.taxonomy, dev)

    def validate(
        self, core: nn.Module, net: nn.Module, loader: DataLoader, cache: FeatureCache | None, dev: torch.device
    ) -> Validation:
        emb, probs = self.outputs(core, net, loader, cache, dev)
        acc = triplet_accuracy(emb, self.val_triplets)
        recall = recall_at_k(emb, self.val_codes, ks=(5, 10, 20))
        overall = acc["overall"]
        summary: dict[str, Any] = {"triplet_accuracy": None if math.isnan(overall) else overall}
        for k in (5, 10, 20):  # the multi-column paper averages R@K over the attribute dimensions
            per = [r[k] for a, r in recall.items() if a != "overall" and not math.isnan(r[k])]
            summary[f"mean_recall@{k}"] = float(np.mean(per)) if per else None
        metrics: dict[str, Any] = {"summary": summary, "retrieval": {"triplet_accuracy": acc, "recall": recall}}
        if probs:
            enc = self.val_ds.encoded
            rec = evaluate_predictions(self.taxonomy, probs, enc.targets, enc.masks, threshold=self.cfg.train.threshold)
            metrics["attributes"] = rec["attributes"]
            summary.update({k: v for k, v in rec["summary"].items() if k not in summary})
            summary["mean_kind_score"] = mean_kind_score(rec["attributes"])
        return Validation(metrics)


@torch.no_grad()
def embed_split(
    core: nn.Module,
    net: nn.Module,
    loader: DataLoader,
    cache: FeatureCache | None,
    cfg: Config,
    taxonomy: Taxonomy,
    dev: torch.device,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """An embedding model's sub-embeddings and recognition probabilities of a split: from the cached trunk maps
    through ``net`` (a :class:`~vestis.train.cache.CachedTail`) when ``cache`` is given, else from the images."""
    if cache is None:
        channels_last = cfg.train.channels_last and dev.type == "cuda"
        return embed_loader(core, loader, cfg.data, taxonomy, dev, channels_last=channels_last)
    was = net.training
    net.eval()
    try:
        size = cfg.train.batch_size
        outs = (net(*cache.inputs(torch.arange(s, min(s + size, len(cache))), dev)) for s in range(0, len(cache), size))
        return collect_embeddings(outs, taxonomy, getattr(core, "output", "kind"))
    finally:
        net.train(was)
