"""The multi-task attribute model and the five architectures of the multi-scale paper (§5.2).

An :class:`AttributeModel` is ``backbone -> neck -> one attention module per level -> global average pooling
-> concatenation (the fused feature vector) -> one branch per attribute``. The registered variants differ
in which backbone maps they tap, the neck, and whether there is attention:

=========  =====================  ===================  =========  ====================================
name       taps                   neck                 attention  fused width on EfficientNetV2-M
=========  =====================  ===================  =========  ====================================
baseline   last stage (``top``)   none                 yes        1280
a1         3 scales (8, 16, 32)   none                 yes        80 + 176 + 512 = 768
a1_noatt   3 scales (8, 16, 32)   none                 no         768
a2         3 scales               FPN, per-level width no         768
a3         3 scales               FPN, per-level width yes        768
a4         3 scales               RetinaNet FPN P3-P7  yes        5 x 256 = 1280
=========  =====================  ===================  =========  ====================================

Approach 1 is ambiguous in the paper: its title (§5.2.2) says "Multi-Scale Features Without Using FPN, Without
Attention" while its body says "features from 3 different layers along with separate attention module for each
layer". ``a1`` follows the body (one attention module per scale); ``a1_noatt`` is the title's reading (no
attention), registered under its own name so the two are never confused. The paper reports gains over the baseline
for approaches 3 and 4 only; its Table 1 has approach 1 slightly below the baseline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vestis.data.taxonomy import Taxonomy
from vestis.models.backbones.base import Backbone, FeatureInfo
from vestis.models.heads import AttributeHeads
from vestis.models.inputs import require_tensor
from vestis.registry import ATTENTION, MODELS, NECKS

__all__ = ["VARIANTS", "AttributeModel", "Variant", "build_attribute_model"]


class AttributeModel(nn.Module):
    """Images in, one logit vector per attribute out.

    Args:
        backbone: the feature extractor, with its taps selected.
        neck: maps the tapped maps to the levels (declares ``feature_info``).
        attentions: one attention module per neck level (``forward`` and ``forward_with_map``).
        heads: the attribute branches.
        taxonomy: the attributes the heads predict.
        name: the variant name (``baseline``, ``a1`` ... or a custom label).

    Attributes:
        levels: the :class:`FeatureInfo` of each pooled level.
        feature_dim: width of the fused feature vector (sum of the level widths).
    """

    def __init__(
        self,
        backbone: Backbone,
        neck: nn.Module,
        attentions: Sequence[nn.Module],
        heads: AttributeHeads,
        taxonomy: Taxonomy,
        name: str = "",
    ) -> None:
        super().__init__()
        levels: list[FeatureInfo] = list(neck.feature_info)
        if len(attentions) != len(levels):
            raise ValueError(f"{len(attentions)} attention modules for {len(levels)} levels")
        if list(heads.names) != taxonomy.names:
            raise ValueError(f"heads predict {list(heads.names)} but the taxonomy has {taxonomy.names}")
        self.backbone = backbone
        self.neck = neck
        self.attention = nn.ModuleList(attentions)
        self.heads = heads
        self.taxonomy = taxonomy
        self.levels = levels
        self.feature_dim = sum(f.channels for f in levels)
        self.variant = name
        self.output = "kind"  # how logits become probabilities (see vestis.models.heads.uses_softmax)

    @property
    def backbone_name(self) -> str:
        return self.backbone.arch

    def _levels(self, images: Tensor) -> list[Tensor]:
        return list(self.neck(self.backbone(images)).values())

    def forward_features(self, images: Tensor) -> Tensor:
        """The fused feature vector: attended levels, globally average-pooled and concatenated.

        Args:
            images: normalised images (B, 3, H, W).

        Returns:
            Features (B, feature_dim).
        """
        return self._fuse(self.backbone(images))

    def _fuse(self, feats: dict[str, Tensor]) -> Tensor:
        levels = self.neck(feats).values()
        pooled = [att(x).mean((2, 3)) for att, x in zip(self.attention, levels, strict=True)]
        return torch.cat(pooled, dim=1)  # (B, sum of level widths)

    def forward_head(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """Everything after the backbone: its output maps (``self.backbone(images)``) -> logits per attribute."""
        return self.heads(self._fuse(feats))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Attribute name -> logits (B, num_values); no softmax or sigmoid is applied."""
        require_tensor(images, self)
        return self.forward_head(self.backbone(images))

    def attention_maps(self, images: Tensor) -> dict[str, Tensor]:
        """The spatial attention map of every level whose attention module has one (CBAM does).

        Args:
            images: normalised images (B, 3, H, W).

        Returns:
            Level name -> map in (0, 1) of shape (B, H / stride, W / stride); empty without attention.
        """
        maps: dict[str, Tensor] = {}
        for info, att, x in zip(self.levels, self.attention, self._levels(images), strict=True):
            _, weights = att.forward_with_map(x)
            if weights is not None:
                maps[info.name] = weights
        return maps


