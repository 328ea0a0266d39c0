"""``vestis stats``: label counts, missing rates, co-occurrence and imbalance (IR, MeanIR, SCUMBLE)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from vestis.cli._app import OutDirOpt, TaxonomyOpt, command, console, echo
from vestis.data.catalog import load_catalog
from vestis.data.stats import compute_stats, write_stats

__all__ = ["stats"]


def _f(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


@command("stats")
def stats(
    manifest: Annotated[Path, typer.Argument(help="Manifest (CSV, JSONL or Parquet).")],
    out: OutDirOpt,
    taxonomy: TaxonomyOpt = None,
) -> None:
    """Write stats.json, stats.md and bar charts to --out and print a summary."""
    m, tax = load_catalog(manifest, taxonomy)
    st = compute_stats(m, tax)
    files = write_stats(st, out)
    table = Table(title=f"{st['rows']} rows, {st['groups']} groups", title_justify="left")
    for col in ("attribute", "kind", "labelled", "missing*", "MeanIR", "max IR", "SCUMBLE"):
        table.add_column(col, justify="left" if col in ("attribute", "kind") else "right")
    for name, a in st["attributes"].items():
        table.add_row(
            escape(name),
            a["kind"],
            str(a["rows_labelled"]),
            _f(a["missing_rate_applicable"], pct=True),
            _f(a["mean_ir"]),
            _f(a["max_ir"]),
            _f(a["scumble"]),
        )
    console.print(table)
    o = st["overall"]
    echo("* over the rows where the attribute applies")
    echo(f"all attributes as one label set: MeanIR {_f(o['mean_ir'])}, SCUMBLE {_f(o['scumble'])}")
    if st["format_problems"]:
        echo(f"note: {st['format_problems']} format problem(s) while reading; run `vestis validate` for details")
    echo(f"wrote {len(files)} files to {escape(str(out))}: stats.json, stats.md and {len(files) - 2} charts")
