"""Detection metrics through pycocotools' COCOeval, from predictions and ground truth held in memory.

:func:`coco_detection_metrics` returns the COCO-challenge numbers the paper reports (§4.2): mAP averaged over
IoU 0.50:0.05:0.95, AP at IoU 0.5 and 0.75, AR given 100 detections per image, and AP per class (area "all",
100 detections). A metric with no ground-truth box to score is ``nan`` (COCOeval's -1), as in
:mod:`vestis.eval.metrics`. pycocotools is the reference implementation, so the numbers match the challenge's
(101-point interpolated precision); it is an optional dependency (``pip install 'vestis[detection]'``).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vestis.errors import VestisError

__all__ = ["coco_detection_metrics"]


def _coco() -> tuple[Any, Any]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:  # pragma: no cover - depends on the environment
        raise VestisError("detection metrics need pycocotools: pip install 'vestis[detection]'") from None
    return COCO, COCOeval


def _arrays(item: Mapping[str, Any], where: str, scores: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    boxes = np.asarray(_cpu(item.get("boxes", [])), dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(_cpu(item.get("labels", [])), dtype=np.int64).reshape(-1)
    sc = np.asarray(_cpu(item.get("scores", [])), dtype=np.float64).reshape(-1) if scores else None
    if len(labels) != len(boxes) or (sc is not None and len(sc) != len(boxes)):
        raise VestisError(f"{where}: boxes, labels and scores must have one row per box")
    if not np.isfinite(boxes).all() or (sc is not None and not np.isfinite(sc).all()):
        raise VestisError(f"{where}: boxes and scores must be finite")
    return boxes, labels, sc


def _cpu(v: Any) -> Any:
    return v.detach().cpu().numpy() if hasattr(v, "detach") else v


def _dataset(images: list[dict[str, Any]], cats: list[dict[str, Any]], anns: list[dict[str, Any]]) -> Any:
    coco_cls, _ = _coco()
    coco = coco_cls()
    coco.dataset = {"images": images, "categories": cats, "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


def _nan(x: float) -> float:
    return math.nan if x < 0 else float(x)


def coco_detection_metrics(
    predictions: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
) -> dict[str, Any]:
    """COCO bbox metrics of per-image predictions against per-image ground truth.

    Args:
        predictions: per image ``{"boxes": (K, 4) xyxy, "scores": (K,), "labels": (K,)}`` (arrays or tensors),
            e.g. the eval-mode output of :class:`~vestis.models.detection.CenterNet`.
        ground_truth: per image, in the same order, ``{"boxes": (N, 4) xyxy, "labels": (N,)}`` in the same pixels.
        class_names: the class of each label index.

    Returns:
        ``{"map", "ap50", "ap75", "ar100": float, "per_class_ap": {name: float}}``.

    Raises:
        VestisError: lists of different lengths, mismatched rows, a label outside ``class_names``.
    """
    if len(predictions) != len(ground_truth):
        raise VestisError(f"detection metrics: {len(predictions)} predictions but {len(ground_truth)} images")
    _, cocoeval_cls = _coco()
    k = len(class_names)
    cats = [{"id": i + 1, "name": str(n)} for i, n in enumerate(class_names)]
    images = [{"id": i + 1} for i in range(len(ground_truth))]
    gts: list[dict[str, Any]] = []
    dts: list[dict[str, Any]] = []
    for i, (pred, gt) in enumerate(zip(predictions, ground_truth, strict=True)):
        for kind, item, out in (("ground truth", gt, gts), ("predictions", pred, dts)):
            boxes, labels, scores = _arrays(item, f"detection metrics: {kind} of image {i}", kind == "predictions")
            if len(labels) and (labels.min() < 0 or labels.max() >= k):
                raise VestisError(f"detection metrics: {kind} of image {i}: labels outside [0, {k})")
            wh = np.clip(boxes[:, 2:] - boxes[:, :2], 0, None)
            for j in range(len(boxes)):
                ann = {
                    "id": len(out) + 1,
                    "image_id": i + 1,
                    "category_id": int(labels[j]) + 1,
                    "bbox": [float(boxes[j, 0]), float(boxes[j, 1]), float(wh[j, 0]), float(wh[j, 1])],
                    "area": float(wh[j, 0] * wh[j, 1]),
                    "iscrowd": 0,
                }
                if scores is not None:
                    ann["score"] = float(scores[j])
                out.append(ann)
    coco_gt, coco_dt = _dataset(images, cats, gts), _dataset(images, cats, dts)
    ev = cocoeval_cls(coco_gt, coco_dt, iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):  # evaluate/accumulate/summarize print their tables
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # (T IoUs, R recalls, K classes, A areas, M max-dets)
    per_class = {}
    for c, name in enumerate(class_names):
        p = precision[:, :, c, 0, -1]  # area "all", 100 detections
        per_class[str(name)] = float(p[p > -1].mean()) if (p > -1).any() else math.nan
    s = ev.stats
    return {"map": _nan(s[0]), "ap50": _nan(s[1]), "ap75": _nan(s[2]), "ar100": _nan(s[8]), "per_class_ap": per_class}
