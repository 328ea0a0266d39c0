"""Run by torchrun in tests/train/test_distributed.py: train a few steps, save this rank's weights."""

import os
import sys
from pathlib import Path

import torch

from vestis.config import load_config
from vestis.train.loop import train

manifest, out, extra = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]  # extra: overrides on top
cfg = load_config(
    "tiny", ["train.epochs=1", "train.max_steps=3", "train.batch_size=4", "data.augment.enabled=true", *extra]
)
result = train(cfg, manifest, out, device="cpu", progress=False, check_images=False, log=lambda *_: None)
torch.save(result.model.state_dict(), out / f"rank{os.environ['RANK']}.pt")
