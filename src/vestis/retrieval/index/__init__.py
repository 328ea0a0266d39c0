"""Vector indexes for substitute search: FAISS embedded (flat, HNSW, IVF-PQ) and Milvus for scale.

Both backends implement :class:`VectorIndex` and are registered in ``INDEXES`` by name; the backends import
``faiss`` / ``pymilvus`` only when used (``pip install 'vestis[search]'``)::

    from vestis.retrieval.index import create_index, open_index

    with create_index("faiss", "hnsw", 448, path="INDEX/vectors.faiss") as index:
        index.add(ids, vectors)
        index.save()
    hits, scores = open_index("faiss", "INDEX/vectors.faiss").search(queries, 30, allow=ids_in_category)
"""

from __future__ import annotations

import os
from typing import Any

from vestis.retrieval.index.base import INDEXES, KINDS, VectorIndex
from vestis.retrieval.index.faiss_index import FaissIndex
from vestis.retrieval.index.milvus_index import MilvusIndex

__all__ = ["INDEXES", "KINDS", "FaissIndex", "MilvusIndex", "VectorIndex", "create_index", "open_index"]


def create_index(backend: str, kind: str, dim: int, *, path: str | os.PathLike[str], **params: Any) -> VectorIndex:
    """A new, empty index of ``backend`` (``faiss`` | ``milvus``) and ``kind`` (``flat`` | ``hnsw`` | ``ivfpq``)."""
    return INDEXES.get(backend).create(kind, dim, path=path, **params)


def open_index(backend: str, path: str | os.PathLike[str], **options: Any) -> VectorIndex:
    """The ``backend`` index saved at ``path`` (a FAISS file, a milvus-lite ``.db`` or a Milvus URI)."""
    return INDEXES.get(backend).open(path, **options)
