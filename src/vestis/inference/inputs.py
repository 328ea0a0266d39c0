"""What the Predictor accepts as an image: a PIL image, a path or a ``uint8`` ``(H, W, 3)`` array."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from vestis.data.images import load_image
from vestis.errors import VestisError

__all__ = ["ImageInput", "ImageList", "as_image"]

ImageInput = Image.Image | str | os.PathLike[str] | np.ndarray
"""One image for :meth:`~vestis.inference.predictor.Predictor.predict` and ``heatmap``."""
ImageList = list[ImageInput] | tuple[ImageInput, ...]
"""Several images: one result each."""


def as_image(x: Any, where: str, max_pixels: int, min_side: int | None = None) -> Image.Image:
    """One input as a PIL image.

    Args:
        x: a PIL image (used as it is), a path (decoded by :func:`vestis.data.images.load_image`: the allowed
            formats, the pixel cap, EXIF orientation) or a ``uint8`` ``(H, W, 3)`` RGB array.
        where: how to name the input in messages (``image``, ``images[3]``).
        max_pixels: refuse larger paths and arrays.
        min_side: let a JPEG path decode at a reduced DCT scale whose sides stay >= this (``None``: full size).

    Raises:
        VestisError: another type, an array of another dtype or shape, too many pixels, an unreadable path (an
            :class:`~vestis.data.images.ImageError` naming it).
    """
    if isinstance(x, Image.Image):
        return x
    if isinstance(x, str | os.PathLike):
        return load_image(x, max_pixels=max_pixels, min_side=min_side)
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3:
            raise VestisError(f"{where}: expected a uint8 (H, W, 3) RGB array, got {x.dtype} {x.shape}")
        if x.shape[0] * x.shape[1] > max_pixels:
            raise VestisError(f"{where}: {x.shape[1]}x{x.shape[0]} pixels, over the cap of {max_pixels:,}")
        return Image.fromarray(np.ascontiguousarray(x))  # (H, W, 3) uint8 -> RGB
    raise VestisError(
        f"{where}: expected a PIL image, a path or a uint8 (H, W, 3) array (or a list of them), got {type(x).__name__}"
    )
