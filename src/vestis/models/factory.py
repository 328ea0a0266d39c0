"""The one place a :class:`~vestis.config.ModelConfig` becomes a model.

model = create_model(cfg.model, taxonomy)   # e.g. name=a3, backbone=efficientnetv2_m
logits = model(images)                      # {attribute: (B, num_values)}

model = create_model(cfg.model, taxonomy, image_size=cfg.data.image_size)   # name=datrnet, backbone=datrnet_ase
out = model(images)                         # {"embeddings": {attribute: (B, d)}, "logits": ..., "penalties": ...}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vestis.config import ModelConfig
from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.models.attribute_model import AttributeModel
from vestis.models.backbones.base import Backbone, FeatureInfo
from vestis.models.detection import build_detector, is_detector
from vestis.models.embedding import EmbeddingModel
from vestis.models.heads import OUTPUTS
from vestis.models.hierarchical import Stage2Layout, build_stage2_model, is_stage2
from vestis.models.weights import load_backbone_weights
from vestis.pretrained import resolve_weights
from vestis.registry import ATTENTION, BACKBONES, MODELS

__all__ = ["BackboneSummary", "create_model", "describe_backbone", "list_backbones", "list_models"]


def create_model(model_cfg: ModelConfig, taxonomy: Taxonomy, *, image_size: int | None = None) -> nn.Module:
    """Build the registered model ``model_cfg.name`` on the backbone ``model_cfg.backbone``.

    A model registered with meta ``task="embedding"`` (``csn``, ``csn_fixed``, ``triplet``, ``datrnet``) gets the
    embedding settings (``embedding_dim``, ``columns``, ``embedding_hidden``, ``dropout``), any other the classifier
    ones. A backbone of family ``ase`` (``datrnet_ase``) is built with ``model_cfg.ase_modules`` / ``ase_axes`` and,
    when given, ``image_size``: its attention layers are sized for the feature maps of that input.

    When ``model_cfg.pretrained`` names a source (``imagenet``, see :mod:`vestis.pretrained`) or is a path, the
    backbone weights are loaded from it (strictly; see :func:`~vestis.models.weights.load_backbone_weights`) before
    the unused stages are removed. The model's ``output`` attribute records ``model_cfg.output`` (how logits become
    probabilities, see :func:`~vestis.models.heads.uses_softmax`).

    The hierarchical pipeline's models come from their own registries: a detector (``centernet``, stage 1) takes
    its classes from the taxonomy's one attribute (``object_type``) and gets ``.classes``; a stage-2 model
    (``stl``, ``stl_hls``, ``rnn_va``) gets ``.layout``, the :class:`~vestis.models.hierarchical.Stage2Layout` of
    the taxonomy and ``model_cfg.object_types``. Both get ``.taxonomy``.

    Args:
        model_cfg: the model section of the configuration.
        taxonomy: the attributes to predict, one branch (or sub-embedding) each.
        image_size: the side of the training images (``data.image_size``); only backbones that size layers by
            it (family ``ase``) use it, the others accept any input size.

    Returns:
        The model, in training mode.
    """
    if model_cfg.attention not in ATTENTION:
        raise VestisError(f"model.attention: unknown attention {model_cfg.attention!r}; registered: {list(ATTENTION)}")
    if model_cfg.fpn_channels < 1:
        raise VestisError(f"model.fpn_channels: expected a positive width, got {model_cfg.fpn_channels}")
    if model_cfg.output not in OUTPUTS:
        raise VestisError(f"model.output: expected one of {list(OUTPUTS)}, got {model_cfg.output!r}")
    backbone: Backbone = BACKBONES.build(model_cfg.backbone, **_backbone_kwargs(model_cfg, image_size))
    if model_cfg.pretrained:
        load_backbone_weights(backbone, resolve_weights(model_cfg.backbone, model_cfg.pretrained))
    if is_detector(model_cfg.name):
        return _detector(model_cfg, taxonomy, backbone)
    if is_stage2(model_cfg.name):
        return _stage2(model_cfg, taxonomy, backbone)
    model: AttributeModel | EmbeddingModel
    if MODELS.meta(model_cfg.name).get("task") == "embedding":
        model = MODELS.build(
            model_cfg.name,
            backbone=backbone,
            taxonomy=taxonomy,
            embedding_dim=model_cfg.embedding_dim,
            columns=model_cfg.columns,
            embedding_hidden=model_cfg.embedding_hidden,
            dropout=model_cfg.dropout,
        )
    else:
        model = MODELS.build(
            model_cfg.name,
            backbone=backbone,
            taxonomy=taxonomy,
            attention=model_cfg.attention,
            fpn_channels=model_cfg.fpn_channels,
            branch_hidden=model_cfg.branch_hidden,
            branch_hidden_overrides=dict(model_cfg.branch_hidden_overrides),
            dropout=model_cfg.dropout,
        )
    model.output = model_cfg.output
    return model


def _detector(model_cfg: ModelConfig, taxonomy: Taxonomy, backbone: Backbone) -> nn.Module:
    """A registered detector (stage 1); its classes are the values of the taxonomy's one attribute."""
    if len(taxonomy) != 1 or taxonomy.attributes[0].kind != "single":
        raise VestisError(
            f"{model_cfg.name}: a detector's taxonomy is one single-label attribute (its classes); got {taxonomy.names}"
        )
    classes = taxonomy.attributes[0].values
    model = build_detector(model_cfg.name, backbone=backbone, num_classes=len(classes))
    model.taxonomy, model.classes, model.output = taxonomy, tuple(classes), "detection"
    return model


