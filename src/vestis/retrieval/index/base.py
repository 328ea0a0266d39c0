"""The vector index interface shared by every backend, input checks, and the backend registry.

Scores are inner products: the stored vectors are concatenations of unit sub-embeddings and a query is a weighted
concatenation, so the inner product is the summed per-attribute similarity of ``vestis.retrieval.search.rank``.
Ids are the caller's non-negative int64 keys; ``-1`` pads a result row that has fewer than ``k`` hits (its score
is ``-inf``).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import ArrayLike

from vestis.errors import VestisError
from vestis.registry import Registry

__all__ = ["INDEXES", "KINDS", "VectorIndex", "check_ids", "check_vectors", "pad_results"]

KINDS = ("flat", "hnsw", "ivfpq")
INDEXES = Registry("index backend")  # name -> VectorIndex subclass


class VectorIndex(ABC):
    """A mutable set of ``(id, vector)`` pairs searched by inner product.

    Subclasses implement one backend; they are registered in ``INDEXES`` by name (``"faiss"``, ``"milvus"``).
    An index is used as a context manager or closed with :meth:`close`. Concurrent searches are safe; a caller
    that adds or removes while other threads search serialises those writes against the searches itself.
    """

    backend: ClassVar[str]
    kind: str
    dim: int
    path: Path | str

    @classmethod
    @abstractmethod
    def create(cls, kind: str, dim: int, *, path: str | os.PathLike[str], **params: Any) -> Self:
        """A new, empty index of ``kind`` (one of ``KINDS``) for ``dim``-dimensional vectors at ``path``."""

    @classmethod
    @abstractmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> Self:
        """The index saved at ``path``; a missing or foreign file is a ``VestisError``."""

    @abstractmethod
    def add(self, ids: ArrayLike, vectors: ArrayLike) -> None:
        """Insert ``vectors`` ``(N, D)`` under ``ids`` ``(N,)``; an id already present is an error."""

    @abstractmethod
    def remove(self, ids: ArrayLike) -> int:
        """Delete ``ids`` (unknown ones are ignored); returns how many were present."""

    @abstractmethod
    def search(
        self, queries: ArrayLike, k: int, *, allow: ArrayLike | None = None, **params: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best ids per query, pre-filtered to ``allow`` when given.

        Args:
            queries: ``(Q, D)`` query vectors.
            k: hits per query.
            allow: ``(M,)`` ids a hit must be one of (a pre-filter: the ``k`` best among them).
            **params: query-time knobs of the kind (``nprobe`` for IVF-PQ, ``ef_search`` for HNSW).

        Returns:
            ``(ids (Q, k) int64, scores (Q, k) float32)``, best first, padded with ``-1`` / ``-inf``.
        """

    @abstractmethod
    def save(self) -> None:
        """Persist the index at its path; a crash part-way leaves the previously saved index intact."""

    def rebuild(self) -> None:  # noqa: B027 - a no-op for backends that delete in place
        """Compact deleted entries away (backends that only mark deletions); the content is unchanged."""

    @abstractmethod
    def __len__(self) -> int:
        """Live vectors (removed ones excluded)."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """``backend``, ``kind``, ``dim``, ``count``, ``params`` and ``memory_bytes`` (``None`` when unknown)."""

    def close(self) -> None:  # noqa: B027 - nothing to release for in-memory backends
        """Release files, connections and servers held by the index."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise VestisError(f"index kind {kind!r}: expected one of {', '.join(KINDS)}")
    return kind


def check_ids(ids: ArrayLike, what: str = "ids") -> np.ndarray:
    """``ids`` as a 1-D int64 array of distinct non-negative integers."""
    a = np.asarray(ids)
    if a.ndim != 1:
        raise VestisError(f"{what}: expected a 1-D array of integer ids, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise VestisError(f"{what}: expected integer ids, got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    if a.size and a.min() < 0:
        raise VestisError(f"{what}: expected non-negative ids (-1 pads results), found {int(a.min())}")
    uniq, counts = np.unique(a, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][:5].tolist()
        raise VestisError(f"{what}: expected distinct ids, found repeated {dup}")
    return np.ascontiguousarray(a)


def check_vectors(vectors: ArrayLike, dim: int, what: str = "vectors", rows: int | None = None) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 ``(N, dim)`` array of finite numbers."""
    a = np.asarray(vectors)
    if a.ndim != 2 or a.shape[1] != dim:
        raise VestisError(f"{what}: expected a 2-D array (rows, {dim}), got shape {a.shape}")
    if rows is not None and a.shape[0] != rows:
        raise VestisError(f"{what}: expected {rows} rows (one per id), got {a.shape[0]}")
    if a.size and not np.issubdtype(a.dtype, np.number):
        raise VestisError(f"{what}: expected numbers, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise VestisError(f"{what}: expected finite numbers, found NaN or inf")
    return a


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or int(k) < 1:
        raise VestisError(f"k: expected an integer >= 1, got {k!r}")
    return int(k)


def pad_results(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalise a backend's ``(Q, <=k)`` result: int64 ids, float32 scores, ``-1`` / ``-inf`` padding."""
    q = ids.shape[0]
    out_i = np.full((q, k), -1, dtype=np.int64)
    out_s = np.full((q, k), -np.inf, dtype=np.float32)
    w = min(k, ids.shape[1])
    out_i[:, :w] = ids[:, :w]
    out_s[:, :w] = scores[:, :w]
    missing = out_i < 0
    out_s[missing] = -np.inf  # FAISS pads with -FLT_MAX or NaN depending on the kind
    return out_i, out_s
