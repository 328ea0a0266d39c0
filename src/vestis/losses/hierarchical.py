"""The stage-2 loss: categorical cross-entropy for the category plus binary cross-entropy for the attributes.

Missing labels are ignored: a category of ``-1`` drops the row from the cross-entropy, an attribute target of
``-1`` (or NaN) drops that entry from the BCE. Each term is the mean over what is labelled in the batch (0, still
attached to the graph, when nothing is), so the training loop can sum the dict whatever the batch holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vestis.errors import VestisError

__all__ = ["HierarchicalLoss", "masked_attribute_bce", "masked_category_ce"]


def masked_category_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean softmax cross-entropy over the rows whose label is not ``-1``.

    Args:
        logits: (B, C).
        labels: (B,) indices, ``-1`` for missing.
    """
    if labels.shape != logits.shape[:1]:
        raise VestisError(f"category targets: expected shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    keep = labels >= 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], labels[keep].long())


def masked_attribute_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean sigmoid BCE over the entries whose target is 0 or 1 (``-1`` or NaN: missing).

    Args:
        logits: (B, A).
        targets: (B, A) in {0, 1, -1} (or NaN).
    """
    if targets.shape != logits.shape:
        raise VestisError(f"attribute targets: expected shape {tuple(logits.shape)}, got {tuple(targets.shape)}")
    t = targets.to(logits.dtype)
    keep = (t >= 0) & ~torch.isnan(t)
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[keep], t[keep])


class HierarchicalLoss(nn.Module):
    """``{"category": CE, "attributes": BCE}`` for the outputs of a stage-2 model.

    The paper minimises the plain sum; the weights allow the re-balancing its discussion suggests (the category
    converges in 10 epochs, the attributes in 40).

    Args:
        category_weight: factor on the category term.
        attribute_weight: factor on the attribute term.
    """

    def __init__(self, category_weight: float = 1.0, attribute_weight: float = 1.0) -> None:
        super().__init__()
        self.category_weight = float(category_weight)
        self.attribute_weight = float(attribute_weight)

    def forward(self, outputs: Mapping[str, Any], targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Named losses.

        Args:
            outputs: the model's dict (``"category"`` (B, C) and ``"attributes"`` (B, A) logits).
            targets: ``"category"`` (B,) with ``-1`` for missing and ``"attributes"`` (B, A) with ``-1`` for missing;
                either may be absent (that term is then 0).

        Returns:
            ``{"category": ..., "attributes": ...}`` scalars.
        """
        out: dict[str, Tensor] = {}
        for name, fn, weight in (
            ("category", masked_category_ce, self.category_weight),
            ("attributes", masked_attribute_bce, self.attribute_weight),
        ):
            logits = outputs[name]
            out[name] = weight * fn(logits, targets[name]) if name in targets else logits.sum() * 0.0
        return out
