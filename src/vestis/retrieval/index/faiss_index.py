"""FAISS, the embedded backend: exact (flat), HNSW and IVF-PQ inner-product indexes in one file.

- ``flat``: ``IndexIDMap2(IndexFlatIP)``, exact; deletes in place.
- ``hnsw``: ``IndexIDMap2(IndexHNSWFlat)`` (``M``, ``ef_construction``; ``ef_search`` at query time). An HNSW
  graph cannot drop a node, so removed ids become tombstones that every search filters out (inside the search,
  so a row still gets ``k`` live hits) until :meth:`FaissIndex.rebuild` builds the graph again without them.
- ``ivfpq``: ``IndexIVFPQFastScan`` (4-bit codes; ``IndexIVFPQ`` for other ``nbits``) with ``nlist``, ``m``,
  ``nbits`` (``nprobe`` at query time) for catalogs whose float32 vectors do not fit in memory: trained on a
  sample of the first vectors added, parameters sized from their count unless given; deletes in place.
  Product quantisation alone caps recall (about 0.7-0.85 recall@30 at one code byte per 4 dimensions);
  :meth:`FaissIndex.attach_vectors` re-ranks ``refine`` x ``k`` candidates with exact scores read from the
  float32 vectors on disk (a memory map of ``vectors.npy``), which restores recall while memory stays at the
  codes' size.

The file holds a small header (kind, dimension, parameters, tombstones) followed by FAISS's own serialisation,
written through ``vestis.io.atomic_write``: a crash while saving leaves the previous file as it was.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import IO, Any, ClassVar, Self

import numpy as np
from numpy.typing import ArrayLike

from vestis.errors import VestisError
from vestis.io import atomic_write
from vestis.retrieval.index.base import (
    INDEXES,
    VectorIndex,
    check_ids,
    check_k,
    check_kind,
    check_vectors,
    pad_results,
)

__all__ = ["FaissIndex", "import_faiss"]

_MAGIC = b"VESTIS-FAISS\x00\x00\x00\x01"  # 16 bytes; the last one is the format version
_HNSW_DEFAULTS = {"M": 32, "ef_construction": 80, "ef_search": 128}
# HNSW with a selective pre-filter wanders the graph through rejected nodes and can miss allowed ones; below
# this many allowed ids an exact scan of their stored vectors is both exact and cheaper
_EXACT_ALLOW = 20_000


def import_faiss() -> Any:
    """The ``faiss`` module, or a ``VestisError`` naming the package to install."""
    try:
        import faiss
    except ImportError as e:
        raise VestisError(f"the FAISS backend needs faiss-cpu: pip install 'vestis[search]' ({e})") from None
    return faiss


def ivfpq_defaults(n: int, dim: int) -> dict[str, int]:
    """IVF-PQ parameters sized from the number of training vectors ``n``.

    ``nlist`` ~ sqrt(n) lists (at least 39 training points each, FAISS's k-means minimum); ``m`` the largest
    divisor of ``dim`` up to ``dim / 2`` with ``nbits`` 4, FAISS's fast-scan layout (16 centroids per 2-d
    sub-vector: codes of 1/16 of the float32 size, cheap to train at any ``n``, scanned with SIMD lookups; nbits 8
    selects the classic ``IndexIVFPQ``); ``nprobe`` a quarter of the lists (at least 8), since the neighbours of a
    multi-attribute embedding spread over many lists.
    """
    nlist = max(1, min(round(math.sqrt(n)), n // 39))
    m = max(d for d in range(1, max(1, dim // 2) + 1) if dim % d == 0)
    return {"nlist": nlist, "m": m, "nbits": 4, "nprobe": min(nlist, max(8, nlist // 4))}


@INDEXES.register("faiss")
class FaissIndex(VectorIndex):
    """A FAISS index of one ``kind`` stored in one file (see the module docstring)."""

    backend: ClassVar[str] = "faiss"

    def __init__(self, index: Any, *, kind: str, dim: int, path: Path, params: dict[str, Any], dead: np.ndarray):
        self._faiss = import_faiss()
        self._index = index  # None: an IVF-PQ index not trained yet
        self.kind = kind
        self.dim = dim
        self.path = path
        self.params = params
        self._dead = dead  # sorted int64 tombstones (HNSW only)
        self._ids = self._live_ids()  # sorted int64 live ids
        self._dead_sel: Any = None  # cached selector excluding the tombstones
        self._exact_rows: Any = None  # (rows, D) float32 indexed by id, for IVF-PQ re-ranking
        self._refine = 0

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def create(cls, kind: str, dim: int, *, path: str | os.PathLike[str], **params: Any) -> Self:
        """A new, empty index; nothing is written until :meth:`save`.

        Args:
            kind: ``flat``, ``hnsw`` or ``ivfpq``.
            dim: vector dimension.
            path: the file :meth:`save` writes.
            **params: HNSW ``M``, ``ef_construction``, ``ef_search``; IVF-PQ ``nlist``, ``m``, ``nbits``,
                ``nprobe``, ``train_size`` (defaults from the first batch added, see :func:`ivfpq_defaults`).
        """
        faiss = import_faiss()
        check_kind(kind)
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
            raise VestisError(f"dim: expected a positive integer, got {dim!r}")
        dim = int(dim)
        allowed = {"flat": set(), "hnsw": set(_HNSW_DEFAULTS), "ivfpq": {"nlist", "m", "nbits", "nprobe", "train_size"}}
        unknown = sorted(set(params) - allowed[kind])
        if unknown:
            raise VestisError(f"{kind} index: unknown parameter(s) {unknown}; expected {sorted(allowed[kind])}")
        for name, value in params.items():
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise VestisError(f"{kind} index: parameter {name} expected a positive integer, got {value!r}")
        params = {k: int(v) for k, v in params.items()}
        index = None
        if kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        elif kind == "hnsw":
            params = {**_HNSW_DEFAULTS, **params}
            index = faiss.IndexIDMap2(faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT))
            faiss.downcast_index(index.index).hnsw.efConstruction = params["ef_construction"]
        elif "m" in params and dim % params["m"]:
            raise VestisError(f"ivfpq index: m={params['m']} must divide the dimension {dim}")
        elif params.get("nbits", 8) > 16:
            raise VestisError(f"ivfpq index: nbits expected at most 16, got {params['nbits']}")
        return cls(index, kind=kind, dim=dim, path=Path(path), params=params, dead=np.zeros(0, np.int64))

    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> Self:
        """The index saved at ``path`` by :meth:`save`."""
        faiss = import_faiss()
        if options:
            raise VestisError(f"faiss index: unknown option(s) {sorted(options)}")
        path = Path(path)
        try:
            f = path.open("rb")
        except OSError as e:
            raise VestisError(f"{path}: expected a vestis FAISS index file ({e.strerror})") from None
        with f:
            head = f.read(len(_MAGIC) + 8)
            if len(head) < len(_MAGIC) + 8 or head[: len(_MAGIC) - 1] != _MAGIC[:-1]:
                raise VestisError(f"{path}: expected a vestis FAISS index file (no vestis header)")
            if head[len(_MAGIC) - 1] != _MAGIC[-1]:
                raise VestisError(f"{path}: index format {head[len(_MAGIC) - 1]}, this vestis reads {_MAGIC[-1]}")
            (n_meta,) = struct.unpack("<Q", head[len(_MAGIC) :])
            try:
                meta = json.loads(f.read(n_meta).decode("utf-8"))
                dead = np.frombuffer(_read_exact(f, 8 * int(meta["dead"])), dtype="<i8").astype(np.int64)
                index = faiss.read_index(faiss.PyCallbackIOReader(f.read)) if meta["trained"] else None
                kind, dim, params = check_kind(meta["kind"]), int(meta["dim"]), dict(meta["params"])
            except (ValueError, KeyError, TypeError, RuntimeError, EOFError) as e:
                raise VestisError(f"{path}: expected a vestis FAISS index file, it is damaged ({e})") from None
        if index is not None and index.d != dim:
            raise VestisError(f"{path}: header says dimension {dim}, the FAISS index has {index.d}")
        return cls(index, kind=kind, dim=dim, path=path, params=params, dead=dead)

    # -- content --------------------------------------------------------------------------------------------
    def _live_ids(self) -> np.ndarray:
        faiss = self._faiss
        if self._index is None:
            return np.zeros(0, np.int64)
        if self.kind == "ivfpq":
            invlists = faiss.extract_index_ivf(self._index).invlists
            parts = []
            for lst in range(invlists.nlist):
                size = invlists.list_size(lst)
                if size:
                    ptr = invlists.get_ids(lst)
                    parts.append(faiss.rev_swig_ptr(ptr, size).copy())
                    invlists.release_ids(lst, ptr)
            ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        else:
            ids = faiss.vector_to_array(self._index.id_map)
        ids = np.sort(ids.astype(np.int64))
        return np.setdiff1d(ids, self._dead, assume_unique=True) if self._dead.size else ids

    def __len__(self) -> int:
        return int(self._ids.size)

    def _contains(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` are live: a binary search in the sorted ids, O(M log N) for a query's allow list."""
        pos = np.searchsorted(self._ids, ids)
        return (pos < self._ids.size) & (self._ids[np.minimum(pos, self._ids.size - 1)] == ids)

    def add(self, ids: ArrayLike, vectors: ArrayLike) -> None:
        """Insert ``vectors`` under ``ids``; an IVF-PQ index is trained on the first batch."""
        ids = check_ids(ids)
        x = check_vectors(vectors, self.dim, rows=ids.size)
        if ids.size == 0:
            return
        present = ids[np.isin(ids, self._ids)]
        if present.size:
            raise VestisError(f"ids: already in the index: {present[:5].tolist()}; remove them first")
        if self._dead.size and np.isin(ids, self._dead).any():
            self.rebuild()  # a tombstoned id comes back: its old graph node must go first
        if self._index is None:
            self._train(x)
        self._index.add_with_ids(x, ids)
        self._ids = np.union1d(self._ids, ids)

    def _train(self, x: np.ndarray) -> None:
        faiss = self._faiss
        defaults = ivfpq_defaults(x.shape[0], self.dim)
        p = {**defaults, **self.params}
        if self.dim % p["m"]:
            raise VestisError(f"ivfpq index: m={p['m']} must divide the dimension {self.dim}")
        need = max(p["nlist"], 2 ** p["nbits"])
        if x.shape[0] < need:
            raise VestisError(
                f"ivfpq index: the first batch added trains it and needs at least {need} vectors "
                f"(nlist={p['nlist']}, 2^nbits={2 ** p['nbits']}); got {x.shape[0]}"
            )
        p.setdefault("train_size", min(x.shape[0], max(64 * p["nlist"], 64 * 2 ** p["nbits"], 10_000), 500_000))
        quantizer = faiss.IndexFlatIP(self.dim)
        ip = faiss.METRIC_INNER_PRODUCT
        if p["nbits"] == 4:
            index = faiss.IndexIVFPQFastScan(quantizer, self.dim, p["nlist"], p["m"], 4, ip)
        else:
            index = faiss.IndexIVFPQ(quantizer, self.dim, p["nlist"], p["m"], p["nbits"], ip)
        rng = np.random.default_rng(0)  # a fixed sample: the same vectors give the same index
        sample = x if p["train_size"] >= x.shape[0] else x[np.sort(rng.choice(x.shape[0], p["train_size"], False))]
        index.train(sample)
        index.nprobe = p["nprobe"]
        self._index, self.params = index, p  # faiss's wrapper keeps the quantizer alive with the index

    def remove(self, ids: ArrayLike) -> int:
        """Delete ``ids``: in place for flat / IVF-PQ, as tombstones for HNSW (see :meth:`rebuild`)."""
        ids = np.unique(check_ids(np.unique(np.asarray(ids)), "ids"))
        hit = ids[self._contains(ids)] if self._ids.size else ids[:0]
        if hit.size == 0:
            return 0
        if self.kind == "hnsw":
            self._dead, self._dead_sel = np.union1d(self._dead, hit), None
        else:
            removed = self._index.remove_ids(self._faiss.IDSelectorBatch(hit))
            if removed != hit.size:  # the id bookkeeping and FAISS disagree: never go on silently
                raise RuntimeError(f"FAISS removed {removed} vectors, expected {hit.size}")
        self._ids = np.setdiff1d(self._ids, hit, assume_unique=True)
        return int(hit.size)

    def rebuild(self) -> None:
        """Build the HNSW graph again from the live vectors, dropping the tombstones (other kinds: no-op)."""
        if self.kind != "hnsw" or self._dead.size == 0:
            return
        faiss = self._faiss
        all_ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        keep = ~np.isin(all_ids, self._dead)
        vectors = self._index.index.reconstruct_n(0, self._index.index.ntotal)[keep]  # (live, D)
        fresh = faiss.IndexIDMap2(faiss.IndexHNSWFlat(self.dim, self.params["M"], faiss.METRIC_INNER_PRODUCT))
        faiss.downcast_index(fresh.index).hnsw.efConstruction = self.params["ef_construction"]
        if vectors.shape[0]:
            fresh.add_with_ids(np.ascontiguousarray(vectors), all_ids[keep])
        self._index, self._dead, self._dead_sel = fresh, np.zeros(0, np.int64), None

    def attach_vectors(self, vectors: Any, *, refine: int = 4) -> None:
        """Re-rank IVF-PQ results with exact inner products from ``vectors`` (row ``i`` is the vector of id ``i``).

        Args:
            vectors: ``(rows, D)`` float32, typically ``np.load("vectors.npy", mmap_mode="r")``: only the rows of
                the candidates are read, so the float32 catalog stays on disk. Not saved with the index: attach
                again after :meth:`open`, and after the catalog grows.
            refine: candidates fetched per hit (``refine * k``) before re-ranking; 0 turns re-ranking off.
        """
        if self.kind != "ivfpq":
            raise VestisError(f"attach_vectors: only an ivfpq index re-ranks; this one is {self.kind} (already exact)")
        shape = getattr(vectors, "shape", None)
        if shape is None or len(shape) != 2 or shape[1] != self.dim:
            raise VestisError(f"attach_vectors: expected a (rows, {self.dim}) array, got shape {shape}")
        if self._ids.size and self._ids[-1] >= shape[0]:
            raise VestisError(f"attach_vectors: {shape[0]} rows, but the index holds id {int(self._ids[-1])}")
        self._exact_rows, self._refine = vectors, _positive(refine, "refine") if refine else 0

    # -- search ---------------------------------------------------------------------------------------------
    def search(
        self,
        queries: ArrayLike,
        k: int,
        *,
        allow: ArrayLike | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        refine: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best live ids per query (see :meth:`VectorIndex.search`).

        Args:
            queries: ``(Q, D)``.
            k: hits per query.
            allow: ids a hit must be one of; applied inside the search (FAISS ``IDSelectorBatch``).
            nprobe: IVF lists scanned per query (IVF-PQ; default the index's ``nprobe``).
            ef_search: HNSW candidate list size (default the index's ``ef_search``; at least ``k``).
            refine: IVF-PQ candidates per hit re-ranked exactly (default that of :meth:`attach_vectors`).
        """
        faiss = self._faiss
        q = check_vectors(queries, self.dim, "queries")
        k = check_k(k)
        empty = (np.zeros((q.shape[0], 0), np.int64), np.zeros((q.shape[0], 0), np.float32))
        if len(self) == 0 or q.shape[0] == 0:
            return pad_results(*empty, k)
        sel = None
        if allow is not None:
            allowed = np.unique(np.asarray(allow))
            if allowed.size and not np.issubdtype(allowed.dtype, np.integer):
                raise VestisError(f"allow: expected integer ids, got dtype {allowed.dtype}")
            allowed = allowed.astype(np.int64)[self._contains(allowed)]  # live ids only: tombstones drop out
            if allowed.size == 0:
                return pad_results(*empty, k)
            if self.kind == "hnsw" and allowed.size <= _EXACT_ALLOW:
                return self._exact(q, k, allowed)
            sel = faiss.IDSelectorBatch(allowed)
        elif self._dead.size:
            held = self._dead_sel  # a local reference keeps both selectors alive during this search
            if held is None:  # built once per set of tombstones, not per query
                inner = faiss.IDSelectorBatch(self._dead)
                held = self._dead_sel = (faiss.IDSelectorNot(inner), inner)  # the Not does not own the inner one
            sel = held[0]
        if self.kind == "hnsw":
            ef = self.params["ef_search"] if ef_search is None else _positive(ef_search, "ef_search")
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(ef, k))
        elif self.kind == "ivfpq":
            probe = self.params["nprobe"] if nprobe is None else _positive(nprobe, "nprobe")
            params = faiss.SearchParametersIVF(sel=sel, nprobe=min(probe, self.params["nlist"]))
        else:
            params = faiss.SearchParameters(sel=sel)
        factor = self._refine if refine is None else (_positive(refine, "refine") if refine else 0)
        if self.kind == "ivfpq" and self._exact_rows is not None and factor:
            scores, ids = self._index.search(q, min(k * factor, len(self)), params=params)
            return self._rerank(q, ids.astype(np.int64), k)
        scores, ids = self._index.search(q, min(k, len(self)), params=params)
        return pad_results(ids.astype(np.int64), scores, k)

    def _rerank(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self._exact_rows
        found = cand[cand >= 0]
        if found.size and found.max() >= rows.shape[0]:
            raise VestisError(
                f"attach_vectors: {rows.shape[0]} rows attached, the index holds id {int(found.max())}; "
                "attach the current vectors"
            )
        uniq, inverse = np.unique(found, return_inverse=True)  # sorted: a memory map is read in file order
        exact = np.asarray(rows[uniq], dtype=np.float32)  # (U, D)
        s = np.full(cand.shape, -np.inf, dtype=np.float32)  # (Q, C)
        qi = np.nonzero(cand >= 0)[0]
        s[cand >= 0] = np.einsum("ij,ij->i", q[qi], exact[inverse])
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return pad_results(np.take_along_axis(cand, order, axis=1), np.take_along_axis(s, order, axis=1), k)

    def _exact(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vectors = self._index.reconstruct_batch(allowed)  # (M, D) stored exactly by HNSWFlat
        s = q @ vectors.T  # (Q, M)
        kk = min(k, allowed.size)
        order = np.argsort(-s, axis=1, kind="stable")[:, :kk]
        return pad_results(allowed[order], np.take_along_axis(s, order, axis=1), k)

    # -- persistence ----------------------------------------------------------------------------------------
    def save(self) -> None:
        """Write the index to :attr:`path` atomically (temporary file, fsync, rename)."""
        faiss = self._faiss
        meta = {
            "kind": self.kind,
            "dim": self.dim,
            "params": self.params,
            "count": len(self),
            "dead": int(self._dead.size),
            "trained": self._index is not None,
        }
        blob = json.dumps(meta).encode("utf-8")

        def write(f: IO[bytes]) -> None:
            f.write(_MAGIC + struct.pack("<Q", len(blob)) + blob)
            f.write(self._dead.astype("<i8").tobytes())
            if self._index is not None:
                faiss.write_index(self._index, faiss.PyCallbackIOWriter(f.write))

        atomic_write(self.path, write)

    def info(self) -> dict[str, Any]:
        """Backend, kind, dimension, live count, parameters, tombstones and the index's size in bytes."""
        size = 0
        if self._index is not None:
            counter = _Counter()
            self._faiss.write_index(self._index, self._faiss.PyCallbackIOWriter(counter))
            size = counter.n
        return {
            "backend": self.backend,
            "kind": self.kind,
            "dim": self.dim,
            "count": len(self),
            "params": dict(self.params),
            "tombstones": int(self._dead.size),
            "memory_bytes": size,
        }


class _Counter:
    """A write callback that only counts bytes: the serialised size without holding a copy."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, data: bytes) -> int:
        self.n += len(data)
        return len(data)


def _read_exact(f: IO[bytes], n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise EOFError(f"expected {n} bytes, the file ends after {len(data)}")
    return data


def _positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise VestisError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)
