"""An outfit pipeline over HTTP: ``POST /v1/outfit`` and ``GET /v1/model``.

Mounted by :func:`vestis.service.app.create_app` when it is given a
:class:`~vestis.inference.pipeline.OutfitPipeline` (``vestis serve outfit.vestis``). The stages are the attribute
endpoints' ones; the pipeline (detector, crops, stage-2 model) is the model and never sees HTTP::

    read      (multipart ``file`` or JSON base64: exactly one image; 413 / 415 / 422 as the other endpoints)
    headers   (the pixel caps, before decoding)
    admit     (503 + Retry-After when the pipeline is too far behind)
    decode    (the image -> RGB at full size: boxes are in the upload's pixels, and crops need them)
    batch     (MicroBatcher: images of concurrent requests -> one ``pipeline.predict`` call)
    predict   (OutfitPipeline.predict, in the one model thread)
    encode    (OutfitResult.to_dict(), named by the upload's file name)

The decoded image holds its share of the decode budget until its garments are found (the crops are cut from its
full-size pixels). The batch owns the image: a request cancelled by its client (a disconnect) stops waiting, but its
image stays open and its budget held until the model thread has finished the batch it is in.
The endpoints of a single-product model (``/v1/attributes``, ``/v1/heatmap``,
``/v1/taxonomy``) answer 404 with a pointer to ``/v1/outfit``; a classifier's server answers ``/v1/outfit`` with
a 404 that says it serves no outfit pipeline.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from vestis.service.core import Service
from vestis.service.decoding import RawImage, ServiceError, decode_image, read_images
from vestis.service.schemas import ERROR_RESPONSES, IMAGE_REQUEST_BODY

__all__ = [
    "OutfitInfo",
    "OutfitService",
    "add_no_outfit_route",
    "add_outfit_routes",
    "describe_pipeline",
    "is_outfit_pipeline",
]

log = logging.getLogger("vestis.service")
_WARMUP_SIDE = 64  # the warm-up image; the detector letterboxes any size to its own
# the single-product endpoints, answered 404 with a pointer when an outfit pipeline is served
_SINGLE_PRODUCT = {
    "/v1/attributes": "POST",
    "/v1/heatmap": "POST",
    "/v1/taxonomy": "GET",
}


def is_outfit_pipeline(model: Any) -> bool:
    """Whether ``model`` is an :class:`~vestis.inference.pipeline.OutfitPipeline` (a detector and a stage-2 model)."""
    try:
        from vestis.inference.pipeline import OutfitPipeline
    except ImportError:  # a vestis without the pipeline serves no outfit
        return False
    return isinstance(model, OutfitPipeline)


class PartInfo(BaseModel):
    """One of the two models of the pipeline."""

    fingerprint: str | None = Field(None, description="Its fingerprint (sha256:...); null when unknown.")
    image_size: int = Field(..., description="The side of its square (letterboxed) input, in pixels.")
    labels: list[str] = Field(..., description="The detector's object types, or the stage-2 model's categories.")
    attributes: list[str] = Field(default_factory=list, description="Stage 2: its attribute outputs, `attr=value`.")


class OutfitInfo(BaseModel):
    """What the server runs: an outfit pipeline and its two models."""

    kind: str = Field("outfit", description="`outfit`: a detector and a stage-2 model, POST /v1/outfit.")
    model: str | None = Field(None, description="The pipeline's fingerprint, as in every /v1/outfit answer.")
    runtime: str = Field(..., description="torch (a pipeline file) or onnx (an exported folder).")
    settings: dict[str, Any] = Field(..., description="min_score, nms_iou, max_garments, margin in use.")
    detector: PartInfo
    stage2: PartInfo


class GarmentBody(BaseModel):
    """One garment found in the image (see :class:`vestis.inference.outfit_results.Garment`)."""

    box: list[float] = Field(..., description="x0, y0, x1, y1 in the uploaded image's pixels.")
    object_type: str = Field(..., description="The detector's class (upper-body, lower-body, full-body, footwear).")
    object_score: float
    category: str
    category_score: float
    category_top: list[Any] = Field(..., description="The best categories as [value, score] pairs.")
    attributes: dict[str, list[Any]] = Field(..., description="attribute -> [value, score] pairs predicted.")
    suppressed: list[str] = Field(..., description="Attribute values removed because they do not apply.")


class OutfitBody(BaseModel):
    """The garments of one image (``OutfitResult.to_dict()``)."""

    image: str | None = Field(None, description="The uploaded file's name (multipart requests).")
    width: int
    height: int
    garments: list[GarmentBody]
    model: str | None = Field(None, description="The pipeline's fingerprint.")


def describe_pipeline(pipeline: Any) -> OutfitInfo:
    """The ``GET /v1/model`` answer for ``pipeline``: its fingerprint, runtime and settings, and both models."""
    spec = pipeline.spec
    return OutfitInfo(
        model=pipeline.fingerprint,
        runtime=pipeline.runtime,
        settings=pipeline.settings.to_dict(),
        detector=PartInfo(
            fingerprint=spec.detector_fingerprint, image_size=spec.detector_size, labels=list(spec.classes)
        ),
        stage2=PartInfo(
            fingerprint=spec.stage2_fingerprint,
            image_size=spec.stage2_size,
            labels=list(spec.layout.categories),
            attributes=[f"{a}={v}" for a, v in spec.layout.attributes],
        ),
    )


class OutfitService(Service):
    """The running state of an outfit server: the model thread, the batcher of images, readiness.

    The batch items are decoded RGB images and the results are ``OutfitResult`` objects; the decode budget,
    admission and shedding are the attribute service's.
    """

    @property
    def input_size(self) -> int | None:
        """``None``: images are decoded at full size (boxes in the upload's pixels, crops at full resolution)."""
        return None

    @property
    def fingerprint(self) -> str | None:
        return getattr(self.predictor, "fingerprint", None)

    @property
    def model_name(self) -> str:
        """``outfit`` (the metrics' ``vestis_model_info`` name; the fingerprint tells the pipelines apart)."""
        return "outfit"

    def predict_batch(self, items: list[Any]) -> list[Any]:
        """The batch function: RGB images -> one ``OutfitResult`` each (model thread)."""
        results = list(self.predictor.predict(items))
        if len(results) != len(items):
            raise RuntimeError(f"the pipeline gave {len(results)} results for {len(items)} images")
        return results

    async def warm_up(self) -> None:
        """One blank image through the pipeline in the model thread, outside the batcher."""
        if not self.config.warmup or self.executor is None:
            return
        blank = Image.new("RGB", (_WARMUP_SIDE, _WARMUP_SIDE), (255, 255, 255))
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.executor, self.predict_batch, [blank])
        except Exception as e:
            self.status = f"warm-up failed: {type(e).__name__}: {e}"
            log.exception("warm-up failed")
            return
        self.ready, self.status = True, "ready"
        self.metrics.ready.set(1)

    async def _predict(self, image: Image.Image) -> Any:
        """The ``OutfitResult`` of one decoded image, through the batcher (admitted by :meth:`admit`)."""
        assert self.batcher is not None  # admit() answered 503 otherwise
        try:
            [result] = await self.batcher.submit([image], shed=False)
        except Exception as e:
            log.exception("outfit prediction failed")
            raise ServiceError(500, "prediction failed", f"{type(e).__name__}: {e}") from None
        return result

    async def _decode_and_predict(self, raw: RawImage, nbytes: int) -> Any:
        """Decode (holding ``nbytes`` of the budget), predict, then close the image and free the budget."""
        async with self.memory(nbytes):  # held until the crops are cut from the pixels
            decoded = await run_in_threadpool(decode_image, raw, self.limits.max_pixels, None)
            try:
                return await self._predict(decoded.image)
            finally:
                decoded.image.close()

    async def outfit(self, raw: RawImage) -> dict[str, Any]:
        """The garments of one uploaded image, as the response body."""
        [head] = await self.headers([raw])  # a request that can never be served gets its 4xx, not a 503
        try:
            with self.admit(1):
                # the image belongs to its batch: a client that goes away cancels this request, not the work, so the
                # pixels are closed and the budget freed only once the model thread is done with them
                work = asyncio.ensure_future(self._decode_and_predict(raw, head.decoded_bytes))
                result = await asyncio.shield(work)
        finally:
            await self.settle()
        try:
            body = dict(result.to_dict())
        except Exception as e:
            log.exception("encoding the garments failed")
            raise ServiceError(500, "prediction failed", f"{type(e).__name__}: {e}") from None
        body["image"] = raw.filename
        body["width"], body["height"] = head.width, head.height
        body["model"] = self.fingerprint
        return body


