"""Batch prediction over a DataLoader: logits -> probabilities per attribute (or an embedding model's
sub-embeddings), in dataset order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from vestis.config import DataConfig
from vestis.data.taxonomy import Taxonomy
from vestis.data.transforms import prepare_batch
from vestis.models.heads import uses_softmax

__all__ = ["collect_embeddings", "embed_loader", "predict_loader", "probabilities"]


def probabilities(logits: Mapping[str, Tensor], taxonomy: Taxonomy, output: str = "kind") -> dict[str, Tensor]:
    """Softmax for single-label attributes, sigmoid for multi-label ones (sigmoid for all when ``output="paper"``)."""
    return {
        a.name: (
            logits[a.name].float().softmax(-1) if uses_softmax(a.kind, output) else logits[a.name].float().sigmoid()
        )
        for a in taxonomy
    }


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    loader: DataLoader,
    data_cfg: DataConfig,
    taxonomy: Taxonomy,
    device: torch.device,
    *,
    channels_last: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Probabilities ``{attr: (N, K) float32}`` for every item of ``loader`` (which must not shuffle)."""
    was_training = model.training
    model.eval()
    out: dict[str, list[np.ndarray]] = {a.name: [] for a in taxonomy}
    try:
        for batch in loader:
            x = prepare_batch(batch["image"].to(device, non_blocking=True), data_cfg, channels_last=channels_last)
            probs = probabilities(model(x), taxonomy, getattr(model, "output", "kind"))
            for k, v in probs.items():
                out[k].append(v.cpu().numpy())
            if on_batch is not None:
                on_batch(len(x))
    finally:
        model.train(was_training)
    return {
        a.name: np.concatenate(v) if v else np.zeros((0, a.num_values), np.float32)
        for a, v in zip(taxonomy, out.values(), strict=True)
    }


@torch.no_grad()
def embed_loader(
    model: nn.Module,
    loader: DataLoader,
    data_cfg: DataConfig,
    taxonomy: Taxonomy,
    device: torch.device,
    *,
    channels_last: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Sub-embeddings ``{attr: (N, d)}`` and recognition probabilities ``{attr: (N, K)}`` (empty without
    recognition columns) of an embedding model for every item of ``loader`` (which must not shuffle)."""
    was_training = model.training
    model.eval()
    try:
        outs = (
            model(prepare_batch(b["image"].to(device, non_blocking=True), data_cfg, channels_last=channels_last))
            for b in loader
        )
        return collect_embeddings(outs, taxonomy, getattr(model, "output", "kind"))
    finally:
        model.train(was_training)


def collect_embeddings(
    outputs: Iterable[Mapping[str, Any]], taxonomy: Taxonomy, output: str = "kind"
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Concatenate the ``embeddings`` (and the probabilities of the ``logits``) of an embedding model's outputs."""
    emb: dict[str, list[np.ndarray]] = {}
    probs: dict[str, list[np.ndarray]] = {}
    for out in outputs:
        for k, v in out["embeddings"].items():
            emb.setdefault(k, []).append(v.float().cpu().numpy())
        if out.get("logits"):
            for k, v in probabilities(out["logits"], taxonomy, output).items():
                probs.setdefault(k, []).append(v.cpu().numpy())
    return {k: np.concatenate(v) for k, v in emb.items()}, {k: np.concatenate(v) for k, v in probs.items()}
