"""``vestis serve CHECKPOINT`` runs ONNX Runtime by default and answers what ``--runtime torch`` answers."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

import vestis.cli
import vestis.cli.serve as serve_cli
from tests.service.conftest import make_checkpoint, metric_samples, wait_ready
from vestis.service.startup import PARITY_TOLERANCE, RUNTIMES, SERVE_OPSET


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The apps ``vestis serve`` built (uvicorn itself is not started)."""
    import uvicorn

    apps: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    return apps


def _photo() -> bytes:
    """A 64 x 40 photo with structure (gradients and a block), so that every output depends on the pixels."""
    y, x = np.mgrid[0:40, 0:64]
    rgb = np.stack([x * 4, y * 6, (x + y) * 2], axis=-1).astype(np.uint8)
    rgb[10:25, 30:50] = (20, 200, 90)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _serve(served: list[Any], *args: str) -> tuple[Any, str]:
    res = CliRunner().invoke(vestis.cli.app, ["serve", *args, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return served[-1], res.output


def _ask(app: Any) -> tuple[dict, dict, dict, np.ndarray]:
    with TestClient(app) as client:
        wait_ready(client)
        r = client.post("/v1/attributes?calibrated=false", files=[("file", ("p.png", _photo(), "image/png"))])
        assert r.status_code == 200, r.text
        info = {labels: v for (n, labels), v in metric_samples(client.get("/metrics").text).items()}
        heat = client.post("/v1/heatmap?style=gray", files=[("file", ("p.png", _photo(), "image/png"))])
        assert heat.status_code == 200
        gray = np.asarray(Image.open(io.BytesIO(heat.content)), dtype=np.int16)
        return r.json(), client.get("/v1/taxonomy").json(), info, gray


def test_the_onnx_default_answers_what_torch_answers(tmp_path, served):
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    onnx_app, out = _serve(served, str(ckpt))
    torch_app, _ = _serve(served, str(ckpt), "--runtime", "torch")
    assert "exported to ONNX in" in out and "torchscript exporter, opset 17" in out and "(onnx on cpu" in out

    got, model, metrics, heat = _ask(onnx_app)
    want, torch_model, _, torch_heat = _ask(torch_app)
    assert heat.shape == torch_heat.shape == (40, 64) and np.abs(heat - torch_heat).max() <= 1  # grey levels
    assert heat.max() - heat.min() > 50  # a map with something in it
    assert got["model"] == want["model"] and got["model"].startswith("sha256:")  # the same model, fingerprinted
    [g], [w] = got["results"], want["results"]
    assert set(g["attributes"]) == set(w["attributes"]) and (g["width"], g["height"]) == (64, 40)
    for name, wa in w["attributes"].items():
        ga = g["attributes"][name]
        assert ga.get("value") == wa.get("value") and ga.get("values") == wa.get("values"), name
        assert list(ga["scores"]) == list(wa["scores"])
        diff = max(abs(ga["scores"][v] - wa["scores"][v]) for v in wa["scores"])
        assert diff <= 1e-4, (name, diff)
    # the scores are not constant: the comparison is between real outputs
    assert len({round(s, 6) for a in w["attributes"].values() for s in a["scores"].values()}) > 3

    assert (model["runtime"], torch_model["runtime"]) == ("onnx", "torch")
    assert model["preprocessing"]["image_size"] == 48 and model["model"] == got["model"]
    export = model["export"]
    assert export["exporter"] == "torchscript" and export["opset"] == 17 and export["parity_images"] == 4
    assert 0 < export["seconds"] < 600 and export["tolerance"] == PARITY_TOLERANCE
    assert 0 <= export["max_abs_diff"] <= PARITY_TOLERANCE and torch_model["export"] is None
    assert any(("backend", "onnx") in labels for labels in metrics)


def test_an_onnx_file_always_runs_on_onnx_runtime(tmp_path, served):
    from vestis.inference.export import export_onnx

    onnx_file = export_onnx(make_checkpoint(tmp_path / "m.ckpt"), tmp_path / "m.onnx", opset=17, check_images=0).path
    app, out = _serve(served, str(onnx_file))
    assert "exported" not in out and "(onnx on cpu" in out
    with TestClient(app) as client:
        body = client.get("/v1/taxonomy").json()
        assert body["runtime"] == "onnx" and body["export"] is None
    res = CliRunner().invoke(vestis.cli.app, ["serve", str(onnx_file), "--runtime", "torch"])
    assert res.exit_code == 1 and res.stderr.count("\n") == 1, res.output
    assert "an ONNX file runs on ONNX Runtime; --runtime torch needs the checkpoint" in res.stderr


def test_runtime_values_are_checked(tmp_path: Path, served):
    res = CliRunner().invoke(vestis.cli.app, ["serve", str(tmp_path / "m.ckpt"), "--runtime", "tensorrt"])
    assert res.exit_code == 2 and "expected one of onnx, torch" in res.output and not served
    missing = CliRunner().invoke(vestis.cli.app, ["serve", str(tmp_path / "nope.ckpt"), "--runtime", "onnx"])
    assert missing.exit_code == 1 and "nope.ckpt: model file not found" in missing.stderr
    # the CLI writes the values out to start quickly; they are the service's
    assert serve_cli._RUNTIMES == RUNTIMES and serve_cli._SERVE_OPSET == SERVE_OPSET
