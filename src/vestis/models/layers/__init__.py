"""Reusable layers: conv-BN-activation, squeeze-excitation and CBAM attention."""

from __future__ import annotations

from vestis.models.layers.cbam import CBAM, ChannelAttention, NoAttention, SpatialAttention
from vestis.models.layers.conv import ActLayer, ConvBnAct, init_weights, make_divisible
from vestis.models.layers.squeeze_excite import SqueezeExcite

__all__ = [
    "CBAM",
    "ActLayer",
    "ChannelAttention",
    "ConvBnAct",
    "NoAttention",
    "SpatialAttention",
    "SqueezeExcite",
    "init_weights",
    "make_divisible",
]