def add_outfit_routes(app: FastAPI, service: OutfitService) -> None:
    """``POST /v1/outfit``, ``GET /v1/model``, and a 404 with a pointer on the single-product endpoints."""
    info = describe_pipeline(service.predictor)

    @app.post(
        "/v1/outfit",
        response_model=OutfitBody,
        responses=ERROR_RESPONSES,
        openapi_extra=IMAGE_REQUEST_BODY,
        summary="The garments of an outfit photo: box, object type, category and attributes of each",
        tags=["predict"],
    )
    async def outfit(request: Request) -> JSONResponse:
        raws = await read_images(request, service.limits)
        if len(raws) != 1:
            raise ServiceError(422, "one image expected", f"/v1/outfit takes exactly one image, got {len(raws)}")
        return JSONResponse(await service.outfit(raws[0]))

    @app.get("/v1/model", response_model=OutfitInfo, summary="The pipeline served and its two models", tags=["model"])
    async def model() -> OutfitInfo:
        return info

    def single_product(path: str) -> Any:
        async def unsupported() -> JSONResponse:
            detail = (
                f"{path} takes a single-product model; this server runs an outfit pipeline (a detector and a "
                "stage-2 model): POST the image to /v1/outfit, see GET /v1/model"
            )
            return JSONResponse({"error": "not supported by an outfit pipeline", "detail": detail}, status_code=404)

        return unsupported

    for path, method in _SINGLE_PRODUCT.items():
        app.add_api_route(path, single_product(path), methods=[method], include_in_schema=False)


def add_no_outfit_route(app: FastAPI) -> None:
    """A single-product server's answer to ``/v1/outfit``: 404 saying what to serve instead (not in the schema)."""

    async def no_outfit() -> JSONResponse:
        detail = (
            "this server runs a single-product model: POST the image to /v1/attributes; /v1/outfit needs an "
            "outfit pipeline (`vestis pipeline DETECTOR.ckpt STAGE2.ckpt --out outfit.vestis`, then "
            "`vestis serve outfit.vestis`)"
        )
        return JSONResponse({"error": "not an outfit pipeline", "detail": detail}, status_code=404)

    app.add_api_route("/v1/outfit", no_outfit, methods=["POST"], include_in_schema=False)
