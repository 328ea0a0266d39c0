"""Evaluation reports: ``metrics.json``, ``report.md``, a self-contained ``report.html`` and PNG figures.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend change,
no display needed). Every file is written atomically, so a reader never sees half a report.

Layout of ``out_dir``::

    metrics.json                     the metrics dict, unchanged
    report.md                        tables + figures linked relatively (figures/...)
    report.html                      the same, figures embedded as base64: one file to share
    figures/f1_by_attribute.png      micro-F1 per attribute, coloured by ROI
    figures/confusion_<attr>.png     single-label attributes (argmax vs truth, labelled rows)
    figures/pr_<attr>.png            precision-recall curves: micro-averaged + the most frequent values
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from vestis.data.taxonomy import Attribute, Taxonomy
from vestis.errors import VestisError
from vestis.eval.evaluator import attribute_table
from vestis.eval.metrics import micro_prf, one_hot, precision_recall_curve_data
from vestis.io import atomic_write_bytes, atomic_write_text

__all__ = ["write_report"]

_ROI_COLOURS = {"small": "#d95f02", "large": "#1b9e77", None: "#7570b3"}
_MAX_PR_VALUES = 8  # per-value curves drawn beside the micro curve; more would be unreadable
_MAX_ANNOTATED = 15  # confusion matrices above this many classes show colour only


# --- figures --------------------------------------------------------------------------------------------------


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _f1_bars(metrics: Mapping[str, Any]) -> bytes:
    attrs = metrics["attributes"]
    names = list(attrs)
    scores = [attrs[a]["micro_f1"] or 0.0 for a in names]
    rois = [attrs[a]["roi"] for a in names]
    fig = Figure(figsize=(7, 1.2 + 0.35 * len(names)))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y, scores, color=[_ROI_COLOURS[r] for r in rois])
    for yi, a in zip(y, names, strict=True):
        v = attrs[a]["micro_f1"]
        ax.text(min(v or 0.0, 1.0) + 0.01, yi, "n/a" if v is None else f"{v:.3f}", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel(f"micro-F1 at threshold {metrics['threshold']:g}")
    present = [r for r in _ROI_COLOURS if r in rois]
    handles = [ax.bar(0, 0, color=_ROI_COLOURS[r], label=f"{r} ROI" if r else "no ROI") for r in present]
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_title("Per-attribute micro-F1")
    return _png(fig)


def _confusion(attr: Attribute, probs: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> bytes:
    from sklearn.metrics import confusion_matrix

    k = attr.num_values
    m = mask.astype(bool)
    cm = confusion_matrix(labels[m], probs[m].argmax(axis=1), labels=np.arange(k))  # (K, K) true x predicted
    rows = cm.sum(axis=1, keepdims=True)
    # colour by the share of each true class so rare classes are as visible as frequent ones
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    side = min(max(4.0, 0.45 * k + 2.0), 20.0)
    fig = Figure(figsize=(side, side))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(np.arange(k), attr.values, rotation=90)
    ax.set_yticks(np.arange(k), attr.values)
    ax.set_xlabel("predicted (argmax)")
    ax.set_ylabel("true")
    if k <= _MAX_ANNOTATED:
        for i in range(k):
            for j in range(k):
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8, color=colour)
    ax.set_title(f"{attr.name}: confusion matrix ({int(m.sum())} items)")
    return _png(fig)


def _pr_curves(
    attr: Attribute, probs: np.ndarray, multi_hot: np.ndarray, mask: np.ndarray, threshold: float
) -> bytes | None:
    micro = precision_recall_curve_data(probs, multi_hot, mask)
    if micro is None:
        return None
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    ax.plot(
        micro.recall,
        micro.precision,
        drawstyle="steps-post",
        color="black",
        lw=2,
        label=f"micro (AP {micro.average_precision:.3f})",
    )
    support = multi_hot[mask.astype(bool)].sum(axis=0)
    for j in np.argsort(-support, kind="stable")[:_MAX_PR_VALUES]:
        curve = precision_recall_curve_data(probs, multi_hot, mask, value=int(j))
        if curve is not None:
            label = f"{attr.values[j]} (AP {curve.average_precision:.3f})"
            ax.plot(curve.recall, curve.precision, drawstyle="steps-post", lw=1, alpha=0.8, label=label)
    p, r, _ = micro_prf(probs, multi_hot, threshold, mask)
    ax.plot([r], [p], "o", color="red", label=f"threshold {threshold:g}")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"{attr.name}: precision-recall")
    return _png(fig)


def _slug(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "attribute"
    slug, i = base, 2
    while slug in taken:
        slug, i = f"{base}_{i}", i + 1
    taken.add(slug)
    return slug


# --- text -----------------------------------------------------------------------------------------------------


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested run info as ``(dotted.key, text)`` rows."""
    rows: list[tuple[str, str]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            rows += _flatten(v, key + ".")
        elif isinstance(v, list | tuple):
            rows.append((key, ", ".join(str(x) for x in v)))
        else:
            rows.append((key, str(v)))
    return rows


def _f(x: Any) -> str:
    if x is None:
        return "–"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def _detail_tables(r: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(caption, header, rows) of one attribute's per-value, per-class and calibrated tables."""
    tables = []
    head = ["value", "precision", "recall", "F1", "support"]
    rows = [[v, _f(s["precision"]), _f(s["recall"]), _f(s["f1"]), _f(s["support"])] for v, s in r["per_value"].items()]
    tables.append(("Per value (thresholded)", head, rows))
    if "per_class_accuracy" in r:
        rows = [[v, _f(s["accuracy"]), _f(s["support"])] for v, s in r["per_class_accuracy"].items()]
        tables.append(("Per-class accuracy (argmax)", ["class", "accuracy", "support"], rows))
    if "calibrated" in r:
        c = r["calibrated"]
        rows = [
            [v, _f(c["thresholds"][v]), _f(s["precision"]), _f(s["recall"]), _f(s["f1"])]
            for v, s in c["per_value"].items()
        ]
        tables.append(("Calibrated thresholds", ["value", "threshold", "precision", "recall", "F1"], rows))
    return tables


def _scalars(r: Mapping[str, Any]) -> list[tuple[str, str]]:
    keys = [k for k, v in r.items() if k not in ("kind", "roi", "num_values") and not isinstance(v, Mapping)]
    out = [(k, _f(r[k])) for k in keys]
    if "calibrated" in r:
        out += [("calibrated micro_f1", _f(r["calibrated"]["micro_f1"]))]
        out += [("calibrated macro_f1", _f(r["calibrated"]["macro_f1"]))]
    return out


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(head), "|" + "|".join("---" for _ in head) + "|", *(line(r) for r in rows)])


