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


def test_int8_progress_lines_and_a_low_agreement_warning(tmp_path, monkeypatch):
    """Calibration progress and the agreement check, with the quantiser and the agreement injected (fast)."""
    import vestis.inference.export as export
    from vestis.inference.parity import ParityReport

    def fake_quantize(proto, calib, workdir, progress=None):
        for i in range(1, len(calib) + 1):
            progress(i, len(calib))
        return proto  # the fp32 graph: the agreement below is injected

    def low_agreement(reference, candidate, images):
        names = [a.name for a in reference.taxonomy]
        return ParityReport(len(images), dict.fromkeys(names, 0.0), {**dict.fromkeys(names, 1.0), "colour": 0.55}, 0.0)

    monkeypatch.setattr(export, "_quantize", fake_quantize)
    monkeypatch.setattr(export, "compare_predictors", low_agreement)
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    out = tmp_path / "q.onnx"
    args = ["export", str(ckpt), "--out", str(out), "--int8", "--opset", "17", "--check-images", "0"]
    res = runner.invoke(vestis.cli.app, [*args, "--calibration-images", "20"])
    assert res.exit_code == 0, res.output
    # not a terminal: a line per tenth of the images (every 2nd of 20), on stderr
    assert re.findall(r"calibrating int8: (\d+)/20 images", res.stderr) == [str(i) for i in range(2, 21, 2)]
    assert "int8 against fp32 on the calibration images: lowest agreement = 0.5500" in res.stdout
    warning = " ".join(res.stderr.split())  # soft-wrapped or not
    assert (
        "warning: int8 agrees with fp32 on colour for 55.0% of the 20 calibration images, below --min-agreement 0.9"
        in warning
    )
    assert warning.count("warning:") == 1 and out.is_file()
    # a lower bar: no warning
    res = runner.invoke(vestis.cli.app, [*args, "--calibration-images", "3", "--min-agreement", "0.5"])
    assert res.exit_code == 0, res.output
    assert "warning" not in res.stderr and re.findall(r"calibrating int8: (\d+)/3", res.stderr) == ["1", "2", "3"]


def test_the_cli_default_min_agreement_is_the_library_default():
    from vestis.cli.export import DEFAULT_MIN_AGREEMENT as CLI_DEFAULT
    from vestis.inference.export import DEFAULT_MIN_AGREEMENT

    assert CLI_DEFAULT == DEFAULT_MIN_AGREEMENT
