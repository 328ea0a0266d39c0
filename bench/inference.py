"""Inference speed of the default model: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime int8.

For each backend: images/s at batch 1 and 32, latency p50/p99 at batch 1, and the achieved GFLOP/s as a
fraction of this machine's measured GEMM ceiling at the same thread count (the roofline's compute ceiling). All
backends run the same graph (:class:`vestis.inference.export.InferenceModule`: ``uint8`` input, normalisation,
probabilities and the heat-map) through :class:`vestis.inference.Predictor`.

The FLOPs of one image are counted twice, independently: ``torch.utils.flop_counter.FlopCounterMode`` on the
PyTorch module, and statically from the exported ONNX graph (2 x the multiply-adds of every Conv / Gemm / MatMul,
shapes from ``onnx.shape_inference``, :func:`_common.onnx_flops`); a difference above 5 % is printed as a warning.
The ceiling is the best of several fp32 GEMM sizes, repeats and libraries (PyTorch/MKL, NumPy/OpenBLAS, ONNX
Runtime's MatMul) on the backends' thread count, :func:`_common.gemm_peak`; int8 is compared with ONNX Runtime's
int8 ``MatMulInteger`` ceiling instead. The theoretical fp32 peak from the CPU's vector width and clock is stated
next to it. A fraction above 100 % of the measured ceiling cannot be physical (a wrong count or a ceiling measured
too low), so the benchmark then stops with exit status 1 instead of writing it.

The model is the ``default`` preset's as created (its pretrained trunk, if the preset names one, and untrained
heads) on the synthetic taxonomy: speed does not depend on the weights (the agreement figures of int8 do, see
the note written with the table).
Iterations are bounded by count and by time, so a run takes a few minutes; a smoke run::

    python bench/inference.py --iters 20 --batches 1 --seconds 3 --peak-sizes 1024 --no-write

    python bench/inference.py [--image-size 224] [--threads 1] [--no-write]
    python bench/inference.py --backbone resnet50 --iters 30 --batches 2   # its own section
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import (
    gemm_peak,
    onnx_flops,
    onnx_time_profile,
    theoretical_peak,
    write_section,
)  # bench/ is on sys.path when this file is run as a script
from vestis.config import load_config
from vestis.data.synthetic import synthetic_taxonomy
from vestis.inference.export import export_onnx, load_sample_images
from vestis.inference.predictor import Predictor
from vestis.models import create_model
from vestis.train.checkpoint import save_checkpoint


def _timings(fn: Callable[[], object], iters: int, max_seconds: float, warmup: int = 3) -> list[float]:
    """Seconds per call of ``fn``: ``warmup`` calls discarded, then up to ``iters`` calls or ``max_seconds``."""
    for _ in range(warmup):
        fn()
    out: list[float] = []
    start = time.perf_counter()
    while len(out) < iters and time.perf_counter() - start < max_seconds:
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def forward_flops(predictor: Predictor) -> int:
    """FLOPs of one image through the PyTorch graph (convolutions and matrix products, 2 per multiply-add)."""
    x = torch.zeros((1, 3, predictor.image_size, predictor.image_size), dtype=torch.uint8)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        predictor.module(x)
    return int(counter.get_total_flops())


def _limits_sentence(rows: list[tuple], counts: dict[str, int], shares: dict[str, float]) -> str:
    """What limits ONNX Runtime fp32 now: where its node time goes against where the FLOPs are."""
    fp32 = next(r for r in rows if r[0] == "ONNX Runtime fp32")
    dw_flops = counts["Conv depthwise"] / max(counts["total"], 1)
    dense_flops = 1.0 - dw_flops
    dense_time = shares.get("conv", 0.0) + shares.get("matmul", 0.0)
    return (
        f"What limits it now: ONNX Runtime fp32 reaches {fp32[6]:.0%} of the GEMM ceiling. Its own profiler "
        f"(batch 32, the same threads) puts {shares.get('depthwise', 0.0):.0%} of the node time in the depthwise "
        f"convolutions, which hold {dw_flops:.0%} of the FLOPs, {dense_time:.0%} in the dense convolutions and "
        f"matrix products ({dense_flops:.0%} of the FLOPs) and {shares.get('other', 0.0):.0%} in everything else "
        "(activations, pooling, CBAM's element-wise products, resizing): a depthwise k x k filter does 2k^2 FLOPs "
        "per output value against one read and one write of it, so those layers are bound by memory traffic, not "
        "by the arithmetic the ceiling measures."
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--backbone", default=None, help="another registered backbone (default: the preset's)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of every backend and of the matmul")
    ap.add_argument("--iters", type=int, default=200, help="batch-1 calls per backend (also capped by time)")
    ap.add_argument("--batches", type=int, default=8, help="batch-32 calls per backend (also capped by time)")
    ap.add_argument("--seconds", type=float, default=20.0, help="time cap per measurement")
    ap.add_argument("--peak-sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="GEMM sizes of the ceiling")
    ap.add_argument("--peak-reps", type=int, default=3, help="timed runs per GEMM size and library (best counts)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    # another backbone runs with random weights: the preset's ImageNet weights are Lite0's, and speed does not
    # depend on the weights
    other = [f"model.backbone={args.backbone}", "model.pretrained=null"] if args.backbone else []
    overrides = [f"data.image_size={args.image_size}", *other]
    cfg = load_config("default", overrides)
    load = os.getloadavg()[0]
    taxonomy = synthetic_taxonomy()
    model = create_model(cfg.model, taxonomy)
    ceilings = gemm_peak(args.threads, tuple(args.peak_sizes), args.peak_reps)
    peak, peak8 = ceilings["best"], ceilings["int8"]
    theory, theory_how = theoretical_peak(args.threads)
    libs = ", ".join(f"{k} {ceilings[k]:.1f}" for k in ("torch", "numpy", "onnxruntime"))
    print(f"fp32 GEMM ceiling on {args.threads} thread(s): {peak:.1f} GFLOP/s ({libs}); int8 {peak8:.1f} GOP/s")
    print("theoretical fp32 peak: " + (f"{theory:.1f} GFLOP/s ({theory_how})" if theory else theory_how))

    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="vestis-bench-") as tmp:
        ckpt = save_checkpoint(Path(tmp) / "default.ckpt", model=model, config=cfg, taxonomy=taxonomy)
        fp32 = export_onnx(ckpt, Path(tmp) / "fp32.onnx", check_images=32)
        int8 = export_onnx(ckpt, Path(tmp) / "int8.onnx", int8=True, calibration_images=32, check_images=32)
        for name, res in (("fp32", fp32), ("int8", int8)):
            p = res.parity
            assert p is not None
            notes.append(
                f"ONNX {name} against PyTorch on {p.num_images} synthetic images: max |dp| = {p.max_diff:.2e}, "
                f"lowest per-attribute agreement {p.min_agreement:.3f}"
            )
        backends = {
            "PyTorch eager": Predictor.from_checkpoint(ckpt, device="cpu", threads=args.threads),
            "ONNX Runtime fp32": Predictor.from_onnx(fp32.path, device="cpu", threads=args.threads),
            "ONNX Runtime int8": Predictor.from_onnx(int8.path, device="cpu", threads=args.threads),
        }
        flops = forward_flops(backends["PyTorch eager"])
        counts = onnx_flops(fp32.path)
        static = counts["total"]
        gap = abs(static - flops) / max(flops, 1)
        print(f"FLOPs per image: {flops / 1e9:.4f} G (FlopCounterMode), {static / 1e9:.4f} G (ONNX graph)")
        if gap > 0.05:
            print(f"WARNING: the two FLOP counts differ by {gap:.1%}: the roofline fractions below are suspect")
        images = load_sample_images(None, 32, args.image_size, seed=2)
        for name, pred in backends.items():
            one = _timings(lambda p=pred: p.run(images[:1]), args.iters, args.seconds)
            many = _timings(lambda p=pred: p.run(images), args.batches, args.seconds, warmup=1)
            ips1, ips32 = len(one) / sum(one), 32 * len(many) / sum(many)
            best = max(ips1, ips32)
            p50, p99 = np.percentile(one, [50, 99]) * 1e3
            ceiling = peak8 if "int8" in name else peak
            rows.append((name, ips1, ips32, p50, p99, flops * best / 1e9, flops * best / 1e9 / ceiling, len(one)))
            print(f"{name}: {ips1:.1f} img/s (b1), {ips32:.1f} img/s (b32), p50 {p50:.2f} ms, p99 {p99:.2f} ms")
            del pred
        shares = onnx_time_profile(fp32.path, images, runs=max(3, args.batches), threads=args.threads)

    over = [f"{r[0]} at {r[6]:.1%} ({r[5]:.1f} GFLOP/s)" for r in rows if r[6] > 1.0]
    if over:
        raise SystemExit(
            f"roofline: {'; '.join(over)} of the measured GEMM ceiling ({peak:.1f} GFLOP/s fp32, {peak8:.1f} GOP/s "
            f"int8, {args.threads} thread(s)) is not physical: the FLOP count ({flops / 1e9:.4f} G per image) or "
            "the ceiling is wrong (a ceiling measured while the shared machine was busy is too low: rerun it when "
            "the machine is quiet); nothing written"
        )
    gflop = flops / 1e9
    weights = f"{cfg.model.pretrained} trunk weights and untrained heads" if cfg.model.pretrained else "random weights"
    theory_text = f"{theory:.1f} GFLOP/s ({theory_how})" if theory else f"not known ({theory_how})"
    if theory and peak > theory:
        theory_text += ", below the measured GEMM: the cores ran faster than the clock read (turbo)"
    lines = [
        f"Model: `default` preset ({cfg.model.name} on {cfg.model.backbone}, CBAM), synthetic taxonomy "
        f"({len(taxonomy)} attributes), {weights}, {args.image_size} px, `uint8` input with in-graph "
        f"normalisation, {gflop:.3f} GFLOP per image by FlopCounterMode and {static / 1e9:.3f} by the static count "
        f"of the ONNX graph (Conv / Gemm / MatMul, {gap:.2%} apart). {args.threads} intra-op thread(s) for every "
        f"backend. Measured GEMM ceiling on the same threads (best over n = "
        f"{', '.join(map(str, args.peak_sizes))}, {args.peak_reps} runs each): fp32 {peak:.1f} GFLOP/s ({libs}), "
        f"int8 `MatMulInteger` {peak8:.1f} GOP/s. Theoretical fp32 peak: {theory_text}. The machine is "
        f"shared: 1-minute load average {load:.2f} when the run started.",
        "",
        "| backend | img/s batch 1 | img/s batch 32 | p50 ms (b1) | p99 ms (b1) | GFLOP/s | of GEMM ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, ips1, ips32, p50, p99, gf, frac, _ in rows:
        lines.append(f"| {name} | {ips1:.1f} | {ips32:.1f} | {p50:.2f} | {p99:.2f} | {gf:.1f} | {frac:.1%} |")
    lines += [
        "",
        f"Batch-1 statistics over at least {min(r[-1] for r in rows)} calls per backend (after 3 warm-up "
        f"calls); batch 32 over up to {args.batches} calls. GFLOP/s uses the better of the two batch sizes; int8 "
        "is compared with the int8 GEMM ceiling (its convolutions run as integer kernels), the others with fp32's.",
        "",
        _limits_sentence(rows, counts, shares),
        "",
        *[f"- {n}" for n in notes],
        "- The heads are untrained, so these agreement figures compare int8 rounding noise with the margins of an "
        "untrained classifier; they are not the accuracy of int8 on a trained model (`vestis export --int8 "
        "--calibration <your images>` reports that for a real checkpoint).",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        name, title = "inference", "Inference: PyTorch vs ONNX Runtime (fp32, int8)"
        if args.backbone:
            name, title = f"inference-{args.backbone}", f"{title}, {args.backbone} backbone"
        print(f"wrote {write_section(name, title, body)}")


if __name__ == "__main__":
    main()
