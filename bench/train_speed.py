"""Training speed at 224 px: eager vs channels-last vs torch.compile vs both, side by side, and the data wait.

Four settings of the execution switches (``train.channels_last``, ``train.compile``; vestis.train.accel), each
measured in one run on the same model, the ``default`` preset's trained whole (no feature cache, every block
trainable, no augmentation) on in-memory batches, so that only the step is timed:

* training images/s: ``--steps`` optimiser steps after ``--warmup`` steps; the first steps' extra time (the
  compilation, for the compiled settings) is reported on its own;
* eager inference images/s: ``model.eval()`` under ``torch.no_grad()``, the same settings, batch ``--batch-size``;
* the loss curve of each setting against eager on the ``tiny`` preset: ``--curve-steps`` steps from the same seed on
  the same batches, the largest absolute difference of the per-step loss; within ``--tolerance`` counts as equal;
* training FLOPs per image (``FlopCounterMode`` over forward + backward, 2 per multiply-add) -> the achieved GFLOP/s
  of each setting and its fraction of this machine's measured fp32 GEMM ceiling at the same thread count
  (:func:`_common.gemm_peak`; the theoretical peak from :func:`_common.theoretical_peak` beside it).

Then, as before, :func:`vestis.train.loop.train` on a synthetic JPEG catalog with ``--workers`` DataLoader workers
(the default switches, augmentation on): images/s and the share of the step time spent waiting for data. ::

    python bench/train_speed.py     # about 6 min on 2 cores (a cold inductor cache every run)
    python bench/train_speed.py --size 160 --settings eager compile --workers
"""

from __future__ import annotations

import argparse
import atexit
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import gemm_peak, theoretical_peak, write_section
from vestis.config import Config, load_config
from vestis.data.synthetic import generate_catalog, synthetic_taxonomy
from vestis.data.transforms import prepare_batch
from vestis.losses.multitask import MaskedMultiTaskLoss
from vestis.models import create_model
from vestis.train.accel import Accel
from vestis.train.loop import train
from vestis.train.optim import build_optimizer

SETTINGS = {
    "eager": Accel(channels_last=False, compile=None),
    "channels-last": Accel(channels_last=True, compile=None),
    "compile": Accel(channels_last=False, compile="default"),
    "compile+channels-last": Accel(channels_last=True, compile="default"),
}
# the default preset trained as a whole: what the switches act on (its cached default trains only the top blocks)
WHOLE = ["train.cache_features=false", "train.trainable_blocks=-1", "data.augment.enabled=false"]


def _batches(cfg: Config, n: int, batch: int, seed: int) -> list[tuple[torch.Tensor, dict, dict]]:
    """``n`` batches of random uint8 images with random labels for every attribute (all labelled)."""
    g = torch.Generator().manual_seed(seed)
    tax, s = synthetic_taxonomy(), cfg.data.image_size
    out = []
    for _ in range(n):
        images = torch.randint(0, 256, (batch, 3, s, s), dtype=torch.uint8, generator=g)
        targets = {
            a.name: torch.randint(0, a.num_values, (batch,), generator=g)
            if a.kind == "single"
            else torch.randint(0, 2, (batch, a.num_values), generator=g)
            for a in tax
        }
        out.append((images, targets, {a.name: torch.ones(batch) for a in tax}))
    return out


_OPTIMIZER = "vestis.optimizer_step"


class _Run:
    """One setting's model, optimiser and loss, built from the same seed."""

    def __init__(self, cfg: Config, accel: Accel) -> None:
        torch.manual_seed(cfg.train.seed)
        self.cfg, self.accel = cfg, accel
        tax = synthetic_taxonomy()
        self.core = create_model(cfg.model, tax, image_size=cfg.data.image_size)
        self.model = accel.apply(self.core)
        self.optimizer = build_optimizer(self.core, cfg.train)
        self.loss = MaskedMultiTaskLoss(tax, output=cfg.model.output)

    def step(self, images: torch.Tensor, targets: dict, masks: dict) -> float:
        self.model.train()
        x = prepare_batch(images, self.cfg.data, channels_last=self.accel.channels_last)
        total = sum(self.loss(self.model(x), targets, masks).values())
        total.backward()
        with torch.profiler.record_function(_OPTIMIZER):  # a no-op unless step_profile is recording
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(total.detach())

    @torch.no_grad()
    def infer(self, images: torch.Tensor) -> None:
        self.model.eval()
        self.model(prepare_batch(images, self.cfg.data, channels_last=self.accel.channels_last))


