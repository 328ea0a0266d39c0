"""Stage 1 at inference: a detector checkpoint -> garment boxes in the original image's pixels.

:class:`Detector` letterboxes each image to the checkpoint's square side (``config.data.image_size``, padded
with ``config.data.pad_value`` as in training), normalises it, runs the detector, maps the boxes back with
:func:`~vestis.data.detection.unletterbox_boxes` and clips them to the image::

    det = Detector.from_checkpoint("run/best.ckpt")
    [d] = det.detect(["outfit.jpg"])
    d.boxes, d.scores, d.names     # (K, 4) xyxy original pixels, (K,), the class of each box
    d.to_coco(image_id=7)          # COCO results entries: {"image_id", "category_id", "bbox": [x, y, w, h], "score"}

Images given as paths are decoded through :func:`~vestis.data.images.load_image` with the checkpoint's pixel cap
(``config.data.max_pixels``), so a decompression bomb is refused before any pixel is decoded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from vestis.data.detection import OBJECT_TYPES, Letterbox, letterbox, object_type
from vestis.data.images import DEFAULT_MAX_PIXELS
from vestis.data.transforms import normalize
from vestis.errors import VestisError
from vestis.inference.inputs import ImageInput, as_image
from vestis.inference.runtime import torch_device

__all__ = ["Detections", "Detector", "coco_category_ids", "letterbox_batch"]


def letterbox_batch(images: Sequence[Image.Image], size: int, pad_value: int) -> tuple[np.ndarray, list[Letterbox]]:
    """The detector's preprocessing before normalisation, shared by :class:`Detector` and the outfit pipeline.

    Args:
        images: RGB images.
        size: the square side (the detector's ``image_size``).
        pad_value: the grey level of the padding.

    Returns:
        ``uint8`` ``(B, 3, S, S)`` (C-contiguous) and each image's placement.
    """
    fill = (int(pad_value),) * 3
    arrays, placements = [], []
    for img in images:
        boxed, lb = letterbox(img, size, fill=fill)
        arrays.append(np.asarray(boxed, dtype=np.uint8).transpose(2, 0, 1))
        placements.append(lb)
    if not arrays:
        return np.zeros((0, 3, size, size), dtype=np.uint8), placements
    return np.ascontiguousarray(np.stack(arrays)), placements


@dataclass(frozen=True)
class Detections:
    """The boxes found in one image, by decreasing score.

    Attributes:
        boxes: ``(K, 4)`` float32 ``[x0, y0, x1, y1]`` in the original image's pixels, inside the image.
        scores: ``(K,)`` float32 in ``[0, 1]``.
        labels: ``(K,)`` int64 class indices into ``classes``.
        names: the class name of each box.
        classes: every class of the detector, in index order.
        width: the image's width in pixels.
        height: the image's height in pixels.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...]
    classes: tuple[str, ...]
    width: int
    height: int

    def __len__(self) -> int:
        return len(self.scores)

    def to_coco(self, image_id: int, category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """COCO *results* entries of these boxes: ``bbox`` ``[x, y, w, h]`` and each box's ``category_id``.

        Args:
            image_id: the image's id in the COCO file the results refer to.
            category_ids: the category id of each class (index order), e.g. from :func:`coco_category_ids` for the
                file the results refer to; ``None``: the detector's own ids, ``label + 1``.

        Returns:
            one ``{"image_id", "category_id", "bbox", "score"}`` per box, by decreasing score.
        """
        ids = list(range(1, len(self.classes) + 1)) if category_ids is None else [int(i) for i in category_ids]
        if len(ids) != len(self.classes):
            raise VestisError(f"category_ids: expected one id per class ({len(self.classes)}), got {len(ids)}")
        out = []
        for (x0, y0, x1, y1), label, score in zip(self.boxes.tolist(), self.labels.tolist(), self.scores.tolist(),
                                                  strict=True):  # fmt: skip
            out.append(
                {
                    "image_id": int(image_id),
                    "category_id": ids[int(label)],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": score,
                }
            )
        return out

    def to_metrics_input(self) -> dict[str, np.ndarray]:
        """``{"boxes", "scores", "labels"}`` as :func:`vestis.eval.detection.coco_detection_metrics` reads them."""
        return {"boxes": self.boxes, "scores": self.scores, "labels": self.labels}


def _is_type_name(name: str) -> bool:
    """Whether a category name is an object type itself (in any spelling), not a category mapped onto one."""
    return "-".join(name.strip().lower().replace("_", " ").replace("-", " ").split()) in OBJECT_TYPES


def coco_category_ids(path: str | os.PathLike[str], classes: Sequence[str]) -> list[int]:
    """The category id of each detector class in a COCO annotations file, matched by name.

    COCO results must use the ids of the file they refer to (the COCO importer keeps the original ids, so they are
    not the detector's ``label + 1`` in general). Every class needs exactly one category of that name in the file;
    an object type matches any spelling of it (``upper body``), a DeepFashion2 category (``short sleeve top``) none.

    Args:
        path: the COCO annotations JSON.
        classes: the detector's classes, in label order.

    Returns:
        one category id per class, in label order.

    Raises:
        VestisError: an unreadable file, or categories that are not the detector's object types one to one (e.g.
            DeepFashion2's 13 categories, several per object type): the message names them.
    """
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        cats = data["categories"]
        named = [(str(c["name"]).strip(), c["id"]) for c in cats]
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError) as e:
        raise VestisError(f"{path}: categories: not readable ({e})") from None
    ids = []
    for c in classes:
        hits = [i for name, i in named if name == c or (_is_type_name(name) and object_type(name) == c)]
        if len(hits) != 1:
            names = ", ".join(sorted({n for n, _ in named}))
            raise VestisError(
                f"{path}: categories: {'no' if not hits else len(hits)} categor{'y' if len(hits) < 2 else 'ies'} "
                f"named {c!r}; COCO results refer to the file's category ids, which are matched to the detector's "
                f"classes ({', '.join(classes)}) by name, but the file has {names}. Pass --detector-ids to write the "
                "detector's own ids (listed in OUT.categories.json)"
            )
        if isinstance(hits[0], bool) or not isinstance(hits[0], int | float):
            raise VestisError(f"{path}: categories: the id of {c!r} is not a number ({hits[0]!r})")
        ids.append(int(hits[0]))
    return ids


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise VestisError(f"{name}: expected a number in [{lo:g}, {hi:g}], got {value!r}")
    if not lo <= value <= hi:
        raise VestisError(f"{name}: expected a number in [{lo:g}, {hi:g}], got {value:g}")


def _positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise VestisError(f"{name}: expected a positive integer, got {value!r}")


class Detector:
    """A stage-1 detector with its preprocessing: images in, :class:`Detections` in original pixels out.

    Args:
        model: a detector following the checkpoint contract: in eval mode ``model(x)`` on ``(B, 3, S, S)``
            normalised letterboxed images returns per image ``{"boxes": (K, 4) xyxy letterboxed pixels,
            "scores": (K,), "labels": (K,)}``. It is moved to ``device`` and put in eval mode.
        classes: the class name of each label index.
        image_size: the letterbox side ``S`` (a multiple of 32).
        mean: per-channel mean on the ``[0, 1]`` scale (``None``: ImageNet's).
        std: per-channel standard deviation (``None``: ImageNet's).
        pad_value: the grey level of the letterbox padding (0, black, is what detectors train on).
        max_pixels: images with more pixels are refused when decoding.
        fingerprint: the model's fingerprint (``sha256:...``), or ``None``.
        device: ``cpu``, ``cuda`` or ``cuda:N``; ``None`` picks CUDA when available.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        classes: Sequence[str],
        image_size: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        pad_value: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        fingerprint: str | None = None,
        device: str | None = None,
    ) -> None:
        _positive_int("image_size", image_size)
        if image_size % 32:
            raise VestisError(f"image_size: a detector's input side is a multiple of 32, got {image_size}")
        if not classes:
            raise VestisError("classes: expected at least one class name")
        self._device = torch_device(device)
        self.model = model.to(self._device).eval()
        self.classes: tuple[str, ...] = tuple(str(c) for c in classes)
        self.image_size = int(image_size)
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        self.pad_value = int(pad_value)
        self.max_pixels = int(max_pixels)
        self.fingerprint = fingerprint
        self.path: Path | None = None

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str], device: str | None = None, trust_checkpoint: bool = False
    ) -> Detector:
        """The detector of a vestis checkpoint (``vestis train --task detect``).

        Args:
            path: the checkpoint file.
            device: as for :class:`Detector`.
            trust_checkpoint: also load an old pickle checkpoint (unpickling runs any code the file holds).

        Raises:
            VestisError: an unreadable file, or a checkpoint of another kind of model (a classifier, an embedding
                or a stage-2 model): its ``config.model.name`` is not a registered detector, or its taxonomy is not
                the one ``object_type`` attribute of a detector.
        """
        from vestis.models.detection import DETECTORS, is_detector
        from vestis.train.checkpoint import load_checkpoint, rebuild_model
        from vestis.train.detection_task import CLASS_ATTRIBUTE

        path = Path(path)
        state = load_checkpoint(path, trust=trust_checkpoint)
        model_cfg = state["config"].get("model") if isinstance(state["config"].get("model"), dict) else {}
        name = model_cfg.get("name")
        if not isinstance(name, str) or not is_detector(name):
            raise VestisError(
                f"{path}: config.model.name: {name!r} is not a detector; expected a checkpoint of one of "
                f"{', '.join(DETECTORS.names())} (vestis train --task detect)"
            )
        attrs = state["taxonomy"].get("attributes")
        if not (isinstance(attrs, list) and len(attrs) == 1 and isinstance(attrs[0], dict)
                and attrs[0].get("name") == CLASS_ATTRIBUTE):  # fmt: skip
            raise VestisError(
                f"{path}: taxonomy: a detector checkpoint has one attribute {CLASS_ATTRIBUTE!r} (its classes)"
            )
        dev = torch_device(device)
        model = rebuild_model(state, source=str(path), map_location=dev)
        classes = getattr(model, "classes", None) or tuple(attrs[0].get("values") or ())
        cfg = model.config
        det = cls(
            model,
            classes=classes,
            image_size=cfg.data.image_size,
            mean=cfg.data.mean,
            std=cfg.data.std,
            pad_value=cfg.data.pad_value,
            max_pixels=cfg.data.max_pixels,
            fingerprint=getattr(model, "fingerprint", None),
            device=str(dev),
        )
        det.path = path
        return det

    @property
    def device(self) -> str:
        return str(self._device)

    def preprocess(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, list[Letterbox]]:
        """Letterbox and normalise: ``(B, 3, S, S)`` float on the model's device, and each image's placement."""
        arrays, placements = letterbox_batch(images, self.image_size, self.pad_value)
        batch = torch.from_numpy(arrays).to(self._device)  # (B, 3, S, S) uint8
        return normalize(batch, self.mean, self.std), placements

    def detect(
        self,
        images: Sequence[ImageInput],
        min_score: float = 0.3,
        nms_iou: float | None = 0.5,
        max_detections: int = 100,
        batch_size: int = 8,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Detections]:
        """The garments of each image.

        The boxes go through :func:`vestis.models.detection.boxes.postprocess_boxes` (shared with the outfit
        pipeline and the detector's validation): back in original pixels and clipped, boxes below ``min_score`` or
        in the letterbox padding only dropped, class-wise NMS at ``nms_iou``, the best ``max_detections``.
        The model itself returns at most its own top-K (``max_detections`` of the detector, 100 by default).

        Args:
            images: PIL images, paths (decoded with the pixel cap) or ``uint8`` ``(H, W, 3)`` arrays.
            min_score: the lowest score kept (0 keeps every box; mAP needs every box).
            nms_iou: the overlap above which the lower-scored box of the same class is dropped; ``None``: no NMS.
            max_detections: the most boxes returned per image.
            batch_size: images per model call.
            progress: called as ``progress(done, total)`` after each batch.

        Returns:
            one :class:`Detections` per image, in order.

        Raises:
            VestisError: an argument out of range, an unreadable or oversized image (the message names it).
        """
        _check_range("min_score", min_score, 0.0, 1.0)
        if nms_iou is not None:
            _check_range("nms_iou", nms_iou, 0.0, 1.0)
        _positive_int("max_detections", max_detections)
        _positive_int("batch_size", batch_size)
        if isinstance(images, str | os.PathLike | Image.Image | np.ndarray):
            raise VestisError("images: expected a sequence of images (a list), got a single image")
        out: list[Detections] = []
        total = len(images)
        for start in range(0, total, batch_size):
            chunk = images[start : start + batch_size]
            pils = [as_image(x, f"images[{start + i}]", self.max_pixels) for i, x in enumerate(chunk)]
            x, placements = self.preprocess(pils)
            with torch.inference_mode():
                raw = self.model(x)
            for img, lb, det in zip(pils, placements, raw, strict=True):
                out.append(self._postprocess(det, lb, img.width, img.height, min_score, nms_iou, max_detections))
            if progress is not None:
                progress(len(out), total)
        return out

    def _postprocess(
        self,
        det: dict[str, torch.Tensor],
        lb: Letterbox,
        width: int,
        height: int,
        min_score: float,
        nms_iou: float | None,
        max_detections: int,
    ) -> Detections:
        from vestis.models.detection.boxes import postprocess_boxes

        boxes, scores, labels = postprocess_boxes(
            det["boxes"], det["scores"], det["labels"], lb, width, height,
            min_score=min_score, nms_iou=nms_iou, max_detections=max_detections,
        )  # fmt: skip
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise VestisError(f"detector: labels outside the {len(self.classes)} classes {list(self.classes)}")
        return Detections(
            boxes=boxes.astype(np.float32).reshape(-1, 4),
            scores=scores.astype(np.float32),
            labels=labels.astype(np.int64),
            names=tuple(self.classes[i] for i in labels.tolist()),
            classes=self.classes,
            width=int(width),
            height=int(height),
        )
