"""Box utilities of the detector: conversions, IoU, class-wise greedy NMS and CenterNet decoding.

Boxes are ``(x0, y0, x1, y1)`` in input pixels (``xyxy``) unless a name says ``xywh`` (COCO's ``[x, y, w, h]``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vestis.errors import VestisError

__all__ = [
    "DEFAULT_MAX_DETECTIONS",
    "DEFAULT_NMS_IOU",
    "box_iou",
    "decode_centernet",
    "nms",
    "postprocess_boxes",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(N, 4)`` COCO ``[x, y, w, h]`` to ``[x0, y0, x1, y1]``."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``(N, 4)`` ``[x0, y0, x1, y1]`` to COCO ``[x, y, w, h]``."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([x0, y0, x1 - x0, y1 - y0], dim=-1)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection over union of ``(N, 4)`` and ``(M, 4)`` xyxy boxes.

    Returns:
        ``(N, M)``; a pair whose union is empty (two degenerate boxes) has IoU 0.
    """
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)  # (N,)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)  # (M,)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    inter = (rb - lt).clamp(min=0).prod(-1)  # (N, M)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(inter.dtype).tiny), torch.zeros_like(inter))


def nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """Class-wise greedy non-maximum suppression.

    Boxes are visited by decreasing score (ties by index); a box is kept unless a kept box of the same label
    overlaps it with IoU strictly above ``iou_threshold``.

    Args:
        boxes: ``(N, 4)`` xyxy.
        scores: ``(N,)``.
        labels: ``(N,)`` integer classes; boxes of different classes never suppress each other.
        iou_threshold: the overlap above which the lower-scored box is dropped.

    Returns:
        indices of the kept boxes, by decreasing score, ``(K,)`` int64.
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise VestisError(f"nms: iou_threshold must be in [0, 1], got {iou_threshold}")
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    # one IoU matrix for all pairs, masked to same-class pairs: O(N^2) memory, fine for top-K = 100 candidates
    iou = box_iou(boxes[order], boxes[order])  # (N, N)
    same = labels[order][:, None] == labels[order][None, :]
    overlaps = (iou > iou_threshold) & same
    removed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        removed |= overlaps[i]
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def decode_centernet(
    heatmap: Tensor,
    size: Tensor,
    offset: Tensor,
    stride: int,
    k: int = 100,
    *,
    image_size: tuple[int, int] | None = None,
    nms_iou: float | None = None,
) -> list[dict[str, Tensor]]:
    """Detections from CenterNet's output maps (Zhou et al. 2019, §4).

    A peak is a cell whose score equals the 3x3 max-pool of the heatmap; the ``k`` best peaks over every class
    and cell become boxes centred at ``(x + offset_x, y + offset_y) * stride`` with sides ``size * stride``.

    Args:
        heatmap: ``(B, C, H, W)`` class scores after the sigmoid.
        size: ``(B, 2, H, W)`` box ``(w, h)`` in output cells.
        offset: ``(B, 2, H, W)`` sub-cell centre offset ``(dx, dy)`` in output cells.
        stride: input pixels per output cell.
        k: how many peaks to keep per image.
        image_size: ``(height, width)`` to clip boxes to, or ``None``.
        nms_iou: when set, class-wise :func:`nms` at this IoU after decoding (CenterNet needs none; an option).

    Returns:
        one dict per image: ``boxes`` ``(K, 4)`` xyxy input pixels, ``scores`` ``(K,)``, ``labels`` ``(K,)`` int64,
        by decreasing score.
    """
    b, c, h, w = heatmap.shape
    peaks = heatmap * (F.max_pool2d(heatmap, 3, stride=1, padding=1) == heatmap)  # (B, C, H, W)
    k = min(k, c * h * w)
    scores, idx = peaks.flatten(1).topk(k, dim=1)  # (B, K)
    labels = idx // (h * w)
    cell = idx % (h * w)
    ys, xs = (cell // w), (cell % w)
    gather = cell[:, None, :].expand(b, 2, k)
    wh = size.flatten(2).gather(2, gather)  # (B, 2, K)
    off = offset.flatten(2).gather(2, gather)  # (B, 2, K)
    cx = (xs.to(off.dtype) + off[:, 0]) * stride
    cy = (ys.to(off.dtype) + off[:, 1]) * stride
    half_w, half_h = wh[:, 0] * stride / 2, wh[:, 1] * stride / 2
    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)  # (B, K, 4)
    if image_size is not None:
        ih, iw = image_size
        boxes = torch.stack(
            [
                boxes[..., 0].clamp(0, iw),
                boxes[..., 1].clamp(0, ih),
                boxes[..., 2].clamp(0, iw),
                boxes[..., 3].clamp(0, ih),
            ],
            dim=-1,
        )
    out = []
    for i in range(b):
        det = {"boxes": boxes[i], "scores": scores[i], "labels": labels[i]}
        if nms_iou is not None:
            keep = nms(det["boxes"], det["scores"], det["labels"], nms_iou)
            det = {key: v[keep] for key, v in det.items()}
        out.append(det)
    return out


DEFAULT_NMS_IOU = 0.5  # the class-wise NMS overlap of `vestis detect` (also with --gt) and of detector validation
DEFAULT_MAX_DETECTIONS = 100  # COCO's AR@100 counts this many boxes per image


def postprocess_boxes(
    boxes: Tensor | np.ndarray,
    scores: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    letterbox: Any,
    width: int,
    height: int,
    *,
    min_score: float = 0.0,
    nms_iou: float | None = DEFAULT_NMS_IOU,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
    across_classes: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decoded boxes of one letterboxed image -> the detections in the original image, best first.

    The one post-processing of every path that turns a detector's peaks into boxes: :class:`vestis.inference.
    detector.Detector` (``vestis detect``, ``vestis crops``), the outfit pipeline (both runtimes) and the detector's
    validation in training (with ``min_score=0`` and the default ``nms_iou``, as ``vestis detect --gt`` scores it,
    so ``best.ckpt`` is selected on the mAP that command reports). In order: the boxes back in original pixels
    (``(b - pad) / scale``), clipped to ``[0, width] x [0, height]``; boxes scoring below ``min_score`` or empty after
    clipping (in the letterbox padding only) dropped; class-wise :func:`nms` at ``nms_iou`` (``None``: none, by
    decreasing score); the best ``max_detections``.

    Args:
        boxes: ``(K, 4)`` xyxy in the letterboxed image's pixels.
        scores: ``(K,)``.
        labels: ``(K,)`` integer classes.
        letterbox: the image's placement (a :class:`vestis.data.detection.Letterbox`: ``scale_x``, ``scale_y``,
            ``pad_x``, ``pad_y``).
        width: the original image's width.
        height: the original image's height.
        min_score: the lowest score kept.
        nms_iou: the NMS overlap, or ``None``.
        max_detections: the most boxes returned.
        across_classes: suppress overlapping boxes of different classes too (one class per object: the outfit
            pipeline's default, as a garment has one object type; CenterNet's per-class peaks often put two types
            on one garment). ``False`` is COCO's class-wise NMS, what detection metrics use.

    Returns:
        ``boxes`` ``(N, 4)`` float32, ``scores`` ``(N,)`` float32, ``labels`` ``(N,)`` int64, by decreasing score.
    """
    b = torch.as_tensor(np.asarray(boxes.detach().cpu() if isinstance(boxes, Tensor) else boxes, dtype=np.float32))
    s = torch.as_tensor(np.asarray(scores.detach().cpu() if isinstance(scores, Tensor) else scores, dtype=np.float32))
    lab = torch.as_tensor(np.asarray(labels.detach().cpu() if isinstance(labels, Tensor) else labels, dtype=np.int64))
    b = b.reshape(-1, 4)
    scale = torch.tensor([letterbox.scale_x, letterbox.scale_y] * 2, dtype=torch.float32)
    pad = torch.tensor([letterbox.pad_x, letterbox.pad_y] * 2, dtype=torch.float32)
    b = (b - pad) / scale
    limit = torch.tensor([width, height, width, height], dtype=torch.float32)
    b = torch.minimum(b.clamp(min=0), limit)
    keep = (s >= min_score) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    b, s, lab = b[keep], s[keep], lab[keep]
    groups = torch.zeros_like(lab) if across_classes else lab
    order = nms(b, s, groups, nms_iou) if nms_iou is not None else torch.argsort(s, descending=True, stable=True)
    order = order[:max_detections]
    return b[order].numpy().reshape(-1, 4), s[order].numpy(), lab[order].numpy()
