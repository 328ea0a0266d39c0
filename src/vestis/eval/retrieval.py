"""Retrieval metrics for attribute-aware embeddings: pure NumPy, each as its paper defines it.

Conventions shared by every function:

* Sub-embeddings come as ``{attribute: (N, d) float}`` with unit rows (what ``EmbeddingModel.embed`` returns);
  labels as value codes ``{attribute: (N,) int64}`` with ``-1`` where a row has no value
  (``vestis.data.triplets.value_codes``). Two rows share a value in a condition iff their codes are equal.
* The label *vectors* of the top-k protocols are ``(N, T)`` code matrices, one column per attribute
  (:func:`stack_codes` builds them).
* Condition-wise metrics (R@K, mAP) rank by the inner product of the condition's unit sub-embeddings, the
  similarity of the multi-column paper and of ASEN. The top-k protocols rank by the squared L2 distance between
  whole vectors, as DAtRNet and ADDE do; for unit-norm gallery parts both orders agree.
* Ties count against the model: among equally scored gallery rows a non-match (a less relevant row) is ranked
  first, then the lower gallery index. A model that maps everything to one point therefore scores like the
  worst ordering, not like whatever the gallery order happens to be.
* A query never retrieves itself when ``exclude_self`` is true (query row ``i`` is gallery row ``i``).
* A metric over zero queries is ``nan``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from vestis.errors import VestisError
from vestis.eval._retrieval_core import (
    check_codes,
    check_embeddings,
    condition_blocks,
    condition_sets,
    differences,
    first_match_rank,
    protocol_inputs,
    vector_blocks,
    vector_sets,
)

__all__ = [
    "RECALL_KS",
    "TOP_K",
    "ManipulationQuery",
    "MultiManipulationQuery",
    "manipulation_queries",
    "mean_average_precision",
    "multi_manipulation_queries",
    "ndcg_at_k",
    "ndcg_scores",
    "recall_at_k",
    "stack_codes",
    "topk_hits",
    "topk_retrieval_accuracy",
    "triplet_accuracy",
]

RECALL_KS = (5, 10, 20)  # the multi-column paper's R@K (002, "Evaluation Protocols")
TOP_K = 30  # DAtRNet's and ADDE's top-30 protocol


def stack_codes(codes: Mapping[str, ArrayLike], attributes: Sequence[str] | None = None) -> np.ndarray:
    """The ``(N, T)`` label-vector matrix of the top-k protocols: one column per attribute, in the given order.

    Args:
        codes: value codes per attribute (``-1`` missing).
        attributes: the columns, in order; default the mapping's order.
    """
    names = list(codes) if attributes is None else list(attributes)
    if not names:
        raise VestisError("codes: expected at least one attribute")
    if names[0] not in codes:
        raise VestisError(f"codes: no codes for attribute {names[0]!r}")
    n = len(np.asarray(codes[names[0]]))
    return np.stack([check_codes(codes, [a], n, "codes")[a] for a in names], axis=1)


# --- triplets and condition-wise ranking ----------------------------------------------------------------------


def triplet_accuracy(
    emb_by_attr: Mapping[str, ArrayLike], triplets_by_attr: Mapping[str, ArrayLike]
) -> dict[str, float]:
    """Validation triplet accuracy of the multi-column paper (002, "Evaluation Protocols").

    A triplet ``(a, p, n)`` of condition ``t`` succeeds iff ``<e_t(a), e_t(p)> > <e_t(a), e_t(n)>`` on that
    condition's sub-embeddings; a tie is a failure. "overall" pools every triplet of every condition (the
    paper's "percentage of successful retrievals during the whole validation experiment").

    Args:
        emb_by_attr: ``{attribute: (N, d)}`` unit sub-embeddings.
        triplets_by_attr: ``{attribute: (M, 3)}`` row indices ``[anchor, positive, negative]``.

    Returns:
        ``{"overall": pooled accuracy, attribute: accuracy}``; ``nan`` where there are no triplets.
    """
    emb = check_embeddings(emb_by_attr, "embeddings")
    n = next(iter(emb.values())).shape[0]
    out: dict[str, float] = {}
    wins = total = 0
    for attr, trip in triplets_by_attr.items():
        if attr not in emb:
            raise VestisError(f"triplets: attribute {attr!r} has no embeddings")
        t = np.asarray(trip)
        if t.size == 0:
            out[attr] = float("nan")
            continue
        if t.ndim != 2 or t.shape[1] != 3 or not np.issubdtype(t.dtype, np.integer):
            raise VestisError(f"triplets[{attr!r}]: expected an (M, 3) integer array, got {t.dtype} {t.shape}")
        if (t < 0).any() or (t >= n).any():
            raise VestisError(f"triplets[{attr!r}]: expected row indices in [0, {n})")
        e = emb[attr]
        s_ap = np.einsum("md,md->m", e[t[:, 0]], e[t[:, 1]])
        s_an = np.einsum("md,md->m", e[t[:, 0]], e[t[:, 2]])
        ok = int((s_ap > s_an).sum())
        out[attr] = ok / len(t)
        wins += ok
        total += len(t)
    return {"overall": wins / total if total else float("nan"), **out}


def recall_at_k(
    emb: Mapping[str, ArrayLike],
    codes: Mapping[str, ArrayLike],
    ks: Sequence[int] = RECALL_KS,
    *,
    gallery: tuple[Mapping[str, ArrayLike], Mapping[str, ArrayLike]] | None = None,
    exclude_self: bool | None = None,
) -> dict[str, dict[int, float]]:
    """R@K of the multi-column paper (002, "Evaluation Protocols"), per condition.

    For condition ``t`` the queries are the rows labelled in ``t``; each ranks the gallery rows labelled in
    ``t`` by the inner product of the ``t`` sub-embeddings, and succeeds when one of its top ``K`` shares its
    value ("a match existed and only existed when the retrieved image shared the exact same attribute value
    under the same attribute dimension"). R@K is the share of successful queries; a query whose value no
    other gallery row holds counts as a failure.

    Args:
        emb: query sub-embeddings ``{attribute: (N, d)}``; every attribute is a condition.
        codes: query value codes ``{attribute: (N,)}``.
        ks: the cut-offs (the paper's 5, 10, 20).
        gallery: ``(embeddings, codes)`` of a separate gallery; default the queries themselves.
        exclude_self: leave query ``i`` out of its own ranking; default true exactly when ``gallery`` is None.

    Returns:
        ``{"overall": {K: pooled over every query of every condition}, attribute: {K: R@K}}``.
    """
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise VestisError(f"ks: expected positive cut-offs, got {ks}")
    attrs, q_emb, q_codes, g_emb, g_codes, same = condition_sets(emb, codes, gallery, exclude_self)
    out: dict[str, dict[int, float]] = {}
    pooled = np.zeros(len(ks), dtype=np.int64)
    n_pooled = 0
    for attr in attrs:
        ranks = [
            first_match_rank(s, m)
            for s, m in condition_blocks(q_emb[attr], q_codes[attr], g_emb[attr], g_codes[attr], same)
        ]
        r = np.concatenate(ranks) if ranks else np.zeros(0)
        hits = np.array([(r < k).sum() for k in ks], dtype=np.int64)
        out[attr] = {k: (h / len(r) if len(r) else float("nan")) for k, h in zip(ks, hits, strict=True)}
        pooled += hits
        n_pooled += len(r)
    overall = {k: (h / n_pooled if n_pooled else float("nan")) for k, h in zip(ks, pooled, strict=True)}
    return {"overall": overall, **out}


def mean_average_precision(
    emb: Mapping[str, ArrayLike],
    codes: Mapping[str, ArrayLike],
    *,
    gallery: tuple[Mapping[str, ArrayLike], Mapping[str, ArrayLike]] | None = None,
    exclude_self: bool | None = None,
) -> dict[str, float]:
    """mAP per attribute as ASEN evaluates it (Ma et al., AAAI 2020; ``mean_average_precision`` in
    github.com/Maryeon/asen ``main.py`` with ``APScorer`` of ``metric.py``).

    For condition ``t`` every labelled query ranks every labelled gallery row by the inner product of the
    ``t`` sub-embeddings; relevant = same value. ``AP = (1/R) * sum over relevant ranks r of precision@r``
    over the whole ranking (``R`` relevant rows; AP is 0 when ``R`` is 0, as ``APScorer`` returns). The
    attribute's mAP is the mean AP over its queries; "overall" is ASEN's MeanAP, the query-weighted mean.

    Args:
        emb: query sub-embeddings ``{attribute: (N, d)}``.
        codes: query value codes ``{attribute: (N,)}``.
        gallery: ``(embeddings, codes)`` of a separate candidate set (ASEN's); default the queries themselves.
        exclude_self: leave query ``i`` out of its own ranking; default true exactly when ``gallery`` is None.

    Returns:
        ``{"overall": MeanAP, attribute: mAP}``.
    """
    attrs, q_emb, q_codes, g_emb, g_codes, same = condition_sets(emb, codes, gallery, exclude_self)
    out: dict[str, float] = {}
    total = 0.0
    count = 0
    for attr in attrs:
        aps = []
        for sims, match in condition_blocks(q_emb[attr], q_codes[attr], g_emb[attr], g_codes[attr], same):
            # higher similarity first; a plain sort is exact for rows without tied scores, the others take the
            # stable lexsort that puts tied non-relevant rows first, then the gallery order
            order = np.argsort(-sims, axis=1)
            ranked = np.take_along_axis(sims, order, axis=1)
            tied = (ranked[:, 1:] == ranked[:, :-1]).any(axis=1)
            if tied.any():
                order[tied] = np.lexsort((match[tied], -sims[tied]), axis=1)
            rel = np.take_along_axis(match, order, axis=1)  # (B, G') relevance in rank order
            n_rel = rel.sum(axis=1)
            row, col = np.nonzero(rel)  # relevant positions, row by row in rank order
            found = np.arange(len(row)) - (np.cumsum(n_rel) - n_rel)[row] + 1  # relevant rows up to this rank
            ap_sum = np.bincount(row, weights=found / (col + 1), minlength=len(rel))  # sum of precision@rank
            ap = np.where(n_rel > 0, ap_sum / np.maximum(n_rel, 1), 0.0)
            aps.append(ap)
        a = np.concatenate(aps) if aps else np.zeros(0)
        out[attr] = float(a.mean()) if len(a) else float("nan")
        total += float(a.sum())
        count += len(a)
    return {"overall": total / count if count else float("nan"), **out}


# --- whole-vector protocols (DAtRNet, FashionSearchNet, ADDE) -------------------------------------------------


def topk_hits(
    query_vecs: ArrayLike,
    gallery_vecs: ArrayLike,
    query_targets: ArrayLike,
    gallery_labels: ArrayLike,
    k: int = TOP_K,
    attributes: Sequence[int] | None = None,
    *,
    exclude_self: bool = False,
    ignore_missing: bool = False,
) -> np.ndarray:
    """Per query, whether the top-k retrieval succeeds (see :func:`topk_retrieval_accuracy`); ``(Q,)`` bool."""
    q, g, qt, gl = vector_sets(query_vecs, gallery_vecs, query_targets, gallery_labels, k, attributes, exclude_self)
    out = np.zeros(q.shape[0], dtype=bool)
    for rows, dist, equal, considered in vector_blocks(q, g, qt, gl, exclude_self, ignore_missing):
        match = (equal | ~considered[:, None, :]).all(axis=2)  # (B, G): equal on every considered attribute
        if exclude_self:
            match[np.arange(len(rows)), rows] = False
        out[rows] = first_match_rank(-dist, match) < int(k)
    return out


def topk_retrieval_accuracy(
    query_vecs: ArrayLike,
    gallery_vecs: ArrayLike,
    query_targets: ArrayLike,
    gallery_labels: ArrayLike,
    k: int = TOP_K,
    attributes: Sequence[int] | None = None,
    *,
    exclude_self: bool = False,
    ignore_missing: bool = False,
) -> float:
    """Top-k retrieval accuracy of DAtRNet (004, Tables 2-4) and FashionSearchNet / ADDE (``eval.py`` of
    github.com/amzn/fashion-attribute-disentanglement).

    Each query ranks the gallery by the L2 distance of the whole vectors and succeeds when one of its ``k``
    nearest has a label vector equal to the query's target on every attribute considered. "Query" search
    passes the query's own labels as target; "query + manipulation" passes the manipulated target vectors
    (:func:`manipulation_queries`) and the manipulated query vectors.

    Missing values: by default the comparison is on the codes, so a missing value (-1) in the target matches
    only a missing value in the gallery -- the full-vector comparison of the reference code, where a missing
    attribute is an all-zero one-hot block. With ``ignore_missing`` the target's missing attributes are not
    considered at all.

    Args:
        query_vecs: ``(Q, D)`` query vectors (concatenated sub-embeddings, manipulated or not).
        gallery_vecs: ``(G, D)`` gallery vectors.
        query_targets: ``(Q, T)`` target codes.
        gallery_labels: ``(G, T)`` gallery codes.
        k: the cut-off (30 in both papers).
        attributes: the label columns compared; default all.
        exclude_self: query ``i`` is gallery row ``i`` and is never retrieved.
        ignore_missing: leave the target's missing attributes out of the comparison.

    Returns:
        The share of queries with a match in the top ``k``.
    """
    hits = topk_hits(
        query_vecs,
        gallery_vecs,
        query_targets,
        gallery_labels,
        k,
        attributes,
        exclude_self=exclude_self,
        ignore_missing=ignore_missing,
    )
    return float(hits.mean()) if hits.size else float("nan")


def ndcg_scores(
    query_vecs: ArrayLike,
    gallery_vecs: ArrayLike,
    query_targets: ArrayLike,
    gallery_labels: ArrayLike,
    k: int = TOP_K,
    attributes: Sequence[int] | None = None,
    *,
    exclude_self: bool = False,
    ignore_missing: bool = False,
) -> np.ndarray:
    """Per query NDCG@k of ADDE (see :func:`ndcg_at_k`); ``(Q,)`` float."""
    q, g, qt, gl = vector_sets(query_vecs, gallery_vecs, query_targets, gallery_labels, k, attributes, exclude_self)
    k_eff = min(int(k), g.shape[0] - (1 if exclude_self else 0))
    out = np.zeros(q.shape[0], dtype=np.float64)
    if k_eff <= 0:
        return np.full(q.shape[0], np.nan)
    discount = 1.0 / np.log2(np.arange(2, k_eff + 2))  # position j = 1..k: 1 / log2(j + 1)
    for rows, dist, equal, considered in vector_blocks(q, g, qt, gl, exclude_self, ignore_missing):
        rel = (equal & considered[:, None, :]).sum(axis=2) / considered.sum(axis=1)[:, None]  # (B, G) in [0, 1]
        for b in range(len(rows)):
            d = dist[b]
            kth = np.partition(d, k_eff - 1)[k_eff - 1]
            cand = np.flatnonzero(d <= kth)  # every row that can be in the top k, ties included
            # nearest first; tied rows: less relevant first (ties count wrong); then gallery order
            top = cand[np.lexsort((cand, rel[b, cand], d[cand]))][:k_eff]
            out[rows[b]] = ((2.0 ** rel[b, top] - 1.0) * discount).sum() / discount.sum()
    return out


def ndcg_at_k(
    query_vecs: ArrayLike,
    gallery_vecs: ArrayLike,
    query_targets: ArrayLike,
    gallery_labels: ArrayLike,
    k: int = TOP_K,
    attributes: Sequence[int] | None = None,
    *,
    exclude_self: bool = False,
    ignore_missing: bool = False,
) -> float:
    """NDCG@k of ADDE (Hou et al., ICCV 2021), as ``compute_NDCG`` and ``eval.py`` of
    github.com/amzn/fashion-attribute-disentanglement compute it.

    The relevance of the ``j``-th retrieved row is the fraction of the considered attributes on which its code
    equals the target's (ADDE's ``match_cnt / len(attr_num)``). ``DCG = sum_j (2^rel_j - 1) / log(j + 1)``
    over the ``k`` nearest rows by L2 distance, and the ideal DCG is that of ``k`` fully relevant rows (not the
    best ordering of the actual gallery), so NDCG is 1 only when all ``k`` rows match the whole target. ADDE's
    NDCG_target and NDCG_others are this function on the manipulated column alone (``attributes=[t]``) and on
    the other columns, over the queries that manipulate ``t``. Missing values as in
    :func:`topk_retrieval_accuracy`.

    Returns:
        The mean NDCG@k over the queries.
    """
    s = ndcg_scores(
        query_vecs,
        gallery_vecs,
        query_targets,
        gallery_labels,
        k,
        attributes,
        exclude_self=exclude_self,
        ignore_missing=ignore_missing,
    )
    return float(s.mean()) if s.size else float("nan")


# --- the manipulation protocol --------------------------------------------------------------------------------


class ManipulationQuery(NamedTuple):
    """One "query + manipulation" of the FashionSearchNet / ADDE / DAtRNet protocol.

    Attributes:
        query: row index of the query image in the query set.
        attribute: the label column changed.
        value: its new value code.
        target: ``(T,)`` codes the retrieved item must carry (the query's labels with ``attribute`` set to
            ``value``).
    """

    query: int
    attribute: int
    value: int
    target: np.ndarray


def manipulation_queries(
    codes: ArrayLike,
    gallery_codes: ArrayLike,
    attributes: Sequence[int] | None = None,
    *,
    seed: int,
    per_query: int = 1,
    ignore_missing: bool = False,
) -> list[ManipulationQuery]:
    """The query list of the attribute-manipulation protocol (ADDE ``ref_test``/``gt_test``, DAtRNet §4).

    For each query row, a candidate manipulation sets one labelled attribute ``t`` (among ``attributes``) to
    another value ``v``; it is kept only when the gallery holds a row whose labels equal the resulting target
    vector (compared as :func:`topk_retrieval_accuracy` compares them), so every query can succeed. Up to
    ``per_query`` candidates are drawn per query without replacement. The query itself never equals its target
    (they differ in ``t``), so the same set can serve as queries and gallery.

    Args:
        codes: ``(N, T)`` codes of the query rows.
        gallery_codes: ``(G, T)`` codes of the gallery.
        attributes: the columns that may be manipulated; default all.
        seed: the draw's seed (the list is deterministic for it).
        per_query: manipulations per query row at most.
        ignore_missing: a target's missing attributes are not compared (see :func:`topk_retrieval_accuracy`).

    Returns:
        The queries, ordered by query row, then column and value.
    """
    qc, gc, allowed = protocol_inputs(codes, gallery_codes, attributes, per_query)
    rng = np.random.default_rng(seed)
    out: list[ManipulationQuery] = []
    for start, block, differ, n_diff in differences(qc, gc, ignore_missing):
        for b, row in enumerate(block):
            # a gallery row that differs from the query in exactly one allowed, labelled column t (and is
            # labelled there) is the target of "t -> its value"
            one = np.flatnonzero(n_diff[b] == 1)
            t = differ[b, one].argmax(axis=1)
            v = gc[one, t]
            keep = allowed[t] & (row[t] >= 0) & (v >= 0)
            if not keep.any():
                continue
            pairs = np.unique(np.stack([t[keep], v[keep]], axis=1), axis=0)  # (P, 2) sorted (column, value)
            pick = np.sort(rng.choice(len(pairs), size=min(per_query, len(pairs)), replace=False))
            for col, val in pairs[pick]:
                target = row.copy()
                target[col] = val
                out.append(ManipulationQuery(start + b, int(col), int(val), target))
    return out


class MultiManipulationQuery(NamedTuple):
    """A query with several attributes changed at once (DAtRNet's third use case).

    Attributes:
        query: row index of the query image.
        attributes: the changed label columns, increasing.
        values: their new value codes.
        target: ``(T,)`` codes the retrieved item must carry.
    """

    query: int
    attributes: tuple[int, ...]
    values: tuple[int, ...]
    target: np.ndarray


def multi_manipulation_queries(
    codes: ArrayLike,
    gallery_codes: ArrayLike,
    changes: int = 2,
    attributes: Sequence[int] | None = None,
    *,
    seed: int,
    per_query: int = 1,
    ignore_missing: bool = False,
) -> list[MultiManipulationQuery]:
    """Queries that change ``changes`` attributes at once (DAtRNet §4, "multiple attribute manipulations").

    As :func:`manipulation_queries`, with targets that differ from the query in exactly ``changes`` labelled
    columns among ``attributes``, kept only when the gallery holds the target vector.

    Returns:
        The queries, ordered by query row, then changed columns and values.
    """
    if changes < 1:
        raise VestisError(f"changes: expected at least 1, got {changes}")
    qc, gc, allowed = protocol_inputs(codes, gallery_codes, attributes, per_query)
    rng = np.random.default_rng(seed)
    out: list[MultiManipulationQuery] = []
    for start, block, differ, n_diff in differences(qc, gc, ignore_missing):
        for b, row in enumerate(block):
            cand = np.flatnonzero(n_diff[b] == changes)
            d = differ[b, cand]  # (M, T)
            ok = ~(d & (~allowed | (row < 0))[None, :]).any(axis=1) & ~(d & (gc[cand] < 0)).any(axis=1)
            if not ok.any():
                continue
            targets = np.unique(np.where(d[ok], gc[cand[ok]], row), axis=0)  # (P, T) distinct targets
            found = []
            for target in targets:
                changed = np.flatnonzero(target != row)
                found.append((tuple(int(c) for c in changed), tuple(int(v) for v in target[changed]), target))
            found.sort(key=lambda f: (f[0], f[1]))
            pick = np.sort(rng.choice(len(found), size=min(per_query, len(found)), replace=False))
            out.extend(MultiManipulationQuery(start + b, *found[i][:2], found[i][2]) for i in pick)
    return out
