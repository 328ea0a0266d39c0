"""`vestis train --per-attribute`: one run per attribute on a one-attribute taxonomy, resumable, and the
combined.json that describes them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vestis.cli
from tests.inference.combined_fixtures import OVERRIDES, small_catalog, train_run
from vestis.data.manifest import read_manifest
from vestis.data.taxonomy import load_taxonomy
from vestis.errors import VestisError
from vestis.inference.combined import combined_fingerprint
from vestis.train.checkpoint import fingerprint_of, load_checkpoint
from vestis.train.per_attribute import member_dirs

CHOSEN = ["occasion", "pattern"]  # given out of taxonomy order


def _train(data: Path, out: Path, *extra: str):
    args = ["train", "--data", str(data), "--config", "tiny", "--per-attribute", "--attributes", ",".join(CHOSEN),
            "--out", str(out), *extra, *OVERRIDES]  # fmt: skip
    return CliRunner().invoke(vestis.cli.app, args)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("per-attribute")
    data = small_catalog(root / "cat")
    out = root / "run"
    res = _train(data, out)
    assert res.exit_code == 0, res.output
    return data, out, res.output


def test_one_run_per_attribute_on_its_own_taxonomy(run) -> None:
    data, out, output = run
    original = load_taxonomy(data.parent / "taxonomy.yaml")
    rows = read_manifest(data)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["occasion", "pattern"]
    for name in CHOSEN:
        sub = out / name
        for f in ("last.ckpt", "best.ckpt", "config.yaml", "manifest.csv", "taxonomy.yaml", "finished.json"):
            assert (sub / f).is_file(), f
        state = load_checkpoint(sub / "best.ckpt")
        want = {k: v for k, v in original[name].to_dict().items() if k != "applies_to"}
        assert state["taxonomy"]["attributes"] == [want]  # the attribute alone, its values in order
        assert "applies_to" in original[name].to_dict() or name == "occasion"
        assert "vestis train --per-attribute" in (sub / "config.yaml").read_text()
        member = read_manifest(sub / "manifest.csv")
        # every row, only this attribute's label: an unlabelled row is masked in its loss
        assert [r.id for r in member.records] == [r.id for r in rows.records]
        assert [r.labels for r in member.records] == [
            {name: r.labels[name]} if name in r.labels else {} for r in rows.records
        ]
        assert sum(1 for r in member.records if not r.labels) > 0
    # one line per attribute, in taxonomy order: pattern before occasion
    assert output.index("[1/2] pattern: done") < output.index("[2/2] occasion: done")


def test_combined_json_records_members_and_fingerprint(run) -> None:
    data, out, _ = run
    doc = json.loads((out / "combined.json").read_text())
    assert doc["format"] == "vestis-combined" and list(doc["members"]) == ["pattern", "occasion"]
    original = load_taxonomy(data.parent / "taxonomy.yaml")
    # without the category attribute, applicability cannot be decided: applies_to is left out
    assert doc["taxonomy"]["attributes"] == [
        {k: v for k, v in original[n].to_dict().items() if k != "applies_to"} for n in ("pattern", "occasion")
    ]
    assert "category_attribute" not in doc["taxonomy"]
    fps = {}
    for name, entry in doc["members"].items():
        state = load_checkpoint(out / entry["checkpoint"])
        assert entry["checkpoint"] == f"{name}/best.ckpt" and entry["fingerprint"] == fingerprint_of(state)
        assert entry["selection"] == state["metrics"]["selection"] and entry["selection"]["metric"]
        assert doc["preprocessing"] == state["preprocessing"]
        fps[name] = entry["fingerprint"]
    assert doc["fingerprint"] == combined_fingerprint(fps, doc["taxonomy"], doc["preprocessing"])


def test_rerun_skips_finished_members_and_resume_continues_an_interrupted_one(run, tmp_path) -> None:
    data, out, _ = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    before = {n: (copy / n / "best.ckpt").read_bytes() for n in CHOSEN}
    res = _train(data, copy)
    assert res.exit_code == 0, res.output
    assert "[1/2] pattern: finished before, skipped" in res.output and "training ->" not in res.output
    assert all((copy / n / "best.ckpt").read_bytes() == before[n] for n in CHOSEN)
    assert json.loads((copy / "combined.json").read_text()) == json.loads((out / "combined.json").read_text())

    (copy / "occasion" / "finished.json").unlink()  # killed after its last epoch, before the record
    res = _train(data, copy)
    assert res.exit_code == 1 and "was interrupted" in res.output and "--resume" in res.output
    res = _train(data, copy, "--resume")
    assert res.exit_code == 0, res.output
    assert "pattern: finished before, skipped" in res.output and "[2/2] occasion: training" in res.output
    assert (copy / "occasion" / "finished.json").is_file()
    assert (copy / "occasion" / "best.ckpt").read_bytes() == before["occasion"]  # nothing left to train

    res = _train(data, copy, "train.lr=0.5")
    assert res.exit_code == 1 and "cannot resume with a different configuration" in res.output


def test_refusals(run, tmp_path) -> None:
    data, _, _ = run
    cli = CliRunner()
    base = ["train", "--data", str(data), "--config", "tiny", "--out", str(tmp_path / "x"), *OVERRIDES]
    res = cli.invoke(vestis.cli.app, [*base, "--attributes", "pattern"])
    assert res.exit_code == 1 and "--attributes: only with --per-attribute" in res.output
    res = cli.invoke(vestis.cli.app, [*base, "--per-attribute", "--attributes", "pattern,nope"])
    assert res.exit_code == 1 and "['nope'] not in the taxonomy" in res.output
    res = cli.invoke(vestis.cli.app, [*base, "--per-attribute", "--model", "csn"])
    assert res.exit_code == 1 and "pick a classifier" in res.output
    with pytest.raises(VestisError, match="names an attribute twice"):
        train_run(data, tmp_path / "y", attributes=["pattern", "pattern"])


def test_member_folders_are_safe_names() -> None:
    assert member_dirs(["a/b", "..", "A/b", "combined.json", "ok"]) == {
        "a/b": "a_b",
        "..": "attr_..",
        "A/b": "A_b_2",
        "combined.json": "combined.json_2",
        "ok": "ok",
    }
