"""The frozen-trunk feature cache: run the frozen lower blocks once per image, train the rest from memory.

When the backbone blocks below a cut stay frozen for the whole run (``train.trainable_blocks >= 0`` or
``train.freeze_backbone_epochs >= train.epochs``), their output does not change between epochs. With
``train.cache_features`` the loop computes it once per image, in one no-grad pass over the train and
validation splits, and keeps it in memory as float16: the cut map and the tapped maps completed below
the cut that the model's variant needs. Every epoch then runs only the blocks above the cut, the neck, the
attention and the heads (:class:`CachedTail`), on batches indexed straight from those tensors.

Image-space augmentation cannot apply below the cut, so cached training runs without it (the loop says
so); when augmentation is enabled the one transform that commutes with the trunk well enough, a horizontal
flip, is applied to the cached maps instead (:func:`random_hflip`; convolutions are not exactly
mirror-symmetric, so this is close to, not equal to, flipping the image). The model trained this way is
the ordinary model: its checkpoints evaluate, predict and export unchanged.

Memory: 6,500 images at 224 px on EfficientNet-Lite0, cut at stride 16 (14 x 14 x 112) plus the stride-8
tap (28 x 28 x 40): about 0.3 + 0.4 GB.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from vestis.config import DataConfig, TrainConfig
from vestis.data.dataset import EncodedTargets
from vestis.data.taxonomy import Taxonomy
from vestis.data.transforms import prepare_batch
from vestis.errors import VestisError
from vestis.inference.batch import probabilities
from vestis.models.backbones.base import Backbone
from vestis.train.finetune import NOTHING_FROZEN, trained_from_block

__all__ = ["CACHE_DTYPE", "CachedTail", "FeatureCache", "build_cache", "cache_cut", "predict_cache", "random_hflip"]

# float16 halves the memory of float32; the maps come out of a BatchNorm-activation pair, far inside its range
CACHE_DTYPE = torch.float16
_LOG_EVERY = 20  # batches between progress lines while caching


def cache_cut(model: nn.Module, cfg: TrainConfig) -> int:
    """Where the cached trunk ends (index of the first backbone block that trains), or 0 without a cache.

    Raises:
        VestisError: ``cache_features`` is set but no block stays frozen for the whole run.
    """
    if not cfg.cache_features:
        return 0
    cut = trained_from_block(model, cfg)
    if cut == 0:
        raise VestisError(NOTHING_FROZEN)
    return cut


def _backbone(model: nn.Module) -> Backbone:
    bb = getattr(model, "backbone", None)
    if not isinstance(bb, Backbone):
        raise VestisError("train.cache_features: the model has no vestis Backbone to cache")
    return bb


class CachedTail(nn.Module):
    """The model above the cut: backbone blocks ``[start, end)``, neck, attention, pooling, heads.

    It holds the model itself (so DDP can wrap it and the optimiser's parameters are the model's); its
    output equals ``model(images)`` when given the cached maps of those images.

    Args:
        model: a vestis model: a ``backbone`` and ``forward_head`` (an attribute or an embedding model).
        start: the first backbone block that is not cached.
    """

    def __init__(self, model: nn.Module, start: int) -> None:
        super().__init__()
        self.model = model
        self.start = start
        self.train(model.training)

    def forward(self, cut: Tensor, taps: dict[str, Tensor]) -> dict[str, Any]:
        # every vestis model is forward_head(backbone(images)): here the backbone resumes from the cached maps
        return self.model.forward_head(_backbone(self.model).forward_from(cut, self.start, taps))


@dataclass
class FeatureCache:
    """The frozen trunk's outputs for one split, row ``i`` being dataset item ``i``.

    Attributes:
        cut: the cut map (N, C, h, w) in :data:`CACHE_DTYPE` (for a cut after the last block, the deepest map).
        taps: selected maps completed below the cut, other than the cut map itself.
        alias: the selected map that *is* the cut map (stored once), or ``None``.
        targets: attribute -> targets (N,) or (N, K), as the dataset encodes them.
        masks: attribute -> (N,) bool.
    """

    cut: Tensor
    taps: dict[str, Tensor]
    alias: str | None
    targets: dict[str, Tensor]
    masks: dict[str, Tensor]

    def __len__(self) -> int:
        return len(self.cut)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.cut, *self.taps.values()))

    def inputs(self, index: Tensor, device: torch.device) -> tuple[Tensor, dict[str, Tensor]]:
        """The rows ``index`` as float32 on ``device``: ``(cut, taps)`` for :class:`CachedTail`."""
        cut = self.cut[index].to(device, non_blocking=True).float()
        taps = {k: v[index].to(device, non_blocking=True).float() for k, v in self.taps.items()}
        if self.alias is not None:
            taps[self.alias] = cut
        return cut, taps

    def batches(self, order: Tensor, batch_size: int, *, drop_last: bool) -> list[dict]:
        """Batches in ``order`` shaped like the DataLoader's (``index``, ``targets``, ``masks``), no images."""
        out = []
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            if drop_last and len(idx) < batch_size:
                break
            out.append(
                {
                    "index": idx,
                    "targets": {k: v[idx] for k, v in self.targets.items()},
                    "masks": {k: v[idx] for k, v in self.masks.items()},
                }
            )
        return out


