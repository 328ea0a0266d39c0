"""The service on the real :class:`~vestis.inference.predictor.Predictor` from a tiny checkpoint: the HTTP
answers are the predictor's own output, whatever the batching."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.service.conftest import REAL_TAXONOMY, b64, make_checkpoint, wait_ready
from vestis.inference.predictor import Predictor
from vestis.service import ServiceConfig, create_app


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    return Predictor.from_path(make_checkpoint(tmp_path_factory.mktemp("model") / "tiny.ckpt"), device="cpu")


@pytest.fixture(scope="module")
def client(predictor: Predictor):
    with TestClient(create_app(predictor, ServiceConfig(max_wait_ms=5, heatmap_max_side=64))) as c:
        wait_ready(c)
        yield c


def _pictures() -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for (w, h), fmt in [((40, 30), "JPEG"), ((24, 48), "PNG"), ((96, 96), "WEBP")]:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


def _same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name, w in want.items():
        assert got[name].get("value") == w.get("value") and got[name].get("values") == w.get("values"), name
        assert got[name]["scores"] == pytest.approx(w["scores"], abs=1e-5), name


@pytest.mark.parametrize("calibrated", [True, False])
def test_answers_are_the_predictor_output(client, predictor, calibrated):
    pictures = _pictures()
    images = [Image.open(io.BytesIO(p)).convert("RGB") for p in pictures]
    want = predictor.predict(images, calibrated=calibrated)
    files = [("file", (f"{i}.img", p, "application/octet-stream")) for i, p in enumerate(pictures)]
    res = client.post(f"/v1/attributes?calibrated={str(calibrated).lower()}", files=files)
    assert res.status_code == 200, res.text
    results = res.json()["results"]
    assert [(r["width"], r["height"]) for r in results] == [(40, 30), (24, 48), (96, 96)]
    for r, w in zip(results, want, strict=True):
        _same(r["attributes"], w)
    # one image at a time over JSON gives the same answers
    for p, w in zip(pictures, want, strict=True):
        [r] = client.post(f"/v1/attributes?calibrated={calibrated}", json={"images": [b64(p)]}).json()["results"]
        _same(r["attributes"], w)


def test_heatmap_is_the_predictor_map(client, predictor):
    picture = _pictures()[2]  # 96 x 96, capped to 64 x 64
    res = client.post("/v1/heatmap?style=gray", files={"file": ("x.webp", picture, "image/webp")})
    assert res.status_code == 200, res.text
    got = np.asarray(Image.open(io.BytesIO(res.content)), dtype=np.int16)
    want = predictor.heatmap(Image.open(io.BytesIO(picture)).convert("RGB"), (64, 64))
    assert got.shape == want.shape == (64, 64)
    assert np.abs(got - np.round(want * 255)).max() <= 1


def test_taxonomy_is_the_checkpoint_taxonomy(client, predictor):
    body = client.get("/v1/taxonomy").json()
    assert body["name"] == "tiny" and [a["name"] for a in body["attributes"]] == [
        a["name"] for a in REAL_TAXONOMY["attributes"]
    ]
    assert body["preprocessing"]["image_size"] == 48
    assert body["thresholds"] == {"occasion": [0.45, 0.5, 0.55]}


def test_the_predictor_satisfies_the_service_protocol(predictor):
    from tests.service.conftest import ColourPredictor
    from vestis.errors import VestisError
    from vestis.service import AttributePredictor

    assert isinstance(predictor, AttributePredictor) and isinstance(ColourPredictor(), AttributePredictor)
    with pytest.raises(VestisError, match="lacks taxonomy, preprocessing, thresholds, preprocess"):
        create_app(object())  # type: ignore[arg-type]


def test_large_jpegs_are_decoded_as_batch_tagging_decodes_them(client, predictor, tmp_path):
    from vestis.data.images import load_image

    rng = np.random.default_rng(1)
    path = tmp_path / "big.jpg"
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(path, quality=90)
    reduced = load_image(path, min_side=48)  # what `vestis predict` feeds the model: a DCT-scaled decode
    assert reduced.size == (100, 75)
    [want] = predictor.predict([reduced])
    [got] = client.post("/v1/attributes", files={"file": ("big.jpg", path.read_bytes(), "image/jpeg")}).json()[
        "results"
    ]
    assert (got["width"], got["height"]) == (400, 300)
    _same(got["attributes"], want)
    heat = client.post("/v1/heatmap?style=gray", files={"file": ("big.jpg", path.read_bytes(), "image/jpeg")})
    assert Image.open(io.BytesIO(heat.content)).size == (64, 48)  # the upload's aspect ratio, capped at 64
