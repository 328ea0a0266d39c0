"""Triplet margin loss and online batch-hard mining on unit embeddings.

Similarity is the inner product of L2-normalised vectors (the conditional similarity network's choice), so a
triplet ``(a, p, n)`` costs ``relu(s(a, n) - s(a, p) + h)``: the positive must be more similar to the anchor than the
negative by the margin ``h``. Batch-hard mining (Hermans et al. 2017, DAtRNet's "triplet loss with hard mining")
takes, for each anchor of a P x K batch, the least similar positive and the most similar negative in the batch.
Batch-all (the same paper's "BA≠0") takes every valid triplet of the batch and averages the hinge over those that
are not yet satisfied: it keeps a gradient on every wrongly ordered triplet, where batch-hard can settle in the
collapsed state (every embedding alike, each hardest triplet costing exactly the margin) when the trunk gives it
little to separate at the start.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MINING", "batch_all_triplet", "batch_hard_triplet", "triplet_margin_loss"]

MINING = ("batch_hard", "batch_all")


def _zero(*tensors: Tensor) -> Tensor:
    # A loss with nothing to average is 0, but it stays attached to the graph: the loop sums the named losses and
    # calls backward() on the total, which fails on a constant, and DistributedDataParallel expects every parameter
    # that took part in the forward pass to get a gradient (here an exact zero). ``+ 0.0`` turns -0.0 into 0.0.
    return torch.stack([t.float().sum() for t in tensors]).sum() * 0.0 + 0.0


def triplet_margin_loss(sim_ap: Tensor, sim_an: Tensor, margin: float) -> Tensor:
    """Mean hinge ``relu(s(a, n) - s(a, p) + margin)`` over triplets.

    Args:
        sim_ap: (M,) similarity of each anchor to its positive.
        sim_an: (M,) similarity of each anchor to its negative.
        margin: the margin ``h``.

    Returns:
        A scalar; 0 (still attached to the inputs' graph) when ``M == 0``.
    """
    if sim_ap.shape != sim_an.shape:
        raise ValueError(f"triplet_margin_loss: sim_ap {tuple(sim_ap.shape)} and sim_an {tuple(sim_an.shape)} differ")
    if sim_ap.numel() == 0:
        return _zero(sim_ap, sim_an)
    return torch.relu(sim_an - sim_ap + margin).mean()


def batch_hard_triplet(
    emb: Tensor, same: Tensor, valid: Tensor, margin: float, positive_ok: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Batch-hard triplet loss of one condition.

    For each valid anchor ``i`` the hardest positive is the valid row ``j != i`` with ``same[i, j]`` (and
    ``positive_ok[i, j]`` when given) of lowest similarity, the hardest negative the valid row with
    ``not same[i, j]`` of highest similarity. Anchors lacking either are skipped.

    Args:
        emb: (B, d) unit-norm embeddings.
        same: (B, B) bool, whether two rows share the condition's value.
        valid: (B,) bool, whether a row has a value in this condition (missing labels are never used).
        margin: the margin ``h``.
        positive_ok: optional (B, B) bool restricting the positives (DAtRNet: anchor and positive share the
            category).

    Returns:
        ``(loss, n_valid)``: the mean hinge over the anchors that have a positive and a negative (0, attached to
        the graph, when there is none) and their number as a 0-d int64 tensor.
    """
    b = emb.shape[0]
    if same.shape != (b, b) or valid.shape != (b,):
        raise ValueError(
            f"batch_hard_triplet: emb {tuple(emb.shape)} needs same ({b}, {b}) and valid ({b},), "
            f"got {tuple(same.shape)} and {tuple(valid.shape)}"
        )
    e = emb.float()  # mixed precision: similarities and their +-inf fillers in float32
    sim = e @ e.T  # (B, B)
    valid = valid.bool()
    pair = valid[:, None] & valid[None, :]  # (B, B) both rows labelled
    not_self = ~torch.eye(b, dtype=torch.bool, device=emb.device)
    pos = same.bool() & pair & not_self
    if positive_ok is not None:
        pos = pos & positive_ok.bool()
    neg = ~same.bool() & pair & not_self
    anchors = pos.any(1) & neg.any(1)  # (B,)
    n_valid = anchors.sum()
    if not bool(n_valid):
        return _zero(emb), n_valid
    # the fillers never win the min/max of an anchor that has a candidate, and other anchors are dropped below
    hardest_pos = sim.masked_fill(~pos, float("inf")).min(1).values  # (B,)
    hardest_neg = sim.masked_fill(~neg, float("-inf")).max(1).values  # (B,)
    return triplet_margin_loss(hardest_pos[anchors], hardest_neg[anchors], margin), n_valid


def batch_all_triplet(
    emb: Tensor, same: Tensor, valid: Tensor, margin: float, positive_ok: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Batch-all triplet loss of one condition: the mean hinge over the batch's triplets with a positive hinge.

    Every ``(a, p, n)`` with ``a != p`` valid rows sharing the value (and ``positive_ok[a, p]`` when given) and
    ``n`` a valid row with another value is a triplet; the loss averages ``relu(s(a, n) - s(a, p) + margin)`` over
    the triplets where it is positive (Hermans et al. 2017, "BA≠0").

    Args:
        emb, same, valid, margin, positive_ok: as :func:`batch_hard_triplet`.

    Returns:
        ``(loss, n_active)``: the loss (0, attached to the graph, when no triplet is active) and the number of
        active triplets.
    """
    b = emb.shape[0]
    if same.shape != (b, b) or valid.shape != (b,):
        raise ValueError(
            f"batch_all_triplet: emb {tuple(emb.shape)} needs same ({b}, {b}) and valid ({b},), "
            f"got {tuple(same.shape)} and {tuple(valid.shape)}"
        )
    e = emb.float()
    sim = e @ e.T  # (B, B)
    valid = valid.bool()
    pair = valid[:, None] & valid[None, :]
    not_self = ~torch.eye(b, dtype=torch.bool, device=emb.device)
    pos = same.bool() & pair & not_self
    if positive_ok is not None:
        pos = pos & positive_ok.bool()
    neg = ~same.bool() & pair & not_self
    ok = pos[:, :, None] & neg[:, None, :]  # (B, B, B): anchor, positive, negative
    hinge = torch.relu(sim[:, None, :] - sim[:, :, None] + margin)  # (B, B, B): s(a, n) - s(a, p) + h
    active = ok & (hinge > 0)
    n_active = active.sum()
    if not bool(n_active):
        return _zero(emb), n_active
    return hinge[active].mean(), n_active
