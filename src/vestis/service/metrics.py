"""Prometheus metrics of the service, in a registry of its own (two apps in one process do not collide).

=========================================  =========  =====================================================
name                                       type       labels / meaning
=========================================  =========  =====================================================
``vestis_http_requests_total``             counter    ``method``, ``route`` (the path template), ``status``
``vestis_http_request_duration_seconds``   histogram  ``method``, ``route``: time to the end of the response
``vestis_batch_size``                      histogram  images per model call
``vestis_batch_duration_seconds``          histogram  seconds per model call
``vestis_batch_failures_total``            counter    model calls that raised
``vestis_images_total``                    counter    images sent to the model
``vestis_queue_depth``                     gauge      images waiting for a batch
``vestis_queue_wait_seconds``              histogram  per image: from joining the queue to its batch's start
``vestis_estimated_wait_seconds``          gauge      what a new image would wait now (the shedding signal)
``vestis_shed_requests_total``             counter    ``reason``: refused with 503 + Retry-After, ``queue``
                                                      (the model is too far behind), ``memory`` (the
                                                      decode budget stayed full) or ``decode`` (every
                                                      decode thread and queue place was taken)
``vestis_decode_bytes_in_flight``          gauge      decoded image bytes held by requests right now
``vestis_decode_pending``                  gauge      images decoding or waiting for a decode thread
``vestis_client_disconnects_total``        counter    clients that went away while their body was read
``vestis_ready``                           gauge      1 once the model is loaded and warmed up
``vestis_model_info``                      gauge      always 1; ``fingerprint`` (``sha256:...``, ``unknown``
                                                      for a file without one), ``name`` (the model, e.g.
                                                      ``a3``), ``backend`` (``torch`` or ``onnx``): which
                                                      model answered, to join with the other series
=========================================  =========  =====================================================
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vestis.service.batching import BatchStats

__all__ = ["CONTENT_TYPE", "MetricsMiddleware", "ServiceMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """The collectors (see the module docstring) and their registry.

    Args:
        registry: where to register; a fresh :class:`CollectorRegistry` by default.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "vestis_http_requests",
            "HTTP requests by method, route and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "vestis_http_request_duration_seconds",
            "HTTP request latency in seconds.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram("vestis_batch_size", "Images per model call.", buckets=_BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram(
            "vestis_batch_duration_seconds", "Seconds per model call.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_failures = Counter("vestis_batch_failures", "Model calls that raised.", registry=r)
        self.images = Counter("vestis_images", "Images sent to the model.", registry=r)
        self.queue_depth = Gauge("vestis_queue_depth", "Images waiting for a batch.", registry=r)
        self.queue_wait = Histogram(
            "vestis_queue_wait_seconds",
            "Seconds an image waited in the queue for its batch.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.estimated_wait = Gauge(
            "vestis_estimated_wait_seconds",
            "Seconds a new image would wait to be finished now (images in flight over the measured throughput).",
            registry=r,
        )
        self.shed = Counter(
            "vestis_shed_requests",
            "Requests refused with 503 and Retry-After, by reason (queue: the model is behind; memory: "
            "the decode budget stayed full; decode: the decode pool was full).",
            ["reason"],
            registry=r,
        )
        for reason in ("queue", "memory", "decode"):  # present at 0 from the start, so a rate is defined
            self.shed.labels(reason)
        self.decode_bytes = Gauge(
            "vestis_decode_bytes_in_flight", "Decoded image bytes held by requests right now.", registry=r
        )
        self.decode_pending = Gauge(
            "vestis_decode_pending", "Images decoding or waiting for a decode thread right now.", registry=r
        )
        self.client_disconnects = Counter(
            "vestis_client_disconnects", "Clients that went away while their request body was read.", registry=r
        )
        self.ready = Gauge("vestis_ready", "1 once the model is loaded and warmed up.", registry=r)
        self.model_info = Gauge(
            "vestis_model_info",
            "The model served (always 1): its fingerprint, name and backend.",
            ["fingerprint", "name", "backend"],
            registry=r,
        )

    def set_model(self, fingerprint: str | None, name: str | None, backend: str | None) -> None:
        """Name the model served in ``vestis_model_info`` (replacing any earlier one: one model per app)."""
        self.model_info.clear()
        self.model_info.labels(fingerprint or "unknown", name or "unknown", backend or "unknown").set(1)

    def observe_batch(self, stats: BatchStats) -> None:
        """Record one model call (the micro-batcher's ``on_batch``)."""
        self.batch_size.observe(stats.size)
        self.batch_seconds.observe(stats.seconds)
        self.images.inc(stats.size)
        for wait in stats.queue_waits:
            self.queue_wait.observe(wait)
        if stats.failed:
            self.batch_failures.inc()

    def track_queue(self, depth: Callable[[], int]) -> None:
        """Read the queue depth from ``depth`` at every scrape."""
        self.queue_depth.set_function(depth)

    def track_wait(self, wait: Callable[[], float]) -> None:
        """Read the estimated wait from ``wait`` at every scrape."""
        self.estimated_wait.set_function(wait)

    def track_decode_bytes(self, in_flight: Callable[[], int]) -> None:
        """Read the decoded bytes in flight from ``in_flight`` at every scrape."""
        self.decode_bytes.set_function(in_flight)

    def track_decode_pending(self, pending: Callable[[], int]) -> None:
        """Read the images in the decode pool from ``pending`` at every scrape."""
        self.decode_pending.set_function(pending)

    def render(self) -> bytes:
        """The Prometheus text exposition of every collector."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Count requests and time them, labelled by the route's path template (bounded cardinality).

    Args:
        app: the application inside.
        metrics: where to record.
        routes: the application's routes, to label requests answered before routing (a 413 from
            :class:`~vestis.service.decoding.BodyLimitMiddleware`); the router's match is used otherwise.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            route = next((r for r in self.routes if r.matches(scope)[0] != Match.NONE), None)
        return getattr(route, "path", None) or "<unmatched>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500  # an exception escaping the app becomes a 500 further out

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = self._route(scope)  # unmatched paths share one label
            method = scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - t0)
