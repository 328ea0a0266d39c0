"""``vestis search``: the most similar catalog items to an image or an item, with manipulations and filters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vestis.cli._app import command, console, echo
from vestis.errors import VestisError


def _pairs(values: list[str], option: str) -> dict[str, list[str]]:
    """``["attr=v", "attr=w|x"]`` -> ``{attr: [v, w, x]}``; a malformed entry is an error naming it."""
    out: dict[str, list[str]] = {}
    for raw in values:
        attr, sep, value = raw.partition("=")
        if not sep or not attr.strip() or not value.strip():
            raise VestisError(f"{option} {raw!r}: expected ATTRIBUTE=VALUE")
        out.setdefault(attr.strip(), []).extend(v.strip() for v in value.split("|") if v.strip())
    return out


@command("search")
def search_cmd(
    index: Annotated[Path, typer.Argument(help="An index directory written by `vestis index`.")],
    image: Annotated[
        Path | None, typer.Option("--image", help="Query image (default: none; give --image or --id).")
    ] = None,
    item_id: Annotated[
        str | None, typer.Option("--id", help="Query by a catalog id (default: none; give --image or --id).")
    ] = None,
    set_: Annotated[
        list[str], typer.Option("--set", help="ATTRIBUTE=VALUE: 'like this, but VALUE' (repeatable; default: none).")
    ] = [],  # noqa: B006
    additive: Annotated[bool, typer.Option("--additive", help="ADDE-M additive manipulation.")] = False,
    only: Annotated[
        str | None, typer.Option("--only", help="Compare these attributes only (a,b,...; default: every attribute).")
    ] = None,
    where: Annotated[
        list[str], typer.Option("--where", help="ATTRIBUTE=VALUE[|VALUE...] filter (repeatable; default: none).")
    ] = [],  # noqa: B006
    k: Annotated[int, typer.Option("--k", min=1, help="Results.")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Rank the catalog by attribute-aware similarity to a query image or item."""
    from vestis.retrieval.catalog_index import CatalogIndex

    if (image is None) == (item_id is None):
        raise VestisError("expected exactly one query: --image FILE or --id ID")
    changes: dict[str, str] = {}
    for attr, values in _pairs(set_, "--set").items():
        if len(values) != 1:
            raise VestisError(f"--set {attr}: expected one value, got {values}")
        changes[attr] = values[0]
    kept = None if only is None else [a.strip() for a in only.split(",") if a.strip()]
    with CatalogIndex.open(index) as idx:
        if item_id is not None:
            idx.row(item_id)  # an unknown id is an error, never an image path
        query = image if image is not None else item_id
        hits = idx.search(query, set=changes, additive=additive, only=kept, where=_pairs(where, "--where"), k=k)
    if as_json:
        typer.echo(json.dumps([h.to_dict() for h in hits], ensure_ascii=False, indent=1))
        return
    if not hits:
        echo("no item matches")
        return
    from rich.table import Table

    # the per-attribute similarities in one wrapped cell: a column each would not fit 80 columns for 7+ attributes
    table = Table("#", "id", "distance", "similarity per attribute", "image")
    table.columns[1].no_wrap = table.columns[2].no_wrap = True
    table.columns[4].overflow = "fold"
    for n, h in enumerate(hits, start=1):
        per = ", ".join(f"{a}={s:.2f}" for a, s in h.per_attribute.items())
        table.add_row(str(n), h.id, f"{h.distance:.3f}", per, h.image)
    console.print(table)