def random_hflip(cut: Tensor, taps: dict[str, Tensor], p: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Mirror each sample's maps left-right with probability ``p`` (the same samples in every map)."""
    if p <= 0:
        return cut, taps
    flip = torch.rand(len(cut), device=cut.device) < p  # (B,)
    if not flip.any():
        return cut, taps

    def f(x: Tensor) -> Tensor:
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)

    out = {k: (None if v is cut else f(v)) for k, v in taps.items()}
    new_cut = f(cut)
    return new_cut, {k: new_cut if v is None else v for k, v in out.items()}


@torch.no_grad()
def build_cache(
    model: nn.Module,
    loader: DataLoader,
    encoded: EncodedTargets,
    stop: int,
    data_cfg: DataConfig,
    device: torch.device,
    *,
    name: str = "train",
    autocast: Callable[[], object] | None = None,
    log: Callable[[str], object] = print,
    store: str | os.PathLike[str] | None = None,
) -> FeatureCache:
    """Run backbone blocks ``[0, stop)`` once over ``loader`` (unshuffled, no augmentation) and keep the outputs.

    Args:
        model: the model; its blocks below ``stop`` must be frozen for the run.
        loader: the split's loader in dataset order.
        encoded: the split's targets and masks.
        stop: the cut (index of the first block that trains).
        data_cfg: preprocessing.
        device: where the trunk runs (the cache itself stays on the CPU).
        name: the split, for the log.
        autocast: a context factory for mixed precision (CUDA), or ``None``.
        log: where progress lines go.
        store: a folder keeping caches between runs (``train.cache_dir``, see :mod:`vestis.train.cache_store`);
            ``None`` keeps it in memory only.

    Returns:
        The :class:`FeatureCache`.
    """
    bb = _backbone(model)
    n = len(loader.dataset)
    if n == 0:
        raise VestisError(f"train.cache_features: the {name} split is empty")
    was_training = bb.training
    key = None
    if store is not None:
        from vestis.train.cache_store import cache_fingerprint, read_stored, write_stored

        manifest = getattr(loader.dataset, "manifest", None)
        if manifest is not None:
            images = [str(manifest.image_path(r).resolve()) for r in manifest.records]
            key = cache_fingerprint(bb, stop, images, data_cfg)
            found = _stored_cache(bb, stop, data_cfg, device, Path(store), name, key, n, read_stored)
            if found is not None:
                cut_t, taps_t, alias = found
                log(f"feature cache ({name}): {n} images read from {store}")
                return _assemble(cut_t, taps_t, alias, encoded)
    bb.eval()  # the cached blocks are frozen: eval-mode BatchNorm, as in the uncached run
    pin = device.type == "cuda"
    cut_buf: Tensor | None = None
    taps_buf: dict[str, Tensor] = {}
    alias: str | None = None
    t0, filled = time.perf_counter(), 0
    # iterating a DataLoader draws a seed from the global generator: fork it, so that a resumed run (which
    # rebuilds the cache after restoring the RNG state) draws the same random numbers as an uninterrupted one
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            for b, batch in enumerate(loader):
                x = prepare_batch(batch["image"].to(device, non_blocking=True), data_cfg)
                with autocast() if autocast is not None else nullcontext():
                    cut, taps = bb.forward_until(x, stop)
                if cut_buf is None:
                    alias = next((k for k, v in taps.items() if v is cut), None)
                    cut_buf = torch.empty((n, *cut.shape[1:]), dtype=CACHE_DTYPE, pin_memory=pin)
                    taps_buf = {
                        k: torch.empty((n, *v.shape[1:]), dtype=CACHE_DTYPE, pin_memory=pin)
                        for k, v in taps.items()
                        if k != alias
                    }
                idx = batch["index"]
                cut_buf[idx] = cut.to(CACHE_DTYPE).cpu()
                for k, buf in taps_buf.items():
                    buf[idx] = taps[k].to(CACHE_DTYPE).cpu()
                filled += len(idx)
                if (b + 1) % _LOG_EVERY == 0:
                    rate = filled / max(1e-9, time.perf_counter() - t0)
                    log(f"feature cache ({name}): {filled}/{n} images, {rate:.0f} img/s")
        finally:
            bb.train(was_training)
    if cut_buf is None or filled != n:
        raise VestisError(f"train.cache_features: the {name} loader gave {filled} of {n} images")
    if key is not None:
        write_stored(Path(store), name, key, cut_buf, taps_buf)
    cache = _assemble(cut_buf, taps_buf, alias, encoded)
    blocks = bb.blocks()
    where = f"after block {blocks[stop - 1].name}" if stop else "at the input"
    log(
        f"feature cache ({name}): {n} images, cut {where} {tuple(cache.cut.shape[1:])}, "
        f"{cache.nbytes / 2**20:.1f} MiB {str(CACHE_DTYPE).removeprefix('torch.')}, "
        f"{time.perf_counter() - t0:.1f} s"
    )
    return cache


