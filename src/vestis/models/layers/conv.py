"""Convolution + batch norm + activation, the unit the backbones here are built from, and weight init."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ActLayer", "ConvBnAct", "init_weights", "make_divisible"]

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
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding=(kernel_size - 1) // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
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
