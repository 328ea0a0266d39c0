"""``vestis export``: a checkpoint to ONNX (optionally int8), checked against PyTorch.

An embedding checkpoint exports its concatenated sub-embeddings (one ``embedding`` output); ``--embedding`` does the
same for a classifier's attribute-based embedder. With ``--int8`` the calibration prints its progress on stderr (a
bar on a terminal, a line per tenth of the images otherwise, so logs stay readable) and any attribute whose int8
decisions agree with fp32 on fewer than ``--min-agreement`` of the calibration images is a warning on stderr.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from vestis.cli._app import TrustCheckpointOpt, command, echo, err_console

# vestis.inference.export.DEFAULT_MIN_AGREEMENT, written out: importing that module loads torch, and `vestis --help`
# should not wait for it (a test keeps the two equal)
DEFAULT_MIN_AGREEMENT = 0.9


@contextlib.contextmanager
def _calibration_progress() -> Iterator[Callable[[int, int], None]]:
    """``progress(done, total)`` for the export: a Rich bar on a terminal, plain lines on stderr otherwise."""
    if err_console.is_terminal:
        with Progress(TextColumn("calibrating int8"), BarColumn(), MofNCompleteColumn(), console=err_console) as bar:
            task = bar.add_task("calibrating", total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)
        return

    def line(done: int, total: int) -> None:
        step = max(1, math.ceil(total / 10))
        if done % step == 0 or done == total:
            err_console.print(f"calibrating int8: {done}/{total} images", highlight=False, soft_wrap=True)

    yield line


@command("export")
def export_cmd(
    checkpoint: Annotated[
        Path, typer.Argument(help="A checkpoint (best.ckpt / last.ckpt) or an outfit pipeline file (vestis pipeline).")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The .onnx file to write (an outfit pipeline: the folder to write).")
    ],
    int8: Annotated[bool, typer.Option("--int8", help="Quantise to int8 (static, calibrated).")] = False,
    opset: Annotated[
        int | None,
        typer.Option("--opset", min=7, help="ONNX opset (default: the exporter's; an outfit pipeline: 17)."),
    ] = None,
    calibration: Annotated[
        list[Path] | None,
        typer.Option(
            "--calibration",
            help="Images for int8 calibration and the check: folder, manifest or files (default: a synthetic catalog).",
        ),
    ] = None,
    calibration_images: Annotated[
        int, typer.Option("--calibration-images", min=1, help="How many images calibrate the int8 ranges.")
    ] = 32,
    check_images: Annotated[int, typer.Option("--check-images", min=0, help="Images to compare; 0: no check.")] = 16,
    min_agreement: Annotated[
        float,
        typer.Option(
            "--min-agreement",
            min=0.0,
            max=1.0,
            help="int8: warn about attributes whose decisions agree with fp32 on fewer of the calibration images.",
        ),
    ] = DEFAULT_MIN_AGREEMENT,
    trust_checkpoint: TrustCheckpointOpt = False,
    embedding: Annotated[
        bool, typer.Option("--embedding", help="Export a classifier's attribute-based embedder instead.")
    ] = False,
) -> None:
    """Export CHECKPOINT to ONNX with its taxonomy, preprocessing and thresholds as metadata.

    An outfit pipeline file becomes a folder: detector.onnx, stage2.onnx and pipeline.json.
    """
    from vestis.inference.pipeline_format import pipeline_kind

    if pipeline_kind(checkpoint) == "bundle" or checkpoint.suffix == ".vestis":
        _export_pipeline(checkpoint, out, int8=int8, embedding=embedding, opset=opset, check_images=check_images)
        return
    from vestis.inference.export import export_onnx

    with _calibration_progress() if int8 else contextlib.nullcontext(None) as progress:
        result = export_onnx(
            checkpoint, out, int8=int8, opset=opset, calibration=calibration, calibration_images=calibration_images,
            check_images=check_images, trust_checkpoint=trust_checkpoint, embedding=embedding,
            min_agreement=min_agreement, progress=progress,
        )  # fmt: skip
    kind = "int8" if result.int8 else "fp32"
    size = result.path.stat().st_size / 2**20
    echo(f"wrote {result.path} ({kind}, opset {result.opset}, {result.exporter} exporter, {size:.1f} MiB)")
    if result.calibration_agreement is not None:
        worst = min(result.calibration_agreement.values(), default=1.0)
        echo(f"int8 against fp32 on the calibration images: lowest agreement = {worst:.4f}")
    if result.parity is not None:
        p = result.parity
        echo(f"\nagainst PyTorch on {p.num_images} images:\n{p.table()}")
        echo(f"\n{p.summary()}")
    for note in result.warnings:
        err_console.print(f"[bold yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)


def _export_pipeline(pipeline: Path, out: Path, *, int8: bool, embedding: bool, opset: int | None,
                     check_images: int) -> None:  # fmt: skip
    """An outfit pipeline file to a folder of two ONNX graphs and pipeline.json, checked against PyTorch."""
    from vestis.errors import VestisError
    from vestis.inference.pipeline_export import DEFAULT_OPSET, export_pipeline_onnx

    if int8 or embedding:
        raise VestisError(f"{pipeline}: an outfit pipeline exports in fp32 only (no --int8, no --embedding)")
    r = export_pipeline_onnx(pipeline, out, opset=DEFAULT_OPSET if opset is None else opset, check_images=check_images)
    echo(f"wrote {r.folder}: {', '.join(p.name for p in r.files)} (opset {r.opset}, {r.exporter} exporter)")
    if r.parity:
        rows = "\n".join(f"{k:<10}  {v:9.2e}" for k, v in r.parity.items())
        echo(f"\nagainst PyTorch on {r.num_images} images (max |d|):\n{rows}")
