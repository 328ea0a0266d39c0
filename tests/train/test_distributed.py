"""Two CPU processes under torchrun (gloo): after a few DDP steps both ranks hold identical weights."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vestis.config import load_config
from vestis.data.synthetic import generate_catalog
from vestis.data.taxonomy import load_taxonomy
from vestis.models import create_model
from vestis.train.checkpoint import load_checkpoint

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_ranks_end_with_identical_weights(tmp_path):
    generate_catalog(tmp_path / "data", n=40, size=48, seed=0)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(WORKER), str(tmp_path / "data" / "manifest.csv"), str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(out / "rank0.pt", weights_only=True)
    w1 = torch.load(out / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    # the checkpoint (written by rank 0) holds those weights after exactly 3 optimiser steps
    ckpt = load_checkpoint(out / "last.ckpt")
    assert ckpt["train_state"]["step"] == 3
    assert all(torch.equal(ckpt["model"][k], w0[k]) for k in w0)
    # and the steps moved the weights away from the initial (seeded) model
    torch.manual_seed(0)
    fresh = create_model(load_config("tiny").model, load_taxonomy(tmp_path / "data" / "taxonomy.yaml")).state_dict()
    assert any(not torch.equal(fresh[k], w0[k]) for k in w0 if w0[k].is_floating_point())


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        # unfrozen in epoch 2: DDP is wrapped again so the backbone's gradients are reduced too
        ["train.freeze_backbone_epochs=1", "train.epochs=2", "train.max_steps=8"],
        # the cached tail is what DDP wraps; each rank caches the train split
        ["train.trainable_blocks=1", "train.cache_features=true", "train.max_steps=4"],
    ],
    ids=["unfreeze", "cache"],
)
def test_two_ranks_agree_with_fine_tuning_controls(tmp_path, extra):
    generate_catalog(tmp_path / "data", n=40, size=48, seed=0)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(WORKER), str(tmp_path / "data" / "manifest.csv"), str(out), *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(out / "rank0.pt", weights_only=True)
    w1 = torch.load(out / "rank1.pt", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    torch.manual_seed(0)
    fresh = create_model(load_config("tiny").model, load_taxonomy(tmp_path / "data" / "taxonomy.yaml")).state_dict()
    moved = {k for k in w0 if w0[k].is_floating_point() and not torch.equal(fresh[k], w0[k])}
    assert any(k.startswith("backbone.layer4.") for k in moved)  # the trained blocks moved on both ranks
    if "train.cache_features=true" in extra:
        assert not any(k.startswith("backbone.layer1.") for k in moved)  # the cached trunk did not
