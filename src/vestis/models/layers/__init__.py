"""Reusable layers: conv-BN-activation, squeeze-excitation, CBAM attention and DAtRNet's ASE module."""

from __future__ import annotations

from vestis.models.layers.ase import ASEModule, ConcurrentAxialAttention, MultiScaleFeatures
from vestis.models.layers.cbam import CBAM, ChannelAttention, NoAttention, SpatialAttention
from vestis.models.layers.conv import ActLayer, ConvBnAct, init_weights, make_divisible
from vestis.models.layers.squeeze_excite import SqueezeExcite

__all__ = [
    "CBAM",
    "ASEModule",
    "ActLayer",
    "ChannelAttention",
    "ConcurrentAxialAttention",
    "ConvBnAct",
    "MultiScaleFeatures",
    "NoAttention",
    "SpatialAttention",
    "SqueezeExcite",
    "init_weights",
    "make_divisible",
]
