"""The service behind a real uvicorn on 127.0.0.1, under a bounded hostile load.

What only a real server shows: whether a connection survives a bad request (keep-alive), and what the
server's log says when clients leave mid-body. Every client call has a timeout, every load a fixed count,
and the server stops itself when the test ends.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import httpx
import pytest

from tests.service.conftest import LoopbackServer, b64, image_bytes, metric_samples, one_bit_png
from vestis.service import ServiceConfig, create_app

POST = (("method", "POST"), ("route", "/v1/attributes"))


def _trouble(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log records a person on call would have to read: warnings, errors and anything with a traceback."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


def _wait_for(url: str, name: str, value: float, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        samples = metric_samples(httpx.get(f"{url}/metrics", timeout=5).text)
        if samples.get(name) == value or time.monotonic() > deadline:
            return samples
        time.sleep(0.02)


def test_deep_json_is_a_422_on_the_same_kept_alive_connection(predictor, caplog):
    connects: list[str] = []

    def trace(event: str, info: dict[str, Any]) -> None:
        if event.startswith("connection.connect_tcp.complete"):
            connects.append(event)

    deep = b'{"images": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    good = {"images": [b64(image_bytes((10, 200, 10)))]}
    app = create_app(predictor, ServiceConfig(max_wait_ms=1, warmup=False))
    with (
        LoopbackServer(app) as server,
        httpx.Client(base_url=server.url, timeout=10, limits=httpx.Limits(max_connections=1)) as c,
    ):
        ext = {"trace": trace}
        bad = c.post("/v1/attributes", content=deep, headers={"content-type": "application/json"}, extensions=ext)
        ok = c.post("/v1/attributes", json=good, extensions=ext)
        again = c.post("/v1/attributes", content=deep, headers={"content-type": "application/json"}, extensions=ext)
    assert (bad.status_code, again.status_code, ok.status_code) == (422, 422, 200)
    assert bad.json()["error"] == "invalid JSON" and bad.headers.get("connection") != "close"
    assert len(connects) == 1  # before: the RecursionError was a 500 and uvicorn closed the connection
    assert _trouble(caplog) == []


def _leave_mid_body(port: int, body: bytes, content_type: bytes) -> None:
    """Announce 100 kB, send a part of the body slowly, and hang up."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            b"POST /v1/attributes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + content_type + b"\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        for i in range(0, len(body), 8):
            s.sendall(body[i : i + 8])
            time.sleep(0.005)


def test_clients_leaving_mid_body_are_counted_and_leave_no_traceback(predictor, caplog):
    with (
        caplog.at_level(logging.INFO),
        LoopbackServer(create_app(predictor, ServiceConfig(max_wait_ms=1, warmup=False))) as server,
    ):
        _leave_mid_body(server.port, b'{"images": ["iVBORw0KGgoAAAANSUhEUg', b"application/json")
        multipart = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n\x89PNG'
        _leave_mid_body(server.port, multipart, b"multipart/form-data; boundary=b")
        samples = _wait_for(server.url, ("vestis_client_disconnects_total", ()), 2)
        ok = httpx.post(f"{server.url}/v1/attributes", json={"images": [b64(image_bytes((1, 2, 3)))]}, timeout=10)
    assert samples[("vestis_client_disconnects_total", ())] == 2
    assert samples[("vestis_http_requests_total", (*POST, ("status", "499")))] == 2
    assert ok.status_code == 200
    assert _trouble(caplog) == []  # before: two "Exception in ASGI application" tracebacks
    assert sum("went away while the body" in r.getMessage() for r in caplog.records) == 2


async def _slow_leaver(port: int) -> None:
    _reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    writer.write(
        b"POST /v1/attributes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9999\r\n\r\n"
    )
    for _ in range(5):
        writer.write(b'{"images"')
        await writer.drain()
        await asyncio.sleep(0.02)
    writer.close()
    await writer.wait_closed()


def test_a_bounded_hostile_mix_is_answered_as_designed(predictor, caplog):
    """Valid traffic beside deep JSON, pixel floods, memory-heavy requests and clients that leave, all at once."""
    predictor.delay = 0.01
    side = 1000  # one-bit 1000 x 1000 PNGs: 4 kB each on the wire, 5 MB each while decoded
    config = ServiceConfig(
        max_batch_size=4,
        max_wait_ms=2,
        max_pixels=side * side,
        max_request_pixels=4 * side * side,
        decode_budget_mb=2 * 5 * side * side / 2**20,
        max_queue_wait_ms=500,
    )
    app = create_app(predictor, config)
    flood = [("file", (f"{i}.png", one_bit_png(side), "image/png")) for i in range(16)]  # 16 M pixels: refused
    heavy = flood[:4]
    deep = b"[" * 50_000

    async def load(url: str, port: int) -> dict[str, list[int]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as c:
            while (await c.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.02)

            async def post(kind: str, **kw: Any) -> tuple[str, httpx.Response]:
                return kind, await c.post("/v1/attributes", **kw)

            jobs = [
                post("valid", files={"file": (f"{i}.png", image_bytes((i, 90, 9)), "image/png")}) for i in range(40)
            ]
            jobs += [post("deep", content=deep, headers={"content-type": "application/json"}) for _ in range(4)]
            jobs += [post("flood", files=flood) for _ in range(4)]
            jobs += [post("heavy", files=heavy) for _ in range(4)]
            leavers = [_slow_leaver(port) for _ in range(4)]
            done = await asyncio.wait_for(asyncio.gather(*jobs, *leavers), 30)
        out: dict[str, list[int]] = {}
        for item in done:
            if item is not None:
                kind, res = item
                out.setdefault(kind, []).append(res.status_code)
                if res.status_code == 503:
                    assert int(res.headers["retry-after"]) >= 1 and res.json()["error"] == "overloaded"
        return out

    with caplog.at_level(logging.INFO), LoopbackServer(app) as server:
        statuses = asyncio.run(load(server.url, server.port))
        samples = _wait_for(server.url, ("vestis_client_disconnects_total", ()), 4)
        after = httpx.post(f"{server.url}/v1/attributes", json={"images": [b64(image_bytes((5, 5, 5)))]}, timeout=10)
        healthy = httpx.get(f"{server.url}/healthz", timeout=5).status_code
    assert set(statuses["valid"]) <= {200, 503} and statuses["valid"].count(200) >= 5, statuses
    assert statuses["deep"] == [422] * 4 and statuses["flood"] == [413] * 4
    assert set(statuses["heavy"]) <= {200, 503}
    assert samples[("vestis_client_disconnects_total", ())] == 4
    shed = sum(v.count(503) for v in statuses.values())
    assert shed == sum(samples[("vestis_shed_requests_total", (("reason", r),))] for r in ("queue", "memory"))
    budget = app.state.service.budget
    assert 0 < budget.peak <= budget.capacity and budget.in_use == 0
    assert after.status_code == 200 and healthy == 200
    assert _trouble(caplog) == []
