import numpy as np
import pytest
import torch
from PIL import Image

from vestis.config import AugmentConfig, DataConfig
from vestis.data.transforms import BatchAugment, LetterboxResize, letterbox, normalize, prepare_batch


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
