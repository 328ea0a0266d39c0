"""Heat-maps as PNGs: where the model looked, in grey or as a colour overlay for the web page."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image

__all__ = ["fit_size", "render_heatmap"]

# colour map of the overlay: dark blue (ignored) -> cyan -> yellow -> red (looked here)
_CMAP_STOPS = np.array([0.0, 0.35, 0.65, 1.0])
_CMAP_RGB = np.array([[20, 30, 140], [0, 190, 230], [250, 220, 40], [230, 30, 30]], dtype=np.float64)


def render_heatmap(heat: np.ndarray, style: Literal["overlay", "gray"] = "overlay") -> bytes:
    """A heat-map ``(H, W)`` in [0, 1] as a PNG.

    Args:
        heat: the map; values outside [0, 1] are clipped and NaN counts as 0.
        style: ``gray``: 8-bit greyscale, value x 255; ``overlay``: RGBA colour map whose opacity grows with
            the value, to lay over the image.
    """
    v = np.nan_to_num(np.asarray(heat, dtype=np.float64), nan=0.0).clip(0.0, 1.0)
    if v.ndim != 2:
        raise ValueError(f"heat-map: expected a (H, W) array, got shape {v.shape}")
    if style == "gray":
        img = Image.fromarray(np.round(v * 255).astype(np.uint8), mode="L")
    else:
        rgb = np.stack([np.interp(v, _CMAP_STOPS, _CMAP_RGB[:, c]) for c in range(3)], axis=-1)  # (H, W, 3)
        alpha = 60 + 170 * v  # faint where the model did not look, never fully hiding the image
        rgba = np.concatenate([rgb, alpha[..., None]], axis=-1)  # (H, W, 4)
        img = Image.fromarray(np.round(rgba).astype(np.uint8), mode="RGBA")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def fit_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` (width, height) scaled down, aspect kept, so that its longer side is at most ``max_side``."""
    w, h = size
    scale = min(1.0, max_side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))
