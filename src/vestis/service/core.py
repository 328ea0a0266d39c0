"""The service's core: :class:`Service` runs the stages of a request (see :mod:`vestis.service.app`) for one
predictor, and :class:`AttributePredictor` is what it needs of a model. The routes (:mod:`vestis.service.
attribute_routes`, :mod:`vestis.service.outfit`) and :func:`vestis.service.app.create_app` build on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, asynccontextmanager
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool

from vestis.data.taxonomy import Taxonomy
from vestis.service.batching import MicroBatcher, Overloaded
from vestis.service.budget import MemoryBudget, trim_heap
from vestis.service.config import ServiceConfig
from vestis.service.decode_pool import DecodePool
from vestis.service.decoding import (
    DecodedImage,
    ImageHeader,
    RawImage,
    ServiceError,
    decode_image,
    read_headers,
)
from vestis.service.heatmap import fit_size, render_heatmap
from vestis.service.metrics import ServiceMetrics
from vestis.service.schemas import ImageResult

__all__ = ["AttributePredictor", "Service"]

log = logging.getLogger("vestis.service")
# decoded bytes after which an idle budget hands the freed heap back (a trim takes a few milliseconds), and
# how often at most a service with nothing in flight does so (the model's activations are freed heap too)
_TRIM_AFTER = 256 * 2**20
_TRIM_EVERY_S = 1.0


@runtime_checkable
class AttributePredictor(Protocol):
    """What the service needs from a model (:class:`vestis.inference.predictor.Predictor` has it).

    Attributes:
        taxonomy: the attributes predicted.
        preprocessing: at least ``image_size`` (the side of the square input) and ``pad_value``.
        thresholds: calibrated per-value thresholds, attribute -> list (may be empty).

    A predictor may also have ``heatmap(image, size=None) -> (height, width)`` in [0, 1] over the image (``size`` =
    (width, height)), where the model looked: ``POST /v1/heatmap`` exists only then. An embedding model
    (:class:`vestis.service.embedding.EmbeddingAttributes`) has none, and names itself in ``embedding``.
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


