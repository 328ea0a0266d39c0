"""``vestis models``: the registered model architectures and backbones."""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table

from vestis.cli._app import command, console, echo


@command("models")
def models(
    tiny: Annotated[
        bool | None, typer.Option("--tiny/--full", help="Show only the tiny test backbones, or only the real ones.")
    ] = None,
) -> None:
    """List the registered models (multi-scale paper §5.2) and backbones with their feature widths."""
    # imported here so that other commands (and --help) do not pay for importing torch
    from vestis.models import describe_backbone, list_backbones, list_models
    from vestis.registry import MODELS

    table = Table(title="Models (model.name)", box=box.SIMPLE, title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("architecture")
    for name in list_models():
        table.add_row(name, str(MODELS.meta(name).get("description", "")))
    console.print(table)

    table = Table(title="Backbones (model.backbone)", box=box.SIMPLE, title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("tiny", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("taps (stride 8, 16, 32)")
    table.add_column("last stage", no_wrap=True)
    for name in list_backbones(tiny):
        s = describe_backbone(name)
        taps = ", ".join(f"{f.name} {f.channels}" for f in s.pyramid)
        table.add_row(name, "yes" if s.tiny else "", f"{s.params / 1e6:.2f}M", taps, f"{s.last.name} {s.last.channels}")
    console.print(table)
    echo("Fused width: baseline = last; a1, a2, a3 = sum of the taps; a4 = 5 x model.fpn_channels.")
