"""One model on two manifests: the Softlines paper's "cross-validation vs production" comparison.

``vestis evaluate MODEL --data A --compare B`` scores the same checkpoint on set A (its held-out split) and on
set B (e.g. the same products photographed or encoded as in production, or another catalog mapped to the same
attributes), and reports per attribute:

* single-label attributes: multi-class accuracy, per-class accuracy and average per-class accuracy on both
  (:mod:`vestis.eval.metrics`), the drop ``A - B`` of each, and the confusion-matrix difference: the confusion
  matrices normalised by true class (each row: how that class's items were predicted) of B minus A, so the
  difference does not depend on how many items each set holds;
* multi-label attributes: micro-F1 at the model's threshold on both and its drop;
* every attribute: the value-distribution shift between the two sets, as the total variation distance
  ``TVD = 1/2 * sum_v |p_A(v) - p_B(v)|`` (0: the same distribution, 1: disjoint) of the labelled values, and of
  the predicted values (argmax for single-label attributes). For a multi-label attribute ``p(v)`` is the share
  of all labelled positives that are ``v``.

Only labelled rows count (the usual masks). Files: ``compare.json``, ``compare.md``, ``compare.html`` and PNG
figures under ``figures/`` (see :mod:`vestis.eval.compare_figures`).
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vestis.data.dataset import EncodedTargets
from vestis.data.taxonomy import Attribute, Taxonomy
from vestis.errors import VestisError
from vestis.eval.metrics import accuracy, average_per_class_accuracy, micro_f1, per_class_accuracy
from vestis.io import atomic_write_bytes, atomic_write_text

__all__ = ["ComparisonResult", "compare_checkpoint", "compare_predictions", "format_comparison", "tvd"]


@dataclass
class ComparisonResult:
    metrics: dict[str, Any]
    files: dict[str, Path]


def _num(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def tvd(p: np.ndarray, q: np.ndarray) -> float | None:
    """Total variation distance ``1/2 * sum |p - q|`` of two count or share vectors (normalised here).

    Returns:
        ``None`` when either vector sums to zero (no labelled item: nothing to compare).
    """
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return None
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


def _shares(counts: np.ndarray, attr: Attribute) -> dict[str, float]:
    total = counts.sum()
    return {v: (float(c / total) if total > 0 else 0.0) for v, c in zip(attr.values, counts, strict=True)}


def _confusion(probs: np.ndarray, labels: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """``(K, K)`` counts: true class (rows) x argmax (columns) on the labelled rows."""
    cm = np.zeros((k, k), dtype=np.int64)
    m = mask.astype(bool)
    np.add.at(cm, (labels[m], probs[m].argmax(axis=1)), 1)
    return cm


def _row_shares(cm: np.ndarray) -> np.ndarray:
    rows = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, rows, out=np.full(cm.shape, np.nan), where=rows > 0)


def _single(attr: Attribute, probs: np.ndarray, enc: EncodedTargets) -> dict[str, Any]:
    y, m = enc.targets[attr.name], enc.masks[attr.name]
    pca, support = per_class_accuracy(probs, y, m)
    k = attr.num_values
    pred = np.bincount(probs[m].argmax(axis=1), minlength=k) if m.any() else np.zeros(k, np.int64)
    return {
        "n": int(m.sum()),
        "accuracy": _num(accuracy(probs, y, m)),
        "average_per_class_accuracy": _num(average_per_class_accuracy(probs, y, m)),
        "per_class_accuracy": {v: _num(float(a)) for v, a in zip(attr.values, pca, strict=True)},
        "support": {v: int(s) for v, s in zip(attr.values, support, strict=True)},
        "_label_counts": support.astype(np.float64),
        "_pred_counts": pred.astype(np.float64),
        "_confusion": _confusion(probs, y, m, k),
    }


def _multi(attr: Attribute, probs: np.ndarray, enc: EncodedTargets, threshold: float | np.ndarray) -> dict[str, Any]:
    t, m = enc.targets[attr.name], enc.masks[attr.name]
    pos = t[m].sum(axis=0) if m.any() else np.zeros(attr.num_values)
    pred = (probs[m] >= threshold).sum(axis=0) if m.any() else np.zeros(attr.num_values)
    return {
        "n": int(m.sum()),
        "micro_f1": _num(micro_f1(probs, t, threshold, m)) if m.any() else None,
        "support": {v: int(s) for v, s in zip(attr.values, pos, strict=True)},
        "_label_counts": np.asarray(pos, dtype=np.float64),
        "_pred_counts": np.asarray(pred, dtype=np.float64),
    }


def compare_predictions(
    taxonomy: Taxonomy,
    probs_a: dict[str, np.ndarray],
    enc_a: EncodedTargets,
    probs_b: dict[str, np.ndarray],
    enc_b: EncodedTargets,
    *,
    threshold: float = 0.3,
    thresholds: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The comparison of one model's predictions on set A and on set B (see the module docstring).

    Args:
        taxonomy: the model's taxonomy.
        probs_a, probs_b: ``{attribute: (N, K)}`` probabilities on each set.
        enc_a, enc_b: the sets' targets and masks (:func:`~vestis.data.dataset.encode_targets`).
        threshold: the decision threshold of multi-label attributes; ``thresholds`` per value where calibrated.

    Returns:
        ``{"attributes": {name: {...}}, "summary": {...}}`` with plain numbers (``None`` where undefined); each
        single-label attribute also holds ``confusion_a``, ``confusion_b`` (counts) and ``confusion_diff``
        (row shares of B minus A, ``None`` for a class absent from either set).
    """
    out: dict[str, Any] = {}
    for attr in taxonomy:
        if attr.name not in probs_a or attr.name not in probs_b:
            continue
        if attr.kind == "single":
            a, b = _single(attr, probs_a[attr.name], enc_a), _single(attr, probs_b[attr.name], enc_b)
            keys = ("accuracy", "average_per_class_accuracy")
            drop: dict[str, Any] = {key: _diff(a[key], b[key]) for key in keys}
            drop["per_class_accuracy"] = {
                v: _diff(a["per_class_accuracy"][v], b["per_class_accuracy"][v]) for v in attr.values
            }
            diff = _row_shares(b["_confusion"]) - _row_shares(a["_confusion"])
            extra = {
                "confusion_a": a.pop("_confusion").tolist(),
                "confusion_b": b.pop("_confusion").tolist(),
                "confusion_diff": [[_num(float(x)) for x in row] for row in diff],
            }
        else:
            th = thresholds.get(attr.name, threshold) if thresholds else threshold
            a, b = _multi(attr, probs_a[attr.name], enc_a, th), _multi(attr, probs_b[attr.name], enc_b, th)
            drop, extra = {"micro_f1": _diff(a["micro_f1"], b["micro_f1"])}, {}
        label_a, pred_a = a.pop("_label_counts"), a.pop("_pred_counts")
        label_b, pred_b = b.pop("_label_counts"), b.pop("_pred_counts")
        out[attr.name] = {
            "kind": attr.kind,
            "a": a,
            "b": b,
            "drop": drop,
            "distribution": {
                "a": _shares(label_a, attr),
                "b": _shares(label_b, attr),
                "label_tvd": tvd(label_a, label_b),
                "predicted_a": _shares(pred_a, attr),
                "predicted_b": _shares(pred_b, attr),
                "predicted_tvd": tvd(pred_a, pred_b),
            },
            **extra,
        }
    return {"attributes": out, "summary": _summary(out)}


