"""The HTTP service: ``create_app(predictor) -> FastAPI``.

A request goes through stages, and the model code never sees HTTP::

    read_images  (HTTP body -> image files; size, count and JSON depth limits)  on the event loop
    headers      (pixel limits per image and per request, before decoding)     in the request thread pool
    admit        (shed the request with 503 + Retry-After if the model is too far behind)
    decode       (one file at a time -> RGB -> uint8 (3, S, S), holding its share of the memory budget)  in the
                 bounded decode pool (vestis.service.decode_pool: 503 + Retry-After when it is full)
    batch        (MicroBatcher: items of concurrent requests -> (B, 3, S, S))
    predict      (predictor.predict_arrays)                                 in the one model thread
    unbatch      (per-attribute (B, K) -> one row per item)
    encode       (predictor.decode -> AttributesResponse JSON; orjson when installed, vestis.service.responses)

Endpoints: ``POST /v1/attributes``, ``POST /v1/heatmap``, ``GET /v1/taxonomy`` (the model served and its
runtime; these three in :mod:`vestis.service.attribute_routes`), ``GET /healthz``, ``GET /readyz``,
``GET /metrics`` and the web page at ``/``; with a catalog index, the search endpoints of
:mod:`vestis.service.search`. An embedding model (:mod:`vestis.service.embedding`, served with its index) answers
``/v1/attributes`` from its recognition columns, else from the index's nearest prototypes, and has no
``/v1/heatmap``. An outfit pipeline (:mod:`vestis.service.outfit`) answers ``POST /v1/outfit`` and
``GET /v1/model`` instead of the single-product endpoints. Every error is JSON
``{"error": ..., "detail": ...}``; an exception in the model answers 500 and the next request is served.
A client that goes away while its body is read is an ordinary event: counted, logged on one line, no 500.
Traceability: ``/v1/attributes`` and ``/v1/taxonomy`` answer with ``model``, the served model's fingerprint
(:mod:`vestis.fingerprint`; absent for a model file without one), and ``/metrics`` has ``vestis_model_info``.
The service is self-contained: it fetches nothing (no URLs in requests, no CDN on the page), so the
interactive ``/docs`` pages (which load scripts from a CDN) are off; ``/openapi.json`` is there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry

from vestis import __version__
from vestis.errors import VestisError
from vestis.service.attribute_routes import add_attribute_routes, model_name, runtime_of
from vestis.service.config import ServiceConfig
from vestis.service.core import AttributePredictor, Service
from vestis.service.decoding import (
    BodyLimitMiddleware,
)
from vestis.service.handlers import add_error_handlers
from vestis.service.heatmap import render_heatmap
from vestis.service.metrics import CONTENT_TYPE, MetricsMiddleware, ServiceMetrics
from vestis.service.schemas import (
    Health,
    Readiness,
)

if TYPE_CHECKING:
    from vestis.retrieval.catalog_index import CatalogIndex
    from vestis.service.search import Searcher

__all__ = ["AttributePredictor", "ServiceConfig", "create_app", "render_heatmap"]

log = logging.getLogger("vestis.service")
STATIC = Path(__file__).resolve().parent / "static"
# the page loads nothing from elsewhere; blob: is the heat-map overlay and the preview
_PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"


def create_app(
    predictor: AttributePredictor,
    config: ServiceConfig | None = None,
    *,
    index: CatalogIndex | None = None,
    registry: CollectorRegistry | None = None,
    export: Mapping[str, Any] | None = None,
) -> FastAPI:
    """The FastAPI application serving ``predictor``, and substitute search over ``index`` when given.

    The model thread, the micro-batcher and the warm-up start with the application's lifespan (uvicorn,
    ``TestClient`` used as a context manager); ``/readyz`` answers 200 once the warm-up batch has run.

    Args:
        predictor: the model (see :class:`AttributePredictor`).
        config: batching and limits; defaults of :class:`ServiceConfig` when omitted.
        index: a catalog index built with the same model: adds ``POST /v1/search``, ``GET /v1/items/{id}``,
            its thumbnail and ``GET /v1/index`` (see :mod:`vestis.service.search`).
        registry: the Prometheus registry for the metrics; a fresh one by default.
        export: how a checkpoint was exported to ONNX at start-up
            (:meth:`vestis.service.startup.StartupExport.to_dict`), shown by ``GET /v1/taxonomy``.
    """
    from vestis.service import outfit as outfit_routes  # it builds on Service below

    outfit = outfit_routes.is_outfit_pipeline(predictor)
    if not outfit and not isinstance(predictor, AttributePredictor):
        members = ("taxonomy", "preprocessing", "thresholds", "preprocess", "predict_arrays", "decode")
        missing = [m for m in members if not hasattr(predictor, m)]
        raise VestisError(f"create_app: {type(predictor).__name__} is not a predictor; it lacks {', '.join(missing)}")
    if outfit and index is not None:
        raise VestisError("create_app: an outfit pipeline serves no catalog index (search serves a single model)")
    has_heatmap = not outfit and callable(getattr(predictor, "heatmap", None))
    config = config or ServiceConfig()
    metrics = ServiceMetrics(registry)
    service = (outfit_routes.OutfitService if outfit else Service)(predictor, config, metrics)
    name = service.model_name if isinstance(service, outfit_routes.OutfitService) else model_name(predictor)
    metrics.set_model(service.fingerprint, name, runtime_of(predictor))
    searcher: Searcher | None = None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        if searcher is not None:
            searcher.start()
        warm = asyncio.create_task(service.warm_up(), name="vestis-warm-up")
        try:
            yield
        finally:
            warm.cancel()
            if searcher is not None:
                searcher.stop()
            await service.stop()

    app = FastAPI(
        title="vestis",
        version=__version__,
        summary="Catalog attributes from fashion product images.",
        description=(
            "Upload product images (multipart `file` parts or base64 in JSON) and get every attribute of the "
            "taxonomy with its scores. Requests arriving together are batched for the model."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.add_middleware(BodyLimitMiddleware, max_bytes=service.limits.max_upload_bytes)
    # outermost: it also counts the 413s above; app.routes is the live list the routes below are added to
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=app.router.routes)
    add_error_handlers(app, metrics)

    if isinstance(service, outfit_routes.OutfitService):
        outfit_routes.add_outfit_routes(app, service)
    else:
        add_attribute_routes(app, service, has_heatmap, export)
        outfit_routes.add_no_outfit_route(app)

    @app.get("/healthz", response_model=Health, summary="The process is up", tags=["operations"])
    async def healthz() -> Health:
        return Health()

    @app.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Loading or warming up."}},
        summary="The model is loaded and warmed up",
        tags=["operations"],
    )
    async def readyz() -> Any:
        body = Readiness(ready=service.ready, detail=service.status)
        return body if service.ready else JSONResponse(body.model_dump(), status_code=503)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text."}},
        summary="Prometheus metrics",
        tags=["operations"],
    )
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    if index is not None:
        from vestis.service.search import add_search_routes

        searcher = add_search_routes(app, service, index)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": _PAGE_CSP})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
