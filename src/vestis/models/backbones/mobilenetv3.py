"""MobileNetV3-Small (Howard et al., ICCV 2019): inverted residuals with squeeze-excitation and hard-swish.

The block table is the paper's (Table 2), as in torchvision's ``mobilenet_v3_small``. Blocks are grouped into
stages as timm does: ``stage0`` (16 ch, stride 4), ``stage1`` (24, 8), ``stage2`` (40, 16), ``stage3`` (48, 16),
``stage4`` (96, 32), then ``top``, the 576-wide 1x1 head convolution (stride 32). The 1024-wide fully
connected layer and the classifier are not part of the backbone. Without them it has 927,008 parameters
(2,542,856 with them, as published by torchvision).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from vestis.models.backbones.base import Backbone, FeatureInfo
from vestis.models.layers.conv import ConvBnAct, init_weights, make_divisible
from vestis.models.layers.squeeze_excite import SqueezeExcite
from vestis.registry import BACKBONES

__all__ = ["InvertedResidual", "MobileNetV3", "MobileNetV3Block"]

# Batch-norm epsilon 1e-3 as in the TensorFlow-trained weights. The running average uses PyTorch's default
# momentum 0.1 (as timm does), not torchvision's 0.01: with 0.01 the eval-mode statistics of a model trained
# from scratch for a few hundred steps still sit near their initial values and its predictions collapse.
_BN = {"bn_eps": 1e-3, "bn_momentum": 0.1}
_ACTS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "hswish": nn.Hardswish}


@dataclass(frozen=True)
class MobileNetV3Block:
    """One inverted-residual block.

    Attributes:
        kernel: depthwise kernel size.
        expanded: hidden width (no 1x1 expansion when it equals the block input width).
        channels: output width.
        se: whether the block has squeeze-excitation (bottleneck ``make_divisible(expanded // 4, 8)``).
        act: ``relu`` or ``hswish``.
        stride: depthwise stride.
    """

    kernel: int
    expanded: int
    channels: int
    se: bool
    act: Literal["relu", "hswish"]
    stride: int


class InvertedResidual(nn.Module):
    """Optional 1x1 expansion, depthwise k x k, optional squeeze-excitation, linear 1x1 projection.

    Args:
        in_channels: input width.
        spec: the block specification.
    """

    def __init__(self, in_channels: int, spec: MobileNetV3Block) -> None:
        super().__init__()
        act = _ACTS[spec.act]
        hidden = spec.expanded
        self.expand = ConvBnAct(in_channels, hidden, 1, act_layer=act, **_BN) if hidden != in_channels else None
        self.dw = ConvBnAct(hidden, hidden, spec.kernel, spec.stride, groups=hidden, act_layer=act, **_BN)
        self.se = (
            SqueezeExcite(hidden, make_divisible(hidden // 4, 8), act_layer=nn.ReLU, gate_layer=nn.Hardsigmoid)
            if spec.se
            else None
        )
        self.project = ConvBnAct(hidden, spec.channels, 1, act_layer=None, **_BN)
        self.has_skip = spec.stride == 1 and in_channels == spec.channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.dw(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return y + x if self.has_skip else y


class MobileNetV3(Backbone):
    """A MobileNetV3 feature extractor (hard-swish stem, stages of inverted residuals, 1x1 ``top``).

    Args:
        stages: blocks of each stage, input side first.
        stem_channels: width of the stride-2 3x3 stem.
        top_channels: width of the final 1x1 convolution (576 for -Small).
        out_features: feature names to return; ``None`` returns ``top`` only.
    """

    def __init__(
        self,
        stages: Sequence[Sequence[MobileNetV3Block]],
        stem_channels: int = 16,
        top_channels: int = 576,
        out_features: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        stages = tuple(tuple(s) for s in stages)
        self.init_kwargs = {"stages": stages, "stem_channels": stem_channels, "top_channels": top_channels}
        self.stem = ConvBnAct(3, stem_channels, 3, 2, act_layer=nn.Hardswish, **_BN)
        self.feature_info = [FeatureInfo("stem", stem_channels, 2)]
        self._stage_paths = [("stem",)]
        self.stages = nn.ModuleList()
        in_channels, stride = stem_channels, 2
        for i, specs in enumerate(stages):
            blocks = []
            for spec in specs:
                blocks.append(InvertedResidual(in_channels, spec))
                in_channels = spec.channels
                stride *= spec.stride
            self.stages.append(nn.Sequential(*blocks))
            self.feature_info.append(FeatureInfo(f"stage{i}", in_channels, stride))
            self._stage_paths.append((f"stages.{i}",))
        self.top = ConvBnAct(in_channels, top_channels, 1, act_layer=nn.Hardswish, **_BN)
        self.feature_info.append(FeatureInfo("top", top_channels, stride))
        self._stage_paths.append(("top",))
        self.top_feature = "top"
        init_weights(self)
        self.select(out_features)


_B = MobileNetV3Block
_SMALL = (
    (_B(3, 16, 16, True, "relu", 2),),
    (_B(3, 72, 24, False, "relu", 2), _B(3, 88, 24, False, "relu", 1)),
    (_B(5, 96, 40, True, "hswish", 2), _B(5, 240, 40, True, "hswish", 1), _B(5, 240, 40, True, "hswish", 1)),
    (_B(5, 120, 48, True, "hswish", 1), _B(5, 144, 48, True, "hswish", 1)),
    (_B(5, 288, 96, True, "hswish", 2), _B(5, 576, 96, True, "hswish", 1), _B(5, 576, 96, True, "hswish", 1)),
)
# The -Small stage pattern with one block per stage and a few channels.
_TINY = (
    (_B(3, 8, 8, True, "relu", 2),),
    (_B(3, 16, 16, False, "relu", 2),),
    (_B(5, 32, 24, True, "hswish", 2),),
    (_B(5, 48, 24, True, "hswish", 1),),
    (_B(5, 64, 32, True, "hswish", 2),),
)


@BACKBONES.register("mobilenetv3_small", tiny=False, family="mobilenetv3")
def mobilenetv3_small(out_features: Sequence[str] | None = None) -> MobileNetV3:
    """MobileNetV3-Small; taps ``stage1`` (24), ``stage3`` (48), ``stage4`` (96); head ``top`` 576."""
    m = MobileNetV3(_SMALL, 16, 576, out_features=out_features)
    m.arch = "mobilenetv3_small"
    return m


@BACKBONES.register("mobilenetv3_tiny", tiny=True, family="mobilenetv3")
def mobilenetv3_tiny(out_features: Sequence[str] | None = None) -> MobileNetV3:
    """A few-channel MobileNetV3 with one block per stage, for tests."""
    m = MobileNetV3(_TINY, 8, 64, out_features=out_features)
    m.arch = "mobilenetv3_tiny"
    return m
