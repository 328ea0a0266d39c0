"""Uploads are decoded in the bounded decode pool, off the event loop, within the memory budget."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import vestis.cli
import vestis.service.attribute_routes as routes
import vestis.service.core as service_app
from tests.service.conftest import assert_result, expected, image_bytes, make_checkpoint, metric_samples, wait_ready
from vestis.errors import VestisError
from vestis.service import ServiceConfig, create_app
from vestis.service.batching import Overloaded
from vestis.service.decode_pool import DEFAULT_MAX_DECODE_WORKERS, DecodePool, default_decode_workers


def _files(color: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> list:
    return [("file", ("a.png", image_bytes(color, size), "image/png"))]


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The thread of every decode and of every request read (which runs on the event loop)."""
    seen: dict[str, Any] = {"decode": [], "loop": []}
    real_decode, real_read = service_app.decode_image, routes.read_images

    def decode(*args: Any) -> Any:
        seen["decode"].append((threading.get_ident(), threading.current_thread().name))
        return real_decode(*args)

    async def read(*args: Any) -> Any:
        seen["loop"].append(threading.get_ident())
        return await real_read(*args)

    monkeypatch.setattr(service_app, "decode_image", decode)
    monkeypatch.setattr(routes, "read_images", read)
    return seen


def test_uploads_are_decoded_in_the_decode_threads_not_on_the_event_loop(predictor, recorded):
    with TestClient(create_app(predictor, ServiceConfig(max_wait_ms=1, decode_workers=2))) as client:
        wait_ready(client)
        r = client.post("/v1/attributes", files=_files((200, 30, 30)) + _files((10, 10, 240)))
        assert r.status_code == 200
        assert_result(r.json()["results"][0]["attributes"], expected((200, 30, 30)))
        assert_result(r.json()["results"][1]["attributes"], expected((10, 10, 240)))
        assert client.post("/v1/heatmap", files=_files((90, 0, 0))).status_code == 200
    assert len(recorded["loop"]) == 2 and len(set(recorded["loop"])) == 1  # both requests read on the event loop
    loop = recorded["loop"][0]
    assert len(recorded["decode"]) == 3  # two attribute images and the heat-map's
    for ident, name in recorded["decode"]:
        assert ident != loop and name.startswith("vestis-decode"), name


def test_a_full_decode_pool_answers_503_with_retry_after(predictor, monkeypatch):
    started, release = threading.Event(), threading.Event()
    real_decode = service_app.decode_image

    def slow_decode(*args: Any) -> Any:
        started.set()
        assert release.wait(10)
        return real_decode(*args)

    monkeypatch.setattr(service_app, "decode_image", slow_decode)
    config = ServiceConfig(max_wait_ms=1, decode_workers=1, decode_queue=0)
    with TestClient(create_app(predictor, config)) as client:
        wait_ready(client)
        service = client.app.state.service
        first: dict[str, Any] = {}
        worker = threading.Thread(
            target=lambda: first.update(r=client.post("/v1/attributes", files=_files((9, 200, 9))))
        )
        worker.start()
        assert started.wait(10)  # the one decode thread is taken
        refused = client.post("/v1/attributes", files=_files((200, 9, 9)))
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert refused.json()["error"] == "overloaded" and "decode pool is full" in refused.json()["detail"]
        assert service.decoder.pending == 1 and service.budget.in_use > 0  # the first one's, the refused gave back
        release.set()
        worker.join(10)
        assert first["r"].status_code == 200
        assert_result(first["r"].json()["results"][0]["attributes"], expected((9, 200, 9)))
        samples = metric_samples(client.get("/metrics").text)
        assert samples[("vestis_shed_requests_total", (("reason", "decode"),))] == 1
        assert samples[("vestis_decode_pending", ())] == 0 and service.budget.in_use == 0
        ok = client.post("/v1/attributes", files=_files((200, 9, 9)))  # free again
        assert ok.status_code == 200 and service.decoder.peak == 1


def test_the_pool_keeps_decoded_images_within_the_memory_budget(predictor, monkeypatch):
    # four decode threads, but a budget that holds one 600 x 600 RGB image (1.03 MiB) at a time
    state = {"now": 0, "most": 0}
    lock = threading.Lock()
    real_decode = service_app.decode_image

    def counting_decode(*args: Any) -> Any:
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        try:
            time.sleep(0.05)  # long enough for the others to arrive
            return real_decode(*args)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(service_app, "decode_image", counting_decode)
    config = ServiceConfig(max_wait_ms=1, decode_workers=4, decode_budget_mb=1.5, max_queue_wait_ms=20_000)
    app = create_app(predictor, config)
    with TestClient(app) as client:
        wait_ready(client)
        results: list[Any] = []
        threads = [
            threading.Thread(
                target=lambda: results.append(client.post("/v1/attributes", files=_files((9, 9, 200), (600, 600))))
            )
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert [r.status_code for r in results] == [200] * 4
        budget = app.state.service.budget
        assert budget.peak <= budget.capacity and state["most"] == 1


def test_decode_pool_bounds_and_errors():
    with pytest.raises(ValueError, match="workers"):
        DecodePool(0, 1)
    with pytest.raises(ValueError, match="queue"):
        DecodePool(1, -1)

    async def main() -> None:
        pool = DecodePool(1, 1)
        with pytest.raises(RuntimeError, match="not started"):
            await pool.run(int, "1")
        pool.start()
        gate = threading.Event()
        running = [asyncio.create_task(pool.run(gate.wait, 10)) for _ in range(2)]  # one decoding, one waiting
        await asyncio.sleep(0.05)
        assert pool.pending == 2
        with pytest.raises(Overloaded, match="full: 2 images") as e:
            await pool.run(int, "3")
        assert e.value.retry_after == 1.0
        gate.set()
        assert await asyncio.gather(*running) == [True, True]
        assert pool.pending == 0 and await pool.run(int, "7") == 7 and pool.peak == 2
        pool.stop()

    asyncio.run(main())


def test_the_decode_settings_are_checked_and_reach_the_app(tmp_path, monkeypatch):
    assert 2 <= default_decode_workers() <= DEFAULT_MAX_DECODE_WORKERS
    assert ServiceConfig().decode_threads == default_decode_workers()
    assert ServiceConfig(decode_workers=3).decode_threads == 3
    with pytest.raises(VestisError, match="decode_workers: expected at least 1"):
        ServiceConfig(decode_workers=0)
    with pytest.raises(VestisError, match="decode_queue: expected 0 or more"):
        ServiceConfig(decode_queue=-1)

    import uvicorn

    calls: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.update(app=app))
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    args = ["serve", str(ckpt), "--runtime", "torch", "--device", "cpu", "--decode-workers", "3", "--decode-queue", "5"]
    res = CliRunner().invoke(vestis.cli.app, args)
    assert res.exit_code == 0, res.output
    assert "3 decode threads" in res.output
    decoder = calls["app"].state.service.decoder
    assert (decoder.workers, decoder.capacity) == (3, 8)
    assert CliRunner().invoke(vestis.cli.app, [*args[:-4], "--decode-workers", "0"]).exit_code == 2
