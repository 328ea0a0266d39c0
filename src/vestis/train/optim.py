"""Optimisers and per-step learning-rate schedules built from :class:`vestis.config.TrainConfig`."""

from __future__ import annotations

import math

import torch
from torch import nn

from vestis.config import TrainConfig
from vestis.errors import VestisError
from vestis.train.finetune import param_groups

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (the paper), AdamW or SGD over every parameter, frozen ones included.

    The groups come from :func:`vestis.train.finetune.param_groups`: the backbone's rate is
    ``lr * backbone_lr_mult``, and AdamW/SGD put no weight decay on norms and biases. A frozen parameter gets
    no gradient and these optimisers leave it untouched, so unfreezing later needs no new optimiser.
    """
    if cfg.optimizer == "adam":
        return torch.optim.Adam(param_groups(model, cfg, split_decay=False), lr=cfg.lr)
    groups = param_groups(model, cfg, split_decay=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    raise VestisError(f"train.optimizer: unknown optimizer {cfg.optimizer!r}; expected adam, adamw or sgd")


def lr_factor(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of each group's learning rate at optimiser step ``step`` (0-based).

    A linear warm-up over ``warmup_epochs`` (from 1 / warm-up steps to 1) comes before any schedule.
    """
    epoch = step / max(1, steps_per_epoch)
    warm = cfg.warmup_epochs
    if warm > 0 and epoch < warm:
        return (epoch + 1 / max(1, steps_per_epoch)) / warm  # linear from ~0 to 1
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        # the paper: decay rate 0.75 every 8 epochs
        return cfg.gamma ** int(epoch // max(1, cfg.step_epochs))
    if cfg.schedule == "cosine":
        span = max(1e-8, cfg.epochs - warm)
        t = min(1.0, (epoch - warm) / span)
        return 0.5 * (1 + math.cos(math.pi * t))
    raise VestisError(f"train.schedule: unknown schedule {cfg.schedule!r}; expected step, cosine or constant")


def build_scheduler(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-optimiser-step schedule (call ``.step()`` after each optimiser step)."""
    lr_factor(0, steps_per_epoch, cfg)  # fail early on an unknown schedule
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, cfg))
