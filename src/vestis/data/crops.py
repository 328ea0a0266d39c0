"""Stage-2 inputs: garment crops cut from an outfit image at *predicted* boxes, and their augmentation.

The paper crops at the detector's boxes, not the ground truth, so the classifiers train on the framing they will
see in use. Boxes are COCO ``[x, y, w, h]`` in input pixels (what the detector's decoding returns); a box is
grown by ``margin`` of its size on every side for context, then clipped to the image, and its corners are
rounded outwards so a box on whole pixels returns exactly those pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import kornia.augmentation as K
import numpy as np
from numpy.typing import ArrayLike
from PIL import Image
from torch import Tensor, nn

from vestis.errors import VestisError

__all__ = ["CropAugment", "crop_box", "crop_boxes", "crop_region"]


def crop_region(box: Sequence[float], width: int, height: int, margin: float = 0.0) -> tuple[int, int, int, int]:
    """The pixel region ``(left, top, right, bottom)`` (right/bottom exclusive) a box crops.

    Args:
        box: ``[x, y, w, h]`` in pixels.
        width: image width.
        height: image height.
        margin: context to add on each side, as a fraction of the box's width (left/right) and height (top/bottom).

    Raises:
        VestisError: the box is not four finite numbers with positive size, the margin is negative, or the box lies
            outside the image.
    """
    b = np.asarray(box, dtype=np.float64)
    if b.shape != (4,) or not np.isfinite(b).all() or b[2] <= 0 or b[3] <= 0:
        raise VestisError(
            f"box: expected [x, y, w, h] with finite numbers and w, h > 0, got {np.asarray(box).tolist()}"
        )
    if not math.isfinite(margin) or margin < 0:
        raise VestisError(f"margin: expected a fraction >= 0, got {margin}")
    x, y, w, h = b
    left = max(0, math.floor(x - margin * w))
    top = max(0, math.floor(y - margin * h))
    right = min(width, math.ceil(x + w + margin * w))
    bottom = min(height, math.ceil(y + h + margin * h))
    if right <= left or bottom <= top:
        raise VestisError(f"box {b.tolist()}: lies outside the {width}x{height} image")
    return left, top, right, bottom


def crop_box(image: Image.Image, box: Sequence[float], margin: float = 0.0) -> Image.Image:
    """The crop of one ``[x, y, w, h]`` box (see :func:`crop_region`), as an RGB image."""
    return image.convert("RGB").crop(crop_region(box, image.width, image.height, margin))


def crop_boxes(image: Image.Image, boxes: ArrayLike, margin: float = 0.0) -> list[Image.Image]:
    """One crop per row of an (N, 4) ``[x, y, w, h]`` array, in order.

    Raises:
        VestisError: ``boxes`` is not (N, 4), or a box is invalid (the message names its row).
    """
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return []
    if b.ndim != 2 or b.shape[1] != 4:
        raise VestisError(f"boxes: expected an (N, 4) array of [x, y, w, h], got shape {b.shape}")
    rgb = image.convert("RGB")
    crops = []
    for i, row in enumerate(b):
        try:
            crops.append(rgb.crop(crop_region(row, rgb.width, rgb.height, margin)))
        except VestisError as e:
            raise VestisError(f"boxes[{i}]: {e}") from None
    return crops


class CropAugment(nn.Module):
    """The paper's stage-2 augmentation on a [0, 1] float batch (B, 3, H, W): flip, rotate and zoom.

    The paper (Keras layers) flips horizontally at random and rotates and zooms "by ±10 %". A Keras rotation factor
    is a fraction of a full turn, so ``rotate=0.1`` is ±36 degrees; ``zoom=0.1`` scales by a factor in [0.9, 1.1].
    Pixels moved in from outside are reflected (the Keras default fill). Each image draws its own parameters.

    Args:
        hflip: probability of a horizontal flip.
        rotate: maximum rotation, as a fraction of a full turn.
        zoom: maximum relative change of scale.
    """

    def __init__(self, hflip: float = 0.5, rotate: float = 0.1, zoom: float = 0.1) -> None:
        super().__init__()
        for name, value, top in (("hflip", hflip, 1.0), ("rotate", rotate, 0.5), ("zoom", zoom, 0.99)):
            if not math.isfinite(value) or not 0.0 <= value <= top:
                raise VestisError(f"{name}: expected a value in [0, {top}], got {value}")
        ops: list[nn.Module] = []
        if hflip > 0:
            ops.append(K.RandomHorizontalFlip(p=hflip))
        if rotate > 0 or zoom > 0:
            ops.append(
                K.RandomAffine(
                    degrees=rotate * 360.0,
                    scale=(1.0 - zoom, 1.0 + zoom) if zoom > 0 else None,
                    padding_mode="reflection",
                    p=1.0,
                )
            )
        self.ops = nn.Sequential(*ops)

    def forward(self, x: Tensor) -> Tensor:
        """The augmented batch, same shape and dtype."""
        return self.ops(x) if len(self.ops) else x
