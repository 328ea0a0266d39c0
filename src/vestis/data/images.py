"""Safe, fast image decoding.

Every image the library reads goes through :func:`load_image` — files from a catalog and bytes from an
HTTP request alike: the pixel count is checked from the header before any pixel is decoded
(decompression bombs), truncated files are an error rather than a grey half-image, and JPEGs are
decoded with libjpeg's DCT scaling when the target is much smaller than the file (``draft``), which is
several times faster than decoding at full size and resizing.

Failures are typed, so callers can map them (``vestis validate`` to problem kinds, the service to HTTP
status codes) without reading messages: :class:`ImageNotFound`, :class:`ImageUnsupported`,
:class:`ImageTooLarge` and :class:`ImageCorrupt`, all :class:`ImageError`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from vestis.errors import VestisError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageCorrupt",
    "ImageError",
    "ImageNotFound",
    "ImageTooLarge",
    "ImageUnsupported",
    "check_image",
    "load_image",
]

DEFAULT_MAX_PIXELS = 64_000_000
# We enforce our own cap from the header; PIL's global guard would fire with a less helpful message.
Image.MAX_IMAGE_PIXELS = None


class ImageError(VestisError):
    """An image that cannot be used. ``reason`` is the message without the file name."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class ImageNotFound(ImageError):
    """The file does not exist."""


class ImageUnsupported(ImageError):
    """Not an image, or a format outside the allowed ones."""


class ImageTooLarge(ImageError):
    """More pixels than the cap (checked from the header, before decoding)."""


class ImageCorrupt(ImageError):
    """Truncated or damaged data."""


def load_image(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
    formats: Sequence[str] | None = None,
    name: str | None = None,
) -> Image.Image:
    """Decode a file or a binary stream to an RGB image.

    Args:
        source: a path or a binary file object (e.g. ``io.BytesIO`` of an upload).
        max_pixels: refuse images with more pixels than this (checked before decoding).
        min_side: when given, JPEGs may be decoded at a reduced scale as long as both sides stay >= this.
        formats: Pillow format names to accept (default: every format Pillow knows).
        name: how to name the image in messages (default: the path).

    Raises:
        ImageError: one of its subclasses, with the reason.
    """
    where = name or (str(source) if isinstance(source, str | os.PathLike) else "<image>")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(Path(source) if isinstance(source, str | os.PathLike) else source, formats=formats)
    except FileNotFoundError:
        raise ImageNotFound(where, "image file not found") from None
    except UnidentifiedImageError:
        allowed = f" ({', '.join(formats)})" if formats else ""
        raise ImageUnsupported(where, f"not a readable image{allowed}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(where, str(e)) from None
    except Exception as e:  # Pillow raises many types on a header it cannot parse
        raise ImageCorrupt(where, f"unreadable image ({type(e).__name__}: {e})") from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ImageTooLarge(where, f"image is {w}x{h} = {w * h:,} pixels, over the cap of {max_pixels:,}")
    try:
        if min_side is not None and img.format == "JPEG":
            # draft keeps the aspect ratio and picks the largest DCT scale >= the requested size
            scale = min(w, h) / min_side
            if scale >= 2:
                img.draft("RGB", (max(1, int(w / scale)), max(1, int(h / scale))))
        img.load()
        return img.convert("RGB") if img.mode != "RGB" else img
    except Exception as e:  # truncated data, bad chunks, broken compression streams
        msg = str(e)
        what = "truncated image" if "truncated" in msg else "unreadable image"
        raise ImageCorrupt(where, f"{what} ({msg})") from None


def check_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageError | None:
    """``None`` when ``path`` decodes fully, else the error (its ``reason`` says why)."""
    try:
        load_image(path, max_pixels=max_pixels).close()
    except ImageError as e:
        return e
    return None
