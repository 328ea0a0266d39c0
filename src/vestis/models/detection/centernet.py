"""CenterNet (Zhou et al. 2019, "Objects as Points") on a vestis backbone and FPN: stage 1 of the pipeline.

The backbone's pyramid taps (strides ``output_stride`` .. 32) go through :class:`~vestis.models.necks.FPN`, and
the three heads read the finest level only. ``output_stride=4`` (the default) is CenterNet's own resolution: a
garment is large, but neighbouring pieces of an outfit (a pair of shoes) need centres more than 8 px apart to
be separate peaks; ``output_stride=8`` costs a quarter of the head's compute and suits 512 px inputs of single
garments. The FPN keeps each level's backbone width, so the stride-4 map is narrow (the heads widen it).

Each head is ``conv3x3 -> GroupNorm -> ReLU -> conv1x1``: ``heatmap`` (C classes, sigmoid, bias -2.19 so every cell
starts at p = 0.1), ``size`` ``(w, h)`` and ``offset`` ``(dx, dy)``, both in output cells.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from vestis.errors import VestisError
from vestis.losses.detection import CenterNetLoss, encode_centernet_targets
from vestis.models.backbones.base import Backbone
from vestis.models.detection.boxes import decode_centernet
from vestis.models.detection.registry import DETECTORS
from vestis.models.necks import FPN
from vestis.registry import BACKBONES

__all__ = ["HEATMAP_BIAS", "CenterNet", "CenterNetHead"]

HEATMAP_BIAS = -math.log((1 - 0.1) / 0.1)  # -2.197: the focal-loss prior p = 0.1 (Lin et al. 2017, CenterNet)


class CenterNetHead(nn.Module):
    """``conv3x3(in -> hidden) -> GroupNorm -> ReLU -> conv1x1(hidden -> out)``.

    The GroupNorm is not in CenterNet's DLA heads, whose backbone ends in BatchNorm. A vestis FPN level is an
    unnormalised sum of lateral projections: on ImageNet-pretrained EfficientNet-Lite its values reach a standard
    deviation near 80, so without a normalisation the heatmap logits start far from the focal-loss prior (an
    initial focal loss of ~900 instead of ~8). GroupNorm does not depend on the batch, which is small here.

    Args:
        in_channels: width of the feature map.
        hidden: width of the 3x3 convolution.
        out_channels: outputs per cell.
        bias: initial bias of the last convolution (its weights start small so the bias sets the prior).
    """

    def __init__(self, in_channels: int, hidden: int, out_channels: int, bias: float = 0.0) -> None:
        super().__init__()
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if hidden % g == 0)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.GroupNorm(groups, hidden), nn.ReLU(inplace=True)
        )
        self.out = nn.Conv2d(hidden, out_channels, 1)
        nn.init.normal_(self.out.weight, std=0.01)
        nn.init.constant_(self.out.bias, bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x))


class CenterNet(nn.Module):
    """Backbone + FPN + CenterNet heads.

    ``model(images, targets)`` in training mode returns the named losses of :class:`CenterNetLoss`; in eval mode
    ``model(images)`` returns the decoded detections of :func:`decode_centernet` (top ``max_detections`` peaks,
    xyxy boxes in input pixels). :meth:`forward_maps` gives the raw maps in either mode.

    Args:
        backbone: a registered backbone name or a built :class:`Backbone` (its pyramid taps are selected here).
        num_classes: object classes (the paper's four object types by default).
        output_stride: 4 or 8, the stride of the FPN level the heads read.
        head_channels: width of each head's 3x3 convolution.
        max_detections: top-K peaks kept per image.
        size_weight: weight of the size L1.
        offset_weight: weight of the offset L1.
        nms_iou: optional class-wise NMS on the decoded boxes (``None``: CenterNet's peak extraction only).
    """

    def __init__(
        self,
        backbone: Backbone | str = "mobilenetv3_small",
        num_classes: int = 4,
        output_stride: int = 4,
        head_channels: int = 64,
        max_detections: int = 100,
        size_weight: float = 0.1,
        offset_weight: float = 1.0,
        nms_iou: float | None = None,
    ) -> None:
        super().__init__()
        if output_stride not in (4, 8):
            raise VestisError(f"centernet: output_stride must be 4 or 8, got {output_stride}")
        if num_classes < 1:
            raise VestisError(f"centernet: num_classes must be positive, got {num_classes}")
        bb = BACKBONES.build(backbone) if isinstance(backbone, str) else backbone
        strides = tuple(s for s in (4, 8, 16, 32) if s >= output_stride)
        taps = bb.pyramid_features(strides)
        bb.select(taps)
        infos = bb.out_feature_info
        if infos[0].stride != output_stride:
            raise VestisError(f"centernet: backbone {bb.arch or type(bb).__name__} has no stride-{output_stride} map")
        self.backbone = bb
        self.neck = FPN(infos)
        # the heads read the finest level only: the coarser levels' 3x3 smoothing would be parameters without a
        # gradient (and wasted compute), while their top-down merges still feed the finest level
        for i in range(1, len(self.neck.smooth)):
            self.neck.smooth[i] = nn.Identity()
        level = self.neck.feature_info[0]
        self.level, self.stride = level.name, level.stride
        self.num_classes, self.max_detections, self.nms_iou = num_classes, max_detections, nms_iou
        self.heatmap = CenterNetHead(level.channels, head_channels, num_classes, bias=HEATMAP_BIAS)
        self.size = CenterNetHead(level.channels, head_channels, 2)
        self.offset = CenterNetHead(level.channels, head_channels, 2)
        self.loss = CenterNetLoss(size_weight=size_weight, offset_weight=offset_weight)
        self.init_kwargs: dict[str, Any] = {
            "backbone": bb.arch or None,
            "num_classes": num_classes,
            "output_stride": output_stride,
            "head_channels": head_channels,
            "max_detections": max_detections,
            "size_weight": size_weight,
            "offset_weight": offset_weight,
            "nms_iou": nms_iou,
        }

    def forward_maps(self, images: Tensor) -> dict[str, Tensor]:
        """Raw head outputs: ``heatmap`` logits (B, C, H/s, W/s), ``size`` and ``offset`` (B, 2, H/s, W/s)."""
        x = self.neck(self.backbone(images))[self.level]  # (B, C_l, H/s, W/s)
        return {"heatmap": self.heatmap(x), "size": self.size(x), "offset": self.offset(x)}

    def forward(
        self, images: Tensor, targets: Sequence[Mapping[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training, detections in eval.

        Args:
            images: ``(B, 3, H, W)`` normalised images, ``H`` and ``W`` multiples of 32.
            targets: in training, per image ``{"boxes": (N, 4) xyxy input pixels, "labels": (N,) int64}``.

        Returns:
            training: ``{"heatmap", "size", "offset"}`` weighted scalar losses; eval: per image
            ``{"boxes": (K, 4), "scores": (K,), "labels": (K,)}``.
        """
        if self.training:  # checked before the forward pass: a wrong call costs nothing
            if targets is None:
                raise VestisError("centernet: training mode needs targets (call model.eval() to detect)")
            if len(targets) != images.shape[0]:
                raise VestisError(f"centernet: {images.shape[0]} images but {len(targets)} targets")
        maps = self.forward_maps(images)
        if self.training:
            enc = encode_centernet_targets(targets, self.num_classes, tuple(maps["heatmap"].shape[-2:]), self.stride)
            enc = {k: v.to(images.device) for k, v in enc.items()}
            return self.loss(maps, enc)
        return decode_centernet(
            maps["heatmap"].sigmoid(),
            maps["size"],
            maps["offset"],
            self.stride,
            self.max_detections,
            image_size=(images.shape[-2], images.shape[-1]),
            nms_iou=self.nms_iou,
        )


def _register(name: str, backbone: str, head_channels: int, tiny: bool, description: str) -> None:
    def build(**kwargs: Any) -> CenterNet:
        kwargs.setdefault("backbone", backbone)
        if kwargs["backbone"] is None:
            kwargs["backbone"] = backbone
        kwargs.setdefault("head_channels", head_channels)
        return CenterNet(**kwargs)

    build.__doc__ = description
    DETECTORS.register(name, tiny=tiny, task="detection", description=description)(build)


_register("centernet", "mobilenetv3_small", 64, False, "CenterNet (objects as points) on a backbone + FPN")
_register("centernet_tiny", "mobilenetv3_tiny", 16, True, "CenterNet on a tiny backbone, for tests")
