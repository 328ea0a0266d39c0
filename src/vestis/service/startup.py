"""What ``vestis serve`` runs a single-product model on: ONNX Runtime by default, PyTorch on request.

A classifier checkpoint is exported at start-up by :func:`vestis.inference.export.export_onnx`, the same fp32
graph and metadata ``vestis export --opset 17`` writes (:data:`SERVE_OPSET`: the TorchScript exporter, for a
quick start-up; any opset can be asked for), into a private temporary folder that is deleted as soon as ONNX
Runtime has loaded it (the session holds the model in memory; the loaders read a path). The export's own parity
check runs PyTorch and the exported graph on :data:`PARITY_IMAGES` generated images (a synthetic catalog); a
probability or heat-map difference above :data:`PARITY_TOLERANCE` stops start-up with a one-line error, so the
service never answers from a graph that does not reproduce its checkpoint.

* ``runtime=None`` (the default): ONNX Runtime for a checkpoint when ``onnx`` and ``onnxruntime`` are installed,
  PyTorch otherwise (with a note); an ONNX file runs on ONNX Runtime. Per-attribute models combined into one
  (:mod:`vestis.inference.combined`, a run folder or its ``combined.json``) stay on PyTorch by default; ``onnx``
  exports them as one graph the same way.
* ``runtime="onnx"``: as the default, but a missing ONNX extra is an error.
* ``runtime="torch"``: the checkpoint on PyTorch (an ONNX file is an error: it has no PyTorch weights).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vestis.errors import VestisError

if TYPE_CHECKING:
    from vestis.inference.parity import ParityReport
    from vestis.inference.predictor import Predictor

__all__ = [
    "PARITY_IMAGES",
    "PARITY_TOLERANCE",
    "RUNTIMES",
    "SERVE_OPSET",
    "StartupExport",
    "check_parity",
    "load_served",
    "onnx_available",
    "onnx_from_checkpoint",
]

RUNTIMES = ("onnx", "torch")
# the bound the export tests hold ONNX Runtime to against PyTorch (fp32: differences are ~1e-7 in practice)
PARITY_TOLERANCE = 1e-4
PARITY_IMAGES = 4
# the start-up export's opset: the TorchScript exporter (as the outfit pipeline export), several times faster than
# the dynamo one (a tiny model: ~1-4 s against ~7-27 s on one core); 18 and above take the dynamo exporter
SERVE_OPSET = 17


@dataclass(frozen=True)
class StartupExport:
    """How the start-up export went.

    Attributes:
        seconds: wall time of the export, the parity check and loading the graph into ONNX Runtime.
        exporter: ``dynamo`` or ``torchscript``.
        opset: the graph's default-domain opset.
        parity: the exported graph against PyTorch on the generated images.
    """

    seconds: float
    exporter: str
    opset: int
    parity: ParityReport

    def summary(self) -> str:
        """One line for the start-up log."""
        p = self.parity
        return (
            f"exported to ONNX in {self.seconds:.1f} s ({self.exporter} exporter, opset {self.opset}); against PyTorch "
            f"on {p.num_images} generated images: max |dp| = {p.max_diff:.2e}, heat-map {p.heatmap_max_abs_diff:.2e}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able summary ``GET /v1/taxonomy`` shows (``export``)."""
        p = self.parity
        return {
            "seconds": round(self.seconds, 3),
            "exporter": self.exporter,
            "opset": self.opset,
            "parity_images": p.num_images,
            "max_abs_diff": p.max_diff,
            "heatmap_max_abs_diff": p.heatmap_max_abs_diff,
            "tolerance": PARITY_TOLERANCE,
        }


def check_parity(parity: ParityReport, source: str | os.PathLike[str], tolerance: float = PARITY_TOLERANCE) -> None:
    """Refuse an export whose outputs differ from PyTorch's by more than ``tolerance``.

    Raises:
        VestisError: one line naming the worst attribute (or the heat-map), its difference and the way out.
    """
    worst = max(parity.max_abs_diff.items(), key=lambda kv: kv[1], default=("", 0.0))
    if worst[1] <= tolerance and parity.heatmap_max_abs_diff <= tolerance:
        return
    what, diff = worst if worst[1] > tolerance else ("the heat-map", parity.heatmap_max_abs_diff)
    raise VestisError(
        f"{source}: the ONNX export disagrees with PyTorch on {parity.num_images} generated images: "
        f"max |dp| = {diff:.2e} on {what}, above the tolerance {tolerance:g}; serve it on PyTorch with "
        f"--runtime torch"
    )


