"""End to end on a small synthetic catalog: training lowers the loss, resume is exact, evaluate reports."""

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

import vestis
import vestis.cli
from vestis.config import load_config
from vestis.data.synthetic import generate_catalog
from vestis.errors import VestisError
from vestis.train.checkpoint import load_checkpoint
from vestis.train.loop import train

QUIET = {"progress": False, "log": lambda *_: None}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_catalog(root, n=64, size=48, seed=1)
    return root / "manifest.csv"


def _cfg(*extra):
    return load_config("tiny", ["data.image_size=48", "data.augment.enabled=false", *extra])


def test_loss_goes_down_and_checkpoint_rebuilds(catalog, tmp_path):
    result = train(_cfg("train.epochs=5"), catalog, tmp_path / "run", **QUIET)
    losses = [h["train"]["loss"] for h in result.history]
    assert len(losses) == 5
    # down by 15 %, and the last epoch within 5 % of the lowest (epoch-to-epoch noise of a tiny catalog)
    assert losses[-1] < 0.85 * losses[0] and losses[-1] <= 1.05 * min(losses), losses
    assert result.best.is_file() and result.last.is_file()
    assert (tmp_path / "run" / "history.json").is_file()
    # the checkpoint alone rebuilds the model: same outputs as the trained one
    model = vestis.load(result.last)
    trained = result.model.eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        a, b = model(x), trained(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert model.taxonomy.names == trained.taxonomy.names
    best = vestis.load(result.best)
    assert set(best.thresholds) == set(best.taxonomy.names)
    assert result.metric == "mean_kind_score"  # train.selection_metric: auto, for a classifier
    assert best.metrics["summary"]["mean_kind_score"] == pytest.approx(result.best_metric)
    sel = best.metrics["selection"]
    assert sel == {"metric": "mean_kind_score", "value": result.best_metric, "epoch": result.best_epoch, "mode": "max"}
    vals = [h["val"]["mean_kind_score"] for h in result.history]
    assert sel["epoch"] == vals.index(max(vals)) + 1  # the first epoch with the best value


def test_resume_continues_exactly(catalog, tmp_path):
    cfg = _cfg("train.epochs=2", "data.augment.enabled=true")
    full = train(cfg, catalog, tmp_path / "full", **QUIET)
    first = train(_cfg("train.epochs=1", "data.augment.enabled=true"), catalog, tmp_path / "split", **QUIET)
    assert first.epochs_run == 1
    resumed = train(cfg, catalog, tmp_path / "split", resume=True, **QUIET)
    assert resumed.epochs_run == 1 and resumed.steps == full.steps
    a = load_checkpoint(full.last)
    b = load_checkpoint(resumed.last)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["train"]["loss"] for h in a["train_state"]["history"]] == [
        h["train"]["loss"] for h in b["train_state"]["history"]
    ]


def test_resume_refuses_a_changed_config_and_a_fresh_run_refuses_an_old_dir(catalog, tmp_path):
    train(_cfg("train.epochs=1", "train.max_steps=1"), catalog, tmp_path / "r", **QUIET)
    with pytest.raises(VestisError, match=r"different configuration.*train\.lr"):
        train(_cfg("train.epochs=2", "train.lr=0.5"), catalog, tmp_path / "r", resume=True, **QUIET)
    with pytest.raises(VestisError, match="already holds a run"):
        train(_cfg(), catalog, tmp_path / "r", **QUIET)
    with pytest.raises(VestisError, match="nothing to resume"):
        train(_cfg(), catalog, tmp_path / "empty", resume=True, **QUIET)


def test_invalid_rows_need_skip_invalid(catalog, tmp_path):
    bad = catalog.parent / "bad.csv"
    rows = list(csv.reader(catalog.open()))
    col = rows[0].index("colour")
    rows[2][col] = "ultraviolet"
    with bad.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(VestisError, match=r"(?s)bad.csv:3: colour: unknown value .ultraviolet.*--skip-invalid"):
        train(_cfg("train.max_steps=1"), bad, tmp_path / "a", **QUIET)
    train(_cfg("train.max_steps=1"), bad, tmp_path / "b", skip_invalid=True, **QUIET)
    skipped = list(csv.DictReader((tmp_path / "b" / "skipped_rows.csv").open()))
    assert [(r["id"], r["line"]) for r in skipped] == [(rows[2][0], "3")]


def test_cli_train_then_evaluate(catalog, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    res = runner.invoke(
        vestis.cli.app,
        ["train", "--data", str(catalog), "--config", "tiny", "--epochs", "1", "--image-size", "48",
         "--out", str(run), "train.max_steps=3"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "best:" in res.output and (run / "best.ckpt").is_file()
    res = runner.invoke(
        vestis.cli.app,
        ["evaluate", str(run / "best.ckpt"), "--data", str(catalog), "--out", str(tmp_path / "rep"), "--workers", "0"],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert set(metrics["attributes"]) == set(vestis.load(run / "best.ckpt").taxonomy.names)
    assert "mean micro-F1" in res.output and (tmp_path / "rep" / "report.html").is_file()
    res = runner.invoke(vestis.cli.app, ["train", "--data", str(catalog), "--out", str(run), "--config", "tiny"])
    assert res.exit_code == 1 and "already holds a run" in res.output


def test_early_stopping_and_gradient_accumulation(catalog, tmp_path):
    # lr 0: only the BatchNorm statistics move, the metric settles and patience 2 ends the run early
    result = train(_cfg("train.epochs=10", "train.lr=0", "train.patience=2"), catalog, tmp_path / "es", **QUIET)
    vals = [h["val"][result.metric] for h in result.history]
    assert len(vals) < 10
    best = vals.index(max(vals))
    assert len(vals) == best + 1 + 2  # stopped exactly 2 epochs without improvement after the best
    assert result.best_metric == vals[best]
    # 64 rows -> about 51 train rows -> 6 full batches of 8 per epoch (drop_last); accumulating 4 -> 2 steps
    one = train(_cfg("train.epochs=1"), catalog, tmp_path / "a1", **QUIET)
    acc = train(_cfg("train.epochs=1", "train.grad_accum=4"), catalog, tmp_path / "a4", **QUIET)
    assert acc.steps == -(-one.steps // 4)
