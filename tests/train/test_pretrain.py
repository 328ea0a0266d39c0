"""`vestis pretrain` end to end on a tiny synthetic catalog: the derived manifest and taxonomy, the split it keeps,
the masked rows, an ordinary checkpoint, and the refusals (another split, another manifest, an existing run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vestis
import vestis.cli
from vestis.data.dataset import encode_targets
from vestis.data.manifest import read_manifest
from vestis.data.splits import split_manifest
from vestis.data.synthetic import generate_catalog
from vestis.data.taxonomy import load_taxonomy
from vestis.data.vocab import tokenize
from vestis.train.checkpoint import load_checkpoint

TRAIN = ["--config", "tiny", "--image-size", "32", "--epochs", "1", "train.max_steps=2", "data.augment.enabled=false"]


def _cli(*args: str) -> object:
    return CliRunner().invoke(vestis.cli.app, [str(a) for a in args])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_catalog(root, n=40, size=32, seed=2)
    vocab = root / "vocab.json"
    res = _cli("vocab", root / "manifest.csv", "--top", "12", "--out", vocab, "--exclude-label-words")
    assert res.exit_code == 0, res.output
    run = tmp_path_factory.mktemp("run")
    res = _cli("pretrain", "--data", root / "manifest.csv", "--vocab", vocab, "--out", run, *TRAIN)
    assert res.exit_code == 0, res.output
    return root / "manifest.csv", vocab, run


def test_derived_catalog_keeps_the_split_and_labels_title_words(base) -> None:
    data, vocab_path, run = base
    words = json.loads(vocab_path.read_text(encoding="utf-8"))["words"]
    tax = load_taxonomy(run / "pretrain_taxonomy.yaml")
    assert [(a.name, a.kind, list(a.values)) for a in tax] == [("title_words", "multi", words)]
    original = read_manifest(data)
    derived = read_manifest(run / "pretrain_manifest.csv")
    assert [r.id for r in derived] == [r.id for r in original]
    parts = split_manifest(original, val_fraction=0.1, test_fraction=0.1, seed=0)  # the tiny preset's split
    for name, part in parts.items():
        assert {r.id for r in derived if r.split == name} == {r.id for r in part}
    for o, d in zip(original, derived, strict=True):
        assert Path(d.image).is_absolute() and Path(d.image) == original.image_path(o).absolute()
        expected = tuple(w for w in words if w in set(tokenize(o.title)))
        assert d.labels.get("title_words", ()) == expected
    enc = encode_targets(derived.records, tax)
    # a row whose title holds no vocabulary word has no label: masked, like any missing label
    assert list(enc.masks["title_words"]) == [bool(d.labels) for d in derived]
    assert enc.masks["title_words"].any()


def test_checkpoint_is_an_ordinary_vestis_model(base) -> None:
    _, vocab_path, run = base
    model = vestis.load(run / "best.ckpt")
    assert model.taxonomy.names == ["title_words"]
    assert model.config.model.backbone == "resnet18_tiny" and model.config.data.image_size == 32
    assert (run / "config.yaml").read_text(encoding="utf-8").startswith("# vestis pretrain")
    assert (run / "vocab.json").read_bytes() == vocab_path.read_bytes()
    # the base model is picked by validation mAP, which ranks sparse title words; micro-F1 at 0.5 would not
    history = json.loads((run / "history.json").read_text(encoding="utf-8"))
    state = load_checkpoint(run / "last.ckpt")
    assert state["train_state"]["selection_metric"] == "mean_average_precision"
    assert all(0.0 <= h["val"]["mean_average_precision"] <= 1.0 for h in history)


def test_refusals(base, tmp_path: Path) -> None:
    data, vocab, run = base
    res = _cli("pretrain", "--data", data, "--vocab", vocab, "--out", tmp_path / "a", *TRAIN, "data.split_seed=1")
    assert res.exit_code == 1 and "split" in res.output and "vestis vocab" in res.output
    other = tmp_path / "other.csv"
    other.write_text(data.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    res = _cli("pretrain", "--data", other, "--vocab", vocab, "--out", tmp_path / "b", *TRAIN)
    assert res.exit_code == 1 and "another file" in res.output
    res = _cli("pretrain", "--data", data, "--vocab", vocab, "--out", run, *TRAIN)
    assert res.exit_code == 1 and "already holds a run" in res.output
    res = _cli("pretrain", "--data", data, "--vocab", tmp_path / "none.json", "--out", tmp_path / "c", *TRAIN)
    assert res.exit_code == 1 and "vocabulary not found" in res.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
