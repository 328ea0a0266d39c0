"""Crops at predicted boxes and the stage-2 augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vestis.data.crops import CropAugment, crop_box, crop_boxes, crop_region
from vestis.errors import VestisError


def _image() -> tuple[Image.Image, np.ndarray]:
    arr = np.arange(12 * 10 * 3, dtype=np.uint8).reshape(12, 10, 3)  # (H=12, W=10): every pixel distinct
    return Image.fromarray(arr), arr


def test_crop_of_a_known_box_returns_exactly_those_pixels() -> None:
    img, arr = _image()
    crop = crop_box(img, [2, 3, 4, 5])
    assert crop.size == (4, 5)
    np.testing.assert_array_equal(np.asarray(crop), arr[3:8, 2:6])


def test_fractional_boxes_round_outwards_and_margin_adds_context() -> None:
    assert crop_region([2.4, 3.6, 3.2, 1.0], 10, 12) == (2, 3, 6, 5)  # 2.4..5.6 x 3.6..4.6
    assert crop_region([2, 3, 4, 5], 10, 12, margin=0.25) == (1, 1, 7, 10)  # +1 px on x, +1.25 px on y
    img, arr = _image()
    np.testing.assert_array_equal(np.asarray(crop_box(img, [2, 3, 4, 5], margin=0.25)), arr[1:10, 1:7])


def test_boxes_are_clipped_to_the_image() -> None:
    img, arr = _image()
    assert crop_region([-3, 8, 6, 10], 10, 12) == (0, 8, 3, 12)
    crops = crop_boxes(img, np.array([[-3, 8, 6, 10], [0, 0, 10, 12]]))
    np.testing.assert_array_equal(np.asarray(crops[0]), arr[8:12, 0:3])
    np.testing.assert_array_equal(np.asarray(crops[1]), arr)
    assert crop_boxes(img, np.zeros((0, 4))) == []


def test_grayscale_input_gives_rgb_crops() -> None:
    img = Image.fromarray(np.arange(100, dtype=np.uint8).reshape(10, 10), mode="L")
    crop = crop_box(img, [1, 1, 2, 2])
    assert crop.mode == "RGB"
    assert np.asarray(crop)[:, :, 0].tolist() == [[11, 12], [21, 22]]


@pytest.mark.parametrize(
    ("box", "match"),
    [
        ([1, 2, 0, 4], "w, h > 0"),
        ([1, 2, 3], "x, y, w, h"),
        ([float("nan"), 2, 3, 4], "finite"),
        ([20, 20, 3, 4], "outside"),
    ],
)
def test_bad_boxes_are_vestis_errors(box: list[float], match: str) -> None:
    img, _ = _image()
    with pytest.raises(VestisError, match=match):
        crop_box(img, box)


def test_crop_boxes_names_the_bad_row() -> None:
    img, _ = _image()
    with pytest.raises(VestisError, match=r"boxes\[1\]"):
        crop_boxes(img, [[0, 0, 2, 2], [50, 50, 2, 2]])
    with pytest.raises(VestisError, match=r"\(N, 4\)"):
        crop_boxes(img, [[0, 0, 2]])
    with pytest.raises(VestisError, match="margin"):
        crop_box(img, [0, 0, 2, 2], margin=-0.1)


def test_augment_identity_flip_and_parameter_ranges() -> None:
    x = torch.rand(6, 3, 16, 16)
    assert torch.equal(CropAugment(hflip=0.0, rotate=0.0, zoom=0.0)(x), x)
    assert torch.equal(CropAugment(hflip=1.0, rotate=0.0, zoom=0.0)(x), x.flip(-1))
    torch.manual_seed(0)
    aug = CropAugment()
    y = aug(torch.rand(64, 3, 16, 16))
    assert y.shape == (64, 3, 16, 16) and torch.isfinite(y).all()
    params = aug.ops[-1]._params
    angle, scale = params["angle"], params["scale"]
    assert angle.abs().max() <= 36.0 and angle.abs().max() > 20.0  # +-10 % of a full turn, spread out
    assert scale.min() >= 0.9 and scale.max() <= 1.1 and scale.max() - scale.min() > 0.1
    with pytest.raises(VestisError, match="rotate"):
        CropAugment(rotate=-0.1)
    with pytest.raises(VestisError, match="hflip"):
        CropAugment(hflip=1.5)