def _mean(xs: list[float | None]) -> float | None:
    ys = [x for x in xs if x is not None]
    return float(np.mean(ys)) if ys else None


def _summary(attrs: dict[str, Any]) -> dict[str, Any]:
    single = [r for r in attrs.values() if r["kind"] == "single"]
    s: dict[str, Any] = {}
    for key in ("accuracy", "average_per_class_accuracy"):
        s[f"mean_{key}_a"] = _mean([r["a"][key] for r in single])
        s[f"mean_{key}_b"] = _mean([r["b"][key] for r in single])
        s[f"mean_{key}_drop"] = _mean([r["drop"][key] for r in single])
    s["mean_label_tvd"] = _mean([r["distribution"]["label_tvd"] for r in attrs.values()])
    s["mean_predicted_tvd"] = _mean([r["distribution"]["predicted_tvd"] for r in attrs.values()])
    return s


# --- scoring a checkpoint on a manifest -----------------------------------------------------------------------


def _predict(
    model: Any, manifest: Any, batch_size: int, workers: int, device: Any
) -> tuple[dict[str, np.ndarray], EncodedTargets]:
    """The model's probabilities and the targets on ``manifest``'s rows."""
    from torch.utils.data import DataLoader

    from vestis.data.dataset import AttributeDataset
    from vestis.inference.batch import predict_loader

    ds = AttributeDataset(manifest, model.taxonomy, model.config.data)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, shuffle=False)
    return predict_loader(model, loader, model.config.data, model.taxonomy, device), ds.encoded


