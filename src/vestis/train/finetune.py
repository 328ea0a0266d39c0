"""Fine-tuning controls: which backbone blocks train, BatchNorm freezing, per-part learning rates, and
initialising a model from an earlier vestis checkpoint whose taxonomy differs.

Pure functions of the model and :class:`~vestis.config.TrainConfig` that the loop calls:

* :func:`apply_freeze` at the start of every epoch (after ``model.train()``) sets ``requires_grad`` and the
  train/eval mode of each backbone block. The optimiser holds every parameter from the start
  (:func:`param_groups`): a frozen parameter simply gets no gradient, and Adam, AdamW and SGD skip a
  parameter whose ``.grad`` is ``None``, so it stays bit-identical, unfreezing later needs no new
  optimiser, and ``--resume`` restores the same parameter groups.
* :func:`trained_from_block` tells the feature cache where the trunk that stays frozen for the whole run ends.
* :func:`init_from_checkpoint` copies what fits from a checkpoint and reports the attribute branches it kept
  and those it had to replace.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vestis.config import TrainConfig
from vestis.data.taxonomy import Attribute, Taxonomy
from vestis.errors import VestisError
from vestis.models.backbones.base import Backbone, BackboneBlock
from vestis.train.checkpoint import load_checkpoint

__all__ = [
    "FreezeState",
    "InitReport",
    "apply_freeze",
    "check_finetune_config",
    "find_backbone",
    "frozen_blocks",
    "init_from_checkpoint",
    "param_groups",
    "trained_from_block",
]

_BN = nn.modules.batchnorm._BatchNorm  # BatchNorm1d/2d/3d and SyncBatchNorm


def find_backbone(model: nn.Module) -> Backbone | None:
    """The model's ``backbone`` attribute when it is a :class:`Backbone` (``None`` for other modules)."""
    bb = getattr(model, "backbone", None)
    return bb if isinstance(bb, Backbone) else None


def check_finetune_config(cfg: TrainConfig) -> None:
    """Refuse values the controls cannot mean, naming the setting."""
    if cfg.freeze_backbone_epochs < 0:
        raise VestisError(f"train.freeze_backbone_epochs: expected 0 or more epochs, got {cfg.freeze_backbone_epochs}")
    if cfg.trainable_blocks < -1:
        raise VestisError(
            f"train.trainable_blocks: expected -1 (whole backbone) or a number of blocks >= 0, "
            f"got {cfg.trainable_blocks}"
        )
    if not cfg.backbone_lr_mult >= 0:
        raise VestisError(f"train.backbone_lr_mult: expected a multiplier >= 0, got {cfg.backbone_lr_mult}")
    if cfg.cache_features and cfg.trainable_blocks < 0 and cfg.freeze_backbone_epochs < cfg.epochs:
        raise VestisError(NOTHING_FROZEN)  # known from the config alone: say so before reading any image


NOTHING_FROZEN = (
    "train.cache_features: nothing is frozen for the whole run; set train.trainable_blocks to the number "
    "of backbone blocks to train (0: none) or train.freeze_backbone_epochs >= train.epochs"
)


def frozen_blocks(blocks: list[BackboneBlock], cfg: TrainConfig, epoch: int) -> int:
    """How many leading blocks are frozen in ``epoch`` (0-based): all during the first
    ``freeze_backbone_epochs``, then all but the last ``trainable_blocks`` (none when it is -1)."""
    if epoch < cfg.freeze_backbone_epochs:
        return len(blocks)
    if cfg.trainable_blocks >= 0:
        return max(0, len(blocks) - cfg.trainable_blocks)
    return 0


def trained_from_block(model: nn.Module, cfg: TrainConfig) -> int:
    """Index of the first backbone block that trains in some epoch of the run (the cache's cut).

    Blocks below it are frozen for the whole run, so their output can be computed once. It is the number
    of blocks when the backbone never trains (``trainable_blocks=0`` or ``freeze_backbone_epochs >= epochs``).
    """
    bb = find_backbone(model)
    if bb is None:
        return 0
    blocks = bb.blocks()
    return min(frozen_blocks(blocks, cfg, e) for e in range(max(1, cfg.epochs)))


