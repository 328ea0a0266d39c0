"""A searchable catalog: "items like this one, but in black", "like this one, same neckline only".

:class:`CatalogIndex` opens a directory written by :func:`vestis.retrieval.index_build.build_index` (format in
:mod:`vestis.retrieval.catalog_store`) and searches it through its vector backend (``INDEXES``: FAISS or Milvus)::

    idx = CatalogIndex.open("runs/index")
    hits = idx.search("shirt.jpg", set={"baseColour": "Black"}, only=["neckline", "sleeve"],
                      where={"category": ["Shirts"]}, k=30)

The query is an image (a path or a PIL image, decoded by the bounded decoder of ``vestis predict``) or a catalog id
(its stored vector). Its sub-embeddings ``q_t`` are unit vectors; ``set`` replaces ``q_t`` by the prototype of the
value (``additive=True``: ADDE-M's ``q_t + p(new) - p(old)``, see :func:`vestis.retrieval.prototypes.manipulate`);
``only`` keeps the attributes ``S`` (weight 1) and drops the others (weight 0). The backend searches with the
weighted concatenation, so its inner product is ``sum_{t in S} s_t`` with ``s_t = <q_t, g_t>``; each hit's ``s_t``
are then recomputed from ``vectors.npy`` (exact even for an approximate backend; an IVF-PQ backend is asked for
``IVFPQ_REFINE`` x ``k`` candidates, so this is its exact re-ranking) and the hits ordered by their sum, ties to the
lower key, as :func:`vestis.retrieval.search.rank` does. ``distance`` is the squared L2 distance over the kept
parts, ``sum_{t in S} (2 - 2 s_t)``. ``where`` is a pre-filter: an item matches an attribute when its label, else
its prediction, is one of the values. FAISS receives it as the ids of the matching items (an id selector); a Milvus
index built by ``vestis index`` runs it natively, as a filter expression on the per-attribute fields stored with the
vectors (``array_contains_any(attr_0, ["Shirts"]) and ...``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.inference.tagging import decode_image
from vestis.retrieval.catalog_store import (
    BACKEND_FILES,
    ITEMS,
    MILVUS_TOKEN_ENV,
    PROTOTYPES,
    VECTORS,
    Items,
    field_values,
    file_sha256,
    load_prototypes,
    read_items,
    read_meta,
)
from vestis.retrieval.index.milvus_index import any_of
from vestis.retrieval.prototypes import manipulate

__all__ = ["IVFPQ_REFINE", "CatalogIndex", "Hit", "open_backend"]

# an IVF-PQ backend returns this many x k candidates, re-ranked by exact inner products from vectors.npy
# (recall@30 0.83 -> 0.98 at 1M vectors, docs/benchmarks.md "Vector indexes")
IVFPQ_REFINE = 4


@dataclass(frozen=True)
class Hit:
    """One search result.

    Attributes:
        id: the catalog id.
        image: the image path as stored (relative to the catalog root when inside it).
        score: ``sum_{t in S} s_t``, higher is more similar.
        distance: ``sum_{t in S} (2 - 2 s_t)``, the squared L2 distance over the kept sub-embeddings.
        per_attribute: ``{attr: s_t}`` for every kept attribute.
        attributes: ``{attr: value}``, the label where the catalog has one, else the prediction (``None``: neither).
    """

    id: str
    image: str
    score: float
    distance: float
    per_attribute: dict[str, float]
    attributes: dict[str, str | None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "image": self.image,
            "score": self.score,
            "distance": self.distance,
            "per_attribute": dict(self.per_attribute),
            "attributes": dict(self.attributes),
        }


def open_backend(name: str, path: Path, **options: Any) -> Any:
    """The saved vector index of backend ``name`` at ``path``."""
    from vestis.retrieval.index import INDEXES, open_index

    if name not in INDEXES:
        raise VestisError(f"backend {name!r}: expected one of {INDEXES.names()}")
    return open_index(name, path, **options)


def _choices(values: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(map(str, values[:limit]))
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


class CatalogIndex:
    """An opened index directory (see the module docstring). Build one with ``build_index``.

    Attributes:
        path: the directory.
        meta: the parsed ``index.json``.
        taxonomy: the model's attributes.
        layout: ``[(attr, d_t)]`` in vector order.
        items: the item table.
        vectors: ``(N, D)`` float32, in item order.
        prototypes: the per-value prototypes.
        backend: the vector index (``VectorIndex``).
    """

    def __init__(self, path: Path, meta: dict[str, Any], items: Items, vectors: np.ndarray, protos: Any, backend: Any):
        self.path = path
        self.meta = meta
        self.taxonomy = Taxonomy.from_dict(meta["taxonomy"], source=str(path / "index.json"))
        self.layout = [(str(a), int(d)) for a, d in meta["layout"]]
        self.items = items
        self.vectors = vectors
        self.prototypes = protos
        self.backend = backend
        # attribute -> Milvus scalar field holding its values: where then runs inside Milvus (empty for FAISS)
        self._fields: dict[str, str] = dict(meta["backend"].get("fields") or {})
        self._embedder: Any = None
        self._reindex()

    def _reindex(self) -> None:
        self._row_of_id = {i: r for r, i in enumerate(self.items.ids)}
        self._row_of_key = {int(k): r for r, k in enumerate(self.items.keys)}
        ends = np.cumsum([d for _, d in self.layout]).tolist()
        self._slices = {a: slice(e - d, e) for (a, d), e in zip(self.layout, ends, strict=True)}
        self._masks: dict[tuple[str, str], np.ndarray] = {}  # (attr, value) -> (N,) bool, filled by where

    def _mask(self, attr: str, value: str) -> np.ndarray:
        """Rows whose label, else prediction, of ``attr`` holds ``value``; cached (a catalog changes rarely)."""
        got = self._masks.get((attr, value))
        if got is None:
            vals = (self.items.value(attr, r) for r in range(len(self)))
            got = np.fromiter((v is not None and value in v.split("|") for v in vals), bool, len(self))
            self._masks[(attr, value)] = got
        return got

    # --- opening --------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], **backend_options: Any) -> CatalogIndex:
        """Open the index at ``path``.

        Raises:
            VestisError: not an index directory, a missing or unreadable file, files that disagree on the count.
        """
        path = Path(path)
        meta = read_meta(path)
        tax = Taxonomy.from_dict(meta["taxonomy"], source=str(path / "index.json"))
        items = read_items(path / ITEMS, tax.names)
        try:
            vectors = np.load(path / VECTORS, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise VestisError(f"{path / VECTORS}: not a readable .npy array ({e})") from None
        protos = load_prototypes(path / PROTOTYPES, tax)
        b = meta["backend"]
        if b["name"] == "milvus":
            backend_options = {"collection": b.get("collection", "vestis"), **backend_options}
            if os.environ.get(MILVUS_TOKEN_ENV):
                backend_options.setdefault("token", os.environ[MILVUS_TOKEN_ENV])
        where = b.get("uri") or path / b.get("file", BACKEND_FILES.get(b["name"], ""))
        backend = open_backend(b["name"], where, **backend_options)
        dim = sum(int(d) for _, d in meta["layout"])
        counts = {"index.json": meta["count"], ITEMS: len(items), VECTORS: len(vectors), "backend": len(backend)}
        if len(set(counts.values())) != 1 or vectors.shape[1:] != (dim,):
            backend.close()
            raise VestisError(
                f"{path}: the index files disagree ({counts}, vectors {vectors.shape}, layout width {dim}); "
                "rebuild it with `vestis index --restart`"
            )
        return cls(path, meta, items, vectors, protos, backend)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> CatalogIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.items)

    @property
    def catalog_root(self) -> Path | None:
        root = self.meta.get("catalog_root")
        return Path(root) if root else None

    def info(self) -> dict[str, Any]:
        """A JSON-able summary: count, model, layout, backend (with the backend's own ``info()``)."""
        return {
            "path": str(self.path),
            "count": len(self),
            "model": dict(self.meta["model"]),
            "layout": [[a, d] for a, d in self.layout],
            "backend": self.backend.info(),
            "catalog_root": self.meta.get("catalog_root"),
            "prototypes": {a: len(v) for a, v in self.prototypes.values.items()},
        }

    # --- the model ------------------------------------------------------------------------------------------
    def embedder(self, device: str | None = None) -> Any:
        """The :class:`~vestis.inference.embedder.Embedder` of the model file the index was built with.

        Raises:
            VestisError: the file is gone, or is not the file the index was built with (its sha256 differs).
        """
        if self._embedder is None:
            from vestis.inference.embedder import Embedder

            model = self.meta["model"]
            path = Path(model["path"])
            if not path.is_file():
                raise VestisError(f"{path}: the index's model file is gone; image queries need it (id queries do not)")
            if model.get("sha256") and file_sha256(path) != model["sha256"]:
                raise VestisError(f"{path}: changed since the index was built (sha256 differs); rebuild the index")
            self._embedder = Embedder.from_path(path, device=device)
        return self._embedder

    # --- lookups --------------------------------------------------------------------------------------------
    def row(self, item_id: str) -> int:
        """The row of catalog id ``item_id``.

        Raises:
            VestisError: an unknown id (with some known ones).
        """
        r = self._row_of_id.get(str(item_id))
        if r is None:
            raise VestisError(f"id {item_id!r}: not in the index; known ids include {_choices(self.items.ids, 10)}")
        return r

    def attributes(self, row: int) -> dict[str, str | None]:
        return {a: self.items.value(a, row) for a in self.taxonomy.names}

    def item(self, item_id: str) -> dict[str, Any]:
        """``{"id", "image", "labels", "predictions", "scores", "attributes"}`` of one item."""
        r = self.row(item_id)
        names = self.taxonomy.names
        return {
            "id": self.items.ids[r],
            "image": self.items.images[r],
            "labels": {a: self.items.labels[a][r] for a in names},
            "predictions": {a: self.items.preds[a][r] for a in names},
            "scores": {a: None if np.isnan(s := float(self.items.scores[a][r])) else s for a in names},
            "attributes": self.attributes(r),
        }

    def image_path(self, item_id: str) -> Path:
        """The image file of an item, resolved; refused when it lies outside the catalog root.

        Raises:
            VestisError: an unknown id, or a path that resolves outside the catalog root.
        """
        stored = Path(self.items.images[self.row(item_id)])
        root = self.catalog_root
        path = (root / stored if root is not None and not stored.is_absolute() else stored).resolve()
        if root is not None and not path.is_relative_to(root.resolve()):
            raise VestisError(f"id {item_id!r}: its image resolves outside the catalog root {root}")
        return path

    def query_vector(self, query: str | os.PathLike[str] | Image.Image) -> tuple[np.ndarray, int | None]:
        """``(vector (D,), row or None)``: a catalog id's stored vector, or the embedding of an image.

        A ``str`` is an id when the index has it, else an image path; a :class:`~pathlib.Path` is an image path.
        """
        if isinstance(query, str) and query in self._row_of_id:
            r = self._row_of_id[query]
            return np.asarray(self.vectors[r], dtype=np.float32), r
        emb = self.embedder()
        size, pad = emb.image_size, int(emb.preprocessing["pad_value"])
        from vestis.retrieval.catalog_embed import max_pixels

        cap = max_pixels(emb)
        if isinstance(query, Image.Image):
            if query.width * query.height > cap:
                raise VestisError(f"query image: {query.width}x{query.height} pixels, over the cap of {cap:,}")
            from vestis.data.transforms import letterbox_array

            arr = letterbox_array(query.convert("RGB"), size, pad)
        else:
            path = Path(query)
            if isinstance(query, str) and not path.is_file():
                raise VestisError(f"{query!r}: neither an id in the index nor an image file; ids include "
                                  f"{_choices(self.items.ids, 10)}")  # fmt: skip
            arr, err = decode_image(path, size, pad, cap)
            if arr is None:
                raise VestisError(f"{path}: {err}")
        return emb.embed_concat(arr[None])[0], None

    # --- updates in place -----------------------------------------------------------------------------------
    def add(
        self,
        catalog: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        batch_size: int = 32,
        workers: int = 0,
        device: str | None = None,
    ) -> int:
        """Embed the images of ``catalog`` (folder, manifest or images) and add them; returns how many.

        New items get fresh keys; their attributes are predicted as at build time (recognition columns, else the
        nearest of the index's prototypes); unreadable images are skipped. Every file is rewritten atomically.

        Raises:
            VestisError: an id that is already in the index, bad inputs.
        """
        from vestis.inference.tagging import collect_inputs
        from vestis.retrieval.catalog_embed import embed_rows, items_from_rows, manifest_labels

        sources = [catalog] if isinstance(catalog, str | os.PathLike) else list(catalog)
        new = collect_inputs(sources)
        clash = [it.id for it in new if it.id in self._row_of_id]
        if clash:
            raise VestisError(f"add: ids already in the index: {_choices(clash, 10)}; remove them first")
        emb = self.embedder(device)
        rows = [r for batch in embed_rows(emb, new, batch_size=batch_size, workers=workers) for r in batch]
        good = [r for r in rows if "error" not in r]
        start = int(self.meta["next_key"])
        keys = np.arange(start, start + len(good), dtype=np.int64)
        labels = manifest_labels(sources, self.taxonomy)
        items, vectors = items_from_rows(
            good, keys, root=self.catalog_root, labels=labels, protos=self.prototypes, taxonomy=self.taxonomy,
            layout=self.layout,
        )  # fmt: skip
        if len(good):
            self.backend.add(keys, vectors, **({"fields": field_values(items, self._fields)} if self._fields else {}))
        self._commit(self.items.concat(items), np.concatenate([np.asarray(self.vectors), vectors]), start + len(good))
        return len(good)

    def remove(self, ids: Sequence[str]) -> int:
        """Remove the items of catalog ``ids`` from the index; returns how many.

        Raises:
            VestisError: an id that is not in the index (nothing is removed then).
        """
        rows = [self.row(i) for i in dict.fromkeys(map(str, ids))]
        self.backend.remove(self.items.keys[rows])
        keep = np.setdiff1d(np.arange(len(self)), rows)
        self._commit(self.items.take(keep), np.asarray(self.vectors)[keep], int(self.meta["next_key"]))
        return len(rows)

    def _commit(self, items: Items, vectors: np.ndarray, next_key: int) -> None:
        """Write the backend, the vectors, the items, then ``index.json`` (the count that ties them)."""
        from vestis.retrieval.catalog_store import write_items, write_meta, write_vectors

        self.backend.save()
        write_vectors(self.path / VECTORS, vectors)
        write_items(self.path / ITEMS, items, self.taxonomy.names)
        self.meta = {**self.meta, "count": len(items), "next_key": int(next_key)}
        write_meta(self.path, self.meta)
        self.items, self.vectors = items, np.load(self.path / VECTORS, mmap_mode="r")
        self._reindex()

    # --- search ---------------------------------------------------------------------------------------------
    def _check_attr(self, attr: str, what: str) -> None:
        if attr not in self.taxonomy:
            raise VestisError(f"{what}: unknown attribute {attr!r}; expected one of {_choices(self.taxonomy.names)}")

    def _check_value(self, attr: str, value: str, what: str) -> None:
        values = self.taxonomy[attr].values
        if value not in values:
            raise VestisError(f"{what}: {attr}={value!r} is not a value of {attr}; expected one of {_choices(values)}")

    def _where(self, where: Mapping[str, Sequence[str] | str]) -> dict[str, list[str]]:
        """``where`` checked: attribute -> its wanted values, sorted."""
        out = {}
        for attr, vals in where.items():
            self._check_attr(attr, "where")
            wanted = {vals} if isinstance(vals, str) else set(vals)
            if not wanted:
                raise VestisError(f"where: {attr}: expected at least one value")
            for v in wanted:
                self._check_value(attr, v, "where")
            out[attr] = sorted(wanted)
        return out

    def allowed_keys(self, where: Mapping[str, Sequence[str] | str]) -> np.ndarray:
        """The keys of the items matching every ``attr: [values]`` (label, else prediction, among the values)."""
        keep = np.ones(len(self), dtype=bool)
        for attr, wanted in self._where(where).items():
            either = np.zeros(len(self), dtype=bool)
            for v in wanted:
                either |= self._mask(attr, v)
            keep &= either
        return self.items.keys[keep]

    def filter_expression(self, where: Mapping[str, Sequence[str] | str]) -> str | None:
        """``where`` as a Milvus filter expression on the stored attribute fields; ``None`` for a FAISS index."""
        if not self._fields:
            return None
        return " and ".join(any_of(self._fields[a], vals) for a, vals in self._where(where).items())

    def search(
        self,
        query: str | os.PathLike[str] | Image.Image,
        *,
        set: Mapping[str, str] | None = None,  # the documented option name; shadows the builtin here only
        additive: bool = False,
        only: Sequence[str] | None = None,
        where: Mapping[str, Sequence[str] | str] | None = None,
        k: int = 30,
        exclude_query: bool = True,
        **search_params: Any,
    ) -> list[Hit]:
        """The ``k`` most similar items (see the module docstring).

        Args:
            query: an image (path or PIL image) or a catalog id.
            set: ``{attr: value}`` manipulations: the query's sub-embedding becomes the value's prototype.
            additive: ADDE-M's additive manipulation instead of replacement.
            only: the attributes compared (default: all).
            where: ``{attr: [values]}`` pre-filter on the labels, else the predictions.
            k: hits wanted.
            exclude_query: for an id query, leave the item itself out of the hits.
            **search_params: the backend's query-time knobs (``nprobe``, ``ef_search``).

        Raises:
            VestisError: an unknown id, attribute or value (naming the valid ones), a value without prototype.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise VestisError(f"k: expected an integer >= 1, got {k!r}")
        changes = dict(set or {})
        for attr, value in changes.items():
            self._check_attr(attr, "set")
            self._check_value(attr, value, "set")
        kept = list(self.taxonomy.names) if only is None else list(dict.fromkeys(only))
        if not kept:
            raise VestisError("only: expected at least one attribute")
        for attr in kept:
            self._check_attr(attr, "only")
        expr = self.filter_expression(where) if where else None
        allow = self.allowed_keys(where) if where and expr is None else None
        if expr is not None:
            search_params["expr"] = expr
        vec, qrow = self.query_vector(query)
        sub = {a: vec[sl] for a, sl in self._slices.items()}
        if changes:
            codes, query_codes = {}, {}
            for attr, value in changes.items():
                code = self.taxonomy[attr].index(value)
                if code not in _set_of(self.prototypes.values.get(attr)):
                    raise VestisError(f"set: {attr}={value!r} has no prototype (no labelled item in the catalog has it)"
                                      f"; values with one: {_choices(self._proto_values(attr))}")  # fmt: skip
                codes[attr] = code
                label = self.items.labels[attr][qrow] if qrow is not None else None
                if label is not None and "|" not in label and label in self.taxonomy[attr].values:
                    query_codes[attr] = self.taxonomy[attr].index(label)
            sub = manipulate(sub, codes, self.prototypes, mode="additive" if additive else "replace",
                             query_codes=query_codes)  # fmt: skip
        weighted = np.concatenate([sub[a] * (1.0 if a in kept else 0.0) for a, _ in self.layout]).astype(np.float32)
        if len(self) == 0 or (allow is not None and len(allow) == 0):
            return []
        exclude = int(self.items.keys[qrow]) if exclude_query and qrow is not None else None
        want = int(k) + (exclude is not None)
        if self.meta["backend"].get("kind") == "ivfpq":
            want *= IVFPQ_REFINE  # product-quantised scores are coarse: re-rank more candidates exactly below
        want = min(want, len(self))
        keys, _ = self.backend.search(weighted[None], want, allow=allow, **search_params)  # (1, want)
        keys = [int(x) for x in keys[0] if x >= 0 and int(x) != exclude]
        rows = np.asarray([self._row_of_key[x] for x in keys], dtype=np.int64)
        if rows.size == 0:
            return []
        per = {a: np.asarray(self.vectors[rows][:, self._slices[a]]) @ sub[a] for a in kept}  # {attr: (H,)}
        total = np.sum([per[a] for a in kept], axis=0)  # (H,)
        order = np.lexsort((self.items.keys[rows], -total))[: int(k)]
        return [
            Hit(
                id=self.items.ids[rows[j]],
                image=self.items.images[rows[j]],
                score=float(total[j]),
                distance=float(sum(2.0 - 2.0 * per[a][j] for a in kept)),
                per_attribute={a: float(per[a][j]) for a in kept},
                attributes=self.attributes(int(rows[j])),
            )
            for j in order
        ]

    def _proto_values(self, attr: str) -> list[str]:
        vals = self.taxonomy[attr].values
        return [vals[int(c)] for c in self.prototypes.values.get(attr, ())]


def _set_of(codes: np.ndarray | None) -> frozenset[int]:
    return frozenset() if codes is None else frozenset(int(c) for c in codes)
