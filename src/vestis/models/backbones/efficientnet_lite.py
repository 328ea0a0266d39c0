"""EfficientNet-Lite (Google, 2020): EfficientNet-B0..B2 made friendly to integer hardware.

Compared with EfficientNet the Lite family removes squeeze-excitation, replaces swish by ReLU6 and keeps the
32-wide stem and the 1280-wide head at every scale (the first and last stages are not deepened either). The
block table, width/depth multipliers and native resolutions are those of the TensorFlow reference
(``efficientnet_lite_builder.py``):

=================  =====  =====  ==========  =========================================
name               width  depth  resolution  blocks per stage
=================  =====  =====  ==========  =========================================
efficientnet_lite0  1.0    1.0    224         1, 2, 2, 3, 3, 4, 1  (16 blocks)
efficientnet_lite1  1.0    1.1    240         1, 3, 3, 4, 4, 5, 1  (21 blocks)
efficientnet_lite2  1.1    1.2    260         1, 3, 3, 4, 4, 5, 1  (21 blocks)
=================  =====  =====  ==========  =========================================

The weights were trained in TensorFlow: convolutions use TensorFlow's "SAME" padding (asymmetric on stride 2),
batch norm epsilon is 1e-3, and inputs are normalised with mean 127 / std 128 on the 0-255 scale (see
:mod:`vestis.pretrained`). Stages are named ``stage0`` ... ``stage6`` (widths 16, 24, 40, 80, 112, 192, 320 on
Lite0 at strides 2, 4, 8, 16, 16, 32, 32), then ``top``, the 1280-wide 1x1 head convolution. The multi-scale
taps are ``stage2`` (stride 8), ``stage4`` (16) and ``stage6`` (32). Parameter counts without the classifier:
Lite0 3,371,008, Lite1 4,135,680, Lite2 4,811,072 (the 1000-class classifier adds 1,281,000 to each: the head
width is fixed). Stochastic depth (drop-connect) of the reference training recipe is
not used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from vestis.models.backbones.base import Backbone, FeatureInfo
from vestis.models.layers.conv import ConvBnAct, init_weights, make_divisible
from vestis.registry import BACKBONES

__all__ = ["EfficientNetLite", "LiteBlock", "LiteStage", "lite_stages"]

# TensorFlow batch-norm epsilon; PyTorch's default momentum 0.1 (see mobilenetv3.py for why not 0.01)
_BN = {"bn_eps": 1e-3, "bn_momentum": 0.1, "tf_same": True}


@dataclass(frozen=True)
class LiteStage:
    """One stage of the block table: ``repeats`` MBConv blocks, the first with ``stride`` and the width change.

    Attributes:
        repeats: number of blocks.
        kernel: depthwise kernel size.
        stride: stride of the first block.
        expand: expansion ratio of the hidden width relative to the block input.
        channels: output width.
    """

    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int


# EfficientNet-B0's table (TensorFlow ``_DEFAULT_BLOCKS_ARGS``), without squeeze-excitation
_B0 = (
    LiteStage(1, 3, 1, 1, 16),
    LiteStage(2, 3, 2, 6, 24),
    LiteStage(2, 5, 2, 6, 40),
    LiteStage(3, 3, 2, 6, 80),
    LiteStage(3, 5, 1, 6, 112),
    LiteStage(4, 5, 2, 6, 192),
    LiteStage(1, 3, 1, 6, 320),
)


def lite_stages(width: float, depth: float) -> tuple[LiteStage, ...]:
    """The block table scaled by ``width`` and ``depth``; the first and last stages keep their depth (Lite rule)."""
    out = []
    for i, s in enumerate(_B0):
        fixed = i in (0, len(_B0) - 1)
        repeats = s.repeats if fixed else math.ceil(depth * s.repeats)
        out.append(LiteStage(repeats, s.kernel, s.stride, s.expand, make_divisible(s.channels * width, 8)))
    return tuple(out)


class LiteBlock(nn.Module):
    """MBConv without squeeze-excitation: optional 1x1 expansion, depthwise k x k, linear 1x1 projection.

    Args:
        in_channels: input width.
        out_channels: output width.
        kernel: depthwise kernel size.
        stride: depthwise stride.
        expand: expansion ratio (no expansion convolution when 1).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expand = ConvBnAct(in_channels, hidden, 1, act_layer=nn.ReLU6, **_BN) if expand != 1 else None
        self.dw = ConvBnAct(hidden, hidden, kernel, stride, groups=hidden, act_layer=nn.ReLU6, **_BN)
        self.project = ConvBnAct(hidden, out_channels, 1, act_layer=None, **_BN)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.dw(y))
        return y + x if self.has_skip else y


