"""Stage 1 of the hierarchical two-stage pipeline: the garment (object-type) detector.

Importing this package registers ``centernet`` and ``centernet_tiny`` in :data:`DETECTORS`::

    model = build_detector("centernet", backbone="efficientnet_lite0", num_classes=4)
    model.train(); losses = model(images, [{"boxes": xyxy, "labels": labels}, ...])  # {"heatmap", "size", "offset"}
    model.eval(); dets = model(images)  # [{"boxes": (K, 4) xyxy px, "scores": (K,), "labels": (K,)}, ...]
"""

from __future__ import annotations

from vestis.models.detection.boxes import box_iou, decode_centernet, nms, xywh_to_xyxy, xyxy_to_xywh
from vestis.models.detection.centernet import HEATMAP_BIAS, CenterNet, CenterNetHead
from vestis.models.detection.registry import DETECTORS, build_detector

__all__ = [
    "DETECTORS",
    "HEATMAP_BIAS",
    "CenterNet",
    "CenterNetHead",
    "box_iou",
    "build_detector",
    "decode_centernet",
    "is_detector",
    "nms",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]


def is_detector(name: str) -> bool:
    """Whether ``name`` is a registered detector (``centernet``, ``centernet_tiny``)."""
    return name in DETECTORS
