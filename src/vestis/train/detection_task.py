"""Training the garment detector (stage 1 of the hierarchical pipeline) in the one training loop.

The data is COCO detection JSON (``vestis synth --scenes``, composites of real product photos, the DeepFashion2 and
COCO importers): :func:`prepare_detection_data` reads it into letterboxed :class:`~vestis.data.detection.
DetectionDataset` splits, the classes becoming the checkpoint's taxonomy (one single-label attribute,
``object_type``). The validation split is a second JSON (``data.val_data``) or, without one, a seeded share
(``data.val_fraction``) of the training images.

Balancing follows the paper's §4.1: IR, MeanIR and SCUMBLE of the box classes are logged, and ``data.balance:
downsample`` randomly drops training images towards MeanIR = 1 (:func:`~vestis.data.detection.downsample_to_mean_ir`),
``upsample`` repeats images of the rarer classes, each repeat drawing its own flip
(:func:`~vestis.data.detection.upsample_to_mean_ir`).

A batch goes through the model with its boxes (CenterNet encodes its targets and returns its named losses in
training mode); the only augmentation is a horizontal flip of image and boxes (``data.augment.hflip``), the other
``data.augment`` transforms do not carry boxes. Validation decodes every validation image and scores COCO mAP,
AP50, AP75 and AR@100 with pycocotools, in the original pixels.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from vestis.config import Config
from vestis.data.detection import (
    OBJECT_TYPES,
    DetectionDataset,
    DetectionImage,
    box_class_stats,
    collate_detection,
    downsample_to_mean_ir,
    read_coco_detection,
    unletterbox_boxes,
    upsample_to_mean_ir,
)
from vestis.data.images import load_image
from vestis.data.taxonomy import Attribute, Taxonomy
from vestis.data.transforms import normalize
from vestis.errors import VestisError
from vestis.eval.detection import coco_detection_metrics
from vestis.models.detection.boxes import postprocess_boxes
from vestis.train.cache import FeatureCache
from vestis.train.tasks import Task, Validation

__all__ = ["CLASS_ATTRIBUTE", "DETECTION_METRICS", "DetectionTask", "prepare_detection_data"]

CLASS_ATTRIBUTE = "object_type"  # the one attribute of a detector's taxonomy: its classes
DETECTION_METRICS = ("mAP", "AP50", "AP75", "AR@100")
BALANCE = ("none", "downsample", "upsample")


def prepare_detection_data(
    cfg: Config, data: Path, *, check_images: bool = True, log: Callable[[str], Any] = print
) -> tuple[DetectionDataset, DetectionDataset, Taxonomy]:
    """The training and validation splits of a detector and its taxonomy.

    Args:
        cfg: the run's configuration (``data.image_size``, ``data.val_data``, ``data.val_fraction``,
            ``data.split_seed``, ``data.balance``, ``data.max_pixels``).
        data: the training COCO JSON.
        check_images: open every image once (bounded by ``data.max_pixels``) to find unreadable ones first.
        log: where one-line messages go.

    Raises:
        VestisError: a bad JSON, an unreadable image, a size that is not a multiple of 32, no training image.
    """
    dc = cfg.data
    if dc.image_size % 32:
        raise VestisError(f"data.image_size: a detector needs a multiple of 32, got {dc.image_size}")
    if dc.pad_value != 0:
        raise VestisError(f"data.pad_value: detectors letterbox with black; set it to 0 (got {dc.pad_value})")
    if dc.balance not in BALANCE:
        raise VestisError(f"data.balance: expected one of {list(BALANCE)}, got {dc.balance!r}")
    images, classes = read_coco_detection(data, classes=OBJECT_TYPES)
    if dc.val_data:
        val, _ = read_coco_detection(dc.val_data, classes=classes)
        train = images
    else:
        order = list(range(len(images)))
        random.Random(dc.split_seed).shuffle(order)
        n_val = round(len(images) * dc.val_fraction) if len(images) > 1 else 0
        held = set(order[:n_val])
        train = [im for i, im in enumerate(images) if i not in held]
        val = [im for i, im in enumerate(images) if i in held]
    if not train:
        raise VestisError(f"{data}: no training image")
    log(f"box classes (train, {len(train)} images): {_balance_line(train, classes)}")
    if dc.balance != "none":
        sets = [tuple(im.labels.tolist()) for im in train]
        if dc.balance == "downsample":
            picked = downsample_to_mean_ir(sets, seed=dc.split_seed)
        else:
            picked = upsample_to_mean_ir(sets, seed=dc.split_seed)
        train = [train[i] for i in picked]
        log(f"data.balance={dc.balance}: {len(train)} training images: {_balance_line(train, classes)}")
    if check_images:
        for im in (*train, *val):
            _check_image(im, dc.max_pixels)
    taxonomy = Taxonomy((Attribute(CLASS_ATTRIBUTE, "single", tuple(classes)),))
    make = lambda ims: DetectionDataset(ims, dc.image_size, classes=classes)  # noqa: E731  ([0, 1], not normalised)
    return make(train), make(val), taxonomy


def _balance_line(images: list[DetectionImage], classes: tuple[str, ...]) -> str:
    """Images per class, MeanIR and SCUMBLE of the box classes (each class counted once per image)."""
    stats = box_class_stats([[classes[i] for i in set(im.labels.tolist())] for im in images], classes)
    counts = ", ".join(f"{c} {n}" for c, n in stats["counts"].items())
    fmt = lambda x: "n/a" if x is None else f"{x:.3g}"  # noqa: E731
    return f"{counts}; MeanIR {fmt(stats['mean_ir'])}, SCUMBLE {fmt(stats['scumble'])}"


def _check_image(im: DetectionImage, max_pixels: int) -> None:
    with load_image(im.path, max_pixels=max_pixels) as img:
        if img.size != (im.width, im.height):
            raise VestisError(f"{im.path}: image is {img.size[0]}x{img.size[1]}, the JSON says {im.width}x{im.height}")


class _ModelLosses(nn.Module):
    """The detector computes its own named losses in training mode; the loop's loss passes them on."""

    def forward(self, outputs: Mapping[str, Tensor], targets: Any, masks: Any) -> dict[str, Tensor]:
        return dict(outputs)


