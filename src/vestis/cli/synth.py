"""``vestis synth``: draw a synthetic fashion catalog with exact ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vestis.cli._app import OutDirOpt, command, console, echo
from vestis.data.synthetic import generate_catalog

__all__ = ["synth"]


@command("synth")
def synth(
    out: OutDirOpt,
    n: Annotated[int, typer.Option("--n", help="Number of product images.")] = 1000,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels (>= 32).")] = 128,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: same seed, same bytes.")] = 0,
    scenes: Annotated[
        bool, typer.Option("--scenes", help="Also draw outfit scenes with COCO boxes (n/4 of them).")
    ] = False,
    label_noise: Annotated[
        float, typer.Option("--label-noise", help="Probability that a manifest label is wrong.")
    ] = 0.0,
    missing_rate: Annotated[
        float, typer.Option("--missing-rate", help="Probability that an applicable label is left empty.")
    ] = 0.1,
    imbalance: Annotated[
        float, typer.Option("--imbalance", help="Zipf exponent of value frequencies (0 = balanced).")
    ] = 1.0,
    clutter: Annotated[float, typer.Option("--clutter", help="Probability of a cluttered background.")] = 0.3,
    occlusion: Annotated[float, typer.Option("--occlusion", help="Probability of an occluding patch.")] = 0.1,
    image_format: Annotated[str, typer.Option("--format", help="Image format: jpg (quality 90) or png.")] = "jpg",
    workers: Annotated[
        int | None, typer.Option("--workers", help="Processes (default min(2, CPUs)); output is the same.")
    ] = None,
    from_manifest: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="With --scenes: compose --n outfit scenes of --size px from this manifest's product photos "
            "(object types from --type-column) instead of drawing a catalog. Default: none, draw.",
        ),
    ] = None,
    mode: Annotated[str, typer.Option("--mode", help="--from: cutout (studio white removed) or card.")] = "cutout",
    type_column: Annotated[
        str, typer.Option("--type-column", help="--from: the label naming Topwear/Bottomwear/Dress/Shoes.")
    ] = "subCategory",
) -> None:
    """Draw a procedural catalog: images, manifest.csv, ground_truth.csv and taxonomy.yaml in OUT.

    With --scenes --from MANIFEST: outfit scenes composed from real product photos, with COCO boxes per split.
    """
    if from_manifest is not None:
        from vestis.data.composites import build_composites
        from vestis.errors import VestisError

        if not scenes:
            raise VestisError("--from composes outfit scenes: pass --scenes with it")
        res = build_composites(from_manifest, out, n=n, size=size, mode=mode, type_column=type_column, seed=seed)
        for split, path in res.annotations.items():
            echo(f"{split}: {res.scenes[split]} scenes, {res.boxes[split]} boxes of {res.products[split]} products "
                 f"in {path}")  # fmt: skip
        return
    columns = (TextColumn("drawing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("drawing", total=None)
        result = generate_catalog(
            out,
            n=n,
            size=size,
            seed=seed,
            scenes=scenes,
            label_noise=label_noise,
            missing_rate=missing_rate,
            imbalance=imbalance,
            clutter=clutter,
            occlusion=occlusion,
            image_format=image_format,
            workers=workers,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    echo(f"wrote {result.n_images} images of {result.n_groups} products to {result.images_dir}")
    echo(
        f"manifest:     {result.manifest} ({result.n_labels} labels, {result.n_missing} missing, "
        f"{result.n_noisy} noisy)"
    )
    echo(f"ground truth: {result.ground_truth}")
    echo(f"taxonomy:     {result.taxonomy}")
    if result.scenes_annotations is not None:
        echo(f"scenes:       {result.n_scenes} images, {result.n_boxes} boxes in {result.scenes_annotations}")
