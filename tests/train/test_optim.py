import math

import pytest
import torch

from vestis.config import TrainConfig
from vestis.errors import VestisError
from vestis.train.optim import build_optimizer, build_scheduler, lr_factor


def test_paper_step_schedule():
    cfg = TrainConfig(schedule="step", step_epochs=8, gamma=0.75)
    assert lr_factor(0, 10, cfg) == 1.0
    assert lr_factor(79, 10, cfg) == 1.0  # last step of epoch 8
    assert lr_factor(80, 10, cfg) == 0.75
    assert lr_factor(160, 10, cfg) == 0.75**2


def test_cosine_with_warmup():
    cfg = TrainConfig(schedule="cosine", epochs=10, warmup_epochs=1)
    assert lr_factor(0, 4, cfg) == pytest.approx(0.25)
    assert lr_factor(3, 4, cfg) == pytest.approx(1.0)
    assert lr_factor(4, 4, cfg) == pytest.approx(1.0)
    assert lr_factor(4 * 5.5, 4, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(40, 4, cfg) == pytest.approx(0.0, abs=1e-12)


def test_scheduler_drives_optimizer():
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(optimizer="adamw", lr=0.1, weight_decay=0.01, schedule="step", step_epochs=1, gamma=0.5)
    opt = build_optimizer(model, cfg)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]  # no decay on the bias
    sched = build_scheduler(opt, steps_per_epoch=2, cfg=cfg)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05])


def test_unknown_names():
    with pytest.raises(VestisError, match="unknown optimizer"):
        build_optimizer(torch.nn.Linear(1, 1), TrainConfig(optimizer="lion"))
    with pytest.raises(VestisError, match="unknown schedule"):
        lr_factor(0, 1, TrainConfig(schedule="poly"))
