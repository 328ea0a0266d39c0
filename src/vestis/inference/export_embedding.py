"""ONNX export of embedding models: the graph, its metadata and a parity check against PyTorch.

An embedding checkpoint (``csn``, ``csn_fixed``, ``triplet``, ``datrnet``; see :mod:`vestis.models.embedding`), or
a classifier checkpoint seen through its attribute-based embedder, exports as :class:`EmbeddingInferenceModule`:

* **input** ``images``: ``uint8`` ``(batch, 3, S, S)``, letterboxed as for the classifiers (normalisation in the
  graph, only the batch axis dynamic; see :mod:`vestis.inference.export`).
* **output** ``embedding``: ``float32`` ``(batch, sum d_t)``, the unit-norm sub-embeddings side by side in layout
  order (:meth:`~vestis.models.embedding.EmbeddingModel.concat`). One output rather than one per attribute: a
  search index stores exactly this vector, and the squared L2 distance over a set of attributes is the sum over
  their slices.
* **metadata_props**: ``vestis.format`` / ``vestis.version`` as for the classifiers, ``vestis.task`` =
  ``embedding``, ``vestis.embedding`` (JSON: ``model``, ``backbone``, ``layout`` ``[[attribute, width], ...]``,
  ``similarity``, ``output``), ``vestis.taxonomy``, ``vestis.preprocessing``, ``vestis.config``,
  ``vestis.quantization`` and ``vestis.source``. :class:`~vestis.inference.embedder.Embedder` rebuilds everything
  from them.

int8 is refused for embedding models: the classifier's check (decisions that agree) has no counterpart here that
says when a quantised embedding is still good enough for retrieval, so a quantised file would ship unchecked.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from vestis.errors import VestisError
from vestis.inference.export import (
    INPUT_NAME,
    ONNX_FORMAT,
    ONNX_VERSION,
    ExportResult,
    _opset_of,
    _torch_export,
    load_sample_images,
)
from vestis.io import atomic_write_bytes

if TYPE_CHECKING:
    from vestis.inference.embedder import Embedder

__all__ = [
    "EMBEDDING_OUTPUT",
    "TASK",
    "EmbeddingInferenceModule",
    "EmbeddingParityReport",
    "compare_embedders",
    "export_embedding_onnx",
    "is_embedding_checkpoint",
]

EMBEDDING_OUTPUT = "embedding"
TASK = "embedding"  # the vestis.task metadata entry of an embedding export (classifier exports have none)


class EmbeddingInferenceModule(nn.Module):
    """``uint8`` letterboxed images in, the concatenated unit sub-embeddings ``(B, sum d_t)`` out.

    The PyTorch backend of :class:`~vestis.inference.embedder.Embedder` runs this module and
    :func:`export_embedding_onnx` exports it, so both backends compute the same thing.

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


@dataclass(frozen=True)
class EmbeddingParityReport:
    """How closely a candidate embedder reproduces a reference one on the same images.

    Attributes:
        num_images: images compared.
        max_abs_diff: attribute -> largest absolute difference of a sub-embedding component.
        min_cosine: attribute -> lowest cosine similarity between the two sub-embeddings of an image (1: same
            direction); a zero vector on either side counts as 0.
    """

    num_images: int
    max_abs_diff: dict[str, float]
    min_cosine: dict[str, float]

    @property
    def max_diff(self) -> float:
        """The largest component difference over all attributes."""
        return max(self.max_abs_diff.values(), default=0.0)

    @property
    def lowest_cosine(self) -> float:
        """The lowest per-attribute cosine similarity."""
        return min(self.min_cosine.values(), default=1.0)

    def summary(self) -> str:
        """One line: the largest difference and the lowest cosine similarity."""
        return f"max |de| = {self.max_diff:.2e}, lowest cosine = {self.lowest_cosine:.6f}"

    def table(self) -> str:
        """A plain-text table, one row per attribute."""
        width = max([9, *(len(k) for k in self.max_abs_diff)])
        lines = [f"{'attribute':<{width}}  max |de|   min cosine"]
        for k, d in self.max_abs_diff.items():
            lines.append(f"{k:<{width}}  {d:9.2e}  {self.min_cosine[k]:10.6f}")
        return "\n".join(lines)


def compare_embedders(reference: Embedder, candidate: Embedder, images: np.ndarray) -> EmbeddingParityReport:
    """Embed ``images`` (``uint8`` ``(N, 3, S, S)``) with both embedders and compare them per attribute.

    Raises:
        VestisError: the two embedders have different layouts.
    """
    if reference.layout != candidate.layout:
        raise VestisError(f"layouts differ: {reference.layout} against {candidate.layout}")
    ref = reference.embed_arrays(images)
    cand = candidate.embed_arrays(images)
    diff: dict[str, float] = {}
    cosine: dict[str, float] = {}
    for name, _ in reference.layout:
        r, c = ref[name].astype(np.float64), cand[name].astype(np.float64)
        diff[name] = float(np.abs(r - c).max()) if r.size else 0.0
        norms = np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1)
        cos = np.where(norms > 0, (r * c).sum(1) / np.where(norms > 0, norms, 1.0), 0.0)
        cosine[name] = float(cos.min()) if len(cos) else 1.0
    return EmbeddingParityReport(len(images), diff, cosine)


