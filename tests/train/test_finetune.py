"""Fine-tuning controls: backbone blocks, freezing, BatchNorm freezing, per-part learning rates, warm-up and
initialising from a checkpoint of another taxonomy."""

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import vestis
import vestis.cli
from vestis.config import ModelConfig, TrainConfig, load_config
from vestis.data.synthetic import generate_catalog
from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.models import create_model
from vestis.registry import BACKBONES
from vestis.train.checkpoint import save_checkpoint
from vestis.train.finetune import apply_freeze, init_from_checkpoint, param_groups, trained_from_block
from vestis.train.loop import train
from vestis.train.optim import build_optimizer, build_scheduler

QUIET = {"progress": False, "log": lambda *_: None}


def _tax(*attrs: tuple[str, str, list[str]]) -> Taxonomy:
    return Taxonomy.from_dict({"attributes": [{"name": n, "kind": k, "values": v} for n, k, v in attrs]})


TAX = _tax(("category", "single", ["tee", "shirt", "jeans"]), ("colour", "single", ["red", "blue"]))


def _model(backbone: str = "mobilenetv3_tiny", taxonomy: Taxonomy = TAX, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(ModelConfig(name="a3", backbone=backbone, branch_hidden=8, dropout=0.0), taxonomy)


def _steps(model: nn.Module, cfg: TrainConfig, n: int = 3, epoch: int = 0) -> None:
    """``n`` optimiser steps on random images with a squared-logit loss, the loop's way (train, then freeze)."""
    opt = build_optimizer(model, cfg)
    model.train()
    apply_freeze(model, cfg, epoch)
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        x = torch.randn(4, 3, 32, 32, generator=g)
        loss = sum((v**2).mean() for v in model(x).values())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: nn.Module, prefix: str) -> dict[str, bool]:
    after = module.state_dict()
    return {k: not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)}


