"""The feature cache on disk (``train.cache_dir``): a frozen trunk is computed once across runs, not per run.

A stored cache is one safetensors file named by a fingerprint of everything its numbers depend on: the
backbone architecture, the weights of every frozen block, the cut, the preprocessing (size, mean, std,
padding) and the split's images (path, size and modification time, in order). Another run with the same
trunk over the same images — a second seed, another head, another multi-scale variant cut at the same block —
reads it instead of decoding and running the trunk again; anything different gives another fingerprint. A
file holds the cut map and the tapped maps below the cut that its writer needed; a reader needing a tap the
file lacks recomputes (and rewrites) it. Written atomically; a damaged file is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor

from vestis.config import DataConfig
from vestis.io import atomic_write_bytes
from vestis.models.backbones.base import Backbone

__all__ = ["cache_fingerprint", "read_stored", "write_stored"]


def cache_fingerprint(backbone: Backbone, stop: int, images: list[str], data_cfg: DataConfig) -> str:
    """A hex digest of what the cached maps of ``images`` through blocks ``[0, stop)`` depend on.

    Args:
        backbone: the (frozen below ``stop``) backbone.
        stop: the cut.
        images: the split's image paths, in dataset order.
        data_cfg: preprocessing.
    """
    h = hashlib.sha256()
    blocks = backbone.blocks()
    head = {
        "arch": backbone.arch or type(backbone).__name__,
        "cut": blocks[stop - 1].name if stop else "",
        "size": data_cfg.image_size,
        "mean": list(data_cfg.mean or ()),
        "std": list(data_cfg.std or ()),
        "pad": data_cfg.pad_value,
        "n": len(images),
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    for block in blocks[:stop]:
        for path in block.paths:
            for key, t in backbone.get_submodule(path).state_dict().items():
                h.update(f"{path}.{key}".encode())
                h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for p in images:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()[:24]


def _path(store: Path, name: str, key: str) -> Path:
    return store / f"{name}-{key}.safetensors"


def read_stored(store: Path, name: str, key: str, n: int, taps: set[str]) -> tuple[Tensor, dict[str, Tensor]] | None:
    """The stored ``(cut, taps)`` for ``key``, or ``None`` when absent, damaged or lacking a needed tap."""
    p = _path(store, name, key)
    if not p.is_file():
        return None
    try:
        tensors: dict[str, Any] = load_file(str(p))
    except (SafetensorError, OSError, ValueError):
        return None
    cut = tensors.get("cut")
    have = {k.removeprefix("tap/"): v for k, v in tensors.items() if k.startswith("tap/")}
    if cut is None or len(cut) != n or not taps <= set(have) or any(len(v) != n for v in have.values()):
        return None
    return cut, {k: have[k] for k in taps}


def write_stored(store: Path, name: str, key: str, cut: Tensor, taps: dict[str, Tensor]) -> Path:
    """Write ``(cut, taps)`` under ``key`` (atomically)."""
    tensors = {"cut": cut.contiguous(), **{f"tap/{k}": v.contiguous() for k, v in taps.items()}}
    return atomic_write_bytes(_path(store, name, key), save(tensors))
