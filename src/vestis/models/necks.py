"""Necks: turn the backbone's tapped maps into the levels the attention and pooling see.

Every neck is built from the :class:`FeatureInfo` of its inputs (shallow to deep), declares the
``feature_info`` of its outputs and maps ``dict[name, Tensor] -> dict[name, Tensor]`` (outputs in order,
shallow to deep). Pyramid levels are named ``p{log2(stride)}`` as in Lin et al. (``p3`` = stride 8).

* ``fpn``: the multi-scale paper's FPN (approach 2/3, §4.1.3): the top-down pathway of Lin et al. (2017a),
  but every level keeps its backbone width (80/176/512 on EfficientNetV2-M) instead of a common 256.
* ``retinanet_fpn``: RetinaNet's FPN (Lin et al. 2017b, approach 4): P3-P5 at 256 channels from C3-C5,
  P6 by a stride-2 3x3 convolution on C5 and P7 by ReLU + a stride-2 3x3 convolution on P6.
* ``none``: the tapped maps unchanged (baseline and approach 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch.nn.functional as F
from torch import Tensor, nn

from vestis.errors import VestisError
from vestis.models.backbones.base import FeatureInfo
from vestis.models.layers.conv import init_weights
from vestis.registry import NECKS

__all__ = ["FPN", "IdentityNeck", "RetinaNetFPN", "level_name"]


def level_name(stride: int) -> str:
    """``p{k}`` for a stride of ``2**k``."""
    if stride < 1 or stride & (stride - 1):
        raise VestisError(f"pyramid levels need power-of-two strides, got {stride}")
    return f"p{stride.bit_length() - 1}"


def _check_inputs(kind: str, in_features: Sequence[FeatureInfo], min_levels: int) -> list[FeatureInfo]:
    feats = list(in_features)
    if len(feats) < min_levels:
        raise VestisError(f"{kind}: needs at least {min_levels} input levels, got {[f.name for f in feats]}")
    strides = [f.stride for f in feats]
    if any(b <= a for a, b in pairwise(strides)):
        raise VestisError(f"{kind}: input strides must increase from shallow to deep, got {strides}")
    return feats


def _top_down(
    inputs: list[Tensor], lateral: nn.ModuleList, topdown: nn.ModuleList, smooth: nn.ModuleList
) -> list[Tensor]:
    """Lin et al.'s top-down pathway: ``M_i = lateral_i(C_i) + up(topdown_i(M_{i+1}))``, ``P_i = smooth_i(M_i)``."""
    merged = [lat(x) for lat, x in zip(lateral, inputs, strict=True)]
    for i in range(len(merged) - 2, -1, -1):
        # project at the coarse resolution, then upsample: 1x1 convolution and nearest upsampling commute
        up = F.interpolate(topdown[i](merged[i + 1]), size=merged[i].shape[-2:], mode="nearest")
        merged[i] = merged[i] + up
    return [s(m) for s, m in zip(smooth, merged, strict=True)]


@NECKS.register("fpn", description="FPN keeping each level's backbone width (multi-scale paper approach 2/3)")
class FPN(nn.Module):
    """Feature pyramid whose level ``i`` keeps the width ``C_i`` of the tapped backbone map.

    ``M_top = L_top(C_top)``; ``M_i = L_i(C_i) + upsample(T_i(M_{i+1}))`` where ``L_i`` is a 1x1 lateral
    convolution (C_i -> C_i) and ``T_i`` a 1x1 projection between levels (C_{i+1} -> C_i);
    ``P_i = S_i(M_i)`` with a 3x3 smoothing convolution (C_i -> C_i).

    Args:
        in_features: the tapped maps, shallow to deep.
    """

    def __init__(self, in_features: Sequence[FeatureInfo]) -> None:
        super().__init__()
        feats = _check_inputs("fpn", in_features, 2)
        channels = [f.channels for f in feats]
        self.in_names = [f.name for f in feats]
        self.lateral = nn.ModuleList(nn.Conv2d(c, c, 1) for c in channels)
        self.topdown = nn.ModuleList(nn.Conv2d(channels[i + 1], channels[i], 1) for i in range(len(channels) - 1))
        self.smooth = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for c in channels)
        self.feature_info = [FeatureInfo(level_name(f.stride), f.channels, f.stride) for f in feats]
        init_weights(self)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        outs = _top_down([features[n] for n in self.in_names], self.lateral, self.topdown, self.smooth)
        return {f.name: x for f, x in zip(self.feature_info, outs, strict=True)}


@NECKS.register("retinanet_fpn", description="RetinaNet FPN: P3-P7 at one width (multi-scale paper approach 4)")
class RetinaNetFPN(nn.Module):
    """RetinaNet's feature pyramid: every level ``out_channels`` wide, two extra coarser levels.

    With inputs C3-C5 the outputs are P3-P5 (top-down pathway with 1x1 laterals and 3x3 smoothing),
    ``P6 = conv3x3_s2(C5)`` and ``P7 = conv3x3_s2(relu(P6))``: five levels, strides 8 to 128.

    Args:
        in_features: the tapped maps, shallow to deep.
        out_channels: the common width (256 in the paper).
    """

    def __init__(self, in_features: Sequence[FeatureInfo], out_channels: int = 256) -> None:
        super().__init__()
        feats = _check_inputs("retinanet_fpn", in_features, 1)
        if out_channels < 1:
            raise VestisError(f"retinanet_fpn: out_channels must be positive, got {out_channels}")
        d = out_channels
        self.in_names = [f.name for f in feats]
        self.lateral = nn.ModuleList(nn.Conv2d(f.channels, d, 1) for f in feats)
        self.topdown = nn.ModuleList(nn.Identity() for _ in feats[1:])  # levels already share the width
        self.smooth = nn.ModuleList(nn.Conv2d(d, d, 3, padding=1) for _ in feats)
        self.p6 = nn.Conv2d(feats[-1].channels, d, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(d, d, 3, stride=2, padding=1)
        top = feats[-1].stride
        strides = [f.stride for f in feats] + [top * 2, top * 4]
        self.feature_info = [FeatureInfo(level_name(s), d, s) for s in strides]
        init_weights(self)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        inputs = [features[n] for n in self.in_names]
        outs = _top_down(inputs, self.lateral, self.topdown, self.smooth)
        p6 = self.p6(inputs[-1])
        p7 = self.p7(F.relu(p6))
        outs += [p6, p7]
        return {f.name: x for f, x in zip(self.feature_info, outs, strict=True)}


@NECKS.register("none", description="the tapped backbone maps, unchanged")
class IdentityNeck(nn.Module):
    """Pass the tapped maps through under their backbone names.

    Args:
        in_features: the tapped maps, shallow to deep.
    """

    def __init__(self, in_features: Sequence[FeatureInfo]) -> None:
        super().__init__()
        self.feature_info = _check_inputs("none", in_features, 1)
        self.in_names = [f.name for f in self.feature_info]

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return {n: features[n] for n in self.in_names}
