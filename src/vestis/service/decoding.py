"""The first stage of the service: an HTTP request in, decoded images out, or a precise 4xx error.

Two request forms carry images:

* ``multipart/form-data`` with one or more parts named ``file`` (``curl -F file=@shirt.jpg``);
* ``application/json`` ``{"images": ["<base64>", ...]}`` with the base64 of each image *file*.

Nothing here fetches anything: a string that is not base64 (a URL, say) is a 422. Limits are checked as
early as possible: the body size by :class:`BodyLimitMiddleware` while it streams in, the nesting of a JSON
body before it is parsed, the number of images before any is decoded, and the pixel count of each image
and of the whole request from the image headers before any pixel is decoded (decompression bombs). Only a
fixed set of raster formats is considered, so Pillow never hands a request to a plugin that shells out
(EPS) or parses documents.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vestis.data.images import IMAGE_FORMATS, ImageError, ImageTooLarge, ImageUnsupported, image_size, load_image
from vestis.service.config import Limits
from vestis.service.schemas import ImagesRequest

__all__ = [
    "IMAGE_FORMATS",
    "BodyLimitMiddleware",
    "DecodedImage",
    "ImageHeader",
    "RawImage",
    "ServiceError",
    "decode_image",
    "decode_images",
    "json_depth",
    "json_within_depth",
    "read_headers",
    "read_images",
]

_BASE64_WHITESPACE = str.maketrans("", "", " \t\r\n")
# a JSON string with its escapes (unrolled loop: linear, no backtracking); brackets inside do not nest
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[{]}")))
_DEPTH_CHUNK = 1 << 20
_ORIENTATION = 0x0112  # EXIF tag


class ServiceError(Exception):
    """An error answered as JSON ``{"error": ..., "detail": ...}`` with an HTTP status.

    Args:
        status: the HTTP status code.
        error: a short, stable description (``invalid base64``, ``image too large``...).
        detail: what exactly was wrong, for a person.
        headers: extra response headers (``Retry-After`` on a 503).
    """

    def __init__(self, status: int, error: str, detail: Any = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "detail": self.detail}, status_code=self.status, headers=self.headers)


@dataclass(frozen=True)
class RawImage:
    """An image as it arrived: the file bytes, where it came from (``file[0]``, ``images[2]``) and its name."""

    data: bytes
    where: str
    filename: str | None = None


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read before any pixel is decoded.

    Attributes:
        width: the width as uploaded.
        height: the height as uploaded.
        decoded_bytes: the memory its decoding will hold at once (the decoded pixels, at the reduced DCT
            scale for a large JPEG, plus their RGB copy when the file is in another mode).
    """

    width: int
    height: int
    decoded_bytes: int


@dataclass(frozen=True)
class DecodedImage:
    """A decoded RGB image, its size as uploaded and the name it was uploaded under.

    ``image`` may be smaller than ``width x height``: large JPEGs are decoded at a reduced DCT scale.
    """

    image: Image.Image
    width: int
    height: int
    filename: str | None = None


def _too_many(n: int | str, limits: Limits) -> ServiceError:
    return ServiceError(413, "too many images", f"{n} images in one request; at most {limits.max_images} are allowed")


async def read_images(request: Request, limits: Limits) -> list[RawImage]:
    """The raw image files of a multipart or JSON request (see the module docstring).

    Raises:
        ServiceError: 415 for another content type, 413 for too many images, 422 for a malformed body,
            a missing ``file`` part, an empty list or bad base64.
    """
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        return await _read_multipart(request, limits)
    if media_type == "application/json" or media_type.endswith("+json"):
        return _read_json(await request.body(), limits)
    raise ServiceError(
        415,
        "unsupported media type",
        f"got {media_type or 'no content type'}; send multipart/form-data with `file` parts "
        'or application/json {"images": ["<base64>", ...]}',
    )


async def _read_multipart(request: Request, limits: Limits) -> list[RawImage]:
    try:
        # the parser stops at the image cap, so a request with thousands of parts is not spooled to the end
        form = await request.form(max_files=limits.max_images, max_fields=16)
    except HTTPException as e:  # starlette reports every multipart problem as a 400; tell the cap apart
        if "Too many files" in str(e.detail):
            raise _too_many(f"more than {limits.max_images}", limits) from None
        raise ServiceError(422, "invalid multipart body", e.detail) from None
    try:
        parts = form.getlist("file")
        if not parts:
            raise ServiceError(422, "invalid request", "no `file` part: upload the image(s) in the form field `file`")
        if len(parts) > limits.max_images:
            raise _too_many(len(parts), limits)
        out: list[RawImage] = []
        for i, part in enumerate(parts):
            if not isinstance(part, UploadFile):
                raise ServiceError(
                    422,
                    "invalid request",
                    f"file[{i}]: expected a file upload (a part with a filename), got a text field",
                )
            out.append(RawImage(await part.read(), f"file[{i}]", part.filename or None))
        return out
    finally:
        await form.close()