def _timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """``aten.convolution_backward``: the gradients of the input and of the weight cost a forward pass each.

    Replaces torch's formula, which counts the weight gradient of a grouped convolution as if it were not grouped
    (``groups`` x too many: 40x the forward FLOPs on EfficientNet-Lite's depthwise convolutions)."""
    transposed, output_mask = args[4], args[7]
    forward = 2 * grad_out_shape[0] * math.prod((x_shape if transposed else grad_out_shape)[2:]) * math.prod(w_shape)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def train_flops(cfg: Config, batch: tuple[torch.Tensor, dict, dict]) -> tuple[float, float]:
    """FLOPs of one image's training step and of its forward pass (convolutions and matrix products)."""
    run = _Run(cfg, SETTINGS["eager"])
    images, targets, masks = batch
    x = prepare_batch(images, cfg.data)
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        out = run.model(x)
        forward = counter.get_total_flops()
        sum(run.loss(out, targets, masks).values()).backward()
    return counter.get_total_flops() / len(images), forward / len(images)


def _measure(cfg: Config, name: str, batches: list, warmup: int, steps: int, infer_iters: int) -> dict[str, float]:
    bs, run = cfg.train.batch_size, _Run(cfg, SETTINGS[name])
    first = _timed(lambda: run.step(*batches[0]), warmup)  # the compilation happens in the first step(s)
    step_s = sorted(times := _timed(lambda: run.step(*batches[1]), steps))[len(times) // 2]
    ifirst = _timed(lambda: run.infer(batches[0][0]), 2)  # eval mode: a second graph for the compiled ones
    infer_s = sorted(itimes := _timed(lambda: run.infer(batches[1][0]), infer_iters))[len(itimes) // 2]
    return {
        "train_ips": bs / step_s,
        "setup_s": sum(first) - warmup * step_s,
        "infer_setup_s": sum(ifirst) - 2 * infer_s,
        "infer_ips": bs / infer_s,
    }


def measure_speed(cfg: Config, names: list[str], warmup: int, steps: int, infer_iters: int) -> dict[str, dict]:
    batches = _batches(cfg, 2, cfg.train.batch_size, seed=1)
    out = {}
    for name in names:
        out[name] = r = _measure(cfg, name, batches, warmup, steps, infer_iters)
        print(
            f"{name}: train {r['train_ips']:.1f} img/s (median of {steps} steps), inference {r['infer_ips']:.1f} "
            f"img/s, first calls {r['setup_s']:+.1f} s training, {r['infer_setup_s']:+.1f} s inference",
            flush=True,
        )
    return out


def _op_kind(event: Any) -> str:
    """What one profiled op is: ``optimizer`` (anything under the optimiser's step), ``batchnorm``, ``depthwise``
    or ``conv`` (by the weight ``(C_out, C_in / groups, kH, kW)``: one input channel per group is depthwise),
    ``matmul`` or ``other`` (activations, CBAM's element-wise products, pooling, copies)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == _OPTIMIZER:
            return "optimizer"
        parent = parent.cpu_parent
    name, shapes = event.name, list(event.input_shapes or [])
    if "batch_norm" in name:
        return "batchnorm"
    if "convolution" in name:
        w = shapes[2] if "backward" in name and len(shapes) > 2 else (shapes[1] if len(shapes) > 1 else [])
        return "depthwise" if len(w) == 4 and w[1] == 1 and w[0] > 1 else "conv"
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"):
        return "matmul"
    return "other"


def step_profile(cfg: Config, setting: str, batch: tuple[torch.Tensor, dict, dict]) -> dict[str, float]:
    """Share of one training step's CPU time per kind of :func:`_op_kind` (``torch.profiler``, self time, so a
    nested op is counted once), for ``setting``'s eager model after a warm-up step."""
    from torch.profiler import ProfilerActivity, profile

    run = _Run(cfg, SETTINGS[setting])
    run.step(*batch)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run.step(*batch)
    totals: dict[str, float] = {}
    for e in prof.events():
        kind = _op_kind(e)
        totals[kind] = totals.get(kind, 0.0) + e.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {k: v / whole for k, v in totals.items()}


def loss_curves(names: list[str], steps: int, batch: int) -> dict[str, list[float]]:
    """Per-step training loss of each setting on the tiny preset, same seed, same batches."""
    # no dropout: compiled code draws its random masks from another generator than eager, so they would differ
    cfg = load_config("tiny", ["data.augment.enabled=false", "model.dropout=0"])
    batches = _batches(cfg, steps, batch, seed=2)
    curves = {}
    for name in names:
        run = _Run(cfg, SETTINGS[name])
        curves[name] = [run.step(*b) for b in batches]
    return curves


def data_wait(size: int, batch: int, steps: int, workers: list[int], work: Path) -> list[tuple[int, float, float]]:
    data = work / f"synth-{size}"
    if not (data / "manifest.csv").is_file():
        # catalog images at the training size: decoding cost is what a real catalog of that size would pay
        generate_catalog(data, n=batch * (steps + 2) + 100, size=size, seed=0)
    rows = []
    for w in workers:
        run = work / f"run-w{w}"
        shutil.rmtree(run, ignore_errors=True)
        over = [*WHOLE[:2], f"data.image_size={size}", f"data.num_workers={w}", f"train.batch_size={batch}"]
        over += [f"train.max_steps={steps}", "train.epochs=1", "data.val_fraction=0.01", "data.test_fraction=0.0"]
        h = train(load_config("default", over), data / "manifest.csv", run, check_images=False, progress=False)
        rec = h.history[0]
        rows.append((w, rec["images_per_s"], rec["data_wait_fraction"]))
        print(f"workers={w}: {rec['images_per_s']:.1f} img/s, waiting for data {rec['data_wait_fraction']:.1%}")
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/vestis-bench/train_speed"), help="scratch folder")
    p.add_argument("--size", type=int, default=224, help="image size in px (default 224)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--warmup", type=int, default=2, help="steps before the timed ones, per setting (default 2)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per setting (default 3)")
    p.add_argument("--infer-iters", type=int, default=3, help="timed inference batches per setting (default 3)")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS), help="default: all four")
    p.add_argument("--curve-steps", type=int, default=5, help="tiny-preset loss-curve steps (default 5; 0: skip)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs loss difference called equal (1e-4)")
    p.add_argument("--workers", type=int, nargs="*", default=[0, 2], help="data-wait runs (default 0 2; none: skip)")
    p.add_argument("--wait-steps", type=int, default=5, help="optimiser steps of each data-wait run (default 5)")
    p.add_argument("--peak-sizes", type=int, nargs="+", default=[1024, 2048], help="GEMM sizes (default 1024 2048)")
    p.add_argument("--no-write", action="store_true", help="print only; do not rewrite docs/benchmarks.md")
    a = p.parse_args(argv)
    # inductor's compiled-code cache starts empty in every run, so the reported compile time is a cold one and a
    # rerun reproduces it (a warm cache from an earlier run would hide most of it)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_cache = tempfile.mkdtemp(prefix="vestis-inductor-")
    atexit.register(shutil.rmtree, inductor_cache, True)
    threads = torch.get_num_threads()
    cfg = load_config("default", [*WHOLE, f"data.image_size={a.size}", f"train.batch_size={a.batch_size}"])
    speed = measure_speed(cfg, a.settings, a.warmup, a.steps, a.infer_iters)
    flops, fwd_flops = train_flops(cfg, _batches(cfg, 1, 2, seed=3)[0])
    peak = gemm_peak(threads, tuple(a.peak_sizes))["best"]
    theory, theory_how = theoretical_peak(threads)
    curves = loss_curves(a.settings, a.curve_steps, 8) if a.curve_steps else {}
    ref = curves.get("eager")
    diff = {k: max(abs(x - y) for x, y in zip(c, ref, strict=True)) for k, c in curves.items()} if ref else {}
    rows = data_wait(a.size, a.batch_size, a.wait_steps, a.workers, a.work) if a.workers else []
    best_eager = max((n for n in speed if "compile" not in n), key=lambda n: speed[n]["train_ips"], default=None)
    shares = step_profile(cfg, best_eager, _batches(cfg, 1, a.batch_size, seed=4)[0]) if best_eager else {}

    def curve(name: str) -> str:
        if name not in diff:
            return "–"
        return f"{diff[name]:.1e} ({'equal' if diff[name] <= a.tolerance else 'DIFFERS'})"

    eager = speed.get("eager")
    body = (
        f"`{cfg.model.name}` on `{cfg.model.backbone}` (the `default` preset trained whole: no feature cache, every "
        f"block trainable, no augmentation), {a.size} px, batch {a.batch_size}, fp32, {threads} threads, in-memory "
        f"batches. Training: median of {a.steps} optimiser steps after {a.warmup}; inference: `eval()` + "
        f"`no_grad`, median of {a.infer_iters} batches. First calls: the extra time of the first {a.warmup} training "
        "steps and of the first 2 inference batches (the compilation, for the compiled settings). Training costs "
        f"{flops / 1e9:.2f} GFLOP per image (forward {fwd_flops / 1e9:.2f} + backward; FlopCounterMode, its "
        f"grouped-convolution backward formula corrected); the fp32 GEMM ceiling measured here is {peak:.0f} GFLOP/s"
        + (f" (theoretical {theory:.0f}: {theory_how})" if theory else "")
        + f". Loss curve: largest |loss - eager loss| over {a.curve_steps} steps of the `tiny` preset, same seed "
        f"and batches, no dropout; equal within {a.tolerance:g}.\n\n"
        "| setting | train images/s | vs eager | GFLOP/s | of GEMM peak | inference images/s | vs eager "
        "| first calls (train / infer) | loss curve vs eager |\n|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(
            f"| {n} | {s['train_ips']:.1f} | {s['train_ips'] / eager['train_ips'] if eager else float('nan'):.2f}x "
            f"| {s['train_ips'] * flops / 1e9:.1f} | {s['train_ips'] * flops / 1e9 / peak:.1%} "
            f"| {s['infer_ips']:.1f} | {s['infer_ips'] / eager['infer_ips'] if eager else float('nan'):.2f}x "
            f"| {s['setup_s']:+.0f} s / {s['infer_setup_s']:+.0f} s | {curve(n)} |"
            for n, s in speed.items()
        )
    )
    if shares:
        frac = speed[best_eager]["train_ips"] * flops / 1e9 / peak
        body += (
            f"\n\nWhat limits it now: {best_eager} trains at {frac:.0%} of the GEMM peak. `torch.profiler` over one "
            f"of its steps (self CPU time) puts {shares.get('depthwise', 0.0):.0%} in the depthwise convolutions "
            f"(forward and backward), {shares.get('conv', 0.0):.0%} in the dense ones, "
            f"{shares.get('matmul', 0.0):.0%} in matrix products, {shares.get('batchnorm', 0.0):.0%} in batch "
            f"norm, {shares.get('optimizer', 0.0):.0%} in the optimiser's update and {shares.get('other', 0.0):.0%} "
            "in everything else (activations, CBAM's element-wise products, pooling, copies). Only the dense "
            "convolutions and matrix products can run near the GEMM rate; the depthwise filters, batch norm, the "
            "update and the element-wise work do a few FLOPs per value they read and write, so they run at memory "
            "speed."
        )
    if rows:
        body += (
            f"\n\nThe data wait: `vestis.train.loop.train` (default switches), synthetic catalog (JPEG {a.size} px), "
            f"{a.wait_steps} optimiser steps, augmentation on. Data wait = time blocked on the DataLoader / wall "
            "time of the steps (includes starting the workers).\n\n"
            "| DataLoader workers | images/s | data wait |\n|---|---|---|\n"
            + "\n".join(f"| {w} | {ips:.1f} | {wait:.1%} |" for w, ips, wait in rows)
        )
    print(body)
    if not a.no_write:
        print(f"wrote {write_section('train-speed', f'Training speed (default model, {a.size} px)', body)}")


if __name__ == "__main__":
    main()
