"""The figures of an evaluation report, as PNG (plots) or JPEG (thumbnails) bytes.

Plots are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend change, no display
needed). Thumbnails of the error gallery are decoded through vestis' bounded image loader, so a hostile file in
the manifest cannot exhaust memory while a report is written.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vestis.data.images import DEFAULT_MAX_PIXELS, load_image
from vestis.data.taxonomy import Attribute
from vestis.eval.calibration import Reliability
from vestis.eval.metrics import micro_prf, precision_recall_curve_data

__all__ = [
    "MAX_PR_VALUES",
    "THUMBNAIL_SIDE",
    "confusion",
    "f1_bars",
    "pr_curves",
    "reliability_diagram",
    "thumbnail",
    "training_curves",
]

ROI_COLOURS = {"small": "#d95f02", "large": "#1b9e77", None: "#7570b3"}
MAX_PR_VALUES = 10  # per-value curves beside the micro curve; the legend names each, more would be unreadable
MAX_ANNOTATED = 15  # confusion matrices above this many classes show colour only
THUMBNAIL_SIDE = 128  # px, longest side of a gallery thumbnail: enough to recognise a garment, small in the HTML


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")  # tight: keeps a legend placed outside the axes
    return buf.getvalue()


def f1_bars(metrics: Mapping[str, Any]) -> bytes:
    """Micro-F1 per attribute, coloured by ROI."""
    attrs = metrics["attributes"]
    names = list(attrs)
    scores = [attrs[a]["micro_f1"] or 0.0 for a in names]
    rois = [attrs[a]["roi"] for a in names]
    fig = Figure(figsize=(7, 1.2 + 0.35 * len(names)))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y, scores, color=[ROI_COLOURS[r] for r in rois])
    for yi, a in zip(y, names, strict=True):
        v = attrs[a]["micro_f1"]
        ax.text(min(v or 0.0, 1.0) + 0.01, yi, "n/a" if v is None else f"{v:.3f}", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel(f"micro-F1 at threshold {metrics['threshold']:g}")
    present = [r for r in ROI_COLOURS if r in rois]
    handles = [ax.bar(0, 0, color=ROI_COLOURS[r], label=f"{r} ROI" if r else "no ROI") for r in present]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_title("Per-attribute micro-F1")
    return _png(fig)


def confusion(attr: Attribute, probs: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> bytes:
    """Confusion matrix of the argmax against the truth on the labelled rows, coloured by share of the true class."""
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
    if k <= MAX_ANNOTATED:
        for i in range(k):
            for j in range(k):
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8, color=colour)
    ax.set_title(f"{attr.name}: confusion matrix ({int(m.sum())} items)")
    return _png(fig)


def pr_curves(
    attr: Attribute, probs: np.ndarray, multi_hot: np.ndarray, mask: np.ndarray, threshold: float
) -> tuple[bytes, str | None] | None:
    """Precision-recall curves: micro-averaged, and every value with a positive (the top 10 by support above 10).

    The legend sits outside the axes so it never hides a curve.

    Returns:
        The PNG and a note when values were left out, or ``None`` without any positive pair.
    """
    micro = precision_recall_curve_data(probs, multi_hot, mask)
    if micro is None:
        return None
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    ax.plot(micro.recall, micro.precision, drawstyle="steps-post", color="black", lw=2,
            label=f"micro (AP {micro.average_precision:.3f})")  # fmt: skip
    support = multi_hot[mask.astype(bool)].sum(axis=0)
    with_positives = [int(j) for j in np.argsort(-support, kind="stable") if support[j] > 0]
    shown = with_positives[:MAX_PR_VALUES]
    note = None
    if len(with_positives) > len(shown):
        note = f"the {len(shown)} values with the most positives of {len(with_positives)} are drawn"
    for j in shown:
        curve = precision_recall_curve_data(probs, multi_hot, mask, value=j)
        if curve is not None:
            label = f"{attr.values[j]} (AP {curve.average_precision:.3f}, n {int(support[j])})"
            ax.plot(curve.recall, curve.precision, drawstyle="steps-post", lw=1, alpha=0.8, label=label)
    p, r, _ = micro_prf(probs, multi_hot, threshold, mask)
    ax.plot([r], [p], "o", color="red", label=f"threshold {threshold:g}")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), title=note and "top values by support")
    ax.set_title(f"{attr.name}: precision-recall")
    return _png(fig), note


def reliability_diagram(name: str, rel: Reliability) -> bytes:
    """Accuracy against mean confidence per bin, with the diagonal of perfect calibration and the bin counts."""
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    width = np.diff(rel.edges)
    full = rel.count > 0
    ax.bar(rel.edges[:-1][full], rel.accuracy[full], width=width[full], align="edge", edgecolor="black",
           color="#4c72b0", label="accuracy")  # fmt: skip
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot(rel.confidence[full], rel.accuracy[full], "o", color="#dd8452", ms=4, label="mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("top-1 confidence")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ax.set_title(f"{name}: reliability (ECE {rel.ece:.3f}, {int(rel.count.sum())} items)")
    return _png(fig)


def _series(history: Sequence[Mapping[str, Any]], *keys: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for rec in history:
        v: Any = rec
        for k in keys:
            v = v.get(k) if isinstance(v, Mapping) else None
        if isinstance(v, int | float) and not isinstance(v, bool):
            xs.append(int(rec.get("epoch", len(xs) + 1)))
            ys.append(float(v))
    return xs, ys


def training_curves(history: Sequence[Mapping[str, Any]], metric: str) -> bytes | None:
    """Training loss and the validation ``metric`` per epoch from a run's history.json; ``None`` when empty."""
    loss = _series(history, "train", "loss")
    val = _series(history, "val", metric)
    if not loss[0] and not val[0]:
        return None
    fig = Figure(figsize=(10, 3.5), layout="constrained")  # constrained: the two y labels never overlap
    a, b = fig.subplots(1, 2)
    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    a.plot(*loss, "o-", color="#4c72b0")
    a.set_xlabel("epoch")
    a.set_ylabel("training loss")
    a.set_title("Training loss")
    if val[0]:
        b.plot(*val, "o-", color="#55a868")
    else:
        b.text(0.5, 0.5, "no validation rows", ha="center", va="center", transform=b.transAxes)
    b.set_xlabel("epoch")
    b.set_ylabel(metric)
    b.set_title(f"Validation {metric}")
    return _png(fig)


def thumbnail(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """A small JPEG of an image, decoded through :func:`~vestis.data.images.load_image` (pixel cap enforced).

    Raises:
        ImageError: the file is unreadable, corrupt or over ``max_pixels``.
    """
    img = load_image(path, max_pixels=max_pixels, min_side=THUMBNAIL_SIDE)
    img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
