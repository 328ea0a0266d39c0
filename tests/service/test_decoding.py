"""Decoding uploads: the same pixels as ``vestis.data.images.load_image``, and the right error for bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vestis.data.images import load_image
from vestis.service.decoding import RawImage, ServiceError, decode_image


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
