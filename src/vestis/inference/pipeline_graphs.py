"""What both runtimes of the outfit pipeline share: the two graphs they run and the decoding on the host.

* :class:`DetectorMaps` (``detector.onnx``): ``uint8`` letterboxed images ``(B, 3, S, S)`` -> CenterNet's
  ``heatmap`` (after the sigmoid, ``(B, K, S/s, S/s)``), ``size`` and ``offset`` (``(B, 2, S/s, S/s)``).
* :class:`Stage2Logits` (``stage2.onnx``): ``uint8`` letterboxed crops ``(B, 3, S2, S2)`` and ``object_types``
  ``(B,)`` int64 -> ``category`` ``(B, C)`` and ``attributes`` ``(B, A)`` logits.

Normalisation (``x = (img / 255 - mean) / std``) runs inside both graphs, as in the classifier export
(:mod:`vestis.inference.onnx_format`). Peak extraction, NMS, the boxes in original pixels, the probabilities and
the taxonomy suppression run on the host in :func:`decode_detections` and :func:`decode_stage2`, for the PyTorch
and the ONNX Runtime path alike, so both decode identically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vestis.data.detection import Letterbox
from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.inference.pipeline_format import PipelineSettings
from vestis.models.detection import decode_centernet
from vestis.models.detection.boxes import postprocess_boxes
from vestis.models.hierarchical import apply_taxonomy

__all__ = [
    "DETECTOR_INPUT",
    "DETECTOR_OUTPUTS",
    "MAX_IMAGE_SIZE",
    "STAGE2_INPUTS",
    "STAGE2_OUTPUTS",
    "Detections",
    "DetectorMaps",
    "GarmentLabels",
    "PipelineSpec",
    "Stage2Logits",
    "check_image_sizes",
    "decode_detections",
    "decode_stage2",
    "threshold_vector",
]

MAX_IMAGE_SIZE = 4096  # the largest input side of either model a pipeline file or folder may ask for


@dataclass(frozen=True)
class PipelineSpec:
    """What both runtimes need besides the graphs: sizes, classes, layout, thresholds and fingerprints.

    Attributes:
        classes: the detector's classes (its ``object_type`` values), in label order.
        detector_size: the detector's square input side.
        detector_pad: the grey level the images are letterboxed with.
        stride: the detector's output stride.
        candidates: peaks decoded per image before NMS.
        stage2_size: the stage-2 model's square input side.
        stage2_pad: the grey level the crops are letterboxed with.
        layout: the stage-2 model's :class:`~vestis.models.hierarchical.Stage2Layout`.
        thresholds: ``(A,)`` decision thresholds of the attribute outputs.
        detector_fingerprint: the detector's fingerprint.
        stage2_fingerprint: the stage-2 model's fingerprint.
        stage2_taxonomy: the stage-2 model's taxonomy.
    """

    classes: tuple[str, ...]
    detector_size: int
    detector_pad: int
    stride: int
    candidates: int
    stage2_size: int
    stage2_pad: int
    layout: Any
    thresholds: np.ndarray
    detector_fingerprint: str
    stage2_fingerprint: str
    stage2_taxonomy: Taxonomy


def check_image_sizes(detector: int, stage2: int, source: str, key: str = "image_size") -> None:
    """Refuse input sides a hostile file could use to allocate without bound.

    Raises:
        VestisError: a side outside ``[32, MAX_IMAGE_SIZE]`` (the detector's also a multiple of 32) or a stage-2 side
            outside ``[1, MAX_IMAGE_SIZE]``.
    """
    if not 32 <= detector <= MAX_IMAGE_SIZE or detector % 32:
        raise VestisError(
            f"{source}: detector: {key}: expected a multiple of 32 in [32, {MAX_IMAGE_SIZE}], got {detector}"
        )
    if not 1 <= stage2 <= MAX_IMAGE_SIZE:
        raise VestisError(f"{source}: stage2: {key}: expected a side in [1, {MAX_IMAGE_SIZE}], got {stage2}")


DETECTOR_INPUT = "images"
DETECTOR_OUTPUTS = ("heatmap", "size", "offset")
STAGE2_INPUTS = ("crops", "object_types")
STAGE2_OUTPUTS = ("category", "attributes")


class _Normalise(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        # same operations, in the same order, as vestis.data.transforms.normalize
        return (images.float().div(255.0) - self.mean) / self.std


class DetectorMaps(nn.Module):
    """``uint8`` letterboxed images -> ``(heatmap probabilities, size, offset)`` of a CenterNet.

    Args:
        model: a :class:`~vestis.models.detection.CenterNet` (anything with ``forward_maps``).
        mean: per-channel mean of the normalisation, on the [0, 1] scale.
        std: per-channel standard deviation.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if not callable(getattr(model, "forward_maps", None)):
            raise VestisError(f"{type(model).__name__}: not a detector (no forward_maps)")
        self.model = model
        self.normalise = _Normalise(mean, std)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        maps = self.model.forward_maps(self.normalise(images))
        return maps["heatmap"].sigmoid(), maps["size"], maps["offset"]


class Stage2Logits(nn.Module):
    """``uint8`` letterboxed crops and their object types -> ``(category logits, attribute logits)``.

    Args:
        model: a :class:`~vestis.models.hierarchical.Stage2Model`.
        mean: per-channel mean of the normalisation, on the [0, 1] scale.
        std: per-channel standard deviation.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.normalise = _Normalise(mean, std)

    def forward(self, crops: Tensor, object_types: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(self.normalise(crops), object_types=object_types)
        return out["category"], out["attributes"]


@dataclass(frozen=True)
class Detections:
    """The garments a detector found in one image, best first.

    Attributes:
        boxes: ``(K, 4)`` xyxy in the original image's pixels, clipped to it.
        scores: ``(K,)``.
        labels: ``(K,)`` detector class indices.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def decode_detections(
    heatmap: np.ndarray,
    size: np.ndarray,
    offset: np.ndarray,
    *,
    stride: int,
    candidates: int,
    letterboxes: Sequence[Letterbox],
    image_sizes: Sequence[tuple[int, int]],
    settings: PipelineSettings,
) -> list[Detections]:
    """The detector's maps -> garments per image.

    CenterNet's peaks (the best ``candidates``), then :func:`vestis.models.detection.boxes.postprocess_boxes` (the
    post-processing of :class:`vestis.inference.detector.Detector` too): boxes back in original pixels and clipped,
    those scoring ``>= settings.min_score`` with a non-empty box kept, NMS at ``settings.nms_iou`` (across object
    types when ``settings.one_type_per_garment``), the best ``settings.max_garments``.

    Args:
        heatmap: ``(B, K, h, w)`` probabilities.
        size: ``(B, 2, h, w)`` in output cells.
        offset: ``(B, 2, h, w)`` in output cells.
        stride: input pixels per output cell.
        candidates: peaks decoded per image before NMS.
        letterboxes: how each image was letterboxed.
        image_sizes: ``(width, height)`` of each original image.
        settings: the pipeline's settings.
    """
    s_h, s_w = heatmap.shape[2] * stride, heatmap.shape[3] * stride
    decoded = decode_centernet(
        torch.from_numpy(np.ascontiguousarray(heatmap, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(size, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(offset, dtype=np.float32)),
        stride,
        candidates,
        image_size=(s_h, s_w),
    )
    out = []
    for det, lb, (w, h) in zip(decoded, letterboxes, image_sizes, strict=True):
        boxes, scores, labels = postprocess_boxes(
            det["boxes"], det["scores"], det["labels"], lb, w, h,
            min_score=settings.min_score, nms_iou=settings.nms_iou, max_detections=settings.max_garments,
            across_classes=settings.one_type_per_garment,
        )  # fmt: skip
        out.append(Detections(boxes.astype(np.float64), scores.astype(np.float64), labels))
    return out


def threshold_vector(
    layout: Any, thresholds: Mapping[str, Any] | None, default: float, *, source: str = "<stage2>"
) -> np.ndarray:
    """The decision threshold of each of the A attribute outputs.

    An attribute's calibrated thresholds (``thresholds[attribute]``: one per value of its block, or one number for
    all) win; the others get ``default`` (``config.train.threshold``).

    Raises:
        VestisError: a stored entry of the wrong length or not numbers.
    """
    out = np.full(len(layout.attributes), float(default), dtype=np.float64)
    for attr, block in layout.blocks.items():
        t = (thresholds or {}).get(attr)
        if t is None:
            continue
        k = block.stop - block.start
        try:
            vals = np.asarray(t, dtype=np.float64)
        except (TypeError, ValueError):
            vals = None
        if vals is not None and vals.ndim == 0:
            vals = np.full(k, float(vals))
        if vals is None or vals.shape != (k,) or not np.isfinite(vals).all():
            raise VestisError(f"{source}: thresholds.{attr}: expected {k} numbers (one per value) or one number")
        out[block] = vals
    return out


@dataclass(frozen=True)
class GarmentLabels:
    """What stage 2 says about one crop (the stage-2 half of a :class:`~vestis.inference.outfit_results.Garment`)."""

    category: str
    category_score: float
    category_top: list[tuple[str, float]]
    attributes: dict[str, list[tuple[str, float]]]
    suppressed: list[str]


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


def _chosen(p: np.ndarray, thr: np.ndarray, kind: str) -> list[int]:
    """Indices predicted in one attribute block: the argmax over the threshold (single), or all over it (multi)."""
    if kind == "single":
        j = int(np.argmax(p))
        return [j] if p[j] >= thr[j] else []
    order = np.argsort(-p, kind="stable")
    return [int(j) for j in order if p[j] >= thr[j]]


def decode_stage2(
    category_logits: np.ndarray, attribute_logits: np.ndarray, layout: Any, thresholds: np.ndarray, top_k: int = 3
) -> list[GarmentLabels]:
    """Stage-2 logits -> labels per crop (Contract B).

    The category is the softmax argmax; each other attribute is decided on its block of sigmoid probabilities
    (single-label: the argmax value when it reaches its threshold; multi-label: every value reaching its threshold),
    then values that do not apply to the predicted category are suppressed (:func:`apply_taxonomy`) and listed in
    ``suppressed`` when they had been predicted.

    Args:
        category_logits: ``(N, C)``.
        attribute_logits: ``(N, A)``.
        layout: a :class:`~vestis.models.hierarchical.Stage2Layout`.
        thresholds: ``(A,)`` from :func:`threshold_vector`.
        top_k: categories listed in ``category_top``.
    """
    cat = _softmax(np.asarray(category_logits, dtype=np.float64))
    raw = _sigmoid(np.asarray(attribute_logits, dtype=np.float64))
    if cat.shape[0] == 0:
        return []
    idx = cat.argmax(axis=1)
    kept, _ = apply_taxonomy(raw, idx, layout.allowed)
    applies = np.asarray(layout.allowed, dtype=bool)[idx]  # (N, A)
    out = []
    for i in range(cat.shape[0]):
        top = np.argsort(-cat[i], kind="stable")[:top_k]
        attributes: dict[str, list[tuple[str, float]]] = {}
        suppressed: list[str] = []
        for attr, block in layout.blocks.items():
            kind = layout.kinds[attr]
            thr = thresholds[block]
            before = _chosen(raw[i, block], thr, kind)
            ok = applies[i, block]
            suppressed += [f"{attr}={layout.attributes[block.start + j][1]}" for j in before if not ok[j]]
            p = np.where(ok, kept[i, block], -np.inf)  # a value that does not apply is never chosen
            after = _chosen(p, thr, kind) if ok.any() else []
            if after:
                attributes[attr] = [(layout.attributes[block.start + j][1], float(p[j])) for j in after]
        out.append(
            GarmentLabels(
                category=layout.categories[int(idx[i])],
                category_score=float(cat[i, idx[i]]),
                category_top=[(layout.categories[int(j)], float(cat[i, j])) for j in top],
                attributes=attributes,
                suppressed=suppressed,
            )
        )
    return out
