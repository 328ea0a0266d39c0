"""The HTTP service in-process, against a predictor with hand-set weights whose output is known exactly."""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import zlib

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import (
    POISON,
    TAXONOMY,
    ColourPredictor,
    assert_result,
    b64,
    expected,
    image_bytes,
    wait_ready,
)
from vestis.service import ServiceConfig, create_app

LIMITS = ServiceConfig(max_wait_ms=1, max_upload_mb=0.25, max_pixels=10_000, max_images=4, heatmap_max_side=40)


@pytest.fixture
def client(predictor: ColourPredictor):
    with TestClient(create_app(predictor, LIMITS)) as c:
        wait_ready(c)
        yield c


def _error(res: httpx.Response, status: int, error: str) -> str:
    assert res.status_code == status, res.text
    body = res.json()
    assert set(body) == {"error", "detail"} and body["error"] == error, body
    return str(body["detail"])


# --- predictions ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("color", [(200, 30, 30), (20, 220, 60), (10, 40, 240), (250, 250, 245)])
def test_multipart_upload_gives_the_known_output(client, color):
    res = client.post("/v1/attributes", files={"file": ("shirt.png", image_bytes(color), "image/png")})
    assert res.status_code == 200, res.text
    [result] = res.json()["results"]
    assert (result["filename"], result["width"], result["height"]) == ("shirt.png", 16, 16)
    assert_result(result["attributes"], expected(color))


def test_blue_items_have_no_sleeve_attribute(client):
    res = client.post("/v1/attributes", files={"file": ("b.png", image_bytes((0, 0, 255)), "image/png")})
    attrs = res.json()["results"][0]["attributes"]
    assert attrs["category"]["value"] == "blue" and "sleeve" not in attrs


def test_several_file_parts_come_back_in_order(client):
    colors = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
    # PNG bytes under .jpg names: the format is read from the bytes, never from the name
    files = [("file", (f"{i}.jpg", image_bytes(c, fmt="PNG"), "image/png")) for i, c in enumerate(colors)]
    res = client.post("/v1/attributes", files=files)
    results = res.json()["results"]
    assert [r["filename"] for r in results] == ["0.jpg", "1.jpg", "2.jpg"]
    for r, c in zip(results, colors, strict=True):
        assert_result(r["attributes"], expected(c))


def test_json_base64_equals_multipart(client):
    colors = [(240, 240, 240), (30, 30, 30)]
    res = client.post("/v1/attributes", json={"images": [b64(image_bytes(c)) for c in colors]})
    assert res.status_code == 200, res.text
    results = res.json()["results"]
    assert all("filename" not in r for r in results)
    for r, c in zip(results, colors, strict=True):
        assert_result(r["attributes"], expected(c))
    # base64 wrapped at 76 columns (as the `base64` tool prints it) is accepted
    text = b64(image_bytes(colors[0]))
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    res = client.post("/v1/attributes", json={"images": [wrapped]})
    assert_result(res.json()["results"][0]["attributes"], expected(colors[0]))


def test_calibrated_thresholds_can_be_switched_off(client):
    # mean 0.7: light = sigmoid(2.4) = 0.917 passes the calibrated 0.9; mean 0.65: 0.858 passes only 0.5
    for color, calibrated_values in [((179, 179, 178), ["light"]), ((166, 166, 165), [])]:
        data = {"file": ("x.png", image_bytes(color), "image/png")}
        on = client.post("/v1/attributes", files=data).json()["results"][0]["attributes"]["tone"]
        off = client.post("/v1/attributes?calibrated=false", files=data).json()["results"][0]["attributes"]["tone"]
        assert on["values"] == calibrated_values == expected(color)["tone"]["values"]
        assert off["values"] == ["light"] == expected(color, calibrated=False)["tone"]["values"]


def test_non_square_images_are_letterboxed_before_the_model(client, predictor):
    # a 16 x 8 red image is padded with white to a square: mean = (255 + 255) / 2 red, 255 / 2 green and blue
    res = client.post("/v1/attributes", files={"file": ("w.png", image_bytes((255, 0, 0), (16, 8)), "image/png")})
    got = res.json()["results"][0]
    assert (got["width"], got["height"]) == (16, 8)
    c = [255 / 255, 127.5 / 255, 127.5 / 255]
    e = np.exp(10 * np.array(c))
    assert got["attributes"]["category"]["scores"]["red"] == pytest.approx(e[0] / e.sum(), abs=1e-9)


