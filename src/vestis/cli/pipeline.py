"""``vestis pipeline``: bundle a detector and a stage-2 checkpoint into one outfit pipeline file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vestis.cli._app import TrustCheckpointOpt, command, echo


def recorded_crop_margin(stage2: Path, *, trust_checkpoint: bool = False) -> tuple[float, str]:
    """The crop margin a stage-2 checkpoint records (``metrics.crops.margin``), and where it came from.

    Stage 2 must see crops cut as at training time: the pipeline's margin is the one its training crops had
    (``vestis crops --margin``, stored in ``crops.json``). A checkpoint that records none gives 0.

    Raises:
        VestisError: an unreadable checkpoint, or a recorded margin that is not a number in ``[0, 10]``.
    """
    import math

    from vestis.errors import VestisError
    from vestis.train.checkpoint import load_checkpoint

    state = load_checkpoint(stage2, trust=trust_checkpoint)
    metrics = state.get("metrics")
    crops = metrics.get("crops") if isinstance(metrics, dict) else None
    value = crops.get("margin") if isinstance(crops, dict) else None
    if value is None:
        return 0.0, f"{stage2} records no crop margin"
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= 10
    ):
        raise VestisError(f"{stage2}: metrics.crops.margin: expected a number in [0, 10], got {value!r}")
    return float(value), f"recorded by {stage2}"


@command("pipeline")
def pipeline_cmd(
    detector: Annotated[Path, typer.Argument(help="The detector checkpoint (vestis train --task detect).")],
    stage2: Annotated[Path, typer.Argument(help="The stage-2 checkpoint (vestis train --task stage2).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The pipeline file to write (e.g. outfit.vestis).")],
    min_score: Annotated[
        float, typer.Option("--min-score", min=0.0, max=1.0, help="Drop detections scoring below this.")
    ] = 0.3,
    nms_iou: Annotated[float, typer.Option("--nms-iou", min=0.0, max=1.0, help="NMS above this IoU.")] = 0.5,
    max_garments: Annotated[int, typer.Option("--max-garments", min=1, help="Garments kept per image.")] = 10,
    margin: Annotated[
        float | None,
        typer.Option(
            "--margin",
            min=0.0,
            max=10.0,
            help="Context around each box before cropping, as a fraction of its size (default: the crop margin the "
            "stage-2 checkpoint records, metrics.crops.margin, else 0). Give the --margin its crops were cut with.",
        ),
    ] = None,
    trust_checkpoint: TrustCheckpointOpt = False,
    one_type: Annotated[
        bool,
        typer.Option(
            "--one-type-per-garment/--per-type-nms",
            help="NMS across object types too, a garment having one type (default), or class-wise only.",
        ),
    ] = True,
) -> None:
    """Bundle DETECTOR and STAGE2 into one safetensors file that `vestis predict`, `export` and `serve` take."""
    from vestis.inference.pipeline_format import PipelineSettings, bundle_pipeline, load_pipeline_file

    if margin is None:
        margin, source = recorded_crop_margin(stage2, trust_checkpoint=trust_checkpoint)
        echo(f"crop margin {margin:g} ({source}; --margin overrides it)")
    settings = PipelineSettings(
        min_score=min_score, nms_iou=nms_iou, max_garments=max_garments, margin=margin, one_type_per_garment=one_type
    )
    path = bundle_pipeline(detector, stage2, out, settings, trust_checkpoint=trust_checkpoint)
    bundle = load_pipeline_file(path)
    size = path.stat().st_size / 2**20
    echo(f"wrote {path} ({size:.1f} MiB), fingerprint {bundle.fingerprint}")
