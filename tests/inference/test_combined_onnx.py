"""The ONNX export of a combined per-attribute model: one graph computing every member's outputs (a shared trunk
once), with the single-model metadata, that the predictor, tagging and evaluation take like any export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.inference.combined_fixtures import ATTRIBUTES, images_of, make_runs
from vestis.inference.predictor import Predictor

onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return make_runs(tmp_path_factory.mktemp("combined-onnx"))


def _conv_calls(module: torch.nn.Module, run) -> int:
    """How many convolutions of ``module`` ``run()`` executes (a module called twice counts twice)."""
    calls = []
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in convs]
    with torch.inference_mode():
        run()
    for h in hooks:
        h.remove()
    return len(calls)


def _saved_convs(module: torch.nn.Module, x: torch.Tensor, path: Path) -> int:
    """The convolutions the combined graph at ``path`` leaves out against its members run one by one, after
    checking that it runs exactly those of the torch module and that what it saves is the shared trunks'."""
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)
    assert convs == _conv_calls(module, lambda: module(x))  # the graph runs what the torch module runs
    own = sum(_conv_calls(m, lambda m=m: m(x)) for m in module.members)  # each member alone, its trunk included
    bb, z = module.members[0].model.backbone, module.members[0].normalize(x)
    saved = _conv_calls(bb, lambda: bb(z)) * (len(module.members) - len(module.groups))
    saved += sum(_conv_calls(bb, lambda k=k: bb.forward_until(z, k)) * (len(t) - 1) for t, k in module.trunks)
    assert convs == own - saved
    return saved


def test_onnx_export_computes_the_combined_outputs(runs, tmp_path) -> None:
    from vestis.eval.run import evaluate_checkpoint
    from vestis.inference.export import export_onnx

    single = export_onnx(
        runs["free"] / "pattern" / "best.ckpt", tmp_path / "one.onnx", opset=17, check_images=0
    ).metadata
    for name in ("free", "shared"):  # "partial" is exported through the CLI below
        torch_p = Predictor.from_path(runs[name], device="cpu")
        result = export_onnx(runs[name], tmp_path / f"{name}.onnx", opset=17, check_images=0)
        assert result.parity is None  # compared below, on catalog images
        onnx_p = Predictor.from_path(result.path, device="cpu")
        assert onnx_p.taxonomy.to_dict() == torch_p.taxonomy.to_dict()
        assert onnx_p.thresholds == torch_p.thresholds and onnx_p.fingerprint == torch_p.fingerprint
        assert json.loads(result.metadata["vestis.members"]) == torch_p.info["members"]
        assert set(result.metadata) == set(single) | {"vestis.members"}  # the single-model metadata, and the members
        batch = torch_p.preprocess(images_of(runs["data"]))
        want, got = torch_p.run(batch), onnx_p.run(batch)
        for a in torch_p.taxonomy.names:
            np.testing.assert_allclose(got[0][a], want[0][a], atol=1e-4, rtol=0)
        np.testing.assert_allclose(got[1], want[1], atol=1e-4, rtol=0)
        saved = _saved_convs(torch_p.module, torch.from_numpy(batch[:2]), result.path)
        assert (saved > 0) == (name != "free"), name
    # the exported file of every attribute evaluates on the catalog like a single model's
    report = evaluate_checkpoint(tmp_path / "free.onnx", runs["data"], tmp_path / "eval", split="all", workers=0)
    assert set(report.metrics["attributes"]) == set(ATTRIBUTES)


def test_cli_exports_and_predicts_a_combined_model(runs, tmp_path) -> None:
    from typer.testing import CliRunner

    import vestis.cli

    run, cli = runs["partial"], CliRunner()
    res = cli.invoke(vestis.cli.app, ["export", str(run / "combined.json"), "--out", str(tmp_path / "m.onnx"),
                                      "--opset", "17", "--check-images", "3"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "against PyTorch on 3 images" in res.output
    torch_p = Predictor.from_path(run, device="cpu")
    assert torch_p.info["shared_blocks"]  # the lower blocks of both trunks are one in the graph
    assert _saved_convs(torch_p.module, torch.zeros((2, 3, 32, 32), dtype=torch.uint8), tmp_path / "m.onnx") > 0
    images = sorted((runs["data"].parent / "full" / "images").iterdir())[:5]
    rows = {}
    for name, model in (("torch", run / "combined.json"), ("onnx", tmp_path / "m.onnx")):
        out = tmp_path / f"{name}.jsonl"
        res = cli.invoke(vestis.cli.app, ["predict", str(model), *map(str, images), "--out", str(out), "--workers", "0",
                                          "--device", "cpu"])  # fmt: skip
        assert res.exit_code == 0, res.output
        rows[name] = [json.loads(line) for line in out.read_text().splitlines()]
    fp = Predictor.from_path(run).fingerprint
    assert {r["model"] for r in rows["torch"] + rows["onnx"]} == {fp}
    for a, b in zip(rows["torch"], rows["onnx"], strict=True):
        assert a["id"] == b["id"] and set(a["attributes"]) == set(b["attributes"]) == {"category", "occasion"}
        for k, v in a["attributes"].items():
            assert b["attributes"][k]["scores"] == pytest.approx(v["scores"], abs=1e-4)
