"""``vestis pipeline``: bundle a detector and a stage-2 checkpoint into one outfit pipeline file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vestis.cli._app import TrustCheckpointOpt, command, echo


@command("pipeline")
def pipeline_cmd(
    detector: Annotated[Path, typer.Argument(help="The detector checkpoint (vestis train --task detect).")],
    stage2: Annotated[Path, typer.Argument(help="The stage-2 checkpoint (vestis train --task stage2).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The pipeline file to write (e.g. outfit.vestis).")],
    min_score: Annotated[
        float, typer.Option("--min-score", min=0.0, max=1.0, help="Drop detections scoring below this.")
    ] = 0.3,
    nms_iou: Annotated[float, typer.Option("--nms-iou", min=0.0, max=1.0, help="Class-wise NMS above this IoU.")] = 0.5,
    max_garments: Annotated[int, typer.Option("--max-garments", min=1, help="Garments kept per image.")] = 10,
    margin: Annotated[
        float, typer.Option("--margin", min=0.0, max=10.0, help="Context around each box before cropping (fraction).")
    ] = 0.0,
    trust_checkpoint: TrustCheckpointOpt = False,
) -> None:
    """Bundle DETECTOR and STAGE2 into one safetensors file that `vestis predict`, `export` and `serve` take."""
    from vestis.inference.pipeline_format import PipelineSettings, bundle_pipeline, load_pipeline_file

    settings = PipelineSettings(min_score=min_score, nms_iou=nms_iou, max_garments=max_garments, margin=margin)
    path = bundle_pipeline(detector, stage2, out, settings, trust_checkpoint=trust_checkpoint)
    bundle = load_pipeline_file(path)
    size = path.stat().st_size / 2**20
    echo(f"wrote {path} ({size:.1f} MiB), fingerprint {bundle.fingerprint}")