# --- batching ------------------------------------------------------------------------------------------------
def test_concurrent_requests_are_batched_and_answered_to_the_right_caller():
    predictor = ColourPredictor()
    app = create_app(predictor, ServiceConfig(max_batch_size=16, max_wait_ms=200, batch_close="deadline"))
    colors = [(255 - 30 * i, 30 * i, 15 * i) for i in range(8)]

    async def run() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                while (await c.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.01)
                predictor.calls.clear()  # the warm-up batch is not a request
                return await asyncio.gather(
                    *[c.post("/v1/attributes", files={"file": (f"{i}.png", image_bytes(col), "image/png")})
                      for i, col in enumerate(colors)]
                )  # fmt: skip

    responses = asyncio.run(run())
    assert 1 <= len(predictor.calls) <= 2 and sum(predictor.calls) == 8, predictor.calls
    for i, (res, color) in enumerate(zip(responses, colors, strict=True)):
        [result] = res.json()["results"]
        assert result["filename"] == f"{i}.png"
        assert_result(result["attributes"], expected(color))


def test_batch_size_one_turns_batching_off(predictor):
    with TestClient(create_app(predictor, ServiceConfig(max_batch_size=1))) as c:
        wait_ready(c)
        predictor.calls.clear()
        files = [("file", (f"{i}.png", image_bytes((50 * i, 0, 0)), "image/png")) for i in range(3)]
        assert c.post("/v1/attributes", files=files).status_code == 200
    assert predictor.calls == [1, 1, 1]


# --- failures ------------------------------------------------------------------------------------------------
def test_a_predictor_exception_is_a_500_and_the_next_request_works(client, predictor):
    detail = _error(
        client.post("/v1/attributes", files={"file": ("p.png", image_bytes(POISON), "image/png")}),
        500,
        "prediction failed",
    )
    assert "poisoned colour" in detail
    res = client.post("/v1/attributes", files={"file": ("ok.png", image_bytes((0, 200, 0)), "image/png")})
    assert res.status_code == 200
    assert_result(res.json()["results"][0]["attributes"], expected((0, 200, 0)))


def test_a_bad_item_fails_only_its_own_request_in_a_shared_batch():
    predictor = ColourPredictor()
    # the batch is cut when the third image arrives (the long wait only bounds a stuck test)
    app = create_app(predictor, ServiceConfig(max_batch_size=3, max_wait_ms=10_000, batch_close="deadline"))

    async def run() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                while (await c.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.01)
                predictor.calls.clear()
                return await asyncio.gather(
                    *[c.post("/v1/attributes", json={"images": [b64(image_bytes(col))]})
                      for col in [(0, 0, 200), POISON, (200, 0, 0)]]
                )  # fmt: skip

    ok1, bad, ok2 = asyncio.run(run())
    assert predictor.calls[0] == 3  # one shared batch, which failed, then each item alone
    assert sorted(predictor.calls[1:]) == [1, 1, 1]
    assert_result(ok1.json()["results"][0]["attributes"], expected((0, 0, 200)))
    assert_result(ok2.json()["results"][0]["attributes"], expected((200, 0, 0)))
    assert _error(bad, 500, "prediction failed")


# --- limits and malformed input --------------------------------------------------------------------------------
def test_payload_over_the_limit_is_413(client):
    big = b"\0" * (LIMITS.limits.max_upload_bytes + 1)
    detail = _error(
        client.post("/v1/attributes", files={"file": ("big.png", big, "image/png")}), 413, "payload too large"
    )
    assert f"{LIMITS.limits.max_upload_bytes:,}" in detail


def test_streamed_payload_without_content_length_is_counted(client):
    def chunks():
        for _ in range(40):
            yield b"x" * 8192  # 320 KiB in all, no Content-Length

    res = client.post("/v1/attributes", content=chunks(), headers={"content-type": "application/json"})
    _error(res, 413, "payload too large")


