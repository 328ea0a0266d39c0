"""Baseline STL and STL with hierarchical label sharing (the paper's §3.2, Figure 1a).

Both pool the backbone's last map by global average pooling and put a dense classifier on it: softmax for the
category, sigmoid for the attributes. The paper trains the two classifiers as separate models; here
``shared_backbone=False`` does that (the attribute head gets its own copy of the backbone, so the two tasks share
no weights), and ``shared_backbone=True`` (the default) puts both heads on one trunk, which halves the cost of
a forward pass and is what a pipeline serving both outputs wants.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from vestis.models.backbones.base import Backbone
from vestis.models.hierarchical._common import LabelEmbedding, shared_category
from vestis.models.hierarchical.base import STAGE2_MODELS, Stage2Model, check_sizes, resolve_backbone

__all__ = ["STLHLSModel", "STLModel"]

TINY_BACKBONE = "mobilenetv3_tiny"


class STLModel(Stage2Model):
    """Baseline STL: two independent dense heads on pooled features.

    Args:
        backbone: the image encoder.
        num_categories: garment categories.
        num_attributes: attributes.
        num_object_types: detector classes (unused by this model; kept so every model takes the same arguments).
        shared_backbone: one trunk for both heads (``True``) or a separate copy for the attributes (the paper).
        dropout: dropout before each classifier.
        kind: the registered name.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        num_categories: int,
        num_attributes: int,
        num_object_types: int = 4,
        shared_backbone: bool = True,
        dropout: float = 0.0,
        kind: str = "stl",
    ) -> None:
        super().__init__(
            backbone,
            num_categories=num_categories,
            num_attributes=num_attributes,
            num_object_types=num_object_types,
            kind=kind,
        )
        self.shared_backbone = shared_backbone
        # a deep copy, not a second build: the same (possibly pretrained) weights start both trunks
        self.attribute_backbone = None if shared_backbone else copy.deepcopy(self.backbone)
        self.dropout = nn.Dropout(dropout)
        d = self.feature_channels
        self.category_head = nn.Linear(self._category_in(d), num_categories)
        self.attribute_head = nn.Linear(self._attribute_in(d), num_attributes)

    def _category_in(self, d: int) -> int:
        return d

    def _attribute_in(self, d: int) -> int:
        return d

    def _pooled(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Pooled features for the category and the attribute heads, each (B, d)."""
        cat = self.features(images).mean(dim=(2, 3))  # (B, d)
        if self.attribute_backbone is None:
            return cat, cat
        attr = self.attribute_backbone(images)[self.feature].mean(dim=(2, 3))  # (B, d)
        return cat, attr

    def forward(
        self, images: Tensor, object_types: Tensor | None = None, categories: Tensor | None = None
    ) -> dict[str, Any]:
        """``{"category": (B, C), "attributes": (B, A)}`` logits; ``object_types`` and ``categories`` are unused."""
        del object_types, categories
        cat, attr = self._pooled(images)
        return {
            "category": self.category_head(self.dropout(cat)),
            "attributes": self.attribute_head(self.dropout(attr)),
        }


class STLHLSModel(STLModel):
    """STL with hierarchical label sharing.

    The object type (from the detector, or the truth) goes through an embedding layer and is concatenated with
    the pooled features for the category head; the category handed on (see
    :func:`~vestis.models.hierarchical._common.shared_category`) goes through a second embedding and is
    concatenated with the pooled features for the attribute head.

    Args:
        backbone: the image encoder.
        num_categories: garment categories.
        num_attributes: attributes.
        num_object_types: detector classes.
        embedding_dim: width of both label embeddings.
        teacher_forcing: in training, hand the attribute head the true category where it is known (the default;
            the heads then learn from clean labels) instead of the prediction; evaluation always uses the
            prediction, as the pipeline does.
        shared_backbone: as in :class:`STLModel`.
        dropout: dropout before each classifier.
        kind: the registered name.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        num_categories: int,
        num_attributes: int,
        num_object_types: int = 4,
        embedding_dim: int = 32,
        teacher_forcing: bool = True,
        shared_backbone: bool = True,
        dropout: float = 0.0,
        kind: str = "stl_hls",
    ) -> None:
        check_sizes(embedding_dim=embedding_dim)
        self.embedding_dim = embedding_dim
        super().__init__(
            backbone,
            num_categories=num_categories,
            num_attributes=num_attributes,
            num_object_types=num_object_types,
            shared_backbone=shared_backbone,
            dropout=dropout,
            kind=kind,
        )
        self.teacher_forcing = teacher_forcing
        self.object_type_embedding = LabelEmbedding(num_object_types, embedding_dim)
        self.category_embedding = LabelEmbedding(num_categories, embedding_dim)

    def _category_in(self, d: int) -> int:
        return d + self.embedding_dim

    def _attribute_in(self, d: int) -> int:
        return d + self.embedding_dim

    def forward(
        self, images: Tensor, object_types: Tensor | None = None, categories: Tensor | None = None
    ) -> dict[str, Any]:
        """Logits plus ``"shared_category"``: the (B,) category index the attribute head received."""
        b = images.shape[0]
        self.check_labels(object_types, self.num_object_types, "object_types", b)
        self.check_labels(categories, self.num_categories, "categories", b)
        cat, attr = self._pooled(images)
        e_o = self.object_type_embedding(object_types, b)  # (B, e)
        cat_logits = self.category_head(self.dropout(torch.cat([cat, e_o], dim=1)))  # (B, C)
        shared = shared_category(cat_logits, categories, self.teacher_forcing, self.training)
        e_c = self.category_embedding(shared, b)  # (B, e)
        attr_logits = self.attribute_head(self.dropout(torch.cat([attr, e_c], dim=1)))  # (B, A)
        return {"category": cat_logits, "attributes": attr_logits, "shared_category": shared}


def _builder(cls: type[STLModel], name: str, default_backbone: str | None, doc: str) -> None:
    def build(*, backbone: Backbone | str | None = None, **kwargs: Any) -> STLModel:
        bb = resolve_backbone(backbone if backbone is not None else (default_backbone or "efficientnet_lite0"))
        return cls(bb, kind=name, **kwargs)

    build.__doc__ = doc
    STAGE2_MODELS.register(name, tiny=default_backbone == TINY_BACKBONE, description=doc)(build)


_builder(STLModel, "stl", None, "Baseline STL: softmax category head and sigmoid attribute head on pooled features")
_builder(STLModel, "stl_tiny", TINY_BACKBONE, "Baseline STL on a tiny backbone, for tests")
_builder(STLHLSModel, "stl_hls", None, "STL w/ HLS: object-type and category embeddings shared with the next head")
_builder(STLHLSModel, "stl_hls_tiny", TINY_BACKBONE, "STL w/ HLS on a tiny backbone, for tests")
