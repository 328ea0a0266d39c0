import io

import pytest
from PIL import Image

from vestis.data.images import (
    ImageCorrupt,
    ImageNotFound,
    ImageTooLarge,
    ImageUnsupported,
    check_image,
    load_image,
)


def _jpeg(size=(400, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_decodes_files_and_streams(tmp_path):
    p = tmp_path / "a.jpg"
    p.write_bytes(_jpeg())
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (400, 200)
    assert load_image(io.BytesIO(_jpeg()), name="upload").size == (400, 200)
    assert check_image(p) is None


def test_jpeg_draft_keeps_both_sides_above_min_side():
    img = load_image(io.BytesIO(_jpeg((800, 400))), min_side=100)
    # 400 / 100 = 4: libjpeg scales by 1/4 -> 200 x 100, never below the requested side
    assert img.size == (200, 100)
    assert load_image(io.BytesIO(_jpeg((800, 400))), min_side=300).size == (800, 400)  # scale < 2: full decode


def test_typed_errors(tmp_path):
    with pytest.raises(ImageNotFound, match="not found"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "t.jpg").write_text("hello")
    with pytest.raises(ImageUnsupported):
        load_image(tmp_path / "t.jpg")
    data = _jpeg()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageCorrupt, match="truncated"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(ImageTooLarge, match="400x200 = 80,000 pixels, over the cap of 1,000") as exc:
        load_image(io.BytesIO(data), max_pixels=1000, name="big.jpg")
    assert exc.value.where == "big.jpg" and str(exc.value).startswith("big.jpg: ")
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    with pytest.raises(ImageUnsupported, match="JPEG"):
        load_image(io.BytesIO(png.getvalue()), formats=["JPEG"])
    err = check_image(tmp_path / "cut.jpg")
    assert isinstance(err, ImageCorrupt) and err.reason.startswith("truncated image")
