"""Convolution + batch norm + activation, the unit the backbones here are built from, and weight init."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ActLayer", "ConvBnAct", "init_weights", "make_divisible", "pad_same"]

ActLayer = type[nn.Module]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to a multiple of ``divisor``, never more than 10 % below it (the MobileNet rule).

    Args:
        value: the width to round.
        divisor: the multiple to round to.
        min_value: the smallest width allowed; defaults to ``divisor``.

    Returns:
        The rounded width.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def pad_same(x: Tensor, kernel_size: int, stride: int) -> Tensor:
    """TensorFlow's ``padding="SAME"``: the output has ``ceil(size / stride)`` pixels and the extra pad pixel of an
    odd total goes to the bottom/right (PyTorch's symmetric padding puts it on both sides).

    Args:
        x: feature map (B, C, H, W).
        kernel_size: square kernel size.
        stride: convolution stride.

    Returns:
        The padded map (B, C, H + ph, W + pw).
    """
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / stride) - 1) * stride + kernel_size - h, 0)
    pw = max((math.ceil(w / stride) - 1) * stride + kernel_size - w, 0)
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class ConvBnAct(nn.Module):
    """``conv (no bias) -> BatchNorm -> activation`` with "same" padding for odd kernels.

    Args:
        in_channels: input width.
        out_channels: output width.
        kernel_size: square kernel size (odd).
        stride: convolution stride.
        groups: convolution groups (``in_channels`` for a depthwise convolution).
        act_layer: activation class, or ``None`` for a linear output (projection convolutions).
        bn_eps: batch-norm epsilon; TensorFlow-trained weights (EfficientNet, MobileNetV3) use 1e-3.
        bn_momentum: batch-norm running-average momentum (PyTorch convention).
        tf_same: TensorFlow "SAME" padding (asymmetric for a stride-2 convolution on an even input), which weights
            trained with TensorFlow (EfficientNet-Lite) expect; otherwise symmetric ``(k - 1) // 2``. The two agree
            for stride 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act_layer: ActLayer | None = nn.ReLU,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        tf_same: bool = False,
    ) -> None:
        super().__init__()
        # with stride 1 "SAME" is the symmetric padding; only strided convolutions pad in forward()
        self._pad_same = tf_same and stride > 1
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding=0 if self._pad_same else (kernel_size - 1) // 2,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self._pad_same:
            x = pad_same(x, self.conv.kernel_size[0], self.conv.stride[0])
        return self.act(self.bn(self.conv(x)))


def init_weights(module: nn.Module) -> None:
    """Standard initialisation of every convolution and batch norm below ``module``.

    Convolutions get Kaiming-normal weights (fan-out, ReLU gain, as torchvision's ResNet/EfficientNet/MobileNet)
    and zero biases; batch norms get unit scale and zero shift. Linear layers keep PyTorch's default.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
