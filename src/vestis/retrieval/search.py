"""Brute-force ranking of a gallery by attribute-aware similarity (NumPy; indexes come later).

The score of a gallery row for a query is the sum over the kept attributes ``S`` of the inner products of
their unit sub-embeddings, ``sum_{t in S} <q_t, g_t>``. Since ``||q_S - g_S||^2 = sum_{t in S} (||q_t||^2 +
1 - 2 <q_t, g_t>)`` for unit gallery parts, the descending score is the ascending squared L2 distance over the
concatenation of the kept parts (DAtRNet's L2 ranking), and restricting ``S`` is the conditional similarity of
the CSN paper ("keep only attributes S").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from vestis.errors import VestisError

__all__ = ["rank"]

_CHUNK_ELEMENTS = 1 << 22  # (queries x gallery) scores held at once


def _parts(sub: Mapping[str, ArrayLike], attrs: Sequence[str], what: str) -> list[np.ndarray]:
    out, n = [], None
    for attr in attrs:
        if attr not in sub:
            raise VestisError(f"{what}: no sub-embedding for attribute {attr!r}; it has {list(sub)}")
        a = np.asarray(sub[attr])
        if a.ndim != 2:
            raise VestisError(f"{what}[{attr!r}]: expected a 2-D array (rows, dimensions), got shape {a.shape}")
        if not np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise VestisError(f"{what}[{attr!r}]: expected finite numbers, found NaN or inf")
        if n is not None and a.shape[0] != n:
            raise VestisError(f"{what}[{attr!r}]: expected {n} rows like the other attributes, got {a.shape[0]}")
        n = a.shape[0]
        out.append(a)
    return out


def rank(
    query_sub: Mapping[str, ArrayLike],
    gallery_sub: Mapping[str, ArrayLike],
    *,
    attributes: Sequence[str] | None = None,
    k: int,
    exclude_self: bool = False,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best gallery rows for each query, by the summed similarity over the kept attributes.

    Args:
        query_sub: ``{attribute: (Q, d_t)}`` query sub-embeddings (possibly manipulated).
        gallery_sub: ``{attribute: (G, d_t)}`` gallery sub-embeddings, unit rows.
        attributes: the attributes ``S`` kept; default every attribute of the query.
        k: results per query; fewer when the gallery is smaller.
        exclude_self: query ``i`` is gallery row ``i`` and is never returned.
        chunk_size: queries scored at once (default: about 4 M scores per chunk), bounding memory.

    Returns:
        ``(indices (Q, k) int64, scores (Q, k) float32)``, best first; equal scores go to the lower gallery
        index.
    """
    attrs = list(query_sub) if attributes is None else list(attributes)
    if not attrs:
        raise VestisError("attributes: expected at least one attribute to compare")
    q_parts = _parts(query_sub, attrs, "query")
    g_parts = _parts(gallery_sub, attrs, "gallery")
    for attr, qp, gp in zip(attrs, q_parts, g_parts, strict=True):
        if qp.shape[1] != gp.shape[1]:
            raise VestisError(f"gallery[{attr!r}]: dimension {gp.shape[1]}, the query has {qp.shape[1]}")
    q = np.concatenate(q_parts, axis=1)  # (Q, sum d_t): the inner product of concatenations is the sum
    g = np.concatenate(g_parts, axis=1)  # (G, sum d_t)
    n_q, n_g = q.shape[0], g.shape[0]
    if exclude_self and n_q != n_g:
        raise VestisError(f"exclude_self: the gallery has {n_g} rows, the queries {n_q}; expected the same set")
    if int(k) < 1:
        raise VestisError(f"k: expected at least 1, got {k}")
    k_eff = min(int(k), n_g - (1 if exclude_self else 0))
    idx = np.zeros((n_q, max(k_eff, 0)), dtype=np.int64)
    val = np.zeros((n_q, max(k_eff, 0)), dtype=np.float32)
    if k_eff <= 0 or n_q == 0:
        return idx, val
    step = int(chunk_size) if chunk_size is not None else max(1, _CHUNK_ELEMENTS // n_g)
    if step < 1:
        raise VestisError(f"chunk_size: expected at least 1, got {chunk_size}")
    for start in range(0, n_q, step):
        s = q[start : start + step] @ g.T  # (B, G)
        if exclude_self:
            s[np.arange(s.shape[0]), np.arange(start, start + s.shape[0])] = -np.inf
        if k_eff < n_g:
            part = np.argpartition(-s, k_eff - 1, axis=1)[:, :k_eff]  # (B, k) the best k, unordered
            kth = np.take_along_axis(s, part, axis=1).min(axis=1)
            # rows tied with the k-th score may have been cut arbitrarily: redo those with a full stable sort
            exact = (s >= kth[:, None]).sum(axis=1) == k_eff
            for b in np.flatnonzero(~exact):
                part[b] = np.argsort(-s[b], kind="stable")[:k_eff]
        else:
            part = np.broadcast_to(np.arange(n_g), s.shape).copy()
        ps = np.take_along_axis(s, part, axis=1)
        order = np.lexsort((part, -ps), axis=1)  # best score first, then the lower index
        idx[start : start + s.shape[0]] = np.take_along_axis(part, order, axis=1)
        val[start : start + s.shape[0]] = np.take_along_axis(ps, order, axis=1)
    return idx, val
