import io

import numpy as np
import pytest
import torch
from PIL import Image

from vestis.config import AugmentConfig, DataConfig
from vestis.data.transforms import (
    BatchAugment,
    LetterboxResize,
    RandomDegrade,
    letterbox,
    normalize,
    prepare_batch,
)
from vestis.errors import VestisError


def test_letterbox_keeps_aspect_and_pads_centred():
    img = Image.new("RGB", (200, 100), (10, 20, 30))
    out = letterbox(img, 64, pad_value=255)
    assert out.size == (64, 64)
    a = np.asarray(out)
    # content 64x32 centred vertically: rows 16..47 hold the image, the rest is white padding
    assert (a[16:48] == (10, 20, 30)).all()
    assert (a[:16] == 255).all() and (a[48:] == 255).all()


def test_letterbox_tall_image():
    out = np.asarray(letterbox(Image.new("RGB", (50, 100), (0, 0, 0)), 40, pad_value=7))
    assert (out[:, 10:30] == 0).all() and (out[:, :10] == 7).all() and (out[:, 30:] == 7).all()


def test_letterbox_resize_tensor():
    t = LetterboxResize(32)(Image.new("RGB", (32, 32), (1, 2, 3)))
    assert t.shape == (3, 32, 32) and t.dtype == torch.uint8
    assert t[:, 0, 0].tolist() == [1, 2, 3]


def test_normalize_matches_formula():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    y = normalize(x, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))


def test_augment_flip_only_is_a_mirror():
    torch.manual_seed(0)
    aug = BatchAugment(AugmentConfig(zoom=0, translate=0, rotate=0, shear=0, hflip=1.0))
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(aug(x), x.flip(-1))


def test_augment_is_seeded_and_bounded():
    cfg = AugmentConfig()
    x = torch.rand(4, 3, 32, 32)
    torch.manual_seed(3)
    a = BatchAugment(cfg)(x)
    torch.manual_seed(3)
    b = BatchAugment(cfg)(x)
    assert torch.equal(a, b) and a.shape == x.shape
    assert not torch.allclose(a, x)
    assert a.min() >= -1e-5 and a.max() <= 1 + 1e-5  # border padding: no values outside the input range


@pytest.mark.parametrize("enabled", [True, False])
def test_prepare_batch(enabled):
    cfg = DataConfig(image_size=16)
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    aug = BatchAugment(cfg.augment) if enabled else None
    y = prepare_batch(x, cfg, aug)
    assert y.dtype == torch.float32 and y.shape == (2, 3, 16, 16)
    if not enabled:
        assert torch.allclose(y, normalize(x, cfg.mean, cfg.std))


def _smooth_batch(b: int = 3, size: int = 48) -> torch.Tensor:
    # smooth content (upsampled noise): JPEG artefacts and blur are measurable on it
    g = torch.Generator().manual_seed(0)
    return torch.nn.functional.interpolate(torch.rand(b, 3, 8, 8, generator=g), size=(size, size), mode="bilinear")


def test_degrade_p0_is_identity_and_p1_changes_every_image():
    x = _smooth_batch()
    assert torch.equal(RandomDegrade(0.0)(x), x)
    torch.manual_seed(0)
    y = RandomDegrade(1.0)(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert all(not torch.allclose(y[i], x[i], atol=1e-3) for i in range(len(x)))
    assert y.min() >= 0 and y.max() <= 1


def test_degrade_is_deterministic_for_a_seed():
    x = _smooth_batch(4)
    torch.manual_seed(5)
    a = RandomDegrade(0.5, (0.3, 0.7), (20, 80))(x)
    torch.manual_seed(5)
    b = RandomDegrade(0.5, (0.3, 0.7), (20, 80))(x)
    torch.manual_seed(6)
    c = RandomDegrade(0.5, (0.3, 0.7), (20, 80))(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_degrade_jpeg_matches_pillow_and_quality_orders_the_error():
    x = _smooth_batch(1)
    # scale 1: no resize, so the output is exactly libjpeg's round trip at quality 40
    y = RandomDegrade(1.0, (1.0, 1.0), (40, 40), codec="pillow")(x)
    arr = (x[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=40)
    ref = torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1).float() / 255
    assert torch.equal(y[0], ref)
    err = {q: (RandomDegrade(1.0, (1.0, 1.0), (q, q))(x) - x).abs().mean().item() for q in (5, 50, 95)}
    assert err[5] > err[50] > err[95] > 0
    # the differentiable codec (used on CUDA) approximates the same round trip
    k = RandomDegrade(1.0, (1.0, 1.0), (40, 40), codec="kornia")(x)
    assert (k - y).abs().mean() < 0.5 * (y - x).abs().mean()


def test_degrade_downscale_blurs_and_keeps_flat_images_flat():
    flat = torch.full((1, 3, 40, 40), 0.5)
    out = RandomDegrade(1.0, (0.25, 0.25), (95, 95))(flat)
    assert (out - flat).abs().max() <= 2 / 255  # area down, bilinear up and JPEG keep a flat grey
    # a one-pixel checkerboard averages out to grey at a quarter of the size
    board = ((torch.arange(40).view(-1, 1) + torch.arange(40)) % 2).float().expand(1, 3, 40, 40)
    out = RandomDegrade(1.0, (0.25, 0.25), (95, 95))(board)
    assert out.std() < 0.05 * board.std()


def test_degrade_refuses_bad_ranges():
    with pytest.raises(VestisError, match=r"data\.augment\.degrade:"):
        RandomDegrade(1.5)
    with pytest.raises(VestisError, match="degrade_scale"):
        RandomDegrade(0.5, (0.0, 0.5))
    with pytest.raises(VestisError, match="jpeg_quality"):
        RandomDegrade(0.5, (0.5, 0.6), (0, 90))
    with pytest.raises(VestisError, match="degrade_scale"):
        BatchAugment(AugmentConfig(degrade=0.5, degrade_scale=(0.8, 0.4)))


def test_batch_augment_runs_degrade_first():
    cfg = AugmentConfig(zoom=0, translate=0, rotate=0, shear=0, hflip=1.0, degrade=1.0, jpeg_quality=(60, 60))
    aug = BatchAugment(cfg)
    assert isinstance(aug.ops[0], RandomDegrade)
    x = _smooth_batch(2)
    torch.manual_seed(1)
    y = aug(x)
    torch.manual_seed(1)
    z = RandomDegrade(1.0, cfg.degrade_scale, (60, 60))(x).flip(-1)
    assert torch.equal(y, z)
