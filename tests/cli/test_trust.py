"""Every command that loads a checkpoint refuses a crafted pickle (running nothing, writing nothing), loads an
old-format file only with ``--trust-checkpoint`` and a warning, and reports a damaged file in one line."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import vestis.cli
from tests.inference.conftest import make_checkpoint, make_images
from tests.train.conftest import crafted_checkpoint, legacy_checkpoint
from vestis.data.synthetic import generate_catalog
from vestis.train.checkpoint import encode_checkpoint, load_checkpoint

runner = CliRunner()
COMMANDS = ["predict", "evaluate", "export", "train", "serve"]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_catalog(root, n=12, size=32, seed=0)
    return root / "manifest.csv"


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``uvicorn.run`` replaced: records the app instead of serving it."""
    import uvicorn

    calls: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.update(app=app))
    return calls


def _args(command: str, ckpt: Path, tmp_path: Path, catalog: Path) -> list[str]:
    """The command line of ``command`` on ``ckpt``; every output goes under ``tmp_path / "out"``."""
    out = tmp_path / "out"
    if command == "predict":
        make_images(tmp_path / "imgs")
        return ["predict", str(ckpt), str(tmp_path / "imgs"), "--out", str(out / "tags.jsonl"), "--workers", "0"]
    if command == "evaluate":
        return ["evaluate", str(ckpt), "--data", str(catalog), "--out", str(out), "--workers", "0"]
    if command == "export":
        return ["export", str(ckpt), "--out", str(out / "m.onnx"), "--check-images", "0"]
    if command == "train":  # --resume reads RUN_DIR/last.ckpt
        (out / "run").mkdir(parents=True)
        (out / "run" / "last.ckpt").write_bytes(ckpt.read_bytes())
        return ["train", "--data", str(catalog), "--config", "tiny", "--out", str(out / "run"), "--resume"]
    return ["serve", str(ckpt), "--device", "cpu"]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_crafted_pickle_is_refused_and_nothing_runs_or_is_written(tmp_path, catalog, served, command):
    marker = tmp_path / "marker"
    evil = crafted_checkpoint(tmp_path / "evil.ckpt", marker)
    args = _args(command, evil, tmp_path, catalog)
    before = _files(tmp_path)
    res = runner.invoke(vestis.cli.app, args)
    assert res.exit_code == 1, res.output
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ")
    assert "an old pickle checkpoint, which can run code" in res.stderr and "--trust-checkpoint" in res.stderr
    assert not marker.exists()
    assert _files(tmp_path) == before  # no output file, no partial journal, no report, no new checkpoint
    assert "app" not in served


@pytest.mark.parametrize("command", COMMANDS)
def test_trust_checkpoint_reaches_the_loader(tmp_path, catalog, served, command):
    # with the flag the same file is unpickled, so its payload runs: that is the only way in
    marker = tmp_path / "marker"
    evil = crafted_checkpoint(tmp_path / "evil.ckpt", marker)
    res = runner.invoke(vestis.cli.app, [*_args(command, evil, tmp_path, catalog), "--trust-checkpoint"])
    assert marker.read_text() == "ran"
    assert res.exit_code == 1 and "the checkpoint has no model weights" in res.stderr, res.output


@pytest.mark.parametrize("command", COMMANDS)
def test_a_checkpoint_without_its_config_is_a_one_line_error(tmp_path, catalog, served, command):
    state = load_checkpoint(make_checkpoint(tmp_path / "good.ckpt"))
    del state["config"]
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(encode_checkpoint(state))
    res = runner.invoke(vestis.cli.app, _args(command, bad, tmp_path, catalog))
    assert res.exit_code == 1, res.output
    lines = res.stderr.splitlines()
    shown = tmp_path / "out" / "run" / "last.ckpt" if command == "train" else bad
    assert lines == [f"error: {shown}: the checkpoint has no config (expected a 'config' table)"]


def test_predict_on_a_trusted_old_checkpoint_matches_the_new_format(tmp_path, caplog):
    new = make_checkpoint(tmp_path / "new.ckpt")
    old = legacy_checkpoint(new, tmp_path / "old.ckpt")
    make_images(tmp_path / "imgs")

    def predict(ckpt: Path, name: str, *extra: str) -> Any:
        out = tmp_path / name
        return out, runner.invoke(
            vestis.cli.app, ["predict", str(ckpt), str(tmp_path / "imgs"), "--out", str(out), "--workers", "0", *extra]
        )

    out, res = predict(old, "refused.jsonl")
    assert res.exit_code == 1 and "--trust-checkpoint" in res.stderr and not out.exists()
    with caplog.at_level(logging.WARNING, logger="vestis.train.checkpoint"):
        out_old, res = predict(old, "old.jsonl", "--trust-checkpoint")
    assert res.exit_code == 0, res.output
    assert [r.getMessage() for r in caplog.records] == [
        f"{old}: loading an old pickle checkpoint because it is trusted (--trust-checkpoint); this runs any code "
        "the file holds"
    ]
    out_new, res = predict(new, "new.jsonl")
    assert res.exit_code == 0, res.output
    rows_old = [json.loads(line) for line in out_old.read_text().splitlines()]
    assert len(rows_old) == 5 and rows_old == [json.loads(line) for line in out_new.read_text().splitlines()]


def test_serve_builds_the_app_from_a_trusted_old_checkpoint(tmp_path, served, caplog):
    old = legacy_checkpoint(make_checkpoint(tmp_path / "new.ckpt"), tmp_path / "old.ckpt")
    with caplog.at_level(logging.WARNING, logger="vestis.train.checkpoint"):
        res = runner.invoke(vestis.cli.app, ["serve", str(old), "--device", "cpu", "--trust-checkpoint"])
    assert res.exit_code == 0, res.output
    assert served["app"].state.service is not None
    assert any("old pickle checkpoint" in r.getMessage() for r in caplog.records)
