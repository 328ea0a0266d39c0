"""The attribute-based baseline: a trained classifier's branch activations used as sub-embeddings.

The papers' "attribute-based" row: attribute ``t``'s sub-embedding is the L2-normalised hidden activation of its
branch, ``normalize(act(fc(fused)))`` (after the activation, before dropout and the output layer), so every
classifier a user has already trained can search without retraining. Nothing here is trained: the wrapper shares
the classifier's modules (and so its parameters) and adds none.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from vestis.errors import VestisError
from vestis.models.attribute_model import AttributeModel
from vestis.models.backbones.base import Backbone
from vestis.models.embedding.base import EmbeddingModel, l2_normalize

__all__ = ["AttributeEmbedder", "as_embedder"]


class AttributeEmbedder(EmbeddingModel):
    """An :class:`AttributeModel` seen through the embedding interface.

    Args:
        classifier: the trained classifier; its modules are shared, not copied.

    Attributes:
        classifier: as given; ``backbone`` is its backbone.
    """

    def __init__(self, classifier: AttributeModel) -> None:
        super().__init__(classifier.taxonomy, "attribute_based")
        self.classifier = classifier
        self.output = classifier.output

    @property
    def backbone(self) -> Backbone:  # type: ignore[override]
        # a property, not a second registration: the state dict keeps one copy of the classifier's weights
        return self.classifier.backbone

    def forward_head(self, feats: dict[str, Tensor]) -> dict[str, Any]:
        fused = self.classifier._fuse(feats)  # (B, feature_dim)
        heads = self.classifier.heads
        embeddings: dict[str, Tensor] = {}
        logits: dict[str, Tensor] = {}
        for name, branch in zip(heads.names, heads.branches, strict=True):
            hidden = branch.act(branch.fc(fused))  # (B, hidden_t)
            embeddings[name] = l2_normalize(hidden)
            logits[name] = branch.out(branch.drop(hidden))  # the classifier's own logits, for free
        return {"embeddings": embeddings, "logits": logits, "penalties": {}}

    def embedding_layout(self) -> list[tuple[str, int]]:
        heads = self.classifier.heads
        return [(name, branch.fc.out_features) for name, branch in zip(heads.names, heads.branches, strict=True)]


def as_embedder(model: nn.Module) -> EmbeddingModel:
    """An :class:`EmbeddingModel` unchanged; an :class:`AttributeModel` wrapped in :class:`AttributeEmbedder`.

    Raises:
        VestisError: ``model`` is neither.
    """
    if isinstance(model, EmbeddingModel):
        return model
    if isinstance(model, AttributeModel):
        return AttributeEmbedder(model)
    raise VestisError(f"expected an embedding model or an attribute classifier, got {type(model).__name__}")
