"""Input checks and ranking kernels shared by the retrieval metrics of :mod:`vestis.eval.retrieval`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from vestis.errors import VestisError

__all__ = [
    "CHUNK_ELEMENTS",
    "RESERVED",
    "check_codes",
    "check_embeddings",
    "check_matrix",
    "chunk_rows",
    "condition_blocks",
    "condition_sets",
    "differences",
    "first_match_rank",
    "protocol_inputs",
    "vector_blocks",
    "vector_sets",
]

RESERVED = ("overall",)  # result keys that no attribute may take
CHUNK_ELEMENTS = 1 << 22  # (queries x gallery) scores held at once: bounds memory for large galleries

# --- input checks ---------------------------------------------------------------------------------------------


def check_embeddings(emb: Mapping[str, ArrayLike], what: str) -> dict[str, np.ndarray]:
    """``{attribute: (N, d)}`` as float arrays with one row count; a one-line error naming ``what`` otherwise."""
    if not isinstance(emb, Mapping) or not emb:
        raise VestisError(f"{what}: expected a non-empty mapping attribute -> (N, d) array")
    out: dict[str, np.ndarray] = {}
    n = None
    for attr, value in emb.items():
        if attr in RESERVED:
            raise VestisError(f"{what}: the attribute name {attr!r} is reserved for the pooled result")
        a = np.asarray(value)
        if a.ndim != 2 or a.shape[1] == 0:
            raise VestisError(f"{what}[{attr!r}]: expected a 2-D array (rows, dimensions), got shape {a.shape}")
        if not np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise VestisError(f"{what}[{attr!r}]: expected finite numbers, found NaN or inf")
        if n is not None and a.shape[0] != n:
            raise VestisError(f"{what}[{attr!r}]: expected {n} rows like the other attributes, got {a.shape[0]}")
        n = a.shape[0]
        out[attr] = a
    return out


def check_codes(codes: Mapping[str, ArrayLike], attrs: Sequence[str], n: int, what: str) -> dict[str, np.ndarray]:
    """The ``(n,)`` int64 codes (>= -1) of each attribute in ``attrs``."""
    out = {}
    for attr in attrs:
        if attr not in codes:
            raise VestisError(f"{what}: no codes for attribute {attr!r}")
        c = np.asarray(codes[attr])
        if c.shape != (n,) or not np.issubdtype(c.dtype, np.integer):
            raise VestisError(f"{what}[{attr!r}]: expected ({n},) integer codes, got {c.dtype} {c.shape}")
        if (c < -1).any():
            raise VestisError(f"{what}[{attr!r}]: expected codes >= 0, or -1 for a missing value")
        out[attr] = c.astype(np.int64)
    return out


def check_matrix(a: ArrayLike, what: str, *, integer: bool) -> np.ndarray:
    """A 2-D array of codes (>= -1) or of finite floats."""
    m = np.asarray(a)
    if m.ndim != 2:
        raise VestisError(f"{what}: expected a 2-D array, got shape {m.shape}")
    if integer:
        if not np.issubdtype(m.dtype, np.integer) or (m < -1).any():
            raise VestisError(f"{what}: expected integer codes >= -1, got dtype {m.dtype}")
        return m.astype(np.int64)
    if not np.issubdtype(m.dtype, np.floating):
        m = m.astype(np.float64)
    if not np.isfinite(m).all():
        raise VestisError(f"{what}: expected finite numbers, found NaN or inf")
    return m


def chunk_rows(n_gallery: int, per_item: int = 1) -> int:
    """Query rows per block so that a block holds about :data:`CHUNK_ELEMENTS` values."""
    return max(1, CHUNK_ELEMENTS // max(1, n_gallery * per_item))


def condition_sets(emb_by_attr, codes, gallery, exclude_self):
    """Query and gallery embeddings and codes, and whether query i is gallery row i."""
    q_emb = check_embeddings(emb_by_attr, "embeddings")
    attrs = list(q_emb)
    n = next(iter(q_emb.values())).shape[0]
    q_codes = check_codes(codes, attrs, n, "codes")
    if gallery is not None and (not isinstance(gallery, tuple | list) or len(gallery) != 2):
        raise VestisError("gallery: expected a pair (embeddings by attribute, codes by attribute)")
    if gallery is None:
        g_emb, g_codes = q_emb, q_codes
        same = True if exclude_self is None else bool(exclude_self)
    else:
        g_emb = check_embeddings(gallery[0], "gallery embeddings")
        missing = [a for a in attrs if a not in g_emb]
        if missing:
            raise VestisError(f"gallery embeddings: no sub-embedding for {missing}")
        gn = next(iter(g_emb.values())).shape[0]
        g_codes = check_codes(gallery[1], attrs, gn, "gallery codes")
        same = bool(exclude_self)
        if same and gn != n:
            raise VestisError(f"exclude_self: the gallery has {gn} rows, the queries {n}; expected the same set")
    for attr in attrs:
        if q_emb[attr].shape[1] != g_emb[attr].shape[1]:
            raise VestisError(f"gallery embeddings[{attr!r}]: dimension differs from the queries'")
    return attrs, q_emb, q_codes, g_emb, g_codes, same


def condition_blocks(q_emb, q_codes, g_emb, g_codes, same):
    """Per chunk of labelled queries: (sims (B, G'), match (B, G')) over the labelled gallery rows.

    The query itself, when it is in the gallery, gets similarity -inf and is no match.
    """
    qi = np.flatnonzero(q_codes >= 0)
    gi = np.flatnonzero(g_codes >= 0)
    g = g_emb[gi]
    gc = g_codes[gi]
    step = chunk_rows(len(gi))
    for start in range(0, len(qi), step):
        rows = qi[start : start + step]
        sims = q_emb[rows] @ g.T  # (B, G')
        match = gc[None, :] == q_codes[rows][:, None]
        if same:
            self_hit = rows[:, None] == gi[None, :]
            sims[self_hit] = -np.inf
            match &= ~self_hit
        yield sims, match


def first_match_rank(scores: np.ndarray, match: np.ndarray) -> np.ndarray:
    """0-based rank of the best match under "ties count wrong" (higher score first); ``inf`` without a match.

    Rows scoring above the best match come first, then the non-matches tied with it; the best match
    follows them.
    """
    best = np.where(match, scores, -np.inf).max(axis=1, initial=-np.inf)  # (B,)
    ahead = (scores > best[:, None]).sum(axis=1) + ((scores == best[:, None]) & ~match).sum(axis=1)
    return np.where(np.isfinite(best), ahead, np.inf)


def vector_sets(query_vecs, gallery_vecs, query_targets, gallery_labels, k, attributes, exclude_self):
    q = check_matrix(query_vecs, "query_vecs", integer=False)
    g = check_matrix(gallery_vecs, "gallery_vecs", integer=False)
    qt = check_matrix(query_targets, "query_targets", integer=True)
    gl = check_matrix(gallery_labels, "gallery_labels", integer=True)
    if q.shape[1] != g.shape[1]:
        raise VestisError(f"gallery_vecs: expected dimension {q.shape[1]} like query_vecs, got {g.shape[1]}")
    if qt.shape[0] != q.shape[0] or gl.shape[0] != g.shape[0] or qt.shape[1] != gl.shape[1]:
        raise VestisError(
            f"labels: expected query_targets ({q.shape[0]}, T) and gallery_labels ({g.shape[0]}, T), "
            f"got {qt.shape} and {gl.shape}"
        )
    if int(k) < 1:
        raise VestisError(f"k: expected a positive cut-off, got {k}")
    if attributes is not None:
        cols = np.asarray(list(attributes), dtype=np.int64)
        if cols.size == 0 or (cols < 0).any() or (cols >= qt.shape[1]).any():
            raise VestisError(f"attributes: expected column indices in [0, {qt.shape[1]}), got {list(cols)}")
        qt, gl = qt[:, cols], gl[:, cols]
    if exclude_self and q.shape[0] != g.shape[0]:
        raise VestisError(f"exclude_self: the gallery has {g.shape[0]} rows, the queries {q.shape[0]}")
    return q, g, qt, gl


def vector_blocks(q, g, qt, gl, exclude_self, ignore_missing):
    """Per query chunk: (rows, squared-L2 distances (B, G) up to a per-query constant, equal (B, G, T), considered
    (B, T)). The query itself gets distance +inf when excluded."""
    g_sq = np.einsum("gd,gd->g", g, g)
    step = chunk_rows(g.shape[0], qt.shape[1] + 8)
    for start in range(0, q.shape[0], step):
        rows = np.arange(start, min(start + step, q.shape[0]))
        dist = g_sq[None, :] - 2.0 * (q[rows] @ g.T)  # (B, G); ||q||^2 is the same for every gallery row
        equal = gl[None, :, :] == qt[rows][:, None, :]  # (B, G, T)
        considered = (qt[rows] >= 0) if ignore_missing else np.ones((len(rows), qt.shape[1]), dtype=bool)
        if ignore_missing and not considered.any(axis=1).all():
            bad = int(rows[np.argmin(considered.any(axis=1))])
            raise VestisError(f"query_targets: row {bad} has no labelled attribute to compare with ignore_missing")
        if exclude_self:
            dist[np.arange(len(rows)), rows] = np.inf
        yield rows, dist, equal, considered


def protocol_inputs(codes, gallery_codes, attributes, per_query):
    """Checked query and gallery code matrices and the ``(T,)`` mask of the columns that may change."""
    qc = check_matrix(codes, "codes", integer=True)
    gc = check_matrix(gallery_codes, "gallery_codes", integer=True)
    if qc.shape[1] != gc.shape[1]:
        raise VestisError(f"gallery_codes: expected {qc.shape[1]} columns like codes, got {gc.shape[1]}")
    n_cols = qc.shape[1]
    cols = np.arange(n_cols) if attributes is None else np.asarray(list(attributes), dtype=np.int64)
    if cols.size == 0 or (cols < 0).any() or (cols >= n_cols).any():
        raise VestisError(f"attributes: expected column indices in [0, {n_cols}), got {list(cols)}")
    if per_query < 1:
        raise VestisError(f"per_query: expected at least 1, got {per_query}")
    allowed = np.zeros(n_cols, dtype=bool)
    allowed[cols] = True
    return qc, gc, allowed


def differences(qc, gc, ignore_missing):
    """Per query chunk: (first row, codes (B, T), differ (B, G, T), number of differing columns (B, G))."""
    step = chunk_rows(gc.shape[0], qc.shape[1])
    for start in range(0, qc.shape[0], step):
        block = qc[start : start + step]
        differ = gc[None, :, :] != block[:, None, :]  # (B, G, T)
        if ignore_missing:
            differ &= (block >= 0)[:, None, :]  # the query's missing attributes are not compared
        yield start, block, differ, differ.sum(axis=2)
