"""EfficientNetV2 (Tan & Le, ICML 2021): fused-MBConv early stages, MBConv + squeeze-excitation later.

Stage widths, depths, expansion ratios and strides follow the TensorFlow reference (``efficientnetv2-s``,
``efficientnetv2-m``), which torchvision's ``efficientnet_v2_s/m`` and timm's ``tf_efficientnetv2_s/m`` copy.
Batch norm uses epsilon 1e-3 as the TensorFlow-trained weights expect; padding is symmetric (``k // 2``).

Feature names follow Keras (``block{stage}{last block letter}``), as the multi-scale paper does: on -M,
``block3e`` (80 ch, stride 8), ``block5n`` (176, 16), ``block7e`` (512, 32), then ``top``, the 1280-wide 1x1
head convolution (stride 32). At 380 px those are 48x48x80, 24x24x176, 12x12x512 and 12x12x1280. On -S the
equivalent taps are ``block3d`` (64), ``block5i`` (160) and ``block6o`` (256).

Parameter counts without the classifier: -S 20,177,488 and -M 52,858,356 (21,458,488 and 54,139,356 with
the 1000-class one, as published).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from vestis.models.backbones.base import Backbone, FeatureInfo
from vestis.models.layers.conv import ConvBnAct, init_weights
from vestis.models.layers.squeeze_excite import SqueezeExcite
from vestis.registry import BACKBONES

__all__ = ["EfficientNetV2", "EfficientNetV2Stage", "FusedMBConv", "MBConv"]

_BN_EPS = 1e-3


@dataclass(frozen=True)
class EfficientNetV2Stage:
    """One stage: ``repeats`` blocks, the first with ``stride`` and the width change.

    Attributes:
        block: ``fused`` (k x k expansion convolution) or ``mbconv`` (1x1 expansion + depthwise k x k).
        repeats: number of blocks.
        kernel: spatial kernel size.
        stride: stride of the first block.
        expand: expansion ratio of the hidden width relative to the block input.
        channels: output width.
        se_ratio: squeeze-excitation bottleneck relative to the block *input* width; 0 disables it.
    """

    block: Literal["fused", "mbconv"]
    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int
    se_ratio: float = 0.0


class FusedMBConv(nn.Module):
    """Fused-MBConv: a k x k expansion convolution, then a 1x1 projection (no projection when ``expand == 1``).

    Args:
        in_channels: input width.
        out_channels: output width.
        kernel: kernel size of the fused convolution.
        stride: its stride.
        expand: hidden width ratio.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        if expand == 1:
            self.fused = ConvBnAct(in_channels, out_channels, kernel, stride, act_layer=nn.SiLU, bn_eps=_BN_EPS)
            self.project: ConvBnAct | None = None
        else:
            self.fused = ConvBnAct(in_channels, hidden, kernel, stride, act_layer=nn.SiLU, bn_eps=_BN_EPS)
            self.project = ConvBnAct(hidden, out_channels, 1, act_layer=None, bn_eps=_BN_EPS)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.fused(x)
        if self.project is not None:
            y = self.project(y)
        return y + x if self.has_skip else y


