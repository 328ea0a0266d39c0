"""ONNX export of an outfit pipeline: ``vestis export outfit.vestis --out DIR``.

The folder holds

* ``detector.onnx``: :class:`~vestis.inference.pipeline_graphs.DetectorMaps`, input ``images`` ``uint8`` ``(batch, 3,
  S, S)`` letterboxed with the detector's ``pad_value``, outputs ``heatmap`` (after the sigmoid), ``size``, ``offset``;
* ``stage2.onnx``: :class:`~vestis.inference.pipeline_graphs.Stage2Logits`, inputs ``crops`` ``uint8`` ``(batch, 3, S2,
  S2)`` and ``object_types`` ``int64`` ``(batch,)``, outputs ``category`` and ``attributes`` logits;
* ``pipeline.json``: ``format`` ``vestis-pipeline-onnx``, ``version``, the pair's ``fingerprint``, the ``settings``,
  per part its fingerprint, model name and preprocessing, the detector's ``classes``, ``stride`` and ``candidates``,
  the stage-2 model's ``taxonomy``, ``object_types``, ``layout`` (for readers without vestis) and ``thresholds`` (one
  per attribute output), and the ``parity`` measured at export.

Only the batch axis is dynamic. Decoding (peaks, NMS, boxes, probabilities, suppression) stays on the host
(:mod:`vestis.inference.pipeline_graphs`), shared with the PyTorch runtime. Opset 17 (the default) goes through the
TorchScript exporter, ``opset >= 18`` through ``torch.onnx.export(dynamo=True)``, as in
:mod:`vestis.inference.exporter`. After writing, both graphs are run by ONNX Runtime and by PyTorch on sample images
(a small synthetic catalog) and the largest difference of each output is reported.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vestis.errors import VestisError
from vestis.inference.exporter import load_sample_images, opset_of, quiet_exporter, torch_export
from vestis.inference.pipeline import torch_parts
from vestis.inference.pipeline_format import MANIFEST_NAME, load_pipeline_file
from vestis.inference.pipeline_graphs import DETECTOR_OUTPUTS, STAGE2_INPUTS, STAGE2_OUTPUTS
from vestis.inference.pipeline_onnx import (
    DETECTOR_FILE,
    ONNX_MANIFEST_FORMAT,
    ONNX_MANIFEST_VERSION,
    STAGE2_FILE,
    load_onnx,
)
from vestis.io import atomic_write_bytes, atomic_write_text

__all__ = ["DEFAULT_OPSET", "PipelineExportResult", "export_pipeline_onnx"]

DEFAULT_OPSET = 17
_MIN_DYNAMO_OPSET = 18


@dataclass(frozen=True)
class PipelineExportResult:
    """What :func:`export_pipeline_onnx` wrote.

    Attributes:
        folder: the output folder.
        files: the written files (``detector.onnx``, ``stage2.onnx``, ``pipeline.json``).
        opset: the graphs' default-domain opset.
        exporter: ``torchscript`` or ``dynamo``.
        parity: output name -> largest absolute difference between ONNX Runtime and PyTorch on the sample images
            (empty when not checked).
        num_images: sample images compared.
        seconds: wall time.
    """

    folder: Path
    files: tuple[Path, ...]
    opset: int
    exporter: str
    parity: dict[str, float] = field(default_factory=dict)
    num_images: int = 0
    seconds: float = 0.0

    @property
    def max_diff(self) -> float:
        return max(self.parity.values(), default=0.0)


@contextlib.contextmanager
def _unchecked_labels(module: nn.Module) -> Iterator[None]:
    """Skip the stage-2 model's check of its object-type indices while exporting.

    The check reads the values (``int(labels.min())``), which ``torch.export`` cannot trace and a graph could not
    raise anyway; the host only passes indices from the model's own layout (:class:`OutfitPipeline`).
    """
    model = getattr(module, "model", None)
    if model is None or not hasattr(model, "check_labels"):
        yield
        return
    model.check_labels = lambda *args, **kwargs: None  # an instance attribute shadows the method
    try:
        yield
    finally:
        del model.check_labels


def _export_stage2(module: nn.Module, size: int, opset: int | None) -> tuple[Any, str]:
    """The stage-2 graph (two inputs) as an ``onnx.ModelProto``, and which exporter made it."""
    import onnx

    example = (torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8), torch.tensor([0, 1], dtype=torch.long))
    with quiet_exporter(), _unchecked_labels(module):
        if opset is None or opset >= _MIN_DYNAMO_OPSET:
            batch = torch.export.Dim("batch")
            program = torch.onnx.export(
                module, example, dynamo=True, input_names=list(STAGE2_INPUTS), output_names=list(STAGE2_OUTPUTS),
                dynamic_shapes=({0: batch}, {0: batch}), opset_version=opset, external_data=False, verbose=False,
            )  # fmt: skip
            proto, exporter = program.model_proto, "dynamo"
        else:
            buf = io.BytesIO()
            torch.onnx.export(
                module, example, buf, dynamo=False, input_names=list(STAGE2_INPUTS),
                output_names=list(STAGE2_OUTPUTS),
                dynamic_axes={k: {0: "batch"} for k in [*STAGE2_INPUTS, *STAGE2_OUTPUTS]}, opset_version=opset,
            )  # fmt: skip
            proto, exporter = onnx.load_from_string(buf.getvalue()), "torchscript"
    got = opset_of(proto)
    if opset is not None and got != opset:
        raise VestisError(f"--opset {opset}: the {exporter} exporter produced opset {got}")
    return proto, exporter


def export_pipeline_onnx(
    pipeline: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    opset: int | None = DEFAULT_OPSET,
    check_images: int = 4,
) -> PipelineExportResult:
    """Export a pipeline file to a folder of two ONNX graphs and ``pipeline.json`` (module docstring).

    Args:
        pipeline: the pipeline file (``vestis pipeline``).
        out: the folder to write (created; files in it with the same names are replaced atomically).
        opset: the default-domain opset; ``None`` for the dynamo exporter's default.
        check_images: sample images the parity check runs (0: no check).

    Raises:
        VestisError: an unreadable pipeline file, ``out`` being a file, missing ``onnx``, an opset the exporters
            cannot produce.
    """
    t0 = time.perf_counter()
    try:
        import onnx
    except ImportError:
        raise VestisError("ONNX export needs the onnx extra: pip install 'vestis[onnx]'") from None
    if check_images < 0:
        raise VestisError(f"check_images: expected a number >= 0, got {check_images}")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise VestisError(f"{folder}: expected a folder for the exported pipeline, got a file")
    bundle = load_pipeline_file(pipeline)
    det, st, spec = torch_parts(bundle)
    det.eval()
    st.eval()
    det_proto, exporter = torch_export(det, spec.detector_size, list(DETECTOR_OUTPUTS), opset)
    st_proto, _ = _export_stage2(st, spec.stage2_size, opset)
    dcfg, scfg = bundle.detector["config"], bundle.stage2["config"]
    layout = spec.layout
    manifest = {
        "format": ONNX_MANIFEST_FORMAT,
        "version": ONNX_MANIFEST_VERSION,
        "fingerprint": bundle.fingerprint,
        "source": Path(pipeline).name,
        "settings": bundle.settings.to_dict(),
        "detector": {
            "file": DETECTOR_FILE,
            "fingerprint": spec.detector_fingerprint,
            "model": dcfg["model"]["name"],
            "classes": list(spec.classes),
            "image_size": spec.detector_size,
            "pad_value": spec.detector_pad,
            "stride": spec.stride,
            "candidates": spec.candidates,
            "preprocessing": bundle.detector["preprocessing"],
            "outputs": list(DETECTOR_OUTPUTS),
        },
        "stage2": {
            "file": STAGE2_FILE,
            "fingerprint": spec.stage2_fingerprint,
            "model": scfg["model"]["name"],
            "image_size": spec.stage2_size,
            "pad_value": spec.stage2_pad,
            "preprocessing": bundle.stage2["preprocessing"],
            "taxonomy": spec.stage2_taxonomy.to_dict(),
            "object_types": list(layout.object_types),
            "layout": {
                "category": layout.category,
                "categories": list(layout.categories),
                "attributes": [[a, v] for a, v in layout.attributes],
                "blocks": {a: [b.start, b.stop] for a, b in layout.blocks.items()},
                "kinds": dict(layout.kinds),
                "allowed": np.asarray(layout.allowed, dtype=bool).astype(int).tolist(),
            },
            "thresholds": [float(t) for t in spec.thresholds],
            "inputs": list(STAGE2_INPUTS),
            "outputs": list(STAGE2_OUTPUTS),
        },
    }
    for proto, part in ((det_proto, "detector"), (st_proto, "stage2")):
        onnx.helper.set_model_props(
            proto,
            {"vestis.format": ONNX_MANIFEST_FORMAT, "vestis.part": part,
             "vestis.fingerprint": manifest[part]["fingerprint"], "vestis.pipeline": bundle.fingerprint},
        )  # fmt: skip
        proto.producer_name = "vestis"
    folder.mkdir(parents=True, exist_ok=True)
    files = (
        atomic_write_bytes(folder / DETECTOR_FILE, det_proto.SerializeToString()),
        atomic_write_bytes(folder / STAGE2_FILE, st_proto.SerializeToString()),
    )
    parity: dict[str, float] = {}
    if check_images:
        parity = _parity(folder, det, st, spec, check_images, manifest)
    manifest["parity"] = {"num_images": check_images, "max_abs_diff": parity}
    # written last: a folder without pipeline.json is not an exported pipeline yet
    files += (atomic_write_text(folder / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n"),)
    return PipelineExportResult(folder, files, opset_of(det_proto), exporter, parity, check_images,
                                time.perf_counter() - t0)  # fmt: skip


def _parity(
    folder: Path, det: nn.Module, st: nn.Module, spec: Any, n: int, manifest: dict[str, Any]
) -> dict[str, float]:
    """Largest |ONNX Runtime - PyTorch| of each output on ``n`` synthetic sample images."""
    tmp = folder / MANIFEST_NAME
    atomic_write_text(tmp, json.dumps({**manifest, "parity": {}}))  # the sessions' loader reads it
    _, _, runner = load_onnx(folder, "cpu", None)
    images = load_sample_images(None, n, spec.detector_size, spec.detector_pad, seed=1)
    crops = load_sample_images(None, n, spec.stage2_size, spec.stage2_pad, seed=2)
    types = np.arange(len(crops), dtype=np.int64) % len(spec.layout.object_types)
    with torch.inference_mode():
        ref_det = [o.numpy() for o in det(torch.from_numpy(images))]
        ref_st = [o.numpy() for o in st(torch.from_numpy(crops), torch.from_numpy(types))]
    got_det = runner.run_detector(images)
    got_st = runner.run_stage2(crops, types)
    out = {}
    for names, ref, got in ((DETECTOR_OUTPUTS, ref_det, got_det), (STAGE2_OUTPUTS, ref_st, got_st)):
        for name, r, g in zip(names, ref, got, strict=True):
            out[name] = float(np.abs(r - g).max()) if r.size else 0.0
    return out
