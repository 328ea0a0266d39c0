"""Refining a title-word base model on the target taxonomy (`vestis train --init BASE.ckpt`): the trunk is the
base model's exactly, the target's attribute branches are new."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import vestis.cli
from vestis.config import load_config
from vestis.data.catalog import load_catalog
from vestis.data.manifest import read_manifest
from vestis.data.synthetic import generate_catalog
from vestis.data.vocab import build_vocabulary, save_vocabulary
from vestis.models import create_model
from vestis.train.checkpoint import load_checkpoint
from vestis.train.finetune import init_from_checkpoint
from vestis.train.pretrain import pretrain

OVERRIDES = ["data.image_size=32", "data.augment.enabled=false", "train.epochs=1", "train.max_steps=2"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_catalog(root, n=40, size=32, seed=4)
    vocab = save_vocabulary(build_vocabulary(read_manifest(root / "manifest.csv"), 16), root / "vocab.json")
    run = tmp_path_factory.mktemp("base")
    cfg = load_config("tiny", OVERRIDES)
    pretrain(cfg, root / "manifest.csv", vocab, run, progress=False, log=lambda *_: None)
    return root / "manifest.csv", run / "last.ckpt"


def _trunk(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("heads.")}


def test_init_copies_the_trunk_exactly_and_leaves_new_branches_as_built(base) -> None:
    data, ckpt = base
    src = load_checkpoint(ckpt)["model"]
    _, tax = load_catalog(data)
    cfg = load_config("tiny", OVERRIDES)
    torch.manual_seed(0)
    model = create_model(cfg.model, tax, image_size=32)
    built = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from_checkpoint(model, ckpt)
    after = model.state_dict()
    trunk = _trunk(after)
    assert any(k.startswith("backbone.") for k in trunk) and any(k.startswith("neck.") for k in trunk)
    for k, v in trunk.items():
        assert torch.equal(v, src[k]), k  # backbone, neck and attention: the base model's, bit for bit
    assert any(not torch.equal(built[k], src[k]) for k in trunk)  # so the copy did something
    heads = [k for k in after if k.startswith("heads.")]
    assert heads and all(torch.equal(after[k], built[k]) for k in heads)  # fresh: as create_model built them
    assert report.kept == [] and report.replaced == {a.name: "not in the checkpoint" for a in tax}
    assert report.copied == len(trunk) and report.not_copied == []


def test_train_init_refines_with_the_base_trunk(base, tmp_path: Path) -> None:
    data, ckpt = base
    out = tmp_path / "refined"
    args = ["train", "--data", str(data), "--config", "tiny", "--init", str(ckpt), "--out", str(out), *OVERRIDES,
            "train.trainable_blocks=0", "train.freeze_bn=true"]  # fmt: skip
    res = CliRunner().invoke(vestis.cli.app, args)
    assert res.exit_code == 0, res.output
    assert f"init from {ckpt}" in res.output and "branches kept: none" in res.output
    src, refined = load_checkpoint(ckpt), load_checkpoint(out / "last.ckpt")
    _, tax = load_catalog(data)
    assert refined["taxonomy"]["attributes"] == [a.to_dict() for a in tax]
    backbone = [k for k in refined["model"] if k.startswith("backbone.")]
    # a frozen trunk (no gradient, BatchNorm in eval mode) stays the base model's through the refinement
    assert backbone and all(torch.equal(refined["model"][k], src["model"][k]) for k in backbone)
    n_heads = len(tax)
    assert {int(k.split(".")[2]) for k in refined["model"] if k.startswith("heads.branches.")} == set(range(n_heads))