@dataclass
class _Scorer:
    """What the comparison needs of a model: its settings and taxonomy, and its probabilities on some rows."""

    config: Any  # a Config
    taxonomy: Taxonomy
    predict: Callable[[Any], tuple[dict[str, np.ndarray], EncodedTargets]]
    thresholds: dict[str, Any]
    fingerprint: str | None
    combined: bool = False  # a per-attribute model: the data need only hold its attributes


def _scorer(
    checkpoint: str | os.PathLike[str], batch_size: int, workers: int, device: str | None, trust_checkpoint: bool
) -> _Scorer:
    """A checkpoint through its model and data loader, or a combined per-attribute model through the predictor
    ``vestis predict`` builds for it (:mod:`vestis.inference.combined`), scored as ``vestis evaluate`` scores it."""
    from vestis.data.dataset import encode_targets
    from vestis.inference.combined import is_combined

    if is_combined(checkpoint):
        from vestis.eval.run import predictor_config, predictor_probs
        from vestis.inference.predictor import Predictor

        pred = Predictor.from_path(checkpoint, device, trust_checkpoint=trust_checkpoint)
        if not pred.config:
            raise VestisError(f"{checkpoint}: its first member records no config, so the split cannot be recomputed")
        tax = pred.taxonomy
        return _Scorer(
            predictor_config(pred, Path(checkpoint)),
            tax,
            lambda rows: (predictor_probs(pred, rows, batch_size), encode_targets(rows.records, tax)),
            pred.thresholds,
            pred.fingerprint,
            combined=True,
        )
    if Path(checkpoint).suffix.lower() == ".onnx":
        raise VestisError(f"{checkpoint}: --compare scores a checkpoint (.ckpt); compare the checkpoint of the export")
    import torch

    from vestis.models.embedding import EmbeddingModel
    from vestis.train.checkpoint import load

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load(checkpoint, map_location=dev, trust=trust_checkpoint)
    if isinstance(model, EmbeddingModel):
        raise VestisError(f"{checkpoint}: --compare needs an attribute classifier; this is an embedding model")
    return _Scorer(
        model.config,
        model.taxonomy,
        lambda rows: _predict(model, rows, batch_size, workers, dev),
        model.thresholds or {},
        getattr(model, "fingerprint", None),
    )