@dataclass(frozen=True)
class FreezeState:
    """What :func:`apply_freeze` did.

    Attributes:
        frozen: names of the frozen backbone blocks (no gradient, eval mode), input side first.
        trainable: names of the backbone blocks that train.
        bn_frozen: number of backbone BatchNorm layers held in eval mode with fixed affine weights.
    """

    frozen: tuple[str, ...]
    trainable: tuple[str, ...]
    bn_frozen: int = 0

    def describe(self) -> str:
        """One line for the training log."""
        n = len(self.frozen) + len(self.trainable)
        if not self.frozen:
            head = f"all {n} backbone blocks train"
        elif not self.trainable:
            head = f"backbone frozen ({n} blocks)"
        else:
            head = (
                f"backbone blocks {self.frozen[0]}..{self.frozen[-1]} frozen, last {len(self.trainable)} of {n} train"
            )
        return head + (f"; {self.bn_frozen} BatchNorm layers frozen" if self.bn_frozen else "")


def apply_freeze(model: nn.Module, cfg: TrainConfig, epoch: int) -> FreezeState:
    """Freeze / unfreeze the backbone blocks for ``epoch`` (0-based); call after ``model.train()``.

    A frozen block's parameters get ``requires_grad=False`` and its modules go to eval mode (BatchNorm uses
    and keeps its running statistics, dropout is off). With ``freeze_bn`` every backbone BatchNorm is held
    that way too, inside trainable blocks as well. Everything outside the backbone (neck, attention, heads)
    trains.

    Args:
        model: the (unwrapped) model; one without a :class:`Backbone` ``backbone`` is left as it is.
        cfg: the training config.
        epoch: the epoch about to run.

    Returns:
        The resulting :class:`FreezeState`.
    """
    check_finetune_config(cfg)
    bb = find_backbone(model)
    if bb is None:
        return FreezeState((), ())
    blocks = bb.blocks()
    k = frozen_blocks(blocks, cfg, epoch)
    for i, block in enumerate(blocks):
        for m in bb.block_modules(block):
            m.requires_grad_(i >= k)
            if i < k:
                m.eval()
            elif model.training:
                m.train()
    bn_frozen = 0
    if cfg.freeze_bn:
        for m in bb.modules():
            if isinstance(m, _BN):
                m.eval()
                m.requires_grad_(False)
                bn_frozen += 1
    return FreezeState(tuple(b.name for b in blocks[:k]), tuple(b.name for b in blocks[k:]), bn_frozen)


def param_groups(model: nn.Module, cfg: TrainConfig, *, split_decay: bool) -> list[dict[str, Any]]:
    """Every parameter of ``model`` in named groups, frozen ones included (see the module docstring).

    Heads, neck and attention come first (so ``param_groups[0]["lr"]`` is the base rate), then the backbone
    with ``lr * backbone_lr_mult``; the schedule multiplies each group's rate. With ``split_decay``, norms and
    biases (one-dimensional tensors) get their own groups without weight decay. Empty groups are left out.

    Returns:
        Groups with ``name``, ``params``, ``lr`` and ``weight_decay``.
    """
    check_finetune_config(cfg)
    bb = find_backbone(model)
    in_backbone = {id(p) for p in bb.parameters()} if bb is not None else set()
    parts: dict[str, list[nn.Parameter]] = {"heads": [], "heads_no_decay": [], "backbone": [], "backbone_no_decay": []}
    for p in model.parameters():
        part = "backbone" if id(p) in in_backbone else "heads"
        if split_decay and p.ndim <= 1:
            part += "_no_decay"
        parts[part].append(p)
    groups = []
    for name, params in parts.items():
        if params:
            lr = cfg.lr * (cfg.backbone_lr_mult if name.startswith("backbone") else 1.0)
            decay = 0.0 if name.endswith("_no_decay") else cfg.weight_decay
            groups.append({"name": name, "params": params, "lr": lr, "weight_decay": decay})
    return groups


