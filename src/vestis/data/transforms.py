"""Preprocessing and augmentation.

Two halves, split where the data crosses from the loader to the model:

* :class:`LetterboxResize` runs in DataLoader workers: decode -> resize keeping the aspect ratio ->
  pad to a square -> ``uint8`` tensor ``(3, S, S)``. Shipping ``uint8`` from workers is 4x less copying
  than float.
* :class:`BatchAugment` and :func:`normalize` run on the batch, on the training device (kornia), so the
  paper's affine augmentations cost one ``grid_sample`` per batch instead of a PIL call per image.
  :class:`RandomDegrade` (optional) imitates tiny, re-compressed catalog photos.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Literal

import kornia.augmentation as K
import numpy as np
import torch
import torch.nn.functional as F
from kornia.enhance import jpeg_codec_differentiable
from PIL import Image
from torch import Tensor, nn

from vestis.config import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, DataConfig
from vestis.errors import VestisError

__all__ = [
    "BatchAugment",
    "LetterboxResize",
    "RandomDegrade",
    "letterbox",
    "letterbox_array",
    "letterbox_batch",
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


def letterbox_batch(images: Sequence[Image.Image], size: int, pad_value: int = 255) -> np.ndarray:
    """:func:`letterbox_array` of each image, stacked: ``uint8`` ``(B, 3, size, size)``."""
    out = np.empty((len(images), 3, size, size), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = letterbox_array(img, size, pad_value)
    return out


def normalize(images: Tensor, mean: tuple[float, ...] | None, std: tuple[float, ...] | None) -> Tensor:
    """``uint8`` or [0, 1] float ``(B, 3, H, W)`` -> normalised float.

    ``None`` (a config whose normalisation is left to the weights and not resolved, see ``Config.resolved``)
    means the ImageNet statistics.
    """
    mean = IMAGENET_MEAN if mean is None else mean
    std = IMAGENET_STD if std is None else std
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def _jpeg_pillow(x: Tensor, quality: list[int]) -> Tensor:
    """libjpeg round trip of each [0, 1] image (3, H, W) at its quality, through Pillow."""
    out = torch.empty_like(x)
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    for i, q in enumerate(quality):
        buf = io.BytesIO()
        Image.fromarray(arr[i]).save(buf, format="JPEG", quality=q)
        dec = np.array(Image.open(buf).convert("RGB"))  # (H, W, 3) uint8
        out[i] = torch.from_numpy(dec).permute(2, 0, 1).to(x.device, x.dtype) / 255.0
    return out


class RandomDegrade(nn.Module):
    """Make some images look like small, re-compressed catalog photos (e.g. 60x80 px thumbnails).

    Each image is picked with probability ``p``; a picked image is scaled down by a factor drawn from
    ``scale`` (area averaging, as a camera or a thumbnailer would), back up to its size (bilinear, as the
    letterbox resize does at inference), then JPEG re-encoded at a quality drawn from ``quality``.

    Args:
        p: probability per image.
        scale: range of the down-scale factor, in (0, 1].
        quality: range of the JPEG quality, in [1, 100] (integers, both ends included).
        codec: ``pillow`` (libjpeg, exact, fastest on a CPU), ``kornia`` (differentiable approximation that runs
            on the batch's device) or ``auto`` (kornia on CUDA, Pillow otherwise).
    """

    def __init__(
        self,
        p: float,
        scale: tuple[float, float] = (0.25, 0.6),
        quality: tuple[int, int] = (30, 90),
        codec: Literal["auto", "pillow", "kornia"] = "auto",
    ) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise VestisError(f"data.augment.degrade: expected a probability in [0, 1], got {p}")
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise VestisError(
                f"data.augment.degrade_scale: expected [low, high] with 0 < low <= high <= 1, got {scale}"
            )
        if not 1 <= quality[0] <= quality[1] <= 100:
            raise VestisError(
                f"data.augment.jpeg_quality: expected [low, high] with 1 <= low <= high <= 100, got {quality}"
            )
        self.p, self.scale, self.quality, self.codec = p, tuple(scale), tuple(quality), codec

    def forward(self, x: Tensor) -> Tensor:
        """[0, 1] images (B, 3, H, W) -> the same shape, picked images degraded."""
        b, _, h, w = x.shape
        picked = (torch.rand(b, device=x.device) < self.p).nonzero().flatten().tolist()
        if not picked:
            return x
        factors = torch.empty(len(picked)).uniform_(*self.scale).tolist()
        quality = torch.randint(self.quality[0], self.quality[1] + 1, (len(picked),)).tolist()
        out = x.clone()
        for i, f in zip(picked, factors, strict=True):
            small = F.interpolate(x[i : i + 1], size=(max(1, round(h * f)), max(1, round(w * f))), mode="area")
            out[i] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]
        sub = out[picked].clamp(0, 1)  # (P, 3, H, W)
        use_kornia = self.codec == "kornia" or (self.codec == "auto" and x.device.type == "cuda")
        if use_kornia:
            q = torch.tensor(quality, device=x.device, dtype=x.dtype)
            out[picked] = jpeg_codec_differentiable(sub, q)
        else:
            out[picked] = _jpeg_pillow(sub, quality)
        return out


class BatchAugment(nn.Module):
    """The multi-scale paper's augmentations (§5.2), applied per image to a [0, 1] float batch.

    Zoom +-20 %, translation +-20 % on both axes, rotation +-10 degrees, shear +-10 % and a horizontal
    flip with p = 0.5. A shear of 10 % is a shear factor of 0.1, i.e. atan(0.1) = 5.7 degrees. Pixels
    moved in from outside repeat the border (the Keras ``nearest`` fill the paper's set-up used), which
    on white catalog backgrounds stays white.

    With ``cfg.degrade > 0``, :class:`RandomDegrade` runs first: it stands for the photo as the catalog stores
    it, the affine transforms for how the product is framed in it.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        super().__init__()
        ops: list[nn.Module] = []
        if cfg.degrade > 0:
            ops.append(RandomDegrade(cfg.degrade, cfg.degrade_scale, cfg.jpeg_quality))
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
