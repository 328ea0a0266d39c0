"""CBAM, the convolutional block attention module (Woo et al., ECCV 2018), and the no-attention stand-in.

With ``F`` a (C, H, W) feature map, CBAM applies channel attention, then spatial attention::

    Mc(F) = sigmoid(W1(relu(W0(avgpool_hw(F)))) + W1(relu(W0(maxpool_hw(F)))))   # (C, 1, 1), W0/W1 shared
    F'    = Mc(F) * F
    Ms(F') = sigmoid(conv7x7([avgpool_c(F'); maxpool_c(F')]))                      # (1, H, W)
    F''   = Ms(F') * F'

``W0`` reduces the width by ``reduction`` (16 in the paper), to no fewer than ``min_hidden`` units (8) so that
narrow maps keep a bottleneck a few dead ReLUs cannot shut; as in the paper's equations, neither the MLP nor
the 7x7 convolution has a bias. Attention modules here share one interface: ``forward(x) -> y`` and
``forward_with_map(x) -> (y, spatial map (B, H, W) or None)``; the map is what heat-map overlays draw.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vestis.models.layers.conv import init_weights
from vestis.registry import ATTENTION

__all__ = ["CBAM", "ChannelAttention", "NoAttention", "SpatialAttention"]


class ChannelAttention(nn.Module):
    """Channel weights ``Mc`` in (0, 1) of shape (B, C, 1, 1) from average- and max-pooled descriptors.

    Args:
        channels: input width.
        reduction: bottleneck ratio of the shared MLP.
        min_hidden: the smallest hidden width (capped at ``channels``).
    """

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8) -> None:
        super().__init__()
        hidden = min(channels, max(min_hidden, channels // reduction))
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)  # W0
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)  # W1

    def forward(self, x: Tensor) -> Tensor:
        avg = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        mx = x.amax((2, 3), keepdim=True)  # (B, C, 1, 1)
        return torch.sigmoid(self.fc2(self.act(self.fc1(avg))) + self.fc2(self.act(self.fc1(mx))))


class SpatialAttention(nn.Module):
    """Spatial weights ``Ms`` in (0, 1) of shape (B, 1, H, W) from channel-wise mean and max.

    Args:
        kernel_size: size of the (odd) convolution over the two pooled maps; 7 in the paper.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)  # (B, 2, H, W)
        return torch.sigmoid(self.conv(pooled))


@ATTENTION.register("cbam", description="channel + spatial attention (Woo et al. 2018)")
class CBAM(nn.Module):
    """Channel attention followed by spatial attention; the output has the input's shape.

    Args:
        channels: input width.
        reduction: channel-MLP bottleneck ratio.
        kernel_size: spatial-attention kernel size.
        min_hidden: the smallest channel-MLP hidden width.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, min_hidden: int = 8) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction, min_hidden)
        self.spatial = SpatialAttention(kernel_size)
        init_weights(self)

    def forward_with_map(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Attend and also return the spatial attention map.

        Args:
            x: features (B, C, H, W).

        Returns:
            The attended features (B, C, H, W) and the spatial map ``Ms`` (B, H, W).
        """
        x = x * self.channel(x)
        weights = self.spatial(x)  # (B, 1, H, W)
        return x * weights, weights[:, 0]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_map(x)[0]


@ATTENTION.register("none", description="identity (no attention)")
class NoAttention(nn.Module):
    """The identity, for variants without attention; it has no spatial map.

    Args:
        channels: input width (unused; accepted so every attention module is built the same way).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward_with_map(self, x: Tensor) -> tuple[Tensor, None]:
        """Return ``x`` unchanged and no map."""
        return x, None

    def forward(self, x: Tensor) -> Tensor:
        return x
