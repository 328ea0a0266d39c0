import io

import numpy as np
import pytest
from PIL import Image

from vestis.data.images import (
    ImageCorrupt,
    ImageNotFound,
    ImageTooLarge,
    ImageUnsupported,
    check_image,
    image_size,
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


# --- allowed formats ----------------------------------------------------------------------------------------
_EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"
_ALLOWED = "JPEG, PNG, WEBP, GIF, BMP, TIFF"


def test_the_allowed_formats_are_one_constant_shared_with_the_service():
    from vestis.data.images import IMAGE_FORMATS
    from vestis.service import decoding

    assert IMAGE_FORMATS == ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
    assert decoding.IMAGE_FORMATS is IMAGE_FORMATS


def test_an_eps_named_jpg_is_refused_without_the_eps_plugin_or_ghostscript(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the EPS plugin must not parse catalog files")

    # the plugin's header parser and its Ghostscript call: neither may run
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", spy)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", spy)
    p = tmp_path / "x.jpg"
    p.write_bytes(_EPS)
    with pytest.raises(ImageUnsupported) as exc:
        load_image(p)
    assert exc.value.reason == f"EPS data, not an allowed image format ({_ALLOWED})"
    assert isinstance(check_image(p), ImageUnsupported)
    with pytest.raises(ImageUnsupported, match="EPS data"):
        load_image(io.BytesIO(_EPS), name="upload")
    with pytest.raises(ImageUnsupported, match="EPS data"):
        load_image(p, formats=None)  # None is the default list, not Pillow's "every plugin"
    assert calls == []


def test_other_formats_are_refused_by_name(tmp_path):
    pdf = tmp_path / "doc.jpg"
    pdf.write_bytes(b"%PDF-1.4\n1 0 obj << >> endobj\n")
    with pytest.raises(ImageUnsupported, match=r"PDF data, not an allowed image format \(JPEG, PNG"):
        load_image(pdf)
    ico = io.BytesIO()
    Image.new("RGB", (16, 16)).save(ico, format="ICO")  # a format Pillow reads, but not a catalog photo
    ico.seek(0)
    with pytest.raises(ImageUnsupported, match="ICO data"):
        load_image(ico)
    with pytest.raises(ImageUnsupported, match=r"not a readable image in an allowed format \(JPEG"):
        load_image(io.BytesIO(b"plain text, no magic number"))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_allowed_format_decodes(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (10, 6), (0, 0, 255)).save(buf, format=fmt)
    buf.seek(0)
    assert load_image(buf).size == (10, 6)


# --- EXIF orientation ---------------------------------------------------------------------------------------
def _two_colour(size=(96, 48)) -> Image.Image:
    """A green band on top, blue below it on the left, red on the right: every rotation or mirror shows."""
    w, h = size
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = (0, 0, 255)
    arr[:, w // 2 :] = (255, 0, 0)
    arr[: h // 4] = (0, 255, 0)
    return Image.fromarray(arr)


def oriented(fmt: str = "JPEG", orientation: int = 6, size=(96, 48)) -> bytes:
    """``_two_colour(size)`` stored as it is, with an EXIF orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    kw = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    _two_colour(size).save(buf, format=fmt, exif=exif.tobytes(), **kw)
    return buf.getvalue()


def upright(orientation: int = 6, size=(96, 48)) -> Image.Image:
    """What a viewer shows for :func:`oriented` (the EXIF specification's transforms, spelled out)."""
    t = Image.Transpose
    ops = {
        2: [t.FLIP_LEFT_RIGHT],
        3: [t.ROTATE_180],
        4: [t.FLIP_TOP_BOTTOM],
        5: [t.ROTATE_90, t.FLIP_TOP_BOTTOM],
        6: [t.ROTATE_270],
        7: [t.ROTATE_270, t.FLIP_TOP_BOTTOM],
        8: [t.ROTATE_90],
    }
    img = _two_colour(size)
    for op in ops[orientation]:
        img = img.transpose(op)
    return img


def _close(a: Image.Image, b: Image.Image, tol: float = 12.0) -> bool:
    return a.size == b.size and float(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean()) < tol


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_applied(orientation):
    img = load_image(io.BytesIO(oriented("JPEG", orientation)))
    assert _close(img, upright(orientation))
    side = (48, 96) if orientation >= 5 else (96, 48)
    assert img.size == side
    assert image_size(io.BytesIO(oriented("JPEG", orientation))) == side


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_exif_orientation_in_other_formats(fmt):
    data = oriented(fmt)
    img = load_image(io.BytesIO(data))
    assert img.size == (48, 96) and _close(img, upright(6))
    assert image_size(io.BytesIO(data)) == (48, 96)


def test_exif_orientation_with_the_jpeg_draft_path():
    # 800x400 stored, orientation 6: DCT-scaled by 1/4 to 200x100 (the shorter side stays >= 100), then turned
    img = load_image(io.BytesIO(oriented("JPEG", 6, (800, 400))), min_side=100)
    assert img.size == (100, 200)
    assert _close(img, upright(6, (800, 400)).resize((100, 200)))
    with pytest.raises(ImageTooLarge, match="800x400"):
        load_image(io.BytesIO(oriented("JPEG", 6, (800, 400))), max_pixels=800 * 400 - 1)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_a_damaged_exif_block_reads_the_image_as_stored():
    buf = io.BytesIO()
    _two_colour().save(buf, format="JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    img = load_image(io.BytesIO(buf.getvalue()))
    assert img.size == (96, 48)


def test_training_predict_and_the_service_see_the_same_upright_image(tmp_path):
    from vestis.config import DataConfig
    from vestis.data.dataset import AttributeDataset
    from vestis.data.manifest import Manifest, Record
    from vestis.data.taxonomy import Taxonomy
    from vestis.data.transforms import letterbox_array
    from vestis.inference.tagging import decode_image as predict_decode
    from vestis.service.decoding import RawImage
    from vestis.service.decoding import decode_image as service_decode

    (tmp_path / "o.jpg").write_bytes(oriented("JPEG", 6))
    expected = letterbox_array(upright(6), 32, 255)  # (3, 32, 32): portrait, padded left and right
    tax = Taxonomy.from_dict({"attributes": [{"name": "colour", "kind": "single", "values": ["red", "blue"]}]})
    ds = AttributeDataset(
        Manifest([Record("o", "o.jpg", {})], ["colour"], root=tmp_path), tax, DataConfig(image_size=32)
    )
    train = ds.load(0).numpy()
    predicted, err = predict_decode(tmp_path / "o.jpg", 32, 255, 10**6)
    assert err is None
    served = service_decode(RawImage((tmp_path / "o.jpg").read_bytes(), "file[0]"), 10**6, 32)
    assert served.image.size == (48, 96) and (served.width, served.height) == (48, 96)
    assert np.array_equal(train, predicted)
    assert np.array_equal(letterbox_array(served.image, 32, 255), predicted)
    assert float(np.abs(predicted.astype(np.int16) - expected).mean()) < 8
