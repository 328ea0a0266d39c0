"""Fuzzing the readers every user file goes through: the manifest reader, the YAML loader, the image decoder.

The only outcomes allowed are a result or the project's own error type (``VestisError`` for a manifest or
YAML, ``ImageError`` for an image); any other exception is a traceback waiting for a user. The default run keeps
a small fixed example budget (a few seconds); the ``slow`` copies run the same properties much longer.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vestis.data.images import ImageError, load_image
from vestis.data.manifest import read_manifest
from vestis.data.yaml_safe import load_yaml
from vestis.errors import VestisError

FAST = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))

# --- the manifest reader ------------------------------------------------------------------------------------
# pieces that stress a CSV/JSONL reader: quotes, separators, every line ending, NUL, a BOM, invalid UTF-8,
# deep brackets, huge integers, long runs
_PIECES = [
    b'"', b'""', b",", b"\n", b"\r", b"\r\n", b"\x00", b"\xef\xbb\xbf", b"\xff", b"\xc3", b"\xe9", b"|",
    b"id", b"image", b"title", b"colour", b"a.jpg", b"red", b" ", b"{", b"}", b"[", b"]", b":", b"null",
    b'"id": ', b'"image": ', b"7" * 5000, b"[" * 3000, b"x" * 5000, "é".encode(), "\U0001f600".encode(),
]  # fmt: skip
_HEADERS = [b"", b"id,image\n", b"id,image,title,colour\n", b'{"id": "a", "image": "a.jpg"}\n']
csvish = st.builds(
    lambda head, parts: head + b"".join(parts),
    st.sampled_from(_HEADERS),
    st.lists(st.sampled_from(_PIECES), max_size=40),
)
raw_bytes = st.binary(max_size=400)


def _read_property(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"m{suffix}"
        path.write_bytes(data)
        try:
            m = read_manifest(path)
        except VestisError as e:
            assert str(e).startswith(str(path)), str(e)  # every error names the file
            return
        lines = data.count(b"\n") + data.count(b"\r") + 1
        for r in m.records:
            assert 1 <= r.line <= lines and isinstance(r.id, str) and isinstance(r.image, str)
        for p in m.problems:
            assert p.file == str(path) and 1 <= p.line <= lines
            assert "\n" not in p.message


@FAST
@given(data=csvish | raw_bytes, suffix=st.sampled_from([".csv", ".jsonl"]))
def test_manifest_reader_fuzz(data, suffix):
    _read_property(data, suffix)


@pytest.mark.slow
@LONG
@given(data=csvish | raw_bytes, suffix=st.sampled_from([".csv", ".jsonl"]))
def test_manifest_reader_fuzz_long(data, suffix):
    _read_property(data, suffix)


# --- the YAML loader (taxonomies, configs) -----------------------------------------------------------------
_YAML_PIECES = [
    "a", "b", ": ", "- ", "\n", "  ", "&x ", "*x", "&y ", "*y", "[", "]", "{", "}", ", ", "<<: ", "? ", "'", '"',
    "!!binary ", "!!python/object:os.system ", "!!set ", "!!omap ", "!!int ", "7" * 5000, "#", "---\n", "...\n",
    "\t", "\x00", "\x85", "\ufeff", "|\n", ">\n", "%YAML 1.1\n", "!<tag:x> ",
]  # fmt: skip
yamlish = st.lists(st.sampled_from(_YAML_PIECES), max_size=50).map("".join)


def _yaml_property(text: str) -> None:
    try:
        load_yaml(text, "T", "taxonomy")
    except VestisError as e:
        assert str(e).startswith("T:") and "\n" not in str(e), str(e)


@FAST
@given(text=yamlish)
def test_yaml_loader_fuzz(text):
    _yaml_property(text)


@pytest.mark.slow
@LONG
@given(text=yamlish)
def test_yaml_loader_fuzz_long(text):
    _yaml_property(text)


# --- the image decoder --------------------------------------------------------------------------------------
def _seed_images() -> dict[str, bytes]:
    img = Image.new("RGB", (12, 9), (200, 40, 40))
    for x in range(12):
        img.putpixel((x, x % 9), (10, 200, 30))
    out = {}
    for fmt, kw in (("PNG", {}), ("JPEG", {"quality": 80}), ("GIF", {})):
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        out[fmt] = buf.getvalue()
    return out


SEEDS = _seed_images()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid small image with a few bytes overwritten, inserted or cut, or the file truncated."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate", "grow"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
        else:  # a header field (width, height, lengths) set to a large value
            data[pos : pos + 4] = b"\xff\xff\x7f\xff"
    return bytes(data)


def _decode_property(data: bytes) -> None:
    try:
        img = load_image(io.BytesIO(data), max_pixels=1_000_000)
    except ImageError as e:
        assert e.reason and "\n" not in str(e)
        return
    assert img.mode == "RGB" and img.width * img.height <= 1_000_000


def test_seeds_decode():
    for data in SEEDS.values():
        assert load_image(io.BytesIO(data)).size == (12, 9)


@FAST
@given(data=mutated_images())
def test_image_decoding_fuzz(data):
    _decode_property(data)


@pytest.mark.slow
@LONG
@given(data=mutated_images())
def test_image_decoding_fuzz_long(data):
    _decode_property(data)