class EfficientNetLite(Backbone):
    """An EfficientNet-Lite feature extractor: ReLU6 stem, seven stages of :class:`LiteBlock`, 1x1 ``top``.

    Args:
        stages: the block table, input side first.
        stem_channels: width of the stride-2 3x3 stem (32 at every Lite scale).
        top_channels: width of the final 1x1 convolution (1280 at every Lite scale).
        out_features: feature names to return; ``None`` returns ``top`` only.
    """

    def __init__(
        self,
        stages: Sequence[LiteStage],
        stem_channels: int = 32,
        top_channels: int = 1280,
        out_features: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        stages = tuple(stages)
        self.init_kwargs = {"stages": stages, "stem_channels": stem_channels, "top_channels": top_channels}
        self.stem = ConvBnAct(3, stem_channels, 3, 2, act_layer=nn.ReLU6, **_BN)
        self.feature_info = [FeatureInfo("stem", stem_channels, 2)]
        self._stage_paths = [("stem",)]
        self.stages = nn.ModuleList()
        in_channels, stride = stem_channels, 2
        for i, s in enumerate(stages):
            blocks = []
            for j in range(s.repeats):
                first = j == 0
                blocks.append(LiteBlock(in_channels, s.channels, s.kernel, s.stride if first else 1, s.expand))
                in_channels = s.channels
            stride *= s.stride
            self.stages.append(nn.Sequential(*blocks))
            self.feature_info.append(FeatureInfo(f"stage{i}", in_channels, stride))
            self._stage_paths.append((f"stages.{i}",))
        self.top = ConvBnAct(in_channels, top_channels, 1, act_layer=nn.ReLU6, **_BN)
        self.feature_info.append(FeatureInfo("top", top_channels, stride))
        self._stage_paths.append(("top",))
        self.top_feature = "top"
        init_weights(self)
        self.select(out_features)


def _build(name: str, stages: Sequence[LiteStage], out_features: Sequence[str] | None, **kw: int) -> EfficientNetLite:
    m = EfficientNetLite(stages, out_features=out_features, **kw)
    m.arch = name
    return m


@BACKBONES.register("efficientnet_lite0", tiny=False, family="efficientnet_lite", resolution=224)
def efficientnet_lite0(out_features: Sequence[str] | None = None) -> EfficientNetLite:
    """EfficientNet-Lite0 (224 px); taps ``stage2`` (40), ``stage4`` (112), ``stage6`` (320); head ``top`` 1280."""
    return _build("efficientnet_lite0", lite_stages(1.0, 1.0), out_features)


@BACKBONES.register("efficientnet_lite1", tiny=False, family="efficientnet_lite", resolution=240)
def efficientnet_lite1(out_features: Sequence[str] | None = None) -> EfficientNetLite:
    """EfficientNet-Lite1 (240 px); same widths as Lite0, deeper stages."""
    return _build("efficientnet_lite1", lite_stages(1.0, 1.1), out_features)


@BACKBONES.register("efficientnet_lite2", tiny=False, family="efficientnet_lite", resolution=260)
def efficientnet_lite2(out_features: Sequence[str] | None = None) -> EfficientNetLite:
    """EfficientNet-Lite2 (260 px); taps ``stage2`` (48), ``stage4`` (120), ``stage6`` (352)."""
    return _build("efficientnet_lite2", lite_stages(1.1, 1.2), out_features)


# The Lite0 stage pattern with one block per stage and a few channels, for tests.
_TINY = (
    LiteStage(1, 3, 1, 1, 8),
    LiteStage(1, 3, 2, 2, 8),
    LiteStage(1, 5, 2, 2, 16),
    LiteStage(1, 3, 2, 2, 16),
    LiteStage(1, 5, 1, 2, 24),
    LiteStage(1, 5, 2, 2, 24),
    LiteStage(1, 3, 1, 2, 32),
)


@BACKBONES.register("efficientnet_lite_tiny", tiny=True, family="efficientnet_lite", resolution=64)
def efficientnet_lite_tiny(out_features: Sequence[str] | None = None) -> EfficientNetLite:
    """A few-channel EfficientNet-Lite with one block per stage, for tests."""
    return _build("efficientnet_lite_tiny", _TINY, out_features, stem_channels=8, top_channels=64)
