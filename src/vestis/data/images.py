"""Safe, fast image decoding.

Every image the library reads goes through :func:`load_image` — files from a catalog and bytes from an
HTTP request alike: the pixel count is checked from the header before any pixel is decoded
(decompression bombs), truncated files are an error rather than a grey half-image, and JPEGs are
decoded with libjpeg's DCT scaling when the target is much smaller than the file (``draft``), which is
several times faster than decoding at full size and resizing.

Only the raster formats of :data:`IMAGE_FORMATS` are decoded, by default, everywhere: Pillow is never asked
to try its other plugins, some of which parse documents or shell out (EPS runs Ghostscript). A file in
another format, whatever its name, is :class:`ImageUnsupported` with the format it was recognised as.

The EXIF orientation is applied (an image stored 96x48 with orientation 6 is returned 48x96), so training,
``vestis predict`` and the service, which all decode through :func:`load_image`, see the same upright image.

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

from PIL import Image, ImageOps, UnidentifiedImageError

from vestis.errors import VestisError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_FORMATS",
    "ImageCorrupt",
    "ImageError",
    "ImageNotFound",
    "ImageTooLarge",
    "ImageUnsupported",
    "check_image",
    "image_size",
    "load_image",
]

DEFAULT_MAX_PIXELS = 64_000_000
IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
"""Pillow format names that are decoded (the raster formats catalog photos come in); nothing else is tried."""

_ORIENTATION = 0x0112  # EXIF tag
_TRANSPOSED = frozenset({5, 6, 7, 8})  # orientations that swap width and height
_PREFIX = 16  # bytes Pillow's plugins identify a format from
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


def _open(source: str | os.PathLike[str] | BinaryIO, formats: Sequence[str] | None, where: str) -> Image.Image:
    """``Image.open`` restricted to ``formats``, with the failures typed (nothing decoded yet)."""
    # Pillow reads ``formats=None`` as "every plugin": here it means the default list, never that
    formats = IMAGE_FORMATS if formats is None else tuple(formats)
    is_path = isinstance(source, str | os.PathLike)
    start = None if is_path else source.tell()  # type: ignore[union-attr]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(Path(source) if is_path else source, formats=formats)  # type: ignore[arg-type]
    except FileNotFoundError:
        raise ImageNotFound(where, "image file not found") from None
    except IsADirectoryError:
        raise ImageUnsupported(where, "a folder, not an image file") from None
    except UnidentifiedImageError:
        found = _recognise(source, start)
        allowed = ", ".join(formats)
        if found is None:
            raise ImageUnsupported(where, f"not a readable image in an allowed format ({allowed})") from None
        raise ImageUnsupported(where, f"{found} data, not an allowed image format ({allowed})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(where, str(e)) from None
    except Exception as e:  # Pillow raises many types on a header it cannot parse
        raise ImageCorrupt(where, f"unreadable image ({type(e).__name__}: {e})") from None


def _recognise(source: str | os.PathLike[str] | BinaryIO, start: int | None) -> str | None:
    """The format the first bytes of ``source`` announce, for the message; no plugin opens the data.

    Each Pillow plugin registers a pure prefix check (``accept``) beside its decoder: only those checks run.
    """
    try:
        if start is None:
            with open(source, "rb") as f:  # type: ignore[arg-type]
                prefix = f.read(_PREFIX)
        else:
            source.seek(start)  # type: ignore[union-attr]
            prefix = source.read(_PREFIX)  # type: ignore[union-attr]
    except (OSError, ValueError):
        return None
    if prefix.startswith(b"%PDF"):
        return "PDF"  # Pillow writes PDF but has no reader, hence no check of its own
    Image.init()
    for fmt, (_, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(prefix):
                return fmt
        except Exception:  # a check that cannot handle a short prefix proves nothing
            continue
    return None


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8), 1 when absent or unreadable."""
    try:
        value = img.getexif().get(_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block must not make a good image unusable: it is read as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def load_image(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
    formats: Sequence[str] | None = IMAGE_FORMATS,
    name: str | None = None,
) -> Image.Image:
    """Decode a file or a binary stream to an upright RGB image.

    Args:
        source: a path or a binary file object (e.g. ``io.BytesIO`` of an upload).
        max_pixels: refuse images with more pixels than this (checked before decoding).
        min_side: when given, JPEGs may be decoded at a reduced scale as long as both sides stay >= this.
        formats: Pillow format names to accept (default and ``None``: :data:`IMAGE_FORMATS`); no other plugin
            is tried.
        name: how to name the image in messages (default: the path).

    Returns:
        The image with its EXIF orientation applied.

    Raises:
        ImageError: one of its subclasses, with the reason.
    """
    where = name or (str(source) if isinstance(source, str | os.PathLike) else "<image>")
    img = _open(source, formats, where)
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ImageTooLarge(where, f"image is {w}x{h} = {w * h:,} pixels, over the cap of {max_pixels:,}")
    try:
        if min_side is not None and img.format == "JPEG":
            # draft keeps the aspect ratio and picks the largest DCT scale >= the requested size; the scale
            # comes from the shorter side, which a rotation by the orientation below does not change
            scale = min(w, h) / min_side
            if scale >= 2:
                img.draft("RGB", (max(1, int(w / scale)), max(1, int(h / scale))))
        img.load()
        orientation = _orientation(img)
        if orientation != 1:
            ImageOps.exif_transpose(img, in_place=True)
        return img.convert("RGB") if img.mode != "RGB" else img
    except Exception as e:  # truncated data, bad chunks, broken compression streams
        msg = str(e)
        what = "truncated image" if "truncated" in msg else "unreadable image"
        raise ImageCorrupt(where, f"{what} ({msg})") from None


def image_size(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    formats: Sequence[str] | None = IMAGE_FORMATS,
    name: str | None = None,
) -> tuple[int, int]:
    """``(width, height)`` of the upright image (EXIF orientation applied), from the header: no pixel decoded.

    Raises:
        ImageError: not an image in ``formats``, or a header that cannot be parsed.
    """
    where = name or (str(source) if isinstance(source, str | os.PathLike) else "<image>")
    with _open(source, formats, where) as img:
        w, h = img.size
        # Pillow's TIFF reader states the upright size already (it transposes while loading)
        swap = img.format != "TIFF" and _orientation(img) in _TRANSPOSED
        return (h, w) if swap else (w, h)


def check_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageError | None:
    """``None`` when ``path`` decodes fully, else the error (its ``reason`` says why)."""
    try:
        load_image(path, max_pixels=max_pixels).close()
    except ImageError as e:
        return e
    return None
