"""Decoding uploads: the same pixels as ``vestis.data.images.load_image``, and the right error for bad files."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
from PIL import Image

from vestis.data.images import load_image
from vestis.service.config import Limits
from vestis.service.decoding import (
    RawImage,
    ServiceError,
    decode_image,
    json_depth,
    json_within_depth,
    read_header,
    read_headers,
)


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("mode", "fmt"), [("L", "PNG"), ("RGBA", "PNG"), ("P", "GIF"), ("RGB", "BMP"), ("RGB", "TIFF"), ("RGB", "WEBP")]
)
def test_modes_and_formats_decode_like_load_image(tmp_path, mode, fmt):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (20, 30, 4 if mode == "RGBA" else 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    data = _encode(img, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    got = decode_image(RawImage(data, "file[0]", "x"), max_pixels=10_000)
    assert got.image.mode == "RGB" and (got.width, got.height) == (30, 20) and got.filename == "x"
    assert np.array_equal(np.asarray(got.image), np.asarray(load_image(path)))


# DCT scales are 1/1, 1/2, 1/4, 1/8: the smallest that keeps the short side >= min_side, none below 2x
@pytest.mark.parametrize(
    ("size", "min_side", "decoded"),
    [((400, 300), 48, (100, 75)), ((400, 300), 100, (200, 150)), ((400, 300), 200, (400, 300))],
)
def test_jpeg_draft_follows_load_image(tmp_path, size, min_side, decoded):
    path = tmp_path / "x.jpg"
    Image.new("RGB", size, (120, 50, 200)).save(path)
    got = decode_image(RawImage(path.read_bytes(), "file[0]"), max_pixels=10**6, min_side=min_side)
    assert got.image.size == load_image(path, min_side=min_side).size == decoded
    assert (got.width, got.height) == size  # the size as uploaded, not as decoded


def test_pillows_own_guard_is_a_413(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # someone set Pillow's guard lower than ours
    data = _encode(Image.new("RGB", (30, 30)), "PNG")  # 900 pixels > 2 x 100: Pillow raises
    with pytest.raises(ServiceError) as e:
        decode_image(RawImage(data, "images[0]"), max_pixels=10**6)
    assert (e.value.status, e.value.error) == (413, "image too large")


def test_a_truncated_png_is_corrupt():
    data = _encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")
    with pytest.raises(ServiceError) as e:
        decode_image(RawImage(data[:60], "file[3]"), max_pixels=10**6)
    assert (e.value.status, e.value.error) == (422, "corrupt image") and str(e.value.detail).startswith("file[3]: ")


def test_pillows_own_guard_is_a_413_from_the_header_too(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    data = _encode(Image.new("RGB", (30, 30)), "PNG")
    with pytest.raises(ServiceError) as e:
        read_header(RawImage(data, "images[0]"), max_pixels=10**6)
    assert (e.value.status, e.value.error) == (413, "image too large")


# --- JSON nesting ----------------------------------------------------------------------------------------------
def _naive_depth(text: str) -> int:
    """Character by character, with the string and escape state: the reference for :func:`json_depth`."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _random_value(rng: random.Random, depth: int) -> object:
    kind = rng.choice(["list", "dict", "str", "num"] if depth < 12 else ["str", "num"])
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "dict":
        return {
            rng.choice(["k", "[{", 'a"b', "\\"]) + str(i): _random_value(rng, depth + 1)
            for i in range(rng.randint(0, 3))
        }
    if kind == "str":
        return "".join(rng.choice('ab[]{}"\\/ \u00e9') for _ in range(rng.randint(0, 8)))
    return rng.random()


def test_json_depth_matches_a_naive_scan_on_random_documents():
    rng = random.Random(0)
    depths = set()
    for _ in range(300):
        text = json.dumps(_random_value(rng, 0), ensure_ascii=rng.random() < 0.5)
        want = _naive_depth(text)
        assert json_depth(text.encode()) == want, text
        depths.add(want)
    assert len(depths) > 5  # the documents did vary in depth


def test_json_depth_across_scan_chunks():
    flat = "[" + ",".join(["[0]"] * 400_000) + "]"  # 800,002 brackets: more than one chunk after stripping
    deep = "[" * 3000 + "]" * 3000
    text = '{"a": ' + flat + ', "b": ' + deep + ', "c": "' + "[" * 5000 + '"}'
    assert json_depth(text.encode()) == _naive_depth(text) == 3001


