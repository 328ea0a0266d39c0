"""Taxonomy consistency: attributes that do not apply to the predicted category are suppressed.

Label sharing lets a model *learn* which attributes go with which category, but nothing forces it (the paper's
Figure 3d predicts "polo" for a shirt). Given the allowed pairs, :func:`apply_taxonomy` zeroes the others and
reports how often the model proposed an incompatible attribute before the suppression.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from vestis.errors import VestisError

__all__ = ["allowed_matrix", "apply_taxonomy"]


def allowed_matrix(
    allowed: Mapping[str, Iterable[str]], categories: Sequence[str], attributes: Sequence[str]
) -> np.ndarray:
    """The (C, A) boolean matrix of a category -> allowed-attributes map.

    A category the map does not name allows every attribute (the taxonomy says nothing about it).

    Args:
        allowed: category name -> names of the attributes that apply to it.
        categories: the model's categories, in logit order.
        attributes: the model's attributes, in logit order.

    Raises:
        VestisError: the map names a category or an attribute the model does not have.
    """
    cat_index = {c: i for i, c in enumerate(categories)}
    attr_index = {a: j for j, a in enumerate(attributes)}
    out = np.ones((len(categories), len(attributes)), dtype=bool)
    for cat, attrs in allowed.items():
        if cat not in cat_index:
            raise VestisError(f"allowed attributes: unknown category {cat!r}; expected one of {list(categories)}")
        row = np.zeros(len(attributes), dtype=bool)
        for a in attrs:
            if a not in attr_index:
                raise VestisError(f"allowed attributes of {cat!r}: unknown attribute {a!r}")
            row[attr_index[a]] = True
        out[cat_index[cat]] = row
    return out


def apply_taxonomy(
    attribute_probs: ArrayLike, categories: ArrayLike, allowed: ArrayLike, threshold: float = 0.5
) -> tuple[np.ndarray, dict[str, float]]:
    """Zero the attributes that do not apply to each item's predicted category.

    Args:
        attribute_probs: (N, A) sigmoid probabilities.
        categories: (N,) predicted category indices.
        allowed: (C, A) booleans, e.g. from :func:`allowed_matrix`.
        threshold: the probability at which an attribute counts as predicted, for the rates.

    Returns:
        ``(probs, rates)``: the suppressed (N, A) probabilities and, measured before suppression,
        ``incompatible_rate`` (incompatible predicted attributes / predicted attributes) and
        ``incompatible_item_rate`` (items with at least one incompatible predicted attribute / items);
        each ``nan`` when its denominator is 0.

    Raises:
        VestisError: shapes disagree or a category index is out of range.
    """
    p = np.asarray(attribute_probs, dtype=np.float64)
    c = np.asarray(categories)
    ok = np.asarray(allowed, dtype=bool)
    if p.ndim != 2 or ok.ndim != 2 or ok.shape[1] != p.shape[1]:
        raise VestisError(
            f"apply_taxonomy: expected (N, A) probabilities and (C, A) allowed, got {p.shape}, {ok.shape}"
        )
    if c.shape != (p.shape[0],) or not np.issubdtype(c.dtype, np.integer):
        raise VestisError(f"apply_taxonomy: expected ({p.shape[0]},) integer categories, got {c.shape} {c.dtype}")
    if c.size and (c.min() < 0 or c.max() >= ok.shape[0]):
        raise VestisError(f"apply_taxonomy: category indices must lie in [0, {ok.shape[0]}), got {c.min()}..{c.max()}")
    applies = ok[c]  # (N, A)
    predicted = p >= threshold
    bad = predicted & ~applies
    n_pred = int(predicted.sum())
    rates = {
        "incompatible_rate": float(bad.sum() / n_pred) if n_pred else float("nan"),
        "incompatible_item_rate": float(bad.any(axis=1).mean()) if p.shape[0] else float("nan"),
    }
    return np.where(applies, p, 0.0), rates
