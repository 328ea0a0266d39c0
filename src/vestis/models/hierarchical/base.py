"""The interface of the stage-2 models and their registry.

A stage-2 model classifies one garment crop: a category (single-label, softmax) and attributes (multi-label,
sigmoid). It may use the object type the detector gave the crop and, in training, the true category (teacher
forcing). Every model reads the backbone's *last* selected map through the ``feature_info`` contract, so any
vestis backbone fits.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from vestis.errors import VestisError
from vestis.models.backbones.base import Backbone
from vestis.models.inputs import require_tensor
from vestis.registry import BACKBONES, Registry

__all__ = ["STAGE2_MODELS", "Stage2Model", "build_stage2_model", "check_sizes", "resolve_backbone"]

STAGE2_MODELS = Registry("stage-2 model")

_HINT = "call it on a normalised (B, 3, H, W) float tensor of garment crops"


def check_sizes(**sizes: int) -> None:
    """Raise :class:`VestisError` unless every keyword is a positive integer (``num_categories=16``)."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise VestisError(f"{name}: expected a positive integer, got {value!r}")


def resolve_backbone(backbone: Backbone | str) -> Backbone:
    """A backbone module as given, or built by its registered name (whole network, last stage selected)."""
    if isinstance(backbone, str):
        return BACKBONES.build(backbone)
    if not isinstance(backbone, Backbone):
        raise VestisError(f"backbone: expected a vestis Backbone or a registered name, got {type(backbone).__name__}")
    return backbone


class Stage2Model(nn.Module):
    """Base class: a backbone, the label-space sizes and the shared forward contract.

    Args:
        backbone: the image encoder; its last selected map (``out_feature_info[-1]``) is the feature map.
        num_categories: garment categories ``C``.
        num_attributes: attributes ``A`` (multi-label).
        num_object_types: detector classes (the paper's four: upper-body, lower-body, full-body, footwear).
        kind: the registered name.

    Attributes:
        feature: name of the backbone map the heads read; ``feature_channels`` its width.
    """

    def __init__(
        self, backbone: Backbone | str, *, num_categories: int, num_attributes: int, num_object_types: int, kind: str
    ) -> None:
        super().__init__()
        check_sizes(num_categories=num_categories, num_attributes=num_attributes, num_object_types=num_object_types)
        self.backbone = resolve_backbone(backbone)
        self.num_categories = num_categories
        self.num_attributes = num_attributes
        self.num_object_types = num_object_types
        self.kind = kind
        info = backbone.out_feature_info[-1]
        self.feature = info.name
        self.feature_channels = info.channels

    def features(self, images: Tensor) -> Tensor:
        """The backbone's last selected map (B, d, h, w) for normalised images (B, 3, H, W)."""
        require_tensor(images, self, _HINT)
        return self.backbone(images)[self.feature]

    def check_labels(self, labels: Tensor | None, size: int, name: str, batch: int) -> None:
        """Raise :class:`VestisError` unless ``labels`` is ``None`` or (B,) integers in ``[-1, size)``."""
        if labels is None:
            return
        if labels.dim() != 1 or labels.shape[0] != batch or labels.dtype.is_floating_point:
            raise VestisError(f"{name}: expected ({batch},) integer indices, got {tuple(labels.shape)} {labels.dtype}")
        if labels.numel() and (int(labels.min()) < -1 or int(labels.max()) >= size):
            raise VestisError(f"{name}: expected indices in [0, {size}) or -1 (unknown), got {labels.tolist()}")

    def forward(
        self, images: Tensor, object_types: Tensor | None = None, categories: Tensor | None = None
    ) -> dict[str, Any]:
        """Outputs for a batch of crops.

        Args:
            images: normalised crops (B, 3, H, W).
            object_types: (B,) detector class per crop, ``-1`` or ``None`` for unknown; models without label
                sharing ignore it.
            categories: (B,) true category per crop, ``-1`` for missing; used only for teacher forcing in training.

        Returns:
            ``{"category": (B, C) logits, "attributes": (B, A) logits}`` plus model-specific entries.
        """
        raise NotImplementedError


def build_stage2_model(name: str, /, **kwargs: Any) -> Stage2Model:
    """Build the registered stage-2 model ``name`` (``stl``, ``stl_hls``, ``rnn_va`` or a ``_tiny`` variant)."""
    return STAGE2_MODELS.build(name, **kwargs)
