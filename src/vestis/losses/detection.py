"""CenterNet's training targets and loss (Zhou et al. 2019, "Objects as Points", §3).

* :func:`gaussian_radius`: CornerNet's radius (Law & Deng 2018): the largest centre shift that keeps a box of the
  same size at IoU >= ``min_overlap`` with the truth, the smallest of the three cases' roots;
* :func:`encode_centernet_targets`: per image a Gaussian peak ``exp(-((x-cx)^2 + (y-cy)^2) / (2 sigma^2))`` with
  ``sigma = (2r + 1) / 6`` per object on its class's channel (element-wise maximum where peaks overlap), and the
  size ``(w, h)`` and sub-cell offset of each centre cell, all in output cells;
* :func:`centernet_focal_loss`: the penalty-reduced pixel-wise focal loss (alpha = 2, beta = 4) normalised by the
  number of objects;
* :class:`CenterNetLoss`: ``{"heatmap": focal, "size": 0.1 * L1, "offset": 1 * L1}`` (the L1 terms at the centre
  cells only), weights applied, so the training loop only sums the dict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vestis.errors import VestisError

__all__ = [
    "CenterNetLoss",
    "centernet_focal_loss",
    "encode_centernet_targets",
    "gaussian_radius",
    "masked_l1",
]


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CornerNet's Gaussian radius for a ``height x width`` box (as in the CenterNet reference code).

    The three quadratics bound the corner shift ``r`` for: both corners moved out, both in, one in one out;
    the radius is the smallest positive root.
    """
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def _draw_gaussian(heat: Tensor, cx: int, cy: int, radius: int) -> None:
    """Element-wise maximum of ``heat`` (H, W) and a Gaussian peak of value 1 at ``(cx, cy)``, in place."""
    sigma = (2 * radius + 1) / 6
    h, w = heat.shape
    x0, x1 = max(0, cx - radius), min(w, cx + radius + 1)
    y0, y1 = max(0, cy - radius), min(h, cy + radius + 1)
    ys = torch.arange(y0, y1, dtype=heat.dtype, device=heat.device)[:, None] - cy
    xs = torch.arange(x0, x1, dtype=heat.dtype, device=heat.device)[None, :] - cx
    g = torch.exp(-(xs**2 + ys**2) / (2 * sigma**2))  # (y1 - y0, x1 - x0)
    heat[y0:y1, x0:x1] = torch.maximum(heat[y0:y1, x0:x1], g)


