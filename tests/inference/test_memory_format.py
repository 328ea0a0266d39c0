"""Eager inference runs the weights in the memory order the run trained in (``train.channels_last``)."""

from __future__ import annotations

import numpy as np
import torch

from tests.inference.conftest import IMAGE_SIZE, small_taxonomy
from vestis.config import load_config
from vestis.inference.predictor import Predictor
from vestis.models import create_model
from vestis.train.checkpoint import save_checkpoint


def _ckpt(path, channels_last: bool | None):
    cfg = load_config("tiny", [f"data.image_size={IMAGE_SIZE}"])
    cfg.train.channels_last = channels_last  # None: on for CUDA only
    torch.manual_seed(0)
    net = create_model(cfg.model, small_taxonomy())
    return save_checkpoint(path, model=net, config=cfg, taxonomy=small_taxonomy())


def _conv_weights(predictor: Predictor) -> list[torch.Tensor]:
    return [m.weight for m in predictor.module.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.ndim == 4]


def test_the_checkpoints_switch_sets_the_memory_order_and_not_the_answer(tmp_path):
    on = Predictor.from_checkpoint(_ckpt(tmp_path / "on.ckpt", True), "cpu")
    off = Predictor.from_checkpoint(_ckpt(tmp_path / "off.ckpt", False), "cpu")
    cuda_only = Predictor.from_checkpoint(_ckpt(tmp_path / "auto.ckpt", None), "cpu")
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(on))
    for p in (off, cuda_only):  # a 1x1 kernel is in both orders at once; the others are in the default one
        big = [w for w in _conv_weights(p) if w.shape[2] * w.shape[3] > 1]
        assert big and not any(w.is_contiguous(memory_format=torch.channels_last) for w in big)
    batch = np.random.default_rng(0).integers(0, 256, (4, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    a, b = on.predict_arrays(batch), off.predict_arrays(batch)  # the same weights, another order
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-5)
