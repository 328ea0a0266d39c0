"""The service's request and response bodies: what ``/openapi.json`` documents and clients rely on.

An attribute result is exactly what :meth:`vestis.inference.predictor.Predictor.decode` gives (and what
``vestis predict`` writes), so a catalog tagged offline and one tagged over HTTP read the same:

* a single-label attribute: ``value`` (the argmax), its ``score`` and every value's ``scores``;
* a multi-label attribute: the ``values`` at or above their threshold (highest score first) and ``scores``.

Attributes that do not apply to the predicted category are absent from ``attributes``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ERROR_RESPONSES",
    "IMAGE_REQUEST_BODY",
    "AttributeInfo",
    "AttributeResult",
    "AttributesResponse",
    "ErrorResponse",
    "Health",
    "ImageResult",
    "ImagesRequest",
    "Readiness",
    "TaxonomyResponse",
]


class ImagesRequest(BaseModel):
    """A JSON request: images as base64 strings (the encoded file bytes, not pixels; never a URL)."""

    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(
        ...,
        min_length=1,
        description="Base64 of each image file (JPEG, PNG, WebP, GIF, BMP or TIFF); whitespace is ignored.",
        examples=[["iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"]],
    )


class AttributeResult(BaseModel):
    """The prediction for one attribute of one image."""

    value: str | None = Field(None, description="Single-label attributes: the predicted value.")
    score: float | None = Field(None, description="Single-label attributes: the predicted value's probability.")
    values: list[str] | None = Field(
        None, description="Multi-label attributes: values at or above their threshold, highest score first."
    )
    scores: dict[str, float] = Field(..., description="Probability of every value of the attribute.")


class ImageResult(BaseModel):
    """Everything predicted for one image."""

    filename: str | None = Field(None, description="The uploaded file's name (multipart requests).")
    width: int = Field(..., description="Width of the decoded image in pixels.")
    height: int = Field(..., description="Height of the decoded image in pixels.")
    attributes: dict[str, AttributeResult] = Field(
        ..., description="Attribute name -> result; attributes that do not apply to the predicted category are absent."
    )


class AttributesResponse(BaseModel):
    """One result per image, in request order."""

    results: list[ImageResult]


class AttributeInfo(BaseModel):
    """One attribute of the taxonomy."""

    name: str
    kind: Literal["single", "multi"]
    values: list[str]
    applies_to: list[str] | None = Field(None, description="Categories it applies to; null means every category.")
    roi: str | None = None
    description: str = ""


class TaxonomyResponse(BaseModel):
    """The taxonomy the model predicts, and the preprocessing it expects."""

    name: str
    category_attribute: str | None
    hierarchy: dict[str, list[str]]
    attributes: list[AttributeInfo]
    preprocessing: dict[str, Any] = Field(..., description="image_size, mean, std, pad_value, resize.")
    thresholds: dict[str, list[float]] = Field(..., description="Calibrated per-value thresholds (may be empty).")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    detail: str = ""


class ErrorResponse(BaseModel):
    """Every error: a short, stable ``error`` and a human ``detail``."""

    error: str = Field(..., examples=["invalid base64"])
    detail: Any = Field(None, examples=["images[0]: not valid base64 (Incorrect padding)"])


# --- OpenAPI pieces of the image endpoints (their body is read by hand, so FastAPI cannot infer it) ---------------
IMAGE_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "description": "Images as multipart `file` parts, or as base64 strings in JSON.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                            "description": "One or more image files (JPEG, PNG, WebP, GIF, BMP, TIFF).",
                        }
                    },
                    "required": ["file"],
                }
            },
            "application/json": {"schema": ImagesRequest.model_json_schema()},
        },
    }
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "Body too large, too many images, or an image over the pixel cap."},
    415: {"model": ErrorResponse, "description": "Not multipart or JSON, or a file that is not a supported image."},
    422: {
        "model": ErrorResponse,
        "description": "Malformed body, bad base64, or an empty, truncated or corrupt image.",
    },
    500: {"model": ErrorResponse, "description": "The model failed on this request."},
    503: {
        "model": ErrorResponse,
        "description": "The model is not loaded yet, or the service is overloaded (see `Retry-After`).",
        "headers": {"Retry-After": {"description": "Seconds after which to retry.", "schema": {"type": "integer"}}},
    },
}
