"""ONNX export: the inference graph, its metadata, int8 quantisation and a parity check against PyTorch.

The exported graph is :class:`InferenceModule`:

* **input** ``images``: ``uint8`` ``(batch, 3, S, S)``, RGB, letterboxed to the checkpoint's ``image_size``
  with its ``pad_value`` (:func:`vestis.data.transforms.letterbox`). The ``/255``, mean and std normalisation
  runs inside the graph, so a client only resizes and pads: no float preprocessing to get wrong, and a
  quarter of the bytes to ship to the runtime. Only the batch axis is dynamic.
* **outputs**: one probability tensor ``(batch, num_values)`` per attribute (softmax for single-label
  attributes, sigmoid for multi-label ones), named after the attribute with characters outside
  ``[A-Za-z0-9_]`` replaced (``sleeve.length`` -> ``sleeve_length``; the mapping is in the metadata), and
  ``heatmap`` ``(batch, h, w)``: where the model looked, at the finest pooled level's resolution (see
  :class:`InferenceModule`).
* **metadata_props** (JSON strings): ``vestis.format``, ``vestis.version``, ``vestis.taxonomy``,
  ``vestis.preprocessing``, ``vestis.thresholds`` (calibrated per-value thresholds), ``vestis.config``,
  ``vestis.outputs`` (attribute -> output name), ``vestis.heatmap``, ``vestis.quantization`` and, when the
  checkpoint's model has one, ``vestis.fingerprint`` (a plain ``sha256:...`` string; an int8 file keeps the
  fingerprint of the model it was quantised from). A model file is enough to run and decode predictions, as a
  checkpoint is.

Per-attribute models combined by ``vestis train --per-attribute`` (``RUN/combined.json`` or ``RUN``) export as
one graph, :class:`~vestis.inference.combined.CombinedModule`: every member's outputs, a backbone shared by
several members computed once, the same metadata (the combined taxonomy, thresholds and fingerprint) and
``vestis.members`` (attribute -> member fingerprint).

Exporter: ``torch.onnx.export(dynamo=True)`` at its default opset or at ``opset >= 18``, the TorchScript
exporter below (:func:`vestis.inference.exporter.torch_export`, shared with the embedding export).

int8 (``int8=True``): static quantisation in ONNX Runtime's QDQ format, per-channel symmetric int8 weights
and asymmetric uint8 activations calibrated (min/max) on a few letterboxed images. Static rather than
dynamic quantisation because this model is convolutions: dynamic quantisation only covers MatMul/Gemm
well and computes activation ranges at run time; static quantisation lets ONNX Runtime fuse Conv + QDQ into
integer convolutions. The normalisation at the input and the softmax/sigmoid at the outputs stay in float.
Calibration images come from ``calibration`` (a folder, a manifest or image paths) or, by default, from a
small synthetic catalog (:func:`vestis.data.synthetic.generate_catalog`); calibrate on your own catalog's
images for a model trained on them. After quantising, the int8 model's decisions (argmax for single-label
attributes, each value's threshold decision for multi-label ones) are compared with the fp32 model's on the
calibration images; an attribute agreeing on fewer than ``min_agreement`` of them is named in the result's
``warnings``: the int8 file would change that attribute's answers too often to replace the fp32 one unchecked.

Embedding checkpoints (and, on request, a classifier's attribute-based embedder) export through
:mod:`vestis.inference.export_embedding` instead: one ``embedding`` output, see there.

The graphs and the format's names are in :mod:`vestis.inference.onnx_format`, the parity check in
:mod:`vestis.inference.parity`; the names this module has always offered are importable from here too.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vestis.errors import VestisError
from vestis.inference.combined import is_combined
from vestis.inference.export_embedding import export_embedding_onnx, is_embedding_checkpoint
from vestis.inference.exporter import ExportResult, load_sample_images, opset_of, quiet_exporter, torch_export
from vestis.inference.onnx_format import (
    HEATMAP_OUTPUT,
    INPUT_NAME,
    ONNX_FORMAT,
    ONNX_VERSION,
    InferenceModule,
    output_names,
)
from vestis.inference.parity import ParityReport, compare_predictors
from vestis.inference.predictor import Predictor
from vestis.io import atomic_write_bytes

__all__ = [
    "DEFAULT_MIN_AGREEMENT",
    "HEATMAP_OUTPUT",
    "INPUT_NAME",
    "ONNX_FORMAT",
    "ONNX_VERSION",
    "ExportResult",
    "InferenceModule",
    "ParityReport",
    "compare_predictors",
    "export_onnx",
    "load_sample_images",
    "output_names",
]

_QUANT_OPS = ("Conv", "Gemm", "MatMul")
DEFAULT_MIN_AGREEMENT = 0.9  # int8 vs fp32 decisions on the calibration images, per attribute

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called as calibration images are run through the fp32 model."""


