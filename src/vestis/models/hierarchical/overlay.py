"""Attention maps drawn over the crop they were computed on (the paper's Figure 3)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from PIL import Image

from vestis.errors import VestisError

__all__ = ["attention_overlay"]


def attention_overlay(
    image: Image.Image, a_t: ArrayLike | torch.Tensor, *, alpha: float = 0.5, cmap: str = "jet"
) -> Image.Image:
    """Blend one attention map over an image.

    The (h, w) map is upsampled bilinearly to the image size, scaled so that its maximum is 1 (the weights of
    a softmax over many cells are all small), coloured by a matplotlib colour map and blended with the image.

    Args:
        image: the crop the map belongs to.
        a_t: (h, w) attention weights, e.g. ``outputs["attention"][i, t]``.
        alpha: weight of the colour map in the blend (0: the image only, 1: the map only).
        cmap: a matplotlib colour-map name.

    Returns:
        An RGB image of the same size as ``image``.

    Raises:
        VestisError: ``a_t`` is not a finite 2-D map, ``alpha`` is outside [0, 1] or ``cmap`` is unknown.
    """
    import matplotlib

    a = a_t.detach().cpu().numpy() if isinstance(a_t, torch.Tensor) else np.asarray(a_t)
    a = a.astype(np.float32)
    if a.ndim != 2 or a.size == 0 or not np.isfinite(a).all():
        raise VestisError(f"attention map: expected a finite (h, w) array, got shape {a.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise VestisError(f"alpha: expected a value in [0, 1], got {alpha}")
    try:
        colours = matplotlib.colormaps[cmap]
    except KeyError:
        raise VestisError(f"cmap: unknown matplotlib colour map {cmap!r}") from None
    rgb = image.convert("RGB")
    w, h = rgb.size
    up = F.interpolate(torch.from_numpy(a)[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    up = up - up.min()
    peak = float(up.max())
    heat = (up / peak).numpy() if peak > 0 else np.zeros((h, w), dtype=np.float32)  # a flat map has no hot spot
    coloured = (colours(heat)[..., :3] * 255.0).astype(np.float32)  # (H, W, 3)
    blend = (1.0 - alpha) * np.asarray(rgb, dtype=np.float32) + alpha * coloured
    return Image.fromarray(np.clip(np.rint(blend), 0, 255).astype(np.uint8))
