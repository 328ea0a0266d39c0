"""The DAtRNet trunk of Table 1 (Bhattacharya et al., CVPRW 2023) as a vestis backbone: ``datrnet_ase``.

``Conv(32, 3x3, stride 2) -> [MaxPool(2) -> ASE module] x modules``; each ASE module doubles the width (32 -> 64
-> 128 -> 256). Stages: ``stem`` (stride 2), ``ase1`` (4), ``ase2`` (8), ``ase3`` (16), each ASE stage one block
(its max pool and its module), so freezing and the frozen-trunk cache work as on any backbone.

Table 1 lists the first conv with stride 2 but an unchanged 256 x 256 output; the stride is followed here (the
layer name is the specification, the size column looks like a slip), so a 256 px input reaches ASE-3 at 16 x 16.
The max pools use ``ceil_mode`` so that every map is ``ceil(side / stride)`` like the other backbones' maps.

The height / width attention layers are sized for the maps of a declared ``image_size`` (see
:mod:`vestis.models.layers.ase`); the factory passes ``data.image_size``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from vestis.errors import VestisError
from vestis.models.backbones.base import Backbone, FeatureInfo
from vestis.models.layers.ase import AXES, ASEModule, check_axes
from vestis.models.layers.conv import ConvBnAct, init_weights
from vestis.registry import BACKBONES

__all__ = ["ASEBackbone"]

MAX_MODULES = 3


class ASEBackbone(Backbone):
    """Stem conv, then max pool + ASE module per stage.

    Args:
        modules: number of ASE modules (1 to 3; the paper's ablation has a one-module trunk).
        axes: the attention masks of every module (``channel``, ``height``, ``width``; ``()`` = MSF only).
        image_size: the input side the height / width masks are built for.
        stem_channels: filters of the first conv (32 in the paper).
        out_features: feature names to return; ``None`` returns the last ASE stage.
    """

    def __init__(
        self,
        modules: int = 3,
        axes: Sequence[str] = AXES,
        image_size: int = 256,
        stem_channels: int = 32,
        out_features: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= modules <= MAX_MODULES:
            raise VestisError(f"model.ase_modules: expected 1 to {MAX_MODULES} ASE modules, got {modules}")
        if image_size < 1:
            raise VestisError(f"data.image_size: expected a positive side, got {image_size}")
        axes = check_axes(axes)
        self.init_kwargs = {
            "modules": modules,
            "axes": axes,
            "image_size": image_size,
            "stem_channels": stem_channels,
        }
        self.image_size = image_size
        self.stem = ConvBnAct(3, stem_channels, 3, stride=2)
        self.feature_info = [FeatureInfo("stem", stem_channels, 2)]
        self._stage_paths = [("stem",)]
        channels, stride = stem_channels, 2
        for i in range(1, modules + 1):
            stride *= 2
            side = math.ceil(image_size / stride)
            self.add_module(f"pool{i}", nn.MaxPool2d(2, 2, ceil_mode=True))
            self.add_module(f"ase{i}", ASEModule(channels, side, axes))
            channels *= 2
            self.feature_info.append(FeatureInfo(f"ase{i}", channels, stride))
            self._stage_paths.append((f"pool{i}", f"ase{i}"))
        init_weights(self)
        self.select(out_features)

    def pyramid_features(self, strides: Sequence[int] | None = None) -> list[str]:
        """The multi-scale taps: by default the ASE stages' outputs (strides 4, 8, 16 with three modules).

        The trunk ends at stride 16, so the (8, 16, 32) taps of the classification backbones do not exist; its
        natural scales are its modules. Explicit ``strides`` behave as on every backbone.
        """
        if strides is not None:
            return super().pyramid_features(strides)
        return [f.name for f in self.feature_info if f.name.startswith("ase")]


@BACKBONES.register("datrnet_ase", tiny=False, family="ase")
def datrnet_ase(
    modules: int = 3,
    axes: Sequence[str] = AXES,
    image_size: int = 256,
    out_features: Sequence[str] | None = None,
) -> ASEBackbone:
    """DAtRNet's trunk (Table 1): 32-filter stem, three ASE modules, 256 x 16 x 16 at a 256 px input."""
    m = ASEBackbone(modules, axes, image_size, stem_channels=32, out_features=out_features)
    m.arch = "datrnet_ase"
    return m


@BACKBONES.register("datrnet_ase_tiny", tiny=True, family="ase")
def datrnet_ase_tiny(
    modules: int = 3,
    axes: Sequence[str] = AXES,
    image_size: int = 64,
    out_features: Sequence[str] | None = None,
) -> ASEBackbone:
    """A 4-filter-stem ASE trunk sized for 64 px inputs, for tests."""
    m = ASEBackbone(modules, axes, image_size, stem_channels=4, out_features=out_features)
    m.arch = "datrnet_ase_tiny"
    return m
