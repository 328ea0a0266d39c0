"""``vestis train``: fit a model on a manifest."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vestis.cli._app import (
    BackboneOpt,
    BatchSizeOpt,
    DeviceOpt,
    EpochsOpt,
    ImageSizeOpt,
    ResumeOpt,
    SkipInvalidOpt,
    TaxonomyOpt,
    TrustCheckpointOpt,
    command,
    echo,
)

if TYPE_CHECKING:
    from vestis.config import Config


@command("train")
def train_cmd(
    data: Annotated[
        Path, typer.Option("--data", "-d", help="Manifest (CSV, JSONL or Parquet); with --task detect a COCO JSON.")
    ],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Config overrides: train.lr=1e-4 model.dropout=0.1")
    ] = None,
    taxonomy: TaxonomyOpt = None,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            help="Preset name (default, paper, csn, datrnet, tiny...) or YAML; default: `default`, "
            "or the preset named like --model when there is one (csn, datrnet).",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Model name: baseline, a1..a4 (classifiers), csn, csn_fixed, triplet, datrnet (embeddings), "
            "centernet (detector), stl, stl_hls, rnn_va (stage 2) (default: from the preset).",
        ),
    ] = None,
    backbone: BackboneOpt = None,
    init: Annotated[
        Path | None,
        typer.Option(
            "--init",
            help="Start from this vestis checkpoint (model.init); unfit branches are new (default: from the preset).",
        ),
    ] = None,
    epochs: EpochsOpt = None,
    image_size: ImageSizeOpt = None,
    batch_size: BatchSizeOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = Path("runs/train"),
    resume: ResumeOpt = False,
    skip_invalid: SkipInvalidOpt = False,
    device: DeviceOpt = None,
    trust_checkpoint: TrustCheckpointOpt = False,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="classify, embed, detect (garment boxes from COCO JSON, preset `detect`) or stage2 (category and "
            "attributes of garment crops, preset `stage2`); default: the kind of --model / the preset's model.",
        ),
    ] = None,
    val_data: Annotated[
        Path | None,
        typer.Option(
            "--val-data",
            help="--task detect: the validation COCO JSON (data.val_data); default: data.val_fraction of --data.",
        ),
    ] = None,
    per_attribute: Annotated[
        bool,
        typer.Option(
            "--per-attribute",
            help="Train one classifier per attribute (one-attribute taxonomy, same settings) into RUN/<attribute>/ "
            "and write RUN/combined.json, which predict, export and serve take as one model; a finished attribute "
            "is skipped on a rerun (default: off, one model for all attributes).",
        ),
    ] = False,
    attributes: Annotated[
        str | None,
        typer.Option(
            "--attributes",
            help="With --per-attribute: the attributes to train, comma-separated (default: every attribute).",
        ),
    ] = None,
) -> None:
    """Train an attribute classifier, an embedding model, a garment detector or a stage-2 crop model; writes
    RUN_DIR/last.ckpt and best.ckpt (with --per-attribute: RUN_DIR/<attribute>/ and RUN_DIR/combined.json)."""
    from vestis.config import list_presets, load_config
    from vestis.errors import VestisError
    from vestis.train.loop import train
    from vestis.train.tasks import model_task

    if task is not None and task not in _TASKS:
        raise VestisError(f"--task: expected one of {list(_TASKS)}, got {task!r}")
    if config is None:  # `--model csn` starts from the csn preset (embedding size, loss weights, batches)
        by_task = {"detect": "detect", "stage2": "stage2"}.get(task or "", "default")
        config = model if model in list_presets() else by_task

    flags = {
        "model.name": model,
        "model.backbone": backbone,
        "train.epochs": epochs,
        "data.image_size": image_size,
        "train.batch_size": batch_size,
        "model.init": init,
        "data.val_data": val_data,
    }
    extra = [f"{k}={v}" for k, v in flags.items() if v is not None]
    cfg = load_config(config, [*(overrides or []), *extra])
    kind = model_task(cfg.model.name)
    if task is not None and _TASKS[task] != kind:
        raise VestisError(f"--task {task}: model {cfg.model.name!r} is a {kind} model; pick a {task} model (--model)")
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun only the first process reports
    say = echo if main_process else (lambda *_: None)
    if attributes is not None and not per_attribute:
        raise VestisError("--attributes: only with --per-attribute")
    say(f"model {cfg.model.name} on {cfg.model.backbone}, {cfg.data.image_size}px, {cfg.train.epochs} epochs -> {out}")
    shown = " ".join([f"--config {config}", *(overrides or []), *extra])
    if per_attribute:
        _train_per_attribute(
            cfg, data, out, taxonomy, attributes, resume, skip_invalid, device, trust_checkpoint, shown
        )
        return
    # a new run records its settings before it starts (a crash keeps them); a resume only once train() has
    # accepted them, and an --out holding another run keeps its own config.yaml (train() refuses it)
    fresh = not resume and not (out / "last.ckpt").exists()
    if main_process and fresh:
        _write_config(out, cfg, shown)
    result = train(
        cfg, data, out, taxonomy=taxonomy, resume=resume, skip_invalid=skip_invalid, device=device,
        progress=main_process and sys.stderr.isatty(), log=say, trust_checkpoint=trust_checkpoint,
    )  # fmt: skip
    if main_process and resume:
        _write_config(out, cfg, shown)
    if result.best.exists():
        shown_best = "None" if result.best_metric is None else f"{result.best_metric:.4g}"
        say(f"best: {result.best} ({result.metric} = {shown_best})")
    say(f"last: {result.last}")


def _train_per_attribute(
    cfg: Config, data: Path, out: Path, taxonomy: Path | None, attributes: str | None, resume: bool,
    skip_invalid: bool, device: str | None, trust_checkpoint: bool, shown: str,
) -> None:  # fmt: skip
    """``--per-attribute``: one run per attribute and RUN/combined.json (vestis.train.per_attribute)."""
    from vestis.errors import VestisError
    from vestis.train.per_attribute import train_per_attribute

    names = None
    if attributes is not None:
        names = [a.strip() for a in attributes.split(",") if a.strip()]
        if not names:
            raise VestisError(f"--attributes: expected attribute names separated by commas, got {attributes!r}")
    result = train_per_attribute(
        cfg, data, out, taxonomy=taxonomy, attributes=names, resume=resume, skip_invalid=skip_invalid, device=device,
        progress=sys.stderr.isatty(), log=echo, trust_checkpoint=trust_checkpoint,
        command=f"vestis train --per-attribute {shown}",
    )  # fmt: skip
    echo(f"combined: {result.combined} ({len(result.members)} attributes, {result.fingerprint})")


# --task -> what vestis.train.tasks.model_task calls the kind of model it trains
_TASKS = {"classify": "classification", "embed": "embedding", "detect": "detection", "stage2": "stage2"}


def _write_config(out: Path, cfg: Config, shown: str) -> None:
    """``out/config.yaml``: the resolved settings with their comments, written atomically."""
    from vestis.config_doc import config_yaml
    from vestis.io import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", config_yaml(cfg, header=f"vestis train {shown}"))
