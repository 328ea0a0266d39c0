"""Models: backbones with a declared feature pyramid, necks, attention, attribute branches, assemblies.

Importing this package registers every part (``BACKBONES``, ``NECKS``, ``ATTENTION``, ``MODELS`` in
:mod:`vestis.registry`). The factory is the only reader of the configuration::

    from vestis.models import create_model
    model = create_model(cfg.model, taxonomy)
    logits = model(images)            # {attribute: (B, num_values)}
    maps = model.attention_maps(images)  # {level: (B, h, w)}

Embedding models (``vestis.models.embedding``) return ``{"embeddings": {attribute: (B, d)}, ...}`` instead.
"""

from __future__ import annotations

from vestis.models import layers
from vestis.models.attribute_model import VARIANTS, AttributeModel, Variant, build_attribute_model
from vestis.models.backbones import Backbone, FeatureInfo
from vestis.models.embedding import AttributeEmbedder, ConditionalSimilarityNetwork, EmbeddingModel, as_embedder
from vestis.models.factory import BackboneSummary, create_model, describe_backbone, list_backbones, list_models
from vestis.models.heads import AttributeBranch, AttributeHeads
from vestis.models.necks import FPN, IdentityNeck, RetinaNetFPN
from vestis.models.weights import LoadReport, load_backbone_weights, read_state_dict

__all__ = [
    "FPN",
    "VARIANTS",
    "AttributeBranch",
    "AttributeEmbedder",
    "AttributeHeads",
    "AttributeModel",
    "Backbone",
    "BackboneSummary",
    "ConditionalSimilarityNetwork",
    "EmbeddingModel",
    "FeatureInfo",
    "IdentityNeck",
    "LoadReport",
    "RetinaNetFPN",
    "Variant",
    "as_embedder",
    "build_attribute_model",
    "create_model",
    "describe_backbone",
    "layers",
    "list_backbones",
    "list_models",
    "load_backbone_weights",
    "read_state_dict",
]
