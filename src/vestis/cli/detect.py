"""``vestis detect``: garment boxes of images as COCO results, and COCO metrics against ground truth."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from vestis.cli._app import ProgressOpt, TrustCheckpointOpt, command, echo
from vestis.errors import VestisError

__all__ = ["categories_path", "detect_cmd", "metrics_path"]


def metrics_path(out: Path) -> Path:
    """Where the metrics of ``--out`` go: ``boxes.json`` -> ``boxes.metrics.json`` beside it."""
    stem = out.stem if out.suffix.lower() == ".json" else out.name
    return out.with_name(f"{stem}.metrics.json")


def categories_path(out: Path) -> Path:
    """Where the categories of the results of ``--out`` go: ``boxes.json`` -> ``boxes.categories.json``."""
    stem = out.stem if out.suffix.lower() == ".json" else out.name
    return out.with_name(f"{stem}.categories.json")


def _images_path(out: Path) -> Path:
    stem = out.stem if out.suffix.lower() == ".json" else out.name
    return out.with_name(f"{stem}.images.json")


def _finite(x: Any) -> Any:
    """NaN (a metric with nothing to score) as JSON null."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    return None if isinstance(x, float) and math.isnan(x) else x


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.4f}"


@command("detect")
def detect_cmd(
    model: Annotated[Path, typer.Argument(help="A detector checkpoint (vestis train --task detect).")],
    images: Annotated[
        list[Path],
        typer.Argument(help="Image files and folders, or one COCO annotations JSON (its images, with their ids)."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output COCO results JSON (a list of boxes).")],
    gt: Annotated[
        Path | None,
        typer.Option(
            "--gt",
            help="COCO annotations to compute mAP / AP50 / AP75 / AR@100 against, written to OUT.metrics.json "
            "(default: none; an annotations JSON given as IMAGES is its own ground truth).",
        ),
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option(
            "--min-score",
            min=0.0,
            max=1.0,
            help="Lowest score kept (default: 0.3, or 0 when evaluating, as mAP must see every detection).",
        ),
    ] = None,
    nms_iou: Annotated[
        float,
        typer.Option("--nms-iou", min=0.0, max=1.0, help="Class-wise NMS overlap; 1 keeps every box."),
    ] = 0.5,
    max_detections: Annotated[
        int, typer.Option("--max-detections", min=1, help="Most boxes per image (COCO's AR counts 100).")
    ] = 100,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per model call.")] = 8,
    device: Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda when present).")] = None,
    detector_ids: Annotated[
        bool,
        typer.Option(
            "--detector-ids",
            help="Write category_id = the detector's class index + 1 even when the images come from an annotations "
            "JSON (default: off: the JSON's category ids, matched to the detector's classes by name).",
        ),
    ] = False,
    progress: ProgressOpt = True,
    trust_checkpoint: TrustCheckpointOpt = False,
) -> None:
    """Detect the garments of every image and write their boxes in the COCO results format.

    The results' category_id is the id of the detected class in the annotations JSON they refer to (IMAGES or
    --gt), matched by name; a JSON whose categories are not the detector's classes one to one (e.g. DeepFashion2's,
    several per object type) is refused unless --detector-ids. Images given as files get the detector's ids (class
    index + 1). The ids used are always listed in OUT.categories.json ([{"id", "name"}]).
    """
    from vestis.cli._progress import StepProgress
    from vestis.data.detection import read_coco_detection
    from vestis.inference.detector import Detector, coco_category_ids
    from vestis.inference.items import collect_inputs
    from vestis.io import atomic_write_text

    jsons = [p for p in images if p.suffix.lower() == ".json"]
    if jsons and len(images) > 1:
        raise VestisError(f"{jsons[0]}: an annotations JSON must be the only IMAGES argument")
    detector = Detector.from_checkpoint(model, device=device, trust_checkpoint=trust_checkpoint)
    truth_file = gt if gt is not None else (jsons[0] if jsons else None)
    truth = read_coco_detection(truth_file, classes=detector.classes)[0] if truth_file is not None else None
    # inputs: (image id, path)
    if jsons:
        source = read_coco_detection(jsons[0], classes=detector.classes)[0] if gt is not None else truth or []
        inputs = [(im.image_id, im.path) for im in source]
    else:
        inputs = [(i + 1, it.path) for i, it in enumerate(collect_inputs(images))]
    paired = []
    if truth is not None:
        by_path = {im.path.resolve(): im for im in truth}
        for _, path in inputs:
            im = by_path.get(path.resolve())
            if im is None:
                raise VestisError(f"{path}: not an image of the ground truth {truth_file}")
            paired.append(im)
        inputs = [(im.image_id, im.path) for im in paired]
    min_score = (0.0 if truth is not None else 0.3) if min_score is None else min_score
    with StepProgress(progress, "detecting", "images") as bar:
        dets = detector.detect(
            [p for _, p in inputs], min_score=min_score, nms_iou=nms_iou, max_detections=max_detections,
            batch_size=batch_size, progress=bar,
        )  # fmt: skip
    ids = list(range(1, len(detector.classes) + 1))
    if truth_file is not None and not detector_ids:
        ids = coco_category_ids(truth_file, detector.classes)
    results = [entry for (image_id, _), d in zip(inputs, dets, strict=True) for entry in d.to_coco(image_id, ids)]
    categories = [{"id": i, "name": c} for i, c in zip(ids, detector.classes, strict=True)]
    atomic_write_text(out, json.dumps(results) + "\n")
    atomic_write_text(categories_path(out), json.dumps(categories, indent=1) + "\n")
    echo(f"{len(results)} boxes in {len(dets)} images (min score {min_score:g}); wrote {out}")
    echo(f"category ids: {categories_path(out)}")
    if not jsons:
        listing = {
            "images": [
                {"id": image_id, "file_name": str(path), "width": d.width, "height": d.height}
                for (image_id, path), d in zip(inputs, dets, strict=True)
            ],
            "categories": categories,
        }
        atomic_write_text(_images_path(out), json.dumps(listing, indent=1) + "\n")
        echo(f"image ids: {_images_path(out)}")
    if truth is None:
        return
    from vestis.eval.detection import coco_detection_metrics

    for im, d in zip(paired, dets, strict=True):
        if (d.width, d.height) != (im.width, im.height):
            raise VestisError(f"{im.path}: image is {d.width}x{d.height}, {truth_file} says {im.width}x{im.height}")
    metrics = coco_detection_metrics(
        [d.to_metrics_input() for d in dets],
        [{"boxes": im.boxes, "labels": im.labels} for im in paired],
        detector.classes,
    )
    left_out = len(truth) - len(paired)
    report = {
        **_finite(metrics),
        "images": len(paired),
        "ground_truth_images_left_out": left_out,
        "detections": len(results),
        "ground_truth": str(truth_file),
        "model": detector.fingerprint,
        "min_score": min_score,
        "nms_iou": nms_iou,
        "max_detections": max_detections,
        "categories": categories,
    }
    mpath = atomic_write_text(metrics_path(out), json.dumps(report, indent=1) + "\n")
    echo(f"mAP {_fmt(metrics['map'])}  AP50 {_fmt(metrics['ap50'])}  AP75 {_fmt(metrics['ap75'])}  "
         f"AR@100 {_fmt(metrics['ar100'])}  ({len(paired)} images)")  # fmt: skip
    width = max(len(c) for c in metrics["per_class_ap"])
    for c, ap in metrics["per_class_ap"].items():
        echo(f"  {c:<{width}}  AP {_fmt(ap)}")
    if left_out:
        echo(f"note: {left_out} image(s) of {truth_file} were not given and are not scored")
    echo(f"metrics: {mpath}")
