"""The files of a catalog index directory: ``index.json``, ``items.parquet``, ``vectors.npy``, prototypes.

``INDEX/``::

    index.json               format, version, model (absolute path, sha256, name), layout [[attr, d], ...],
                             taxonomy, preprocessing, backend {name, kind, params, file}, count, next_key,
                             catalog_root, skipped (how many images could not be decoded)
    skipped.json             those images: [{id, image, error}]
    items.parquet            key (int64, dense at build, stable after), id, image (relative to catalog_root
                             when inside it), label.<attr>, pred.<attr>, score.<attr> per attribute
    vectors.npy              (N, D) float32, rows in items order, sub-embeddings in layout order
    prototypes.safetensors   per attribute a (V, d_t) tensor of unit prototypes; the value names in the metadata
    vectors.faiss | milvus.db  the backend's own file; a Milvus collection also holds, per attribute, the item's
                             values (label, else prediction) as a ``str_list`` field named ``attr_<i>`` (taxonomy
                             order; ``backend.fields`` of index.json maps the attributes to them), so ``where``
                             filters run inside Milvus
    build.jsonl, build.model.json  only while a build is unfinished: its journal and the model writing it

Every file is written atomically (temporary file + ``os.replace``), and ``index.json`` last: it is what makes a
directory an index. Images outside the catalog root (the folder of the catalog's sources) are indexed under
their absolute path, and :meth:`~vestis.retrieval.catalog_index.CatalogIndex.image_path` refuses them. Several
values of a multi-label attribute are joined by ``|`` as in a manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.io import atomic_write, atomic_write_bytes, atomic_write_text
from vestis.retrieval.prototypes import GLOBAL, Prototypes, prototypes

__all__ = [
    "BACKEND_FILES",
    "FORMAT",
    "ITEMS",
    "META",
    "MILVUS_TOKEN_ENV",
    "PROTOTYPES",
    "VECTORS",
    "VERSION",
    "Items",
    "attribute_fields",
    "field_values",
    "file_sha256",
    "labelled_prototypes",
    "load_prototypes",
    "read_items",
    "read_meta",
    "save_prototypes",
    "write_items",
    "write_meta",
    "write_vectors",
]

FORMAT = "vestis-catalog-index"
VERSION = 1
META, ITEMS, VECTORS, PROTOTYPES = "index.json", "items.parquet", "vectors.npy", "prototypes.safetensors"
BACKEND_FILES = {"faiss": "vectors.faiss", "milvus": "milvus.db"}
MILVUS_TOKEN_ENV = "VESTIS_MILVUS_TOKEN"  # Milvus credentials: read at connection, never stored in the index


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Items:
    """The item table in memory: one entry per indexed image, in ``vectors.npy`` row order.

    Attributes:
        keys: ``(N,)`` int64 backend ids.
        ids: catalog ids.
        images: image paths (relative to the catalog root when inside it).
        labels: ``{attr: [value | None]}`` from the manifest.
        preds: ``{attr: [value | None]}`` predicted.
        scores: ``{attr: (N,) float32}`` the prediction's probability or prototype similarity (NaN: none).
    """

    keys: np.ndarray
    ids: list[str]
    images: list[str]
    labels: dict[str, list[str | None]]
    preds: dict[str, list[str | None]]
    scores: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: Sequence[int] | np.ndarray) -> Items:
        rows = np.asarray(rows, dtype=np.int64)
        pick = rows.tolist()
        return Items(
            self.keys[rows],
            [self.ids[i] for i in pick],
            [self.images[i] for i in pick],
            {a: [v[i] for i in pick] for a, v in self.labels.items()},
            {a: [v[i] for i in pick] for a, v in self.preds.items()},
            {a: v[rows] for a, v in self.scores.items()},
        )

    def concat(self, other: Items) -> Items:
        return Items(
            np.concatenate([self.keys, other.keys]),
            self.ids + other.ids,
            self.images + other.images,
            {a: v + other.labels[a] for a, v in self.labels.items()},
            {a: v + other.preds[a] for a, v in self.preds.items()},
            {a: np.concatenate([v, other.scores[a]]) for a, v in self.scores.items()},
        )

    def value(self, attr: str, row: int) -> str | None:
        """The label when the manifest has one, else the prediction."""
        label = self.labels[attr][row]
        return label if label is not None else self.preds[attr][row]


def attribute_fields(taxonomy: Taxonomy) -> dict[str, str]:
    """Attribute -> the name of its Milvus scalar field (attribute names need not be valid field names)."""
    return {a: f"attr_{i}" for i, a in enumerate(taxonomy.names)}


def field_values(items: Items, fields: Mapping[str, str]) -> dict[str, list[list[str]]]:
    """Per Milvus field, each item's values of its attribute (label, else prediction; ``[]`` when neither)."""
    out = {}
    for attr, field in fields.items():
        vals = (items.value(attr, r) for r in range(len(items)))
        out[field] = [v.split("|") if v else [] for v in vals]
    return out


