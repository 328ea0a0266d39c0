"""ResNet (He et al. 2016), torchvision's v1.5 layout (stride on the 3x3 convolution of a bottleneck).

Module names equal torchvision's and timm's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``),
so their ImageNet weights load without renaming. Stages: ``stem`` (stride 4, after the max pool),
``layer1`` (4), ``layer2`` (8), ``layer3`` (16), ``layer4`` (32). There is no classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from vestis.models.backbones.base import Backbone, FeatureInfo
from vestis.models.layers.conv import init_weights
from vestis.registry import BACKBONES

__all__ = ["BasicBlock", "Bottleneck", "ResNet"]


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _downsample(in_channels, width, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a residual connection (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.downsample = _downsample(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


class ResNet(Backbone):
    """A ResNet feature extractor.

    Args:
        block: ``basic`` (two 3x3 convolutions) or ``bottleneck`` (1x1-3x3-1x1, 4x expansion).
        layers: number of blocks in each of the four stages.
        widths: base width of each stage (the output width is ``width * expansion``).
        stem_channels: width of the 7x7 stem convolution.
        out_features: feature names to return; ``None`` returns ``layer4`` only.
    """

    def __init__(
        self,
        block: Literal["basic", "bottleneck"],
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_channels: int = 64,
        out_features: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError("a ResNet has four stages: layers and widths need four entries each")
        block_cls: type[BasicBlock | Bottleneck] = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        self.init_kwargs = {
            "block": block,
            "layers": tuple(layers),
            "widths": tuple(widths),
            "stem_channels": stem_channels,
        }
        self.conv1 = nn.Conv2d(3, stem_channels, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        self.feature_info = [FeatureInfo("stem", stem_channels, 4)]
        self._stage_paths = [("conv1", "bn1", "relu", "maxpool")]
        in_channels, stride = stem_channels, 4
        for i, (n, width) in enumerate(zip(layers, widths, strict=True)):
            first_stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(block_cls(in_channels, width, first_stride if j == 0 else 1))
                in_channels = width * block_cls.expansion
            stride *= first_stride
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(FeatureInfo(f"layer{i + 1}", in_channels, stride))
            self._stage_paths.append((f"layer{i + 1}",))
        init_weights(self)
        self.select(out_features)


@BACKBONES.register("resnet18", tiny=False, family="resnet")
def resnet18(out_features: Sequence[str] | None = None) -> ResNet:
    """ResNet-18: 11.18 M parameters without the classifier (11.69 M with the 1000-class one)."""
    m = ResNet("basic", (2, 2, 2, 2), out_features=out_features)
    m.arch = "resnet18"
    return m


@BACKBONES.register("resnet50", tiny=False, family="resnet")
def resnet50(out_features: Sequence[str] | None = None) -> ResNet:
    """ResNet-50: 23.51 M parameters without the classifier (25.557 M with the 1000-class one)."""
    m = ResNet("bottleneck", (3, 4, 6, 3), out_features=out_features)
    m.arch = "resnet50"
    return m


@BACKBONES.register("resnet18_tiny", tiny=True, family="resnet")
def resnet18_tiny(out_features: Sequence[str] | None = None) -> ResNet:
    """A few-channel basic-block ResNet with one block per stage, for tests."""
    m = ResNet("basic", (1, 1, 1, 1), widths=(8, 16, 24, 32), stem_channels=8, out_features=out_features)
    m.arch = "resnet18_tiny"
    return m


@BACKBONES.register("resnet50_tiny", tiny=True, family="resnet")
def resnet50_tiny(out_features: Sequence[str] | None = None) -> ResNet:
    """A few-channel bottleneck ResNet with one block per stage, for tests."""
    m = ResNet("bottleneck", (1, 1, 1, 1), widths=(4, 8, 12, 16), stem_channels=8, out_features=out_features)
    m.arch = "resnet50_tiny"
    return m