def test_json_within_depth():
    ok = json.dumps({"images": ["iVBORw0KGgo=", "[[[[" * 50]}).encode()  # brackets inside a string do not nest
    assert json_within_depth(ok, 2) and not json_within_depth(ok, 1)
    bomb = b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert not json_within_depth(bomb, 32) and json_within_depth(bomb, 100_001)
    assert json_within_depth(b"", 2) and json_within_depth(b"not json at all", 2)


# --- headers: sizes, decode memory and the pixel caps, before decoding -----------------------------------------
@pytest.mark.parametrize(
    ("mode", "fmt", "per_pixel"),
    [("1", "PNG", 1 + 4), ("L", "PNG", 1 + 4), ("P", "GIF", 1 + 4), ("RGB", "PNG", 4), ("RGBA", "PNG", 4 + 4)],
)
def test_decoded_bytes_of_each_mode(mode, fmt, per_pixel):
    data = _encode(Image.new(mode, (100, 50)), fmt)
    head = read_header(RawImage(data, "file[0]"), max_pixels=10**6)
    assert (head.width, head.height, head.decoded_bytes) == (100, 50, 100 * 50 * per_pixel)


def test_decoded_bytes_of_a_large_jpeg_are_at_its_draft_scale():
    data = _encode(Image.new("RGB", (800, 600), (10, 20, 30)), "JPEG")
    head = read_header(RawImage(data, "file[0]"), max_pixels=10**6, min_side=100)
    decoded = load_image(io.BytesIO(data), min_side=100)
    assert decoded.size == (200, 150) and (head.width, head.height) == (800, 600)
    assert head.decoded_bytes == 200 * 150 * 4  # Pillow holds RGB in four bytes a pixel
    assert read_header(RawImage(data, "f"), max_pixels=10**6).decoded_bytes == 800 * 600 * 4


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_an_image_turned_upright_counts_twice(fmt):
    img = Image.new("RGB", (40, 20))
    exif = img.getexif()
    exif[0x0112] = 6
    data = _encode(img, fmt, exif=exif.tobytes())
    assert read_header(RawImage(data, "f"), max_pixels=10**6).decoded_bytes == 40 * 20 * 4 * 2
    assert read_header(RawImage(_encode(img, fmt), "f"), max_pixels=10**6).decoded_bytes == 40 * 20 * 4


def test_reading_a_header_decodes_no_pixel(monkeypatch):
    from PIL import ImageFile

    class Decoded(BaseException):  # not an Exception: no handler on the way may swallow it
        pass

    def refuse(self: object) -> None:
        raise Decoded

    data = _encode(Image.new("1", (3000, 3000)), "PNG")
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(Image.Image, "load", refuse)
    assert read_header(RawImage(data, "f"), max_pixels=10**7).decoded_bytes == 3000 * 3000 * 5


def test_the_request_pixel_cap_is_checked_on_the_sum():
    raws = [RawImage(_encode(Image.new("1", (100, 100)), "PNG"), f"file[{i}]") for i in range(3)]
    assert len(read_headers(raws, Limits(max_pixels=10_000, max_request_pixels=30_000))) == 3
    with pytest.raises(ServiceError) as e:
        read_headers(raws, Limits(max_pixels=10_000, max_request_pixels=29_999))
    assert (e.value.status, e.value.error) == (413, "too many pixels")
    assert e.value.detail == "the 3 images hold 30,000 pixels together; one request may hold at most 29,999"
    with pytest.raises(ServiceError) as e:
        read_headers(raws, Limits(max_pixels=9_999))
    assert (e.value.status, e.value.error) == (413, "image too large") and e.value.detail.startswith("file[0]: ")


@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        (b"", 422, "empty image"),
        (b"%PDF-1.4 hello", 415, "unsupported image"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, 415, "unsupported image"),  # as decode_image says: Pillow gives up
    ],
)
def test_bad_headers(data, status, error):
    with pytest.raises(ServiceError) as e:
        read_header(RawImage(data, "images[1]"), max_pixels=10**6)
    assert (e.value.status, e.value.error) == (status, error) and str(e.value.detail).startswith("images[1]: ")