def json_depth(body: bytes, stop_above: int | None = None) -> int:
    """The deepest nesting of arrays and objects in a JSON text, without parsing it.

    Brackets inside strings do not count. The scan is a regular expression and byte translations in C plus
    a chunked numpy running sum (a 20 MB body takes a fraction of a second), and it returns as soon as the
    depth passes ``stop_above``, so a hostile body costs little. It is exact for valid JSON; for invalid
    JSON it is some number and the parser reports the error.
    """
    # keep only the brackets, as +1 (openers) and -1 (closers, byte 0xFF read as int8)
    steps = _JSON_STRING.sub(b"", body).translate(_BRACKET_STEPS, _NOT_BRACKETS)
    depth = deepest = 0
    for start in range(0, len(steps), _DEPTH_CHUNK):
        chunk = np.frombuffer(steps, dtype=np.int8, count=min(_DEPTH_CHUNK, len(steps) - start), offset=start)
        levels = depth + np.cumsum(chunk, dtype=np.int64)
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
        if stop_above is not None and deepest > stop_above:
            break
    return deepest


def json_within_depth(body: bytes, max_depth: int) -> bool:
    """Whether a JSON text nests at most ``max_depth`` arrays and objects (``json.loads`` recurses per level,
    so a body nested thousands deep would end in a ``RecursionError``).

    A body with no more openers than ``max_depth`` (every valid request: base64 has no brackets) passes
    after one byte translation; only the others are scanned by :func:`json_depth`.
    """
    brackets = body.translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= max_depth:
        return True
    return json_depth(body, stop_above=max_depth) <= max_depth


def _read_json(body: bytes, limits: Limits) -> list[RawImage]:
    if not json_within_depth(body, limits.max_json_depth):
        raise ServiceError(
            422,
            "invalid JSON",
            f'nested more than {limits.max_json_depth} levels deep; a request is {{"images": ["<base64>", ...]}}',
        )
    try:
        data = json.loads(body)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ServiceError(422, "invalid JSON", str(e)) from None
    except RecursionError:  # not reached under the depth cap; kept so that no body can end in a 500
        raise ServiceError(422, "invalid JSON", "nested too deeply") from None
    if isinstance(data, dict) and isinstance(data.get("images"), list) and len(data["images"]) > limits.max_images:
        raise _too_many(len(data["images"]), limits)
    try:
        req = ImagesRequest.model_validate(data)
    except ValidationError as e:
        raise ServiceError(
            422, "invalid request", e.errors(include_url=False, include_context=False, include_input=False)
        ) from None
    return [RawImage(_b64decode(s, f"images[{i}]"), f"images[{i}]") for i, s in enumerate(req.images)]


def _b64decode(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text.translate(_BASE64_WHITESPACE), validate=True)
    except (binascii.Error, ValueError) as e:  # ValueError: non-ASCII characters
        raise ServiceError(
            422, "invalid base64", f"{where}: not valid base64 ({e}); send the image file's bytes, never a URL"
        ) from None


def _original_size(data: bytes) -> tuple[int, int]:
    """The upright size stated by the header (the decoded image may be smaller: JPEG DCT scaling)."""
    return image_size(io.BytesIO(data))  # turned by the EXIF orientation, as load_image turns the pixels


def _bytes_per_pixel(mode: str) -> int:
    # Pillow keeps 1-byte modes in one byte per pixel, 16-bit modes in two, everything else (RGB too) in four
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _rotated(img: Image.Image) -> bool:
    """Whether the EXIF orientation turns the image, read without decoding it."""
    try:
        if img.format == "PNG":
            # Pillow's PNG getexif() decodes the whole image to look for an eXIf chunk after the pixels; the
            # chunks before them are enough here (an estimate may miss a late one)
            raw = img.info.get("exif")
            if raw is None:
                return False
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = img.getexif()
        return exif.get(_ORIENTATION, 1) not in (1, None)
    except Exception:  # a damaged EXIF block is read as absent, as the decoder does
        return False


