"""`vestis train --model csn` starts from the csn preset; `vestis evaluate` scores an embedding checkpoint by the
substitute-retrieval protocol; `vestis predict` refuses one with a clear message."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import vestis.cli
from vestis.data.synthetic import generate_catalog
from vestis.train.checkpoint import load_checkpoint

runner = CliRunner()

SMALL = [
    "model.backbone=resnet18_tiny",
    "model.pretrained=null",
    "data.image_size=48",
    "data.num_workers=0",
    "data.augment.enabled=false",
    "train.cache_features=false",
    "train.trainable_blocks=-1",
    "train.pk_values=4",
    "train.pk_images=2",
    "train.batch_size=8",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-embed")
    generate_catalog(root / "data", n=64, size=48, seed=3)
    res = runner.invoke(
        vestis.cli.app,
        ["train", "--model", "csn", "--data", str(root / "data" / "manifest.csv"), "--epochs", "1",
         "--out", str(root / "run"), *SMALL],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return root


def test_model_flag_picks_the_preset_named_like_it(run):
    cfg = load_checkpoint(run / "run" / "best.ckpt")["config"]
    assert cfg["model"]["name"] == "csn"
    # settings of the csn preset that the default preset does not have
    assert cfg["model"]["embedding_dim"] == 64 and cfg["train"]["pk_images"] == 2  # the override wins over 8
    assert cfg["train"]["pk_values"] == 4


def test_evaluate_scores_an_embedding_checkpoint_by_retrieval(run):
    out = run / "report"
    res = runner.invoke(
        vestis.cli.app,
        ["evaluate", str(run / "run" / "best.ckpt"), "--data", str(run / "data" / "manifest.csv"), "--out", str(out),
         "--split", "all", "--workers", "0"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    s = metrics["summary"]
    assert 0.0 <= s["triplet_accuracy"] <= 1.0 and 0.0 <= s["mean_recall@5"] <= 1.0
    assert "manipulation_top30" in s and "num_manipulation_queries" in s
    assert "recognition" in metrics  # csn's recognition columns are scored too
    assert "triplet_accuracy" in res.stdout and (out / "report.md").is_file()


def test_predict_refuses_an_embedding_checkpoint_and_its_onnx_export(run, tmp_path):
    from vestis.errors import VestisError
    from vestis.inference.predictor import Predictor

    ckpt = run / "run" / "best.ckpt"
    with pytest.raises(VestisError, match=r"a csn embedding model: .*Embedder"):
        Predictor.from_path(ckpt)
    res = runner.invoke(vestis.cli.app, ["export", str(ckpt), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0, res.output
    with pytest.raises(VestisError, match="a csn embedding model"):
        Predictor.from_path(tmp_path / "m.onnx")
