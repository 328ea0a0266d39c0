"""``/v1/attributes`` answers the same JSON through orjson as through FastAPI's own response-model encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

import vestis.service.attribute_routes as routes
from tests.service.conftest import ColourPredictor, expected, image_bytes, wait_ready
from vestis.service import ServiceConfig, create_app
from vestis.service.responses import OrjsonResponse, fast_json_response

FP = "sha256:" + "cd" * 32
COLOURS = [(200, 30, 30), (10, 220, 40), (10, 10, 240), (250, 250, 250)]


def _answers(monkeypatch: pytest.MonkeyPatch, fast: bool, fingerprint: str | None) -> list[bytes]:
    rendered: list[int] = []
    real = OrjsonResponse.render
    monkeypatch.setattr(OrjsonResponse, "render", lambda self, c: rendered.append(1) or real(self, c))
    if not fast:
        monkeypatch.setattr(routes, "fast_json_response", lambda: None)
    p = ColourPredictor()
    if fingerprint:
        p.fingerprint = fingerprint
    bodies = []
    with TestClient(create_app(p, ServiceConfig(max_wait_ms=1))) as client:
        wait_ready(client)
        for calibrated in ("true", "false"):
            files = [("file", (f"{i}.png", image_bytes(c, (16, 12)), "image/png")) for i, c in enumerate(COLOURS)]
            r = client.post(f"/v1/attributes?calibrated={calibrated}", files=files)
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            bodies.append(r.content)
    assert len(rendered) == (2 if fast else 0)  # the encoder asked for is the one that ran
    monkeypatch.undo()
    return bodies


@pytest.mark.parametrize("fingerprint", [FP, None])
def test_orjson_and_the_default_encoder_give_the_same_json(monkeypatch, fingerprint):
    assert fast_json_response() is OrjsonResponse  # orjson is in the serve extra
    fast = _answers(monkeypatch, True, fingerprint)
    default = _answers(monkeypatch, False, fingerprint)
    for f, d in zip(fast, default, strict=True):
        got, want = json.loads(f), json.loads(d)
        assert got == want
        assert json.dumps(got) == json.dumps(want)  # the same keys in the same order
        assert ("model" in got) == (fingerprint is not None)  # null left out by both
    body = json.loads(fast[0])
    assert [r["filename"] for r in body["results"]] == ["0.png", "1.png", "2.png", "3.png"]
    assert body["results"][2]["attributes"]["category"]["value"] == expected(COLOURS[2])["category"]["value"]
    assert body["results"][0]["width"] == 16 and body["results"][0]["height"] == 12


def test_orjson_encodes_numpy_values_as_json_numbers():
    content = {"a": np.float32(0.5), "b": np.arange(3), "c": [1.25, None, "x"], "d": {"e": np.float64(1e-5)}}
    body = OrjsonResponse(content).body
    assert json.loads(body) == {"a": 0.5, "b": [0, 1, 2], "c": [1.25, None, "x"], "d": {"e": 1e-5}}