def is_embedding_checkpoint(path: str | os.PathLike[str], *, trust: bool = False) -> bool:
    """Whether a checkpoint holds an embedding model (its ``embedding`` entry, or its model's registered task).

    Raises:
        VestisError: the checkpoint cannot be read (see :func:`vestis.train.checkpoint.load_checkpoint`).
    """
    from vestis.train.checkpoint import load_checkpoint

    return _is_embedding_state(load_checkpoint(path, trust=trust))


def _is_embedding_state(state: dict[str, Any]) -> bool:
    import vestis.models  # noqa: F401 (registers the models)
    from vestis.registry import MODELS

    if state.get("embedding") is not None:
        return True
    name = (state["config"].get("model") or {}).get("name")
    return isinstance(name, str) and name in MODELS and MODELS.meta(name).get("task") == "embedding"


def export_embedding_onnx(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    int8: bool = False,
    opset: int | None = None,
    calibration: Sequence[str | os.PathLike[str]] | None = None,
    check_images: int = 16,
    trust_checkpoint: bool = False,
) -> ExportResult:
    """Export an embedding checkpoint, or a classifier's attribute-based embedder, to ONNX (see the module docstring).

    Args:
        checkpoint: a vestis checkpoint (embedding model or classifier).
        out: the ``.onnx`` file to write (atomically).
        int8: refused (see the module docstring).
        opset: the default-domain opset; ``None`` for the exporter's default.
        calibration: images for the parity check (folder, manifest or paths); ``None`` uses a synthetic catalog.
        check_images: how many images the parity check compares (0: no check).
        trust_checkpoint: also load an old pickle checkpoint, which runs any code the file holds.

    Returns:
        The path, opset, exporter, and an :class:`EmbeddingParityReport` of the file against the checkpoint.

    Raises:
        VestisError: ``int8``, an unreadable checkpoint, an opset the exporter cannot produce, missing ``onnx``.
    """
    t0 = time.perf_counter()
    if int8:
        raise VestisError(f"{checkpoint}: --int8 is not supported for embedding models; export them in fp32")
    try:
        import onnx
    except ImportError:
        raise VestisError("ONNX export needs the onnx extra: pip install 'vestis[onnx]'") from None
    from vestis.inference.embedder import Embedder

    if Path(checkpoint).suffix.lower() == ".onnx":
        raise VestisError(f"{checkpoint}: expected a checkpoint to export, got an ONNX file")
    reference = Embedder.from_checkpoint(checkpoint, device="cpu", trust=trust_checkpoint)
    prep = reference.preprocessing
    size, pad = int(prep["image_size"]), int(prep["pad_value"])
    module = reference.module
    assert module is not None  # a checkpoint always gives the torch backend
    proto, exporter = _torch_export(module, size, [EMBEDDING_OUTPUT], opset)

    info = reference.info
    metadata = {
        "vestis.format": ONNX_FORMAT,
        "vestis.version": str(ONNX_VERSION),
        "vestis.task": TASK,
        "vestis.embedding": json.dumps(
            {
                "model": info["model"],
                "backbone": info["backbone"],
                "layout": [[name, width] for name, width in reference.layout],
                "similarity": info["similarity"],
                "output": EMBEDDING_OUTPUT,
            }
        ),
        "vestis.taxonomy": json.dumps(reference.taxonomy.to_dict()),
        "vestis.preprocessing": json.dumps(
            {
                **prep,
                "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NCHW", "channels": "RGB"},
                "normalization": "in-graph",
            }
        ),
        "vestis.config": json.dumps(reference.config or {}),
        "vestis.quantization": json.dumps({"mode": "none"}),
        "vestis.source": Path(checkpoint).name,
    }
    onnx.helper.set_model_props(proto, metadata)
    proto.producer_name = "vestis"
    proto.doc_string = f"vestis embedding model ({info['model']}) exported from {Path(checkpoint).name}"
    out = atomic_write_bytes(out, proto.SerializeToString())

    parity = None
    if check_images > 0:
        candidate = Embedder.from_onnx(out, device="cpu")
        sample = load_sample_images(calibration, check_images, size, pad, seed=1)
        parity = compare_embedders(reference, candidate, sample)
    return ExportResult(
        path=out,
        opset=_opset_of(proto),
        exporter=exporter,
        int8=False,
        parity=parity,
        seconds=time.perf_counter() - t0,
        metadata=metadata,
    )
