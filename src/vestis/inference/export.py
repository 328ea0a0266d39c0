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
  ``vestis.outputs`` (attribute -> output name), ``vestis.heatmap`` and ``vestis.quantization``. A model file
  is enough to run and decode predictions, as a checkpoint is.

Exporter: ``torch.onnx.export(dynamo=True)`` (``torch.export`` based, the supported path) at its default
opset or at ``opset >= 18``; an older opset (< 18) goes through the TorchScript exporter, since the dynamo
exporter cannot down-convert its graphs (its reductions take axes as inputs). The opset of the written
graph is checked either way.

int8 (``int8=True``): static quantisation in ONNX Runtime's QDQ format, per-channel symmetric int8 weights
and asymmetric uint8 activations calibrated (min/max) on a few letterboxed images. Static rather than
dynamic quantisation because this model is convolutions: dynamic quantisation only covers MatMul/Gemm
well and computes activation ranges at run time; static quantisation lets ONNX Runtime fuse Conv + QDQ into
integer convolutions. The normalisation at the input and the softmax/sigmoid at the outputs stay in float.
Calibration images come from ``calibration`` (a folder, a manifest or image paths) or, by default, from a
small synthetic catalog (:func:`vestis.data.synthetic.generate_catalog`); calibrate on your own catalog's
images for a model trained on them.

Embedding checkpoints (and, on request, a classifier's attribute-based embedder) export through
:mod:`vestis.inference.export_embedding` instead: one ``embedding`` output, see there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.inference.batch import probabilities
from vestis.io import atomic_write_bytes

if TYPE_CHECKING:
    from vestis.inference.export_embedding import EmbeddingParityReport
    from vestis.inference.predictor import Predictor

__all__ = [
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

ONNX_FORMAT = "vestis-onnx"
ONNX_VERSION = 1
INPUT_NAME = "images"
HEATMAP_OUTPUT = "heatmap"
# the dynamo exporter's graphs use opset-18 reductions (axes as an input); older opsets need TorchScript
_MIN_DYNAMO_OPSET = 18
_QUANT_OPS = ("Conv", "Gemm", "MatMul")


class InferenceModule(nn.Module):
    """``uint8`` letterboxed images in, probabilities per attribute and a heat-map out.

    The same module runs the PyTorch backend of :class:`~vestis.inference.predictor.Predictor` and is
    what :func:`export_onnx` exports, so both backends compute the same thing.

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
        # same operations, in the same order, as vestis.data.transforms.normalize
        x = (images.float().div(255.0) - self.mean) / self.std
        m = self.model
        levels = list(m.neck(m.backbone(x)).values())
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


@dataclass(frozen=True)
class ParityReport:
    """How closely a candidate backend reproduces a reference one on the same images.

    Attributes:
        num_images: images compared.
        max_abs_diff: attribute -> largest absolute difference of a probability.
        agreement: attribute -> fraction of decisions that agree: the argmax for single-label attributes,
            each value's ``score >= threshold`` decision for multi-label ones.
        heatmap_max_abs_diff: largest absolute difference of the raw heat-maps.
    """

    num_images: int
    max_abs_diff: dict[str, float]
    agreement: dict[str, float]
    heatmap_max_abs_diff: float

    @property
    def max_diff(self) -> float:
        """The largest probability difference over all attributes."""
        return max(self.max_abs_diff.values(), default=0.0)

    @property
    def min_agreement(self) -> float:
        """The lowest per-attribute agreement."""
        return min(self.agreement.values(), default=1.0)

    def summary(self) -> str:
        """One line: the largest difference and the lowest agreement."""
        return f"max |dp| = {self.max_diff:.2e}, lowest agreement = {self.min_agreement:.4f}"

    def table(self) -> str:
        """A plain-text table, one row per attribute."""
        width = max([9, *(len(k) for k in self.max_abs_diff)])
        lines = [f"{'attribute':<{width}}  max |dp|   agreement"]
        for k, d in self.max_abs_diff.items():
            lines.append(f"{k:<{width}}  {d:9.2e}  {self.agreement[k]:9.4f}")
        lines.append(f"{'heatmap':<{width}}  {self.heatmap_max_abs_diff:9.2e}")
        return "\n".join(lines)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ONNX file.
        opset: its default-domain opset.
        exporter: ``dynamo`` or ``torchscript``.
        int8: whether the graph is quantised.
        parity: the exported model against the checkpoint on sample images (``None`` when not checked); an
            :class:`~vestis.inference.export_embedding.EmbeddingParityReport` for an embedding export.
        seconds: wall time of the export.
        metadata: the ``metadata_props`` written (JSON strings).
    """

    path: Path
    opset: int
    exporter: str
    int8: bool
    parity: ParityReport | EmbeddingParityReport | None = None
    seconds: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict, repr=False)


def compare_predictors(reference: Predictor, candidate: Predictor, images: np.ndarray) -> ParityReport:
    """Run both predictors on ``images`` (``uint8`` ``(N, 3, S, S)``) and compare their raw outputs.

    Multi-label decisions use the reference's calibrated thresholds (or the default threshold).
    """
    ref_p, ref_h = reference.run(images)
    cand_p, cand_h = candidate.run(images)
    diff: dict[str, float] = {}
    agree: dict[str, float] = {}
    for a in reference.taxonomy:
        r, c = ref_p[a.name], cand_p[a.name]
        diff[a.name] = float(np.abs(r - c).max()) if r.size else 0.0
        if a.kind == "single":
            agree[a.name] = float((r.argmax(-1) == c.argmax(-1)).mean()) if len(r) else 1.0
        else:
            t = reference.thresholds_for(a.name)
            agree[a.name] = float(((r >= t) == (c >= t)).mean()) if r.size else 1.0
    heat = float(np.abs(ref_h - cand_h).max()) if ref_h.size else 0.0
    return ParityReport(len(images), diff, agree, heat)


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
    from vestis.data.images import ImageError, load_image
    from vestis.data.transforms import letterbox_array
    from vestis.inference.tagging import collect_inputs

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
        from vestis.data.synthetic import generate_catalog

        with tempfile.TemporaryDirectory(prefix="vestis-calib-") as tmp:
            result = generate_catalog(tmp, n=n, size=size, seed=seed, workers=1)
            return decode(sorted(result.images_dir.iterdir()))
    items = collect_inputs(source)
    pick = np.sort(np.random.default_rng(seed).choice(len(items), min(n, len(items)), replace=False))
    return decode([items[i].path for i in pick])


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
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


def _opset_of(proto: Any) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _torch_export(module: nn.Module, size: int, outputs: list[str], opset: int | None) -> tuple[Any, str]:
    """The module (``uint8`` images in, ``outputs`` out) as an ``onnx.ModelProto``, and which exporter made it."""
    import io

    import onnx

    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)  # batch 2: 1 would be specialised
    with _quiet_exporter():
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
    got = _opset_of(proto)
    if opset is not None and got != opset:
        raise VestisError(f"--opset {opset}: the {exporter} exporter produced opset {got}")
    return proto, exporter


