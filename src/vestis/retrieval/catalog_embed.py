"""The embedding pass of a catalog index: decoded images -> journal rows (vector, recognised attributes).

Shared by :func:`vestis.retrieval.index_build.build_index` and :meth:`vestis.retrieval.catalog_index.CatalogIndex.add`.
Decoding is :func:`vestis.inference.tagging.decoded_batches` (the bounded decoder and worker processes of
``vestis predict``); the model is an :class:`~vestis.inference.embedder.Embedder`.

A row is ``{"id", "image", "vector": base64 float32 (D,), "pred": {attr: value | None}, "score": {attr: p}}``,
or ``{"id", "image", "error": reason}`` for an image that cannot be decoded. ``pred`` is present only when the
model has recognition columns (a classifier, a CSN with columns) and the PyTorch backend runs it: then the
embeddings and the logits come from one forward pass. Otherwise attributes are predicted later, from the
nearest prototype (:func:`nearest_prototype_predictions`), once the whole catalog is embedded.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vestis.data.images import DEFAULT_MAX_PIXELS
from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.inference.embedder import Embedder
from vestis.inference.tagging import ImageItem, decoded_batches
from vestis.models.heads import uses_softmax
from vestis.retrieval.catalog_store import Items
from vestis.retrieval.prototypes import Prototypes

__all__ = [
    "MULTI_THRESHOLD",
    "decode_vector",
    "embed_rows",
    "encode_vector",
    "items_from_rows",
    "manifest_labels",
    "max_pixels",
    "nearest_prototype_predictions",
    "relative_image",
    "row_vectors",
    "rows_for_batch",
]

MULTI_THRESHOLD = 0.5  # a multi-label value is predicted when its probability reaches this
_DIGITS = 6


def encode_vector(v: np.ndarray) -> str:
    """A ``float32`` vector as base64 text (exact, 4/3 of the bytes; JSON floats would be 3x larger)."""
    return base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode("ascii")


def decode_vector(text: str, dim: int, where: str) -> np.ndarray:
    """The inverse of :func:`encode_vector`, checked against the expected width."""
    try:
        v = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype="<f4")
    except (ValueError, UnicodeEncodeError):
        raise VestisError(f"{where}: 'vector' is not base64 float32; not a vestis index journal?") from None
    if v.shape != (dim,):
        raise VestisError(f"{where}: 'vector' has {v.size} numbers, expected {dim} (another model's journal?)")
    return v.astype(np.float32)


def max_pixels(embedder: Embedder) -> int:
    """The decompression-bomb cap the model was trained with (``data.max_pixels``), as the Predictor uses."""
    return int(((embedder.config or {}).get("data") or {}).get("max_pixels", DEFAULT_MAX_PIXELS))


def _decode_logits(logits: Mapping[str, torch.Tensor], taxonomy: Taxonomy, output: str) -> list[dict[str, Any]]:
    """Per image ``{"pred": {attr: value}, "score": {attr: p}}`` from recognition logits."""
    n = next(iter(logits.values())).shape[0]
    rows: list[dict[str, Any]] = [{"pred": {}, "score": {}} for _ in range(n)]
    for a in taxonomy:
        if a.name not in logits:
            continue
        z = logits[a.name].float()
        p = (z.softmax(dim=1) if uses_softmax(a.kind, output) else z.sigmoid()).cpu().numpy()  # (B, K)
        for i in range(n):
            if a.kind == "single":
                j = int(p[i].argmax())
                value, score = a.values[j], float(p[i, j])
            else:
                on = [a.values[j] for j in np.flatnonzero(p[i] >= MULTI_THRESHOLD)]
                value, score = ("|".join(on) or None), float(p[i].max())
            rows[i]["pred"][a.name] = value
            rows[i]["score"][a.name] = round(score, _DIGITS)
    return rows


def _encode(embedder: Embedder, batch: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]] | None]:
    """``(vectors (B, D), predictions or None)`` for a letterboxed ``uint8`` batch."""
    module = embedder.module
    model = getattr(module, "model", None)
    if module is None or model is None:  # ONNX: embeddings only
        return embedder.embed_concat(batch), None
    arr = embedder._check_batch(batch)  # same shape and size checks as embed_concat
    with torch.inference_mode():
        x = torch.from_numpy(arr).to(module.mean.device)
        # the normalisation of EmbeddingInferenceModule.forward, so the vectors are the Embedder's exactly
        out = model((x.float().div(255.0) - module.mean) / module.std)
        vectors = model.concat(out["embeddings"]).float().cpu().numpy()  # (B, D)
    logits = out.get("logits") or {}
    preds = _decode_logits(logits, embedder.taxonomy, getattr(model, "output", "kind")) if logits else None
    return vectors, preds


def embed_rows(
    embedder: Embedder, items: Sequence[ImageItem], *, batch_size: int, workers: int
) -> Iterator[list[dict[str, Any]]]:
    """Journal rows for ``items``, batch by batch in input order (see the module docstring)."""
    pad = int(embedder.preprocessing["pad_value"])
    size = min(batch_size, embedder.max_batch)
    for its, arrays, errors in decoded_batches(items, embedder.image_size, pad, max_pixels(embedder), size, workers):
        yield rows_for_batch(embedder, its, arrays, errors)


def rows_for_batch(
    embedder: Embedder,
    items: Sequence[ImageItem],
    arrays: Sequence[np.ndarray | None],
    errors: Sequence[str | None],
) -> list[dict[str, Any]]:
    """Rows for one decoded batch: vectors (and predictions) for the decoded images, error rows for the others."""
    ok = [i for i, a in enumerate(arrays) if a is not None]
    done: dict[int, dict[str, Any]] = {}
    if ok:
        vectors, preds = _encode(embedder, np.stack([arrays[i] for i in ok]))  # (B_ok, D)
        for j, i in enumerate(ok):
            done[i] = {"vector": encode_vector(vectors[j])} | (preds[j] if preds is not None else {})
    rows = []
    for i, it in enumerate(items):
        row: dict[str, Any] = {"id": it.id, "image": str(it.path)}
        row |= done[i] if i in done else {"error": errors[i] or "not decoded"}
        rows.append(row)
    return rows


def nearest_prototype_predictions(
    vectors: np.ndarray, layout: Sequence[tuple[str, int]], protos: Prototypes, taxonomy: Taxonomy
) -> tuple[dict[str, list[str | None]], dict[str, np.ndarray]]:
    """Per attribute the value of the most similar prototype and that similarity, for every ``(N, D)`` row.

    An attribute without prototypes (no labelled item) gets ``None`` and NaN.
    """
    preds: dict[str, list[str | None]] = {}
    scores: dict[str, np.ndarray] = {}
    start = 0
    for attr, d in layout:
        part = vectors[:, start : start + d]  # (N, d_t)
        start += d
        n = part.shape[0]
        if attr not in protos.vectors or len(protos.values[attr]) == 0:
            preds[attr], scores[attr] = [None] * n, np.full(n, np.nan, np.float32)
            continue
        sims = part @ protos.vectors[attr].T  # (N, P)
        best = sims.argmax(axis=1) if n else np.zeros(0, np.int64)
        values = taxonomy[attr].values
        preds[attr] = [values[int(protos.values[attr][b])] for b in best]
        scores[attr] = np.round(sims[np.arange(n), best], _DIGITS).astype(np.float32)
    return preds, scores


def row_vectors(rows: Sequence[dict[str, Any]], dim: int, source: str = "journal") -> np.ndarray:
    """The ``(N, dim)`` float32 vectors of journal rows; ``source`` names the file in messages."""
    out = np.zeros((len(rows), dim), np.float32)
    for i, r in enumerate(rows):
        if not isinstance(r.get("vector"), str):
            raise VestisError(f"{source}: row {r['id']!r}: no 'vector'; not a vestis index journal?")
        out[i] = decode_vector(r["vector"], dim, f"{source}: row {r['id']!r}")
    return out


def relative_image(path: str, root: Path | None) -> str:
    """``path`` relative to the catalog root when inside it (as a POSIX path), else absolute."""
    p = Path(path).absolute()
    if root is not None and p.is_relative_to(root):
        return p.relative_to(root).as_posix()
    return str(p)


def items_from_rows(
    rows: Sequence[dict[str, Any]],
    keys: np.ndarray,
    *,
    root: Path | None,
    labels: Mapping[str, Mapping[str, str]],
    protos: Prototypes,
    taxonomy: Taxonomy,
    layout: Sequence[tuple[str, int]],
    vectors: np.ndarray | None = None,
) -> tuple[Items, np.ndarray]:
    """The item table and ``(N, D)`` vectors of decoded journal rows (error rows must be left out before).

    Predictions are the row's recognition columns when it has them, else the nearest prototype; an attribute
    that does not apply to the item's category (its label, else its prediction) is left empty. ``vectors``:
    the rows' vectors when already decoded (:func:`row_vectors`).
    """
    if vectors is None:
        vectors = row_vectors(rows, sum(d for _, d in layout))
    names = [a for a, _ in layout]
    near_p, near_s = nearest_prototype_predictions(vectors, layout, protos, taxonomy)
    lab = {a: [labels.get(r["id"], {}).get(a) for r in rows] for a in names}
    preds: dict[str, list[str | None]] = {a: [] for a in names}
    scores: dict[str, np.ndarray] = {a: np.full(len(rows), np.nan, np.float32) for a in names}
    for i, r in enumerate(rows):
        for a in names:
            if "pred" in r and a in r["pred"]:
                preds[a].append(r["pred"][a])
                scores[a][i] = np.nan if r["score"].get(a) is None else r["score"][a]
            else:
                preds[a].append(near_p[a][i])
                scores[a][i] = near_s[a][i]
    cat_attr = taxonomy.category_attribute
    if cat_attr in preds:
        for i in range(len(rows)):
            cat = lab[cat_attr][i] if lab[cat_attr][i] is not None else preds[cat_attr][i]
            for a in names:
                if not taxonomy[a].applies(cat):
                    preds[a][i], scores[a][i] = None, np.nan
    images = [relative_image(r["image"], root) for r in rows]
    return Items(np.asarray(keys, np.int64), [r["id"] for r in rows], images, lab, preds, scores), vectors


def manifest_labels(sources: Sequence[str | os.PathLike[str]], taxonomy: Taxonomy) -> dict[str, dict[str, str]]:
    """``{id: {attr: value}}`` from the manifests among ``sources`` (several values joined by ``|``).

    Attributes the taxonomy does not have, and values not in it, are left out: they cannot be searched.
    """
    from vestis.data.manifest import FORMATS, read_manifest

    out: dict[str, dict[str, str]] = {}
    for src in map(Path, sources):
        if src.is_dir() or src.suffix.lower() not in FORMATS:
            continue
        for rec in read_manifest(src).records:
            labels = {}
            for attr, values in rec.labels.items():
                known = [v for v in values if attr in taxonomy and v in taxonomy[attr].values]
                if known:
                    labels[attr] = "|".join(known)
            out[rec.id] = labels
    return out