def _quantize(fp32: Any, calib: np.ndarray, workdir: Path, progress: Progress | None = None) -> Any:
    """Static QDQ int8 quantisation of ``fp32`` (a ModelProto) calibrated on ``calib``."""
    import onnx

    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise VestisError("--int8 needs onnxruntime: pip install 'vestis[onnx]'") from None

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calib[i : i + 1] for i in range(len(calib)))
            self._done = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            # the calibrator asks for the next image once it has run the previous one
            if progress is not None and self._done:
                progress(self._done, len(calib))
            x = next(self._it, None)
            if x is not None:
                self._done += 1
            return None if x is None else {INPUT_NAME: x}

    src, pre, dst = workdir / "fp32.onnx", workdir / "pre.onnx", workdir / "int8.onnx"
    onnx.save(fp32, src)
    # ONNX Runtime's symbolic shape inference does not follow every exported node; ONNX's own is enough here
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    with quiet_exporter():
        quantize_static(
            str(pre),
            str(dst),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(_QUANT_OPS),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return onnx.load(dst)


def export_onnx(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    int8: bool = False,
    opset: int | None = None,
    calibration: Sequence[str | os.PathLike[str]] | None = None,
    calibration_images: int = 32,
    check_images: int = 16,
    trust_checkpoint: bool = False,
    embedding: bool = False,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    progress: Progress | None = None,
) -> ExportResult:
    """Export a checkpoint to ONNX (graph and metadata in the module docstring).

    An embedding checkpoint, or any checkpoint with ``embedding=True``, is exported by
    :func:`vestis.inference.export_embedding.export_embedding_onnx` with the same arguments.

    Args:
        checkpoint: a vestis checkpoint, or a combined per-attribute model (``combined.json`` or its folder).
        out: the ``.onnx`` file to write (atomically).
        int8: quantise to int8 (static, QDQ).
        opset: the default-domain opset; ``None`` for the exporter's default.
        calibration: images for int8 calibration and for the parity check (folder, manifest or paths);
            ``None`` uses a synthetic catalog.
        calibration_images: how many images calibrate the int8 ranges.
        check_images: how many images the parity check compares (0: no check). They are drawn apart from
            the calibration images.
        trust_checkpoint: also load an old pickle checkpoint, which runs any code the file holds.
        embedding: export a classifier's attribute-based embedder instead of its probabilities.
        min_agreement: int8: warn about each attribute whose decisions agree with fp32 on fewer than this share
            of the calibration images.
        progress: int8: called with ``(done, total)`` as the calibration images are run.

    Returns:
        The path, opset, exporter, the parity of the written model against the checkpoint and, for int8, the
        agreement on the calibration images and any warnings.

    Raises:
        VestisError: unreadable checkpoint, an opset the exporter cannot produce, missing ``onnx``, a
            ``min_agreement`` outside [0, 1].
    """
    t0 = time.perf_counter()
    if not 0.0 <= min_agreement <= 1.0:
        raise VestisError(f"min_agreement: expected a fraction in [0, 1], got {min_agreement}")
    try:
        import onnx
    except ImportError:
        raise VestisError("ONNX export needs the onnx extra: pip install 'vestis[onnx]'") from None
    if Path(checkpoint).suffix.lower() == ".onnx":
        raise VestisError(f"{checkpoint}: expected a checkpoint to export, got an ONNX file")
    combined = is_combined(checkpoint)
    if combined and embedding:
        raise VestisError(f"{checkpoint}: --embedding: a combined per-attribute model exports its attributes only")
    if not combined and (embedding or is_embedding_checkpoint(checkpoint, trust=trust_checkpoint)):
        return export_embedding_onnx(
            checkpoint, out, int8=int8, opset=opset, calibration=calibration, check_images=check_images,
            trust_checkpoint=trust_checkpoint,
        )  # fmt: skip
    if combined:  # one graph: every member's outputs, a shared backbone once
        reference = Predictor.from_path(checkpoint, device="cpu", trust_checkpoint=trust_checkpoint)
    else:
        reference = Predictor.from_checkpoint(checkpoint, device="cpu", trust_checkpoint=trust_checkpoint)
    prep = reference.preprocessing
    size, pad = int(prep["image_size"]), int(prep["pad_value"])
    module = reference.module
    assert module is not None  # a checkpoint always gives the torch backend
    names = output_names(reference.taxonomy)
    proto, exporter = torch_export(module, size, [*names.values(), HEATMAP_OUTPUT], opset)

    quant: dict[str, Any] = {"mode": "none"}
    if int8:
        calib = load_sample_images(calibration, calibration_images, size, pad, seed=0)
        with tempfile.TemporaryDirectory(prefix="vestis-quant-") as tmp:
            proto = _quantize(proto, calib, Path(tmp), progress)
        quant = {
            "mode": "static-int8",
            "format": "QDQ",
            "op_types": list(_QUANT_OPS),
            "weights": "int8 per-channel symmetric",
            "activations": "uint8 asymmetric, min/max calibration",
            "calibration_images": len(calib),
            "calibration_source": "synthetic" if calibration is None else [str(p) for p in calibration],
        }

    metadata = {
        "vestis.format": ONNX_FORMAT,
        "vestis.version": str(ONNX_VERSION),
        "vestis.taxonomy": json.dumps(reference.taxonomy.to_dict()),
        "vestis.preprocessing": json.dumps(
            {
                **prep,
                "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NCHW", "channels": "RGB"},
                "normalization": "in-graph",
            }
        ),
        "vestis.thresholds": json.dumps(reference.thresholds),
        "vestis.config": json.dumps(reference.config or {}),
        "vestis.outputs": json.dumps(names),
        "vestis.heatmap": HEATMAP_OUTPUT,
        "vestis.quantization": json.dumps(quant),
        "vestis.source": Path(checkpoint).name,
    }
    if reference.fingerprint:
        metadata["vestis.fingerprint"] = reference.fingerprint
    if combined:
        metadata["vestis.members"] = json.dumps(reference.info["members"])
    onnx.helper.set_model_props(proto, metadata)
    proto.producer_name = "vestis"
    proto.doc_string = f"vestis attribute model exported from {Path(checkpoint).name}"
    out = atomic_write_bytes(out, proto.SerializeToString())

    parity, agreement, notes = None, None, []
    if check_images > 0 or int8:
        candidate = Predictor.from_path(out, device="cpu")
    if check_images > 0:
        # seed 1: other images than the calibration ones (a different sample of a folder or manifest)
        sample = load_sample_images(calibration, check_images, size, pad, seed=1)
        parity = compare_predictors(reference, candidate, sample)
    if int8:
        agreement = compare_predictors(reference, candidate, calib).agreement
        notes = _agreement_warnings(agreement, min_agreement, len(calib))
    return ExportResult(
        path=out,
        opset=opset_of(proto),
        exporter=exporter,
        int8=int8,
        parity=parity,
        seconds=time.perf_counter() - t0,
        metadata=metadata,
        calibration_agreement=agreement,
        warnings=tuple(notes),
    )


def _agreement_warnings(agreement: dict[str, float], minimum: float, n: int) -> list[str]:
    """One warning per attribute whose int8 decisions agree with fp32 less often than ``minimum``."""
    low = {k: v for k, v in agreement.items() if v < minimum}
    return [
        f"int8 agrees with fp32 on {name} for {v:.1%} of the {n} calibration images, below --min-agreement "
        f"{minimum:g}; calibrate on more of your own images (--calibration) or ship the fp32 model"
        for name, v in low.items()
    ]
