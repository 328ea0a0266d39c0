"""The backbone contract: named feature maps with a declared width and stride.

A backbone is a sequence of *stages*; each stage ends in a named feature map described by a
:class:`FeatureInfo`. ``feature_info`` lists every stage of the architecture, input to output, whatever
is selected; ``out_features`` names the maps ``forward`` returns. Selecting features removes the stages
after the deepest selected one, so no parameter is left without a gradient::

    bb = BACKBONES.build("efficientnetv2_m")
    bb.pyramid_features()             # ['block3e', 'block5n', 'block7e']
    bb.select(bb.pyramid_features())  # drops the 1280-wide head convolution
    bb(images)                        # {'block3e': (B, 80, H/8, W/8), 'block5n': ..., 'block7e': ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vestis.errors import VestisError

__all__ = ["Backbone", "FeatureInfo"]


@dataclass(frozen=True)
class FeatureInfo:
    """One named feature map: its width and its stride relative to the input image.

    Attributes:
        name: the map's name (e.g. ``block3e``, ``layer2``, ``p3``).
        channels: number of channels.
        stride: input pixels per feature-map pixel along each side.
    """

    name: str
    channels: int
    stride: int


class Backbone(nn.Module):
    """Base class of every backbone.

    A subclass builds its modules, fills ``feature_info`` (one entry per stage) and ``_stage_paths`` (for each
    stage, the attribute paths of the modules applied in order, e.g. ``("conv1", "bn1", "relu", "maxpool")``),
    sets ``init_kwargs`` to the constructor arguments that rebuild the whole architecture, and finally calls
    :meth:`select`.

    Attributes:
        feature_info: every stage's output, from the input side to the output side.
        out_features: names of the maps :meth:`forward` returns, in stage order.
        top_feature: name of a final 1x1 "head" convolution (EfficientNet, MobileNet) or ``None``; it is the
            last stage but not part of the multi-scale pyramid.
        pruned_prefixes: state-dict prefixes of the modules removed by :meth:`select`.
        arch: the registered name, when built through the registry.
    """

    def __init__(self) -> None:
        super().__init__()
        self.feature_info: list[FeatureInfo] = []
        self.out_features: tuple[str, ...] = ()
        self.top_feature: str | None = None
        self.pruned_prefixes: tuple[str, ...] = ()
        self.arch = ""
        self.init_kwargs: dict[str, Any] = {}
        self._stage_paths: list[tuple[str, ...]] = []
        self._depth = -1

    # --- introspection -------------------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.feature_info]

    def info(self, name: str) -> FeatureInfo:
        """The :class:`FeatureInfo` of the stage called ``name``."""
        for f in self.feature_info:
            if f.name == name:
                return f
        raise VestisError(f"{self._label()}: unknown feature {name!r}; available: {self.feature_names}")

    @property
    def out_feature_info(self) -> list[FeatureInfo]:
        """The :class:`FeatureInfo` of each selected map, in stage order."""
        return [self.info(n) for n in self.out_features]

    @property
    def last_feature(self) -> str:
        """The final stage (the head convolution where there is one)."""
        return self.feature_info[-1].name

    def pyramid_features(self, strides: Sequence[int] = (8, 16, 32)) -> list[str]:
        """The multi-scale taps: for each stride, the deepest stage at that stride, head convolution excluded.

        On EfficientNetV2-M this gives the multi-scale paper's ``block3e``, ``block5n`` and ``block7e``.

        Args:
            strides: the strides to tap, shallow to deep.

        Returns:
            One feature name per stride.
        """
        names = []
        for s in strides:
            at = [f.name for f in self.feature_info if f.stride == s and f.name != self.top_feature]
            if not at:
                have = sorted({f.stride for f in self.feature_info})
                raise VestisError(f"{self._label()}: no stage at stride {s}; strides available: {have}")
            names.append(at[-1])
        return names

    # --- selection -----------------------------------------------------------------------------------------
    def select(self, out_features: Sequence[str] | None) -> Backbone:
        """Choose the maps :meth:`forward` returns and remove the stages after the deepest one.

        Args:
            out_features: feature names; ``None`` selects the last stage (and keeps the whole network).

        Returns:
            ``self``, for chaining.
        """
        names = self.feature_names
        wanted = [names[-1]] if out_features is None else list(out_features)
        if not wanted:
            raise VestisError(f"{self._label()}: out_features is empty; available: {names}")
        for n in wanted:
            if n not in names:
                raise VestisError(f"{self._label()}: unknown feature {n!r}; available: {names}")
        depth = max(names.index(n) for n in wanted)
        if 0 <= self._depth < depth:
            raise VestisError(
                f"{self._label()}: feature {names[depth]!r} was removed by an earlier select(); build a new backbone"
            )
        pruned = list(self.pruned_prefixes)
        for i in range(len(self._stage_paths) - 1, depth, -1):
            for path in reversed(self._stage_paths[i]):
                if self._remove_module(path):
                    pruned.append(f"{path}.")
        self._depth = depth
        self.pruned_prefixes = tuple(pruned)
        self.out_features = tuple(n for n in names if n in wanted)
        return self

    def _remove_module(self, path: str) -> bool:
        parent_path, _, leaf = path.rpartition(".")
        parent = self.get_submodule(parent_path) if parent_path else self
        if leaf not in parent._modules:
            return False
        if isinstance(parent, nn.ModuleList | nn.Sequential) and leaf.isdigit():
            # stages are removed from the output side, so the entry is always the list's last one
            if int(leaf) != len(parent) - 1:
                raise RuntimeError(f"{path}: only the last entry of a module list can be removed")
            del parent[int(leaf)]
        else:
            delattr(parent, leaf)
        return True

    def full_architecture(self) -> Backbone:
        """The same architecture with every stage, on the meta device (no memory, random-free).

        Used to name the weights of stages that :meth:`select` removed.
        """
        with torch.device("meta"):
            full = type(self)(**self.init_kwargs)
        full.arch = self.arch
        return full

    # --- forward -------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Run the stages up to the deepest selected one.

        Args:
            x: images (B, 3, H, W).

        Returns:
            Selected feature name -> map (B, channels, ceil(H / stride), ceil(W / stride)).
        """
        out: dict[str, Tensor] = {}
        for i in range(self._depth + 1):
            for path in self._stage_paths[i]:
                x = self.get_submodule(path)(x)
            name = self.feature_info[i].name
            if name in self.out_features:
                out[name] = x
        return out

    def _label(self) -> str:
        return f"backbone {self.arch}" if self.arch else f"backbone {type(self).__name__}"
