"""Imbalance options of a classifier run: per-instance loss weights and class-balanced sampling.

The Softlines paper plans "a pre-defined weight of each training instance to balance the attribute classes".

* ``train.weight_column: NAME`` reads each training row's weight from the manifest's ``meta_NAME`` column (a
  number >= 0; an empty cell is 1). The classifier loss is then the weighted mean over the labelled rows of a
  batch, ``sum_i w_i l_i / sum_i w_i`` (:func:`instance_weights`; the loss's masks carry the weights).
* ``train.balanced_sampling: ATTRIBUTE`` draws the epoch's rows with replacement, a row of value ``c`` of that
  single-label attribute with probability proportional to ``1 / n_c``, so every value present is drawn equally
  often; unlabelled rows keep their share of the draws (:func:`balanced_weights`, :class:`BalancedSampler`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from vestis.data.dataset import EncodedTargets
from vestis.data.manifest import Manifest
from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError

__all__ = ["BalancedSampler", "balanced_weights", "instance_weights"]


def instance_weights(manifest: Manifest, column: str) -> np.ndarray:
    """``(N,)`` float32 weights from the ``meta_<column>`` column (empty: 1).

    Raises:
        VestisError: the manifest has no such column, or a cell is not a finite number >= 0 (file:line named),
            or every weight is 0.
    """
    name = column[len("meta_") :] if column.startswith("meta_") else column
    if name not in manifest.meta_columns:
        raise VestisError(
            f"{manifest.source}: train.weight_column {column!r}: no meta_{name} column; "
            f"expected one of {[f'meta_{m}' for m in manifest.meta_columns]}"
        )
    out = np.ones(len(manifest.records), dtype=np.float32)
    for i, r in enumerate(manifest.records):
        cell = r.meta.get(name)
        if cell is None:
            continue
        try:
            w = float(cell)
        except ValueError:
            w = float("nan")
        if not (math.isfinite(w) and w >= 0):
            raise VestisError(f"{manifest.source}:{r.line}: meta_{name}: expected a weight >= 0, got {cell!r}")
        out[i] = w
    if len(out) and not out.any():
        raise VestisError(f"{manifest.source}: meta_{name}: every weight is 0; expected some positive weights")
    return out


def balanced_weights(taxonomy: Taxonomy, encoded: EncodedTargets, attribute: str) -> np.ndarray:
    """``(N,)`` draw probabilities (summing to 1) that balance the values of ``attribute``.

    With ``N`` rows of which ``L`` are labelled, over ``K`` values present, a labelled row of value ``c`` (``n_c``
    rows) gets ``(L / N) / (K n_c)`` and an unlabelled row ``1 / N``: each value present gets ``L / (N K)`` of the
    draws, the unlabelled rows their share ``(N - L) / N``.

    Raises:
        VestisError: the attribute is unknown or multi-label, or no row is labelled.
    """
    if attribute not in taxonomy:
        raise VestisError(f"train.balanced_sampling: unknown attribute {attribute!r}; expected one of {taxonomy.names}")
    if taxonomy[attribute].kind != "single":
        raise VestisError(f"train.balanced_sampling: {attribute!r} is multi-label; expected a single-label attribute")
    y, m = encoded.targets[attribute], encoded.masks[attribute]
    n, labelled = len(y), int(m.sum())
    if labelled == 0:
        raise VestisError(f"train.balanced_sampling: no training row is labelled with {attribute!r}")
    counts = np.bincount(y[m], minlength=taxonomy[attribute].num_values)
    k = int((counts > 0).sum())
    w = np.full(n, 1.0 / n)
    w[m] = (labelled / n) / (k * counts[y[m]])
    return w / w.sum()


class BalancedSampler(Sampler[int]):
    """Rows drawn with replacement by ``weights``, reseeded each epoch (``seed + epoch``), split over ranks.

    Every rank draws the same ``num_samples`` indices (the dataset's size rounded up to the ranks) and keeps every
    ``world_size``-th from ``rank``, as :class:`~torch.utils.data.DistributedSampler` shards its permutation.
    """

    def __init__(self, weights: np.ndarray, *, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        self.weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = math.ceil(len(self.weights) / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        total = self.num_samples * self.num_replicas
        drawn = torch.multinomial(self.weights, total, replacement=True, generator=g)
        return iter(drawn[self.rank : total : self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples
