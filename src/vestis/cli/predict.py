"""``vestis predict``: tag a catalog (folder, manifest or images) into JSONL, CSV or Parquet, resumably."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vestis.cli._app import ProgressOpt, TrustCheckpointOpt, command, echo


@command("predict")
def predict_cmd(
    model: Annotated[
        Path,
        typer.Argument(
            help="A checkpoint, an ONNX file from `vestis export`, an outfit pipeline file (`vestis pipeline`) or "
            "its exported folder."
        ),
    ],
    inputs: Annotated[list[Path], typer.Argument(help="Image folder(s), manifest(s) or image files.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output .jsonl, .csv or .parquet (an outfit pipeline: .jsonl).")
    ],
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per model call.")] = 32,
    workers: Annotated[
        int,
        typer.Option("--workers", "-w", min=0, help="Decoding processes (threads for an outfit pipeline); default: 2."),
    ] = 2,
    engine: Annotated[str, typer.Option("--engine", help="local or ray.")] = "local",
    device: Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda when present).")] = None,
    calibrated: Annotated[
        bool, typer.Option("--calibrated/--no-calibrated", help="Use the model's calibrated thresholds.")
    ] = True,
    restart: Annotated[bool, typer.Option("--restart", help="Discard earlier results in --out.")] = False,
    progress: ProgressOpt = True,
    trust_checkpoint: TrustCheckpointOpt = False,
) -> None:
    """Predict the attributes of every image (an outfit pipeline: its garments); a rerun continues where it stopped."""
    from vestis.inference.pipeline_format import pipeline_kind

    if pipeline_kind(model) is not None or model.suffix == ".vestis":  # a damaged one gets the pipeline's message
        _predict_outfits(model, inputs, out, batch_size, workers, engine, device, restart, progress)
        return
    from vestis.inference.predictor import Predictor
    from vestis.inference.tagging import tag_catalog

    predictor = Predictor.from_path(model, device=device, trust_checkpoint=trust_checkpoint)
    r = tag_catalog(
        predictor, inputs, out, batch_size=batch_size, workers=workers, engine=engine, device=device,
        calibrated=calibrated, restart=restart, progress=progress,
    )  # fmt: skip
    if r.done_before:
        echo(f"{r.done_before} of {r.total} images were already done")
    echo(f"{r.predicted} predicted, {r.errors} unreadable, {r.images_per_s:.4g} images/s; wrote {r.out}")
    if r.extra_rows:
        echo(f"note: {r.extra_rows} row(s) in {r.out} are not in this input (kept)")


def _predict_outfits(
    model: Path, inputs: list[Path], out: Path, batch_size: int, workers: int, engine: str, device: str | None,
    restart: bool, progress: bool,
) -> None:  # fmt: skip
    """The garments of every image through an outfit pipeline, into JSONL."""
    from vestis.errors import VestisError
    from vestis.inference.outfit_tagging import tag_outfits

    if engine != "local":
        raise VestisError(f"--engine {engine}: an outfit pipeline runs on the local engine only")
    r = tag_outfits(
        model, inputs, out, batch_size=batch_size, workers=workers, device=device, restart=restart, progress=progress
    )
    if r.done_before:
        echo(f"{r.done_before} of {r.total} images were already done")
    echo(f"{r.predicted} predicted, {r.errors} unreadable, {r.images_per_s:.4g} images/s; wrote {r.out}")
    if r.extra_rows:
        echo(f"note: {r.extra_rows} row(s) in {r.out} are not in this input (kept)")
