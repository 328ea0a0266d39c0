"""Settings of the service, importable without FastAPI (the CLI reads its defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass

from vestis.errors import VestisError
from vestis.service.batching import CLOSE_POLICIES

__all__ = ["Limits", "ServiceConfig"]


@dataclass(frozen=True)
class Limits:
    """What one request may carry.

    Attributes:
        max_upload_bytes: the request body, in bytes (multipart framing and base64 included).
        max_pixels: width x height of any one image, checked from its header before decoding.
        max_images: images in one request.
        max_request_pixels: width x height summed over the images of one request, checked from the headers
            before any is decoded (a small body of highly compressible images must not decode to gigabytes).
        max_json_depth: nesting of arrays and objects in a JSON body, checked before parsing (the parser
            recurses; a deeply nested body would exhaust the stack).
    """

    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    max_images: int = 16
    max_request_pixels: int = 100_000_000
    max_json_depth: int = 32


@dataclass(frozen=True)
class ServiceConfig:
    """How the service batches and what it accepts (the ``vestis serve`` options).

    Attributes:
        max_batch_size: the most images in one model call; 1 turns micro-batching off (default 16).
        max_wait_ms: how long the first image of a batch may wait for others (default 10 ms).
        batch_close: ``early`` (default): a batch runs as soon as no other admitted request is still decoding
            its images, so a lone request waits for nothing; ``deadline``: it waits up to ``max_wait_ms`` for any
            request (:class:`~vestis.service.batching.MicroBatcher`). The defaults come from ``bench/serve.py``.
        max_upload_mb: the largest request body, in MiB.
        max_pixels: the largest image (width x height), checked before decoding.
        max_images: the most images in one request.
        max_request_pixels: the most pixels (width x height summed) in one request, checked before decoding;
            the default lets through 16 photos of 6 MP.
        max_json_depth: the deepest nesting of a JSON body (a valid request needs 2).
        decode_budget_mb: decoded pixel memory, in MiB, that all requests together may hold at once; an image
            waits for its share (at most ``max_queue_wait_ms``, then 503). An image larger than the whole
            budget is decoded alone.
        max_queue_wait_ms: load shedding: a request whose images would wait longer than this for the model
            (or for decode memory) is answered 503 with ``Retry-After`` at once, so accepted requests keep a
            bounded latency under overload.
        decode_workers: threads that decode uploads (:mod:`vestis.service.decode_pool`); ``None``: one per CPU
            core this process may use, at least 2 and at most 16.
        decode_queue: images that may wait for a decode thread when all are busy; one more is answered 503 with
            ``Retry-After`` at once.
        heatmap_max_side: heat-maps are computed at most this many pixels on their longer side.
        warmup: run one batch before reporting ready (the first real request then pays no start-up cost).
    """

    max_batch_size: int = 16
    max_wait_ms: float = 10.0
    batch_close: str = "early"
    max_upload_mb: float = 20.0
    max_pixels: int = 40_000_000
    max_images: int = 16
    max_request_pixels: int = 100_000_000
    max_json_depth: int = 32
    decode_budget_mb: float = 1024.0
    max_queue_wait_ms: float = 2000.0
    decode_workers: int | None = None
    decode_queue: int = 64
    heatmap_max_side: int = 512
    warmup: bool = True

    def __post_init__(self) -> None:
        checks = {
            "max_batch_size": self.max_batch_size >= 1,
            "max_wait_ms": self.max_wait_ms >= 0,
            "batch_close": self.batch_close in CLOSE_POLICIES,
            "max_upload_mb": self.max_upload_mb > 0,
            "max_pixels": self.max_pixels >= 1,
            "max_images": self.max_images >= 1,
            "max_request_pixels": self.max_request_pixels >= 1,
            "max_json_depth": self.max_json_depth >= 2,
            "decode_budget_mb": self.decode_budget_mb > 0,
            "max_queue_wait_ms": self.max_queue_wait_ms > 0,
            "heatmap_max_side": self.heatmap_max_side >= 1,
            "decode_workers": self.decode_workers is None or self.decode_workers >= 1,
            "decode_queue": self.decode_queue >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise VestisError(
                "service: "
                + "; ".join(
                    f"{k}: expected {_EXPECTED.get(k, 'a positive value')}, got {getattr(self, k)!r}" for k in bad
                )
            )

    @property
    def limits(self) -> Limits:
        return Limits(
            max_upload_bytes=int(self.max_upload_mb * 2**20),
            max_pixels=self.max_pixels,
            max_images=self.max_images,
            max_request_pixels=self.max_request_pixels,
            max_json_depth=self.max_json_depth,
        )

    @property
    def decode_threads(self) -> int:
        """``decode_workers``, or the default from the cores when it is ``None``."""
        from vestis.service.decode_pool import default_decode_workers

        return self.decode_workers if self.decode_workers is not None else default_decode_workers()

    @property
    def decode_budget_bytes(self) -> int:
        return int(self.decode_budget_mb * 2**20)


_EXPECTED = {
    "batch_close": " or ".join(CLOSE_POLICIES),
    "max_json_depth": "at least 2 (a request is an object holding a list)",
    "decode_workers": "at least 1 thread, or None for one per core",
    "decode_queue": "0 or more images",
}
