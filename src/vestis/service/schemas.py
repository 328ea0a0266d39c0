"""The service's request and response bodies: what ``/openapi.json`` documents and clients rely on.

An attribute result is exactly what :meth:`vestis.inference.predictor.Predictor.decode` gives (and what
``vestis predict`` writes), so a catalog tagged offline and one tagged over HTTP read the same:

* a single-label attribute: ``value`` (the argmax), its ``score`` and every value's ``scores``;
* a multi-label attribute: the ``values`` at or above their threshold (highest score first) and ``scores``.

Attributes that do not apply to the predicted category are absent from ``attributes``. An embedding model
(:mod:`vestis.service.embedding`) answers the same way from its recognition columns, and from the nearest
prototype elsewhere, marked ``"source": "prototype"`` (its scores are cosine similarities).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ERROR_RESPONSES",
    "IMAGE_REQUEST_BODY",
    "MAX_K",
    "SEARCH_REQUEST_BODY",
    "AttributeInfo",
    "AttributeResult",
    "AttributesResponse",
    "ErrorResponse",
    "Health",
    "ImageResult",
    "ImagesRequest",
    "IndexAttribute",
    "IndexInfo",
    "ItemResponse",
    "Readiness",
    "SearchHit",
    "SearchOptions",
    "SearchQuery",
    "SearchRequest",
    "SearchResponse",
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
    scores: dict[str, float] = Field(
        ...,
        description="Probability of every value of the attribute; with source=prototype, the cosine similarity "
        "to each value's prototype instead (values without a prototype are absent).",
    )
    source: Literal["prototype"] | None = Field(
        None,
        description="Only from an embedding model without a recognition column for the attribute: the value is "
        "the most similar prototype's, and score and scores are similarities in [-1, 1], not probabilities.",
    )


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
    model: str | None = Field(
        None, description="Fingerprint (sha256:...) of the model that answered; absent when the model file has none."
    )


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
    heatmap: bool = Field(True, description="Whether POST /v1/heatmap exists (an embedding model has none).")
    embedding: str | None = Field(
        None, description="The embedding model served (csn, triplet, datrnet, ...); null for a classifier."
    )
    model: str | None = Field(None, description="Fingerprint (sha256:...) of the model served; null when unknown.")
    runtime: str | None = Field(None, description="What runs the model: onnx (ONNX Runtime) or torch (PyTorch).")
    export: dict[str, Any] | None = Field(
        None,
        description=(
            "A checkpoint served on ONNX Runtime: the start-up export (seconds, exporter, opset) and its parity "
            "against PyTorch on generated images (max_abs_diff, heatmap_max_abs_diff, tolerance); null otherwise."
        ),
    )


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


# --- substitute search (mounted when the service has a catalog index: ``vestis serve MODEL --index INDEX``) -----
MAX_K = 200  # hits one search may ask for; a page of substitutes, not an export of the catalog


class SearchOptions(BaseModel):
    """How to search: the manipulations, the attributes compared, the filters and the number of hits."""

    model_config = ConfigDict(extra="forbid")

    set: dict[str, str] = Field(
        default_factory=dict,
        description="attribute -> value: the query's sub-embedding of the attribute becomes the value's prototype.",
        examples=[{"colour": "black"}],
    )
    only: list[str] | None = Field(
        None, description="Compare these attributes only (weight 1), ignore the others; null compares every one."
    )
    where: dict[str, list[str]] = Field(
        default_factory=dict,
        description="attribute -> values: keep items whose label (else prediction) is one of the values.",
        examples=[{"category": ["dress"]}],
    )
    k: int = Field(30, ge=1, le=MAX_K, description="Number of hits.")
    additive: bool = Field(False, description="ADDE-M's additive manipulation instead of prototype replacement.")


class SearchRequest(SearchOptions):
    """A JSON search: the query is a catalog ``id`` or an ``image`` (base64 of the file), exactly one of them."""

    id: str | None = Field(None, description="A catalog id: its stored vector is the query (it is left out).")
    image: str | None = Field(None, description="Base64 of an image file (never a URL).")


class SearchHit(BaseModel):
    """One substitute."""

    id: str
    score: float = Field(..., description="Sum over the compared attributes of the cosine similarities s_t.")
    distance: float = Field(..., description="Squared L2 distance over the compared attributes, sum of 2 - 2 s_t.")
    per_attribute: dict[str, float] = Field(..., description="s_t of each compared attribute.")
    attributes: dict[str, str | None] = Field(..., description="The item's label, else its prediction.")
    thumbnail: str = Field(..., description="URL of the item's thumbnail (JPEG) on this server.")


class SearchQuery(BaseModel):
    """What was searched with."""

    id: str | None = None
    filename: str | None = None
    width: int | None = None
    height: int | None = None


class SearchResponse(BaseModel):
    """The hits, most similar first, and the options they were found with."""

    query: SearchQuery
    set: dict[str, str]
    only: list[str]
    where: dict[str, list[str]]
    k: int
    hits: list[SearchHit]
    model: str | None = Field(None, description="The fingerprint of the model that embedded the query and the index.")


class ItemResponse(BaseModel):
    """One catalog item as the index holds it."""

    id: str
    image: str | None = Field(None, description="Its image path relative to the catalog root.")
    labels: dict[str, str | None] = Field(..., description="The manifest's labels (several joined by `|`).")
    predictions: dict[str, str | None]
    scores: dict[str, float | None] = Field(..., description="The prediction's probability or prototype similarity.")
    attributes: dict[str, str | None] = Field(..., description="The label where there is one, else the prediction.")
    thumbnail: str


class IndexAttribute(BaseModel):
    """An attribute of the index and the values a search may ``set`` it to (those with a prototype)."""

    name: str
    kind: Literal["single", "multi"]
    values: list[str]
    prototypes: list[str]


class IndexInfo(BaseModel):
    """The catalog index the service searches."""

    count: int
    model: str
    backend: str
    kind: str
    attributes: list[IndexAttribute]


SEARCH_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "description": (
            "JSON (a catalog `id` or a base64 `image`, and the options), or multipart: one `file` part (or an `id` "
            "field) and the options as fields: `set`, `where` as repeated `attr=value`, `only` as repeated or "
            "comma-separated names, `k`, `additive`."
        ),
        "content": {
            "application/json": {"schema": SearchRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "The query image."},
                        "id": {"type": "string", "description": "A catalog id, instead of a file."},
                        "set": {"type": "array", "items": {"type": "string"}, "description": "attr=value"},
                        "only": {"type": "array", "items": {"type": "string"}, "description": "attribute names"},
                        "where": {"type": "array", "items": {"type": "string"}, "description": "attr=value"},
                        "k": {"type": "integer", "minimum": 1, "maximum": MAX_K},
                        "additive": {"type": "boolean"},
                    },
                }
            },
        },
    }
}