def _quantize(fp32: Any, calib: np.ndarray, workdir: Path) -> Any:
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

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {INPUT_NAME: x}

    src, pre, dst = workdir / "fp32.onnx", workdir / "pre.onnx", workdir / "int8.onnx"
    onnx.save(fp32, src)
    # ONNX Runtime's symbolic shape inference does not follow every exported node; ONNX's own is enough here
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    with _quiet_exporter():
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
) -> ExportResult:
    """Export a checkpoint to ONNX (graph and metadata in the module docstring).

    An embedding checkpoint, or any checkpoint with ``embedding=True``, is exported by
    :func:`vestis.inference.export_embedding.export_embedding_onnx` with the same arguments.

    Args:
        checkpoint: a vestis checkpoint.
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

    Returns:
        The path, opset, exporter, and the parity of the written model against the checkpoint.

    Raises:
        VestisError: unreadable checkpoint, an opset the exporter cannot produce, or missing ``onnx``.
    """
    t0 = time.perf_counter()
    try:
        import onnx
    except ImportError:
        raise VestisError("ONNX export needs the onnx extra: pip install 'vestis[onnx]'") from None
    from vestis.inference.export_embedding import export_embedding_onnx, is_embedding_checkpoint
    from vestis.inference.predictor import Predictor

    if Path(checkpoint).suffix.lower() == ".onnx":
        raise VestisError(f"{checkpoint}: expected a checkpoint to export, got an ONNX file")
    if embedding or is_embedding_checkpoint(checkpoint, trust=trust_checkpoint):
        return export_embedding_onnx(
            checkpoint, out, int8=int8, opset=opset, calibration=calibration, check_images=check_images,
            trust_checkpoint=trust_checkpoint,
        )  # fmt: skip
    reference = Predictor.from_checkpoint(checkpoint, device="cpu", trust_checkpoint=trust_checkpoint)
    prep = reference.preprocessing
    size, pad = int(prep["image_size"]), int(prep["pad_value"])
    module = reference.module
    assert module is not None  # a checkpoint always gives the torch backend
    names = output_names(reference.taxonomy)
    proto, exporter = _torch_export(module, size, [*names.values(), HEATMAP_OUTPUT], opset)

    quant: dict[str, Any] = {"mode": "none"}
    if int8:
        calib = load_sample_images(calibration, calibration_images, size, pad, seed=0)
        with tempfile.TemporaryDirectory(prefix="vestis-quant-") as tmp:
            proto = _quantize(proto, calib, Path(tmp))
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
    onnx.helper.set_model_props(proto, metadata)
    proto.producer_name = "vestis"
    proto.doc_string = f"vestis attribute model exported from {Path(checkpoint).name}"
    out = atomic_write_bytes(out, proto.SerializeToString())

    parity = None
    if check_images > 0:
        candidate = Predictor.from_path(out, device="cpu")
        # seed 1: other images than the calibration ones (a different sample of a folder or manifest)
        sample = load_sample_images(calibration, check_images, size, pad, seed=1)
        parity = compare_predictors(reference, candidate, sample)
    return ExportResult(
        path=out,
        opset=_opset_of(proto),
        exporter=exporter,
        int8=int8,
        parity=parity,
        seconds=time.perf_counter() - t0,
        metadata=metadata,
    )
