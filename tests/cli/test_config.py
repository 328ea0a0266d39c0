"""`vestis config show`, `vestis --version`, and the commented config.yaml that `vestis train` leaves in its run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import vestis
import vestis.cli
import vestis.config
from vestis.config import load_config
from vestis.config_doc import config_yaml, field_comments
from vestis.data.synthetic import generate_catalog
from vestis.train.checkpoint import load_checkpoint

runner = CliRunner()

SMALL = [
    "model.backbone=resnet18_tiny",
    "data.image_size=32",
    "data.num_workers=0",
    "train.batch_size=16",
    "train.lr=0.001234567",
]


def test_show_prints_the_resolved_config_that_loads_back(tmp_path):
    res = runner.invoke(vestis.cli.app, ["config", "show", "--config", "tiny", "train.lr=0.5", "model.dropout=0.1"])
    assert res.exit_code == 0, res.output
    want = load_config("tiny", ["train.lr=0.5", "model.dropout=0.1"])
    (tmp_path / "shown.yaml").write_text(res.output, encoding="utf-8")
    assert load_config(tmp_path / "shown.yaml").to_dict() == want.to_dict()
    assert yaml.safe_load(res.output)["data"]["mean"] == list(want.data.mean)  # resolved: numbers, not null
    assert res.output.startswith("# vestis config show --config tiny train.lr=0.5 model.dropout=0.1\n")


def test_every_comment_of_config_py_is_shown_with_its_field():
    out = runner.invoke(vestis.cli.app, ["config", "show"]).output
    lines = out.splitlines()
    # a naive reading of the source: `name: type = default  # comment` on one line
    source = Path(vestis.config.__file__).read_text(encoding="utf-8").splitlines()
    trailing = [m.groups() for s in source if (m := re.match(r"^    (\w+): [^#]*?  # (.*)$", s))]
    assert len(trailing) > 30
    for name, comment in trailing:
        assert any(re.match(rf"^\s+{name}: .*  # {re.escape(comment)}$", line) for line in lines), name
    # a block above a field, by hand
    i = next(n for n, line in enumerate(lines) if line.startswith("  mean: "))
    assert lines[i - 2] == (
        "  # per-channel normalisation on the 0-1 scale; None: what the pretrained weights expect (model.pretrained "
        "names a"
    )
    assert lines[i - 1].startswith("  # source, see vestis.pretrained), else the ImageNet statistics.")
    assert "  pad_value: 255  # catalog photos are shot on white; padding with white hides the pad edge" in lines
    assert "data:  # Preprocessing; stored in every checkpoint so inference matches training exactly." in lines
    assert "    zoom: 0.2  # scale in [1 - zoom, 1 + zoom]" in lines  # nested section, indented


def test_field_comments_know_block_and_end_of_line_comments():
    c = field_comments()
    assert c["TrainConfig"]["optimizer"] == ([], "adam | adamw | sgd")
    above, end = c["TrainConfig"]["early_stop_metric"]
    assert above == ["the older name of selection_metric, kept for old configs: when set it wins over selection_metric"]
    assert end == ""
    assert c["TrainConfig"]["weight_decay"] == ([], "")  # no comment: nothing borrowed from a neighbour


def test_special_values_round_trip(tmp_path):
    cfg = load_config("tiny", ["train.task_weights={colour: 2.5}", "model.pretrained=null", "train.threshold=1e-7"])
    (tmp_path / "c.yaml").write_text(config_yaml(cfg), encoding="utf-8")
    assert load_config(tmp_path / "c.yaml").to_dict() == cfg.to_dict()


def test_bad_input_is_one_line_and_exit_1():
    res = runner.invoke(vestis.cli.app, ["config", "show", "--config", "nope"])
    assert res.exit_code == 1 and res.output.startswith("error: unknown preset 'nope'")
    res = runner.invoke(vestis.cli.app, ["config", "show", "train.bogus=1"])
    assert res.exit_code == 1 and "unknown setting 'train.bogus'" in res.output and "Traceback" not in res.output


def test_version():
    res = runner.invoke(vestis.cli.app, ["--version"])
    assert res.exit_code == 0 and res.output == f"vestis {vestis.__version__}\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-train")
    generate_catalog(root / "data", n=24, size=32, seed=1)
    args = ["train", "--data", str(root / "data" / "manifest.csv"), "--config", "tiny", "--epochs", "2"]
    res = runner.invoke(vestis.cli.app, [*args, "--out", str(root / "run"), *SMALL])
    assert res.exit_code == 0, res.output
    return root, args, res.output


def test_train_writes_the_resolved_config(run):
    root, args, _ = run
    text = (root / "run" / "config.yaml").read_text(encoding="utf-8")
    assert text.startswith("# vestis train --config tiny ")
    assert "  lr: 0.001234567\n" in text and "  optimizer: adamw  # adam | adamw | sgd\n" in text
    saved = load_checkpoint(root / "run" / "last.ckpt")["config"]
    assert load_config(root / "run" / "config.yaml").to_dict() == saved
    # another run into the same folder is refused and leaves the record alone
    res = runner.invoke(vestis.cli.app, [*args, "--out", str(root / "run"), *SMALL, "train.lr=0.1"])
    assert res.exit_code == 1 and "already holds a run" in res.output
    assert (root / "run" / "config.yaml").read_text(encoding="utf-8") == text


def test_train_logs_lines_not_bars_when_not_a_terminal(run):
    _, _, output = run
    number = r"(?:-?\d(?:\.\d{1,3})?|-?0\.0*[1-9]\d{0,3}|\d{2,4}(?:\.\d{1,2})?|[\d.]+e[-+]\d+|None)"
    epochs = [line for line in output.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2, output
    for n, line in enumerate(epochs, start=1):
        assert re.fullmatch(rf"epoch {n}: loss {number}, val \w+ {number}( \(best\))?, \d+ img/s", line), line
    assert "━" not in output and "\r" not in output  # no Rich bar dumped at the end
    best = next(line for line in output.splitlines() if line.startswith("best: "))
    assert re.fullmatch(rf"best: .*best\.ckpt \(\w+ = {number}\)", best), best
