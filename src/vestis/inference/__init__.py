"""Turning a trained model into predictions (shared by evaluation, the CLI and the service).

* :class:`Predictor`: a checkpoint or an ONNX file -> attributes per image (and heat-maps);
* :class:`Embedder`: a checkpoint or an ONNX file -> one unit sub-embedding per attribute;
* :func:`export_onnx`: a checkpoint -> ONNX (fp32 or int8) with its metadata;
* :func:`tag_catalog`: a whole catalog -> JSONL/CSV/Parquet, crash-safe and resumable;
* :func:`predict_loader` and :func:`probabilities`: batch prediction over a DataLoader (evaluation).

Everything but the last two is imported on first use, so that training, which needs only
:func:`predict_loader`, does not load the export and tagging machinery.
"""

from __future__ import annotations

import importlib
from typing import Any

from vestis.inference.batch import predict_loader, probabilities

__all__ = [
    "Embedder",
    "ExportResult",
    "ImageItem",
    "ParityReport",
    "Predictor",
    "TagResult",
    "collect_inputs",
    "compare_predictors",
    "export_onnx",
    "predict_loader",
    "probabilities",
    "tag_catalog",
]

_LAZY = {
    "Embedder": "embedder",
    "ExportResult": "exporter",
    "ParityReport": "parity",
    "compare_predictors": "parity",
    "export_onnx": "export",
    "Predictor": "predictor",
    "ImageItem": "items",
    "TagResult": "tagging",
    "collect_inputs": "items",
    "tag_catalog": "tagging",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
