"""Typed results of the outfit pipeline (:class:`~vestis.inference.pipeline.OutfitPipeline`): one
:class:`OutfitResult` per image, one :class:`Garment` per detected garment, each with a JSON-ready ``to_dict``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Garment", "OutfitResult"]

_DIGITS = 6  # decimals of scores in to_dict (as the tagging outputs round them)
_BOX_DIGITS = 2  # decimals of box corners, in pixels


@dataclass(frozen=True)
class Garment:
    """One garment of an outfit image.

    Attributes:
        box: ``(x0, y0, x1, y1)`` in the original image's pixels.
        object_type: the detector's class.
        object_score: the detector's score.
        category: the stage-2 category (softmax argmax).
        category_score: its probability.
        category_top: the best categories with their probabilities, best first.
        attributes: attribute -> ``[(value, probability), ...]`` of the values predicted (best first), after
            taxonomy suppression; an attribute with no value predicted is absent.
        suppressed: ``attribute=value`` of the values the model predicted but the taxonomy removed, because the
            attribute does not apply to the predicted category.
    """

    box: tuple[float, float, float, float]
    object_type: str
    object_score: float
    category: str
    category_score: float
    category_top: list[tuple[str, float]] = field(default_factory=list)
    attributes: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    suppressed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: lists for tuples, scores rounded to 6 decimals, box corners to 2."""
        return {
            "box": [round(float(v), _BOX_DIGITS) for v in self.box],
            "object_type": self.object_type,
            "object_score": round(float(self.object_score), _DIGITS),
            "category": self.category,
            "category_score": round(float(self.category_score), _DIGITS),
            "category_top": [[v, round(float(s), _DIGITS)] for v, s in self.category_top],
            "attributes": {a: [[v, round(float(s), _DIGITS)] for v, s in vs] for a, vs in self.attributes.items()},
            "suppressed": list(self.suppressed),
        }


@dataclass(frozen=True)
class OutfitResult:
    """The garments of one image.

    Attributes:
        image: the image's name (its path or id), ``None`` for an in-memory image.
        width: the original width in pixels.
        height: the original height in pixels.
        garments: by decreasing detector score.
        model: the pipeline's fingerprint.
    """

    image: str | None
    width: int
    height: int
    garments: list[Garment]
    model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"image", "width", "height", "garments": [...], "model"}``, JSON-ready."""
        return {
            "image": self.image,
            "width": int(self.width),
            "height": int(self.height),
            "garments": [g.to_dict() for g in self.garments],
            "model": self.model,
        }
