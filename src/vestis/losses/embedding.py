"""The embedding models' joint loss: batch-hard triplets per condition, recognition columns and regularisers.

The multi-column paper (002, eq. 6) trains ``alpha * L_recognition + beta * (L_triplet + lambda1 * ||f(x)||_2 +
lambda2 * ||m||_1)``; each term is returned under its own name so the loop can sum and log them:

* ``triplet/<attr>``: ``beta`` times the batch-hard triplet loss of condition ``attr`` on its sub-embedding;
* ``recognition/<attr>``: ``alpha`` times the masked CE/BCE of that attribute's column (only when the model has a
  recognition head); with one joint softmax (``columns=single``) a single-label attribute's term is the CE of the
  joint logits against ``offset + index`` and a multi-label attribute's the BCE of its slice;
* ``penalty/embed_norm``, ``penalty/mask_l1``: ``beta * lambda1`` and ``beta * lambda2`` times the model's raw
  regulariser values.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.losses.multitask import MaskedMultiTaskLoss
from vestis.losses.triplet import MINING, batch_all_triplet, batch_hard_triplet

__all__ = ["EmbeddingLoss"]


def same_value(targets: Tensor) -> Tensor:
    """(B, B) bool: whether two rows carry the same value (single: the index; multi: the whole 0/1 vector)."""
    if targets.dim() == 1:
        return targets[:, None] == targets[None, :]
    _, code = torch.unique(targets, dim=0, return_inverse=True)  # (B,): one code per distinct label vector
    return code[:, None] == code[None, :]


class EmbeddingLoss(nn.Module):
    """Joint recognition + conditional-similarity loss of the embedding models.

    Args:
        taxonomy: the conditions (every attribute) and their kinds.
        margin: triplet margin ``h``.
        mining: ``batch_hard`` (DAtRNet's hard mining) or ``batch_all`` (every unsatisfied triplet of the batch),
            see :mod:`vestis.losses.triplet`.
        embed_reg: ``lambda1``, weight of the penalty ``embed_norm``.
        mask_reg: ``lambda2``, weight of the penalty ``mask_l1``.
        recognition_weight: ``alpha``.
        retrieval_weight: ``beta`` (triplet losses and penalties).
        same_category: DAtRNet's option: an attribute whose value a positive must share with its anchor (rows
            without a label there have no positive).
        class_weights: per-attribute class weights for the recognition terms (see
            :func:`vestis.losses.class_weights`).
        label_smoothing: recognition label smoothing, as :class:`MaskedMultiTaskLoss`.
    """

    PENALTIES = ("embed_norm", "mask_l1")

    def __init__(
        self,
        taxonomy: Taxonomy,
        *,
        margin: float,
        embed_reg: float,
        mask_reg: float,
        recognition_weight: float,
        retrieval_weight: float,
        same_category: str | None = None,
        class_weights: Mapping[str, Tensor] | None = None,
        label_smoothing: float = 0.0,
        mining: str = "batch_hard",
    ) -> None:
        super().__init__()
        if mining not in MINING:
            raise VestisError(f"train.mining: expected one of {list(MINING)}, got {mining!r}")
        self.mine = batch_hard_triplet if mining == "batch_hard" else batch_all_triplet
        if same_category is not None and same_category not in taxonomy:
            raise VestisError(f"same_category: unknown attribute {same_category!r}; expected one of {taxonomy.names}")
        self.names = taxonomy.names
        self.kinds = {a.name: a.kind for a in taxonomy}
        self.sizes = {a.name: a.num_values for a in taxonomy}
        self.margin = float(margin)
        self.alpha = float(recognition_weight)
        self.beta = float(retrieval_weight)
        self.penalty_weights = {"embed_norm": float(embed_reg), "mask_l1": float(mask_reg)}
        self.same_category = same_category
        self.label_smoothing = float(label_smoothing)
        self.recognition = MaskedMultiTaskLoss(taxonomy, class_weights=class_weights, label_smoothing=label_smoothing)
        # the joint softmax's class weights: each single-label attribute's own weights at its offset; the slots of
        # multi-label attributes are never a CE target, so their weight does not matter
        parts = []
        for a in taxonomy:
            w = (class_weights or {}).get(a.name)
            parts.append(w.float() if w is not None and a.kind == "single" else torch.ones(a.num_values))
        self.register_buffer("joint_weight", torch.cat(parts) if class_weights else None, persistent=False)

    def forward(
        self, outputs: Mapping[str, object], targets: Mapping[str, Tensor], masks: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """Named losses of a batch.

        Args:
            outputs: the model's outputs dict (``embeddings``, ``logits``, optional ``joint_logits``,
                ``penalties``).
            targets: per attribute (B,) int64 (single, -1 missing) or (B, K) 0/1 (multi).
            masks: per attribute (B,) bool, whether the row is labelled.

        Returns:
            ``{"triplet/<attr>", "recognition/<attr>", "penalty/<name>": scalar}``.
        """
        emb: Mapping[str, Tensor] = outputs["embeddings"]  # type: ignore[assignment]
        missing = [n for n in self.names if n not in emb]
        if missing:
            raise VestisError(f"model outputs: embeddings lack attribute(s) {missing}; expected {self.names}")
        positive_ok = None
        if self.same_category is not None:
            cv = masks[self.same_category].bool()
            positive_ok = same_value(targets[self.same_category]) & cv[:, None] & cv[None, :]  # (B, B)
        losses: dict[str, Tensor] = {}
        for name in self.names:
            loss, _ = self.mine(
                emb[name], same_value(targets[name]), masks[name].bool(), self.margin, positive_ok=positive_ok
            )
            losses[f"triplet/{name}"] = self.beta * loss
        for name, value in self._recognition(outputs, targets, masks).items():
            losses[f"recognition/{name}"] = self.alpha * value
        penalties: Mapping[str, Tensor] = outputs.get("penalties") or {}  # type: ignore[attr-defined]
        for name, value in penalties.items():
            if name not in self.penalty_weights:
                raise VestisError(f"model outputs: unknown penalty {name!r}; expected one of {list(self.PENALTIES)}")
            losses[f"penalty/{name}"] = self.beta * self.penalty_weights[name] * value
        return losses

    def _recognition(
        self, outputs: Mapping[str, object], targets: Mapping[str, Tensor], masks: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        joint: Tensor | None = outputs.get("joint_logits")  # type: ignore[attr-defined, assignment]
        logits: Mapping[str, Tensor] = outputs.get("logits") or {}  # type: ignore[attr-defined, assignment]
        if joint is None:
            return self.recognition(logits, targets, masks) if logits else {}
        total = sum(self.sizes.values())
        if joint.shape[-1] != total:
            raise VestisError(f"model outputs: joint_logits has {joint.shape[-1]} columns; expected {total}")
        offsets, start = {}, 0
        for name in self.names:
            offsets[name] = start
            start += self.sizes[name]
        # multi-label attributes: BCE of their slice, exactly as the multi-column loss does it
        slices = {n: joint[:, offsets[n] : offsets[n] + self.sizes[n]] for n in self.names}  # (B, K) each
        out = self.recognition(slices, targets, masks)
        for name in self.names:
            if self.kinds[name] != "single":
                continue
            m = masks[name].to(joint.dtype)  # (B,)
            t = offsets[name] + targets[name].clamp(min=0)  # (B,) index into every value of every attribute
            per = F.cross_entropy(
                joint.float(), t, weight=self.joint_weight, label_smoothing=self.label_smoothing, reduction="none"
            )  # (B,)
            out[name] = (per * m).sum() / m.sum().clamp(min=1)
        return out
