"""The training loop: data -> model -> named losses -> optimiser, with validation and checkpoints.

The loop knows nothing about attributes: the model returns named logits, the loss returns a named
dict, the loop sums and logs it. One function, :func:`train`, drives a run; the CLI and the tests call it.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from vestis.config import Config
from vestis.data.catalog import load_catalog
from vestis.data.dataset import AttributeDataset
from vestis.data.manifest import Manifest
from vestis.data.splits import split_manifest
from vestis.data.taxonomy import Taxonomy
from vestis.data.validate import clean_catalog, validate_manifest
from vestis.errors import VestisError
from vestis.io import atomic_write_text
from vestis.models import create_model
from vestis.train import accel
from vestis.train.cache import CachedTail, build_cache, cache_cut
from vestis.train.checkpoint import load_checkpoint, save_checkpoint
from vestis.train.distributed import DistInfo, barrier, cleanup, init_distributed
from vestis.train.finetune import (
    FreezeState,
    apply_freeze,
    check_finetune_config,
    init_from_checkpoint,
)
from vestis.train.optim import build_optimizer, build_scheduler
from vestis.train.sampling import BalancedSampler, balanced_weights
from vestis.train.selection import (
    SELECTION_KEYS,
    check_resume_selection,
    check_selection,
    selection_key,
    selection_metric,
    selection_record,
)
from vestis.train.task_registry import make_task
from vestis.train.tasks import model_task

__all__ = ["TrainResult", "train"]

# settings that may change between a run and its --resume without changing what is computed
_RESUMABLE = {
    "train.epochs",
    "train.patience",
    "train.max_steps",
    "train.log_every",
    "train.cache_dir",
    "data.num_workers",
    "train.channels_last",
    "train.compile",
}
# settings an older run's config does not hold, with the value that reproduces what that run did
_ABSENT_MEANS = {"train.calibration_min_positives": 1}


@dataclass
class TrainResult:
    out_dir: Path
    last: Path
    best: Path
    best_metric: float | None
    metric: str
    epochs_run: int
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None  # the trained (unwrapped) model, last state
    best_epoch: int | None = None  # 1-based epoch of best.ckpt


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    s = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def _set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _check_resume_config(saved: dict[str, Any], cfg: Config, path: Path) -> None:
    a, b = {**_ABSENT_MEANS, **_flat(saved)}, _flat(cfg.to_dict())
    skip = _RESUMABLE | SELECTION_KEYS  # those two are compared by the metric they resolve to
    diff = sorted(k for k in set(a) | set(b) if k not in skip and _norm(a.get(k)) != _norm(b.get(k)))
    if diff:
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:8])
        raise VestisError(f"{path}: cannot resume with a different configuration ({shown}); use a new --out")


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _prepare_data(
    cfg: Config, data: Path, taxonomy_path: Path | None, skipped: Path | None, *, skip_invalid: bool, check_images: bool
) -> tuple[dict[str, Manifest], Taxonomy]:
    # every rank validates the same way, so every rank keeps the same rows
    manifest, taxonomy = load_catalog(data, taxonomy_path)
    problems = validate_manifest(manifest, taxonomy, check_images=check_images, max_pixels=cfg.data.max_pixels)
    manifest = clean_catalog(manifest, taxonomy, problems, skip_invalid=skip_invalid, skipped_path=skipped)
    splits = split_manifest(
        manifest,
        val_fraction=cfg.data.val_fraction,
        test_fraction=cfg.data.test_fraction,
        seed=cfg.data.split_seed,
    )
    if not splits["train"].records:
        raise VestisError(f"{data}: no training rows after splitting; add rows or set split=train on some")
    return splits, taxonomy


def _loader(ds, batch_size: int, workers: int, *, sampler=None, drop_last=False, collate=None) -> DataLoader:
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        shuffle=False,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def train(
    cfg: Config,
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    taxonomy: str | os.PathLike[str] | None = None,
    resume: bool = False,
    skip_invalid: bool = False,
    check_images: bool = True,
    device: str | None = None,
    progress: bool = True,
    log: Any = print,
    trust_checkpoint: bool = False,
) -> TrainResult:
    """Train a model on a manifest and write ``last.ckpt`` / ``best.ckpt`` into ``out_dir``.

    Args:
        cfg: the run's configuration.
        data: manifest path; the taxonomy defaults to ``taxonomy.yaml`` beside it.
        out_dir: run directory.
        resume: continue from ``out_dir/last.ckpt`` exactly (weights, optimiser, schedule, RNG, epoch).
        skip_invalid: drop rows that fail validation (listed in ``out_dir/skipped_rows.csv``) instead of stopping.
        check_images: decode every image once before training to find unreadable ones.
        device: ``cpu``, ``cuda`` or ``None`` (CUDA when available).
        progress: show a progress bar.
        log: where one-line messages go.
        trust_checkpoint: resume from an old pickle ``last.ckpt`` too (unpickling runs any code it holds).
    """
    out = Path(out_dir)
    cfg = cfg.resolved()  # normalisation left to the pretrained weights becomes numbers before anything reads it
    info = init_distributed(device)
    try:
        return _train(
            cfg, Path(data), out, info, taxonomy, resume, skip_invalid, check_images, progress, log,
            trust_checkpoint=trust_checkpoint,
        )  # fmt: skip
    finally:
        cleanup(info)


def _train(
    cfg: Config,
    data: Path,
    out: Path,
    info: DistInfo,
    taxonomy_path: str | os.PathLike[str] | None,
    resume: bool,
    skip_invalid: bool,
    check_images: bool,
    progress: bool,
    log: Any,
    trust_checkpoint: bool = False,
) -> TrainResult:
    tc, dc = cfg.train, cfg.data
    dev = info.device
    cuda = dev.type == "cuda"
    main = info.is_main
    say = log if main else (lambda *_: None)
    last_path, best_path = out / "last.ckpt", out / "best.ckpt"
    if main:
        out.mkdir(parents=True, exist_ok=True)

    saved = None
    if resume:
        if not last_path.is_file():
            raise VestisError(f"{last_path}: nothing to resume (no last.ckpt in the run directory)")
        saved = load_checkpoint(last_path, trust=trust_checkpoint)
        _check_resume_config(saved["config"], cfg, last_path)
        if saved.get("train_state") is None:
            raise VestisError(f"{last_path}: checkpoint has no training state to resume from")
    elif main and last_path.exists():
        raise VestisError(
            f"{out}: already holds a run (last.ckpt); pass --resume to continue it or choose another --out"
        )

    check_finetune_config(tc)
    _seed_all(tc.seed)
    if tc.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False

    if model_task(cfg.model.name) == "detection":  # COCO boxes instead of a manifest
        from vestis.train.detection_task import prepare_detection_data

        if taxonomy_path:
            raise VestisError("--taxonomy: a detector's classes come from the COCO JSON's categories")
        train_ds, val_ds, taxonomy = prepare_detection_data(cfg, data, check_images=check_images, log=say)
        say(f"data: {len(train_ds)} train / {len(val_ds)} val images, classes {list(taxonomy.attributes[0].values)}")
    else:
        splits, taxonomy = _prepare_data(
            cfg,
            data,
            Path(taxonomy_path) if taxonomy_path else None,
            out / "skipped_rows.csv" if main else None,
            skip_invalid=skip_invalid,
            check_images=check_images,
        )
        train_ds = AttributeDataset(splits["train"], taxonomy, dc)
        val_ds = AttributeDataset(splits["val"], taxonomy, dc)
        n_test = len(splits["test"])
        say(f"data: {len(train_ds)} train / {len(val_ds)} val / {n_test} test rows, {len(taxonomy)} attributes")
    task = make_task(cfg, taxonomy, train_ds, val_ds, rank=info.rank, world=info.world_size)

    # seeded per epoch (seed + epoch): the order of epoch e is the same with or without a resume before it
    sampler: DistributedSampler | BalancedSampler = DistributedSampler(
        train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=tc.seed, drop_last=False
    )
    if tc.balanced_sampling:  # draws that balance one attribute's values (vestis.train.sampling), seeded the same way
        if getattr(train_ds, "encoded", None) is None:
            raise VestisError("train.balanced_sampling: expected a classifier run (attribute labels to balance)")
        weights = balanced_weights(taxonomy, train_ds.encoded, tc.balanced_sampling)
        sampler = BalancedSampler(weights, num_replicas=info.world_size, rank=info.rank, seed=tc.seed)
    per_rank = math.ceil(len(train_ds) / info.world_size)
    bs, workers, collate = tc.batch_size, dc.num_workers, task.collate
    train_loader = _loader(train_ds, bs, workers, sampler=sampler, drop_last=per_rank > bs, collate=collate)
    val_loader = _loader(val_ds, bs, workers, collate=collate)

    core = create_model(cfg.model, taxonomy, image_size=dc.image_size)
    if cfg.model.init and saved is None:  # on --resume the weights come from last.ckpt
        say(init_from_checkpoint(core, cfg.model.init, trust=trust_checkpoint).describe())
    core = core.to(dev)
    run_as = accel.resolve(tc, dev)  # channels-last and torch.compile (train.channels_last, train.compile)
    channels_last = run_as.channels_last
    cut = cache_cut(core, tc)  # 0: no cache
    # what the optimiser steps through: the whole model, or the part above the cached trunk
    net: nn.Module = CachedTail(core, cut) if cut else core
    # the module the steps call (compiled or not; checkpoints save `core`); wrapped in DDP at the first epoch, once
    # the frozen blocks are known
    model = run_as.apply(net)
    if run_as.compile or not run_as.channels_last:
        say(f"training step: {run_as.describe()}")

    loss_fn = task.loss.to(dev)
    augment = task.augmenter(dev, cached=bool(cut))
    flip = dc.augment.hflip if dc.augment.enabled and cut else 0.0
    if dc.augment.enabled and cut:
        say(
            "feature cache: image augmentation (data.augment) cannot apply below the cached trunk and is off; "
            f"only a horizontal flip of the cached maps (p={flip}) is kept"
        )
    optimizer = build_optimizer(core, tc)
    steps_per_epoch = math.ceil(task.batches_per_epoch(train_loader) / tc.grad_accum)
    scheduler = build_scheduler(optimizer, steps_per_epoch, tc)
    amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    use_amp = tc.amp and cuda
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    metric_name = selection_metric(tc, task)
    mode = tc.early_stop_mode
    check_selection(tc, metric_name, task)
    start_epoch, step, best, bad_epochs, history = 0, 0, None, 0, []
    best_epoch: int | None = None
    if saved is not None:
        check_resume_selection(saved, metric_name, task, last_path)
        core.load_state_dict(saved["model"])
        ts = saved["train_state"]
        optimizer.load_state_dict(ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        scaler.load_state_dict(ts["scaler"])
        start_epoch, step, best, bad_epochs = ts["epoch"] + 1, ts["step"], ts["best"], ts["bad_epochs"]
        best_epoch = ts.get("best_epoch")  # absent in runs from before it was recorded
        history = ts["history"]
        _set_rng_state(ts["rng"][info.rank] if info.rank < len(ts["rng"]) else ts["rng"][0])
        say(f"resumed from {last_path} at epoch {start_epoch + 1}")
    elif info.rank:
        torch.manual_seed(tc.seed + info.rank)  # different augmentations per rank; the weights come from rank 0

    train_cache = val_cache = None
    if cut:  # after any resume: the cached blocks hold the run's (frozen) weights; a resume recomputes the cache
        amp_ctx = lambda: torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp)  # noqa: E731
        plain = _loader(train_ds, tc.batch_size, dc.num_workers)
        store = tc.cache_dir
        train_cache = build_cache(core, plain, train_ds.encoded, cut, dc, dev, autocast=amp_ctx, log=say, store=store)
        if main and len(val_ds):
            val_cache = build_cache(
                core, val_loader, val_ds.encoded, cut, dc, dev, name="val", autocast=amp_ctx, log=say, store=store
            )

    sign = 1.0 if mode == "max" else -1.0
    stop = step >= tc.max_steps > 0 or start_epoch >= tc.epochs
    epoch = start_epoch - 1
    freeze_state: FreezeState | None = None
    with _progress(progress and main) as bar:
        for epoch in range(start_epoch, tc.epochs):
            if stop:
                break
            sampler.set_epoch(epoch)
            model.train()
            frozen = apply_freeze(core, tc, epoch)  # after train(): frozen blocks go back to eval mode
            if frozen != freeze_state:
                if frozen.frozen or frozen.bn_frozen or freeze_state is not None:
                    say(f"epoch {epoch + 1}: {frozen.describe()}")
                if info.enabled:  # DDP reduces the gradients of the parameters that required one when wrapped
                    model = run_as.apply(DistributedDataParallel(net, device_ids=[dev.index] if cuda else None))
                    model.train()
                freeze_state = frozen
            batches = task.batches(epoch, sampler, train_loader, train_cache)
            row = bar.add_task(f"epoch {epoch + 1}/{tc.epochs}", total=len(batches), info="")
            sums: dict[str, float] = {}
            n_batches, n_images, wait, t0 = 0, 0, 0.0, time.perf_counter()
            t_fetch = time.perf_counter()
            for i, batch in enumerate(batches):
                wait += time.perf_counter() - t_fetch
                args, targets, masks, n = task.step_inputs(batch, dev, augment, train_cache, flip, channels_last)
                last_in_epoch = i + 1 == len(batches)
                sync = (i + 1) % tc.grad_accum == 0 or last_in_epoch
                ctx = model.no_sync() if info.enabled and not sync else nullcontext()
                with ctx, torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                    losses = loss_fn(model(*args), targets, masks)
                    total = sum(losses.values())
                    scaler.scale(total / tc.grad_accum).backward()
                if sync:
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    step += 1
                if not torch.isfinite(total):
                    raise VestisError(f"training diverged at epoch {epoch + 1}, step {step}: loss is {total.item()}")
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                sums["loss"] = sums.get("loss", 0.0) + float(total.detach())
                n_batches += 1
                n_images += n
                if i % max(1, tc.log_every) == 0 or last_in_epoch:
                    rate = n_images * info.world_size / max(1e-9, time.perf_counter() - t0)
                    bar.update(row, info=f"loss {sums['loss'] / n_batches:.4f} | {rate:.0f} img/s")
                bar.advance(row)
                if step >= tc.max_steps > 0:
                    stop = True
                    break
                t_fetch = time.perf_counter()
            elapsed = time.perf_counter() - t0
            _average_buffers(core, info)
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": step,
                "lr": optimizer.param_groups[0]["lr"],
                "train": {k: v / max(1, n_batches) for k, v in sums.items()},
                "images_per_s": n_images * info.world_size / max(1e-9, elapsed),
                "data_wait_fraction": wait / max(1e-9, elapsed),
            }

            # validation on the main process; the others wait for the verdict
            improved, metrics, thresholds = False, {}, {}
            best_metrics: dict[str, Any] = {}  # best.ckpt's: the epoch's metrics, how it was selected, thresholds
            if main and len(val_ds):
                validation = task.validate(core, net, val_loader, val_cache, dev)
                metrics = validation.metrics
                if metric_name not in metrics["summary"]:
                    known = sorted(metrics["summary"])
                    raise VestisError(f"{selection_key(tc)}: {metric_name!r} is not one of {known}")
                value = metrics["summary"][metric_name]  # None when no validation row is labelled
                record["val"] = metrics["summary"]
                if value is not None and (best is None or sign * value > sign * best):
                    best, best_epoch, bad_epochs, improved = float(value), epoch + 1, 0, True
                    best_metrics = {**metrics, "selection": selection_record(metric_name, best, epoch + 1, mode)}
                    calibration = validation.calibrate()
                    if calibration is not None:
                        thresholds = calibration.thresholds
                        best_metrics["threshold_choice"] = calibration.choice
                else:
                    bad_epochs += 1
                say(
                    f"epoch {epoch + 1}: loss {_fmt(record['train']['loss'])}, val {metric_name} {_fmt(value)}"
                    f"{' (best)' if improved else ''}, {record['images_per_s']:.0f} img/s"
                )
            elif main:
                improved, best_epoch = True, epoch + 1
                # nothing to select on: best.ckpt is the latest epoch
                best_metrics = {"selection": selection_record(metric_name, None, epoch + 1, mode)}
                say(f"epoch {epoch + 1}: loss {_fmt(record['train']['loss'])} (no validation rows)")
            history.append(record)
            if tc.patience and bad_epochs >= tc.patience:
                stop = True
                say(f"early stopping: {metric_name} did not improve for {tc.patience} epochs")
            if info.enabled:
                flag = [stop]
                dist.broadcast_object_list(flag, src=0)
                stop = flag[0]

            rng = [_rng_state()]
            if info.enabled:
                gathered: list[Any] = [None] * info.world_size
                dist.all_gather_object(gathered, rng[0])
                rng = gathered
            if main:
                train_state = {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch,
                    "step": step,
                    "best": best,
                    "best_epoch": best_epoch,
                    "selection_metric": metric_name,
                    "bad_epochs": bad_epochs,
                    "history": history,
                    "rng": rng,
                }
                if improved:
                    save_checkpoint(
                        best_path,
                        model=core,
                        config=cfg,
                        taxonomy=taxonomy,
                        metrics=best_metrics,
                        thresholds=thresholds,
                        train_state=None,
                    )
                # last.ckpt after best.ckpt: a crash in between resumes into an epoch whose best is on disk
                save_checkpoint(
                    last_path, model=core, config=cfg, taxonomy=taxonomy, metrics=metrics, train_state=train_state
                )
                atomic_write_text(out / "history.json", json.dumps(history, indent=2))
            barrier(info)
    if channels_last:  # the model handed back computes as one loaded from its checkpoint does
        core.to(memory_format=torch.contiguous_format)
    return TrainResult(
        out_dir=out,
        last=last_path,
        best=best_path,
        best_metric=best,
        metric=metric_name,
        epochs_run=epoch + 1 - start_epoch if epoch >= start_epoch else 0,
        steps=step,
        history=history,
        model=core,
        best_epoch=best_epoch,
    )


def _fmt(x: float | None) -> str:
    """A logged number: 4 significant digits (``None`` for an undefined metric)."""
    return "None" if x is None else f"{x:.4g}"


def _average_buffers(model: nn.Module, info: DistInfo) -> None:
    """Average float buffers (BatchNorm running stats) over ranks: DDP keeps parameters in step, but each
    rank updates its running statistics from its own shard; after this every rank holds the same model."""
    if not info.enabled:
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(info.world_size)
