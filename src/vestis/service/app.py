"""The HTTP service: ``create_app(predictor) -> FastAPI``.

A request goes through stages, and the model code never sees HTTP::

    read_images  (HTTP body -> image files; size and count limits)          on the event loop
    decode       (files -> RGB images -> uint8 (3, S, S); pixel limit)      in the request thread pool
    batch        (MicroBatcher: items of concurrent requests -> (B, 3, S, S))
    predict      (predictor.predict_arrays)                                 in the one model thread
    unbatch      (per-attribute (B, K) -> one row per item)
    encode       (predictor.decode -> AttributesResponse JSON)

Endpoints: ``POST /v1/attributes``, ``POST /v1/heatmap``, ``GET /v1/taxonomy``, ``GET /healthz``,
``GET /readyz``, ``GET /metrics`` and the web page at ``/``. Every error is JSON
``{"error": ..., "detail": ...}``; an exception in the model answers 500 and the next request is served.
The service is self-contained: it fetches nothing (no URLs in requests, no CDN on the page), so the
interactive ``/docs`` pages (which load scripts from a CDN) are off; ``/openapi.json`` is there.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from vestis import __version__
from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.service.batching import MicroBatcher
from vestis.service.config import ServiceConfig
from vestis.service.decoding import BodyLimitMiddleware, DecodedImage, ServiceError, decode_images, read_images
from vestis.service.metrics import CONTENT_TYPE, MetricsMiddleware, ServiceMetrics
from vestis.service.schemas import (
    AttributesResponse,
    ErrorResponse,
    Health,
    ImageResult,
    ImagesRequest,
    Readiness,
    TaxonomyResponse,
)

__all__ = ["AttributePredictor", "ServiceConfig", "create_app", "render_heatmap"]

log = logging.getLogger("vestis.service")
STATIC = Path(__file__).resolve().parent / "static"
# the page loads nothing from elsewhere; blob: is the heat-map overlay and the preview
_PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"


@runtime_checkable
class AttributePredictor(Protocol):
    """What the service needs from a model (:class:`vestis.inference.predictor.Predictor` has it).

    Attributes:
        taxonomy: the attributes predicted.
        preprocessing: at least ``image_size`` (the side of the square input) and ``pad_value``.
        thresholds: calibrated per-value thresholds, attribute -> list (may be empty).
    """

    taxonomy: Taxonomy
    preprocessing: Mapping[str, Any]
    thresholds: Mapping[str, Sequence[float]]

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> ``uint8`` ``(B, 3, S, S)``."""
        ...

    def predict_arrays(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """``(B, 3, S, S)`` -> probabilities ``{attribute: (B, K)}``."""
        ...

    def decode(self, probs: Mapping[str, np.ndarray], calibrated: bool = True) -> list[dict[str, dict[str, Any]]]:
        """Probabilities -> per-image results (see :mod:`vestis.service.schemas`)."""
        ...

    def heatmap(self, image: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
        """Where the model looked: ``(height, width)`` in [0, 1] over the image (``size`` = (width, height))."""
        ...


# --- OpenAPI pieces ------------------------------------------------------------------------------------------
_IMAGE_BODY = {
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
_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "Body too large, too many images, or an image over the pixel cap."},
    415: {"model": ErrorResponse, "description": "Not multipart or JSON, or a file that is not a supported image."},
    422: {
        "model": ErrorResponse,
        "description": "Malformed body, bad base64, or an empty, truncated or corrupt image.",
    },
    500: {"model": ErrorResponse, "description": "The model failed on this request."},
    503: {"model": ErrorResponse, "description": "The model is not loaded yet."},
}

# colour map of the overlay: dark blue (ignored) -> cyan -> yellow -> red (looked here)
_CMAP_STOPS = np.array([0.0, 0.35, 0.65, 1.0])
_CMAP_RGB = np.array([[20, 30, 140], [0, 190, 230], [250, 220, 40], [230, 30, 30]], dtype=np.float64)


def render_heatmap(heat: np.ndarray, style: Literal["overlay", "gray"] = "overlay") -> bytes:
    """A heat-map ``(H, W)`` in [0, 1] as a PNG.

    Args:
        heat: the map; values outside [0, 1] are clipped and NaN counts as 0.
        style: ``gray``: 8-bit greyscale, value x 255; ``overlay``: RGBA colour map whose opacity grows with
            the value, to lay over the image.
    """
    v = np.nan_to_num(np.asarray(heat, dtype=np.float64), nan=0.0).clip(0.0, 1.0)
    if v.ndim != 2:
        raise ValueError(f"heat-map: expected a (H, W) array, got shape {v.shape}")
    if style == "gray":
        img = Image.fromarray(np.round(v * 255).astype(np.uint8), mode="L")
    else:
        rgb = np.stack([np.interp(v, _CMAP_STOPS, _CMAP_RGB[:, c]) for c in range(3)], axis=-1)  # (H, W, 3)
        alpha = 60 + 170 * v  # faint where the model did not look, never fully hiding the image
        rgba = np.concatenate([rgb, alpha[..., None]], axis=-1)  # (H, W, 4)
        img = Image.fromarray(np.round(rgba).astype(np.uint8), mode="RGBA")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    w, h = size
    scale = min(1.0, max_side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


class _Service:
    """The running state shared by the endpoints: the model thread, the batcher and readiness."""

    def __init__(self, predictor: AttributePredictor, config: ServiceConfig, metrics: ServiceMetrics) -> None:
        self.predictor = predictor
        self.config = config
        self.limits = config.limits
        self.metrics = metrics
        self.executor: ThreadPoolExecutor | None = None
        self.batcher: MicroBatcher[np.ndarray, dict[str, np.ndarray]] | None = None
        self.ready = False
        self.status = "starting"

    @property
    def input_size(self) -> int | None:
        """The model's input side, for reduced-scale JPEG decoding (``None``: decode at full size)."""
        try:
            return int(self.predictor.preprocessing["image_size"])
        except (KeyError, TypeError, ValueError):
            return None

    # --- stages ---------------------------------------------------------------------------------------------
    def decode(self, raws: list[Any]) -> tuple[list[DecodedImage], np.ndarray]:
        """Files -> images and the model input ``uint8`` ``(N, 3, S, S)`` (runs in the request thread pool)."""
        images = decode_images(raws, self.limits.max_pixels, self.input_size)
        return images, self.predictor.preprocess([d.image for d in images])

    def predict_batch(self, items: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """The batch function: items ``(3, S, S)`` -> one row ``{attribute: (K,)}`` per item (model thread)."""
        probs = self.predictor.predict_arrays(np.stack(items))  # {attr: (B, K)}
        return [{name: p[i] for name, p in probs.items()} for i in range(len(items))]

    async def predict(self, batch: np.ndarray) -> list[dict[str, np.ndarray]]:
        if self.batcher is None or not self.batcher.running:
            raise ServiceError(503, "not ready", "the model is not loaded yet; see /readyz")
        try:
            return await self.batcher.submit(list(batch))
        except Exception as e:
            log.exception("prediction failed")
            raise ServiceError(500, "prediction failed", f"{type(e).__name__}: {e}") from None

    def encode(self, images: list[DecodedImage], rows: list[dict[str, np.ndarray]], calibrated: bool) -> dict:
        """Rows -> the response body: the predictor's per-image results with the upload names and sizes."""
        try:
            probs = {name: np.stack([r[name] for r in rows]) for name in rows[0]}  # {attr: (N, K)}
            decoded = self.predictor.decode(probs, calibrated)
            results = [
                ImageResult(filename=d.filename, width=d.width, height=d.height, attributes=attrs)
                for d, attrs in zip(images, decoded, strict=True)
            ]
        except Exception as e:
            log.exception("decoding the predictions failed")
            raise ServiceError(500, "prediction failed", f"{type(e).__name__}: {e}") from None
        return {"results": [r.model_dump(exclude_none=True) for r in results]}

    async def heatmap(self, decoded: DecodedImage, style: Literal["overlay", "gray"]) -> bytes:
        """The map as a PNG at the upload's aspect ratio, its longer side capped at ``heatmap_max_side``."""
        if self.executor is None:
            raise ServiceError(503, "not ready", "the model is not loaded yet; see /readyz")
        size = _fit((decoded.width, decoded.height), self.config.heatmap_max_side)
        try:
            loop = asyncio.get_running_loop()
            heat = await loop.run_in_executor(self.executor, self.predictor.heatmap, decoded.image, size)
            return await run_in_threadpool(render_heatmap, heat, style)
        except Exception as e:
            log.exception("heat-map failed")
            raise ServiceError(500, "heat-map failed", f"{type(e).__name__}: {e}") from None

    # --- life cycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vestis-model")
        self.batcher = MicroBatcher(
            self.predict_batch,
            max_batch_size=self.config.max_batch_size,
            max_wait_s=self.config.max_wait_ms / 1000.0,
            executor=self.executor,
            on_batch=self.metrics.observe_batch,
        )
        self.metrics.track_queue(lambda: self.batcher.depth if self.batcher is not None else 0)
        await self.batcher.start()
        self.ready, self.status = (False, "warming up") if self.config.warmup else (True, "ready")
        self.metrics.ready.set(0 if self.config.warmup else 1)

    async def warm_up(self) -> None:
        """One batch through the model thread, outside the batcher (so it is not in the metrics)."""
        if not self.config.warmup or self.executor is None:
            return
        try:
            side = int(self.predictor.preprocessing["image_size"])
            pad = int(self.predictor.preprocessing.get("pad_value", 255))
            blank = Image.new("RGB", (side, side), (pad, pad, pad))
            batch = await run_in_threadpool(self.predictor.preprocess, [blank])
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.executor, self.predict_batch, list(batch))
        except Exception as e:
            self.status = f"warm-up failed: {type(e).__name__}: {e}"
            log.exception("warm-up failed")
            return
        self.ready, self.status = True, "ready"
        self.metrics.ready.set(1)

    async def stop(self) -> None:
        self.ready, self.status = False, "stopped"
        self.metrics.ready.set(0)
        if self.batcher is not None:
            await self.batcher.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        self.batcher, self.executor = None, None


def create_app(
    predictor: AttributePredictor, config: ServiceConfig | None = None, *, registry: CollectorRegistry | None = None
) -> FastAPI:
    """The FastAPI application serving ``predictor``.

    The model thread, the micro-batcher and the warm-up start with the application's lifespan (uvicorn,
    ``TestClient`` used as a context manager); ``/readyz`` answers 200 once the warm-up batch has run.

    Args:
        predictor: the model (see :class:`AttributePredictor`).
        config: batching and limits; defaults of :class:`ServiceConfig` when omitted.
        registry: the Prometheus registry for the metrics; a fresh one by default.
    """
    if not isinstance(predictor, AttributePredictor):
        members = ("taxonomy", "preprocessing", "thresholds", "preprocess", "predict_arrays", "decode", "heatmap")
        missing = [m for m in members if not hasattr(predictor, m)]
        raise VestisError(f"create_app: {type(predictor).__name__} is not a predictor; it lacks {', '.join(missing)}")
    config = config or ServiceConfig()
    metrics = ServiceMetrics(registry)
    service = _Service(predictor, config, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        warm = asyncio.create_task(service.warm_up(), name="vestis-warm-up")
        try:
            yield
        finally:
            warm.cancel()
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
    _add_error_handlers(app)

    @app.post(
        "/v1/attributes",
        response_model=AttributesResponse,
        response_model_exclude_none=True,
        responses=_ERRORS,
        openapi_extra=_IMAGE_BODY,
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
        images, batch = await run_in_threadpool(service.decode, raws)
        rows = await service.predict(batch)
        return service.encode(images, rows, calibrated)

    @app.post(
        "/v1/heatmap",
        response_class=Response,
        responses={
            200: {
                "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                "description": "The heat-map as a PNG the size of the image (longer side capped).",
            },
            **_ERRORS,
        },
        openapi_extra=_IMAGE_BODY,
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
        [decoded] = await run_in_threadpool(decode_images, raws, service.limits.max_pixels, service.input_size)
        png = await service.heatmap(decoded, style)
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
        )

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

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": _PAGE_CSP})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _add_error_handlers(app: FastAPI) -> None:
    async def service_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return exc.response()

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse({"error": "invalid request", "detail": jsonable_encoder(errors)}, status_code=422)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return JSONResponse(
            {"error": HTTPStatus(exc.status_code).phrase.lower(), "detail": exc.detail},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse({"error": "internal error", "detail": type(exc).__name__}, status_code=500)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
