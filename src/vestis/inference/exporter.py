"""What both ONNX exporters share: module -> ONNX graph, sample images, and the result they return.

:mod:`vestis.inference.export` (classifiers) and :mod:`vestis.inference.export_embedding` (embedding models)
differ in their graph's outputs and metadata; the export step itself, the images the parity check (and the int8
calibration) runs on and :class:`ExportResult` are here, below both, so neither exporter imports the other.

Exporter: ``torch.onnx.export(dynamo=True)`` (``torch.export`` based, the supported path) at its default
opset or at ``opset >= 18``; an older opset (< 18) goes through the TorchScript exporter, since the dynamo
exporter cannot down-convert its graphs (its reductions take axes as inputs). The opset of the written
graph is checked either way.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vestis.data.images import ImageError, load_image
from vestis.data.transforms import letterbox_array
from vestis.errors import VestisError
from vestis.inference.items import collect_inputs
from vestis.inference.onnx_format import INPUT_NAME
from vestis.inference.parity import EmbeddingParityReport, ParityReport

__all__ = ["ExportResult", "load_sample_images", "opset_of", "quiet_exporter", "torch_export"]

# the dynamo exporter's graphs use opset-18 reductions (axes as an input); older opsets need TorchScript
_MIN_DYNAMO_OPSET = 18


@dataclass(frozen=True)
class ExportResult:
    """What :func:`~vestis.inference.export.export_onnx` wrote.

    Attributes:
        path: the ONNX file.
        opset: its default-domain opset.
        exporter: ``dynamo`` or ``torchscript``.
        int8: whether the graph is quantised.
        parity: the exported model against the checkpoint on sample images (``None`` when not checked); an
            :class:`~vestis.inference.parity.EmbeddingParityReport` for an embedding export.
        seconds: wall time of the export.
        metadata: the ``metadata_props`` written (JSON strings).
        calibration_agreement: int8 only: attribute -> fraction of the int8 model's decisions that agree with
            the fp32 model's on the calibration images (see :class:`~vestis.inference.parity.ParityReport`).
        warnings: what the user should know about the written model (an agreement below the minimum asked).
    """

    path: Path
    opset: int
    exporter: str
    int8: bool
    parity: ParityReport | EmbeddingParityReport | None = None
    seconds: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict, repr=False)
    calibration_agreement: dict[str, float] | None = None
    warnings: tuple[str, ...] = ()


def load_sample_images(
    source: Sequence[str | os.PathLike[str]] | None,
    n: int,
    size: int,
    pad_value: int = 255,
    *,
    seed: int = 0,
) -> np.ndarray:
    """Up to ``n`` letterboxed images ``uint8`` ``(N, 3, size, size)`` for calibration and parity checks.

    Args:
        source: a folder, a manifest or image paths (as ``vestis predict`` takes them); ``None`` draws a
            small synthetic catalog with ``seed``.
        n: the number of images wanted; from a source with more, a random sample.
        size: letterbox size.
        pad_value: letterbox padding grey level.
        seed: the synthetic catalog's seed, or the sample's.

    Raises:
        VestisError: the source holds no readable image.
    """

    def decode(paths: list[Path]) -> np.ndarray:
        arrays = []
        for p in paths:
            try:
                img = load_image(p, min_side=size)
            except ImageError:
                continue
            arrays.append(letterbox_array(img, size, pad_value))
        if not arrays:
            raise VestisError(f"{source}: no readable image for calibration")
        return np.ascontiguousarray(np.stack(arrays))  # (N, 3, S, S)

    if source is None:
        # imported here: the synthetic catalog is only drawn when no calibration images are given
        from vestis.data.synthetic import generate_catalog

        with tempfile.TemporaryDirectory(prefix="vestis-calib-") as tmp:
            result = generate_catalog(tmp, n=n, size=size, seed=seed, workers=1)
            return decode(sorted(result.images_dir.iterdir()))
    items = collect_inputs(source)
    pick = np.sort(np.random.default_rng(seed).choice(len(items), min(n, len(items)), replace=False))
    return decode([items[i].path for i in pick])


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporters' deprecation warnings and the registry's notes about missing torchvision ops."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def opset_of(proto: Any) -> int:
    """The default-domain opset of an ``onnx.ModelProto`` (0 when it declares none)."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def torch_export(module: nn.Module, size: int, outputs: list[str], opset: int | None) -> tuple[Any, str]:
    """The module (``uint8`` images in, ``outputs`` out) as an ``onnx.ModelProto``, and which exporter made it.

    Raises:
        VestisError: the exporter wrote another opset than ``opset``.
    """
    # onnx is an optional extra: the callers check it is installed and say how to install it
    import onnx

    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)  # batch 2: 1 would be specialised
    with quiet_exporter():
        if opset is None or opset >= _MIN_DYNAMO_OPSET:
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=outputs,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
            proto, exporter = program.model_proto, "dynamo"
        else:
            buf = io.BytesIO()
            torch.onnx.export(
                module,
                (example,),
                buf,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=outputs,
                dynamic_axes={k: {0: "batch"} for k in [INPUT_NAME, *outputs]},
                opset_version=opset,
            )
            proto, exporter = onnx.load_from_string(buf.getvalue()), "torchscript"
    got = opset_of(proto)
    if opset is not None and got != opset:
        raise VestisError(f"--opset {opset}: the {exporter} exporter produced opset {got}")
    return proto, exporter
