"""``vestis pretrain``: a catalog base model trained on the title words of ``vestis vocab``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from vestis.cli._app import (
    BackboneOpt,
    BatchSizeOpt,
    DeviceOpt,
    EpochsOpt,
    ImageSizeOpt,
    ResumeOpt,
    SkipInvalidOpt,
    TrustCheckpointOpt,
    command,
    echo,
)


@command("pretrain")
def pretrain_cmd(
    data: Annotated[Path, typer.Option("--data", "-d", help="Manifest with a title column (CSV, JSONL, Parquet).")],
    vocab: Annotated[Path, typer.Option("--vocab", help="The vocab.json of `vestis vocab` on the same manifest.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Config overrides: train.lr=1e-4 model.dropout=0.1 (default: none).")
    ] = None,
    config: Annotated[
        str, typer.Option("--config", "-c", help="Preset name (default, paper, tiny...) or YAML.")
    ] = "default",
    model: Annotated[
        str | None,
        typer.Option("--model", help="Classifier name: baseline, a1..a4 (default: from the preset)."),
    ] = None,
    backbone: BackboneOpt = None,
    pretrained: Annotated[
        str | None,
        typer.Option(
            "--pretrained",
            help="Start the backbone from these weights: imagenet or a safetensors file (model.pretrained; "
            "default: from the preset, none = from scratch).",
        ),
    ] = None,
    epochs: EpochsOpt = None,
    image_size: ImageSizeOpt = None,
    batch_size: BatchSizeOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = Path("runs/pretrain"),
    resume: ResumeOpt = False,
    skip_invalid: SkipInvalidOpt = False,
    device: DeviceOpt = None,
    trust_checkpoint: TrustCheckpointOpt = False,
) -> None:
    """Train a base model whose one task is the title-word multi-label head; writes RUN/last.ckpt and best.ckpt.

    The run folder also holds the derived pretrain_manifest.csv and pretrain_taxonomy.yaml it trained on. Refine
    the base model on a taxonomy with `vestis train --init RUN/best.ckpt`.
    """
    from vestis.config import load_config
    from vestis.config_doc import config_yaml
    from vestis.io import atomic_write_text
    from vestis.train.pretrain import pretrain

    flags = {
        "model.name": model,
        "model.backbone": backbone,
        "model.pretrained": pretrained,
        "train.epochs": epochs,
        "data.image_size": image_size,
        "train.batch_size": batch_size,
    }
    extra = [f"{k}={v}" for k, v in flags.items() if v is not None]
    cfg = load_config(config, [*(overrides or []), *extra])
    main_process = os.environ.get("RANK", "0") == "0"
    say = echo if main_process else (lambda *_: None)
    m = cfg.model
    say(f"base model {m.name} on {m.backbone}, {cfg.data.image_size}px, {cfg.train.epochs} epochs -> {out}")
    shown = " ".join([f"--config {config}", f"--vocab {vocab}", *(overrides or []), *extra])
    result = pretrain(
        cfg, data, vocab, out, resume=resume, skip_invalid=skip_invalid, device=device,
        progress=main_process and sys.stderr.isatty(), log=say, trust_checkpoint=trust_checkpoint,
    )  # fmt: skip
    if main_process:
        atomic_write_text(out / "config.yaml", config_yaml(cfg, header=f"vestis pretrain {shown}"))
    if result.best.exists():
        shown_best = "None" if result.best_metric is None else f"{result.best_metric:.4g}"
        say(f"best: {result.best} ({result.metric} = {shown_best})")
    say(f"last: {result.last}")