def _assemble(cut: Tensor, taps: dict[str, Tensor], alias: str | None, encoded: EncodedTargets) -> FeatureCache:
    return FeatureCache(
        cut,
        taps,
        alias,
        {k: torch.from_numpy(np.asarray(v)) for k, v in encoded.targets.items()},
        {k: torch.from_numpy(np.asarray(v)) for k, v in encoded.masks.items()},
    )


def _stored_cache(
    bb: Backbone,
    stop: int,
    data_cfg: DataConfig,
    device: torch.device,
    store: Path,
    name: str,
    key: str,
    n: int,
    read: Callable[..., tuple[Tensor, dict[str, Tensor]] | None],
) -> tuple[Tensor, dict[str, Tensor], str | None] | None:
    # which maps this model needs below the cut (and which of them is the cut map): one tiny dry run
    was_training = bb.training
    bb.eval()
    try:
        s = data_cfg.image_size
        probe = torch.zeros(1, 3, s, s, device=device)
        cut, taps = bb.forward_until(probe, stop)
    finally:
        bb.train(was_training)
    alias = next((k for k, v in taps.items() if v is cut), None)
    found = read(store, name, key, n, {k for k in taps if k != alias})
    if found is None:
        return None
    return found[0], found[1], alias


@torch.no_grad()
def predict_cache(
    tail: CachedTail, cache: FeatureCache, taxonomy: Taxonomy, batch_size: int, device: torch.device
) -> dict[str, np.ndarray]:
    """Probabilities ``{attr: (N, K) float32}`` for every row of ``cache``, in order (eval mode)."""
    was_training = tail.training
    tail.eval()
    out: dict[str, list[np.ndarray]] = {a.name: [] for a in taxonomy}
    try:
        for s in range(0, len(cache), batch_size):
            idx = torch.arange(s, min(s + batch_size, len(cache)))
            probs = probabilities(tail(*cache.inputs(idx, device)), taxonomy, getattr(tail.model, "output", "kind"))
            for k, v in probs.items():
                out[k].append(v.cpu().numpy())
    finally:
        tail.train(was_training)
    return {k: np.concatenate(v) for k, v in out.items()}
