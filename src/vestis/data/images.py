"""Safe, fast image decoding.

Every image the library reads goes through :func:`load_image`: the pixel count is checked from the
header before any pixel is decoded (decompression bombs), truncated files are an error rather than a
grey half-image, and JPEGs are decoded with libjpeg's DCT scaling when the target is much smaller
than the file (``draft``), which is several times faster than decoding at full size and resizing.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vestis.errors import VestisError

__all__ = ["DEFAULT_MAX_PIXELS", "ImageError", "check_image", "load_image"]

DEFAULT_MAX_PIXELS = 64_000_000
# We enforce our own cap from the header; PIL's global guard would fire with a less helpful message.
Image.MAX_IMAGE_PIXELS = None


class ImageError(VestisError):
    """An image that cannot be used: missing, unreadable, truncated or too large."""


def load_image(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> Image.Image:
    """Decode ``path`` to an RGB image.

    Args:
        path: image file.
        max_pixels: refuse images with more pixels than this (checked before decoding).
        min_side: when given, JPEGs may be decoded at a reduced scale as long as both sides stay >= this.

    Raises:
        ImageError: the file is missing, not an image, truncated, or larger than ``max_pixels``.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
        w, h = img.size
        if w * h > max_pixels:
            img.close()
            raise ImageError(f"{path}: image is {w}x{h} = {w * h:,} pixels, over the cap of {max_pixels:,}")
        if min_side is not None and img.format == "JPEG":
            # draft keeps the aspect ratio and picks the largest DCT scale >= the requested size
            scale = min(w, h) / min_side
            if scale >= 2:
                img.draft("RGB", (max(1, int(w / scale)), max(1, int(h / scale))))
        img.load()
        return img.convert("RGB") if img.mode != "RGB" else img
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        msg = str(e)
        what = "truncated image" if "truncated" in msg else "unreadable image"
        raise ImageError(f"{path}: {what} ({msg})") from None


def check_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """``None`` when ``path`` decodes fully, else the reason it does not."""
    try:
        load_image(path, max_pixels=max_pixels).close()
    except ImageError as e:
        return str(e).split(": ", 1)[-1]
    return None
