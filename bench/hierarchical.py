"""The hierarchical two-stage pipeline (paper 001) on this machine: detection, Table 6, end-to-end speed.

Sections (each result is kept in WORK/<section>/...; a rerun skips what is measured, ``--fresh`` starts over):

- ``detection``: CenterNet (preset ``detect``: EfficientNet-Lite0 + FPN, ImageNet weights, last blocks fine-tuned
  with BatchNorm frozen) trained by ``vestis train --task detect`` on
  * synthetic outfit scenes (``vestis synth --scenes``; test scenes drawn with another seed), and
  * composites of real fashion-product photos (``vestis synth --scenes --from``; test-split products only in the
    test scenes),
  scored on the test scenes by pycocotools: mAP@[.5:.95], AP50, AP75, AR@100 and AP per object type.
- ``table6``: the paper's Table 6 shape on the composites: ``vestis crops`` cuts the detector's PREDICTED boxes of
  every split (labels from the matched ground-truth product, IoU >= 0.5), then Baseline STL, STL w/ HLS and
  MTL w/ RNN+VA (preset ``stage2``, same budget each) are trained on the training crops and scored on the test
  crops: category top-1/3/5, attribute recall@3/5 (conventional and MMFashion's), attribute mAP, and the rate of
  attributes predicted for a category they do not apply to; mean over seeds.
- ``speed``: ``vestis predict`` with the bundled pipeline (``vestis pipeline``) on the composite test scenes,
  images/s end to end (decode, detect, crop, stage 2) with the torch and the ONNX runtime.

::

    python bench/hierarchical.py                      # everything (about 2 h on 2 cores)
    python bench/hierarchical.py --sections detection
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED_DATA, fmt, write_section
from transfer import prepare
from vestis.config import load_config
from vestis.data.composites import build_composites
from vestis.data.detection import OBJECT_TYPES, read_coco_detection
from vestis.data.synthetic import generate_catalog
from vestis.eval.detection import coco_detection_metrics
from vestis.io import atomic_write_text
from vestis.train.loop import train

SECTIONS = ("detection", "table6", "speed")
DET_SIZE = 192  # the detector's letterbox side: Lite0 at 192 px trains at ~9 images/s on one core
SCENE_SIZE = 256


def _cores() -> str:
    """The cores this run may use and torch's intra-op threads (a benchmark pinned to one core says so)."""
    import os

    import torch

    return f"{len(os.sched_getaffinity(0))} core(s), {torch.get_num_threads()} torch thread(s)"


def log(msg: str) -> None:
    print(msg, flush=True)


def cached(path: Path, make: Any) -> Any:
    """``path``'s JSON when it exists, else ``make()`` written there (atomically) and returned."""
    if path.is_file():
        return json.loads(path.read_text())
    value = make()
    atomic_write_text(path, json.dumps(value, indent=2))
    return value


