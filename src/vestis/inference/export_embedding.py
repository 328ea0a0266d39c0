"""ONNX export of embedding models: the graph, its metadata and a parity check against PyTorch.

An embedding checkpoint (``csn``, ``csn_fixed``, ``triplet``, ``datrnet``; see :mod:`vestis.models.embedding`), or
a classifier checkpoint seen through its attribute-based embedder, exports as
:class:`~vestis.inference.onnx_format.EmbeddingInferenceModule`:

* **input** ``images``: ``uint8`` ``(batch, 3, S, S)``, letterboxed as for the classifiers (normalisation in the
  graph, only the batch axis dynamic; see :mod:`vestis.inference.export`).
* **output** ``embedding``: ``float32`` ``(batch, sum d_t)``, the unit-norm sub-embeddings side by side in layout
  order (:meth:`~vestis.models.embedding.EmbeddingModel.concat`). One output rather than one per attribute: a
  search index stores exactly this vector, and the squared L2 distance over a set of attributes is the sum over
  their slices.
* **metadata_props**: ``vestis.format`` / ``vestis.version`` as for the classifiers, ``vestis.task`` =
  ``embedding``, ``vestis.embedding`` (JSON: ``model``, ``backbone``, ``layout`` ``[[attribute, width], ...]``,
  ``similarity``, ``output``), ``vestis.taxonomy``, ``vestis.preprocessing``, ``vestis.config``,
  ``vestis.quantization``, ``vestis.source`` and, when the checkpoint's model has one, ``vestis.fingerprint``.
  :class:`~vestis.inference.embedder.Embedder` rebuilds everything from them.

int8 is refused for embedding models: the classifier's check (decisions that agree) has no counterpart here that
says when a quantised embedding is still good enough for retrieval, so a quantised file would ship unchecked.

The export step is :func:`vestis.inference.exporter.torch_export`, shared with the classifiers' export; this
module never imports :mod:`vestis.inference.export`, which dispatches embedding checkpoints here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vestis.errors import VestisError
from vestis.inference.embedder import Embedder
from vestis.inference.exporter import ExportResult, load_sample_images, opset_of, torch_export
from vestis.inference.onnx_format import (
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    ONNX_FORMAT,
    ONNX_VERSION,
    TASK,
    EmbeddingInferenceModule,
)
from vestis.inference.parity import EmbeddingParityReport, compare_embedders
from vestis.io import atomic_write_bytes

__all__ = [
    "EMBEDDING_OUTPUT",
    "TASK",
    "EmbeddingInferenceModule",
    "EmbeddingParityReport",
    "compare_embedders",
    "export_embedding_onnx",
    "is_embedding_checkpoint",
]


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
    if Path(checkpoint).suffix.lower() == ".onnx":
        raise VestisError(f"{checkpoint}: expected a checkpoint to export, got an ONNX file")
    from vestis.train.checkpoint import load_checkpoint, rebuild_model

    # Embedder.from_checkpoint's steps, keeping the model: its fingerprint goes into the metadata
    state = load_checkpoint(checkpoint, trust=trust_checkpoint)
    model = rebuild_model(state, source=str(checkpoint), map_location="cpu")
    reference = Embedder.from_model(model, preprocessing=state["preprocessing"], device="cpu")
    reference.path = Path(checkpoint)
    fingerprint = getattr(model, "fingerprint", None)
    prep = reference.preprocessing
    size, pad = int(prep["image_size"]), int(prep["pad_value"])
    module = reference.module
    assert module is not None  # a checkpoint always gives the torch backend
    proto, exporter = torch_export(module, size, [EMBEDDING_OUTPUT], opset)

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
    if fingerprint:
        metadata["vestis.fingerprint"] = fingerprint
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
        opset=opset_of(proto),
        exporter=exporter,
        int8=False,
        parity=parity,
        seconds=time.perf_counter() - t0,
        metadata=metadata,
    )
