"""The attentive style embedding (ASE) module of DAtRNet (Bhattacharya et al., CVPRW 2023, §3.1, Fig. 2).

``ASE(x) = attention(MSF(x))``: a multi-scale feature extractor (MSF) doubling the width, ``C -> 2C``, then the
*concurrent axial attention*: three masks computed side by side from the same MSF output ``X`` (D = 2C channels,
H x W pixels) and applied together::

    x1   = sigmoid(Dense_D(Dense_D/4(GMP(X))))          # (1a)  (B, D)
    x2   = sigmoid(Dense_D(Dense_D/4(GAP(X))))          # (1b)  (B, D)
    M_ch = sigmoid(Dense_D([x1; x2]))                   # (1c)  (B, D)
    M_h  = sigmoid(Dense_H(Dense_H/4(s_h(X))))          # (2a)  (B, H)
    M_w  = sigmoid(Dense_W(Dense_W/4(s_w(X))))          # (2b)  (B, W)
    ASE(x) = X * M_ch[:, :, None, None] * M_h[:, None, :, None] * M_w[:, None, None, :]

Choices where the paper is not explicit:

* **Fig. 2 kernel layout.** The text says only "two parallel paths involving Conv and pooling layers of different
  kernel sizes", concatenated, "then a multi-scale feature extraction mechanism". Here: path A is a 3x3 conv (C)
  followed by a 3x3 max pool (stride 1), path B a 5x5 conv (C) followed by a 5x5 max pool (stride 1); their
  concatenation (2C, the "mid-level representation") feeds three parallel convs of kernel 1, 3 and 5 with C, C/2
  and C - C/2 filters, concatenated to the 2C output. Every conv is conv-BN-ReLU with "same" padding, so the
  module keeps H x W.
* **Dense pairs.** The equations nest two dense layers inside one sigmoid and name no activation between them;
  in the Keras notation they are written in, a ``Dense`` without one is linear, so the pair is a linear
  bottleneck (a rank-n/4 factorised map) of widths D/4, H/4 and W/4 (at least 1). Being linear it also cannot
  die at initialisation the way a one-unit ReLU bottleneck on a small map does.
* **The squeezing convolution** ``s_h`` (``s_w``) is a 3x3 conv from D channels to one, followed by the mean over
  the width (height): a position-sensitive profile of length H (W) that a conv can shape, as the paper puts it.
* **Input size.** The dense layers of (2a)/(2b) have as many units as the map has rows / columns, so they are built
  for a declared feature size (:class:`ASEModule`'s ``feature_size``, from the trunk's declared ``image_size``).
  At that size the equations are applied exactly. At any other size the profile is average-pooled to the declared
  length and the mask linearly interpolated back, so one trained model still runs on other inputs (a different
  resolution changes the results, as it does for any model).
* **Combination.** The three masks are computed from the same input (concurrently, not one after the other as
  CBAM does) and multiplied together with it; ``axes`` selects which are used (the paper's ablation), and with
  ``axes=()`` the module is the MSF path alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vestis.errors import VestisError
from vestis.models.layers.conv import ConvBnAct, init_weights

__all__ = [
    "AXES",
    "ASEModule",
    "AxisAttention",
    "ChannelAxisAttention",
    "ConcurrentAxialAttention",
    "MultiScaleFeatures",
    "check_axes",
]

AXES = ("channel", "height", "width")


def check_axes(axes: Sequence[str]) -> tuple[str, ...]:
    """``axes`` as a tuple after checking it names known axes, each once.

    Raises:
        VestisError: an unknown or repeated axis.
    """
    axes = tuple(axes)
    unknown = [a for a in axes if a not in AXES]
    if unknown or len(set(axes)) != len(axes):
        raise VestisError(f"model.ase_axes: expected distinct axes among {list(AXES)}, got {list(axes)}")
    return axes


class MultiScaleFeatures(nn.Module):
    """The MSF sub-network: C channels in, 2C out, same H x W (layout in the module docstring).

    Args:
        channels: input width C, at least 2 (the 3x3 and 5x5 scales get C/2 filters each).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"channels: the multi-scale convs need at least 2 input channels, got {channels}")
        c = channels
        self.path3 = nn.Sequential(ConvBnAct(c, c, 3), nn.MaxPool2d(3, 1, padding=1))
        self.path5 = nn.Sequential(ConvBnAct(c, c, 5), nn.MaxPool2d(5, 1, padding=2))
        self.scale1 = ConvBnAct(2 * c, c, 1)
        self.scale3 = ConvBnAct(2 * c, c // 2, 3)
        self.scale5 = ConvBnAct(2 * c, c - c // 2, 5)
        self.out_channels = 2 * c

    def forward(self, x: Tensor) -> Tensor:
        mid = torch.cat([self.path3(x), self.path5(x)], dim=1)  # (B, 2C, H, W)
        return torch.cat([self.scale1(mid), self.scale3(mid), self.scale5(mid)], dim=1)  # (B, 2C, H, W)


class _DensePair(nn.Module):
    """``sigmoid(Dense_n(Dense_n/4(v)))`` on (B, n) vectors: a linear bottleneck of at least one unit."""

    def __init__(self, n: int) -> None:
        super().__init__()
        hidden = max(1, n // 4)
        self.fc1 = nn.Linear(n, hidden)
        self.fc2 = nn.Linear(hidden, n)

    def forward(self, v: Tensor) -> Tensor:
        return torch.sigmoid(self.fc2(self.fc1(v)))


class ChannelAxisAttention(nn.Module):
    """The channel mask ``M_ch`` (B, D) of eqs. 1a-1c from global max- and average-pooled descriptors.

    Args:
        channels: D.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.max_path = _DensePair(channels)  # (1a)
        self.avg_path = _DensePair(channels)  # (1b)
        self.fuse = nn.Linear(2 * channels, channels)  # (1c)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.max_path(x.amax((2, 3)))  # (B, D)
        x2 = self.avg_path(x.mean((2, 3)))  # (B, D)
        return torch.sigmoid(self.fuse(torch.cat([x1, x2], dim=1)))  # (B, D)


class AxisAttention(nn.Module):
    """The height (eq. 2a) or width (eq. 2b) mask, (B, H) or (B, W).

    Args:
        channels: D.
        length: the declared number of rows (``axis="height"``) or columns (``"width"``).
        axis: ``height`` or ``width``.
    """

    def __init__(self, channels: int, length: int, axis: str) -> None:
        super().__init__()
        if axis not in ("height", "width"):
            raise ValueError(f"axis: expected height or width, got {axis!r}")
        if length < 1:
            raise ValueError(f"length: expected a positive size, got {length}")
        self.axis = axis
        self.length = length
        self.squeeze = nn.Conv2d(channels, 1, 3, padding=1)
        self.dense = _DensePair(length)

    def forward(self, x: Tensor) -> Tensor:
        s = self.squeeze(x)[:, 0]  # (B, H, W)
        profile = s.mean(2) if self.axis == "height" else s.mean(1)  # (B, n)
        n = profile.shape[1]
        if n == self.length:
            return self.dense(profile)
        # another input size than declared: resample the profile to the dense layers' length and back
        pooled = F.adaptive_avg_pool1d(profile.unsqueeze(1), self.length)  # (B, 1, length)
        mask = self.dense(pooled[:, 0]).unsqueeze(1)  # (B, 1, length)
        return F.interpolate(mask, size=n, mode="linear", align_corners=False)[:, 0]  # (B, n)


class ConcurrentAxialAttention(nn.Module):
    """The channel, height and width masks computed from the same input and applied together.

    Args:
        channels: D.
        feature_size: the declared (H, W) of the input maps.
        axes: which masks to use, among ``channel``, ``height``, ``width``; ``()`` is the identity.
    """

    def __init__(self, channels: int, feature_size: tuple[int, int], axes: Sequence[str] = AXES) -> None:
        super().__init__()
        self.axes = check_axes(axes)
        self.channel = ChannelAxisAttention(channels) if "channel" in self.axes else None
        self.height = AxisAttention(channels, feature_size[0], "height") if "height" in self.axes else None
        self.width = AxisAttention(channels, feature_size[1], "width") if "width" in self.axes else None

    def masks(self, x: Tensor) -> dict[str, Tensor]:
        """Axis name -> mask in (0, 1): ``channel`` (B, D), ``height`` (B, H), ``width`` (B, W)."""
        out: dict[str, Tensor] = {}
        for name, module in (("channel", self.channel), ("height", self.height), ("width", self.width)):
            if module is not None:
                out[name] = module(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        masks = self.masks(x)
        if "channel" in masks:
            x = x * masks["channel"][:, :, None, None]
        if "height" in masks:
            x = x * masks["height"][:, None, :, None]
        if "width" in masks:
            x = x * masks["width"][:, None, None, :]
        return x


class ASEModule(nn.Module):
    """Multi-scale features, then concurrent axial attention: (B, C, H, W) -> (B, 2C, H, W).

    Args:
        channels: input width C.
        feature_size: the declared (H, W) of the input (and output) maps, for the height / width masks.
        axes: the attention masks to use; ``()`` leaves the MSF output as it is.
    """

    def __init__(self, channels: int, feature_size: int | tuple[int, int], axes: Sequence[str] = AXES) -> None:
        super().__init__()
        size = (feature_size, feature_size) if isinstance(feature_size, int) else tuple(feature_size)
        self.msf = MultiScaleFeatures(channels)
        self.attention = ConcurrentAxialAttention(self.msf.out_channels, (size[0], size[1]), axes)
        self.out_channels = self.msf.out_channels
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.attention(self.msf(x))
