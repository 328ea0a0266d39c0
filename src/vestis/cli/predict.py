"""``vestis predict``: tag a catalog (folder, manifest or images) into JSONL, CSV or Parquet, resumably."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vestis.cli._app import ProgressOpt, TrustCheckpointOpt, command, echo

_NAMES = ("--workers", "--threads")  # how errors name the two options


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
        str,
        typer.Option(
            "--workers",
            "-w",
            metavar="auto|N",
            help="Decoding processes, or auto (the default): 0 (decoding between the model's batches) up to 3 "
            "cores, then a sixteenth of the cores, at least 1; every core but one when the model runs on a GPU. An "
            "outfit pipeline decodes in threads: auto is 2 there.",
        ),
    ] = "auto",
    threads: Annotated[
        str,
        typer.Option(
            "--threads",
            "-t",
            metavar="auto|N",
            help="The model's intra-op CPU threads, or auto (the default): the cores the decoding workers leave "
            "(all of them up to 3 cores; 1 when the model runs on a GPU). An outfit pipeline: auto keeps its "
            "runtime's default.",
        ),
    ] = "auto",
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
    from vestis.inference.items import resolve_split
    from vestis.inference.pipeline_format import pipeline_kind

    resolve_split(workers, threads, names=_NAMES)  # a bad value is refused before the model loads
    if pipeline_kind(model) is not None or model.suffix == ".vestis":  # a damaged one gets the pipeline's message
        _predict_outfits(model, inputs, out, batch_size, workers, threads, engine, device, restart, progress)
        return
    from vestis.inference.items import model_on_gpu
    from vestis.inference.predictor import Predictor
    from vestis.inference.tagging import tag_catalog

    n_threads = resolve_split(workers, threads, gpu=model_on_gpu(model, device), names=_NAMES)[1]
    predictor = Predictor.from_path(model, device=device, threads=n_threads, trust_checkpoint=trust_checkpoint)
    n_workers = resolve_split(workers, threads, gpu=predictor.device != "cpu", names=_NAMES)[0]
    r = tag_catalog(
        predictor, inputs, out, batch_size=batch_size, workers=n_workers, engine=engine, device=device,
        calibrated=calibrated, restart=restart, progress=progress,
    )  # fmt: skip
    if r.done_before:
        echo(f"{r.done_before} of {r.total} images were already done")
    echo(f"{r.predicted} predicted, {r.errors} unreadable, {r.images_per_s:.4g} images/s; wrote {r.out}")
    if r.extra_rows:
        echo(f"note: {r.extra_rows} row(s) in {r.out} are not in this input (kept)")


def _predict_outfits(
    model: Path, inputs: list[Path], out: Path, batch_size: int, workers: str, threads: str, engine: str,
    device: str | None, restart: bool, progress: bool,
) -> None:  # fmt: skip
    """The garments of every image through an outfit pipeline, into JSONL.

    ``workers`` are decoding threads (``auto``: 2); ``threads``, when a number, go to the ONNX Runtime sessions of
    an exported pipeline, or to ``torch.set_num_threads`` for a pipeline file (``auto``: the runtime's default).
    """
    from vestis.errors import VestisError
    from vestis.inference.items import AUTO, resolve_split
    from vestis.inference.outfit_tagging import tag_outfits

    if engine != "local":
        raise VestisError(f"--engine {engine}: an outfit pipeline runs on the local engine only")
    n_workers = 2 if workers.strip().lower() == AUTO else resolve_split(workers, threads, names=_NAMES)[0]
    pipeline: Any = model
    if threads.strip().lower() != AUTO:
        from vestis.inference.pipeline import OutfitPipeline

        n_threads = resolve_split(workers, threads, names=_NAMES)[1]
        pipeline = OutfitPipeline.load(model, device=device, threads=n_threads)
        if pipeline.runtime == "torch":
            import torch

            torch.set_num_threads(n_threads)
    r = tag_outfits(
        pipeline, inputs, out, batch_size=batch_size, workers=n_workers, device=device, restart=restart,
        progress=progress,
    )  # fmt: skip
    if r.done_before:
        echo(f"{r.done_before} of {r.total} images were already done")
    echo(f"{r.predicted} predicted, {r.errors} unreadable, {r.images_per_s:.4g} images/s; wrote {r.out}")
    if r.extra_rows:
        echo(f"note: {r.extra_rows} row(s) in {r.out} are not in this input (kept)")
