"""``vestis export``: a checkpoint to ONNX (optionally int8), checked against PyTorch.

An embedding checkpoint exports its concatenated sub-embeddings (one ``embedding`` output); ``--embedding`` does the
same for a classifier's attribute-based embedder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vestis.cli._app import TrustCheckpointOpt, command, echo


@command("export")
def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint (best.ckpt / last.ckpt).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .onnx file to write.")],
    int8: Annotated[bool, typer.Option("--int8", help="Quantise to int8 (static, calibrated).")] = False,
    opset: Annotated[int | None, typer.Option("--opset", min=7, help="ONNX opset (default: the exporter's).")] = None,
    calibration: Annotated[
        list[Path] | None,
        typer.Option("--calibration", help="Images for int8 calibration and the check: folder, manifest or files."),
    ] = None,
    calibration_images: Annotated[int, typer.Option("--calibration-images", min=1)] = 32,
    check_images: Annotated[int, typer.Option("--check-images", min=0, help="Images to compare; 0: no check.")] = 16,
    trust_checkpoint: TrustCheckpointOpt = False,
    embedding: Annotated[
        bool, typer.Option("--embedding", help="Export a classifier's attribute-based embedder instead.")
    ] = False,
) -> None:
    """Export CHECKPOINT to ONNX with its taxonomy, preprocessing and thresholds as metadata."""
    from vestis.inference.export import export_onnx

    result = export_onnx(
        checkpoint, out, int8=int8, opset=opset, calibration=calibration, calibration_images=calibration_images,
        check_images=check_images, trust_checkpoint=trust_checkpoint, embedding=embedding,
    )  # fmt: skip
    kind = "int8" if result.int8 else "fp32"
    size = result.path.stat().st_size / 2**20
    echo(f"wrote {result.path} ({kind}, opset {result.opset}, {result.exporter} exporter, {size:.1f} MiB)")
    if result.parity is not None:
        p = result.parity
        echo(f"\nagainst PyTorch on {p.num_images} images:\n{p.table()}")
        echo(f"\n{p.summary()}")