# --- initialisation from a checkpoint -----------------------------------------------------------------------
@dataclass
class InitReport:
    """What :func:`init_from_checkpoint` copied.

    Attributes:
        path: the checkpoint.
        copied: number of tensors copied.
        kept: attributes whose branch came from the checkpoint (possibly from another position).
        replaced: attribute -> why its branch was initialised afresh.
        not_copied: model tensors left as built (other than replaced branches), e.g. a neck whose width changed.
    """

    path: Path
    copied: int = 0
    kept: list[str] = field(default_factory=list)
    replaced: dict[str, str] = field(default_factory=dict)
    not_copied: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for the training log."""
        kept = ", ".join(self.kept) or "none"
        replaced = ", ".join(f"{k} ({v})" for k, v in self.replaced.items()) or "none"
        rest = f"; {len(self.not_copied)} other tensors left as built" if self.not_copied else ""
        return f"init from {self.path}: {self.copied} tensors copied; branches kept: {kept}; replaced: {replaced}{rest}"


def _branch_mismatch(new: Attribute, old: Attribute | None) -> str | None:
    if old is None:
        return "not in the checkpoint"
    if old.kind != new.kind:
        return f"kind {old.kind} -> {new.kind}"
    if old.values != new.values:
        return "values differ"
    return None


def init_from_checkpoint(model: nn.Module, path: str | os.PathLike[str], *, trust: bool = False) -> InitReport:
    """Initialise ``model`` from an earlier vestis checkpoint, keeping what fits.

    Every tensor whose key and shape match is copied. Attribute branches are matched by attribute name (the
    heads are a list in taxonomy order, so positions differ between taxonomies); a branch is replaced (left
    as built) when the attribute is new, its kind or values changed, or its shapes differ. Backbones must be
    the same architecture.

    Args:
        model: an :class:`~vestis.models.attribute_model.AttributeModel` (``backbone``, ``heads``, ``taxonomy``).
        path: the checkpoint file.
        trust: also read an old pickle checkpoint (see :func:`~vestis.train.checkpoint.load_checkpoint`).

    Returns:
        The :class:`InitReport`.
    """
    path = Path(path)
    state = load_checkpoint(path, trust=trust)
    try:
        src: dict[str, Tensor] = state["model"]
        old_tax = Taxonomy.from_dict(state["taxonomy"], source=str(path))
        old_arch = state["config"]["model"]["backbone"]
    except (KeyError, TypeError) as e:
        raise VestisError(f"{path}: checkpoint lacks {e} needed to initialise a model (model.init)") from None
    bb = find_backbone(model)
    arch = bb.arch if bb is not None else ""
    if arch and old_arch != arch:
        raise VestisError(
            f"{path}: model.init: the checkpoint's backbone is {old_arch!r} but model.backbone is {arch!r}; "
            "use a checkpoint of the same backbone (or model.pretrained for backbone weights)"
        )
    dst = model.state_dict()
    bad = sorted(k for k in dst if k.startswith("backbone.") and k in src and src[k].shape != dst[k].shape)
    if bad:
        raise VestisError(f"{path}: model.init: backbone tensors of a different shape: {', '.join(bad[:5])}")

    report = InitReport(path)
    new_tax: Taxonomy = model.taxonomy
    old_index = {a.name: i for i, a in enumerate(old_tax)}
    # key in the model -> key in the checkpoint; branch keys are remapped by attribute name
    mapping: dict[str, str] = {}
    head_keys: dict[int, list[str]] = {}
    for k in dst:
        if k.startswith("heads.branches."):
            head_keys.setdefault(int(k.split(".")[2]), []).append(k)
        else:
            mapping[k] = k
    for i, attr in enumerate(new_tax):
        keys = head_keys.get(i, [])
        why = _branch_mismatch(attr, old_tax[attr.name] if attr.name in old_index else None)
        if why is None:
            j = old_index[attr.name]
            remap = {k: f"heads.branches.{j}.{k.split('.', 3)[3]}" for k in keys}
            if all(o in src and src[o].shape == dst[k].shape for k, o in remap.items()):
                mapping.update(remap)
                report.kept.append(attr.name)
                continue
            why = "branch shape differs"
        report.replaced[attr.name] = why
    with torch.no_grad():
        for k, o in mapping.items():
            if o in src and src[o].shape == dst[k].shape:
                dst[k].copy_(src[o])  # state_dict tensors share storage with the model
                report.copied += 1
            else:
                report.not_copied.append(k)
    return report