class MBConv(nn.Module):
    """MBConv: 1x1 expansion, depthwise k x k, squeeze-excitation, linear 1x1 projection.

    Args:
        in_channels: input width.
        out_channels: output width.
        kernel: depthwise kernel size.
        stride: depthwise stride.
        expand: hidden width ratio.
        se_ratio: squeeze-excitation bottleneck relative to ``in_channels``; 0 disables it.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int, se_ratio: float
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expand = ConvBnAct(in_channels, hidden, 1, act_layer=nn.SiLU, bn_eps=_BN_EPS) if expand != 1 else None
        self.dw = ConvBnAct(hidden, hidden, kernel, stride, groups=hidden, act_layer=nn.SiLU, bn_eps=_BN_EPS)
        self.se = (
            SqueezeExcite(hidden, max(1, int(in_channels * se_ratio)), act_layer=nn.SiLU, gate_layer=nn.Sigmoid)
            if se_ratio > 0
            else None
        )
        self.project = ConvBnAct(hidden, out_channels, 1, act_layer=None, bn_eps=_BN_EPS)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.dw(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return y + x if self.has_skip else y


def _block_name(stage: int, repeats: int) -> str:
    # Keras names blocks block{stage}{a, b, c, ...}; the stage output is its last block
    return f"block{stage + 1}{chr(ord('a') + repeats - 1)}"


class EfficientNetV2(Backbone):
    """An EfficientNetV2 feature extractor (stem, stages, 1x1 head convolution ``top``; no classifier).

    Args:
        stages: the stage specifications, input side first.
        stem_channels: width of the stride-2 3x3 stem.
        top_channels: width of the final 1x1 convolution (1280 in the paper).
        out_features: feature names to return; ``None`` returns ``top`` only.
    """

    def __init__(
        self,
        stages: Sequence[EfficientNetV2Stage],
        stem_channels: int = 24,
        top_channels: int = 1280,
        out_features: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.init_kwargs = {"stages": tuple(stages), "stem_channels": stem_channels, "top_channels": top_channels}
        self.stem = ConvBnAct(3, stem_channels, 3, 2, act_layer=nn.SiLU, bn_eps=_BN_EPS)
        self.feature_info = [FeatureInfo("stem", stem_channels, 2)]
        self._stage_paths = [("stem",)]
        self.stages = nn.ModuleList()
        in_channels, stride = stem_channels, 2
        for i, spec in enumerate(stages):
            if spec.block == "fused" and spec.se_ratio:
                raise ValueError(f"stage {i}: fused-MBConv blocks have no squeeze-excitation here")
            blocks: list[nn.Module] = []
            for j in range(spec.repeats):
                s = spec.stride if j == 0 else 1
                if spec.block == "fused":
                    blocks.append(FusedMBConv(in_channels, spec.channels, spec.kernel, s, spec.expand))
                else:
                    blocks.append(MBConv(in_channels, spec.channels, spec.kernel, s, spec.expand, spec.se_ratio))
                in_channels = spec.channels
            stride *= spec.stride
            self.stages.append(nn.Sequential(*blocks))
            self.feature_info.append(FeatureInfo(_block_name(i, spec.repeats), spec.channels, stride))
            self._stage_paths.append((f"stages.{i}",))
        self.top = ConvBnAct(in_channels, top_channels, 1, act_layer=nn.SiLU, bn_eps=_BN_EPS)
        self.feature_info.append(FeatureInfo("top", top_channels, stride))
        self._stage_paths.append(("top",))
        self.top_feature = "top"
        init_weights(self)
        self.select(out_features)


_S = (
    EfficientNetV2Stage("fused", 2, 3, 1, 1, 24),
    EfficientNetV2Stage("fused", 4, 3, 2, 4, 48),
    EfficientNetV2Stage("fused", 4, 3, 2, 4, 64),
    EfficientNetV2Stage("mbconv", 6, 3, 2, 4, 128, 0.25),
    EfficientNetV2Stage("mbconv", 9, 3, 1, 6, 160, 0.25),
    EfficientNetV2Stage("mbconv", 15, 3, 2, 6, 256, 0.25),
)
_M = (
    EfficientNetV2Stage("fused", 3, 3, 1, 1, 24),
    EfficientNetV2Stage("fused", 5, 3, 2, 4, 48),
    EfficientNetV2Stage("fused", 5, 3, 2, 4, 80),
    EfficientNetV2Stage("mbconv", 7, 3, 2, 4, 160, 0.25),
    EfficientNetV2Stage("mbconv", 14, 3, 1, 6, 176, 0.25),
    EfficientNetV2Stage("mbconv", 18, 3, 2, 6, 304, 0.25),
    EfficientNetV2Stage("mbconv", 5, 3, 1, 6, 512, 0.25),
)
# Same block types and stride pattern as -S, one block per stage and a few channels: fast on a CPU.
_TINY = (
    EfficientNetV2Stage("fused", 1, 3, 1, 1, 8),
    EfficientNetV2Stage("fused", 1, 3, 2, 4, 16),
    EfficientNetV2Stage("fused", 1, 3, 2, 4, 24),
    EfficientNetV2Stage("mbconv", 1, 3, 2, 4, 32, 0.25),
    EfficientNetV2Stage("mbconv", 1, 3, 1, 6, 40, 0.25),
    EfficientNetV2Stage("mbconv", 1, 3, 2, 6, 48, 0.25),
)


@BACKBONES.register("efficientnetv2_s", tiny=False, family="efficientnetv2")
def efficientnetv2_s(out_features: Sequence[str] | None = None) -> EfficientNetV2:
    """EfficientNetV2-S; taps ``block3d``, ``block5i``, ``block6o``; head ``top`` 1280."""
    m = EfficientNetV2(_S, 24, 1280, out_features=out_features)
    m.arch = "efficientnetv2_s"
    return m


@BACKBONES.register("efficientnetv2_m", tiny=False, family="efficientnetv2")
def efficientnetv2_m(out_features: Sequence[str] | None = None) -> EfficientNetV2:
    """EfficientNetV2-M, the multi-scale paper's backbone; taps ``block3e``, ``block5n``, ``block7e``."""
    m = EfficientNetV2(_M, 24, 1280, out_features=out_features)
    m.arch = "efficientnetv2_m"
    return m


@BACKBONES.register("efficientnetv2_tiny", tiny=True, family="efficientnetv2")
def efficientnetv2_tiny(out_features: Sequence[str] | None = None) -> EfficientNetV2:
    """A few-channel EfficientNetV2 with one block per stage, for tests; taps ``block3a``, ``block5a``, ``block6a``."""
    m = EfficientNetV2(_TINY, 8, 64, out_features=out_features)
    m.arch = "efficientnetv2_tiny"
    return m
