"""The backbone contract: named feature maps with a declared width and stride.

A backbone is a sequence of *stages*; each stage ends in a named feature map described by a
:class:`FeatureInfo`. ``feature_info`` lists every stage of the architecture, input to output, whatever
is selected; ``out_features`` names the maps ``forward`` returns. Selecting features removes the stages
after the deepest selected one, so no parameter is left without a gradient::

    bb = BACKBONES.build("efficientnetv2_m")
    bb.pyramid_features()             # ['block3e', 'block5n', 'block7e']
    bb.select(bb.pyramid_features())  # drops the 1280-wide head convolution
    bb(images)                        # {'block3e': (B, 80, H/8, W/8), 'block5n': ..., 'block7e': ...}

Fine-tuning and the frozen-trunk feature cache work on *blocks* (:meth:`Backbone.blocks`): the stem, then
every block of every stage, then ``top``. A block is a residual / inverted-residual unit, so it is coarser
than the Keras "layers" a paper may count (one block is a dozen of them); "the last N blocks" is our unit::

    cut, taps = bb.forward_until(images, 4)   # blocks 0..3, plus the selected maps they completed
    bb.forward_from(cut, 4, taps)             # the rest: the same dict as bb(images)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vestis.errors import VestisError

__all__ = ["Backbone", "BackboneBlock", "FeatureInfo"]


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


@dataclass(frozen=True)
class BackboneBlock:
    """One block of a backbone, the unit of fine-tuning (see :meth:`Backbone.blocks`).

    Attributes:
        name: the module path of the block (``stem``, ``stages.2.1``, ``layer3.0``, ``top``); for a stage made
            of several modules (the ResNet stem) the stage's feature name.
        stage: index of the stage (in ``feature_info``) the block belongs to.
        paths: module paths applied in order.
        ends_stage: whether the block's output is its stage's feature map.
    """

    name: str
    stage: int
    paths: tuple[str, ...]
    ends_stage: bool


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

    # --- blocks --------------------------------------------------------------------------------------------
    def blocks(self) -> list[BackboneBlock]:
        """The blocks of the kept stages, input to output.

        A stage that is one ``nn.Sequential`` contributes each of its children (the residual or
        inverted-residual blocks); any other stage (a single module such as ``stem`` or ``top``, or several
        modules applied in turn such as the ResNet stem) is one block. Stages removed by :meth:`select` are
        not listed.

        Returns:
            One :class:`BackboneBlock` per block; running them in order is :meth:`forward`.
        """
        out: list[BackboneBlock] = []
        for i in range(self._depth + 1):
            paths = self._stage_paths[i]
            module = self.get_submodule(paths[0]) if len(paths) == 1 else None
            if isinstance(module, nn.Sequential) and len(module) > 0:
                n = len(module)
                out += [BackboneBlock(f"{paths[0]}.{j}", i, (f"{paths[0]}.{j}",), j == n - 1) for j in range(n)]
            else:
                name = paths[0] if len(paths) == 1 else self.feature_info[i].name
                out.append(BackboneBlock(name, i, tuple(paths), True))
        return out

    def block_modules(self, block: BackboneBlock) -> list[nn.Module]:
        """The modules a block applies, in order."""
        return [self.get_submodule(p) for p in block.paths]

    def forward_until(self, x: Tensor, stop: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Run blocks ``[0, stop)``: the lower part of the network, for the frozen-trunk feature cache.

        Args:
            x: images (B, 3, H, W).
            stop: index of the first block not run (0 returns ``x`` itself).

        Returns:
            The output of block ``stop - 1`` (the cut map) and the selected feature maps completed below the
            cut; a selected map that is the cut map itself is the same tensor object.
        """
        return self._run(x, 0, stop, {})

    def forward_from(self, x: Tensor, start: int, features: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Run blocks ``[start, end)`` on the cut map ``x`` and return the selected features.

        ``cut, taps = bb.forward_until(images, k)`` then ``bb.forward_from(cut, k, taps)`` equals ``bb(images)``.

        Args:
            x: the output of block ``start - 1`` (the images when ``start`` is 0).
            start: index of the first block to run.
            features: the selected maps produced below the cut (from :meth:`forward_until`).

        Returns:
            Selected feature name -> map, in stage order, as :meth:`forward` returns them.
        """
        blocks = self.blocks()
        _, out = self._run(x, start, len(blocks), dict(features or {}), blocks)
        return {n: out[n] for n in self.out_features}

    def _run(
        self, x: Tensor, start: int, stop: int, out: dict[str, Tensor], blocks: list[BackboneBlock] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        blocks = self.blocks() if blocks is None else blocks
        if not 0 <= start <= stop <= len(blocks):
            raise VestisError(f"{self._label()}: blocks [{start}, {stop}) outside the {len(blocks)} blocks")
        for block in blocks[start:stop]:
            for m in self.block_modules(block):
                x = m(x)
            name = self.feature_info[block.stage].name
            if block.ends_stage and name in self.out_features:
                out[name] = x
        return x, out

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
