"""Losses, each returning a dict of named terms that the training loop sums and logs.

* :class:`MaskedMultiTaskLoss` and :func:`class_weights`: one masked CE/BCE per attribute (the classifiers);
* :class:`EmbeddingLoss`: the attribute-aware embedding models' joint loss (batch-hard triplet per condition,
  recognition columns, regularisers), built on the pure functions :func:`batch_hard_triplet`,
  :func:`batch_all_triplet` and :func:`triplet_margin_loss`.
"""

from vestis.losses.embedding import EmbeddingLoss
from vestis.losses.multitask import MaskedMultiTaskLoss, class_weights
from vestis.losses.triplet import MINING, batch_all_triplet, batch_hard_triplet, triplet_margin_loss

__all__ = [
    "MINING",
    "EmbeddingLoss",
    "MaskedMultiTaskLoss",
    "batch_all_triplet",
    "batch_hard_triplet",
    "class_weights",
    "triplet_margin_loss",
]
from vestis.losses.detection import CenterNetLoss as CenterNetLoss
from vestis.losses.hierarchical import HierarchicalLoss as HierarchicalLoss
