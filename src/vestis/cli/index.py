"""``vestis index``: embed a catalog into a searchable index directory, resumably."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vestis.cli._app import ProgressOpt, command, echo


@command("index")
def index_cmd(
    model: Annotated[Path, typer.Argument(help="An embedding or classifier checkpoint, or an embedding ONNX file.")],
    catalog: Annotated[list[Path], typer.Argument(help="Image folder(s), manifest(s) or image files.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The index directory.")],
    backend: Annotated[str, typer.Option("--backend", help="faiss or milvus.")] = "faiss",
    index_type: Annotated[str, typer.Option("--index-type", help="flat (exact), hnsw or ivfpq.")] = "flat",
    param: Annotated[
        list[str],
        typer.Option(
            "--param",
            help="KEY=N index parameter: M, ef_construction, nlist, m, nbits, nprobe "
            "(repeatable; default: none, the index type's own).",
        ),
    ] = [],  # noqa: B006
    prototypes: Annotated[
        Path | None, typer.Option("--prototypes", help="A labelled manifest for the prototypes (default: the catalog).")
    ] = None,
    milvus_uri: Annotated[
        str | None,
        typer.Option(
            "--milvus-uri",
            help="With --backend milvus: a Milvus server or cluster (http://host:19530); default: INDEX/milvus.db, "
            "embedded. Credentials from the VESTIS_MILVUS_TOKEN environment variable, never stored.",
        ),
    ] = None,
    collection: Annotated[
        str, typer.Option("--collection", help="With --backend milvus: the collection holding this index.")
    ] = "vestis",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per model call.")] = 32,
    workers: Annotated[int, typer.Option("--workers", "-w", min=0, help="Decoding processes.")] = 2,
    engine: Annotated[str, typer.Option("--engine", help="local or ray.")] = "local",
    device: Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda when present).")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="Discard an earlier build in --out.")] = False,
    progress: ProgressOpt = True,
) -> None:
    """Index a catalog for substitute search; a rerun after a crash continues where it stopped."""
    from vestis.errors import VestisError
    from vestis.retrieval.index_build import build_index

    params: dict[str, int] = {}
    for raw in param:
        key, sep, value = raw.partition("=")
        if not sep or not key.strip() or not value.strip().isdigit():
            raise VestisError(f"--param {raw!r}: expected KEY=N with a whole number N")
        params[key.strip()] = int(value)
    r = build_index(
        model, catalog, out, backend=backend, kind=index_type, params=params, prototypes=prototypes,
        milvus_uri=milvus_uri, collection=collection,
        batch_size=batch_size, workers=workers, engine=engine, device=device, restart=restart, progress=progress,
    )  # fmt: skip
    if r.done_before:
        echo(f"{r.done_before} of {r.total} images were already embedded")
    echo(f"{r.embedded} embedded, {r.errors} unreadable (left out), {r.images_per_s:.4g} images/s")
    echo(f"indexed {r.count} items ({backend} {index_type}) in {r.out}")
