"""An exported graph that disagrees with its checkpoint stops ``vestis serve`` with a one-line error."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import vestis.cli
import vestis.inference.export as export_module
from tests.service.conftest import make_checkpoint
from vestis.errors import VestisError
from vestis.inference.parity import ParityReport
from vestis.service.startup import PARITY_TOLERANCE, check_parity


def _report(diffs: dict[str, float], heat: float = 0.0) -> ParityReport:
    return ParityReport(4, diffs, dict.fromkeys(diffs, 1.0), heat)


def test_check_parity_passes_within_the_tolerance_and_names_the_worst_output():
    check_parity(_report({"category": 2e-7, "colour": PARITY_TOLERANCE}, heat=5e-5), "m.ckpt")
    with pytest.raises(VestisError) as e:
        check_parity(_report({"category": 2e-7, "colour": 0.03, "sleeve": 0.002}), "m.ckpt")
    assert str(e.value) == (
        "m.ckpt: the ONNX export disagrees with PyTorch on 4 generated images: max |dp| = 3.00e-02 on colour, "
        "above the tolerance 0.0001; serve it on PyTorch with --runtime torch"
    )
    with pytest.raises(VestisError, match=r"max \|dp\| = 2.00e-03 on the heat-map"):
        check_parity(_report({"category": 0.0}, heat=2e-3), "m.ckpt")
    with pytest.raises(VestisError, match="on sleeve"):
        check_parity(_report({"sleeve": 1e-3}), "m.ckpt", tolerance=1e-4)
    check_parity(_report({"sleeve": 1e-3}), "m.ckpt", tolerance=1e-2)


def test_a_graph_that_disagrees_stops_start_up(tmp_path, monkeypatch):
    import uvicorn

    served: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(app))
    real_export = export_module.torch_export

    def tampered(*args: Any, **kwargs: Any) -> tuple[Any, str]:
        from onnx import numpy_helper

        proto, exporter = real_export(*args, **kwargs)
        changed = 0
        for init in proto.graph.initializer:
            w = numpy_helper.to_array(init)
            if w.dtype == np.float32 and w.size > 1:
                init.CopyFrom(numpy_helper.from_array(w * np.float32(1.5), init.name))
                changed += 1
        assert changed  # the graph's weights are what the check must catch
        return proto, exporter

    monkeypatch.setattr(export_module, "torch_export", tampered)
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    before = sorted(p.name for p in tmp_path.iterdir())
    res = CliRunner().invoke(vestis.cli.app, ["serve", str(ckpt), "--device", "cpu"])
    assert res.exit_code == 1, res.output
    [line] = res.stderr.splitlines()
    assert line.startswith(f"error: {ckpt}: the ONNX export disagrees with PyTorch on 4 generated images: max |dp| =")
    assert line.endswith("above the tolerance 0.0001; serve it on PyTorch with --runtime torch")
    assert not served and sorted(p.name for p in tmp_path.iterdir()) == before  # nothing built, nothing written

    monkeypatch.setattr(export_module, "torch_export", real_export)  # the way out the message names
    res = CliRunner().invoke(vestis.cli.app, ["serve", str(ckpt), "--device", "cpu", "--runtime", "torch"])
    assert res.exit_code == 0 and "(torch on cpu" in res.output and len(served) == 1
