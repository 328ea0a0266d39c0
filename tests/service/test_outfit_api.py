"""``POST /v1/outfit`` and ``GET /v1/model`` on an outfit pipeline whose one garment is known by construction
(:mod:`tests.service.outfit_fixtures`), hostile uploads, and the endpoints each model kind does not have."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import ColourPredictor, b64, metric_samples, one_bit_png, wait_ready
from tests.service.outfit_fixtures import expected_garment, make_pipeline, png
from vestis.errors import VestisError
from vestis.service import ServiceConfig, create_app

POISON = (255, 0, 255)


@pytest.fixture(scope="module")
def pipeline_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pipeline(tmp_path_factory.mktemp("outfit"))


@pytest.fixture
def pipeline(pipeline_path):
    from vestis.inference.pipeline import OutfitPipeline

    return OutfitPipeline.load(pipeline_path, device="cpu")


def _client(pipeline, **config) -> TestClient:
    return TestClient(create_app(pipeline, ServiceConfig(max_wait_ms=1, **config)))


def _upload(client: TestClient, data: bytes, name: str = "look.png", mime: str = "image/png"):
    return client.post("/v1/outfit", files=[("file", (name, data, mime))])


def _check_garment(got: dict, want: dict) -> None:
    assert got["box"] == pytest.approx(want["box"], abs=0.01)
    assert got["object_type"] == want["object_type"]
    assert got["object_score"] == pytest.approx(want["object_score"], abs=1e-6)
    assert got["category"] == want["category"]
    assert got["category_score"] == pytest.approx(want["category_score"], abs=1e-6)
    assert [v for v, _ in got["category_top"]] == ["trousers", "t-shirt", "sneakers"]
    assert set(got["attributes"]) == {"colour"}
    assert dict(got["attributes"]["colour"]) == pytest.approx(want["colour"], abs=1e-6)
    assert [v for v, _ in got["attributes"]["colour"]] == ["red", "white"]  # best first
    assert got["suppressed"] == ["sleeve=short"]  # sleeve applies to t-shirts, the garment is trousers


def test_upload_gives_the_known_garment_in_original_pixels(pipeline):
    threads: list[str] = []
    predict = pipeline.predict

    def recording(images):
        threads.append(threading.current_thread().name)
        return predict(images)

    pipeline.predict = recording
    with _client(pipeline) as client:
        wait_ready(client)
        for side in (32, 64, 128):  # the box scales with the image: it is in the upload's pixels
            r = _upload(client, png((200, 40, 40), (side, side)), name=f"look{side}.png")
            assert r.status_code == 200, r.text
            body = r.json()
            assert (body["image"], body["width"], body["height"]) == (f"look{side}.png", side, side)
            assert body["model"] == pipeline.fingerprint
            [garment] = body["garments"]
            _check_garment(garment, expected_garment(side))
        # base64 JSON, as the other image endpoints take it
        r = client.post("/v1/outfit", json={"images": [b64(png((10, 200, 10), (64, 64)))]})
        assert r.status_code == 200, r.text
        assert r.json()["image"] is None
        _check_garment(r.json()["garments"][0], expected_garment(64))
    # the warm-up and every request ran in the model thread, never on the event loop
    assert threads and all(t.startswith("vestis-model") for t in threads), threads


def test_model_info_names_the_pipeline_and_both_models(pipeline):
    spec = pipeline.spec
    with _client(pipeline) as client:
        wait_ready(client)
        info = client.get("/v1/model").json()
        samples = metric_samples(client.get("/metrics").text)
        spec_paths = set(client.get("/openapi.json").json()["paths"])
    assert info["kind"] == "outfit" and info["model"] == pipeline.fingerprint and info["runtime"] == "torch"
    assert info["detector"]["fingerprint"] == spec.detector_fingerprint
    assert info["stage2"]["fingerprint"] == spec.stage2_fingerprint
    assert spec.detector_fingerprint != spec.stage2_fingerprint != pipeline.fingerprint
    assert info["detector"]["labels"] == ["upper-body", "lower-body", "full-body", "footwear"]
    assert (info["detector"]["image_size"], info["stage2"]["image_size"]) == (32, 32)
    assert info["stage2"]["labels"] == ["t-shirt", "trousers", "sneakers"]
    assert info["stage2"]["attributes"] == ["sleeve=short", "sleeve=long", "colour=red", "colour=blue", "colour=white"]
    assert info["settings"] == {
        "min_score": 0.3, "nms_iou": 0.5, "max_garments": 10, "margin": 0.0, "one_type_per_garment": True
    }  # fmt: skip
    labels = (("backend", "torch"), ("fingerprint", pipeline.fingerprint), ("name", "outfit"))
    assert samples[("vestis_model_info", labels)] == 1.0
    assert {"/v1/outfit", "/v1/model", "/healthz", "/readyz", "/metrics"} == spec_paths


@pytest.mark.parametrize(
    ("method", "route"), [("post", "/v1/attributes"), ("post", "/v1/heatmap"), ("get", "/v1/taxonomy")]
)
def test_single_product_endpoints_point_to_outfit(pipeline, method, route):
    with _client(pipeline, warmup=False) as client:
        kwargs = {"files": [("file", ("a.png", png((1, 2, 3), (8, 8)), "image/png"))]} if method == "post" else {}
        r = getattr(client, method)(route, **kwargs)
    assert r.status_code == 404
    assert r.json()["error"] == "not supported by an outfit pipeline"
    assert "/v1/outfit" in r.json()["detail"] and route in r.json()["detail"]


def test_a_classifier_server_has_no_outfit_endpoint():
    with TestClient(create_app(ColourPredictor(), ServiceConfig(max_wait_ms=1))) as client:
        wait_ready(client)
        r = _upload(client, png((1, 2, 3), (8, 8)))
        assert r.status_code == 404 and r.json()["error"] == "not an outfit pipeline"
        assert "vestis serve outfit.vestis" in r.json()["detail"]
        assert client.get("/v1/model").status_code == 404


def test_hostile_uploads_get_4xx_and_the_next_request_is_served(pipeline):
    with _client(pipeline, max_pixels=10_000, max_upload_mb=0.05) as client:
        wait_ready(client)
        cases = {
            "no file": client.post("/v1/outfit", files=[("other", ("a.png", b"x", "image/png"))]),
            "two files": client.post(
                "/v1/outfit",
                files=[("file", ("a.png", png((1, 2, 3), (8, 8)), "image/png"))] * 2,
            ),
            "text body": client.post("/v1/outfit", content=b"hello", headers={"content-type": "text/plain"}),
            "empty": _upload(client, b""),
            "not an image": _upload(client, b"%PDF-1.4 not an image at all"),
            "truncated": _upload(client, png((5, 5, 5), (64, 64))[:60]),
            "bad base64": client.post("/v1/outfit", json={"images": ["http://example.com/a.jpg"]}),
            "pixel bomb": _upload(client, one_bit_png(400)),  # 160,000 px > 10,000
            "too large": _upload(client, b"\0" * 60_000),
        }
        want = {
            "no file": 422, "two files": 422, "text body": 415, "empty": 422, "not an image": 415,
            "truncated": 422, "bad base64": 422, "pixel bomb": 413, "too large": 413,
        }  # fmt: skip
        got = {k: r.status_code for k, r in cases.items()}
        assert got == want
        assert all(set(r.json()) == {"error", "detail"} for r in cases.values())
        assert "exactly one image" in cases["two files"].json()["detail"]
        ok = _upload(client, png((200, 40, 40), (64, 64)))
        assert ok.status_code == 200 and len(ok.json()["garments"]) == 1


def test_a_failing_pipeline_answers_500_and_the_service_goes_on(pipeline):
    predict = pipeline.predict

    def poisoned(images):
        if any(im.getpixel((0, 0)) == POISON for im in images):
            raise RuntimeError("poisoned image")
        return predict(images)

    pipeline.predict = poisoned
    with _client(pipeline) as client:
        wait_ready(client)
        bad = _upload(client, png(POISON, (32, 32)))
        assert bad.status_code == 500 and bad.json()["error"] == "prediction failed"
        assert "poisoned image" in bad.json()["detail"]
        good = _upload(client, png((10, 10, 10), (32, 32)))
        assert good.status_code == 200 and len(good.json()["garments"]) == 1


def test_an_outfit_pipeline_serves_no_catalog_index(pipeline):
    with pytest.raises(VestisError, match="outfit pipeline serves no catalog index"):
        create_app(pipeline, index=object())  # type: ignore[arg-type]


def test_vestis_serve_an_outfit_pipeline(pipeline_path, monkeypatch, tmp_path):
    import uvicorn
    from typer.testing import CliRunner

    import vestis.cli

    calls: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.update(app=app, kwargs=kw))
    res = CliRunner().invoke(vestis.cli.app, ["serve", str(pipeline_path), "--port", "8124", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "outfit pipeline" in res.output and "http://127.0.0.1:8124/" in res.output
    with TestClient(calls["app"]) as client:
        wait_ready(client)
        [garment] = _upload(client, png((9, 9, 9), (64, 64))).json()["garments"]
        _check_garment(garment, expected_garment(64))
    res = CliRunner().invoke(vestis.cli.app, ["serve", str(pipeline_path), "--index", str(tmp_path)])
    assert res.exit_code == 1 and "serves no --index" in res.output


def test_an_exported_pipeline_serves_the_same_garment_on_onnx_runtime(pipeline_path, tmp_path):
    pytest.importorskip("onnxruntime")
    from vestis.inference.pipeline import OutfitPipeline
    from vestis.inference.pipeline_export import export_pipeline_onnx

    export_pipeline_onnx(pipeline_path, tmp_path / "exported", check_images=0)
    onnx = OutfitPipeline.load(tmp_path / "exported", device="cpu")
    with _client(onnx) as client:
        wait_ready(client)
        assert client.get("/v1/model").json()["runtime"] == "onnx"
        [garment] = _upload(client, png((200, 40, 40), (64, 64))).json()["garments"]
    _check_garment(garment, expected_garment(64))


def test_concurrent_uploads_share_one_pipeline_call(pipeline):
    import asyncio
    import time

    import httpx

    sizes: list[int] = []
    predict = pipeline.predict

    def counting(images):
        sizes.append(len(images))
        return predict(images)

    pipeline.predict = counting
    # the batch runs once it holds 3 images (5 s is only the bound for the first one's wait)
    app = create_app(pipeline, ServiceConfig(max_batch_size=3, max_wait_ms=5000))
    sides = (32, 64, 96)

    async def main() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
                deadline = time.monotonic() + 10
                while (await c.get("/readyz")).status_code != 200:
                    assert time.monotonic() < deadline, "not ready"
                    await asyncio.sleep(0.01)
                posts = [
                    c.post("/v1/outfit", files={"file": (f"{s}.png", png((9, 9, 9), (s, s)), "image/png")})
                    for s in sides
                ]
                return await asyncio.gather(*posts)

    responses = asyncio.run(main())
    assert sizes == [1, 3]  # the warm-up, then the three uploads together
    for side, r in zip(sides, responses, strict=True):
        assert r.status_code == 200 and r.json()["image"] == f"{side}.png"
        _check_garment(r.json()["garments"][0], expected_garment(side))  # each answer is its own image's
