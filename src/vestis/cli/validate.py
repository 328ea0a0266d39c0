"""``vestis validate``: check a manifest against its taxonomy and its image files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vestis.cli._app import TaxonomyOpt, command, echo, err_console
from vestis.data.catalog import load_catalog
from vestis.data.images import DEFAULT_MAX_PIXELS
from vestis.data.validate import summarize, validate_manifest

__all__ = ["validate"]


@command("validate")
def validate(
    manifest: Annotated[Path, typer.Argument(help="Manifest (CSV, JSONL or Parquet).")],
    taxonomy: TaxonomyOpt = None,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=1, help="Report images with more pixels than this.")
    ] = DEFAULT_MAX_PIXELS,
    no_images: Annotated[bool, typer.Option("--no-images", help="Skip the image file checks.")] = False,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="Threads for the image checks (default: the CPU count + 2, at most 8)."),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option(
            "--root",
            metavar="DIR",
            help="Report images that resolve outside DIR (.., absolute paths, symlinks) as outside-root; "
            "they are not opened (default: none, no such check).",
        ),
    ] = None,
) -> None:
    """Report every problem as file:line: field: what was expected; exit 1 if there is any."""
    m, tax = load_catalog(manifest, taxonomy)
    progress = Progress(
        TextColumn("checking images"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=no_images or not err_console.is_terminal,
    )
    task = progress.add_task("images", total=None)

    def advance(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    with progress:
        problems = validate_manifest(
            m, tax, check_images=not no_images, max_pixels=max_pixels, workers=workers, progress=advance, root=root
        )
    for p in problems:
        echo(escape(str(p)))
    if problems:
        rows = len({p.line for p in problems})
        echo(f"\n{len(problems)} problem(s) on {rows} line(s) of {escape(m.source)}:")
        counts = summarize(problems)
        width = max(len(k) for k in counts)
        for kind, n in counts.items():
            echo(f"  {kind:<{width}}  {n}")
        raise typer.Exit(1)
    images = "" if no_images else ", images checked"
    echo(f"OK: {len(m)} rows ({escape(m.source)}{images})")