def read_header(raw: RawImage, max_pixels: int, min_side: int | None = None) -> ImageHeader:
    """The size of one image and the memory its decoding needs, from the header alone.

    Args:
        raw: the file.
        max_pixels: the pixel cap of one image.
        min_side: as in :func:`decode_image`: a large JPEG is counted at the reduced DCT scale it will be
            decoded at.

    Raises:
        ServiceError: 422 when it is empty or its header is unreadable, 415 when it is not an image in
            :data:`IMAGE_FORMATS`, 413 when it has more than ``max_pixels``.
    """
    if not raw.data:
        raise ServiceError(422, "empty image", f"{raw.where}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw.data), formats=IMAGE_FORMATS)
        with img:
            w, h = img.size
            if w * h > max_pixels:
                too_many = f"image is {w}x{h} = {w * h:,} pixels, over the cap of {max_pixels:,}"
                raise ServiceError(413, "image too large", f"{raw.where}: {too_many}")
            if min_side is not None and img.format == "JPEG" and min(w, h) / min_side >= 2:
                # the same request as load_image makes; draft only rescales the header, decoding nothing
                scale = min(w, h) / min_side
                img.draft("RGB", (max(1, int(w / scale)), max(1, int(h / scale))))
            dw, dh = img.size
            held = _bytes_per_pixel(img.mode)
            if _rotated(img):
                held *= 2  # turning it upright by its EXIF orientation copies it
            if img.mode != "RGB":
                held += 4  # the RGB copy made from any other mode
            return ImageHeader(w, h, dw * dh * held)
    except UnidentifiedImageError:
        raise ServiceError(415, "unsupported image", f"{raw.where}: not a {', '.join(IMAGE_FORMATS)} image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # Pillow's guard, if set lower
        raise ServiceError(413, "image too large", f"{raw.where}: {e}") from None
    except ServiceError:
        raise
    except Exception as e:  # Pillow raises many types on a header it cannot parse
        raise ServiceError(422, "corrupt image", f"{raw.where}: unreadable image ({type(e).__name__}: {e})") from None


def read_headers(raws: list[RawImage], limits: Limits, min_side: int | None = None) -> list[ImageHeader]:
    """:func:`read_header` on each image, then the request's total pixel count against its cap.

    Raises:
        ServiceError: as :func:`read_header`, and 413 when the images together have more than
            ``limits.max_request_pixels``.
    """
    heads = [read_header(r, limits.max_pixels, min_side) for r in raws]
    total = sum(h.width * h.height for h in heads)
    if total > limits.max_request_pixels:
        raise ServiceError(
            413,
            "too many pixels",
            f"the {len(heads)} images hold {total:,} pixels together; one request may hold at most "
            f"{limits.max_request_pixels:,}",
        )
    return heads


def decode_image(raw: RawImage, max_pixels: int, min_side: int | None = None) -> DecodedImage:
    """Decode one image file to RGB, refusing it before decoding when it has more than ``max_pixels``.

    Decoding follows :func:`vestis.data.images.load_image` (which ``vestis predict`` uses), so an image
    gets the same prediction over HTTP as in batch tagging.

    Args:
        raw: the file.
        max_pixels: the pixel cap, checked from the header.
        min_side: when given, a JPEG at least twice this size is decoded at a reduced DCT scale that keeps
            both sides >= ``min_side`` (several times faster for large photos).

    Raises:
        ServiceError: 415 when it is not an image in :data:`IMAGE_FORMATS`, 413 when it is too large,
            422 when it is empty, truncated or corrupt.
    """
    if not raw.data:
        raise ServiceError(422, "empty image", f"{raw.where}: the file is empty")
    try:
        rgb = load_image(
            io.BytesIO(raw.data), max_pixels=max_pixels, min_side=min_side, formats=IMAGE_FORMATS, name=raw.where
        )
    except ImageUnsupported:
        raise ServiceError(415, "unsupported image", f"{raw.where}: not a {', '.join(IMAGE_FORMATS)} image") from None
    except ImageTooLarge as e:
        raise ServiceError(413, "image too large", str(e)) from None
    except ImageError as e:
        raise ServiceError(422, "corrupt image", str(e)) from None
    w, h = _original_size(raw.data)
    return DecodedImage(rgb, w, h, raw.filename)


def decode_images(raws: list[RawImage], max_pixels: int, min_side: int | None = None) -> list[DecodedImage]:
    """:func:`decode_image` on each image."""
    return [decode_image(r, max_pixels, min_side) for r in raws]


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with a 413, from ``Content-Length`` or while streaming.

    A body without ``Content-Length`` (chunked) is counted as it arrives; the endpoint reading it gets a
    :class:`ServiceError` the moment the count passes the limit, so an oversized upload is never buffered.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self, size: str) -> ServiceError:
        return ServiceError(
            413, "payload too large", f"request body of {size} bytes; the limit is {self.max_bytes:,} bytes"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await ServiceError(400, "bad request", "Content-Length is not an integer").response()(
                        scope, receive, send
                    )
                    return
                if declared > self.max_bytes:
                    await self._error(f"{declared:,}").response()(scope, receive, send)
                    return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._error(f"more than {self.max_bytes:,}")
            return message

        await self.app(scope, limited, send)