def onnx_available() -> bool:
    """Whether the ONNX extra (``onnx`` to export, ``onnxruntime`` to run) is installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def onnx_from_checkpoint(
    checkpoint: str | os.PathLike[str],
    *,
    device: str | None = None,
    opset: int | None = SERVE_OPSET,
    check_images: int = PARITY_IMAGES,
    tolerance: float = PARITY_TOLERANCE,
    trust_checkpoint: bool = False,
) -> tuple[Predictor, StartupExport]:
    """Export ``checkpoint`` to fp32 ONNX, check it against PyTorch, and load it into ONNX Runtime.

    Args:
        checkpoint: a classifier checkpoint (or what :func:`~vestis.inference.export.export_onnx` also takes).
        device: where ONNX Runtime runs (``cpu``, ``cuda``, ``cuda:N``; ``None``: CUDA when available). The
            parity check runs on the CPU.
        opset: the export's opset (``None``: the exporter's default, as ``vestis export``; below 18 the TorchScript
            exporter).
        check_images: generated images the parity check runs (at least 1).
        tolerance: the largest difference of a probability or heat-map value accepted.
        trust_checkpoint: also load an old pickle checkpoint, which runs any code the file holds.

    Returns:
        The ONNX Runtime predictor and how the export went.

    Raises:
        VestisError: an unreadable checkpoint, a missing ONNX extra, an export that disagrees with PyTorch.
    """
    from vestis.inference.export import export_onnx
    from vestis.inference.parity import ParityReport
    from vestis.inference.predictor import Predictor

    if check_images < 1:
        raise VestisError(f"check_images: expected at least 1 generated image, got {check_images}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vestis-serve-") as tmp:
        result = export_onnx(
            checkpoint, Path(tmp) / "model.onnx", opset=opset, check_images=check_images,
            trust_checkpoint=trust_checkpoint,
        )  # fmt: skip
        if not isinstance(result.parity, ParityReport):  # an embedding model's export checks its embeddings
            raise VestisError(f"{checkpoint}: not a classifier: only attribute models serve on ONNX Runtime this way")
        check_parity(result.parity, checkpoint, tolerance)
        predictor = Predictor.from_onnx(result.path, device)
    predictor.path = Path(checkpoint)
    return predictor, StartupExport(time.perf_counter() - t0, result.exporter, result.opset, result.parity)


def load_served(
    model: str | os.PathLike[str],
    runtime: str | None = None,
    *,
    device: str | None = None,
    opset: int | None = SERVE_OPSET,
    trust_checkpoint: bool = False,
) -> tuple[Predictor, StartupExport | None, str | None]:
    """The predictor ``vestis serve`` runs for a single-product classifier (see the module docstring).

    Args:
        model: a checkpoint, an ONNX file from ``vestis export``, or what
            :meth:`~vestis.inference.predictor.Predictor.from_path` also takes.
        runtime: ``onnx``, ``torch`` or ``None`` (ONNX Runtime where it can run).
        device: as :meth:`~vestis.inference.predictor.Predictor.from_path`.
        opset: the start-up export's opset (``None``: the exporter's default, the dynamo exporter).
        trust_checkpoint: also load an old pickle checkpoint, which runs any code the file holds.

    Returns:
        The predictor, the start-up export (``None`` when there was none), and a note for the user (``None``
        unless the default fell back to PyTorch).

    Raises:
        VestisError: a missing model, an unknown runtime, ``--runtime torch`` on an ONNX file, ``--runtime onnx``
            without the ONNX extra, an export that disagrees with PyTorch.
    """
    from vestis.inference.predictor import Predictor

    if runtime is not None and runtime not in RUNTIMES:
        raise VestisError(f"runtime: expected one of {', '.join(RUNTIMES)}, got {runtime!r}")
    path = Path(model)
    if not path.exists():
        raise VestisError(f"{path}: model file not found")
    if path.suffix.lower() == ".onnx":
        if runtime == "torch":
            raise VestisError(
                f"{path}: an ONNX file runs on ONNX Runtime; --runtime torch needs the checkpoint it was exported from"
            )
        return Predictor.from_path(path, device, trust_checkpoint=trust_checkpoint), None, None
    from vestis.inference.combined import is_combined

    note = None
    if runtime is None and is_combined(path):
        runtime = "torch"
    if runtime is None and not onnx_available():
        runtime = "torch"
        note = "onnx and onnxruntime are not installed: serving on PyTorch (pip install 'vestis[onnx]')"
    if runtime == "torch":
        return Predictor.from_path(path, device, trust_checkpoint=trust_checkpoint), None, note
    if not onnx_available():
        raise VestisError("--runtime onnx needs onnx and onnxruntime: pip install 'vestis[onnx]'")
    predictor, export = onnx_from_checkpoint(path, device=device, opset=opset, trust_checkpoint=trust_checkpoint)
    return predictor, export, None