def compare_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: str | os.PathLike[str],
    compare: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    taxonomy: str | os.PathLike[str] | None = None,
    compare_taxonomy: str | os.PathLike[str] | None = None,
    split: str = "test",
    compare_split: str | None = None,
    batch_size: int = 64,
    workers: int = 2,
    device: str | None = None,
    skip_invalid: bool = False,
    trust_checkpoint: bool = False,
) -> ComparisonResult:
    """Score ``checkpoint`` on ``split`` of ``data`` (A) and ``compare_split`` of ``compare`` (B); write the report.

    Args:
        checkpoint: a classifier checkpoint (``.ckpt``), or a combined per-attribute model (``combined.json`` of
            ``vestis train --per-attribute``, or its run folder), each attribute scored by its member.
        data: set A, e.g. the catalog the model was trained on (its held-out ``split``).
        compare: set B, e.g. production images; the same attributes (its taxonomy, when one is beside it or
            given as ``compare_taxonomy``, must equal the model's).
        out_dir: receives compare.json, compare.md, compare.html and figures/.
        split: the rows of A (train, val, test or all), recomputed with the model's data settings.
        compare_split: the rows of B (default: ``split``; ``all`` for a set that shares no products with A).
        batch_size, workers, device, skip_invalid, trust_checkpoint: as :func:`~vestis.eval.run.evaluate_checkpoint`.

    Returns:
        The :class:`ComparisonResult`.
    """
    from vestis.data.manifest import SPLITS

    compare_split = split if compare_split is None else compare_split
    for name, s in (("--split", split), ("--compare-split", compare_split)):
        if s not in (*SPLITS, "all"):
            raise VestisError(f"{name} {s!r}: expected one of {[*SPLITS, 'all']}")
    model = _scorer(checkpoint, batch_size, workers, device, trust_checkpoint)
    cfg, tax = model.config, model.taxonomy
    from vestis.eval.run import predictor_rows  # the rows `vestis evaluate` scores, split as the model's run split

    # both sets checked before predicting
    c = model.combined
    rows_a = predictor_rows(cfg, tax, Path(data), taxonomy, split, skip_invalid, combined=c)[0]
    rows_b = predictor_rows(cfg, tax, Path(compare), compare_taxonomy, compare_split, skip_invalid, combined=c)[0]
    probs_a, enc_a = model.predict(rows_a)
    probs_b, enc_b = model.predict(rows_b)
    thresholds = {k: np.asarray(v, dtype=np.float64) for k, v in model.thresholds.items()} or None
    metrics = compare_predictions(
        tax, probs_a, enc_a, probs_b, enc_b, threshold=cfg.train.threshold, thresholds=thresholds
    )
    metrics["run"] = {
        "checkpoint": str(checkpoint),
        "a": {"data": str(data), "split": split, "items": len(enc_a)},
        "b": {"data": str(compare), "split": compare_split, "items": len(enc_b)},
        "fingerprint": model.fingerprint,
    }
    files = write_comparison(metrics, tax, out_dir)
    return ComparisonResult(metrics, files)


# --- the report --------------------------------------------------------------------------------------------------


