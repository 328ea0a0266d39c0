"""The substitute-retrieval protocol of the papers on one gallery: every retrieval metric of a set of embeddings.

One function, :func:`retrieval_metrics`, shared by ``vestis evaluate`` (embedding checkpoints) and
``bench/embeddings.py``, so the numbers of the two are the same numbers:

- **query top-k accuracy** (DAtRNet Table 3 "Query"): a query succeeds when one of its ``k`` nearest gallery rows
  (L2 distance of the concatenated sub-embeddings) carries the query's whole label vector. The query is not in its
  own gallery, and a query is kept only when another gallery row carries its label vector (so every kept query can
  succeed, as in the manipulation protocol);
- **query + manipulation top-k accuracy** and **NDCG@k** (DAtRNet, FashionSearchNet, ADDE): one attribute of the
  query changed to another value; the query's sub-embedding of that attribute is replaced by the prototype of the
  new value (the mean training sub-embedding, DAtRNet §3.3) and the retrieval succeeds when a top-``k`` row carries
  the target vector; queries are kept only when the gallery holds their target vector
  (:func:`~vestis.eval.retrieval.manipulation_queries`); the query image stays in the gallery (it never carries the
  target);
- **R@K** for K = 5, 10, 20 (the multi-column paper), per attribute and averaged over the attributes as the paper
  does; **triplet accuracy** on triplets built from the gallery by the paper's procedure; **mAP** per attribute
  (ASEN).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vestis.data.triplets import build_condition_triplets
from vestis.eval.retrieval import (
    manipulation_queries,
    mean_average_precision,
    ndcg_at_k,
    recall_at_k,
    stack_codes,
    topk_hits,
    topk_retrieval_accuracy,
    triplet_accuracy,
)
from vestis.retrieval.prototypes import manipulate, prototypes

__all__ = ["RECALL_KS", "retrieval_metrics"]

RECALL_KS = (5, 10, 20)


def _nan_to_none(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def retrieval_metrics(
    gallery: Mapping[str, np.ndarray],
    gallery_codes: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    reference_codes: Mapping[str, np.ndarray],
    attributes: Sequence[str],
    *,
    k: int = 30,
    seed: int = 0,
) -> dict[str, Any]:
    """Every retrieval metric of the protocol above.

    Args:
        gallery: ``{attribute: (N, d)}`` unit sub-embeddings of the evaluated split (gallery and queries).
        gallery_codes: ``{attribute: (N,)}`` its value codes (:func:`~vestis.data.triplets.value_codes`).
        reference: sub-embeddings of the rows the prototypes come from (the training split).
        reference_codes: their codes.
        attributes: the attributes, in layout order.
        k: the top-k cut-off (30 in DAtRNet and ADDE).
        seed: the seed of the manipulation query list and of the triplets.

    Returns:
        ``summary`` (scalars: ``query_top{k}``, ``manipulation_top{k}``, ``manipulation_ndcg{k}``,
        ``mean_recall@K``, ``triplet_accuracy``, ``map`` and the query counts) and ``attributes`` (per attribute:
        ``recall@K``, ``triplet_accuracy``, ``map``); ``None`` where a metric has no query.
    """
    names = list(attributes)
    labels = stack_codes(gallery_codes, names)  # (N, T)
    vecs = np.concatenate([np.asarray(gallery[a], np.float32) for a in names], 1)  # (N, sum d), layout order
    _, inverse, counts = np.unique(labels, axis=0, return_inverse=True, return_counts=True)
    keep = np.flatnonzero(counts[inverse.reshape(-1)] > 1)
    hits = topk_hits(vecs, vecs, labels, labels, k, exclude_self=True) if len(keep) else np.zeros(0, bool)
    summary: dict[str, Any] = {
        f"query_top{k}": float(hits[keep].mean()) if len(keep) else None,
        "num_queries": len(keep),
    }
    queries = manipulation_queries(labels, labels, seed=seed)
    summary["num_manipulation_queries"] = len(queries)
    if queries:
        protos = prototypes(reference, reference_codes)
        rows = np.array([q.query for q in queries])
        changes = {a: np.full(len(queries), -1, np.int64) for a in names}
        for i, q in enumerate(queries):
            changes[names[q.attribute]][i] = q.value
        moved = manipulate({a: np.asarray(gallery[a], np.float32)[rows] for a in names}, changes, protos)
        qvecs = np.concatenate([moved[a] for a in names], 1)
        targets = np.stack([q.target for q in queries])
        summary[f"manipulation_top{k}"] = topk_retrieval_accuracy(qvecs, vecs, targets, labels, k)
        summary[f"manipulation_ndcg{k}"] = _nan_to_none(ndcg_at_k(qvecs, vecs, targets, labels, k))
    else:
        summary[f"manipulation_top{k}"] = summary[f"manipulation_ndcg{k}"] = None
    recall = recall_at_k(gallery, gallery_codes, ks=RECALL_KS)
    trip = triplet_accuracy(gallery, build_condition_triplets(gallery_codes, seed=seed))
    ap = mean_average_precision(gallery, gallery_codes)
    for r in RECALL_KS:  # the multi-column paper averages R@K over the attribute dimensions
        per = [recall[a][r] for a in names if not np.isnan(recall[a][r])]
        summary[f"mean_recall@{r}"] = float(np.mean(per)) if per else None
    summary["triplet_accuracy"] = _nan_to_none(trip["overall"])
    summary["map"] = _nan_to_none(ap["overall"])
    per_attr = {
        a: {
            **{f"recall@{r}": _nan_to_none(recall[a][r]) for r in RECALL_KS},
            "triplet_accuracy": _nan_to_none(trip.get(a, float("nan"))),
            "map": _nan_to_none(ap.get(a, float("nan"))),
        }
        for a in names
    }
    return {"summary": summary, "attributes": per_attr}