# --- blocks -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKBONES.names(tiny=True))
def test_blocks_partition_the_backbone_and_split_forward_is_exact(name):
    torch.manual_seed(0)
    full = BACKBONES.build(name)
    blocks = full.blocks()
    assert blocks[0].name == "stem" and blocks[-1].stage == len(full.feature_info) - 1
    # every parameter is in exactly one block
    owned = [id(p) for b in blocks for m in full.block_modules(b) for p in m.parameters()]
    assert sorted(owned) == sorted(id(p) for p in full.parameters())
    # one block per nn.Sequential child: the block count is the stages' lengths added up
    n_children = sum(
        len(m) if isinstance(m := full.get_submodule(paths[0]), nn.Sequential) and len(paths) == 1 else 1
        for paths in full._stage_paths
    )
    assert len(blocks) == n_children
    bb = full.select(full.pyramid_features()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = bb(x)
        for k in range(len(bb.blocks()) + 1):
            cut, taps = bb.forward_until(x, k)
            out = bb.forward_from(cut, k, taps)
            assert list(out) == list(ref) and all(torch.equal(out[n], ref[n]) for n in ref), k
        with pytest.raises(VestisError, match="outside"):
            bb.forward_until(x, len(bb.blocks()) + 1)


def test_blocks_of_resnet_and_mobilenet_by_name():
    r = BACKBONES.build("resnet18_tiny")
    assert [b.name for b in r.blocks()] == ["stem", "layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    assert r.blocks()[0].paths == ("conv1", "bn1", "relu", "maxpool")  # the ResNet stem is one block
    m = BACKBONES.build("mobilenetv3_small")
    names = [b.name for b in m.blocks()]
    assert names[:4] == ["stem", "stages.0.0", "stages.1.0", "stages.1.1"] and names[-1] == "top"
    assert len(names) == 1 + 11 + 1  # stem, the 11 inverted residuals of Table 2, the 1x1 head convolution


# --- freezing -----------------------------------------------------------------------------------------------
def test_trainable_blocks_trains_only_the_last_n_blocks():
    model = _model()
    bb = model.backbone
    blocks = bb.blocks()
    cfg = TrainConfig(optimizer="adamw", lr=1e-2, weight_decay=0.1, trainable_blocks=2)
    before = _snapshot(model)
    _steps(model, cfg)
    frozen_prefixes = tuple(f"backbone.{p}." for b in blocks[:-2] for p in b.paths)
    changed = _changed(before, model, "")
    for k, moved in changed.items():
        if k.startswith(frozen_prefixes):
            assert not moved, f"{k} is frozen but changed"  # weights AND BatchNorm running statistics
    trainable = [k for k in changed if k.startswith(tuple(f"backbone.{p}." for b in blocks[-2:] for p in b.paths))]
    assert trainable and all(changed[k] for k in trainable if k.endswith(("weight", "running_mean")))
    assert all(changed[k] for k in changed if k.startswith("heads.") and k.endswith("weight"))
    assert not any(p.requires_grad for b in blocks[:-2] for m in bb.block_modules(b) for p in m.parameters())
    assert all(not m.training for b in blocks[:-2] for m in bb.block_modules(b))


def test_trainable_blocks_zero_freezes_the_whole_backbone_and_cuts_after_it():
    model = _model()
    cfg = TrainConfig(optimizer="adam", lr=1e-2, trainable_blocks=0)
    before = _snapshot(model)
    _steps(model, cfg)
    assert not any(_changed(before, model, "backbone.").values())
    assert any(_changed(before, model, "neck.").values())
    assert trained_from_block(model, cfg) == len(model.backbone.blocks())
    assert trained_from_block(model, TrainConfig(trainable_blocks=3)) == len(model.backbone.blocks()) - 3
    assert trained_from_block(model, TrainConfig()) == 0


def test_freeze_bn_keeps_statistics_and_affine_but_trains_convolutions():
    model = _model()
    cfg = TrainConfig(optimizer="sgd", lr=1e-2, freeze_bn=True)
    state = apply_freeze(model.train(), cfg, 0)
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert state.bn_frozen == len(bns) > 0 and not state.frozen
    before = _snapshot(model)
    _steps(model, cfg)
    changed = _changed(before, model, "backbone.")
    bn_keys = [k for k in changed if any(s in k for s in (".bn.", "bn1.", "bn2."))]
    assert bn_keys and not any(changed[k] for k in bn_keys)  # running_mean/var, weight, bias all unchanged
    conv = [k for k in changed if k.endswith("conv.weight")]
    assert conv and all(changed[k] for k in conv)


def test_freeze_backbone_epochs_then_unfreeze_with_the_same_optimizer():
    model = _model()
    cfg = TrainConfig(optimizer="adamw", lr=1e-2, weight_decay=0.05, freeze_backbone_epochs=2, trainable_blocks=1)
    n = len(model.backbone.blocks())
    assert [len(apply_freeze(model, cfg, e).frozen) for e in (0, 1, 2, 3)] == [n, n, n - 1, n - 1]
    opt = build_optimizer(model, cfg)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))  # frozen included
    x = torch.randn(4, 3, 32, 32)
    last = model.backbone.blocks()[-1]
    last_keys = [f"backbone.{last.paths[0]}.{k}" for k in model.backbone.get_submodule(last.paths[0]).state_dict()]
    for epoch, expect_moved in ((1, False), (2, True)):
        model.train()
        apply_freeze(model, cfg, epoch)
        before = _snapshot(model)
        sum((v**2).mean() for v in model(x).values()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        changed = _changed(before, model, "backbone.")
        assert any(changed[k] for k in last_keys) == expect_moved, epoch
        assert not any(v for k, v in changed.items() if k not in last_keys)  # the other blocks never move


def test_bad_values_are_refused():
    model = _model()
    with pytest.raises(VestisError, match=r"train\.trainable_blocks"):
        apply_freeze(model, TrainConfig(trainable_blocks=-2), 0)
    with pytest.raises(VestisError, match=r"train\.freeze_backbone_epochs"):
        apply_freeze(model, TrainConfig(freeze_backbone_epochs=-1), 0)
    with pytest.raises(VestisError, match=r"train\.backbone_lr_mult"):
        build_optimizer(model, TrainConfig(backbone_lr_mult=-0.5))


# --- learning rates -----------------------------------------------------------------------------------------
def test_backbone_lr_mult_and_warmup_per_group():
    model = _model()
    cfg = TrainConfig(
        optimizer="adamw", lr=0.1, weight_decay=0.01, backbone_lr_mult=0.1, warmup_epochs=1, schedule="step",
        step_epochs=1, gamma=0.5,
    )  # fmt: skip
    groups = param_groups(model, cfg, split_decay=True)
    assert [g["name"] for g in groups] == ["heads", "heads_no_decay", "backbone", "backbone_no_decay"]
    bb_ids = {id(p) for p in model.backbone.parameters()}
    assert {id(p) for g in groups[2:] for p in g["params"]} == bb_ids
    assert not bb_ids & {id(p) for g in groups[:2] for p in g["params"]}
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0, 0.01, 0.0]
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, steps_per_epoch=4, cfg=cfg)
    # warm-up over the first epoch (4 steps: 1/4, 2/4, 3/4, 1), then x0.5 per epoch; the backbone at a tenth
    factors = [0.25, 0.5, 0.75, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25]
    for step, f in enumerate(factors):
        lrs = [g["lr"] for g in opt.param_groups]
        assert lrs == pytest.approx([0.1 * f, 0.1 * f, 0.01 * f, 0.01 * f]), step
        opt.step()
        sched.step()
    # plain Adam: one group per part, both with the configured decay
    adam = build_optimizer(model, TrainConfig(optimizer="adam", lr=0.1, backbone_lr_mult=0.5))
    assert [(g["name"], g["lr"]) for g in adam.param_groups] == [("heads", 0.1), ("backbone", 0.05)]


