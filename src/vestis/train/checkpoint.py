"""Checkpoints: one file holding weights, model config, taxonomy, preprocessing, training config,
training state and validation metrics, so that :func:`load` rebuilds the model from it alone.

Written atomically (temporary file, fsync, rename): a crash mid-write leaves the previous checkpoint.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vestis.config import Config
from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.io import atomic_write_bytes

__all__ = ["FORMAT", "load", "load_checkpoint", "save_checkpoint"]

FORMAT = "vestis-checkpoint"
VERSION = 1


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    config: Config,
    taxonomy: Taxonomy,
    metrics: dict[str, Any] | None = None,
    thresholds: dict[str, list[float]] | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint. ``train_state`` (optimiser, scheduler, RNG, epoch...) is what ``--resume`` needs."""
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config.to_dict(),
        "taxonomy": taxonomy.to_dict(),
        # everything inference needs to reproduce the input pipeline, duplicated here for readers without vestis
        "preprocessing": {
            "image_size": config.data.image_size,
            "mean": list(config.data.mean),
            "std": list(config.data.std),
            "pad_value": config.data.pad_value,
            "resize": "letterbox",
        },
        "metrics": metrics or {},
        "thresholds": thresholds or {},
        "train_state": train_state,
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint dict (tensors on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise VestisError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a damaged file
        raise VestisError(f"{path}: not a readable checkpoint ({e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise VestisError(f"{path}: not a vestis checkpoint")
    if state.get("version", 0) > VERSION:
        raise VestisError(f"{path}: checkpoint version {state['version']} is newer than this vestis ({VERSION})")
    return state


def load(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the trained model from a checkpoint alone, in eval mode.

    The model carries ``.config`` (:class:`Config`), ``.taxonomy`` and ``.thresholds`` (calibrated per-value
    thresholds, possibly empty) for prediction.
    """
    from vestis.models import create_model

    state = load_checkpoint(path)
    cfg = Config.from_dict(state["config"], source=str(path))
    taxonomy = Taxonomy.from_dict(state["taxonomy"], source=str(path))
    cfg.model.pretrained = None  # the checkpoint holds the weights
    model = create_model(cfg.model, taxonomy)
    model.load_state_dict(state["model"])
    model.config = cfg
    model.thresholds = state.get("thresholds") or {}
    model.metrics = state.get("metrics") or {}
    return model.to(map_location).eval()
