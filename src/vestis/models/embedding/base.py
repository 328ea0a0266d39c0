"""The interface every embedding model shares: images in, one L2-normalised sub-embedding per attribute out.

An attribute (a *condition*, a notion of similarity) ``t`` gets its own unit vector of width ``d_t``; search
compares two images in a set ``S`` of conditions by ``sum_{t in S} (2 - 2 <q_t, g_t>)``, the squared L2 distance
of the concatenated parts, so it never needs to know which model made them::

    out = model(images)                  # {"embeddings": {attr: (B, d_t)}, "logits": {...}, "penalties": {...}}
    emb = model.embed(images)            # {attr: (B, d_t)}, unit norm
    vec = model.concat(emb)              # (B, sum d_t) in model.embedding_layout() order
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.models.inputs import EMBED_HINT, require_tensor

__all__ = ["EmbeddingModel", "l2_normalize"]


def l2_normalize(x: Tensor) -> Tensor:
    """Unit L2 norm along the last axis; an all-zero row stays zero instead of becoming NaN."""
    return F.normalize(x, p=2.0, dim=-1, eps=1e-12)


class EmbeddingModel(nn.Module):
    """Base class of the embedding models (CSN family, DAtRNet, the attribute-based adapter).

    A subclass sets ``self.backbone`` (a vestis :class:`~vestis.models.backbones.base.Backbone`, so freezing and
    the frozen-trunk feature cache work on it) and implements :meth:`forward_head` and :meth:`embedding_layout`.

    Args:
        taxonomy: the attributes; each is one condition with its own sub-embedding.
        kind: the registered model name (``csn``, ``csn_fixed``, ``triplet``, ``datrnet``, ``attribute_based``).

    Attributes:
        taxonomy: as given.
        kind: as given.
        output: how recognition logits become probabilities (``kind``, see :func:`vestis.models.heads.uses_softmax`).
    """

    backbone: nn.Module

    def __init__(self, taxonomy: Taxonomy, kind: str) -> None:
        super().__init__()
        self.taxonomy = taxonomy
        self.kind = kind
        self.output = "kind"

    @property
    def backbone_name(self) -> str:
        return str(getattr(self.backbone, "arch", ""))

    def forward_head(self, feats: dict[str, Tensor]) -> dict[str, Any]:
        """Everything after the backbone: its output maps (``self.backbone(images)``) -> the outputs dict.

        Returns:
            ``{"embeddings": {attr: (B, d_t)}, "logits": {attr: (B, K)} or {}, "penalties": {name: scalar} or {}}``
            plus ``"joint_logits"`` (B, sum K) for a single-column recognition head.
        """
        raise NotImplementedError

    def forward(self, images: Tensor) -> dict[str, Any]:
        """The outputs dict of :meth:`forward_head` for normalised images (B, 3, H, W)."""
        require_tensor(images, self, EMBED_HINT)
        return self.forward_head(self.backbone(images))

    def embed(self, images: Tensor) -> dict[str, Tensor]:
        """Attribute -> (B, d_t) unit sub-embedding, in taxonomy order; the caller sets eval mode and no_grad."""
        return self(images)["embeddings"]

    def embedding_layout(self) -> list[tuple[str, int]]:
        """(attribute, d_t) for every attribute, in concatenation (taxonomy) order."""
        raise NotImplementedError

    def concat(self, embeddings: Mapping[str, Tensor]) -> Tensor:
        """The sub-embeddings side by side in :meth:`embedding_layout` order: (B, sum d_t), each part unit-norm.

        Raises:
            VestisError: an attribute of the layout is missing or has the wrong width.
        """
        parts = []
        for name, width in self.embedding_layout():
            if name not in embeddings:
                raise VestisError(f"embeddings: attribute {name!r} is missing; expected {self.embedding_layout()}")
            part = embeddings[name]
            if part.shape[-1] != width:
                raise VestisError(f"embeddings[{name!r}]: expected width {width}, got {part.shape[-1]}")
            parts.append(part)
        return torch.cat(parts, dim=-1)
