"""Squeeze-and-excitation (Hu et al. 2018): re-weight channels by a gate computed from their global average."""

from __future__ import annotations

from torch import Tensor, nn

from vestis.models.layers.conv import ActLayer

__all__ = ["SqueezeExcite"]


class SqueezeExcite(nn.Module):
    """``x * gate(fc2(act(fc1(mean_hw(x)))))`` with 1x1 convolutions as the two fully connected layers.

    Args:
        channels: width of the input (and of the gate).
        rd_channels: width of the bottleneck.
        act_layer: activation between the two layers (SiLU in EfficientNetV2, ReLU in MobileNetV3).
        gate_layer: gate activation (sigmoid in EfficientNetV2, hard sigmoid in MobileNetV3).
    """

    def __init__(
        self, channels: int, rd_channels: int, act_layer: ActLayer = nn.ReLU, gate_layer: ActLayer = nn.Sigmoid
    ) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)
        self.gate = gate_layer()

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))
