"""Masked multi-task losses: one named loss per attribute, missing labels ignored.

Single-label attributes use softmax cross-entropy, multi-label ones per-value sigmoid BCE (with
``output="paper"`` every attribute is a sigmoid classifier: single-label targets become one-hot BCE
targets). A row whose mask is 0 (missing label, or an attribute that does not apply to its category)
contributes nothing; each attribute's loss is the mean over its labelled rows in the batch, times its task weight.
The training loop sums the dict and logs each entry; it knows nothing of attributes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.models.heads import uses_softmax

__all__ = ["MaskedMultiTaskLoss", "class_weights"]


def _effective_number(n: np.ndarray, beta: float) -> np.ndarray:
    # Cui et al. 2019: E_n = (1 - beta^n) / (1 - beta); for beta -> 0 it is 1, for beta -> 1 it is n
    return (1.0 - np.power(beta, n)) / (1.0 - beta)


def class_weights(
    taxonomy: Taxonomy,
    targets: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    method: str = "inverse",
    beta: float = 0.999,
    output: str = "kind",
) -> dict[str, Tensor]:
    """Per-attribute class weights from label counts.

    Single-label: ``w_c`` proportional to ``1 / n_c`` (``inverse``) or ``1 / E(n_c)`` (``effective``), scaled so
    the average weight over the labelled rows is 1 (the loss keeps its scale). Unseen classes get the largest
    seen weight. Multi-label: a ``pos_weight`` per value, the ratio of negatives to positives (``inverse``) or of
    their effective numbers (``effective``), as BCE expects; with ``output="paper"`` single-label attributes are
    weighted like multi-label ones, on their one-hot targets.
    """
    if method not in ("inverse", "effective"):
        raise VestisError(f"class_weights: unknown method {method!r}; expected none, inverse or effective")
    size = (lambda n: n.astype(np.float64)) if method == "inverse" else (lambda n: _effective_number(n, beta))
    out: dict[str, Tensor] = {}
    for attr in taxonomy:
        m = masks[attr.name]
        t = targets[attr.name][m]
        if attr.kind == "single" and not uses_softmax(attr.kind, output):
            t = np.eye(attr.num_values, dtype=np.int64)[t]  # one-hot: weighted as BCE targets below
        if uses_softmax(attr.kind, output):
            counts = np.bincount(t, minlength=attr.num_values).astype(np.float64)
            seen = counts > 0
            w = np.zeros_like(counts)
            w[seen] = 1.0 / size(counts[seen])
            if seen.any():
                w[~seen] = w[seen].max()
                w *= counts.sum() / (w * counts).sum()  # mean weight over labelled rows = 1
            else:
                w[:] = 1.0
        else:
            pos = t.sum(0).astype(np.float64)
            neg = len(t) - pos
            w = np.ones(attr.num_values)
            ok = (pos > 0) & (neg > 0)
            w[ok] = size(neg[ok]) / size(pos[ok])
        out[attr.name] = torch.tensor(w, dtype=torch.float32)
    return out


class MaskedMultiTaskLoss(nn.Module):
    """Per-attribute masked loss.

    Args:
        taxonomy: which attributes are single- or multi-label.
        class_weights: optional per-attribute weights (see :func:`class_weights`).
        label_smoothing: softmax label smoothing; for sigmoid targets ``y -> y (1 - e) + e / 2``.
        task_weights: optional multiplier per attribute name (default 1).
        output: ``kind`` or ``paper`` (every attribute a sigmoid classifier), as ``model.output``.
    """

    def __init__(
        self,
        taxonomy: Taxonomy,
        *,
        class_weights: Mapping[str, Tensor] | None = None,
        label_smoothing: float = 0.0,
        task_weights: Mapping[str, float] | None = None,
        output: str = "kind",
    ) -> None:
        super().__init__()
        unknown = set(task_weights or {}) - set(taxonomy.names)
        if unknown:
            raise VestisError(f"task_weights: unknown attribute(s) {sorted(unknown)}; expected {taxonomy.names}")
        self.kinds = {a.name: a.kind for a in taxonomy}
        self.softmax = {a.name: uses_softmax(a.kind, output) for a in taxonomy}
        self.label_smoothing = label_smoothing
        self.task_weights = {a.name: float((task_weights or {}).get(a.name, 1.0)) for a in taxonomy}
        for name, w in (class_weights or {}).items():
            self.register_buffer(f"cw_{name}", w.float(), persistent=False)
        self._has_cw = set(class_weights or {})

    def _cw(self, name: str) -> Tensor | None:
        return getattr(self, f"cw_{name}") if name in self._has_cw else None

    def forward(
        self, logits: Mapping[str, Tensor], targets: Mapping[str, Tensor], masks: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        for name, kind in self.kinds.items():
            z = logits[name]  # (B, K)
            m = masks[name].to(z.dtype)  # (B,)
            n = m.sum()
            if self.softmax[name]:
                t = targets[name].clamp(min=0)  # -1 (missing) is masked out anyway
                per = F.cross_entropy(
                    z.float(), t, weight=self._cw(name), label_smoothing=self.label_smoothing, reduction="none"
                )  # (B,)
            else:
                if kind == "single":  # paper output: the class index as a one-hot multi-label target
                    t = F.one_hot(targets[name].clamp(min=0), z.shape[-1]).to(z.dtype)
                else:
                    t = targets[name].to(z.dtype)
                if self.label_smoothing:
                    t = t * (1 - self.label_smoothing) + self.label_smoothing / 2
                per = F.binary_cross_entropy_with_logits(
                    z.float(), t.float(), pos_weight=self._cw(name), reduction="none"
                ).mean(-1)  # (B,)
            # a batch with no labelled row still touches the logits, so every parameter gets a (zero) gradient
            losses[name] = self.task_weights[name] * (per * m).sum() / n.clamp(min=1)
        return losses