def encode_centernet_targets(
    targets: Sequence[Mapping[str, Tensor]],
    num_classes: int,
    output_size: tuple[int, int],
    stride: int,
    min_overlap: float = 0.7,
) -> dict[str, Tensor]:
    """CenterNet's dense targets for a batch.

    Args:
        targets: per image ``{"boxes": (N, 4) xyxy input pixels, "labels": (N,) int classes in [0, num_classes)}``.
        num_classes: heatmap channels.
        output_size: ``(H, W)`` of the output maps.
        stride: input pixels per output cell.
        min_overlap: CornerNet's IoU for the radius.

    Returns:
        ``heatmap`` (B, C, H, W), ``index`` (B, M) flat centre cells, ``mask`` (B, M) 1 for a real object,
        ``size`` (B, M, 2) ``(w, h)`` and ``offset`` (B, M, 2) in output cells; ``M`` = most objects in an image.
        A box of zero width or height, or centred outside the map, is skipped.
    """
    h, w = output_size
    b = len(targets)
    m = max([len(t["boxes"]) for t in targets] + [1])
    heat = torch.zeros(b, num_classes, h, w)
    index = torch.zeros(b, m, dtype=torch.long)
    mask = torch.zeros(b, m)
    size = torch.zeros(b, m, 2)
    offset = torch.zeros(b, m, 2)
    for i, t in enumerate(targets):
        boxes = torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4).cpu() / stride
        labels = torch.as_tensor(t["labels"], dtype=torch.long).reshape(-1).cpu()
        if len(boxes) != len(labels):
            raise VestisError(f"detection targets: image {i} has {len(boxes)} boxes but {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise VestisError(f"detection targets: image {i} has labels outside [0, {num_classes})")
        for j, (box, label) in enumerate(zip(boxes, labels, strict=True)):
            bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
            cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
            if bw <= 0 or bh <= 0 or not (0 <= cx < w and 0 <= cy < h):
                continue
            ix, iy = int(cx), int(cy)
            radius = max(0, int(gaussian_radius(math.ceil(bh), math.ceil(bw), min_overlap)))
            _draw_gaussian(heat[i, int(label)], ix, iy, radius)
            index[i, j] = iy * w + ix
            mask[i, j] = 1.0
            size[i, j] = torch.tensor([bw, bh])
            offset[i, j] = torch.tensor([cx - ix, cy - iy])
    return {"heatmap": heat, "index": index, "mask": mask, "size": size, "offset": offset}


def centernet_focal_loss(logits: Tensor, target: Tensor, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """Penalty-reduced pixel-wise focal loss (CenterNet eq. 1), normalised by the number of objects.

    ``-1/N sum( (1-p)^alpha log p  where y = 1;  (1-y)^beta p^alpha log(1-p)  elsewhere )``, ``N`` the number of
    cells with ``y = 1`` (the centres); with no object the negative term alone (normalised by 1).

    Args:
        logits: ``(B, C, H, W)`` heatmap before the sigmoid (log-sigmoids keep it finite for any logit).
        target: ``(B, C, H, W)`` Gaussian targets in [0, 1].
    """
    p = torch.sigmoid(logits)
    pos = target.eq(1).to(logits.dtype)
    pos_term = (1 - p).pow(alpha) * F.logsigmoid(logits) * pos
    neg_term = (1 - target).pow(beta) * p.pow(alpha) * F.logsigmoid(-logits) * (1 - pos)
    n = pos.sum().clamp(min=1.0)
    return -(pos_term.sum() + neg_term.sum()) / n


def masked_l1(pred: Tensor, index: Tensor, mask: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error of a ``(B, 2, H, W)`` regression map at the centre cells only.

    Args:
        pred: the predicted map.
        index: ``(B, M)`` flat centre cells.
        mask: ``(B, M)`` 1 for real objects.
        target: ``(B, M, 2)``.

    Returns:
        the mean over objects and the two coordinates; 0 (with a gradient) when there is no object.
    """
    picked = pred.flatten(2).gather(2, index[:, None, :].expand(-1, 2, -1)).transpose(1, 2)  # (B, M, 2)
    m = mask[..., None]
    return (torch.abs(picked - target) * m).sum() / (2 * mask.sum()).clamp(min=1.0)


class CenterNetLoss(nn.Module):
    """CenterNet's named losses, weighted: the loop sums the dict.

    Args:
        size_weight: weight of the size L1 (0.1 in the paper).
        offset_weight: weight of the offset L1 (1 in the paper).
        alpha: focal exponent on the prediction.
        beta: focal exponent on the Gaussian's penalty reduction.
    """

    def __init__(self, size_weight: float = 0.1, offset_weight: float = 1.0, alpha: float = 2.0, beta: float = 4.0):
        super().__init__()
        self.size_weight, self.offset_weight, self.alpha, self.beta = size_weight, offset_weight, alpha, beta

    def forward(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Losses of raw head outputs against :func:`encode_centernet_targets`.

        Args:
            outputs: ``heatmap`` logits (B, C, H, W), ``size`` and ``offset`` (B, 2, H, W).
            targets: the encoded targets, on the outputs' device.

        Returns:
            ``{"heatmap": ..., "size": ..., "offset": ...}``, scalars with their weights applied.
        """
        idx, mask = targets["index"], targets["mask"]
        return {
            "heatmap": centernet_focal_loss(outputs["heatmap"], targets["heatmap"], self.alpha, self.beta),
            "size": self.size_weight * masked_l1(outputs["size"], idx, mask, targets["size"]),
            "offset": self.offset_weight * masked_l1(outputs["offset"], idx, mask, targets["offset"]),
        }
