"""Preprocessing and augmentation.

Two halves, split where the data crosses from the loader to the model:

* :class:`LetterboxResize` runs in DataLoader workers: decode -> resize keeping the aspect ratio ->
  pad to a square -> ``uint8`` tensor ``(3, S, S)``. Shipping ``uint8`` from workers is 4x less copying
  than float.
* :class:`BatchAugment` and :func:`normalize` run on the batch, on the training device (kornia), so the
  paper's affine augmentations cost one ``grid_sample`` per batch instead of a PIL call per image.
"""

from __future__ import annotations

import math

import kornia.augmentation as K
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from vestis.config import AugmentConfig, DataConfig

__all__ = [
    "BatchAugment",
    "LetterboxResize",
    "letterbox",
    "letterbox_array",
    "letterbox_box",
    "normalize",
    "prepare_batch",
]


def letterbox_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """Where :func:`letterbox` puts a ``width x height`` image in the square: ``(x0, y0, w, h)``."""
    scale = size / max(width, height)
    nw, nh = max(1, round(width * scale)), max(1, round(height * scale))
    return (size - nw) // 2, (size - nh) // 2, nw, nh


def letterbox(img: Image.Image, size: int, pad_value: int = 255) -> Image.Image:
    """Resize so the longer side is ``size`` keeping the aspect ratio, then centre-pad to ``size x size``."""
    x0, y0, nw, nh = letterbox_box(*img.size, size)
    if (nw, nh) != img.size:
        img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
    if nw == nh == size:
        return img
    canvas = Image.new("RGB", (size, size), (pad_value,) * 3)
    canvas.paste(img, (x0, y0))
    return canvas


def letterbox_array(img: Image.Image, size: int, pad_value: int = 255) -> np.ndarray:
    """PIL image -> letterboxed ``uint8`` array ``(3, size, size)``, the model's input layout."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    arr = np.asarray(letterbox(rgb, size, pad_value), dtype=np.uint8)  # (S, S, 3)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))  # (3, S, S)


class LetterboxResize:
    """PIL RGB image -> ``uint8`` tensor ``(3, size, size)`` (picklable, for DataLoader workers)."""

    def __init__(self, size: int, pad_value: int = 255) -> None:
        self.size = size
        self.pad_value = pad_value

    def __call__(self, img: Image.Image) -> Tensor:
        return torch.from_numpy(letterbox_array(img, self.size, self.pad_value))


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """``uint8`` or [0, 1] float ``(B, 3, H, W)`` -> normalised float."""
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


class BatchAugment(nn.Module):
    """The multi-scale paper's augmentations (§5.2), applied per image to a [0, 1] float batch.

    Zoom +-20 %, translation +-20 % on both axes, rotation +-10 degrees, shear +-10 % and a horizontal
    flip with p = 0.5. A shear of 10 % is a shear factor of 0.1, i.e. atan(0.1) = 5.7 degrees. Pixels
    moved in from outside repeat the border (the Keras ``nearest`` fill the paper's set-up used), which
    on white catalog backgrounds stays white.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        super().__init__()
        ops: list[nn.Module] = []
        if cfg.hflip > 0:
            ops.append(K.RandomHorizontalFlip(p=cfg.hflip))
        if cfg.zoom or cfg.translate or cfg.rotate or cfg.shear:
            shear_deg = math.degrees(math.atan(cfg.shear))
            ops.append(
                K.RandomAffine(
                    degrees=cfg.rotate,
                    translate=(cfg.translate, cfg.translate) if cfg.translate else None,
                    scale=(1 - cfg.zoom, 1 + cfg.zoom) if cfg.zoom else None,
                    shear=(-shear_deg, shear_deg, -shear_deg, shear_deg) if cfg.shear else None,
                    padding_mode="border",
                    p=1.0,
                )
            )
        self.ops = nn.Sequential(*ops)

    def forward(self, x: Tensor) -> Tensor:
        return self.ops(x) if len(self.ops) else x


def prepare_batch(
    images: Tensor, cfg: DataConfig, augment: BatchAugment | None = None, *, channels_last: bool = False
) -> Tensor:
    """Loader output (``uint8`` ``(B, 3, S, S)`` on the device) -> the model's normalised float input."""
    x = images.float().div_(255.0)
    if augment is not None:
        x = augment(x)
    x = normalize(x, cfg.mean, cfg.std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