# --- data ------------------------------------------------------------------------------------------------------
def synthetic_scenes(work: Path, n_train: int, n_test: int) -> dict[str, Path]:
    """Synthetic outfit scenes: training/validation scenes with seed 0, test scenes with seed 1."""
    out = {}
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        root = work / "data" / f"synthetic-{split}"
        ann = root / "scenes" / "annotations.json"
        if not ann.is_file():
            generate_catalog(root, n=16, size=SCENE_SIZE // 2, seed=seed, scenes=True, scene_count=n)
        out[split] = ann
    return out


def composite_scenes(work: Path, n: int) -> dict[str, Path]:
    """Composites of fashion-product photos, split by product (``vestis synth --scenes --from``)."""
    manifest = prepare("fashion-product", work)
    root = work / "data" / "composites"
    anns = {s: root / "scenes" / s / "annotations.json" for s in ("train", "val", "test")}
    if not all(p.is_file() for p in anns.values()):
        res = build_composites(manifest, root, n=n, size=SCENE_SIZE)
        log(f"composites: {res.scenes} scenes, {res.boxes} boxes")
    return anns


# --- detection -------------------------------------------------------------------------------------------------
def train_detector(work: Path, name: str, data: Path, val: Path | None, epochs: int) -> Path:
    run = work / "detection" / name
    best = run / "best.ckpt"
    if (run / "done.json").is_file():
        return best
    if run.exists():
        shutil.rmtree(run)  # an interrupted run starts again: every row gets the same budget
    over = [f"data.image_size={DET_SIZE}", f"train.epochs={epochs}"]
    if val is None:
        over.append("data.val_fraction=0.1")
    else:
        over.append(f"data.val_data={val}")
    cfg = load_config("detect", over)
    t0 = time.perf_counter()
    result = train(cfg, data, run, progress=False, log=lambda m: log(f"[detect {name}] {m}"))
    done = {"train_seconds": time.perf_counter() - t0, "epochs": len(result.history), "overrides": over,
            "best_epoch": result.best_epoch, "best_val_map": result.best_metric,
            "images_per_s": sum(h["images_per_s"] for h in result.history) / max(1, len(result.history))}  # fmt: skip
    atomic_write_text(run / "done.json", json.dumps(done, indent=2))
    return best


def score_detector(ckpt: Path, test: Path) -> dict[str, Any]:
    """COCO metrics of the detector on a test annotations file, through :class:`vestis.inference.detector.Detector`
    (letterbox, decode, original pixels, every box kept: min score 0)."""
    from vestis.inference.detector import Detector

    images, classes = read_coco_detection(test, classes=OBJECT_TYPES)
    det = Detector.from_checkpoint(ckpt, device="cpu")
    t0 = time.perf_counter()
    found = det.detect([im.path for im in images], min_score=0.0, batch_size=16)
    seconds = time.perf_counter() - t0
    preds = [d.to_metrics_input() for d in found]
    gts = [{"boxes": im.boxes, "labels": im.labels} for im in images]
    m = coco_detection_metrics(preds, gts, classes)
    return {**m, "images": len(images), "boxes": int(sum(len(im.labels) for im in images)),
            "detect_images_per_s": len(images) / seconds}  # fmt: skip


def detection(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    rows = {}
    syn = synthetic_scenes(work, args.synthetic_scenes, max(50, args.synthetic_scenes // 4))
    comp = composite_scenes(work, args.composite_scenes)
    for name, data, val, test in (
        ("synthetic", syn["train"], None, syn["test"]),
        ("composites", comp["train"], comp["val"], comp["test"]),
    ):
        ckpt = train_detector(work, name, data, val, args.det_epochs)
        res = cached(work / "detection" / name / "test_metrics.json", lambda c=ckpt, t=test: score_detector(c, t))
        res["train"] = json.loads((work / "detection" / name / "done.json").read_text())
        rows[name] = res
        log(f"[detect {name}] test mAP {fmt(res['map'])}, AP50 {fmt(res['ap50'])}, AR@100 {fmt(res['ar100'])}")
    return rows


def detection_section(rows: dict[str, Any]) -> str:
    head = (
        "| scenes | test images (boxes) | mAP@[.5:.95] | AP50 | AP75 | AR@100 | "
        + " | ".join(f"AP {t}" for t in OBJECT_TYPES)
        + " | epochs | train min |\n|---|---|---|---|---|---|"
        + "---|" * len(OBJECT_TYPES)
        + "---|---|\n"
    )
    lines = []
    for name, r in rows.items():
        per = " | ".join(fmt(r["per_class_ap"].get(t)) for t in OBJECT_TYPES)
        lines.append(
            f"| {name} | {r['images']} ({r['boxes']}) | {fmt(r['map'])} | {fmt(r['ap50'])} | {fmt(r['ap75'])} | "
            f"{fmt(r['ar100'])} | {per} | {r['train']['epochs']} | {r['train']['train_seconds'] / 60:.0f} |"
        )
    return head + "\n".join(lines)


# --- Table 6 -----------------------------------------------------------------------------------------------------
STAGE2_ROWS = (("Baseline STL", "stl"), ("STL w/ HLS", "stl_hls"), ("MTL w/ RNN+VA", "rnn_va"))
STAGE2_ATTRIBUTES = ("articleType", "baseColour", "season", "usage", "gender")  # category + the attributes
TABLE6_KEYS = (
    ("cat top-1", "category_top1"),
    ("cat top-3", "category_top3"),
    ("cat top-5", "category_top5"),
    ("attr recall@3", "attribute_recall@3"),
    ("attr recall@5", "attribute_recall@5"),
    ("attr recall@3 (MMFashion)", "attribute_recall_mmfashion@3"),
    ("attr mAP", "attribute_map"),
    ("incompatible", "incompatible_rate"),
)


def crops(work: Path, args: argparse.Namespace) -> Path:
    """``vestis crops`` of the composites' three splits at the composite detector's predicted boxes."""
    import dataclasses

    from vestis.data.crop_manifest import build_crops
    from vestis.data.taxonomy import load_taxonomy, save_taxonomy
    from vestis.inference.detector import Detector

    out = work / "table6" / "crops"
    if (out / "crops.json").is_file():
        return out / "manifest.csv"
    anns = composite_scenes(work, args.composite_scenes)
    tax = load_taxonomy(work / "data" / "taxonomy.yaml")
    # masterCategory and subCategory restate the category's place in the hierarchy (the object type's source)
    keep = dataclasses.replace(tax, attributes=tuple(a for a in tax if a.name in STAGE2_ATTRIBUTES))
    tax_path = save_taxonomy(keep, work / "table6" / "taxonomy.yaml")
    det = Detector.from_checkpoint(work / "detection" / "composites" / "best.ckpt", device="cpu")
    res = build_crops(det, [anns["train"], anns["val"], anns["test"]], out, taxonomy=tax_path,
                      min_score=args.crop_score, overwrite=True)  # fmt: skip
    log(f"crops: {res}")
    return out / "manifest.csv"


def train_stage2(work: Path, manifest: Path, model: str, seed: int, epochs: int) -> dict[str, Any]:
    from vestis.eval.run import evaluate_checkpoint

    run = work / "table6" / f"{model}-seed{seed}"

    def make() -> dict[str, Any]:
        if run.exists():
            shutil.rmtree(run)
        over = [f"model.name={model}", f"train.seed={seed}", f"train.epochs={epochs}"]
        t0 = time.perf_counter()
        result = train(load_config("stage2", over), manifest, run, progress=False,
                       log=lambda m: log(f"[{model} seed {seed}] {m}"))  # fmt: skip
        seconds = time.perf_counter() - t0
        ev = evaluate_checkpoint(result.best, manifest, run / "test", split="test")
        return {"overrides": over, "train_seconds": seconds, "best_epoch": result.best_epoch,
                "stage2": ev.metrics["stage2"], "reference": ev.metrics["reference"], "num_test": ev.num_items,
                "images_per_s": _rate(result.history)}  # fmt: skip

    return cached(run / "result.json", make)


def table6(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    manifest = crops(work, args)
    rows: dict[str, Any] = {}
    for label, model in STAGE2_ROWS:
        runs = [train_stage2(work, manifest, model, seed, args.stage2_epochs) for seed in range(args.seeds)]
        rows[label] = runs
        log(f"[table6] {label}: cat top-1 {[fmt(r['stage2']['category_top1']) for r in runs]}")
    return rows


def _rate(history: list[dict[str, Any]]) -> float:
    return sum(h["images_per_s"] for h in history) / max(1, len(history))


def _mean(runs: list[dict[str, Any]], part: str, key: str) -> str:
    vals = [r[part][key] for r in runs if r[part].get(key) is not None]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return fmt(vals[0])
    return f"{sum(vals) / len(vals):.3f} ± {(max(vals) - min(vals)) / 2:.3f}"


def table6_section(rows: dict[str, Any], work: Path) -> str:
    info = json.loads((work / "table6" / "crops" / "crops.json").read_text())
    head = (
        "| model | " + " | ".join(k for k, _ in TABLE6_KEYS) + " | train min |\n|---|" + "---|" * (len(TABLE6_KEYS) + 1)
    )
    first = next(iter(rows.values()))
    lines = [
        head,
        "| majority reference | " + " | ".join(_mean(first, "reference", k) for _, k in TABLE6_KEYS) + " | |",
    ]
    for label, runs in rows.items():
        minutes = sum(r["train_seconds"] for r in runs) / len(runs) / 60
        lines.append(
            f"| {label} | " + " | ".join(_mean(runs, "stage2", k) for _, k in TABLE6_KEYS) + f" | {minutes:.0f} |"
        )
    c = info
    crops_line = (
        f"Crops: {c['matched']} predicted boxes of {c['scenes']} scenes matched a product ({c['matched_same_class']} "
        f"with the right object type) of {c['gt_boxes']}; {c['unmatched_predictions']} predictions unmatched; "
        f"per split {c['splits']}."
    )
    return crops_line + "\n\n" + "\n".join(lines)


# --- speed ---------------------------------------------------------------------------------------------------------
def speed(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``vestis predict`` with the outfit pipeline (composite detector + STL w/ HLS, seed 0) on the composite test
    scenes, torch and ONNX Runtime; images/s of the tagging run (decode included, start-up excluded)."""
    import os

    from vestis.inference.outfit_tagging import tag_outfits
    from vestis.inference.pipeline_export import export_pipeline_onnx
    from vestis.inference.pipeline_format import bundle_pipeline

    folder = work / "speed"
    folder.mkdir(parents=True, exist_ok=True)
    bundle = bundle_pipeline(
        work / "detection" / "composites" / "best.ckpt", work / "table6" / "stl_hls-seed0" / "best.ckpt",
        folder / "outfit.vestis",
    )  # fmt: skip
    onnx_dir = folder / "onnx"
    if onnx_dir.exists():
        shutil.rmtree(onnx_dir)
    export_pipeline_onnx(bundle, onnx_dir)
    images = composite_scenes(work, args.composite_scenes)["test"].parent / "images"
    n = len(list(images.iterdir()))
    rows: dict[str, Any] = {"cores": len(os.sched_getaffinity(0)), "images": n}
    for name, model in (("torch", bundle), ("onnx", onnx_dir)):
        out = folder / f"rows-{name}.jsonl"
        best = None
        for _ in range(args.speed_runs):  # the best of a few runs: the machine is shared
            r = tag_outfits(model, [images], out, batch_size=8, workers=1, restart=True)
            best = r if best is None or r.seconds < best.seconds else best
        garments = [len(json.loads(line)["garments"]) for line in out.read_text().splitlines() if line.strip()]
        rows[name] = {"images_per_s": best.predicted / best.seconds, "seconds": best.seconds,
                      "garments_per_image": sum(garments) / max(1, len(garments))}  # fmt: skip
        log(f"[speed] {name}: {rows[name]['images_per_s']:.1f} images/s")
    return rows


def speed_section(rows: dict[str, Any]) -> str:
    lines = ["| runtime | images/s | garments per image |", "|---|---|---|"]
    for name in ("torch", "onnx"):
        r = rows[name]
        lines.append(f"| {name} | {r['images_per_s']:.1f} | {r['garments_per_image']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/vestis-bench-hierarchical"))
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--det-epochs", type=int, default=12)
    ap.add_argument("--synthetic-scenes", type=int, default=400)
    ap.add_argument("--composite-scenes", type=int, default=1000)
    ap.add_argument("--stage2-epochs", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--crop-score", type=float, default=0.3, help="least detector score of a cropped box")
    ap.add_argument("--speed-runs", type=int, default=3)
    ap.add_argument("--fresh", action="store_true", help="delete WORK first")
    args = ap.parse_args()
    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    if "detection" in wanted:
        if not (SHARED_DATA / "fashion-product").is_dir():
            sys.exit(f"{SHARED_DATA / 'fashion-product'} is absent: the composites need it")
        rows = detection(args.work, args)
        body = (
            f"CenterNet (preset `detect`: EfficientNet-Lite0 + FPN, ImageNet weights, last 4 blocks fine-tuned, "
            f"BatchNorm frozen) at {DET_SIZE} px, {args.det_epochs} epochs, best epoch by validation mAP; "
            f"{SCENE_SIZE} px scenes; {_cores()}. Scored on test scenes no run saw, by pycocotools, every box "
            "kept.\n\n" + detection_section(rows)
        )
        write_section("hierarchical-detection", "Hierarchical pipeline: garment detection (stage 1)", body)
    if "table6" in wanted:
        rows = table6(args.work, args)
        body = (
            f"The paper's Table 6 shape on crops of the composites' PREDICTED boxes (composite detector above, score "
            f">= {args.crop_score}, matched to a product at IoU >= 0.5; test crops come from test scenes only). "
            f"Category: articleType; attributes: baseColour, season, usage, gender, flattened into one multi-label "
            f"output. Preset `stage2` (EfficientNet-Lite0, ImageNet weights, last 2 blocks fine-tuned, BatchNorm "
            f"frozen, 128 px), {args.stage2_epochs} epochs each, best epoch by validation stage2_score; mean ± half "
            f"the range over {args.seeds} seed(s); {_cores()}.\n\n" + table6_section(rows, args.work)
        )
        write_section("hierarchical-table6", "Hierarchical pipeline: Table 6 (stage 2 on predicted crops)", body)
    if "speed" in wanted:
        rows = speed(args.work, args)
        body = (
            f"`vestis predict outfit.vestis` (the composite detector + STL w/ HLS) on the {rows['images']} composite "
            f"test scenes ({SCENE_SIZE} px JPEG), {rows['cores']} core(s), batches of 8, one decode worker; images/s "
            "of the tagging run (decode, detect, crop, stage 2, JSONL), best of "
            f"{args.speed_runs} runs.\n\n" + speed_section(rows)
        )
        write_section("hierarchical-speed", "Hierarchical pipeline: end-to-end speed", body)


if __name__ == "__main__":
    main()
