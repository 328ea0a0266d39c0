"""End-to-end catalog tagging on the real product photos: decode + letterbox + model + JSONL, in images/s.

Runs ``vestis predict``'s library path (:func:`vestis.inference.tagging.tag_catalog`) on the first
``--limit`` images of ``../shared/data/fashion-product/images`` (224 x 224 studio JPEGs), once per
backend, into a temporary JSONL file (written and fsync-ed batch by batch, as in real runs). A decode-only
pass over the same images gives the ceiling that decoding alone sets. The model is the ``default`` preset's
architecture with random weights: throughput does not depend on the weights, and no trained model is
needed. Skips with a message when the images are absent.

    python bench/predict.py [--limit 1000] [--workers 1] [--threads 1] [--batch-size 32] [--no-write]
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
from vestis.inference.predictor import Predictor
from vestis.inference.tagging import collect_inputs, decode_image, tag_catalog
from vestis.models import create_model
from vestis.train.checkpoint import save_checkpoint

IMAGES = SHARED_DATA / "fashion-product" / "images"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=1000, help="images tagged per backend")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1, help="decoding processes")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of the model")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args(argv)
    if not IMAGES.is_dir():
        print(f"skipped: {IMAGES} not found (../shared/data beside the checkout)")
        return

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
        failed = sum(decode_image(it.path, args.image_size, cfg.data.pad_value, cfg.data.max_pixels)[1] is not None
                     for it in items)  # fmt: skip
        decode_ips = len(items) / (time.perf_counter() - t0)
        print(f"decode only: {decode_ips:.1f} img/s in one process ({failed} unreadable)")

        for name, path in (("ONNX Runtime fp32", onnx_path), ("PyTorch eager", ckpt)):
            predictor = Predictor.from_path(path, device="cpu", threads=args.threads)
            out = Path(tmp) / f"{path.stem}.jsonl"
            r = tag_catalog(predictor, items, out, batch_size=args.batch_size, workers=args.workers)
            assert r.predicted + r.errors == len(items) and sum(1 for _ in out.open()) == len(items)
            rows.append((name, r.predicted, r.errors, r.seconds, r.images_per_s))
            print(f"{name}: {r.images_per_s:.1f} img/s ({r.predicted} predicted, {r.errors} errors, {r.seconds:.1f} s)")

    lines = [
        f"{len(items)} photos of `fashion-product/images` (224 x 224 JPEG) tagged end to end with "
        f"`tag_catalog` (what `vestis predict` runs): decode + letterbox to {args.image_size} px in "
        f"{args.workers} DataLoader worker process(es), batches of {args.batch_size} through the model "
        f"({args.threads} intra-op thread(s)), rows appended to JSONL with one fsync per batch. Model: `default` "
        f"preset ({cfg.model.name} on {cfg.model.backbone}) with random weights: throughput does not depend on "
        "the weights.",
        "",
        "| backend | images | errors | seconds | images/s |",
        "|---|---:|---:|---:|---:|",
        *[f"| {n} | {p} | {e} | {s:.1f} | {ips:.1f} |" for n, p, e, s, ips in rows],
        "",
        f"Decoding and letterboxing alone, in one process: {decode_ips:.1f} images/s.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        print(f"wrote {write_section('predict', 'Catalog tagging end to end (vestis predict)', body)}")


if __name__ == "__main__":
    main()
