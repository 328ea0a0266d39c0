"""The service on a combined per-attribute model (`vestis serve RUN`): /v1/attributes answers the union of the
members' attributes, as the combined predictor does, under the combined fingerprint."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import vestis.cli
from tests.inference.combined_fixtures import images_of, small_catalog, train_run
from tests.service.conftest import b64, wait_ready
from vestis.inference.predictor import Predictor
from vestis.service import ServiceConfig, create_app

MEMBERS = ["category", "occasion"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("combined-serve")
    data = small_catalog(root / "cat")
    return data, train_run(data, root / "run", attributes=MEMBERS)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    import uvicorn

    calls: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.update(app=app, kwargs=kw))
    return calls


def _check_answers(client: TestClient, predictor: Predictor, data, tolerance: float = 1e-6) -> None:
    paths = sorted((data.parent / "full" / "images").iterdir())[:4]
    want = predictor.predict(images_of(data, 4))
    res = client.post("/v1/attributes", json={"images": [b64(p.read_bytes()) for p in paths]})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["model"] == predictor.fingerprint
    for got, w in zip(body["results"], want, strict=True):
        assert list(got["attributes"]) == MEMBERS
        assert got["attributes"]["category"]["value"] == w["category"].value
        assert got["attributes"]["category"]["scores"] == pytest.approx(w["category"].scores, abs=tolerance)
        assert got["attributes"]["occasion"]["values"] == w["occasion"].values
        assert got["attributes"]["occasion"]["scores"] == pytest.approx(w["occasion"].scores, abs=tolerance)
    tax = client.get("/v1/taxonomy").json()
    assert [a["name"] for a in tax["attributes"]] == MEMBERS and tax["model"] == predictor.fingerprint
    assert tax["category_attribute"] == "category" and tax["thresholds"] == predictor.thresholds


def test_the_service_answers_with_the_combined_predictor(run) -> None:
    data, out = run
    predictor = Predictor.from_path(out, device="cpu")
    with TestClient(create_app(predictor, ServiceConfig(max_wait_ms=5))) as client:
        wait_ready(client)
        _check_answers(client, predictor, data)


def test_vestis_serve_takes_the_run_folder(run, captured) -> None:
    data, out = run
    res = CliRunner().invoke(vestis.cli.app, ["serve", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "on cpu, 2 attributes" in res.output  # on PyTorch, or on ONNX Runtime after a start-up export
    with TestClient(captured["app"]) as client:
        wait_ready(client)
        _check_answers(client, Predictor.from_path(out, device="cpu"), data, tolerance=1e-4)


def test_vestis_serve_takes_the_exported_combined_model(run, captured, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from vestis.inference.export import export_onnx

    data, out = run
    onnx_path = export_onnx(out, tmp_path / "m.onnx", opset=17, check_images=0).path
    res = CliRunner().invoke(vestis.cli.app, ["serve", str(onnx_path), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "onnx on cpu, 2 attributes" in res.output
    with TestClient(captured["app"]) as client:
        wait_ready(client)
        _check_answers(client, Predictor.from_path(out, device="cpu"), data, tolerance=1e-4)


def test_vestis_serve_takes_combined_json(run, captured) -> None:
    data, out = run
    res = CliRunner().invoke(vestis.cli.app, ["serve", str(out / "combined.json"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    with TestClient(captured["app"]) as client:
        wait_ready(client)
        _check_answers(client, Predictor.from_path(out, device="cpu"), data, tolerance=1e-4)
