"""Embedding models: one L2-normalised sub-embedding per attribute; importing this package registers them.

``csn``, ``csn_fixed`` and ``triplet`` (:mod:`.csn`), ``datrnet`` (:mod:`.datrnet`), all with meta
``task="embedding"`` in ``MODELS``; :class:`AttributeEmbedder` turns any trained classifier into one.
"""

from __future__ import annotations

from vestis.models.embedding.attribute_based import AttributeEmbedder, as_embedder
from vestis.models.embedding.base import EmbeddingModel, l2_normalize
from vestis.models.embedding.csn import COLUMNS, ConditionalSimilarityNetwork, fixed_disjoint_masks
from vestis.models.embedding.datrnet import DAtRNet, EmbeddingHead

__all__ = [
    "COLUMNS",
    "AttributeEmbedder",
    "ConditionalSimilarityNetwork",
    "DAtRNet",
    "EmbeddingHead",
    "EmbeddingModel",
    "as_embedder",
    "fixed_disjoint_masks",
    "l2_normalize",
]
