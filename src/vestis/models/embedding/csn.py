"""The multi-column recognition + conditional similarity network (CSN) of the multi-column paper, and its baselines.

``backbone -> global average pooling of the last map -> Linear -> f(x)`` (64 wide in the paper); then

* retrieval (CSN, Veit et al. 2017, as the paper modifies it): one mask ``m_t`` per condition (attribute) and the
  sub-embedding ``normalize(normalize(f(x)) * m_t)``; similarity is the inner product of those unit vectors;
* recognition on the same ``f(x)``: ``columns="multi"`` one linear column per attribute (the paper's multi-column
  network, one softmax each), ``"single"`` one linear layer over every value of every attribute (its single-column
  comparison, one softmax over all of them), ``"none"`` no recognition head.

Three registered models share this class:

============  ==========================================================================================
``csn``        learned masks (the paper's model)
``csn_fixed``  fixed disjoint masks: condition ``t`` owns the dimension block ``[t * D // T, (t + 1) * D // T)``,
               the last condition also the remainder (the CSN paper's "fixed disjoint masks" comparison)
``triplet``    no masks: every condition maps to ``normalize(f(x))``, the attribute-unaware triplet network
============  ==========================================================================================

Choices where the paper is not explicit:

* The learned mask is ``m_t = |w_t| / sum_j |w_tj|`` with ``w`` the raw parameter initialised ``N(0.9, var 0.7)``
  ("the mask vector is also L1 normalized" and "we followed general attention models that force them to sum to
  one"). The absolute value keeps the mask non-negative without the saturation a ReLU would cause for the ~14 %
  of initial weights below zero (they would get no gradient ever), and without the exponential rescaling a softmax
  would impose on weights near 0.9. Because the mask sums to one whatever the scale of ``w``, the L1 penalty
  (``penalties["mask_l1"] = sum |w|``) acts on the raw parameter: it is what keeps that free scale from drifting
  and pushes weights of unused dimensions to exactly zero (sparsity, as the paper wants).
* Fixed masks are the block indicators divided by the block size, so they also sum to one; after the final L2
  normalisation the scale does not matter.
* The recognition columns read the un-normalised ``f(x)``: a linear layer on a unit vector has logits bounded by
  its weight norm, which slows the softmax down for no gain; ``penalties["embed_norm"]`` (mean ``||f(x)||_2``)
  keeps that scale in check as the paper's lambda_1 term does.
* ``dropout`` and ``embedding_hidden`` of the model config are accepted and unused: the paper has neither here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.models.backbones.base import Backbone
from vestis.models.embedding.base import EmbeddingModel, l2_normalize
from vestis.registry import MODELS

__all__ = ["COLUMNS", "MASKS", "ConditionalSimilarityNetwork", "fixed_disjoint_masks"]

COLUMNS = ("multi", "single", "none")
MASKS = ("learned", "fixed", "none")
MASK_INIT_MEAN = 0.9
MASK_INIT_VAR = 0.7  # the paper gives the variance; the standard deviation is its square root


def fixed_disjoint_masks(num_conditions: int, dim: int) -> Tensor:
    """Disjoint block masks (num_conditions, dim): blocks of ``dim // num_conditions``, the remainder to the last.

    Each row is its block's indicator divided by the block size, so it sums to one.

    Raises:
        VestisError: ``dim`` is smaller than the number of conditions (a block would be empty).
    """
    if dim < num_conditions:
        raise VestisError(
            f"model.embedding_dim: fixed disjoint masks need at least one dimension per attribute, "
            f"got {dim} for {num_conditions} attributes"
        )
    size = dim // num_conditions
    masks = torch.zeros(num_conditions, dim)
    for t in range(num_conditions):
        stop = dim if t == num_conditions - 1 else (t + 1) * size
        masks[t, t * size : stop] = 1.0 / (stop - t * size)
    return masks


class ConditionalSimilarityNetwork(EmbeddingModel):
    """A global embedding ``f(x)``, one (masked) sub-embedding per attribute and optional recognition columns.

    Args:
        backbone: the feature extractor; only its last map is used (later stages are not built).
        taxonomy: the attributes (conditions).
        embedding_dim: width ``D`` of ``f(x)``; every sub-embedding has this width.
        masks: ``learned``, ``fixed`` (disjoint blocks) or ``none`` (every condition is ``normalize(f)``).
        columns: recognition head on ``f(x)``: ``multi``, ``single`` or ``none``.
        kind: the registered name.

    Attributes:
        project: the linear layer from the pooled map to ``f(x)``.
        mask_weight: the raw learned masks (T, D) (``masks="learned"`` only).
        columns: the recognition mode.
        recognition: one linear column per attribute (``multi``), one joint layer (``single``) or nothing.
    """

    def __init__(
        self,
        backbone: Backbone,
        taxonomy: Taxonomy,
        *,
        embedding_dim: int = 64,
        masks: str = "learned",
        columns: str = "multi",
        kind: str = "csn",
    ) -> None:
        super().__init__(taxonomy, kind)
        if embedding_dim < 1:
            raise VestisError(f"model.embedding_dim: expected a positive width, got {embedding_dim}")
        if columns not in COLUMNS:
            raise VestisError(f"model.columns: expected one of {list(COLUMNS)}, got {columns!r}")
        if masks not in MASKS:
            raise ValueError(f"masks: expected one of {list(MASKS)}, got {masks!r}")
        backbone.select([backbone.last_feature])
        self.backbone = backbone
        self._tap = backbone.last_feature
        self.embedding_dim = embedding_dim
        self.mask_mode = masks
        self.columns = columns
        self.project = nn.Linear(backbone.info(self._tap).channels, embedding_dim)
        num = len(taxonomy.names)
        if masks == "learned":
            weight = torch.empty(num, embedding_dim).normal_(MASK_INIT_MEAN, math.sqrt(MASK_INIT_VAR))
            self.mask_weight = nn.Parameter(weight)
        elif masks == "fixed":
            self.register_buffer("fixed_masks", fixed_disjoint_masks(num, embedding_dim))
        self._widths = [a.num_values for a in taxonomy]
        if columns == "multi":
            self.recognition: nn.Module = nn.ModuleList(nn.Linear(embedding_dim, k) for k in self._widths)
        elif columns == "single":
            self.recognition = nn.Linear(embedding_dim, sum(self._widths))
        else:
            self.recognition = nn.Identity()

    def masks(self) -> Tensor | None:
        """The effective masks (T, D), non-negative with rows summing to one; ``None`` for ``masks="none"``."""
        if self.mask_mode == "learned":
            w = self.mask_weight.abs()
            return w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
        if self.mask_mode == "fixed":
            return self.fixed_masks
        return None

    def global_embedding(self, feats: dict[str, Tensor]) -> Tensor:
        """The un-normalised ``f(x)`` (B, D) from the backbone's output maps."""
        return self.project(feats[self._tap].mean((2, 3)))  # (B, C) -> (B, D)

    def forward_head(self, feats: dict[str, Tensor]) -> dict[str, Any]:
        f = self.global_embedding(feats)  # (B, D)
        unit = l2_normalize(f)
        masks = self.masks()
        names = self.taxonomy.names
        if masks is None:
            embeddings = dict.fromkeys(names, unit)
        else:
            masked = l2_normalize(unit.unsqueeze(1) * masks.unsqueeze(0))  # (B, T, D)
            embeddings = {name: masked[:, t] for t, name in enumerate(names)}
        out: dict[str, Any] = {"embeddings": embeddings, "logits": {}}
        if self.columns == "multi":
            out["logits"] = {name: col(f) for name, col in zip(names, self.recognition, strict=True)}
        elif self.columns == "single":
            joint = self.recognition(f)  # (B, sum K)
            out["joint_logits"] = joint
            out["logits"] = dict(zip(names, torch.split(joint, self._widths, dim=1), strict=True))
        penalties = {"embed_norm": f.norm(dim=1).mean()}
        if self.mask_mode == "learned":
            penalties["mask_l1"] = self.mask_weight.abs().sum()
        out["penalties"] = penalties
        return out

    def embedding_layout(self) -> list[tuple[str, int]]:
        return [(name, self.embedding_dim) for name in self.taxonomy.names]


def _register(name: str, masks: str, description: str) -> None:
    def build(
        *,
        backbone: Backbone,
        taxonomy: Taxonomy,
        embedding_dim: int = 64,
        columns: str = "multi",
        embedding_hidden: int = 256,
        dropout: float = 0.0,
    ) -> ConditionalSimilarityNetwork:
        del embedding_hidden, dropout  # part of every embedding builder's signature; CSN has neither
        return ConditionalSimilarityNetwork(
            backbone, taxonomy, embedding_dim=embedding_dim, masks=masks, columns=columns, kind=name
        )

    build.__doc__ = description
    MODELS.register(name, task="embedding", description=description)(build)


_register("csn", "learned", "global embedding, learned mask per attribute, recognition columns (multi-column + CSN)")
_register("csn_fixed", "fixed", "global embedding, fixed disjoint masks per attribute (CSN comparison)")
_register("triplet", "none", "one shared L2-normalised embedding for every attribute (standard triplet network)")
