"""Backbones with a declared feature pyramid; importing this package registers them in ``BACKBONES``."""

from __future__ import annotations

from vestis.models.backbones.ase import ASEBackbone
from vestis.models.backbones.base import Backbone, FeatureInfo
from vestis.models.backbones.efficientnet_lite import EfficientNetLite, LiteBlock, LiteStage
from vestis.models.backbones.efficientnetv2 import EfficientNetV2, EfficientNetV2Stage, FusedMBConv, MBConv
from vestis.models.backbones.mobilenetv3 import InvertedResidual, MobileNetV3, MobileNetV3Block
from vestis.models.backbones.resnet import BasicBlock, Bottleneck, ResNet

__all__ = [
    "ASEBackbone",
    "Backbone",
    "BasicBlock",
    "Bottleneck",
    "EfficientNetLite",
    "EfficientNetV2",
    "EfficientNetV2Stage",
    "FeatureInfo",
    "FusedMBConv",
    "InvertedResidual",
    "LiteBlock",
    "LiteStage",
    "MBConv",
    "MobileNetV3",
    "MobileNetV3Block",
    "ResNet",
]
