"""Build a catalog index: embed a catalog, store its items, prototypes and vectors, fill the vector backend.

Crash safety is ``vestis predict``'s (:mod:`vestis.inference.tagging`): every batch of rows (vector as base64,
recognised attributes, or an error) is appended to ``INDEX/build.jsonl`` and ``fsync``-ed, under an advisory lock
against a second build of the same directory. A rerun drops a torn last line and embeds only the images whose id
is not in the journal yet, so after any number of kills the index holds every image exactly once. When every
image is done, the files of :mod:`vestis.retrieval.catalog_store` are written atomically, ``index.json`` last,
and the journal is removed; a kill during that step is finished by the next run from the journal.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vestis.errors import VestisError
from vestis.inference.embedder import Embedder
from vestis.inference.journal import Journal, _offsets, _ordered_rows, _repair
from vestis.inference.tagging import ENGINES, ImageItem, _Progress, collect_inputs
from vestis.io import atomic_write_text
from vestis.retrieval.catalog_embed import (
    embed_rows,
    items_from_rows,
    manifest_labels,
    max_pixels,
    row_vectors,
    rows_for_batch,
)
from vestis.retrieval.catalog_store import (
    BACKEND_FILES,
    FORMAT,
    ITEMS,
    META,
    MILVUS_TOKEN_ENV,
    PROTOTYPES,
    VECTORS,
    VERSION,
    attribute_fields,
    field_values,
    file_sha256,
    labelled_prototypes,
    save_prototypes,
    write_items,
    write_meta,
    write_vectors,
)

__all__ = ["BACKENDS", "JOURNAL", "BuildResult", "build_index"]

BACKENDS = ("faiss", "milvus")
JOURNAL = "build.jsonl"
STAMP = "build.model.json"  # the model file that writes the journal, while a build is unfinished


@dataclass(frozen=True)
class BuildResult:
    """Summary of a :func:`build_index` run.

    Attributes:
        out: the index directory.
        total: images in the catalog.
        done_before: images already embedded when the run started.
        embedded: images embedded in this run.
        errors: images that could not be decoded (left out of the index; listed in ``index.json``).
        count: items in the index.
        seconds: wall time of this run's embedding pass.
    """

    out: Path
    total: int
    done_before: int
    embedded: int
    errors: int
    count: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return (self.embedded + self.errors) / self.seconds if self.seconds > 0 else 0.0


def _catalog_root(sources: Sequence[Path]) -> Path:
    """The folder image paths are stored relative to: the folder or the manifest's folder, or their common one."""
    roots = [s.absolute() if s.is_dir() else s.absolute().parent for s in sources]
    return Path(os.path.commonpath([str(r) for r in roots]))


def _ray_rows(
    embedder: Embedder, items: Sequence[ImageItem], batch_size: int, workers: int, device: str | None
) -> Iterator[list[dict[str, Any]]]:
    """The rows on Ray Data: decoding in parallel tasks (the predict engine's), embedding in one actor.

    The model file and the images must be readable at the same paths on every node, as for ``vestis predict``.
    """
    from vestis.inference import ray_engine

    ray = ray_engine._require_ray()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    cpus = 1.0 if ray.cluster_resources().get("CPU", 1) >= 2 else ray.cluster_resources().get("CPU", 1) / 2
    ds = ray.data.from_items([{"id": it.id, "path": str(it.path)} for it in items])
    size, pad = embedder.image_size, int(embedder.preprocessing["pad_value"])
    ds = ds.map_batches(
        ray_engine._decode_batch,
        fn_kwargs={"size": size, "pad_value": pad, "max_pixels": max_pixels(embedder)},
        batch_size=batch_size, batch_format="numpy", num_cpus=cpus,
        **ray_engine._pool(ray, actors=False, size=workers or None),
    )  # fmt: skip
    ds = ds.map_batches(
        _EmbedStage,
        fn_constructor_kwargs={"model_path": str(embedder.path), "device": device or "cpu"},
        batch_size=batch_size, batch_format="numpy", num_cpus=cpus,
        **ray_engine._pool(ray, actors=True, size=1),
    )  # fmt: skip
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        yield [json.loads(s) for s in batch["row"]]


