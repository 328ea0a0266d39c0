"""Evaluation reports: ``metrics.json``, ``report.md``, a self-contained ``report.html`` and figures.

The figures come from :mod:`vestis.eval.report_figures`, the extra sections from
:mod:`vestis.eval.report_sections`. Every file is written atomically, so a reader never sees half a report.

Layout of ``out_dir``::

    metrics.json                     the metrics dict, unchanged
    report.md                        tables + figures linked relatively (figures/...)
    report.html                      the same, figures embedded as base64: one file to share
    figures/training_curves.png      loss and validation metric per epoch (with the run's history.json)
    figures/f1_by_attribute.png      micro-F1 per attribute, coloured by ROI
    figures/confusion_<attr>.png     single-label attributes (argmax vs truth, labelled rows)
    figures/reliability_<attr>.png   single-label attributes: accuracy against top-1 confidence
    figures/pr_<attr>.png            precision-recall curves: micro-averaged + every value (top 10 above 10)
    figures/errors/<attr>_<i>.jpg    the most confident mistakes (with the items' image paths)
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from vestis.data.images import DEFAULT_MAX_PIXELS, ImageError
from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.eval import report_figures as figs
from vestis.eval.calibration import reliability_bins
from vestis.eval.evaluator import attribute_table
from vestis.eval.metrics import one_hot
from vestis.eval.report_sections import Mistake, confident_mistakes, selection_text, threshold_rows
from vestis.io import atomic_write_bytes, atomic_write_text

__all__ = ["write_report"]


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
    head = ["value", "precision", "recall", "F1", "AP", "support"]
    rows = [
        [v, _f(s["precision"]), _f(s["recall"]), _f(s["f1"]), _f(s.get("average_precision")), _f(s["support"])]
        for v, s in r["per_value"].items()
    ]
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


def _summary_table(metrics: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Summary metrics with their bootstrap interval and the majority-value reference, where present."""
    ci: Mapping[str, Any] = metrics.get("summary_ci") or {}
    ref: Mapping[str, Any] = (metrics.get("reference") or {}).get("summary", {})
    head = ["metric", "value"] + (["95% CI"] if ci else []) + (["reference"] if ref else [])
    rows = []
    for k, v in metrics["summary"].items():
        row = [k, _f(v)]
        if ci:
            row.append(f"[{ci[k][0]:.3f}, {ci[k][1]:.3f}]" if ci.get(k) else "–")
        if ref:
            row.append(_f(ref.get(k)))
        rows.append(row)
    return head, rows


# --- one document, two renderings -------------------------------------------------------------------------------

# Blocks: ("h", level, text), ("p", text), ("table", head, rows, css class), ("fig", rel, caption),
# ("gallery", [(rel, caption), ...]); Markdown and HTML are rendered from the same list so they never drift.
Block = tuple[Any, ...]