def write_items(path: Path, items: Items, attrs: Sequence[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, Any] = {
        "key": pa.array(items.keys, pa.int64()),
        "id": pa.array(items.ids, pa.string()),
        "image": pa.array(items.images, pa.string()),
    }
    for a in attrs:
        cols[f"label.{a}"] = pa.array(items.labels[a], pa.string())
        cols[f"pred.{a}"] = pa.array(items.preds[a], pa.string())
        cols[f"score.{a}"] = pa.array(items.scores[a], pa.float32(), mask=np.isnan(items.scores[a]))
    table = pa.table(cols)
    atomic_write(path, lambda f: pq.write_table(table, f))


def read_items(path: Path, attrs: Sequence[str]) -> Items:
    import pyarrow.parquet as pq

    try:
        t = pq.read_table(path)
        col = {name: t.column(name) for name in t.column_names}
        keys = col["key"].to_numpy().astype(np.int64)
        items = Items(
            keys,
            col["id"].to_pylist(),
            col["image"].to_pylist(),
            {a: col[f"label.{a}"].to_pylist() for a in attrs},
            {a: col[f"pred.{a}"].to_pylist() for a in attrs},
            {a: col[f"score.{a}"].to_numpy(zero_copy_only=False).astype(np.float32) for a in attrs},
        )
    except KeyError as e:
        raise VestisError(f"{path}: no column {e.args[0]!r}; not written by this vestis index format") from None
    except (OSError, ValueError) as e:  # pyarrow's errors derive from these
        raise VestisError(f"{path}: not a readable Parquet item table ({e})") from None
    return items


def write_vectors(path: Path, vectors: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(vectors, dtype=np.float32)))


def write_meta(folder: Path, meta: Mapping[str, Any]) -> None:
    atomic_write_text(folder / META, json.dumps(dict(meta), indent=1, ensure_ascii=False) + "\n")


def read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META
    if not path.is_file():
        raise VestisError(f"{folder}: not a vestis catalog index (no {META}); build one with `vestis index`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VestisError(f"{path}: not a JSON object ({e}); expected a vestis catalog index") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise VestisError(f"{path}: format is not {FORMAT!r}; expected a vestis catalog index")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise VestisError(f"{path}: index version {meta.get('version')!r} is not one this vestis reads (<= {VERSION})")
    missing = [k for k in ("model", "layout", "taxonomy", "backend", "count", "next_key") if k not in meta]
    if missing:
        raise VestisError(f"{path}: missing entries {missing}")
    return meta


# --- prototypes ------------------------------------------------------------------------------------------------
def labelled_prototypes(
    vectors: np.ndarray, layout: Sequence[tuple[str, int]], labels: Mapping[str, Sequence[str | None]], tax: Taxonomy
) -> Prototypes:
    """Global prototypes (mean unit sub-embedding per value, re-normalised) from the labelled rows.

    A row labelled with several values of a multi-label attribute counts for each of them.
    """
    emb: dict[str, np.ndarray] = {}
    codes: dict[str, np.ndarray] = {}
    start = 0
    for attr, d in layout:
        part = vectors[:, start : start + d]  # (N, d_t)
        start += d
        rows, cs = [], []
        for i, v in enumerate(labels.get(attr, ())):
            for name in () if v is None else v.split("|"):
                if name in tax[attr].values:
                    rows.append(i)
                    cs.append(tax[attr].index(name))
        emb[attr] = part[np.asarray(rows, dtype=np.int64)] if rows else np.zeros((0, d), np.float32)
        codes[attr] = np.asarray(cs, dtype=np.int64)
    return prototypes(emb, codes)


def save_prototypes(path: Path, protos: Prototypes, tax: Taxonomy) -> None:
    from safetensors.numpy import save

    tensors, names = {}, {}
    for attr in protos.attributes:
        glob = protos.categories[attr] == GLOBAL
        tensors[attr] = np.ascontiguousarray(protos.vectors[attr][glob], dtype=np.float32)  # (V, d_t)
        names[attr] = [tax[attr].values[int(c)] for c in protos.values[attr][glob]]
        counts = protos.counts[attr][glob]
        tensors[f"{attr}.__count__"] = np.ascontiguousarray(counts, dtype=np.int64)
    atomic_write_bytes(path, save(tensors, metadata={"values": json.dumps(names, ensure_ascii=False)}))


def load_prototypes(path: Path, tax: Taxonomy) -> Prototypes:
    """Prototypes with value codes of ``tax`` (values the taxonomy lacks are an error naming them)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            names = json.loads((f.metadata() or {}).get("values", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise VestisError(f"{path}: not a readable prototypes file ({e})") from None
    vectors, values, cats, counts = {}, {}, {}, {}
    for attr, vals in names.items():
        if attr not in tax or attr not in tensors:
            raise VestisError(f"{path}: prototypes for {attr!r}, which the index's taxonomy does not have")
        unknown = [v for v in vals if v not in tax[attr].values]
        if unknown:
            raise VestisError(f"{path}: {attr}: values {unknown} are not in the taxonomy")
        vectors[attr] = tensors[attr].astype(np.float32)
        values[attr] = np.asarray([tax[attr].index(v) for v in vals], dtype=np.int64)
        cats[attr] = np.full(len(vals), GLOBAL, dtype=np.int64)
        counts[attr] = tensors.get(f"{attr}.__count__", np.ones(len(vals), np.int64)).astype(np.int64)
    return Prototypes(vectors, values, cats, counts, True)
