"""Attribute prototypes and query manipulation ("this, but in black").

A prototype is DAtRNet's "generic representation" of a value (004, §3.3): the mean sub-embedding of the
attribute over the training images that carry the value. A manipulation "attribute t -> value v" either
replaces the query's sub-embedding of ``t`` by the prototype of ``v`` (DAtRNet) or, under the name
``additive``, moves it by ``prototype(v) - prototype(old)`` (ADDE-M, Hou et al. 2021, whose memory block adds
the difference of the new and the old value's prototype to the query's representation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from vestis.errors import VestisError

__all__ = ["GLOBAL", "Prototypes", "manipulate", "prototypes"]

GLOBAL = -1  # the category code of a prototype computed over every category


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(norm > 0, norm, 1.0)


@dataclass(frozen=True, eq=False)
class Prototypes:
    """Per-attribute prototype tables.

    Attributes:
        vectors: ``{attribute: (P, d) float32}`` one prototype per row.
        values: ``{attribute: (P,) int64}`` the value code of each row.
        categories: ``{attribute: (P,) int64}`` the category code of each row, :data:`GLOBAL` for the
            prototype over every category.
        counts: ``{attribute: (P,) int64}`` the number of images averaged.
        normalized: whether the means were L2-normalised.
    """

    vectors: dict[str, np.ndarray]
    values: dict[str, np.ndarray]
    categories: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    normalized: bool = True
    _index: dict[tuple[str, int, int], int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {}
        for attr, vals in self.values.items():
            for row, (cat, val) in enumerate(zip(self.categories[attr], vals, strict=True)):
                index[(attr, int(cat), int(val))] = row
        object.__setattr__(self, "_index", index)

    @property
    def attributes(self) -> list[str]:
        """The attributes with prototypes."""
        return list(self.vectors)

    def get(self, attribute: str, value: int, category: int | None = None) -> np.ndarray:
        """The ``(d,)`` prototype of ``attribute = value``.

        With ``category``, the prototype of that category when the training set held the value in it, else
        the one over every category (a value never seen in a category still has a generic representation).

        Raises:
            VestisError: the attribute or the value has no prototype.
        """
        if attribute not in self.vectors:
            raise VestisError(f"prototypes: no attribute {attribute!r}; known: {self.attributes}")
        for cat in (int(category), GLOBAL) if category is not None and category != GLOBAL else (GLOBAL,):
            row = self._index.get((attribute, cat, int(value)))
            if row is not None:
                return self.vectors[attribute][row]
        raise VestisError(f"prototypes: no prototype for {attribute!r} = value {int(value)} (no training image)")

    def nearest(self, attribute: str, vecs: ArrayLike, category: int | None = None) -> np.ndarray:
        """The value code of the most similar (inner product) prototype for each ``(B, d)`` row.

        With ``category``, only that category's prototypes compete (the global ones when it has none).
        """
        if attribute not in self.vectors:
            raise VestisError(f"prototypes: no attribute {attribute!r}; known: {self.attributes}")
        cats = self.categories[attribute]
        rows = np.flatnonzero(cats == (GLOBAL if category is None else int(category)))
        if rows.size == 0:
            rows = np.flatnonzero(cats == GLOBAL)
        if rows.size == 0:
            raise VestisError(f"prototypes: attribute {attribute!r} has no prototype (no labelled training image)")
        sims = np.atleast_2d(np.asarray(vecs, dtype=np.float32)) @ self.vectors[attribute][rows].T  # (B, P')
        return self.values[attribute][rows[sims.argmax(axis=1)]]


def prototypes(
    emb_by_attr: Mapping[str, ArrayLike],
    codes: Mapping[str, ArrayLike],
    *,
    category: ArrayLike | None = None,
    normalize: bool = True,
) -> Prototypes:
    """Prototype per (attribute, value): the mean sub-embedding of the rows with that value (DAtRNet §3.3).

    DAtRNet takes the "average response" over the images with the value; here the mean is L2-normalised by
    default because the sub-embeddings are unit vectors: the mean of spread-out unit vectors is shorter than
    one, and a replaced part shorter than the untouched ones would weigh less in the summed similarity. Rows
    without a value (code -1) are skipped. With ``category`` (DAtRNet's supplement, "category-specific generic
    attributes"), prototypes are also computed per (attribute, category value, value) over the rows labelled
    in the category; the global ones are always there.

    Args:
        emb_by_attr: ``{attribute: (N, d)}`` sub-embeddings of the training rows.
        codes: ``{attribute: (N,)}`` value codes, -1 missing.
        category: optional ``(N,)`` category codes (-1 unknown).
        normalize: L2-normalise each mean.

    Returns:
        The tables; an attribute without any labelled row has an empty table.
    """
    if not emb_by_attr:
        raise VestisError("embeddings: expected a non-empty mapping attribute -> (N, d) array")
    cat = None if category is None else np.asarray(category)
    vectors, values, categories, counts = {}, {}, {}, {}
    for attr, e in emb_by_attr.items():
        e = np.asarray(e, dtype=np.float64)
        if e.ndim != 2 or not np.isfinite(e).all():
            raise VestisError(f"embeddings[{attr!r}]: expected a finite (N, d) array, got shape {e.shape}")
        if attr not in codes:
            raise VestisError(f"codes: no codes for attribute {attr!r}")
        c = np.asarray(codes[attr])
        if c.shape != (e.shape[0],) or not np.issubdtype(c.dtype, np.integer):
            raise VestisError(f"codes[{attr!r}]: expected ({e.shape[0]},) integer codes, got {c.dtype} {c.shape}")
        if cat is not None and (cat.shape != c.shape or not np.issubdtype(cat.dtype, np.integer)):
            raise VestisError(f"category: expected ({e.shape[0]},) integer codes, got {cat.dtype} {cat.shape}")
        groups = [(GLOBAL, c >= 0)]
        if cat is not None:
            groups += [(int(k), (c >= 0) & (cat == k)) for k in np.unique(cat[cat >= 0])]
        vs, ks, cs, ns = [], [], [], []
        for k, rows in groups:
            vals, inverse, n = np.unique(c[rows], return_inverse=True, return_counts=True)
            sums = np.zeros((len(vals), e.shape[1]))
            np.add.at(sums, inverse, e[rows])
            vs.append(sums / n[:, None])
            ks.append(vals)
            cs.append(np.full(len(vals), k, dtype=np.int64))
            ns.append(n)
        mean = np.concatenate(vs)
        vectors[attr] = (_unit(mean) if normalize else mean).astype(np.float32)
        values[attr] = np.concatenate(ks).astype(np.int64)
        categories[attr] = np.concatenate(cs)
        counts[attr] = np.concatenate(ns).astype(np.int64)
    return Prototypes(vectors, values, categories, counts, normalize)


def manipulate(
    query: Mapping[str, ArrayLike],
    changes: Mapping[str, int | ArrayLike],
    protos: Prototypes,
    *,
    mode: Literal["replace", "additive"] = "replace",
    query_codes: Mapping[str, int | ArrayLike] | None = None,
    category: int | ArrayLike | None = None,
) -> dict[str, np.ndarray]:
    """Apply attribute manipulations "attribute -> value" to query sub-embeddings, several at once.

    ``replace`` (DAtRNet §3.3): the sub-embedding of each changed attribute becomes the prototype of the new
    value. ``additive`` (ADDE-M): it becomes ``q_t + p(v) - p(old)``, L2-normalised again so that every part
    stays a unit vector like the gallery's (ADDE normalises the whole concatenation instead; keeping each part
    unit keeps the per-attribute distances comparable). The old value is the query's own label when
    ``query_codes`` gives one (not -1), else the value of the nearest prototype. Should ``q_t + p(v) - p(old)``
    vanish, the part becomes ``p(v)``. Untouched attributes are copied unchanged.

    Args:
        query: ``{attribute: (d,)}`` for one query or ``{attribute: (B, d)}`` for a batch.
        changes: ``{attribute: value code}``; for a batch a value may be a ``(B,)`` array, -1 leaving that row.
        protos: the prototypes (:func:`prototypes`).
        mode: ``"replace"`` or ``"additive"``.
        query_codes: the query's known codes per attribute (int or ``(B,)``), for the additive old value.
        category: the query's category code (int or ``(B,)``) to use category prototypes.

    Returns:
        The manipulated sub-embeddings, same shapes as ``query``.
    """
    if mode not in ("replace", "additive"):
        raise VestisError(f"mode: expected 'replace' or 'additive', got {mode!r}")
    single = None
    out: dict[str, np.ndarray] = {}
    for attr, v in query.items():
        a = np.asarray(v, dtype=np.float32)
        if a.ndim not in (1, 2) or not np.isfinite(a).all():
            raise VestisError(f"query[{attr!r}]: expected a finite (d,) or (B, d) array, got shape {a.shape}")
        if single is None:
            single = a.ndim == 1
        elif single != (a.ndim == 1):
            raise VestisError("query: expected every attribute as (d,) or every attribute as (B, d)")
        out[attr] = np.atleast_2d(a).copy()
    if not out:
        raise VestisError("query: expected at least one attribute")
    b = next(iter(out.values())).shape[0]

    def per_row(x, what: str) -> np.ndarray:
        arr = np.broadcast_to(np.asarray(x), (b,)) if np.ndim(x) == 0 else np.asarray(x)
        if arr.shape != (b,) or not np.issubdtype(arr.dtype, np.integer):
            raise VestisError(f"{what}: expected an integer or ({b},) integer codes, got {arr.dtype} {arr.shape}")
        return arr.astype(np.int64)

    cats = None if category is None else per_row(category, "category")
    for attr, value in changes.items():
        if attr not in out:
            raise VestisError(f"changes: attribute {attr!r} is not in the query; it has {list(out)}")
        new = per_row(value, f"changes[{attr!r}]")
        q = out[attr]  # (B, d)
        old = None
        if mode == "additive":
            known = (
                np.full(b, -1)
                if query_codes is None or attr not in query_codes
                else per_row(query_codes[attr], f"query_codes[{attr!r}]")
            )
            old = known.copy()
            for i in np.flatnonzero((known < 0) & (new >= 0)):
                old[i] = protos.nearest(attr, q[i], None if cats is None else int(cats[i]))[0]
        for i in np.flatnonzero(new >= 0):
            cat = None if cats is None else int(cats[i])
            p_new = protos.get(attr, int(new[i]), cat)
            if q.shape[1] != p_new.shape[0]:
                raise VestisError(f"query[{attr!r}]: dimension {q.shape[1]}, the prototypes have {p_new.shape[0]}")
            if mode == "replace":
                q[i] = p_new
            else:
                moved = q[i] + p_new - protos.get(attr, int(old[i]), cat)
                norm = np.linalg.norm(moved)
                q[i] = moved / norm if norm > 1e-12 else p_new
    return {attr: (v[0] if single else v) for attr, v in out.items()}
