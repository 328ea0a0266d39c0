"""DAtRNet (Bhattacharya et al., CVPRW 2023): one L2-normalised embedding per attribute from a shared trunk.

``backbone -> global average pooling -> per attribute: Dense(embedding_hidden) -> ReLU -> Dropout -> Dense
(embedding_dim) -> L2 normalisation``; the paper's Table 1 is this on the ``datrnet_ase`` backbone with 256 and
128 units and dropout 0.25, and its "pretrained trunk replacing MSF" ablation is the same head on a pretrained
backbone (``efficientnet_lite0`` with ``model.pretrained=imagenet``, or any registered one).

The paper leaves open whether each attribute has its own network or the attributes share a trunk with
per-attribute heads ("we obtain the 128-dimensional disentangled attribute embedding for six categories from the
proposed network"). Here the trunk is shared and each attribute has its own two dense layers: one trunk pass
per image instead of T, and the frozen-trunk feature cache serves every attribute. One network per attribute
is not offered: it would multiply the trunk's cost and memory by the number of attributes, which is not cheap.
The Dense(256) has a ReLU (Table 1 names no activation; without one the two dense layers would be one linear map).
DAtRNet has no recognition head and no regulariser (``logits`` and ``penalties`` are empty); ``columns`` of the
model config is accepted and unused.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.models.backbones.base import Backbone
from vestis.models.embedding.base import EmbeddingModel, l2_normalize
from vestis.registry import MODELS

__all__ = ["DAtRNet", "EmbeddingHead"]


class EmbeddingHead(nn.Sequential):
    """One attribute's head: ``Linear(in, hidden) -> ReLU -> Dropout -> Linear(hidden, dim)`` (not normalised)."""

    def __init__(self, in_features: int, hidden: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, hidden)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, dim)


class DAtRNet(EmbeddingModel):
    """A shared trunk, global average pooling and one embedding head per attribute.

    Args:
        backbone: the trunk; only its last map is used.
        taxonomy: the attributes, one embedding each.
        embedding_dim: width of every attribute embedding (128 in the paper).
        embedding_hidden: width of each head's hidden layer (256 in the paper).
        dropout: dropout after the hidden layer (0.25 in the paper).
        kind: the registered name.
    """

    def __init__(
        self,
        backbone: Backbone,
        taxonomy: Taxonomy,
        *,
        embedding_dim: int = 128,
        embedding_hidden: int = 256,
        dropout: float = 0.25,
        kind: str = "datrnet",
    ) -> None:
        super().__init__(taxonomy, kind)
        for field, width in (("embedding_dim", embedding_dim), ("embedding_hidden", embedding_hidden)):
            if width < 1:
                raise VestisError(f"model.{field}: expected a positive width, got {width}")
        if not 0.0 <= dropout < 1.0:
            raise VestisError(f"model.dropout: expected a probability in [0, 1), got {dropout}")
        backbone.select([backbone.last_feature])
        self.backbone = backbone
        self._tap = backbone.last_feature
        self.embedding_dim = embedding_dim
        channels = backbone.info(self._tap).channels
        # a list, not a ModuleDict: attribute names may contain '.'
        self.heads = nn.ModuleList(
            EmbeddingHead(channels, embedding_hidden, embedding_dim, dropout) for _ in taxonomy.names
        )

    def forward_head(self, feats: dict[str, Tensor]) -> dict[str, Any]:
        pooled = feats[self._tap].mean((2, 3))  # (B, C)
        embeddings = {
            name: l2_normalize(head(pooled)) for name, head in zip(self.taxonomy.names, self.heads, strict=True)
        }
        return {"embeddings": embeddings, "logits": {}, "penalties": {}}

    def embedding_layout(self) -> list[tuple[str, int]]:
        return [(name, self.embedding_dim) for name in self.taxonomy.names]


@MODELS.register("datrnet", task="embedding", description="shared trunk, one dense embedding head per attribute")
def datrnet(
    *,
    backbone: Backbone,
    taxonomy: Taxonomy,
    embedding_dim: int = 128,
    columns: str = "multi",
    embedding_hidden: int = 256,
    dropout: float = 0.25,
) -> DAtRNet:
    """DAtRNet (backbone ``datrnet_ase`` for the paper's Table 1); ``columns`` is unused (no recognition head)."""
    del columns
    return DAtRNet(backbone, taxonomy, embedding_dim=embedding_dim, embedding_hidden=embedding_hidden, dropout=dropout)
