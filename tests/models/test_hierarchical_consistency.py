"""Taxonomy suppression and attention overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vestis.errors import VestisError
from vestis.models.hierarchical import allowed_matrix, apply_taxonomy, attention_overlay

CATS = ["shirt", "t-shirt", "jeans"]
ATTRS = ["polo", "checked", "long-sleeve", "ripped"]


def test_allowed_matrix_from_map() -> None:
    m = allowed_matrix({"shirt": ["checked", "long-sleeve"], "t-shirt": ["polo", "checked"]}, CATS, ATTRS)
    assert m.tolist() == [
        [False, True, True, False],
        [True, True, False, False],
        [True, True, True, True],  # jeans: not in the map, everything applies
    ]
    with pytest.raises(VestisError, match="unknown category 'dress'"):
        allowed_matrix({"dress": []}, CATS, ATTRS)
    with pytest.raises(VestisError, match="unknown attribute 'frill'"):
        allowed_matrix({"shirt": ["frill"]}, CATS, ATTRS)


def test_apply_taxonomy_hand_case() -> None:
    allowed = allowed_matrix({"shirt": ["checked", "long-sleeve"], "t-shirt": ["polo", "checked"]}, CATS, ATTRS)
    probs = np.array(
        [
            [0.9, 0.8, 0.2, 0.1],  # shirt: polo predicted but incompatible (the paper's Figure 3d)
            [0.7, 0.1, 0.6, 0.0],  # t-shirt: long-sleeve incompatible
            [0.1, 0.2, 0.3, 0.9],  # jeans: everything allowed
            [0.0, 0.6, 0.0, 0.0],  # shirt: fine
        ]
    )
    cats = np.array([0, 1, 2, 0])
    out, rates = apply_taxonomy(probs, cats, allowed)
    # predicted (>= 0.5): 2 + 2 + 1 + 1 = 6, of which 2 incompatible; items 0 and 1 of 4 have one
    assert rates["incompatible_rate"] == pytest.approx(2 / 6)
    assert rates["incompatible_item_rate"] == pytest.approx(0.5)
    expected = probs.copy()
    expected[0, 0] = expected[0, 3] = 0.0
    expected[1, 2] = expected[1, 3] = 0.0
    expected[3, 0] = expected[3, 3] = 0.0
    np.testing.assert_array_equal(out, expected)
    _, strict = apply_taxonomy(probs, cats, allowed, threshold=0.75)
    assert strict["incompatible_rate"] == pytest.approx(1 / 3)  # predicted: polo(0), checked(0), ripped(2)


def test_apply_taxonomy_bad_input() -> None:
    allowed = np.ones((3, 4), dtype=bool)
    with pytest.raises(VestisError, match="category indices"):
        apply_taxonomy(np.zeros((1, 4)), np.array([3]), allowed)
    with pytest.raises(VestisError, match="integer categories"):
        apply_taxonomy(np.zeros((1, 4)), np.array([0.0]), allowed)
    with pytest.raises(VestisError, match="allowed"):
        apply_taxonomy(np.zeros((1, 5)), np.array([0]), allowed)
    _, rates = apply_taxonomy(np.zeros((2, 4)), np.array([0, 1]), allowed)
    assert np.isnan(rates["incompatible_rate"]) and rates["incompatible_item_rate"] == 0.0


def test_overlay_shape_and_hottest_cell() -> None:
    a = torch.full((4, 4), 0.01)
    a[1, 2] = 0.85  # row 1, column 2
    img = Image.new("RGB", (64, 48), (0, 0, 0))
    out = attention_overlay(img, a, alpha=1.0, cmap="gray")
    assert out.size == (64, 48) and out.mode == "RGB"
    grey = np.asarray(out)[..., 0]
    y, x = np.unravel_index(int(grey.argmax()), grey.shape)
    assert 12 <= y < 24 and 32 <= x < 48  # the cell (1, 2) of a 4x4 grid on 64x48 pixels
    assert grey.max() == 255 and grey.min() == 0
    # the default colour map: the pixel nearest the colour of the maximum sits in the same cell
    jet = np.asarray(attention_overlay(img, a.numpy(), alpha=1.0)).astype(float)
    import matplotlib

    top = np.array(matplotlib.colormaps["jet"](1.0)[:3]) * 255
    y, x = np.unravel_index(int(np.abs(jet - top).sum(-1).argmin()), jet.shape[:2])
    assert 12 <= y < 24 and 32 <= x < 48


def test_overlay_blend_and_errors() -> None:
    img = Image.new("RGB", (8, 8), (200, 100, 50))
    assert np.array_equal(np.asarray(attention_overlay(img, np.ones((2, 2)), alpha=0.0)), np.asarray(img))
    half = np.asarray(attention_overlay(img, np.eye(2), alpha=0.5, cmap="gray")).astype(int)
    assert half[0, 0].tolist() == [228, 178, 152]  # (200 + 255) / 2 etc., rounded
    with pytest.raises(VestisError, match="attention map"):
        attention_overlay(img, np.ones(4))
    with pytest.raises(VestisError, match="alpha"):
        attention_overlay(img, np.ones((2, 2)), alpha=2.0)
    with pytest.raises(VestisError, match="cmap"):
        attention_overlay(img, np.ones((2, 2)), cmap="no-such-map")