def test_adamw_leaves_parameters_without_grad_untouched():
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.requires_grad_(False)
    opt = torch.optim.AdamW([*a.parameters(), *b.parameters()], lr=0.1, weight_decay=0.5)
    before = [p.clone() for p in b.parameters()]
    for _ in range(3):
        b(a(torch.randn(2, 3))).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert all(torch.equal(x, y) for x, y in zip(before, b.parameters(), strict=True))
    assert all(p not in opt.state for p in b.parameters())  # no moments either: unfreezing starts them fresh


# --- init from a checkpoint ---------------------------------------------------------------------------------
def test_init_keeps_branches_by_name_and_replaces_changed_ones(tmp_path):
    src = _model(seed=1)
    cfg = load_config("tiny", ["model.backbone=mobilenetv3_tiny", "model.branch_hidden=8"])
    path = save_checkpoint(tmp_path / "base.ckpt", model=src, config=cfg, taxonomy=TAX)
    # reordered taxonomy: colour unchanged (now first), category with a changed value list, a new attribute
    new_tax = _tax(
        ("colour", "single", ["red", "blue"]),
        ("category", "single", ["tee", "shirt", "dress"]),
        ("sleeve", "multi", ["short", "long"]),
    )
    dst = _model(taxonomy=new_tax, seed=2)
    fresh = _snapshot(dst)
    report = init_from_checkpoint(dst, path)
    assert report.kept == ["colour"]
    assert report.replaced == {"category": "values differ", "sleeve": "not in the checkpoint"}
    s, d = src.state_dict(), dst.state_dict()
    for k in s:
        if k.startswith(("backbone.", "neck.", "attention.")):
            assert torch.equal(d[k], s[k]), k
    for part in ("fc.weight", "fc.bias", "out.weight", "out.bias"):
        assert torch.equal(d[f"heads.branches.0.{part}"], s[f"heads.branches.1.{part}"])  # colour, by name
        for i in (1, 2):  # category and sleeve: as built
            assert torch.equal(d[f"heads.branches.{i}.{part}"], fresh[f"heads.branches.{i}.{part}"])
    n_body = sum(1 for k in d if not k.startswith("heads."))
    assert report.copied == n_body + 4 and not report.not_copied
    line = report.describe()
    assert "branches kept: colour" in line and "category (values differ)" in line
    # the initialised model predicts colour exactly as the checkpoint did
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(src.eval()(x)["colour"], dst.eval()(x)["colour"])


def test_init_refuses_another_backbone_and_replaces_a_resized_branch(tmp_path):
    src = _model("resnet18_tiny")
    cfg = load_config("tiny", ["model.branch_hidden=8"])
    path = save_checkpoint(tmp_path / "r.ckpt", model=src, config=cfg, taxonomy=TAX)
    with pytest.raises(VestisError, match=r"backbone is 'resnet18_tiny' but model\.backbone is 'mobilenetv3_tiny'"):
        init_from_checkpoint(_model("mobilenetv3_tiny"), path)
    torch.manual_seed(0)
    wide = create_model(ModelConfig(name="a3", backbone="resnet18_tiny", branch_hidden=16), TAX)
    report = init_from_checkpoint(wide, path)
    assert report.replaced == {"category": "branch shape differs", "colour": "branch shape differs"}
    with pytest.raises(VestisError, match="checkpoint not found"):
        init_from_checkpoint(wide, tmp_path / "missing.ckpt")


def test_cli_train_init_logs_the_branches(tmp_path):
    generate_catalog(tmp_path / "d", n=24, size=48, seed=0)
    manifest = tmp_path / "d" / "manifest.csv"
    first = train(load_config("tiny", ["data.image_size=48", "train.max_steps=1"]), manifest, tmp_path / "a", **QUIET)
    res = CliRunner().invoke(
        vestis.cli.app,
        ["train", "--data", str(manifest), "--config", "tiny", "--image-size", "48", "--out", str(tmp_path / "b"),
         "--init", str(first.last), "train.max_steps=1", "train.freeze_backbone_epochs=1"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "tensors copied; branches kept: " in res.output and "replaced: none" in res.output
    assert "epoch 1: backbone frozen" in res.output
    # one step with a frozen backbone: the backbone is the checkpoint's, bit for bit
    a, b = first.model.state_dict(), vestis.load(tmp_path / "b" / "last.ckpt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("backbone."))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("heads."))