def _f(x: Any, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _rows(metrics: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, r in metrics["attributes"].items():
        d = r["distribution"]
        if r["kind"] == "single":
            acc = [_f(r["a"]["accuracy"]), _f(r["b"]["accuracy"]), _f(r["drop"]["accuracy"], True)]
            key = "average_per_class_accuracy"
            apc = [_f(r["a"][key]), _f(r["b"][key]), _f(r["drop"][key], True)]
        else:
            acc = [_f(r["a"]["micro_f1"]), _f(r["b"]["micro_f1"]), _f(r["drop"]["micro_f1"], True)]
            apc = ["–", "–", "–"]
        rows.append([name, r["kind"], str(r["a"]["n"]), str(r["b"]["n"]), *acc, *apc,
                     _f(d["label_tvd"]), _f(d["predicted_tvd"])])  # fmt: skip
    return rows


HEADER = [
    "attribute", "kind", "n A", "n B", "accuracy A", "accuracy B", "drop", "avg per-class A", "avg per-class B",
    "drop", "label TVD", "predicted TVD",
]  # fmt: skip


def format_comparison(metrics: dict[str, Any]) -> str:
    """The per-attribute table as Markdown (micro-F1 in the accuracy columns of multi-label attributes)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(metrics)]
    return "\n".join(lines)


def write_comparison(metrics: dict[str, Any], taxonomy: Taxonomy, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """compare.json, compare.md, compare.html and the figures (confusion difference, distribution bars)."""
    from vestis.eval.compare_figures import confusion_difference, distribution_bars

    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    figures: dict[str, list[str]] = {}
    for i, (name, r) in enumerate(metrics["attributes"].items()):
        attr = taxonomy[name]
        names = []
        if r["kind"] == "single":
            rel = f"figures/confusion_diff_{i:02d}.png"
            atomic_write_bytes(out / rel, confusion_difference(attr, r))
            names.append(rel)
        rel = f"figures/distribution_{i:02d}.png"
        atomic_write_bytes(out / rel, distribution_bars(attr, r["distribution"]))
        names.append(rel)
        figures[name] = names
    metrics["figures"] = figures
    files = {
        "compare.json": out / "compare.json",
        "compare.md": out / "compare.md",
        "compare.html": out / "compare.html",
    }
    atomic_write_text(files["compare.json"], json.dumps(metrics, indent=2, allow_nan=False))
    atomic_write_text(files["compare.md"], _markdown(metrics))
    atomic_write_text(files["compare.html"], _html(metrics))
    return files


def _intro(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    run = metrics["run"]
    return [
        ("model", str(run["checkpoint"])),
        ("A", f"{run['a']['data']} ({run['a']['split']}, {run['a']['items']} items)"),
        ("B", f"{run['b']['data']} ({run['b']['split']}, {run['b']['items']} items)"),
        ("fingerprint", str(run.get("fingerprint") or "not recorded")),
    ]


_NOTE = (
    "drop = A - B. Accuracy is multi-class accuracy (micro-F1 for multi-label attributes); avg per-class is the "
    "mean of per-class accuracies over classes present. TVD = total variation distance between the value "
    "distributions of A and B (labels; argmax predictions). The confusion difference is B's row-normalised "
    "confusion matrix minus A's."
)


def _markdown(metrics: dict[str, Any]) -> str:
    lines = ["# vestis evaluate --compare", ""]
    lines += [f"- **{k}**: {v}" for k, v in _intro(metrics)]
    s = metrics["summary"]
    lines += ["", f"Mean accuracy {_f(s['mean_accuracy_a'])} -> {_f(s['mean_accuracy_b'])} "
              f"(drop {_f(s['mean_accuracy_drop'], True)}); mean average per-class accuracy "
              f"{_f(s['mean_average_per_class_accuracy_a'])} -> {_f(s['mean_average_per_class_accuracy_b'])} "
              f"(drop {_f(s['mean_average_per_class_accuracy_drop'], True)}).", "", _NOTE, ""]  # fmt: skip
    lines += [format_comparison(metrics), ""]
    for name, r in metrics["attributes"].items():
        lines += [f"## {name}", ""]
        if r["kind"] == "single":
            lines += ["| value | n A | n B | per-class A | per-class B | drop | share A | share B |", "|---" * 8 + "|"]
            for v in r["a"]["per_class_accuracy"]:
                lines.append(
                    f"| {v} | {r['a']['support'][v]} | {r['b']['support'][v]} | {_f(r['a']['per_class_accuracy'][v])} "
                    f"| {_f(r['b']['per_class_accuracy'][v])} | {_f(r['drop']['per_class_accuracy'][v], True)} "
                    f"| {_f(r['distribution']['a'][v])} | {_f(r['distribution']['b'][v])} |"
                )
            lines.append("")
        lines += [f"![{name}]({rel})" for rel in metrics["figures"][name]] + [""]
    return "\n".join(lines)


def _html(metrics: dict[str, Any]) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>vestis evaluate --compare</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:2px 6px;text-align:right}td:first-child{text-align:left}img{max-width:100%}</style></head><body>",
        "<h1>vestis evaluate --compare</h1><ul>",
        *(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in _intro(metrics)),
        f"</ul><p>{e(_NOTE)}</p><table><tr>",
        *(f"<th>{e(h)}</th>" for h in HEADER),
        "</tr>",
        *("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in _rows(metrics)),
        "</table>",
    ]
    for name in metrics["attributes"]:
        parts.append(f"<h2>{e(name)}</h2>")
        parts += [f"<img src='{e(rel)}' alt='{e(name)}'>" for rel in metrics["figures"][name]]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
