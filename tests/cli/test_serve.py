"""``vestis serve``: options reach the app, bad input is a one-line error (uvicorn itself is not started)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import vestis.cli
from tests.service.conftest import b64, image_bytes, make_checkpoint, wait_ready


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    import uvicorn

    calls: dict[str, Any] = {}

    def fake_run(app: Any, **kwargs: Any) -> None:
        calls["app"], calls["kwargs"] = app, kwargs

    monkeypatch.setattr(uvicorn, "run", fake_run)
    return calls


def test_serve_builds_the_app_with_the_options(tmp_path, captured):
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    args = ["serve", str(ckpt), "--host", "0.0.0.0", "--port", "8123", "--max-batch-size", "4", "--max-wait-ms", "2"]
    args += ["--max-images", "2", "--max-pixels", "5000", "--max-upload-mb", "0.5", "--device", "cpu"]
    res = CliRunner().invoke(vestis.cli.app, args)
    assert res.exit_code == 0, res.output
    assert "http://0.0.0.0:8123/" in res.output and "onnx on cpu" in res.output and "up to 4" in res.output
    assert captured["kwargs"] == {"host": "0.0.0.0", "port": 8123, "log_level": "info"}
    service = captured["app"].state.service
    assert (service.config.max_batch_size, service.config.max_wait_ms) == (4, 2.0)
    assert service.limits.max_upload_bytes == 2**19

    with TestClient(captured["app"]) as client:
        wait_ready(client)
        ok = client.post("/v1/attributes", json={"images": [b64(image_bytes((9, 9, 9), (70, 70)))]})
        assert ok.status_code == 200 and set(ok.json()["results"][0]["attributes"]) >= {"category", "colour"}
        three = [b64(image_bytes((9, 9, 9)))] * 3
        assert client.post("/v1/attributes", json={"images": three}).json()["error"] == "too many images"
        big = [b64(image_bytes((9, 9, 9), (80, 80)))]
        assert client.post("/v1/attributes", json={"images": big}).json()["error"] == "image too large"


def test_missing_model_is_a_one_line_error(tmp_path, captured):
    res = CliRunner().invoke(vestis.cli.app, ["serve", str(tmp_path / "nope.ckpt")])
    assert res.exit_code == 1
    assert "error:" in res.output and "nope.ckpt: model file not found" in res.output
    assert "app" not in captured


@pytest.mark.parametrize("option", [["--max-batch-size", "0"], ["--port", "70000"], ["--max-wait-ms", "-1"]])
def test_out_of_range_options_are_usage_errors(tmp_path, captured, option):
    res = CliRunner().invoke(vestis.cli.app, ["serve", str(tmp_path / "m.ckpt"), *option])
    assert res.exit_code == 2 and "app" not in captured


def test_the_hostile_load_limits_reach_the_app(tmp_path, captured):
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    args = ["serve", str(ckpt), "--max-request-pixels", "5000", "--decode-budget-mb", "2", "--max-queue-wait-ms", "300"]
    res = CliRunner().invoke(vestis.cli.app, [*args, "--max-json-depth", "5", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    service = captured["app"].state.service
    assert service.limits.max_request_pixels == 5000 and service.budget.capacity == 2 * 2**20
    assert service.wait_s == 0.3 and service.limits.max_json_depth == 5
    res = CliRunner().invoke(vestis.cli.app, ["serve", str(ckpt), "--max-queue-wait-ms", "0"])
    assert res.exit_code == 2
