"""The single-product endpoints of :func:`vestis.service.app.create_app`: ``POST /v1/attributes``,
``POST /v1/heatmap`` (when the model has one) and ``GET /v1/taxonomy`` (the model served: its taxonomy,
preprocessing, fingerprint, runtime and start-up export).

The stages they run are :class:`vestis.service.core.Service`'s (see :mod:`vestis.service.app`); ``/v1/attributes``
answers through orjson when it is installed (:mod:`vestis.service.responses`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response

from vestis.service.decoding import ServiceError, read_images
from vestis.service.responses import fast_json_response
from vestis.service.schemas import (
    ERROR_RESPONSES,
    IMAGE_REQUEST_BODY,
    AttributesResponse,
    TaxonomyResponse,
)

if TYPE_CHECKING:
    from vestis.service.core import AttributePredictor, Service

__all__ = ["add_attribute_routes", "model_name", "runtime_of"]


def add_attribute_routes(
    app: FastAPI, service: Service, has_heatmap: bool, export: Mapping[str, Any] | None = None
) -> None:
    """The single-product endpoints: ``/v1/attributes``, ``/v1/heatmap`` (when the model has one), ``/v1/taxonomy``."""
    predictor = service.predictor
    runtime = runtime_of(predictor)
    fast_json = fast_json_response()  # None: FastAPI serialises the response model

    @app.post(
        "/v1/attributes",
        response_model=AttributesResponse,
        response_model_exclude_none=True,
        responses=ERROR_RESPONSES,
        openapi_extra=IMAGE_REQUEST_BODY,
        summary="Attributes and scores of each image",
        tags=["predict"],
    )
    async def attributes(
        request: Request,
        calibrated: bool = Query(
            True, description="Use the model's calibrated multi-label thresholds when it has them."
        ),
    ) -> Any:
        raws = await read_images(request, service.limits)
        heads = await service.headers(raws)  # a request that can never be served gets its 4xx, not a 503
        try:
            with service.admit(len(raws)):
                batch = await service.decode(raws, heads)
                rows = await service.predict(batch)
        finally:
            await service.settle()
        body = service.encode(raws, heads, rows, calibrated)
        if fast_json is None:
            return body
        if body.get("model") is None:  # as response_model_exclude_none does
            body.pop("model", None)
        return fast_json(body)

    if has_heatmap:  # an embedding model has no class activation to show: no route, none in the OpenAPI

        @app.post(
            "/v1/heatmap",
            response_class=Response,
            responses={
                200: {
                    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                    "description": "The heat-map as a PNG the size of the image (longer side capped).",
                },
                **ERROR_RESPONSES,
            },
            openapi_extra=IMAGE_REQUEST_BODY,
            summary="Where the model looked, as a PNG",
            tags=["predict"],
        )
        async def heatmap(
            request: Request,
            style: Literal["overlay", "gray"] = Query(
                "overlay", description="overlay: RGBA colour map to lay over the image; gray: the map's values x 255."
            ),
        ) -> Response:
            raws = await read_images(request, service.limits)
            if len(raws) != 1:
                raise ServiceError(422, "one image expected", f"the heat-map takes exactly one image, got {len(raws)}")
            [head] = await service.headers(raws)
            async with service.memory(head.decoded_bytes):
                decoded = await service.decode_full(raws[0])
                try:
                    png = await service.heatmap(decoded, style)
                finally:
                    decoded.image.close()
            return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get(
        "/v1/taxonomy", response_model=TaxonomyResponse, summary="The attributes the model predicts", tags=["model"]
    )
    async def taxonomy() -> TaxonomyResponse:
        t = predictor.taxonomy.to_dict()
        return TaxonomyResponse(
            name=t.get("name", ""),
            category_attribute=t.get("category_attribute"),
            hierarchy=t.get("hierarchy", {}),
            attributes=t["attributes"],
            preprocessing=dict(predictor.preprocessing),
            thresholds={k: list(v) for k, v in predictor.thresholds.items()},
            heatmap=has_heatmap,
            embedding=getattr(predictor, "embedding", None),
            model=service.fingerprint,
            runtime=runtime,
            export=dict(export) if export is not None else None,
        )


def runtime_of(predictor: AttributePredictor) -> str | None:
    """``onnx`` or ``torch``: the predictor's ``backend`` (or ``runtime``); ``None`` when it names neither."""
    value = getattr(predictor, "backend", None) or getattr(predictor, "runtime", None)
    return str(value) if value is not None else None


def model_name(predictor: AttributePredictor) -> str | None:
    """The registered model name (``a3``, ``csn``...) from the predictor's config or its embedding name."""
    cfg = getattr(predictor, "config", None)
    name = ((cfg.get("model") or {}) if isinstance(cfg, Mapping) else {}).get("name")
    return str(name) if name else getattr(predictor, "embedding", None)
