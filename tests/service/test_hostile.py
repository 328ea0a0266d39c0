"""The service in-process against hostile requests: deep JSON, pixel floods, overload and clients that leave.

Each test states the bound it checks and runs in about a second on a small predictor whose output is known.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import platform
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

import vestis.service.core as service_app
from tests.service.conftest import (
    assert_result,
    b64,
    expected,
    image_bytes,
    metric_samples,
    one_bit_png,
    wait_ready,
)
from vestis.service import ServiceConfig, create_app
from vestis.service.budget import trim_heap


def _serve(app: Any, body: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
    """Run ``body`` against ``app`` in-process with its lifespan, once it is ready."""

    async def main() -> Any:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
                deadline = time.monotonic() + 10
                while (await c.get("/readyz")).status_code != 200:
                    assert time.monotonic() < deadline, "not ready"
                    await asyncio.sleep(0.01)
                return await body(c)

    return asyncio.run(main())


def _png(i: int) -> dict[str, Any]:
    return {"file": (f"{i}.png", image_bytes((10 * (i % 25), 200, 30)), "image/png")}


# --- item 5: JSON nesting ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"images": ' + b"[" * 2000 + b"]" * 2000 + b"}",
        b'{"a": ' * 5000 + b"1" + b"}" * 5000,
        b"[" * 100_000,  # not even closed
    ],
    ids=["bare-list", "inside-images", "objects", "unclosed"],
)
def test_json_nested_beyond_the_cap_is_a_422_and_the_service_goes_on(predictor, body):
    with TestClient(create_app(predictor, ServiceConfig(max_wait_ms=1))) as c:
        wait_ready(c)
        res = c.post("/v1/attributes", content=body, headers={"content-type": "application/json"})
        assert res.status_code == 422, res.text
        assert res.json() == {
            "error": "invalid JSON",
            "detail": 'nested more than 32 levels deep; a request is {"images": ["<base64>", ...]}',
        }
        ok = c.post("/v1/attributes", json={"images": [b64(image_bytes((200, 10, 10)))]})
        assert ok.status_code == 200


# --- item 6: pixels and memory ------------------------------------------------------------------------------------
class _DecodeSpy:
    """Wraps the service's decoder: counts calls and the most running at once; can hold them at a gate."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.running = 0
        self.most = 0
        self.gate: threading.Event | None = None
        self._lock = threading.Lock()
        real = service_app.decode_image

        def spy(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls += 1
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                if self.gate is not None:
                    self.gate.wait(5)
                time.sleep(0.005)  # long enough for concurrent decodes to overlap if they may
                return real(*args, **kwargs)
            finally:
                with self._lock:
                    self.running -= 1

        monkeypatch.setattr(service_app, "decode_image", spy)


def test_the_pixel_total_of_a_request_is_capped_before_any_decoding(predictor, monkeypatch):
    spy = _DecodeSpy(monkeypatch)
    config = ServiceConfig(max_wait_ms=1, max_pixels=10_000, max_request_pixels=15_000)
    with TestClient(create_app(predictor, config)) as c:
        wait_ready(c)
        two = [("file", (f"{i}.png", one_bit_png(100), "image/png")) for i in range(2)]  # 2 x 10,000 pixels
        res = c.post("/v1/attributes", files=two)
        assert res.status_code == 413 and res.json()["error"] == "too many pixels", res.text
        assert spy.calls == 0 and predictor.calls == [1]  # only the warm-up reached the model
        assert c.post("/v1/attributes", files=two[:1]).status_code == 200 and spy.calls == 1


def test_concurrent_requests_hold_no_more_decoded_memory_than_the_budget(predictor, monkeypatch):
    spy = _DecodeSpy(monkeypatch)
    side = 500  # a one-bit 500 x 500 PNG holds 250,000 x (1 + 4) bytes while it is decoded to RGB
    per_image = side * side * 5
    config = ServiceConfig(
        max_wait_ms=1, max_pixels=10**6, decode_budget_mb=2.5 * per_image / 2**20, max_queue_wait_ms=10_000
    )
    app = create_app(predictor, config)
    files = [("file", (f"{i}.png", one_bit_png(side), "image/png")) for i in range(4)]

    async def body(c: httpx.AsyncClient) -> tuple[list[httpx.Response], dict]:
        responses = await asyncio.gather(*[c.post("/v1/attributes", files=files) for _ in range(6)])
        return responses, metric_samples((await c.get("/metrics")).text)

    responses, samples = _serve(app, body)
    assert [r.status_code for r in responses] == [200] * 6
    assert all(len(r.json()["results"]) == 4 for r in responses)
    budget = app.state.service.budget
    # two images fit in 2.5 images' worth; 24 images from 6 requests at once never had a third decoded beside them
    assert budget.peak == 2 * per_image and budget.in_use == 0
    assert spy.calls == 24 and spy.most == 2
    assert samples[("vestis_decode_bytes_in_flight", ())] == 0


def test_a_budget_that_stays_full_is_a_503_with_retry_after(predictor, monkeypatch):
    spy = _DecodeSpy(monkeypatch)
    spy.gate = threading.Event()
    side = 500
    config = ServiceConfig(max_wait_ms=1, max_pixels=10**6, decode_budget_mb=1.5 * side * side * 5 / 2**20)
    config = dataclasses.replace(config, max_queue_wait_ms=100)
    app = create_app(predictor, config)
    one = {"file": ("big.png", one_bit_png(side), "image/png")}

    async def body(c: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response, dict]:
        first = asyncio.create_task(c.post("/v1/attributes", files=one))  # decodes, held at the gate
        while spy.running == 0:
            await asyncio.sleep(0.005)
        second = await c.post("/v1/attributes", files=one)  # its share never frees within 100 ms
        spy.gate.set()
        return await first, second, metric_samples((await c.get("/metrics")).text)

    first, second, samples = _serve(app, body)
    assert first.status_code == 200
    assert second.status_code == 503 and second.json()["error"] == "overloaded", second.text
    assert second.headers["retry-after"] == "1" and "bytes held" in second.json()["detail"]
    assert samples[("vestis_shed_requests_total", (("reason", "memory"),))] == 1
    assert samples[("vestis_shed_requests_total", (("reason", "queue"),))] == 0


# --- item 7: load shedding ----------------------------------------------------------------------------------------
def test_an_overload_is_shed_with_retry_after_and_the_accepted_wait_a_bounded_time(predictor):
    predictor.delay = 0.05  # 50 ms per model call, two images per call
    bound = 0.25
    app = create_app(predictor, ServiceConfig(max_batch_size=2, max_wait_ms=0, max_queue_wait_ms=bound * 1000))

    async def body(c: httpx.AsyncClient) -> tuple[list[tuple[httpx.Response, float]], dict]:
        # the throughput is measured: two batches of two, then one alone
        warm = await asyncio.gather(*[c.post("/v1/attributes", files=_png(0)) for _ in range(4)])
        assert [r.status_code for r in warm] == [200] * 4
        assert (await c.post("/v1/attributes", files=_png(0))).status_code == 200

        async def one(i: int) -> tuple[httpx.Response, float]:
            t0 = time.perf_counter()
            res = await c.post("/v1/attributes", files=_png(i))
            return res, time.perf_counter() - t0

        results = await asyncio.gather(*[one(i) for i in range(1, 41)])
        return results, metric_samples((await c.get("/metrics")).text)

    results, samples = _serve(app, body)
    ok = [(i, r, t) for i, (r, t) in enumerate(results, 1) if r.status_code == 200]
    shed = [r for r, _ in results if r.status_code == 503]
    assert len(ok) + len(shed) == 40 and len(shed) >= 10 and len(ok) >= 2, [r.status_code for r, _ in results]
    for r in shed:
        assert r.json()["error"] == "overloaded" and int(r.headers["retry-after"]) >= 1
    for i, r, seconds in ok:
        assert_result(r.json()["results"][0]["attributes"], expected((10 * (i % 25), 200, 30)))
        assert seconds < bound + 1.0  # the bound, one model call and the event loop's slack
    assert samples[("vestis_shed_requests_total", (("reason", "queue"),))] == len(shed)
    assert samples[("vestis_estimated_wait_seconds", ())] == 0  # nothing in flight any more
    waits = samples[("vestis_queue_wait_seconds_count", ())]
    assert waits == len(ok) + 5  # every image that reached the model, the timing requests included
    assert samples[("vestis_queue_wait_seconds_bucket", (("le", "1.0"),))] == waits  # none waited a second
    post = (("method", "POST"), ("route", "/v1/attributes"))
    assert samples[("vestis_http_requests_total", (*post, ("status", "503")))] == len(shed)


# --- item 8: clients that go away --------------------------------------------------------------------------------
def _disconnecting(content_type: bytes, first_chunk: bytes) -> tuple[dict[str, Any], Callable[[], Awaitable[dict]]]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/attributes",
        "raw_path": b"/v1/attributes",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), (b"content-type", content_type), (b"content-length", b"100000")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }
    messages = [{"type": "http.request", "body": first_chunk, "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return scope, receive


@pytest.mark.parametrize(
    ("content_type", "first_chunk"),
    [
        (b"application/json", b'{"images": ["iVBORw0KGgo'),
        (
            b"multipart/form-data; boundary=xyz",
            b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"',
        ),
    ],
    ids=["json", "multipart"],
)
def test_a_client_leaving_during_its_body_is_counted_not_a_traceback(predictor, caplog, content_type, first_chunk):
    app = create_app(predictor)
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def main() -> str:
        for _ in range(2):
            scope, receive = _disconnecting(content_type, first_chunk)
            await app(scope, receive, send)  # before: the exception escaped the app, and uvicorn logged it
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            return (await c.get("/metrics")).text

    with caplog.at_level(logging.INFO):
        text = asyncio.run(main())
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []
    gone = [r.getMessage() for r in caplog.records if "went away" in r.getMessage()]
    assert gone == ["127.0.0.1:40000 went away while the body of POST /v1/attributes was read"] * 2
    samples = metric_samples(text)
    assert samples[("vestis_client_disconnects_total", ())] == 2
    post = (("method", "POST"), ("route", "/v1/attributes"))
    assert samples[("vestis_http_requests_total", (*post, ("status", "499")))] == 2


def test_the_freed_heap_is_handed_back_once_nothing_is_in_flight(predictor, monkeypatch):
    trims: list[float] = []
    monkeypatch.setattr(service_app, "trim_heap", lambda: trims.append(time.monotonic()) or True)
    monkeypatch.setattr(service_app, "_TRIM_EVERY_S", 60.0)
    with TestClient(create_app(predictor, ServiceConfig(max_wait_ms=1))) as c:
        wait_ready(c)
        for _ in range(3):  # back to back: one trim, then none within the next minute
            assert c.post("/v1/attributes", json={"images": [b64(image_bytes((9, 9, 9)))]}).status_code == 200
        assert len(trims) == 1
        c.app.state.service.last_trim -= 61.0  # as if a minute had passed
        assert c.post("/v1/attributes", json={"images": [b64(image_bytes((9, 9, 9)))]}).status_code == 200
        assert len(trims) == 2


def test_trim_heap_runs_where_glibc_is():
    assert trim_heap() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
