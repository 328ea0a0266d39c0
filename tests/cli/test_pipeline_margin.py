"""`vestis pipeline --margin` defaults to the crop margin the stage-2 checkpoint records, else 0."""

from __future__ import annotations

from typer.testing import CliRunner

import vestis.cli
from tests.inference.detector_fixtures import full_image_checkpoint
from tests.inference.pipeline_fixtures import stage2_checkpoint
from vestis.inference.pipeline_format import load_pipeline_file
from vestis.train.checkpoint import load_checkpoint, rebuild_model, save_checkpoint

runner = CliRunner()


def _run(*args):
    return runner.invoke(vestis.cli.app, [str(a) for a in args], env={"COLUMNS": "200"})


def _with_metrics(src, dst, metrics):
    state = load_checkpoint(src)
    model = rebuild_model(state)
    return save_checkpoint(dst, model=model, config=model.config, taxonomy=model.taxonomy, metrics=metrics)


def test_margin_follows_the_stage2_checkpoint(tmp_path):
    det = full_image_checkpoint(tmp_path / "det.ckpt")
    st = stage2_checkpoint(tmp_path / "st.ckpt")
    recorded = _with_metrics(st, tmp_path / "st_margin.ckpt", {"crops": {"margin": 0.15}})
    out = tmp_path / "a.vestis"
    res = _run("pipeline", det, recorded, "--out", out)
    assert res.exit_code == 0, res.output
    assert load_pipeline_file(out).settings.margin == 0.15 and "crop margin 0.15 (recorded by" in res.output
    # an explicit --margin wins
    res = _run("pipeline", det, recorded, "--out", out, "--margin", "0.05")
    assert res.exit_code == 0, res.output
    assert load_pipeline_file(out).settings.margin == 0.05
    # nothing recorded: 0, and it says so
    res = _run("pipeline", det, st, "--out", out)
    assert res.exit_code == 0, res.output
    assert load_pipeline_file(out).settings.margin == 0.0 and "records no crop margin" in res.output
    # a recorded margin that is not a fraction is refused in one line
    bad = _with_metrics(st, tmp_path / "st_bad.ckpt", {"crops": {"margin": "wide"}})
    res = _run("pipeline", det, bad, "--out", out)
    assert res.exit_code != 0 and "metrics.crops.margin: expected a number in [0, 10]" in res.output
