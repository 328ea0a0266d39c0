"""``vestis crops``: stage-2 training crops at a detector's boxes, labelled from the matching ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vestis.cli._app import ProgressOpt, TrustCheckpointOpt, command, echo

__all__ = ["crops_cmd"]


@command("crops")
def crops_cmd(
    detector: Annotated[Path, typer.Argument(help="A detector checkpoint (vestis train --task detect).")],
    annotations: Annotated[
        list[Path],
        typer.Argument(help="COCO annotations JSON(s) whose boxes carry attributes (vestis synth --scenes)."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: images/, manifest.csv, taxonomy.yaml.")],
    taxonomy: Annotated[Path, typer.Option("--taxonomy", "-t", help="Taxonomy YAML of the annotations' attributes.")],
    category: Annotated[
        str | None,
        typer.Option("--category", help="The crops' category attribute (default: the taxonomy's category_attribute)."),
    ] = None,
    iou: Annotated[
        float, typer.Option("--iou", min=0.0, max=1.0, help="Least IoU of a predicted box with its ground truth.")
    ] = 0.5,
    min_score: Annotated[
        float, typer.Option("--min-score", min=0.0, max=1.0, help="Least detector score of a cropped box.")
    ] = 0.3,
    nms_iou: Annotated[
        float, typer.Option("--nms-iou", min=0.0, max=1.0, help="Class-wise NMS overlap; 1 keeps every box.")
    ] = 0.5,
    margin: Annotated[
        float, typer.Option("--margin", min=0.0, help="Context around each box, as a fraction of its size.")
    ] = 0.0,
    split_from_path: Annotated[
        bool,
        typer.Option(
            "--split-from-path/--no-split-from-path",
            help="Take the split from the annotation file's folder when it is train, val or test (default: on).",
        ),
    ] = True,
    split: Annotated[
        str | None,
        typer.Option("--split", help="Split of the other files' crops: train, val or test (default: none, empty)."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Scenes per detector call.")] = 8,
    device: Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda when present).")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the crops of an earlier run in --out.")
    ] = False,
    progress: ProgressOpt = True,
    trust_checkpoint: TrustCheckpointOpt = False,
) -> None:
    """Crop every predicted box that matches a ground-truth box, labelled with that box's attributes."""
    from vestis.cli._progress import StepProgress
    from vestis.data.crop_manifest import build_crops
    from vestis.inference.detector import Detector

    det = Detector.from_checkpoint(detector, device=device, trust_checkpoint=trust_checkpoint)
    with StepProgress(progress, "cropping", "scenes", every=20) as bar:
        res = build_crops(
            det, annotations, out, taxonomy=taxonomy, category=category, iou=iou, min_score=min_score,
            nms_iou=nms_iou, margin=margin, split_from_path=split_from_path, split=split, batch_size=batch_size,
            overwrite=overwrite, progress=bar,
        )  # fmt: skip
    s = res.summary
    echo(f"{s['scenes']} scenes: {s['predictions']} predicted boxes, {s['matched']} matched "
         f"({s['matched_same_class']} of the same class), {s['unmatched_predictions']} unmatched; "
         f"{s['missed_gt']} of {s['gt_boxes']} ground-truth boxes missed")  # fmt: skip
    if not s["matched"]:
        echo(f"note: no predicted box matched a ground-truth box at IoU >= {iou:g}; the manifest is empty")
    if s["splits"]:
        echo("crops per split: " + ", ".join(f"{k} {v}" for k, v in s["splits"].items()))
    if s["labels_left_out"]:
        left = ", ".join(f"{k} {v}" for k, v in s["labels_left_out"].items())
        echo(f"note: labels left out as they would not validate against the taxonomy: {left} (see {res.summary_path})")
    if s["object_types_unknown"]:
        left = ", ".join(f"{k} {v}" for k, v in s["object_types_unknown"].items())
        echo(f"warning: crops of detector classes that are not in the default model.object_types: {left}; a stage-2 "
             "model reads them as an unknown object type unless its model.object_types lists them")  # fmt: skip
    echo(f"crops cut with --margin {margin:g}: give `vestis pipeline` the same --margin (stage 2 must see crops "
         "cut as in training)")  # fmt: skip
    echo(f"manifest: {res.manifest}")
    echo(f"taxonomy: {res.taxonomy}")
