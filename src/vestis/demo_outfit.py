"""The outfit part of ``make demo``: the hierarchical two-stage pipeline on synthetic outfit scenes.

synth scenes -> train the garment detector (``--task detect``) -> crop its predicted boxes (``vestis crops``) ->
train a stage-2 model on the crops (``--task stage2``, STL w/ HLS) -> bundle both (``vestis pipeline``) -> the
garments of two outfit photos no model saw. Every step writes under ``OUT/outfit``; a rerun reuses what is done.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from vestis.cli._app import echo
from vestis.config import load_config
from vestis.data.synthetic import generate_catalog
from vestis.train.loop import train

__all__ = ["run_outfit_demo"]

SCENES = 320  # training/validation scenes (256 px)
TEST_SCENES = 2
DETECTOR_EPOCHS = 8
STAGE2_EPOCHS = 6
# A detector trained for a few CPU epochs is under-confident: its best peaks on these scenes score about 0.15-0.3.
# The training crops are every predicted box that matches a garment (IoU >= 0.5; the others are dropped anyway),
# and the demo's pipeline keeps boxes from GARMENT_SCORE (the pipeline's default is 0.3).
CROP_SCORE = 0.0
GARMENT_SCORE = 0.1


def _scenes(root: Path, count: int, seed: int) -> Path:
    stamp = {"scene_count": count, "seed": seed}
    ann = root / "scenes" / "annotations.json"
    if ann.is_file() and (root / "demo.json").is_file() and json.loads((root / "demo.json").read_text()) == stamp:
        return ann
    if root.exists():
        shutil.rmtree(root)
    generate_catalog(root, n=8, size=128, seed=seed, scenes=True, scene_count=count)
    (root / "demo.json").write_text(json.dumps(stamp))
    return ann


def _train(preset: str, overrides: list[str], data: Path, run: Path, **kwargs: Any) -> Path:
    if (run / "done").is_file():
        return run / "best.ckpt"
    resume = (run / "last.ckpt").is_file()
    result = train(load_config(preset, overrides), data, run, resume=resume, log=lambda m: echo(f"    {m}"), **kwargs)
    (run / "done").write_text("")
    return result.best


def run_outfit_demo(out: Path, *, seed: int = 0, step: int = 7, steps: int = 10) -> dict[str, Path]:
    """Run the outfit steps into ``out``; ``step``/``steps`` number the printed steps."""
    from vestis.data.crop_manifest import build_crops
    from vestis.inference.detector import Detector
    from vestis.inference.pipeline import OutfitPipeline
    from vestis.inference.pipeline_format import PipelineSettings, bundle_pipeline

    echo(f"{step}/{steps} outfits: {SCENES} synthetic outfit scenes with COCO boxes, and {TEST_SCENES} test photos")
    ann = _scenes(out / "scenes", SCENES, seed)
    test = _scenes(out / "test", TEST_SCENES, seed + 1).parent / "images"
    taxonomy = ann.parent.parent / "taxonomy.yaml"

    echo(f"{step + 1}/{steps} train the garment detector: vestis train --task detect --data {ann}")
    detector = _train("detect", ["data.image_size=192", f"train.epochs={DETECTOR_EPOCHS}"], ann, out / "detector")
    echo("    (on real product photos the same preset reaches a test mAP of 0.575: docs/benchmarks.md)")

    crops = out / "crops"
    echo(f"{step + 2}/{steps} crop its predicted boxes (vestis crops) and train STL w/ HLS on them (--task stage2)")
    if not (crops / "crops.json").is_file():
        res = build_crops(
            Detector.from_checkpoint(detector), [ann], crops, taxonomy=taxonomy, min_score=CROP_SCORE, overwrite=True
        )
        c = res.summary
        echo(f"    {c['matched']} crops: predicted boxes matched to {c['gt_boxes']} garments (IoU >= 0.5)")
    over = ["model.name=stl_hls", f"train.epochs={STAGE2_EPOCHS}", "data.image_size=96"]
    stage2 = _train("stage2", over, crops / "manifest.csv", out / "stage2")

    echo(f"{step + 3}/{steps} bundle both (vestis pipeline) and look at two outfit photos no model saw")
    settings = PipelineSettings(min_score=GARMENT_SCORE, max_garments=6)
    bundle = bundle_pipeline(detector, stage2, out / "outfit.vestis", settings)
    echo(f"    vestis pipeline {detector} {stage2} --out {bundle} --min-score {GARMENT_SCORE} --max-garments 6")
    pipe = OutfitPipeline.load(bundle)
    for path, result in zip(sorted(test.iterdir()), pipe.predict(sorted(test.iterdir())), strict=True):
        echo(f"    vestis predict {bundle} {path}: {len(result.garments)} garment(s)")
        for g in result.garments:
            attrs = ", ".join(f"{a}={v[0][0]}" for a, v in g.attributes.items() if v)
            box = ", ".join(f"{x:.0f}" for x in g.box)
            echo(f"      [{box}] {g.object_type} {g.object_score:.2f}: {g.category} {g.category_score:.2f}; {attrs}")
    return {"detector": detector, "stage2": stage2, "pipeline": bundle}
