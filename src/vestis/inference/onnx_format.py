"""The vestis ONNX format: names and metadata version, and the graphs both backends run.

:class:`InferenceModule` (classifiers) and :class:`EmbeddingInferenceModule` (embedding models) are what the
PyTorch backends of :class:`~vestis.inference.predictor.Predictor` and :class:`~vestis.inference.embedder.Embedder`
run and what :mod:`vestis.inference.export` and :mod:`vestis.inference.export_embedding` export, so both backends
compute the same thing. The inputs, outputs and metadata of an exported file are described in those two modules.

This module sits below the predictors and the exporters: both import it, it imports neither.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.inference.batch import probabilities

__all__ = [
    "EMBEDDING_OUTPUT",
    "HEATMAP_OUTPUT",
    "INPUT_NAME",
    "ONNX_FORMAT",
    "ONNX_VERSION",
    "TASK",
    "EmbeddingInferenceModule",
    "InferenceModule",
    "output_names",
]

ONNX_FORMAT = "vestis-onnx"
ONNX_VERSION = 1
INPUT_NAME = "images"
HEATMAP_OUTPUT = "heatmap"
EMBEDDING_OUTPUT = "embedding"
TASK = "embedding"  # the vestis.task metadata entry of an embedding export (classifier exports have none)


class InferenceModule(nn.Module):
    """``uint8`` letterboxed images in, probabilities per attribute and a heat-map out.

    The same module runs the PyTorch backend of :class:`~vestis.inference.predictor.Predictor` and is
    what :func:`~vestis.inference.export.export_onnx` exports, so both backends compute the same thing.

    The heat-map is the mean over pooled levels of each level's spatial attention map (CBAM's ``Ms``, in
    (0, 1)), bilinearly resized to the finest level's grid. A level whose attention module has no map (the
    ``none`` attention of variant ``a2``) contributes its activation energy instead (mean over channels of
    the squared features, divided by its per-image maximum; Zagoruyko & Komodakis 2017).

    Args:
        model: an :class:`~vestis.models.AttributeModel` (``backbone``, ``neck``, ``attention``, ``heads``).
        taxonomy: the attributes, in output order.
        mean: per-channel mean of the normalisation, on the [0, 1] scale.
        std: per-channel standard deviation of the normalisation.
    """

    def __init__(self, model: nn.Module, taxonomy: Taxonomy, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        missing = [k for k in ("backbone", "neck", "attention", "heads") if not hasattr(model, k)]
        if missing:
            raise VestisError(f"{type(model).__name__}: not an attribute model (no {', '.join(missing)})")
        self.model = model
        self.taxonomy = taxonomy
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """Probabilities of every attribute in taxonomy order, then the heat-map ``(B, h, w)``."""
        return self.from_features(self.model.backbone(self.normalize(images)))

    def normalize(self, images: Tensor) -> Tensor:
        """``uint8`` images -> the backbone's float input."""
        # same operations, in the same order, as vestis.data.transforms.normalize
        return (images.float().div(255.0) - self.mean) / self.std

    def from_features(self, feats: dict[str, Tensor]) -> tuple[Tensor, ...]:
        """What :meth:`forward` returns, from the backbone's maps of the normalised images.

        :class:`~vestis.inference.combined.CombinedModule` runs one backbone for several models whose backbone
        weights are identical, then this on each.
        """
        m = self.model
        levels = list(m.neck(feats).values())
        pooled, maps = [], []
        for att, feat in zip(m.attention, levels, strict=True):
            y, weights = att.forward_with_map(feat)
            pooled.append(y.mean((2, 3)))  # (B, C_level)
            if weights is None:
                energy = feat.pow(2).mean(1)  # (B, h, w)
                weights = energy / energy.amax((1, 2), keepdim=True).clamp_min(1e-12)
            maps.append(weights)
        logits = m.heads(torch.cat(pooled, dim=1))
        by_name = probabilities(logits, self.taxonomy, getattr(m, "output", "kind"))
        probs = [by_name[a.name] for a in self.taxonomy]
        size = maps[0].shape[-2:]
        resized = [F.interpolate(w[:, None], size=size, mode="bilinear", align_corners=False)[:, 0] for w in maps]
        heat = torch.stack(resized).mean(0)  # (B, h0, w0)
        return (*probs, heat)


class EmbeddingInferenceModule(nn.Module):
    """``uint8`` letterboxed images in, the concatenated unit sub-embeddings ``(B, sum d_t)`` out.

    The PyTorch backend of :class:`~vestis.inference.embedder.Embedder` runs this module and
    :func:`~vestis.inference.export_embedding.export_embedding_onnx` exports it, so both backends compute the
    same thing.

    Args:
        model: an :class:`~vestis.models.embedding.EmbeddingModel` (``embed``, ``concat``, ``embedding_layout``).
        mean: per-channel mean of the normalisation, on the [0, 1] scale.
        std: per-channel standard deviation of the normalisation.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        missing = [k for k in ("embed", "concat", "embedding_layout") if not hasattr(model, k)]
        if missing:
            raise VestisError(f"{type(model).__name__}: not an embedding model (no {', '.join(missing)})")
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        # same operations, in the same order, as vestis.data.transforms.normalize
        x = (images.float().div(255.0) - self.mean) / self.std
        return self.model.concat(self.model.embed(x))  # (B, sum d_t)


def output_names(taxonomy: Taxonomy) -> dict[str, str]:
    """Attribute -> ONNX output name: ``[A-Za-z0-9_]`` only, unique, never the input's or the heat-map's."""
    taken = {INPUT_NAME, HEATMAP_OUTPUT}
    out: dict[str, str] = {}
    for a in taxonomy:
        base = re.sub(r"[^A-Za-z0-9_]", "_", a.name)
        if not base or base[0].isdigit():
            base = f"attr_{base}"
        name, k = base, 2
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        out[a.name] = name
    return out