class Service:
    """The running state shared by the endpoints: the model thread, the batcher and readiness."""

    def __init__(self, predictor: AttributePredictor, config: ServiceConfig, metrics: ServiceMetrics) -> None:
        self.predictor = predictor
        self.config = config
        self.limits = config.limits
        self.metrics = metrics
        self.executor: ThreadPoolExecutor | None = None
        self.batcher: MicroBatcher[np.ndarray, dict[str, np.ndarray]] | None = None
        self.budget = MemoryBudget(config.decode_budget_bytes)
        self.decoder = DecodePool(config.decode_threads, config.decode_queue)
        self.wait_s = config.max_queue_wait_ms / 1000.0
        self.decoded_since_trim = 0
        self.last_trim = 0.0
        self.ready = False
        self.status = "starting"
        metrics.track_decode_bytes(lambda: self.budget.in_use)
        metrics.track_decode_pending(lambda: self.decoder.pending)

    @property
    def input_size(self) -> int | None:
        """The model's input side, for reduced-scale JPEG decoding (``None``: decode at full size)."""
        try:
            return int(self.predictor.preprocessing["image_size"])
        except (KeyError, TypeError, ValueError):
            return None

    # --- stages ---------------------------------------------------------------------------------------------
    def shed(self, reason: str, e: Overloaded) -> ServiceError:
        """The 503 answer to an overload (counted by reason)."""
        self.metrics.shed.labels(reason).inc()
        retry = str(int(e.retry_after))
        return ServiceError(503, "overloaded", f"{e}; retry in {retry} s", headers={"Retry-After": retry})

    def admit(self, n: int) -> AbstractContextManager[None]:
        """A place in the model's queue for ``n`` images while they are decoded, or a 503 now."""
        if self.batcher is None or not self.batcher.running:
            raise ServiceError(503, "not ready", "the model is not loaded yet; see /readyz")
        try:
            return self.batcher.admit(n)
        except Overloaded as e:
            raise self.shed("queue", e) from None

    async def headers(self, raws: list[RawImage]) -> list[ImageHeader]:
        """Sizes and decode memory from the headers; the pixel caps (in the request thread pool)."""
        return await run_in_threadpool(read_headers, raws, self.limits, self.input_size)

    @asynccontextmanager
    async def memory(self, nbytes: int) -> AsyncIterator[None]:
        """Hold ``nbytes`` of the decode budget, or answer 503 when it stays full for ``max_queue_wait_ms``.

        When the budget falls idle after more than :data:`_TRIM_AFTER` bytes were decoded, the freed heap is
        handed back to the system, so a flood does not leave the process at its peak size.
        """
        try:
            reservation = self.budget.reserve(nbytes, self.wait_s)
            await reservation.__aenter__()
        except Overloaded as e:
            raise self.shed("memory", e) from None
        try:
            yield
        finally:
            await reservation.__aexit__(None, None, None)
            self.decoded_since_trim += nbytes
            if self.budget.in_use == 0 and self.decoded_since_trim > _TRIM_AFTER:
                await self.trim()

    async def trim(self) -> None:
        """Hand the freed heap back to the system (in the thread pool; it takes milliseconds)."""
        self.decoded_since_trim = 0
        self.last_trim = time.monotonic()
        await run_in_threadpool(trim_heap)

    async def settle(self) -> None:
        """After a request: once nothing is in flight any more, give back what the busy period freed."""
        idle = self.budget.in_use == 0 and (self.batcher is None or self.batcher.in_flight == 0)
        if idle and time.monotonic() - self.last_trim > _TRIM_EVERY_S:
            await self.trim()

    async def in_decoder(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` in the decode pool, or a 503 now when the pool is full (shed for ``decode``)."""
        try:
            return await self.decoder.run(fn, *args)
        except Overloaded as e:
            raise self.shed("decode", e) from None

    async def decode_full(self, raw: RawImage) -> DecodedImage:
        """One file -> RGB at the reduced JPEG scale (the heat-map's image), in the decode pool."""
        return await self.in_decoder(decode_image, raw, self.limits.max_pixels, self.input_size)

    def _to_input(self, raw: RawImage) -> np.ndarray:
        decoded = decode_image(raw, self.limits.max_pixels, self.input_size)
        try:
            return self.predictor.preprocess([decoded.image])  # (1, 3, S, S)
        finally:
            decoded.image.close()  # the full-size pixels go now, not when the request ends

    async def decode(self, raws: list[RawImage], heads: list[ImageHeader]) -> np.ndarray:
        """Files -> the model input ``uint8`` ``(N, 3, S, S)``.

        One image at a time, each holding its decoded size of the budget only until it is reduced to the
        model input, so a request of many large images never holds more than one of them decoded. The decoding
        runs in the decode pool; the budget is held before the image enters it.
        """
        arrays = []
        for raw, head in zip(raws, heads, strict=True):
            async with self.memory(head.decoded_bytes):
                arrays.append(await self.in_decoder(self._to_input, raw))
        return np.concatenate(arrays)  # (N, 3, S, S)

    def predict_batch(self, items: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """The batch function: items ``(3, S, S)`` -> one row ``{attribute: (K,)}`` per item (model thread)."""
        probs = self.predictor.predict_arrays(np.stack(items))  # {attr: (B, K)}
        return [{name: p[i] for name, p in probs.items()} for i in range(len(items))]

    async def predict(self, batch: np.ndarray) -> list[dict[str, np.ndarray]]:
        """The model's rows for ``batch``, whose images were admitted by :meth:`admit`."""
        if self.batcher is None or not self.batcher.running:
            raise ServiceError(503, "not ready", "the model is not loaded yet; see /readyz")
        try:
            return await self.batcher.submit(list(batch), shed=False)
        except Exception as e:
            log.exception("prediction failed")
            raise ServiceError(500, "prediction failed", f"{type(e).__name__}: {e}") from None

    def encode(
        self, raws: list[RawImage], heads: list[ImageHeader], rows: list[dict[str, np.ndarray]], calibrated: bool
    ) -> dict:
        """Rows -> the response body: the predictor's per-image results with the upload names and sizes."""
        try:
            probs = {name: np.stack([r[name] for r in rows]) for name in rows[0]}  # {attr: (N, K)}
            decoded = self.predictor.decode(probs, calibrated)
            results = [
                ImageResult(filename=r.filename, width=h.width, height=h.height, attributes=attrs)
                for r, h, attrs in zip(raws, heads, decoded, strict=True)
            ]
        except Exception as e:
            log.exception("decoding the predictions failed")
            raise ServiceError(500, "prediction failed", f"{type(e).__name__}: {e}") from None
        return {"results": [r.model_dump(exclude_none=True) for r in results], "model": self.fingerprint}

    @property
    def fingerprint(self) -> str | None:
        """The served model's fingerprint; ``None`` when the predictor does not know it."""
        return getattr(self.predictor, "fingerprint", None)

    async def heatmap(self, decoded: DecodedImage, style: Literal["overlay", "gray"]) -> bytes:
        """The map as a PNG at the upload's aspect ratio, its longer side capped at ``heatmap_max_side``."""
        if self.executor is None:
            raise ServiceError(503, "not ready", "the model is not loaded yet; see /readyz")
        size = fit_size((decoded.width, decoded.height), self.config.heatmap_max_side)
        try:
            loop = asyncio.get_running_loop()
            heat = await loop.run_in_executor(self.executor, self.predictor.heatmap, decoded.image, size)
            return await run_in_threadpool(render_heatmap, heat, style)
        except Exception as e:
            log.exception("heat-map failed")
            raise ServiceError(500, "heat-map failed", f"{type(e).__name__}: {e}") from None

    # --- life cycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.decoder.start()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vestis-model")
        self.batcher = MicroBatcher(
            self.predict_batch,
            max_batch_size=self.config.max_batch_size,
            max_wait_s=self.config.max_wait_ms / 1000.0,
            executor=self.executor,
            on_batch=self.metrics.observe_batch,
            max_queue_wait_s=self.wait_s,
            close=self.config.batch_close,
        )
        self.metrics.track_queue(lambda: self.batcher.depth if self.batcher is not None else 0)
        self.metrics.track_wait(lambda: self.batcher.estimated_wait(0) if self.batcher is not None else 0.0)
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
        self.decoder.stop()
        self.batcher, self.executor = None, None
