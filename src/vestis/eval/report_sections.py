"""What an evaluation report adds to the metric tables: per-``meta_`` breakdowns, the error gallery's choice of
items, and the text of the selection, threshold-choice and confidence-interval sections.

Computations here are pure (arrays in, JSON-ready dicts out); :mod:`vestis.eval.report` lays them out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from vestis.data.taxonomy import Attribute, Taxonomy
from vestis.eval.evaluator import evaluate_predictions

__all__ = [
    "BREAKDOWN_METRICS",
    "GALLERY_SIZE",
    "MAX_META_VALUES",
    "Mistake",
    "confident_mistakes",
    "meta_breakdowns",
    "selection_text",
    "threshold_rows",
]

GALLERY_SIZE = 8  # mistakes shown per attribute: a row of thumbnails, enough to see a pattern
MAX_META_VALUES = 20  # a free-text meta column can hold a value per item; the rest are pooled as "(other)"
BREAKDOWN_METRICS = ("mean_kind_score", "mean_micro_f1", "mean_accuracy", "mean_average_precision")
NONE_VALUE, OTHER_VALUE = "(none)", "(other)"


@dataclass(frozen=True)
class Mistake:
    """One wrong prediction: the item's row, how sure the model was, and the true and predicted values."""

    row: int
    confidence: float
    true: str
    predicted: str


def confident_mistakes(
    attr: Attribute, probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, threshold: float,
    limit: int = GALLERY_SIZE,
) -> list[Mistake]:  # fmt: skip
    """The labelled items the model got wrong with the highest confidence, most confident first.

    Single-label: the argmax differs from the truth; confidence is the argmax probability. Multi-label: the
    thresholded set differs from the true set; confidence is that of the surest wrong decision (``p`` of a
    false positive, ``1 - p`` of a missed value).
    """
    m = mask.astype(bool)
    rows = np.flatnonzero(m)
    if attr.kind == "single":
        pred = probs[rows].argmax(axis=1)
        wrong = pred != targets[rows]
        conf = probs[rows].max(axis=1)
        found = [
            Mistake(int(r), float(c), attr.values[int(targets[r])], attr.values[int(p)])
            for r, c, p, w in zip(rows, conf, pred, wrong, strict=True)
            if w
        ]
    else:
        p = probs[rows]
        t = targets[rows] > 0
        decided = p >= threshold
        # (n, K) confidence of each wrong decision, 0 where the decision is right
        err = np.where(decided & ~t, p, 0.0) + np.where(~decided & t, 1.0 - p, 0.0)
        found = []
        for i, r in enumerate(rows):
            if (decided[i] != t[i]).any():
                true = ", ".join(v for v, x in zip(attr.values, t[i], strict=True) if x) or "nothing"
                got = ", ".join(v for v, x in zip(attr.values, decided[i], strict=True) if x) or "nothing"
                found.append(Mistake(int(r), float(err[i].max()), true, got))
    found.sort(key=lambda x: (-x.confidence, x.row))
    return found[:limit]


def meta_breakdowns(
    taxonomy: Taxonomy,
    probs: Mapping[str, ArrayLike],
    targets: Mapping[str, ArrayLike],
    masks: Mapping[str, ArrayLike],
    meta: Mapping[str, Sequence[str | None]],
    threshold: float,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Headline metrics per value of each ``meta_`` column.

    Args:
        taxonomy: the attributes' kinds and values.
        probs: attribute -> ``(N, K)``; ``targets`` and ``masks`` as for ``evaluate_predictions``.
        targets: see ``probs``.
        masks: see ``probs``.
        meta: column name (without ``meta_``) -> ``N`` values (``None`` where the item has none).
        threshold: the fixed decision threshold.

    Returns:
        column -> value -> ``{"n": items, **BREAKDOWN_METRICS}``, values by decreasing ``n``; beyond
        :data:`MAX_META_VALUES` values the rest are pooled as ``"(other)"``, items without one as ``"(none)"``.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for column, raw in meta.items():
        values = np.array([NONE_VALUE if v in (None, "") else str(v) for v in raw], dtype=object)
        counts = Counter(values.tolist())
        keep = {v for v, _ in counts.most_common(MAX_META_VALUES)}
        values = np.array([v if v in keep else OTHER_VALUE for v in values], dtype=object)
        table: dict[str, dict[str, Any]] = {}
        for v, n in Counter(values.tolist()).most_common():
            rows = np.flatnonzero(values == v)
            m = evaluate_predictions(
                taxonomy,
                {k: np.asarray(p)[rows] for k, p in probs.items()},
                {k: np.asarray(t)[rows] for k, t in targets.items()},
                {k: np.asarray(x)[rows] for k, x in masks.items()},
                threshold=threshold,
            )
            table[v] = {"n": int(n), **{k: m["summary"][k] for k in BREAKDOWN_METRICS}}
        out[column] = table
    return out


def _f(x: Any) -> str:
    if x is None:
        return "–"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def selection_text(metrics: Mapping[str, Any]) -> str:
    """One sentence on the metric that chose the checkpoint (``metrics["selection"]``), or "not recorded"."""
    sel = metrics.get("selection")
    if not isinstance(sel, Mapping) or "metric" not in sel:
        return "Selection metric: not recorded (the checkpoint predates it, or this is not a training checkpoint)."
    best = "highest" if sel.get("mode", "max") == "max" else "lowest"
    return (
        f"Selection metric: {sel['metric']} ({best} wins); the checkpoint is epoch {_f(sel.get('epoch'))} "
        f"with validation {sel['metric']} = {_f(sel.get('value'))}."
    )


def threshold_rows(metrics: Mapping[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """Per multi-label value: the threshold used and why, and its F1 at the fixed and at the used threshold.

    ``None`` when the checkpoint recorded no threshold choice (``metrics["threshold_choice"]``).
    """
    choice = metrics.get("threshold_choice")
    if not isinstance(choice, Mapping) or not choice:
        return None
    head = ["attribute", "value", "threshold", "source", "validation positives",
            f"F1 @{metrics['threshold']:g}", "F1 @ used threshold"]  # fmt: skip
    rows = []
    for name, r in metrics["attributes"].items():
        if r["kind"] != "multi" or name not in choice:
            continue  # the predictor uses thresholds for multi-label attributes only
        cal = r.get("calibrated", {}).get("per_value", {})
        for value, c in choice[name].items():
            fixed = r["per_value"].get(value, {}).get("f1")
            used = cal.get(value, {}).get("f1")
            rows.append([name, value, _f(c.get("threshold")), str(c.get("source", "–")),
                         _f(c.get("positives")), _f(fixed), _f(used)])  # fmt: skip
    return head, rows
