"""CenterNet's targets and losses against hand cases and naive element-wise references."""

from __future__ import annotations

import math

import pytest
import torch

from vestis.errors import VestisError
from vestis.losses import CenterNetLoss
from vestis.losses.detection import centernet_focal_loss, encode_centernet_targets, gaussian_radius, masked_l1


def test_gaussian_radius_hand_value() -> None:
    # 10 x 10 at IoU 0.7: the third case's root (-28 + sqrt(28^2 + 4 * 2.8 * 30)) / 2 is the smallest
    assert gaussian_radius(10, 10, 0.7) == pytest.approx((-28 + math.sqrt(784 + 336)) / 2)
    assert gaussian_radius(10, 10, 0.7) == pytest.approx(2.7332, abs=1e-4)
    assert gaussian_radius(40, 20) > gaussian_radius(20, 10) > 0


def test_encode_targets_hand_case() -> None:
    # a 40 x 40 px box centred at (25, 30) px; stride 4 -> centre (6.25, 7.5) cells, size (10, 10) cells,
    # radius int(2.733) = 2, sigma = 5 / 6
    t = [{"boxes": torch.tensor([[5.0, 10, 45, 50]]), "labels": torch.tensor([2])}]
    enc = encode_centernet_targets(t, num_classes=3, output_size=(12, 12), stride=4)
    heat = enc["heatmap"]
    assert heat.shape == (1, 3, 12, 12)
    assert heat[0, 2, 7, 6] == 1.0 and int(heat[0, 2].eq(1).sum()) == 1
    assert heat[0, :2].abs().sum() == 0  # other classes untouched
    two_sigma2 = 2 * (5 / 6) ** 2
    assert heat[0, 2, 7, 7].item() == pytest.approx(math.exp(-1 / two_sigma2), rel=1e-5)
    assert heat[0, 2, 9, 8].item() == pytest.approx(math.exp(-8 / two_sigma2), rel=1e-5)
    assert heat[0, 2, 7, 9] == 0.0 and heat[0, 2, 4, 6] == 0.0  # 3 cells away: outside the radius
    assert int((heat[0, 2] > 0).sum()) == 25
    assert enc["index"].tolist() == [[7 * 12 + 6]]
    assert enc["mask"].tolist() == [[1.0]]
    assert torch.allclose(enc["size"], torch.tensor([[[10.0, 10.0]]]))
    assert torch.allclose(enc["offset"], torch.tensor([[[0.25, 0.5]]]))


def test_encode_targets_overlap_max_skips_and_errors() -> None:
    t = [
        {
            "boxes": torch.tensor([[0.0, 0, 40, 40], [4, 4, 36, 36], [10, 10, 10, 20]]),
            "labels": torch.tensor([0, 0, 0]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    enc = encode_centernet_targets(t, 1, (16, 16), 4)
    assert enc["mask"].tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]  # the zero-width box is skipped
    assert enc["heatmap"].max() == 1.0 and enc["heatmap"][1].sum() == 0
    with pytest.raises(VestisError, match="labels outside"):
        encode_centernet_targets([{"boxes": torch.ones(1, 4), "labels": torch.tensor([3])}], 2, (4, 4), 4)
    with pytest.raises(VestisError, match="1 boxes but 2 labels"):
        encode_centernet_targets([{"boxes": torch.ones(1, 4), "labels": torch.tensor([0, 1])}], 2, (4, 4), 4)


def _naive_focal(logits: torch.Tensor, target: torch.Tensor) -> float:
    total, n = 0.0, 0
    for x, y in zip(logits.flatten().tolist(), target.flatten().tolist(), strict=True):
        p = 1 / (1 + math.exp(-x))
        if y == 1:
            total += (1 - p) ** 2 * math.log(p)
            n += 1
        else:
            total += (1 - y) ** 4 * p**2 * math.log(1 - p)
    return -total / max(n, 1)


def test_focal_loss_matches_naive_formula() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 5, generator=g).double() * 2
    target = torch.rand(2, 3, 5, 5, generator=g).double() * 0.9
    target[0, 1, 2, 2] = target[1, 0, 4, 0] = 1.0
    assert centernet_focal_loss(logits, target).item() == pytest.approx(_naive_focal(logits, target), rel=1e-9)
    no_object = target.clamp(max=0.5)
    assert centernet_focal_loss(logits, no_object).item() == pytest.approx(_naive_focal(logits, no_object), rel=1e-9)
    # extreme logits stay finite (log-sigmoid, not log of a rounded probability)
    assert torch.isfinite(centernet_focal_loss(torch.full((1, 1, 2, 2), 200.0), torch.zeros(1, 1, 2, 2)))


def test_masked_l1_only_at_centres() -> None:
    pred = torch.zeros(1, 2, 2, 3)
    pred[0, :, 1, 2] = torch.tensor([3.0, 5.0])  # cell 5
    pred[0, :, 0, 0] = torch.tensor([100.0, 100.0])  # not a centre: must not count
    index = torch.tensor([[5, 0]])
    mask = torch.tensor([[1.0, 0.0]])
    target = torch.tensor([[[1.0, 1.0], [7.0, 7.0]]])
    assert masked_l1(pred, index, mask, target).item() == pytest.approx((2 + 4) / 2)
    assert masked_l1(pred, index, torch.zeros(1, 2), target).item() == 0.0


def test_loss_dict_weights() -> None:
    g = torch.Generator().manual_seed(1)
    outputs = {
        "heatmap": torch.randn(1, 2, 4, 4, generator=g),
        "size": torch.randn(1, 2, 4, 4, generator=g),
        "offset": torch.randn(1, 2, 4, 4, generator=g),
    }
    targets = encode_centernet_targets(
        [{"boxes": torch.tensor([[2.0, 2, 10, 12]]), "labels": torch.tensor([1])}], 2, (4, 4), 4
    )
    losses = CenterNetLoss()(outputs, targets)
    assert set(losses) == {"heatmap", "size", "offset"}
    idx, mask = targets["index"], targets["mask"]
    assert losses["size"].item() == pytest.approx(0.1 * masked_l1(outputs["size"], idx, mask, targets["size"]).item())
    assert losses["offset"].item() == pytest.approx(masked_l1(outputs["offset"], idx, mask, targets["offset"]).item())
    assert losses["heatmap"].item() == pytest.approx(
        centernet_focal_loss(outputs["heatmap"], targets["heatmap"]).item()
    )