def build_attribute_model(
    backbone: Backbone,
    taxonomy: Taxonomy,
    *,
    taps: Sequence[str],
    neck: str = "none",
    neck_kwargs: Mapping[str, Any] | None = None,
    attention: str = "cbam",
    branch_hidden: int = 512,
    branch_hidden_overrides: Mapping[str, int] | None = None,
    dropout: float = 0.2,
    name: str = "custom",
) -> AttributeModel:
    """Assemble an :class:`AttributeModel` from registered parts.

    Args:
        backbone: a backbone; its stages after the deepest tap are removed.
        taxonomy: the attributes to predict.
        taps: backbone feature names to use, shallow to deep.
        neck: a name registered in ``NECKS``.
        neck_kwargs: extra keyword arguments of the neck (e.g. ``out_channels``).
        attention: a name registered in ``ATTENTION``; one module is built per level.
        branch_hidden: hidden width of each attribute branch.
        branch_hidden_overrides: attribute -> hidden width.
        dropout: dropout inside each branch.
        name: stored as ``model.variant``.

    Returns:
        The model, its parameters initialised (the backbone's as they were).
    """
    backbone.select(taps)
    in_features = [backbone.info(t) for t in taps]
    neck_module = NECKS.build(neck, in_features=in_features, **dict(neck_kwargs or {}))
    attentions = [ATTENTION.build(attention, channels=f.channels) for f in neck_module.feature_info]
    feature_dim = sum(f.channels for f in neck_module.feature_info)
    heads = AttributeHeads(
        feature_dim,
        {a.name: a.num_values for a in taxonomy},
        hidden=branch_hidden,
        hidden_overrides=branch_hidden_overrides,
        dropout=dropout,
    )
    return AttributeModel(backbone, neck_module, attentions, heads, taxonomy, name=name)


@dataclass(frozen=True)
class Variant:
    """A registered architecture: what it taps, its neck and whether it uses the configured attention.

    Attributes:
        multi_scale: tap the stride-8/16/32 maps (else the last stage only).
        neck: the ``NECKS`` name.
        attention: use the configured attention (else ``none``).
        description: one line for ``vestis models``.
    """

    multi_scale: bool
    neck: str
    attention: bool
    description: str

    def build(
        self,
        *,
        backbone: Backbone,
        taxonomy: Taxonomy,
        attention: str = "cbam",
        fpn_channels: int = 256,
        branch_hidden: int = 512,
        branch_hidden_overrides: Mapping[str, int] | None = None,
        dropout: float = 0.2,
        name: str = "",
    ) -> AttributeModel:
        """Build this variant on ``backbone``; ``fpn_channels`` is used by the RetinaNet-FPN neck only."""
        taps = backbone.pyramid_features() if self.multi_scale else [backbone.last_feature]
        return build_attribute_model(
            backbone,
            taxonomy,
            taps=taps,
            neck=self.neck,
            neck_kwargs={"out_channels": fpn_channels} if self.neck == "retinanet_fpn" else None,
            attention=attention if self.attention else "none",
            branch_hidden=branch_hidden,
            branch_hidden_overrides=branch_hidden_overrides,
            dropout=dropout,
            name=name,
        )


VARIANTS: dict[str, Variant] = {
    "baseline": Variant(False, "none", True, "last stage -> attention -> pooling -> branches (§5.2.1)"),
    "a1": Variant(True, "none", True, "3 scales, attention per scale, no FPN (§5.2.2, as its text)"),
    "a1_noatt": Variant(True, "none", False, "3 scales, no FPN, no attention (§5.2.2, as its title)"),
    "a2": Variant(True, "fpn", False, "3 scales, FPN keeping per-level widths, no attention (§5.2.3)"),
    "a3": Variant(True, "fpn", True, "3 scales, FPN keeping per-level widths, attention per scale (§5.2.4)"),
    "a4": Variant(True, "retinanet_fpn", True, "RetinaNet FPN, 5 levels x 256, attention per scale (§5.2.5)"),
}


def _register(name: str, variant: Variant) -> None:
    def build(**kwargs: Any) -> AttributeModel:
        return variant.build(name=name, **kwargs)

    build.__doc__ = variant.description
    MODELS.register(name, description=variant.description)(build)


for _name, _variant in VARIANTS.items():
    _register(_name, _variant)
