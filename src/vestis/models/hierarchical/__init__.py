"""Stage 2 of the hierarchical two-stage pipeline: category and attributes of one garment crop.

Importing this package registers three model families in :data:`STAGE2_MODELS` (a registry of its own, so the
classifier and embedding listings of ``MODELS`` are unchanged), each with a ``_tiny`` variant for tests:

* ``stl`` (:class:`STLModel`): Baseline STL, a softmax category head and a sigmoid attribute head;
* ``stl_hls`` (:class:`STLHLSModel`): STL with hierarchical label sharing (object-type and category embeddings);
* ``rnn_va`` (:class:`RNNVAModel`): MTL with a GRU decoder and Bahdanau visual attention (paper eqs. 1-7).

Every model maps ``(images, object_types=None, categories=None)`` to
``{"category": (B, C) logits, "attributes": (B, A) logits, ...}``; see :class:`Stage2Model`::

    model = build_stage2_model("stl_hls", backbone="efficientnet_lite0", num_categories=16, num_attributes=40)
    out = model(crops, object_types=types)        # types: (B,) detector classes
    losses = HierarchicalLoss()(out, {"category": y_cat, "attributes": y_attr})
"""

from __future__ import annotations

from vestis.models.hierarchical.base import STAGE2_MODELS, Stage2Model, build_stage2_model
from vestis.models.hierarchical.consistency import allowed_matrix, apply_taxonomy
from vestis.models.hierarchical.layout import OBJECT_TYPE_META, Stage2Layout
from vestis.models.hierarchical.overlay import attention_overlay
from vestis.models.hierarchical.rnn_va import BahdanauAttention, RNNVAModel
from vestis.models.hierarchical.stl import STLHLSModel, STLModel

__all__ = [
    "OBJECT_TYPE_META",
    "STAGE2_MODELS",
    "BahdanauAttention",
    "RNNVAModel",
    "STLHLSModel",
    "STLModel",
    "Stage2Layout",
    "Stage2Model",
    "allowed_matrix",
    "apply_taxonomy",
    "attention_overlay",
    "build_stage2_model",
    "is_stage2",
]


def is_stage2(name: str) -> bool:
    """Whether ``name`` is a registered stage-2 model (``stl``, ``stl_hls``, ``rnn_va``, their ``_tiny`` variants)."""
    return name in STAGE2_MODELS