def _hflip(images: Tensor, boxes: list[Tensor], p: float) -> tuple[Tensor, list[Tensor]]:
    """Mirror each image and its xyxy boxes left-right with probability ``p``."""
    if p <= 0:
        return images, boxes
    flip = (torch.rand(len(images)) < p).tolist()
    if not any(flip):
        return images, boxes
    w = images.shape[-1]
    mask = torch.tensor(flip, device=images.device).view(-1, 1, 1, 1)
    images = torch.where(mask, images.flip(-1), images)
    out = []
    for f, b in zip(flip, boxes, strict=True):
        out.append(torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1) if f and len(b) else b)
    return images, out


class DetectionTask(Task):
    """COCO boxes -> CenterNet's named losses; selected on COCO mAP of the validation images."""

    default_metric = legacy_metric = "mAP"
    collate = staticmethod(collate_detection)

    def __init__(self, cfg: Config, taxonomy: Taxonomy, train_ds: DetectionDataset, val_ds: DetectionDataset) -> None:
        super().__init__(cfg, taxonomy, train_ds, val_ds)
        if cfg.train.cache_features:
            raise VestisError("train.cache_features: a detector trains on its images; the feature cache is off")
        self.loss = _ModelLosses()

    def metric_names(self) -> list[str]:
        return list(DETECTION_METRICS)

    def augmenter(self, dev: torch.device, cached: bool) -> nn.Module | None:
        return None  # the box-aware flip is in step_inputs

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
        images, targets = batch
        dc = self.cfg.data
        x = images.to(dev, non_blocking=True)
        boxes = [t["boxes"].to(dev) for t in targets]
        if dc.augment.enabled:
            x, boxes = _hflip(x, boxes, dc.augment.hflip)
        x = normalize(x, dc.mean, dc.std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        labelled = [{"boxes": b, "labels": t["labels"].to(dev)} for b, t in zip(boxes, targets, strict=True)]
        return (x, labelled), {}, {}, len(images)

    @torch.no_grad()
    def validate(
        self, core: nn.Module, net: nn.Module, loader: DataLoader, cache: FeatureCache | None, dev: torch.device
    ) -> Validation:
        """COCO mAP, AP50, AP75, AR@100 (and per-class AP) of the validation images, in original pixels.

        The decoded peaks go through :func:`vestis.models.detection.boxes.postprocess_boxes` with ``min_score=0``
        and its default NMS (``DEFAULT_NMS_IOU``, 100 boxes), the defaults of ``vestis detect --gt``, so the
        checkpoint is selected on the mAP that command reports.
        """
        was = core.training
        core.eval()
        dc = self.cfg.data
        preds: list[dict[str, np.ndarray]] = []
        gts: list[dict[str, np.ndarray]] = []
        try:
            for images, targets in loader:
                dets = core(normalize(images.to(dev), dc.mean, dc.std))
                for d, t in zip(dets, targets, strict=True):
                    lb = t["letterbox"]
                    h, w = t["size"]
                    boxes, scores, labels = postprocess_boxes(
                        d["boxes"], d["scores"], d["labels"], lb, int(w), int(h), min_score=0.0
                    )  # vestis detect --gt's defaults: every score, NMS at DEFAULT_NMS_IOU, 100 boxes
                    preds.append({"boxes": boxes, "scores": scores, "labels": labels})
                    gts.append({"boxes": unletterbox_boxes(t["boxes"], lb), "labels": t["labels"].numpy()})
        finally:
            core.train(was)
        m = coco_detection_metrics(preds, gts, self.taxonomy.attributes[0].values)
        keys = zip(DETECTION_METRICS, ("map", "ap50", "ap75", "ar100"), strict=True)
        summary = {name: _defined(m[key]) for name, key in keys}
        per_class = {c: _defined(v) for c, v in m["per_class_ap"].items()}
        return Validation({"summary": summary, "detection": {**summary, "per_class_ap": per_class}})


def _defined(x: float) -> float | None:
    return None if x is None or x != x else float(x)