def _stage2(model_cfg: ModelConfig, taxonomy: Taxonomy, backbone: Backbone) -> nn.Module:
    """A registered stage-2 model; its outputs follow :class:`~vestis.models.hierarchical.Stage2Layout`."""
    layout = Stage2Layout.from_taxonomy(taxonomy, model_cfg.object_types)
    model = build_stage2_model(
        model_cfg.name,
        backbone=backbone,
        num_categories=len(layout.categories),
        num_attributes=layout.num_attributes,
        num_object_types=len(layout.object_types),
    )
    model.taxonomy, model.layout, model.output = taxonomy, layout, "stage2"
    return model


def _backbone_kwargs(model_cfg: ModelConfig, image_size: int | None) -> dict[str, object]:
    """The builder arguments a backbone family takes from the model config (none for most)."""
    if BACKBONES.meta(model_cfg.backbone).get("family") != "ase":
        return {}
    kwargs: dict[str, object] = {"modules": model_cfg.ase_modules, "axes": tuple(model_cfg.ase_axes)}
    if image_size is not None:
        kwargs["image_size"] = image_size
    return kwargs


def list_models() -> list[str]:
    """Registered model names (classifiers ``a1`` ... ``a4``, ``baseline``; embedding models ``csn`` ...), sorted."""
    return MODELS.names()


def list_backbones(tiny: bool | None = None) -> list[str]:
    """Registered backbone names, sorted.

    Args:
        tiny: ``True`` for the test-sized variants only, ``False`` for the real ones, ``None`` for all.
    """
    return BACKBONES.names() if tiny is None else BACKBONES.names(tiny=tiny)


@dataclass(frozen=True)
class BackboneSummary:
    """What ``vestis models`` shows about a backbone.

    Attributes:
        name: registered name.
        family: ``resnet``, ``efficientnetv2``, ``mobilenetv3`` ...
        tiny: whether it is a test-sized variant.
        params: number of parameters without a classifier.
        pyramid: the stride-8/16/32 taps of the multi-scale variants.
        last: the last stage (what ``baseline`` pools).
    """

    name: str
    family: str
    tiny: bool
    params: int
    pyramid: tuple[FeatureInfo, ...]
    last: FeatureInfo


def describe_backbone(name: str) -> BackboneSummary:
    """Summarise a registered backbone; it is built on the meta device, so this is cheap for any size."""
    meta = BACKBONES.meta(name)
    with torch.device("meta"):
        bb: Backbone = BACKBONES.build(name)
    return BackboneSummary(
        name=name,
        family=str(meta.get("family", "")),
        tiny=bool(meta.get("tiny", False)),
        params=sum(p.numel() for p in bb.parameters()),
        pyramid=tuple(bb.info(n) for n in bb.pyramid_features()),
        last=bb.info(bb.last_feature),
    )
