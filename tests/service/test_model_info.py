"""Traceability: responses and ``/metrics`` name the model that answered, by its fingerprint."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import ColourPredictor, image_bytes, make_checkpoint, metric_samples, wait_ready
from vestis.inference.predictor import Predictor
from vestis.service import ServiceConfig, create_app

FP = "sha256:" + "ab" * 32


def _info(client: TestClient) -> dict[tuple[tuple[str, str], ...], float]:
    samples = metric_samples(client.get("/metrics").text)
    return {labels: v for (name, labels), v in samples.items() if name == "vestis_model_info"}


def test_a_real_checkpoint_is_named_in_responses_and_metrics(tmp_path):
    predictor = Predictor.from_path(make_checkpoint(tmp_path / "m.ckpt"), device="cpu")
    assert predictor.fingerprint.startswith("sha256:")
    with TestClient(create_app(predictor, ServiceConfig(max_wait_ms=1))) as client:
        wait_ready(client)
        r = client.post("/v1/attributes", files=[("file", ("a.png", image_bytes((200, 10, 10)), "image/png"))])
        assert r.status_code == 200 and r.json()["model"] == predictor.fingerprint
        assert client.get("/v1/taxonomy").json()["model"] == predictor.fingerprint
        info = _info(client)
    labels = (("backend", "torch"), ("fingerprint", predictor.fingerprint), ("name", "a3"))
    assert info == {labels: 1.0}


def test_a_predictor_with_its_own_fingerprint_and_name():
    p = ColourPredictor()
    p.fingerprint, p.config, p.backend = FP, {"model": {"name": "colour-net"}}, "onnx"
    with TestClient(create_app(p, ServiceConfig(max_wait_ms=1))) as client:
        wait_ready(client)
        assert client.get("/v1/taxonomy").json()["model"] == FP
        assert _info(client) == {(("backend", "onnx"), ("fingerprint", FP), ("name", "colour-net")): 1.0}


@pytest.mark.parametrize("route", ["/v1/attributes", "/v1/taxonomy"])
def test_a_predictor_without_a_fingerprint_is_unknown(route):
    with TestClient(create_app(ColourPredictor(), ServiceConfig(max_wait_ms=1))) as client:
        wait_ready(client)
        if route == "/v1/attributes":
            body = client.post(route, files=[("file", ("a.png", image_bytes((10, 10, 200)), "image/png"))]).json()
            assert "model" not in body and len(body["results"]) == 1  # null fields are left out of results
        else:
            assert client.get(route).json()["model"] is None
        unknown = (("backend", "unknown"), ("fingerprint", "unknown"), ("name", "unknown"))
        assert _info(client) == {unknown: 1.0}
