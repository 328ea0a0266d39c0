"""`vestis export` in-process: an ONNX file at the requested opset, with the parity report printed."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import torch
from typer.testing import CliRunner

import vestis
import vestis.cli
from tests.inference.conftest import IMAGE_SIZE, make_checkpoint
from vestis.data.transforms import normalize
from vestis.inference.batch import probabilities

runner = CliRunner()


def test_export_at_opset_17(tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    out = tmp_path / "model.onnx"
    res = runner.invoke(
        vestis.cli.app, ["export", str(ckpt), "--out", str(out), "--opset", "17", "--check-images", "4"]
    )
    assert res.exit_code == 0, res.output
    assert f"wrote {out} (fp32, opset 17, torchscript exporter" in res.stdout
    assert "against PyTorch on 4 images:" in res.stdout
    reported = float(re.search(r"max \|dp\| = (\S+),", res.stdout).group(1))
    assert reported <= 1e-4
    assert next(o.version for o in onnx.load(out).opset_import if o.domain in ("", "ai.onnx")) == 17
    # parity measured here, independently of the command's own report
    batch = np.random.default_rng(1).integers(0, 256, (4, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    model = vestis.load(ckpt)
    with torch.no_grad():
        x = normalize(torch.from_numpy(batch), model.config.data.mean, model.config.data.std)
        ref = probabilities(model(x), model.taxonomy)
    outs = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": batch})
    for got, name in zip(outs, ["category", "colour", "sleeve.length", "occasion"], strict=False):
        assert np.abs(got - ref[name].numpy()).max() <= 1e-4


def test_export_errors(tmp_path):
    res = runner.invoke(vestis.cli.app, ["export", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 1
    assert "error:" in res.stderr and "checkpoint not found" in res.stderr
    assert not (tmp_path / "m.onnx").exists()
