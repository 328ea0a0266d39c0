"""End-to-end catalog tagging on the real product photos against its two ceilings, decoding and the model, in images/s.

Runs ``vestis predict``'s library path (:func:`vestis.inference.tagging.tag_catalog`) on the first ``--limit``
images of ``../shared/data/fashion-product/images`` (224 x 224 studio JPEGs), once per backend (ONNX Runtime fp32,
PyTorch eager), into a temporary JSONL file (written and fsync-ed batch by batch, as in real runs). In the same run
it measures the two stages alone: decoding (:func:`~vestis.inference.items.decoded_stacks`, the pipeline's own
worker processes) and the model (the same batches, pre-decoded, through the same predictor and threads), and
prints end-to-end / min(decode-only, model-only) against the 80 % target. Workers and threads default to the
``auto`` split ``vestis predict`` uses (:func:`~vestis.inference.items.auto_threads`). The model is the ``default``
preset's architecture with random weights: throughput does not depend on the weights, and no trained model is
needed. Skips with a message when the images are absent.

    python bench/predict.py [--limit 1000] [--workers auto] [--threads auto] [--batch-size 32] [--no-write]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from _common import SHARED_DATA, write_section  # bench/ is on sys.path when this file is run as a script
from vestis.config import load_config
from vestis.data.synthetic import synthetic_taxonomy
from vestis.inference.export import export_onnx
from vestis.inference.items import available_cores, decoded_stacks, resolve_split
from vestis.inference.predictor import Predictor
from vestis.inference.tagging import collect_inputs, tag_catalog
from vestis.models import create_model
from vestis.train.checkpoint import save_checkpoint

IMAGES = SHARED_DATA / "fashion-product" / "images"
TARGET = 0.8  # end to end, as a share of the slower stage alone


def _limit(name: str, e2e: float, decode: float, model: float, workers: int) -> str:
    """One sentence on what limits the end-to-end rate of ``name``."""
    stage, other = ("the model", "decoding") if model <= decode else ("decoding", "the model")
    ratio = e2e / min(decode, model)
    if workers == 0:  # decoding between batches: the stages add up
        serial = 1 / (1 / decode + 1 / model)
        return (
            f"{name}: {stage} limits ({min(decode, model):.0f} images/s alone, {other} {max(decode, model):.0f}); "
            f"decoding runs between the model's batches (0 workers), so the two add up: {serial:.0f} images/s "
            f"expected from the stages alone, {e2e:.0f} measured ({ratio:.0%} of {stage} alone); rows and the "
            "journal are written by their own thread meanwhile."
        )
    if ratio >= TARGET:
        return (
            f"{name}: {stage} limits ({min(decode, model):.0f} images/s alone, {other} {max(decode, model):.0f}); "
            f"end to end keeps {ratio:.0%} of it, the rest is rows, the journal and the hand-over between stages."
        )
    return (
        f"{name}: end to end reaches only {ratio:.0%} of {stage} alone: the stages share the cores (decoding "
        f"and row writing take CPU time from the model's threads), or the machine was busy."
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=1000, help="images tagged per backend (default: 1000)")
    ap.add_argument("--image-size", type=int, default=224, help="model input side in pixels (default: 224)")
    ap.add_argument("--batch-size", type=int, default=32, help="images per model call (default: 32)")
    ap.add_argument("--workers", default="auto", help="decoding processes, or auto (default: auto)")
    ap.add_argument("--threads", default="auto", help="intra-op threads of the model, or auto (default: auto)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args(argv)
    if not IMAGES.is_dir():
        print(f"skipped: {IMAGES} not found (../shared/data beside the checkout)")
        return
    workers, threads = resolve_split(args.workers, args.threads)
    cores = available_cores()
    print(f"{cores} core(s): {workers} decoding worker(s), {threads} model thread(s)")

    items = collect_inputs([IMAGES])[: args.limit]
    torch.manual_seed(0)
    cfg = load_config("default", [f"data.image_size={args.image_size}"])
    taxonomy = synthetic_taxonomy()
    rows = []
    with tempfile.TemporaryDirectory(prefix="vestis-bench-") as tmp:
        ckpt = save_checkpoint(
            Path(tmp) / "default.ckpt", model=create_model(cfg.model, taxonomy), config=cfg, taxonomy=taxonomy
        )
        onnx_path = export_onnx(ckpt, Path(tmp) / "fp32.onnx", check_images=0).path

        t0 = time.perf_counter()
        batches, failed = [], 0
        for its, pixels, ok, _ in decoded_stacks(
            items, args.image_size, cfg.data.pad_value, cfg.data.max_pixels, args.batch_size, workers
        ):
            failed += len(its) - len(ok)
            if pixels is not None:
                batches.append(pixels.copy())  # out of the worker's shared memory, to keep
        decode_ips = len(items) / (time.perf_counter() - t0)
        print(f"decode only: {decode_ips:.1f} img/s with {workers} worker(s) ({failed} unreadable)")

        for name, path in (("ONNX Runtime fp32", onnx_path), ("PyTorch eager", ckpt)):
            predictor = Predictor.from_path(path, device="cpu", threads=threads)
            predictor.predict_arrays(batches[0])  # warm-up
            t0 = time.perf_counter()
            for b in batches:
                predictor.predict_arrays(b)
            model_ips = sum(len(b) for b in batches) / (time.perf_counter() - t0)
            out = Path(tmp) / f"{path.stem}.jsonl"
            r = tag_catalog(predictor, items, out, batch_size=args.batch_size, workers=workers)
            assert r.predicted + r.errors == len(items) and sum(1 for _ in out.open()) == len(items)
            ratio = r.images_per_s / min(decode_ips, model_ips)
            rows.append((name, r.predicted, r.errors, model_ips, r.images_per_s, ratio))
            print(
                f"{name}: model only {model_ips:.1f} img/s; end to end {r.images_per_s:.1f} img/s "
                f"({r.predicted} predicted, {r.errors} errors, {r.seconds:.1f} s): {ratio:.0%} of the slower stage "
                f"({'meets' if ratio >= TARGET else 'misses'} the {TARGET:.0%} target)"
            )

    lines = [
        f"{len(items)} photos of `fashion-product/images` (224 x 224 JPEG) tagged end to end with "
        f"`tag_catalog` (what `vestis predict` runs) on {cores} core(s), with the automatic split: decode + "
        f"letterbox to {args.image_size} px in {workers} DataLoader worker process(es), batches of "
        f"{args.batch_size} through the model ({threads} intra-op thread(s)), rows appended to JSONL by a writer "
        f"thread with one fsync per batch. Model: `default` preset ({cfg.model.name} on {cfg.model.backbone}) "
        "with random weights: throughput does not depend on the weights. Decode only: the same workers, the "
        "batches kept; model only: those batches through the same predictor and threads.",
        "",
        f"Decoding and letterboxing alone: {decode_ips:.1f} images/s.",
        "",
        "| backend | images | errors | model only, images/s | end to end, images/s | end to end / slower stage |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {n} | {p} | {e} | {m:.1f} | {ips:.1f} | {q:.0%} |" for n, p, e, m, ips, q in rows],
        "",
        f"Target: end to end at least {TARGET:.0%} of min(decode only, model only), measured in the same run.",
        "",
        *[f"- {_limit(n, ips, decode_ips, m, workers)}" for n, _, _, m, ips, _ in rows],
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        print(f"wrote {write_section('predict', 'Catalog tagging end to end (vestis predict)', body)}")


if __name__ == "__main__":
    main()
