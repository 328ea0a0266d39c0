"""``vestis import FORMAT SRC --out DIR``: turn a public dataset (or a folder tree) into a catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vestis.cli._app import OutDirOpt, command, echo

__all__ = ["import_command"]


@command("import")
def import_command(
    fmt: Annotated[
        str,
        typer.Argument(
            metavar="FORMAT",
            help="fashion-product, clothing-attributes, deepfashion-attributes, deepfashion2, fashionai, "
            "imaterialist-2021, coco or folders.",
        ),
    ],
    src: Annotated[
        Path, typer.Argument(metavar="SRC", help="The dataset folder in its official layout (coco: the JSON file).")
    ],
    out: OutDirOpt,
    copy: Annotated[
        bool, typer.Option("--copy", help="Copy the images to DIR/images instead of referencing them.")
    ] = False,
    min_count: Annotated[
        int, typer.Option("--min-count", min=0, help="Values with fewer examples than this are rare.")
    ] = 0,
    rare: Annotated[
        str, typer.Option("--rare", help="What to do with rare values: 'other' (fold into other) or 'drop'.")
    ] = "other",
    crop: Annotated[
        bool, typer.Option("--crop", help="Write one crop per item box (deepfashion-attributes, imaterialist-2021).")
    ] = False,
    follow_symlinks: Annotated[
        bool,
        typer.Option(
            "--follow-symlinks", help="Accept images whose symlinks lead outside SRC (skipped rows otherwise)."
        ),
    ] = False,
) -> None:
    """Import a dataset: writes DIR/manifest.csv, DIR/taxonomy.yaml and DIR/import_report.json.

    Ids and image paths from the data stay inside SRC and copies inside DIR: the rows that would leave them
    are skipped and counted in the report with their reason.
    """
    from vestis.data.importers import import_dataset

    report = import_dataset(
        fmt, src, out, copy=copy, min_count=min_count, rare=rare, crop=crop, follow_symlinks=follow_symlinks
    )
    echo(report.summary())