def _png_header_bomb(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims ``width x height`` (a decompression-bomb header, few bytes)."""
    data = image_bytes((0, 0, 0), (1, 1))
    ihdr = data.index(b"IHDR")
    body = struct.pack(">II", width, height) + data[ihdr + 12 : ihdr + 17]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF)
    return data[:ihdr] + b"IHDR" + body + crc + data[ihdr + 21 :]


def test_pixel_count_is_checked_before_decoding(client):
    bomb = _png_header_bomb(100_000, 100_000)
    assert Image.open(io.BytesIO(bomb)).size == (100_000, 100_000)
    detail = _error(client.post("/v1/attributes", files={"file": ("b.png", bomb, "image/png")}), 413, "image too large")
    assert "100000x100000 = 10,000,000,000 pixels" in detail
    # just over the cap of 10,000 pixels
    _error(
        client.post("/v1/attributes", json={"images": [b64(image_bytes((1, 2, 3), (101, 100)))]}),
        413,
        "image too large",
    )
    assert client.post("/v1/attributes", json={"images": [b64(image_bytes((1, 2, 3), (100, 100)))]}).status_code == 200


def test_unsupported_and_corrupt_images(client):
    detail = _error(
        client.post("/v1/attributes", files={"file": ("a.txt", b"just some text", "text/plain")}),
        415,
        "unsupported image",
    )
    assert detail.startswith("file[0]: not a JPEG, PNG")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"  # Pillow can read EPS, the service must not
    _error(client.post("/v1/attributes", json={"images": [b64(eps)]}), 415, "unsupported image")
    png = image_bytes((10, 200, 10), (64, 64), "JPEG")
    detail = _error(client.post("/v1/attributes", json={"images": [b64(png[: len(png) // 2])]}), 422, "corrupt image")
    assert detail.startswith("images[0]:")
    _error(client.post("/v1/attributes", json={"images": [""]}), 422, "empty image")


def test_unsupported_content_type_is_415(client):
    _error(
        client.post("/v1/attributes", content=b"abc", headers={"content-type": "text/plain"}),
        415,
        "unsupported media type",
    )
    _error(client.post("/v1/attributes", content=image_bytes((1, 1, 1))), 415, "unsupported media type")


def test_too_many_images_is_413(client):
    five = [b64(image_bytes((i, i, i))) for i in range(5)]
    assert "5 images" in _error(client.post("/v1/attributes", json={"images": five}), 413, "too many images")
    files = [("file", (f"{i}.png", image_bytes((i, 0, 0)), "image/png")) for i in range(5)]
    _error(client.post("/v1/attributes", files=files), 413, "too many images")
    files = [("file", (f"{i}.png", image_bytes((i, 0, 0), (1, 1)), "image/png")) for i in range(9)]
    _error(client.post("/v1/attributes", files=files), 413, "too many images")


def test_bad_base64_and_urls_are_422(client):
    assert "images[1]" in _error(
        client.post("/v1/attributes", json={"images": [b64(image_bytes((1, 1, 1))), "not*base64!"]}),
        422,
        "invalid base64",
    )
    # the service never fetches anything: a URL is just a string that is not base64
    _error(client.post("/v1/attributes", json={"images": ["https://example.com/shirt.jpg"]}), 422, "invalid base64")
    _error(client.post("/v1/attributes", json={"images": ["héllo"]}), 422, "invalid base64")


def test_malformed_requests_are_422(client):
    _error(client.post("/v1/attributes", json={"images": []}), 422, "invalid request")
    _error(client.post("/v1/attributes", json={"imgs": ["x"]}), 422, "invalid request")
    _error(client.post("/v1/attributes", json=["x"]), 422, "invalid request")
    _error(
        client.post("/v1/attributes", content=b"{nope", headers={"content-type": "application/json"}),
        422,
        "invalid JSON",
    )
    _error(client.post("/v1/attributes", files={"other": ("x.png", b"x", "image/png")}), 422, "invalid request")
    _error(
        client.post("/v1/attributes", data={"file": "text, not a file"}, files={"x": ("x", b"x")}),
        422,
        "invalid request",
    )
    _error(client.post("/v1/attributes?calibrated=maybe", json={"images": ["x"]}), 422, "invalid request")


def test_unknown_paths_and_methods_are_json(client):
    _error(client.get("/v1/nope"), 404, "not found")
    res = client.get("/v1/attributes")
    _error(res, 405, "method not allowed")
    assert res.headers["allow"] == "POST"


# --- heat-map ------------------------------------------------------------------------------------------------
def _half_red(size: tuple[int, int]) -> bytes:
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:, : size[0] // 2, 0] = 255  # the left half is red
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_heatmap_gray_is_the_predictor_map(client, predictor):
    res = client.post("/v1/heatmap?style=gray", files={"file": ("h.png", _half_red((20, 10)), "image/png")})
    assert res.status_code == 200 and res.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(res.content))
    assert img.mode == "L" and img.size == (20, 10)
    arr = np.asarray(img)
    assert (arr[:, :10] == 255).all() and (arr[:, 10:] == 0).all()


def test_heatmap_overlay_is_rgba_and_capped_in_size(client, predictor):
    res = client.post("/v1/heatmap", json={"images": [b64(_half_red((80, 60)))]})
    img = Image.open(io.BytesIO(res.content))
    # heatmap_max_side=40: an 80 x 60 image gets a 40 x 30 map
    assert img.mode == "RGBA" and img.size == (40, 30) and predictor.heatmap_calls == [(80, 60)]
    arr = np.asarray(img).astype(int)
    hot, cold = arr[0, 0], arr[0, -1]
    assert tuple(hot) == (230, 30, 30, 230) and tuple(cold) == (20, 30, 140, 60)


def test_a_heatmap_failure_is_a_500_and_the_next_one_works(client):
    detail = _error(client.post("/v1/heatmap", json={"images": [b64(image_bytes(POISON))]}), 500, "heat-map failed")
    assert detail == "RuntimeError: poisoned heat-map"
    assert client.post("/v1/heatmap", json={"images": [b64(image_bytes((9, 9, 9)))]}).status_code == 200


def test_a_malformed_predictor_result_is_a_500(client, predictor):
    predictor.decode = lambda probs, calibrated=True: [{"category": {"value": "red"}}]  # no scores
    detail = _error(
        client.post("/v1/attributes", json={"images": [b64(image_bytes((9, 9, 9)))]}), 500, "prediction failed"
    )
    assert detail.startswith("ValidationError")


def test_heatmap_takes_one_image(client):
    two = [b64(image_bytes((1, 1, 1))), b64(image_bytes((2, 2, 2)))]
    _error(client.post("/v1/heatmap", json={"images": two}), 422, "one image expected")
    _error(client.post("/v1/heatmap?style=jet", json={"images": two[:1]}), 422, "invalid request")


# --- taxonomy, health, readiness, metrics ---------------------------------------------------------------------
def test_taxonomy(client, predictor):
    body = client.get("/v1/taxonomy").json()
    assert body["name"] == "colours" and body["category_attribute"] == "category"
    assert [a["name"] for a in body["attributes"]] == TAXONOMY.names
    assert body["attributes"][1] == {
        "name": "sleeve",
        "kind": "single",
        "values": ["short", "long"],
        "applies_to": ["red", "green"],
        "roi": None,
        "description": "",
    }
    assert body["preprocessing"]["image_size"] == 8 and body["thresholds"] == {"tone": [0.9, 0.9]}


def test_ready_only_after_the_warm_up_batch(predictor):
    predictor.gate = threading.Event()
    with TestClient(create_app(predictor)) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        res = c.get("/readyz")
        assert res.status_code == 503 and res.json()["ready"] is False
        predictor.gate.set()
        wait_ready(c)
        assert c.get("/readyz").json() == {"ready": True, "detail": "ready"}
    assert predictor.calls == [1]  # the warm-up: one blank image


def test_a_failed_warm_up_is_reported(predictor):
    predictor.preprocessing["image_size"] = "not a size"
    with TestClient(create_app(predictor)) as c:
        for _ in range(200):
            detail = c.get("/readyz").json()["detail"]
            if detail != "warming up":
                break
            threading.Event().wait(0.01)
        assert c.get("/readyz").status_code == 503 and detail.startswith("warm-up failed: ValueError")


def test_without_the_lifespan_requests_are_503(predictor):
    client = TestClient(create_app(predictor))  # not entered: no model thread
    _error(client.post("/v1/attributes", json={"images": [b64(image_bytes((1, 1, 1)))]}), 503, "not ready")


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_metrics(client):
    for i in range(3):
        client.post("/v1/attributes", files={"file": ("x.png", image_bytes((i, 0, 0)), "image/png")})
    files = [("file", (f"{i}.png", image_bytes((0, i, 0)), "image/png")) for i in range(2)]
    client.post("/v1/attributes", files=files)
    client.post("/v1/attributes", json={"images": ["@@"]})
    client.post("/v1/attributes", content=b"x" * (LIMITS.limits.max_upload_bytes + 1))  # 413 before routing
    client.get("/no/such/page")
    res = client.get("/metrics")
    assert res.headers["content-type"].startswith("text/plain")
    s = _samples(res.text)
    post = (("method", "POST"), ("route", "/v1/attributes"))
    for status, count in [("200", 4), ("422", 1), ("413", 1)]:
        assert s[("vestis_http_requests_total", (*post, ("status", status)))] == count, status
    assert s[("vestis_http_requests_total", (("method", "GET"), ("route", "<unmatched>"), ("status", "404")))] == 1
    assert s[("vestis_http_request_duration_seconds_count", post)] == 6
    assert s[("vestis_images_total", ())] == 5
    assert s[("vestis_batch_size_sum", ())] == 5
    assert s[("vestis_batch_size_count", ())] == 4  # three single images, one request of two
    assert s[("vestis_batch_size_bucket", (("le", "1.0"),))] == 3
    assert s[("vestis_queue_depth", ())] == 0
    assert s[("vestis_ready", ())] == 1


# --- page and configuration ------------------------------------------------------------------------------------
def test_page_and_static_files_are_served(client):
    res = client.get("/")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in res.headers["content-security-policy"]
    for ref in ("/static/app.js", "/static/app.css"):
        assert ref in res.text
        assert client.get(ref).status_code == 200
