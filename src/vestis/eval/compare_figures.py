"""The figures of ``vestis evaluate --compare`` as PNG bytes (matplotlib's object API on the Agg canvas)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from vestis.data.taxonomy import Attribute
from vestis.eval.report_figures import MAX_ANNOTATED, _png

__all__ = ["confusion_difference", "distribution_bars"]


def confusion_difference(attr: Attribute, result: Mapping[str, Any]) -> bytes:
    """Heatmap of B's row-normalised confusion matrix minus A's (red: more in B, blue: less); grey: no items."""
    k = attr.num_values
    diff = np.array([[np.nan if x is None else x for x in row] for row in result["confusion_diff"]], dtype=float)
    side = min(max(4.0, 0.45 * k + 2.0), 20.0)
    fig = Figure(figsize=(side, side))
    ax = fig.add_subplot()
    ax.set_facecolor("#dddddd")
    im = ax.imshow(np.ma.masked_invalid(diff), cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class: B - A")
    ax.set_xticks(np.arange(k), attr.values, rotation=90)
    ax.set_yticks(np.arange(k), attr.values)
    ax.set_xlabel("predicted (argmax)")
    ax.set_ylabel("true")
    if k <= MAX_ANNOTATED:
        for i in range(k):
            for j in range(k):
                if not np.isnan(diff[i, j]) and abs(diff[i, j]) >= 0.005:
                    ax.text(j, i, f"{diff[i, j]:+.2f}", ha="center", va="center", fontsize=7)
    ax.set_title(f"{attr.name}: confusion difference (n A={result['a']['n']}, n B={result['b']['n']})")
    return _png(fig)


def distribution_bars(attr: Attribute, distribution: Mapping[str, Any]) -> bytes:
    """Grouped bars of each value's share of the labels in A and in B, with the TVD in the title."""
    k = attr.num_values
    x = np.arange(k)
    a = [distribution["a"][v] for v in attr.values]
    b = [distribution["b"][v] for v in attr.values]
    fig = Figure(figsize=(min(max(5.0, 0.4 * k + 2.0), 20.0), 3.5))
    ax = fig.add_subplot()
    ax.bar(x - 0.2, a, width=0.4, label="A", color="#1b9e77")
    ax.bar(x + 0.2, b, width=0.4, label="B", color="#d95f02")
    ax.set_xticks(x, attr.values, rotation=90)
    ax.set_ylabel("share of labelled values")
    t = distribution["label_tvd"]
    ax.set_title(f"{attr.name}: value distribution (TVD {'n/a' if t is None else f'{t:.3f}'})")
    ax.legend(fontsize=8)
    return _png(fig)