class _EmbedStage:
    """Ray actor: one Embedder per actor, decoded batches -> JSON rows."""

    def __init__(self, model_path: str, device: str) -> None:
        self.embedder = Embedder.from_path(model_path, device=device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [ImageItem(str(i), Path(str(p))) for i, p in zip(batch["id"], batch["path"], strict=True)]
        errors = [str(e) or None for e in batch["error"]]
        arrays = [None if e else batch["pixels"][i] for i, e in enumerate(errors)]
        out = np.empty(len(items), dtype=object)
        out[:] = [json.dumps(r) for r in rows_for_batch(self.embedder, items, arrays, errors)]
        return {"row": out}


def build_index(
    model_path: str | os.PathLike[str],
    catalog: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    backend: str = "faiss",
    kind: str = "flat",
    params: dict[str, Any] | None = None,
    prototypes: str | os.PathLike[str] | None = None,
    milvus_uri: str | None = None,
    collection: str = "vestis",
    batch_size: int = 32,
    workers: int = 2,
    engine: str = "local",
    device: str | None = None,
    restart: bool = False,
    progress: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> BuildResult:
    """Embed every image of ``catalog`` into the index directory ``out``, resuming a killed build.

    Args:
        model_path: an embedding checkpoint, a classifier checkpoint (attribute-based sub-embeddings) or an
            embedding ONNX file.
        catalog: a folder, a manifest, image files, or a list of them (see ``collect_inputs`` of tagging).
        out: the index directory.
        backend: ``faiss`` or ``milvus``.
        kind: ``flat``, ``hnsw`` or ``ivfpq``.
        params: the backend's build parameters (HNSW ``M``..., IVF-PQ ``nlist``, ``m``, ``nbits``...).
        prototypes: a manifest whose labelled rows give the prototypes instead of the catalog's own labels.
        milvus_uri: backend ``milvus`` only: a Milvus server or cluster (``http://host:19530``) or a milvus-lite
            ``.db`` elsewhere, instead of ``out/milvus.db``; credentials come from ``VESTIS_MILVUS_TOKEN``
            (``user:password`` or an API key) and are never written to the index.
        collection: the Milvus collection holding this index (replaced by a rebuild).
        batch_size: images per model call.
        workers: decoding processes (local) or parallel decode tasks (ray).
        engine: ``local`` or ``ray``.
        device: ``cpu``, ``cuda``; ``None`` picks CUDA when available.
        restart: discard an earlier (complete or partial) build in ``out``.
        progress: a progress bar with images/s on stderr.
        on_batch: called with the number of images after each journalled batch.

    Raises:
        VestisError: bad arguments or inputs; ``out`` already holds a complete index (without ``restart``);
            another build writing ``out``.
    """
    out = Path(out)
    if backend not in BACKENDS:
        raise VestisError(f"backend: expected one of {list(BACKENDS)}, got {backend!r}")
    if kind not in ("flat", "hnsw", "ivfpq"):
        raise VestisError(f"index type: expected one of ['flat', 'hnsw', 'ivfpq'], got {kind!r}")
    if engine not in ENGINES:
        raise VestisError(f"engine: expected one of {list(ENGINES)}, got {engine!r}")
    if milvus_uri is not None and backend != "milvus":
        raise VestisError(f"a Milvus URI ({milvus_uri}) needs backend milvus, not {backend!r}")
    if batch_size < 1 or workers < 0:
        raise VestisError(f"expected batch_size >= 1 and workers >= 0, got {batch_size} and {workers}")
    if out.exists() and not out.is_dir():
        raise VestisError(f"{out}: exists and is not a folder; expected the index directory")
    sources = [Path(catalog)] if isinstance(catalog, str | os.PathLike) else [Path(c) for c in catalog]
    items = collect_inputs(sources)
    journal = out / JOURNAL
    if (out / META).exists() and not journal.exists() and not restart:
        raise VestisError(f"{out}: already holds a complete index; pass --restart to rebuild it")
    embedder = Embedder.from_path(model_path, device=device)
    try:
        writer = Journal(journal)  # lock first, then read: a concurrent build cannot slip in between
    except VestisError:
        raise VestisError(f"{out}: another vestis index is building this directory") from None
    try:
        if restart:
            writer.truncate()
            (out / META).unlink(missing_ok=True)
        _repair(journal)
        done = set(_offsets(journal))
        _check_stamp(out / STAMP, Path(model_path), fresh=not done)
        todo = [it for it in items if it.id not in done]
        embedded = errors = 0
        t0 = time.perf_counter()
        with _Progress(progress, len(items), len(items) - len(todo), label="indexing") as bar:
            if todo:
                if engine == "ray":
                    if embedder.path is None:
                        raise VestisError("engine ray: the model must be a file")
                    batches: Iterator[list[dict[str, Any]]] = _ray_rows(embedder, todo, batch_size, workers, device)
                else:
                    batches = embed_rows(embedder, todo, batch_size=batch_size, workers=workers)
                for rows in batches:
                    writer.append(rows)
                    n_err = sum("error" in r for r in rows)
                    errors += n_err
                    embedded += len(rows) - n_err
                    bar.advance(len(rows))
                    if on_batch is not None:
                        on_batch(len(rows))
        seconds = time.perf_counter() - t0
        where = {"uri": milvus_uri, "collection": collection} if backend == "milvus" else {}
        count = _finish(out, journal, items, sources, embedder, backend, kind, dict(params or {}), prototypes, where)
    finally:
        writer.close()
    journal.unlink()
    (out / STAMP).unlink(missing_ok=True)
    return BuildResult(out, len(items), len(items) - len(todo), embedded, errors, count, seconds)


def _finish(
    out: Path,
    journal: Path,
    items: Sequence[ImageItem],
    sources: Sequence[Path],
    embedder: Embedder,
    backend: str,
    kind: str,
    params: dict[str, Any],
    prototypes_manifest: str | os.PathLike[str] | None,
    milvus: Mapping[str, Any],
) -> int:
    """Write every index file from the complete journal (index.json last); returns the item count."""
    from vestis.retrieval.index import create_index

    tax, layout = embedder.taxonomy, embedder.layout
    rows = list(_ordered_rows(journal, [it.id for it in items]))
    wanted = {it.id for it in items}
    rows = [r for r in rows if r["id"] in wanted]  # rows of an earlier, different catalog are not this index's
    good = [r for r in rows if "error" not in r]
    skipped = [{"id": r["id"], "image": r["image"], "error": r["error"]} for r in rows if "error" in r]
    root = _catalog_root(sources)
    labels = manifest_labels(sources, tax)
    keys = np.arange(len(good), dtype=np.int64)
    vectors = row_vectors(good, embedder.dim, str(journal))  # (N, D)
    protos = _prototypes(prototypes_manifest, embedder, good, vectors, labels)
    table, _ = items_from_rows(
        good, keys, root=root, labels=labels, protos=protos, taxonomy=tax, layout=layout, vectors=vectors
    )
    out.mkdir(parents=True, exist_ok=True)
    file = BACKEND_FILES[backend]
    target: str | Path = out / file
    extra: dict[str, Any] = {}
    if backend == "faiss":
        (out / file).unlink(missing_ok=True)
    else:
        from vestis.retrieval.index.milvus_index import MilvusIndex

        extra = {"collection": milvus["collection"], "token": os.environ.get(MILVUS_TOKEN_ENV)}
        if milvus.get("uri"):
            target = milvus["uri"]
            MilvusIndex.drop(target, **extra)  # a rebuild replaces this index's collection
        else:
            _remove_tree(out / file)
    fields = attribute_fields(tax) if backend == "milvus" else {}
    if fields:
        extra["fields"] = dict.fromkeys(fields.values(), "str_list")
    index = create_index(backend, kind, embedder.dim, path=target, **extra, **params)
    try:
        if len(good):
            index.add(keys, vectors, **({"fields": field_values(table, fields)} if fields else {}))
        index.save()
        info = index.info()
    finally:
        index.close()
    write_vectors(out / VECTORS, vectors)
    write_items(out / ITEMS, table, tax.names)
    save_prototypes(out / PROTOTYPES, protos, tax)
    atomic_write_text(out / "skipped.json", json.dumps(skipped, indent=1, ensure_ascii=False) + "\n")
    write_meta(out, {
        "format": FORMAT,
        "version": VERSION,
        "model": {**embedder.info, "path": str(Path(embedder.path).absolute()) if embedder.path else None,
                  "sha256": file_sha256(embedder.path) if embedder.path else None},
        "layout": [[a, d] for a, d in layout],
        "taxonomy": tax.to_dict(),
        "preprocessing": embedder.preprocessing,
        "backend": {"name": backend, "kind": kind, "params": info.get("params", params), "file": file,
                    **({"fields": fields, "collection": milvus["collection"]} if fields else {}),
                    **({"uri": milvus["uri"]} if milvus.get("uri") else {})},
        "count": len(good),
        "next_key": len(good),
        "catalog_root": str(root),
        "skipped": len(skipped),
        "prototypes": str(Path(prototypes_manifest).absolute()) if prototypes_manifest else "catalog labels",
    })  # fmt: skip
    return len(good)


def _check_stamp(stamp: Path, model: Path, *, fresh: bool) -> None:
    """Record which model file writes the journal; a resumed build with another one would mix two embeddings."""
    sha = file_sha256(model)
    if not fresh and stamp.is_file():
        try:
            before = json.loads(stamp.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            before = {}
        if isinstance(before, dict) and before.get("sha256") not in (None, sha):
            raise VestisError(
                f"{stamp.parent}: the unfinished build there embeds with {before.get('path')}, not {model} "
                "(a different file); resume it with that model, or pass --restart"
            )
    atomic_write_text(stamp, json.dumps({"path": str(model.absolute()), "sha256": sha}) + "\n")


def _remove_tree(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _prototypes(
    manifest: str | os.PathLike[str] | None,
    embedder: Embedder,
    rows: Sequence[dict[str, Any]],
    vectors: np.ndarray,
    labels: dict[str, dict[str, str]],
) -> Any:
    """Prototypes from the catalog's labelled rows, or from the labelled rows of ``manifest``.

    The rows of ``manifest`` whose id and image are the catalog's reuse its vectors; the others are embedded.
    """
    tax, layout = embedder.taxonomy, embedder.layout
    if manifest is None:
        cols = {a: [labels.get(r["id"], {}).get(a) for r in rows] for a, _ in layout}
        return labelled_prototypes(vectors, layout, cols, tax)
    extra = collect_inputs([manifest])
    plabels = manifest_labels([manifest], tax)
    known = {r["id"]: i for i, r in enumerate(rows)}
    same = [it for it in extra if it.id in known and Path(rows[known[it.id]]["image"]) == it.path]
    other = [it for it in extra if it not in same]
    new = [r for b in embed_rows(embedder, other, batch_size=32, workers=0) for r in b if "error" not in r]
    new_vecs = row_vectors(new, embedder.dim)
    ids = [it.id for it in same] + [r["id"] for r in new]
    vecs = np.concatenate([vectors[[known[it.id] for it in same]].reshape(-1, embedder.dim), new_vecs])
    cols = {a: [plabels.get(i, {}).get(a) for i in ids] for a, _ in layout}
    protos = labelled_prototypes(vecs, layout, cols, tax)
    if not any(len(v) for v in protos.values.values()):
        raise VestisError(f"{manifest}: no labelled row with a readable image; expected labels to build prototypes")
    return protos