def _blocks(
    title: str,
    metrics: Mapping[str, Any],
    run: list[tuple[str, str]],
    figures: Mapping[str, list[tuple[str, str]]],
    notes: Mapping[str, list[str]],
    galleries: Mapping[str, list[tuple[str, str]]],
) -> list[Block]:
    out: list[Block] = [("h", 1, title)]
    if run:
        out += [("h", 2, "Run"), ("table", ["key", "value"], [list(r) for r in run], "run")]
    out += [("h", 2, "Summary"), ("p", f"{metrics['num_items']} items, threshold {metrics['threshold']:g}.")]
    if metrics.get("summary_ci"):
        out.append(("p", "95% CI: percentile bootstrap over 1000 resamples of the items (seeded)."))
    if metrics.get("reference"):
        out.append(("p", "reference: a predictor that always outputs the training split's value frequencies."))
    out += [("table", *_summary_table(metrics), "summary")]
    out += [("h", 2, "Model selection"), ("p", selection_text(metrics))]
    thr = threshold_rows(metrics)
    if thr is None:
        out.append(("p", "Threshold choice: not recorded."))
    else:
        out += [("h", 3, "Threshold choice per value"), ("table", *thr, "thresholds")]
    out += [("h", 2, "Training curves")]
    out += [("fig", rel, cap) for rel, cap in figures.get("#curves", [])]
    out += [("p", n) for n in notes.get("#curves", [])]
    out += [("h", 2, "Per attribute"), ("table", *attribute_table(metrics), "attributes")]
    out += [("fig", rel, cap) for rel, cap in figures.get("", [])]
    for column, table in (metrics.get("breakdowns") or {}).items():
        head = ["value", *next(iter(table.values()), {"n": 0})]
        rows = [[v, *(_f(x) for x in r.values())] for v, r in table.items()]
        out += [("h", 3, f"By meta_{column}"), ("table", head, rows, "breakdown")]
    for name, r in metrics["attributes"].items():
        out += [("h", 2, name), ("p", f"{r['kind']}-label, ROI {r['roi'] or '–'}, {r['num_values']} values.")]
        out += [("table", ["metric", "value"], [list(s) for s in _scalars(r)], "")]
        for caption, head, rows in _detail_tables(r):
            out += [("h", 3, caption), ("table", head, rows, "")]
        out += [("fig", rel, cap) for rel, cap in figures.get(name, [])]
        out += [("p", n) for n in notes.get(name, [])]
        if galleries.get(name):
            out += [("h", 3, "Most confident mistakes"), ("gallery", galleries[name])]
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


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.2em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td{font-variant-numeric:tabular-nums}img{max-width:100%;height:auto}
figure{margin:1em 0}figcaption{color:#555;font-size:.9em}
.gallery{display:flex;flex-wrap:wrap;gap:.6em}.gallery figure{margin:0;width:140px}
"""


def _markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if b[0] == "h":
            out += ["#" * b[1] + " " + b[2] if b[1] < 3 else f"**{b[2]}**", ""]
        elif b[0] == "p":
            out += [b[1], ""]
        elif b[0] == "table":
            out += [_md_table(b[1], b[2]), ""]
        elif b[0] == "fig":
            out += [f"![{b[2]}]({b[1]})", ""]
        else:  # gallery: one line of thumbnails
            out += [" ".join(f"![{cap}]({rel})" for rel, cap in b[1]), ""]
    return "\n".join(out)


def _html(blocks: list[Block], blobs: Mapping[str, bytes]) -> str:
    e = html.escape

    def img(rel: str, caption: str) -> str:
        mime = "image/jpeg" if rel.endswith(".jpg") else "image/png"
        data = base64.b64encode(blobs[rel]).decode("ascii")
        return (
            f'<figure><img src="data:{mime};base64,{data}" alt="{e(caption)}">'
            f"<figcaption>{e(caption)}</figcaption></figure>"
        )

    title = blocks[0][2]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for b in blocks:
        if b[0] == "h":
            out.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "table":
            out.append(_html_table(b[1], b[2], b[3]))
        elif b[0] == "fig":
            out.append(img(b[1], b[2]))
        else:
            out.append('<div class="gallery">' + "".join(img(rel, cap) for rel, cap in b[1]) + "</div>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --- entry point ----------------------------------------------------------------------------------------------


def _gallery(
    name: str, slug: str, mistakes: list[Mistake], images: Sequence[str | os.PathLike[str]], max_pixels: int,
    blobs: dict[str, bytes],
) -> tuple[list[tuple[str, str]], list[str]]:  # fmt: skip
    shown, notes = [], []
    for i, mk in enumerate(mistakes):
        try:
            data = figs.thumbnail(images[mk.row], max_pixels=max_pixels)
        except ImageError as e:  # the item passed validation but changed since: leave it out, say so
            notes.append(f"{name}: a mistake's image could not be shown ({e})")
            continue
        rel = f"figures/errors/{slug}_{i + 1}.jpg"
        blobs[rel] = data
        shown.append((rel, f"true {mk.true}; predicted {mk.predicted} ({mk.confidence:.2f})"))
    return shown, notes


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
    history: Sequence[Mapping[str, Any]] | None = None,
    images: Sequence[str | os.PathLike[str]] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> dict[str, Path]:
    """Write the metrics, the figures and the Markdown and HTML reports of one evaluation.

    Sections drawn from ``metrics`` when present: ``reference`` (majority-value reference, a column),
    ``summary_ci`` (bootstrap intervals), ``selection`` and ``threshold_choice`` (from the checkpoint: which
    metric chose it, which threshold each value uses) and ``breakdowns`` (per ``meta_`` column value).

    Args:
        metrics: the dict of :func:`~vestis.eval.evaluator.evaluate_predictions`, plus the optional sections above.
        out_dir: folder to write into (created if needed); existing report files are replaced.
        probs: the probabilities the metrics were computed from (attribute -> ``(N, K)``).
        targets: the matching targets (single-label: int ``(N,)`` with ``-1`` missing; multi-label: ``(N, K)``).
        masks: the matching bool ``(N,)`` masks of labelled rows.
        taxonomy: the attributes' kinds, values and ROI.
        title: report heading.
        extra: run information shown in a "Run" section (model name, backbone, checkpoint, config summary);
            nested mappings are flattened to dotted keys.
        history: the training run's history.json records (loss and validation summary per epoch); ``None``
            writes a note instead of the curves.
        images: the ``N`` items' image paths, for the error gallery; ``None`` leaves the gallery out.
        max_pixels: pixel cap when decoding gallery images.

    Returns:
        Every written file: path relative to ``out_dir`` -> absolute path.

    Raises:
        VestisError: an attribute of ``metrics`` is missing from ``taxonomy``, ``probs``, ``targets`` or ``masks``.
    """
    out = Path(out_dir)
    blobs: dict[str, bytes] = {}
    figures: dict[str, list[tuple[str, str]]] = {"": [], "#curves": []}
    notes: dict[str, list[str]] = {"#curves": []}
    galleries: dict[str, list[tuple[str, str]]] = {}
    threshold = float(metrics["threshold"])
    metric = (metrics.get("selection") or {}).get("metric") or "mean_kind_score"
    curves = figs.training_curves(history, metric) if history else None
    if curves is not None:
        blobs["figures/training_curves.png"] = curves
        figures["#curves"].append(("figures/training_curves.png", f"Training loss and validation {metric}"))
    else:
        notes["#curves"].append("No training history: history.json was not found beside the checkpoint.")
    blobs["figures/f1_by_attribute.png"] = figs.f1_bars(metrics)
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
        figures[name], notes[name] = [], []
        if not m.any():
            continue
        if attr.kind == "single":
            rel = f"figures/confusion_{slug}.png"
            blobs[rel] = figs.confusion(attr, p, t, m)
            figures[name].append((rel, f"{name}: confusion matrix"))
            rel = f"figures/reliability_{slug}.png"
            blobs[rel] = figs.reliability_diagram(name, reliability_bins(p, t, m))
            figures[name].append((rel, f"{name}: reliability diagram (15 bins of top-1 confidence)"))
        multi_hot = one_hot(t, attr.num_values) if attr.kind == "single" else t
        pr = figs.pr_curves(attr, p, multi_hot, m, threshold)
        if pr is not None:
            rel = f"figures/pr_{slug}.png"
            blobs[rel] = pr[0]
            figures[name].append((rel, f"{name}: precision-recall curves"))
            if pr[1]:
                notes[name].append(f"{name}: {pr[1]}.")
        if images is not None:
            mistakes = confident_mistakes(attr, p, t, m, threshold)
            galleries[name], bad = _gallery(name, slug, mistakes, images, max_pixels, blobs)
            notes[name] += bad

    run = _flatten(extra) if extra else []
    blocks = _blocks(title, metrics, run, figures, notes, galleries)
    written: dict[str, Path] = {}
    for rel, data in blobs.items():
        written[rel] = atomic_write_bytes(out / rel, data).resolve()
    text = json.dumps(metrics, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    written["metrics.json"] = atomic_write_text(out / "metrics.json", text).resolve()
    written["report.md"] = atomic_write_text(out / "report.md", _markdown(blocks)).resolve()
    written["report.html"] = atomic_write_text(out / "report.html", _html(blocks, blobs)).resolve()
    return written
