"""Evaluate every attribute of a taxonomy at once, into one JSON-ready dict.

The input is what the training loop and batch inference produce: per attribute, probabilities
``(N, K)``, targets (single-label: int class indices ``(N,)`` with ``-1`` where missing; multi-label:
multi-hot ``(N, K)``) and a bool mask ``(N,)`` of labelled rows. The output (see
:func:`evaluate_predictions`) holds only ``str``/``int``/``float``/``None``/``dict`` values, so it can
be logged, compared across runs and written as ``metrics.json`` unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from vestis.data.taxonomy import Attribute, Taxonomy
from vestis.errors import VestisError
from vestis.eval.calibration import expected_calibration_error
from vestis.eval.metrics import (
    DEFAULT_THRESHOLD,
    PRF,
    accuracy,
    average_per_class_accuracy,
    macro_f1,
    micro_f1,
    one_hot,
    per_class_accuracy,
    per_value_prf,
    recall_at_k,
    recall_at_k_mmfashion,
    topk_accuracy,
    weighted_f1,
)

__all__ = ["TOP_KS", "attribute_table", "evaluate_predictions", "format_table", "kind_score"]

TOP_KS = (1, 3, 5)  # the k of top-k accuracy and recall@k reported by the papers (DeepFashion: 3, 5)


def _num(x: float) -> float | None:
    """A plain float, or ``None`` for an undefined (nan) metric, since JSON has no nan."""
    x = float(x)
    return None if math.isnan(x) else x


def _mean(xs: Iterable[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return float(np.mean(vals)) if vals else None


def _per_value(attr: Attribute, prf: PRF) -> dict[str, dict[str, Any]]:
    return {
        v: {
            "precision": _num(prf.precision[j]),
            "recall": _num(prf.recall[j]),
            "f1": _num(prf.f1[j]),
            "support": int(prf.support[j]),
        }
        for j, v in enumerate(attr.values)
    }


def _binary_ap(scores: np.ndarray, truth: np.ndarray) -> float:
    """``sklearn.metrics.average_precision_score`` of one value: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct
    score thresholds, highest first (tied scores form one step). Written out because scikit-learn's input
    validation costs ~10 ms a call, and validation calls this for every value each epoch."""
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each group of tied scores
    tps = np.cumsum(t)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _average_precision(probs: np.ndarray, multi_hot: np.ndarray, mask: np.ndarray) -> list[float | None]:
    """Per value AP over the labelled rows (scikit-learn's step-wise definition); ``None`` without a positive."""
    m = mask.astype(bool)
    p, t = probs[m].astype(np.float64), (multi_hot[m] > 0).astype(np.float64)
    return [_binary_ap(p[:, j], t[:, j]) if t[:, j].any() else None for j in range(probs.shape[1])]


def kind_score(result: Mapping[str, Any]) -> float | None:
    """The headline score of one attribute's result: accuracy when single-label, micro-F1 when multi-label.

    Micro-F1 on a single-label attribute counts every (item, value) pair, so a model that always puts all
    its mass on the majority value can beat a better but less sure one; accuracy cannot be gamed that way.
    """
    return result.get("accuracy") if result["kind"] == "single" else result.get("micro_f1")


def _attribute(
    attr: Attribute,
    probs: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    threshold: float,
    calibrated: np.ndarray | None,
) -> dict[str, Any]:
    k = attr.num_values
    multi_hot = one_hot(targets, k) if attr.kind == "single" else targets
    out: dict[str, Any] = {"kind": attr.kind, "roi": attr.roi, "num_values": k, "n": int(mask.sum())}
    out["micro_f1"] = _num(micro_f1(probs, multi_hot, threshold, mask))
    out["macro_f1"] = _num(macro_f1(probs, multi_hot, threshold, mask))
    out["per_value"] = _per_value(attr, per_value_prf(probs, multi_hot, threshold, mask))
    aps = _average_precision(probs, multi_hot, mask)
    for v, ap in zip(attr.values, aps, strict=True):
        out["per_value"][v]["average_precision"] = ap
    out["mean_average_precision"] = _mean(aps)
    # top-k for k >= K is 1 by construction: such k are left out rather than reported as a perfect score
    ks = [kk for kk in TOP_KS if kk < k]
    if attr.kind == "single":
        out["accuracy"] = _num(accuracy(probs, targets, mask))
        out["weighted_f1"] = _num(weighted_f1(probs, targets, mask))
        out["average_per_class_accuracy"] = _num(average_per_class_accuracy(probs, targets, mask))
        out["ece"] = _num(expected_calibration_error(probs, targets, mask))
        for kk in ks:
            out[f"top{kk}"] = _num(topk_accuracy(probs, targets, kk, mask))
        acc, support = per_class_accuracy(probs, targets, mask)
        out["per_class_accuracy"] = {
            v: {"accuracy": _num(acc[j]), "support": int(support[j])} for j, v in enumerate(attr.values)
        }
    else:
        for kk in ks:
            out[f"recall_at_{kk}"] = _num(recall_at_k(probs, targets, kk, mask))
        for kk in ks:
            out[f"mmfashion_recall_at_{kk}"] = _num(recall_at_k_mmfashion(probs, targets, kk, mask))
    if calibrated is not None:
        out["calibrated"] = {
            "thresholds": {v: float(calibrated[j]) for j, v in enumerate(attr.values)},
            "micro_f1": _num(micro_f1(probs, multi_hot, calibrated, mask)),
            "macro_f1": _num(macro_f1(probs, multi_hot, calibrated, mask)),
            "per_value": _per_value(attr, per_value_prf(probs, multi_hot, calibrated, mask)),
        }
    return out


def _inputs(
    taxonomy: Taxonomy,
    probs: Mapping[str, ArrayLike],
    targets: Mapping[str, ArrayLike],
    masks: Mapping[str, ArrayLike],
    thresholds: Mapping[str, ArrayLike] | None,
) -> tuple[list[Attribute], int]:
    """Check names and shapes; return the attributes to evaluate (taxonomy order) and the item count."""
    if not probs:
        raise VestisError("probs: expected predictions for at least one attribute, got none")
    for what, d in (("probs", probs), ("thresholds", thresholds or {})):
        unknown = [name for name in d if name not in taxonomy]
        if unknown:
            raise VestisError(f"{what}: unknown attribute(s) {unknown}; the taxonomy has {taxonomy.names}")
    attrs = [a for a in taxonomy if a.name in probs]
    n_items: int | None = None
    for a in attrs:
        for what, d in (("targets", targets), ("masks", masks)):
            if a.name not in d:
                raise VestisError(f"{what}: no entry for attribute {a.name!r}, which has predictions")
        shape = np.shape(probs[a.name])
        if len(shape) != 2 or shape[1] != a.num_values:
            raise VestisError(f"probs[{a.name!r}]: expected shape (N, {a.num_values}), got {shape}")
        if n_items is None:
            n_items = shape[0]
        elif shape[0] != n_items:
            raise VestisError(f"probs[{a.name!r}]: {shape[0]} rows, but other attributes have {n_items}")
        want = (shape[0],) if a.kind == "single" else shape
        got = np.shape(targets[a.name])
        if got != want:
            kind = "int class indices" if a.kind == "single" else "a multi-hot array"
            raise VestisError(f"targets[{a.name!r}]: expected {kind} of shape {want}, got {got}")
        if np.shape(masks[a.name]) != (shape[0],):
            raise VestisError(f"masks[{a.name!r}]: expected shape ({shape[0]},), got {np.shape(masks[a.name])}")
        if thresholds and a.name in thresholds and np.shape(thresholds[a.name]) != (a.num_values,):
            raise VestisError(
                f"thresholds[{a.name!r}]: expected {a.num_values} thresholds, got shape {np.shape(thresholds[a.name])}"
            )
    return attrs, int(n_items or 0)


def evaluate_predictions(
    taxonomy: Taxonomy,
    probs: Mapping[str, ArrayLike],
    targets: Mapping[str, ArrayLike],
    masks: Mapping[str, ArrayLike],
    threshold: float = DEFAULT_THRESHOLD,
    thresholds: Mapping[str, ArrayLike] | None = None,
) -> dict[str, Any]:
    """Score every predicted attribute and summarise.

    Args:
        taxonomy: gives each attribute's kind, values (output order) and ROI.
        probs: attribute -> ``(N, K)`` probabilities; the attributes evaluated are these, in taxonomy order.
        targets: attribute -> int ``(N,)`` class indices (``-1`` where missing) for single-label attributes,
            0/1 ``(N, K)`` for multi-label ones.
        masks: attribute -> bool ``(N,)``: rows that carry a label for the attribute.
        threshold: decision threshold of micro-/macro-F1 and the per-value table (paper: 0.3).
        thresholds: optional attribute -> ``(K,)`` per-value thresholds (e.g. from
            :func:`~vestis.eval.metrics.calibrate_thresholds`); adds a ``calibrated`` section.

    Returns:
        A JSON-ready dict; undefined metrics (no labelled row, no true value) are ``None``::

            {"threshold": float, "num_items": int,
             "attributes": {name: {
                 "kind": "single"|"multi", "roi": "small"|"large"|None, "num_values": K, "n": labelled rows,
                 "micro_f1", "macro_f1",
                 "per_value": {value: {"precision", "recall", "f1", "support", "average_precision"}},
                 "mean_average_precision": mean AP over the values with a positive,
                 # single-label:
                 "accuracy", "weighted_f1", "average_per_class_accuracy", "top1", "top3", "top5"  (only k < K),
                 "ece": expected calibration error of the top-1 confidence (15 bins),
                 "per_class_accuracy": {value: {"accuracy", "support"}},
                 # multi-label (only k < K):
                 "recall_at_1", "recall_at_3", "recall_at_5",
                 "mmfashion_recall_at_1", "mmfashion_recall_at_3", "mmfashion_recall_at_5",
                 # with thresholds for this attribute:
                 "calibrated": {"thresholds": {value: t}, "micro_f1", "macro_f1", "per_value": {...}}}},
             "summary": {"num_attributes", "mean_micro_f1", "mean_micro_f1_small_roi",
                         "mean_micro_f1_large_roi", "mean_macro_f1", "mean_accuracy",
                         "mean_average_per_class_accuracy", "mean_average_precision",
                         "mean_kind_score" (accuracy of single-label, micro-F1 of multi-label attributes, averaged),
                         "mean_ece", "mean_micro_f1_calibrated" (only with thresholds)}}

        Means are over attributes whose metric is defined; the ROI means over attributes with that ``roi``.

    Raises:
        VestisError: unknown attribute names, a missing target or mask, or a shape that does not match.
    """
    attrs, n_items = _inputs(taxonomy, probs, targets, masks, thresholds)
    per_attr: dict[str, dict[str, Any]] = {}
    for a in attrs:
        cal = None
        if thresholds is not None and a.name in thresholds:
            cal = np.asarray(thresholds[a.name], dtype=np.float64)
        targ = np.asarray(targets[a.name])
        per_attr[a.name] = _attribute(a, np.asarray(probs[a.name]), targ, np.asarray(masks[a.name]), threshold, cal)

    res = per_attr.values()
    summary: dict[str, Any] = {
        "num_attributes": len(per_attr),
        "mean_micro_f1": _mean(r["micro_f1"] for r in res),
        "mean_micro_f1_small_roi": _mean(r["micro_f1"] for r in res if r["roi"] == "small"),
        "mean_micro_f1_large_roi": _mean(r["micro_f1"] for r in res if r["roi"] == "large"),
        "mean_macro_f1": _mean(r["macro_f1"] for r in res),
        "mean_accuracy": _mean(r["accuracy"] for r in res if r["kind"] == "single"),
        "mean_weighted_f1": _mean(r["weighted_f1"] for r in res if r["kind"] == "single"),
        "mean_average_per_class_accuracy": _mean(r["average_per_class_accuracy"] for r in res if r["kind"] == "single"),
        "mean_average_precision": _mean(r["mean_average_precision"] for r in res),
        "mean_kind_score": _mean(kind_score(r) for r in res),
        "mean_ece": _mean(r["ece"] for r in res if r["kind"] == "single"),
    }
    if thresholds is not None:
        summary["mean_micro_f1_calibrated"] = _mean(r["calibrated"]["micro_f1"] for r in res if "calibrated" in r)
    return {"threshold": float(threshold), "num_items": n_items, "attributes": per_attr, "summary": summary}


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


def attribute_table(metrics: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The per-attribute overview as a header and rows of formatted cells (shared by text, Markdown and HTML).

    Columns: attribute, kind, roi, labelled rows, micro-F1 at the threshold, macro-F1, accuracy, weighted F1 and
    average per-class accuracy (single-label), top-3/top-5 accuracy (single-label) or recall@3/recall@5
    (multi-label), mean average precision, ECE (single-label), calibrated micro-F1 when any attribute has it,
    and, when ``metrics`` holds a ``reference`` evaluation (the majority-value predictor of
    :mod:`vestis.eval.reference`), that reference's score of the same kind (accuracy or micro-F1) and its mAP.
    ``–`` marks a metric that does not apply or is undefined.

    Args:
        metrics: the dict of :func:`evaluate_predictions`.
    """
    attrs: Mapping[str, Mapping[str, Any]] = metrics["attributes"]
    cal = any("calibrated" in r for r in attrs.values())
    head = [
        "attribute",
        "kind",
        "roi",
        "n",
        f"micro-F1@{metrics['threshold']:g}",
        "macro-F1",
        "accuracy",
        "weighted F1",
        "avg class acc",
        "top-3 / R@3",
        "top-5 / R@5",
        "mAP",
        "ECE",
    ]
    if cal:
        head.append("micro-F1 calibrated")
    ref: Mapping[str, Mapping[str, Any]] | None = (metrics.get("reference") or {}).get("attributes")
    if ref is not None:
        head += ["reference acc / F1", "reference mAP"]
    rows = []
    for name, r in attrs.items():
        single = r["kind"] == "single"
        row = [
            name,
            r["kind"],
            r["roi"],
            r["n"],
            r["micro_f1"],
            r["macro_f1"],
            r.get("accuracy"),
            r.get("weighted_f1"),
            r.get("average_per_class_accuracy"),
            r.get("top3" if single else "recall_at_3"),
            r.get("top5" if single else "recall_at_5"),
            r.get("mean_average_precision"),
            r.get("ece"),
        ]
        if cal:
            row.append(r["calibrated"]["micro_f1"] if "calibrated" in r else None)
        if ref is not None:
            rr = ref.get(name)
            row += [kind_score(rr), rr.get("mean_average_precision")] if rr else [None, None]
        rows.append([_fmt(c) for c in row])
    return head, rows


def format_table(metrics: Mapping[str, Any]) -> str:
    """A Markdown table of :func:`attribute_table`, followed by the summary; aligned, so readable as plain text.

    Args:
        metrics: the dict of :func:`evaluate_predictions`.
    """
    head, rows = attribute_table(metrics)
    rows = [[c.replace("|", "\\|") for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    s = metrics["summary"]
    lines += [
        "",
        f"mean micro-F1: {_fmt(s['mean_micro_f1'])} (small ROI {_fmt(s['mean_micro_f1_small_roi'])}, "
        f"large ROI {_fmt(s['mean_micro_f1_large_roi'])}); mean macro-F1: {_fmt(s['mean_macro_f1'])}; "
        f"mean accuracy: {_fmt(s['mean_accuracy'])}; mean weighted F1: {_fmt(s.get('mean_weighted_f1'))}; "
        f"mean average per-class accuracy: {_fmt(s['mean_average_per_class_accuracy'])}",
    ]
    if "mean_micro_f1_calibrated" in s:
        lines.append(f"mean micro-F1 with calibrated thresholds: {_fmt(s['mean_micro_f1_calibrated'])}")
    lines.append(
        f"mean kind score (accuracy or micro-F1): {_fmt(s.get('mean_kind_score'))}; "
        f"mean AP: {_fmt(s.get('mean_average_precision'))}; mean ECE: {_fmt(s.get('mean_ece'))}"
    )
    if metrics.get("reference"):
        rs = metrics["reference"]["summary"]
        lines.append(
            f"majority-value reference: mean kind score {_fmt(rs.get('mean_kind_score'))}, "
            f"mean micro-F1 {_fmt(rs.get('mean_micro_f1'))}, mean AP {_fmt(rs.get('mean_average_precision'))}"
        )
    return "\n".join(lines) + "\n"