def _html_table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    e = html.escape
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _summary_rows(metrics: Mapping[str, Any]) -> list[list[str]]:
    return [[k, _f(v)] for k, v in metrics["summary"].items()]


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.2em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td{font-variant-numeric:tabular-nums}img{max-width:100%;height:auto}
figure{margin:1em 0}figcaption{color:#555;font-size:.9em}
"""


def _markdown(
    title: str,
    metrics: Mapping[str, Any],
    run: list[tuple[str, str]],
    figures: Mapping[str, list[tuple[str, str]]],
) -> str:
    out = [f"# {title}", ""]
    if run:
        out += ["## Run", "", _md_table(["key", "value"], [list(r) for r in run]), ""]
    out += ["## Summary", "", f"{metrics['num_items']} items, threshold {metrics['threshold']:g}.", ""]
    out += [_md_table(["metric", "value"], _summary_rows(metrics)), ""]
    out += ["## Per attribute", "", _md_table(*attribute_table(metrics)), ""]
    for rel, caption in figures.get("", []):
        out += [f"![{caption}]({rel})", ""]
    for name, r in metrics["attributes"].items():
        out += [f"## {name}", "", f"{r['kind']}-label, ROI {r['roi'] or '–'}, {r['num_values']} values.", ""]
        out += [_md_table(["metric", "value"], [list(s) for s in _scalars(r)]), ""]
        for caption, head, rows in _detail_tables(r):
            out += [f"**{caption}**", "", _md_table(head, rows), ""]
        for rel, caption in figures.get(name, []):
            out += [f"![{caption}]({rel})", ""]
    return "\n".join(out)


def _html(
    title: str,
    metrics: Mapping[str, Any],
    run: list[tuple[str, str]],
    figures: Mapping[str, list[tuple[str, str]]],
    pngs: Mapping[str, bytes],
) -> str:
    e = html.escape

    def fig(rel: str, caption: str) -> str:
        data = base64.b64encode(pngs[rel]).decode("ascii")
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{e(caption)}">'
            f"<figcaption>{e(caption)}</figcaption></figure>"
        )

    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    if run:
        out += ["<h2>Run</h2>", _html_table(["key", "value"], [list(r) for r in run], "run")]
    out += [
        "<h2>Summary</h2>",
        f"<p>{metrics['num_items']} items, threshold {metrics['threshold']:g}.</p>",
        _html_table(["metric", "value"], _summary_rows(metrics), "summary"),
        "<h2>Per attribute</h2>",
        _html_table(*attribute_table(metrics), "attributes"),
    ]
    out += [fig(rel, caption) for rel, caption in figures.get("", [])]
    for name, r in metrics["attributes"].items():
        out += [
            f"<h2>{e(name)}</h2>",
            f"<p>{e(r['kind'])}-label, ROI {e(r['roi'] or '–')}, {r['num_values']} values.</p>",
            _html_table(["metric", "value"], [list(s) for s in _scalars(r)]),
        ]
        for caption, head, rows in _detail_tables(r):
            out += [f"<h3>{e(caption)}</h3>", _html_table(head, rows)]
        out += [fig(rel, caption) for rel, caption in figures.get(name, [])]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --- entry point ----------------------------------------------------------------------------------------------


def write_report(
    metrics: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    probs: Mapping[str, ArrayLike],
    targets: Mapping[str, ArrayLike],
    masks: Mapping[str, ArrayLike],
    taxonomy: Taxonomy,
    title: str = "vestis evaluation",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the metrics, the figures and the Markdown and HTML reports of one evaluation.

    Args:
        metrics: the dict of :func:`~vestis.eval.evaluator.evaluate_predictions`.
        out_dir: folder to write into (created if needed); existing report files are replaced.
        probs: the probabilities the metrics were computed from (attribute -> ``(N, K)``).
        targets: the matching targets (single-label: int ``(N,)`` with ``-1`` missing; multi-label: ``(N, K)``).
        masks: the matching bool ``(N,)`` masks of labelled rows.
        taxonomy: the attributes' kinds, values and ROI.
        title: report heading.
        extra: run information shown in a "Run" section (model name, backbone, checkpoint, config summary);
            nested mappings are flattened to dotted keys.

    Returns:
        Every written file: path relative to ``out_dir`` -> absolute path.

    Raises:
        VestisError: an attribute of ``metrics`` is missing from ``taxonomy``, ``probs``, ``targets`` or ``masks``.
    """
    out = Path(out_dir)
    pngs: dict[str, bytes] = {}
    figures: dict[str, list[tuple[str, str]]] = {"": []}
    pngs["figures/f1_by_attribute.png"] = _f1_bars(metrics)
    figures[""].append(("figures/f1_by_attribute.png", "Per-attribute micro-F1, coloured by ROI"))
    taken: set[str] = set()
    for name in metrics["attributes"]:
        attr = taxonomy[name]
        for what, d in (("probs", probs), ("targets", targets), ("masks", masks)):
            if name not in d:
                raise VestisError(f"{what}: no entry for attribute {name!r}, which the metrics report")
        slug = _slug(name, taken)
        p = np.asarray(probs[name])
        t = np.asarray(targets[name])
        m = np.asarray(masks[name]).astype(bool)
        figures[name] = []
        if not m.any():
            continue
        if attr.kind == "single":
            rel = f"figures/confusion_{slug}.png"
            pngs[rel] = _confusion(attr, p, t, m)
            figures[name].append((rel, f"{name}: confusion matrix"))
        multi_hot = one_hot(t, attr.num_values) if attr.kind == "single" else t
        pr = _pr_curves(attr, p, multi_hot, m, float(metrics["threshold"]))
        if pr is not None:
            rel = f"figures/pr_{slug}.png"
            pngs[rel] = pr
            figures[name].append((rel, f"{name}: precision-recall curves"))

    run = _flatten(extra) if extra else []
    written: dict[str, Path] = {}
    for rel, data in pngs.items():
        written[rel] = atomic_write_bytes(out / rel, data).resolve()
    text = json.dumps(metrics, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    written["metrics.json"] = atomic_write_text(out / "metrics.json", text).resolve()
    written["report.md"] = atomic_write_text(out / "report.md", _markdown(title, metrics, run, figures)).resolve()
    written["report.html"] = atomic_write_text(out / "report.html", _html(title, metrics, run, figures, pngs)).resolve()
    return written
