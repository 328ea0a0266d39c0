"""CenterNet assemblies: every registered detector's shapes and gradients, and a tiny one learns a batch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vestis.errors import VestisError
from vestis.models.detection import DETECTORS, HEATMAP_BIAS, CenterNet, box_iou, build_detector


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[4.0, 6, 28, 40], [36, 10, 60, 30]]), "labels": torch.tensor([0, 1])},
        {"boxes": torch.tensor([[10.0, 30, 50, 60]]), "labels": torch.tensor([2])},
    ]


@pytest.mark.parametrize("name", DETECTORS.names(tiny=True))
@pytest.mark.parametrize("stride", [4, 8])
def test_tiny_detectors_forward_backward(name: str, stride: int) -> None:
    torch.manual_seed(0)
    model = build_detector(name, num_classes=3, output_stride=stride)
    assert model.stride == stride
    x = torch.randn(2, 3, 64, 64)
    maps = model.forward_maps(x)
    assert maps["heatmap"].shape == (2, 3, 64 // stride, 64 // stride)
    assert maps["size"].shape == maps["offset"].shape == (2, 2, 64 // stride, 64 // stride)
    model.train()
    losses = model(x, _targets())
    assert set(losses) == {"heatmap", "size", "offset"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    model.eval()
    with torch.no_grad():
        dets = model(x)
    assert len(dets) == 2
    assert dets[0]["boxes"].shape == (100, 4) and dets[0]["scores"].shape == (100,)
    assert dets[0]["labels"].dtype == torch.long and int(dets[0]["labels"].max()) < 3
    assert bool((dets[0]["boxes"] >= 0).all() and (dets[0]["boxes"] <= 64).all())
    assert bool((dets[0]["scores"][:-1] >= dets[0]["scores"][1:]).all())


def test_every_registered_detector_builds_on_a_tiny_backbone() -> None:
    for name in DETECTORS.names():
        model = build_detector(name, backbone="resnet18_tiny", num_classes=4).eval()
        with torch.no_grad():
            assert model.forward_maps(torch.randn(1, 3, 32, 32))["heatmap"].shape == (1, 4, 8, 8)


def test_heatmap_bias_prior() -> None:
    model = build_detector("centernet_tiny")
    assert abs(HEATMAP_BIAS + 2.197) < 1e-3
    assert torch.allclose(model.heatmap.out.bias, torch.full((4,), HEATMAP_BIAS))
    assert torch.sigmoid(torch.tensor(HEATMAP_BIAS)).item() == pytest.approx(0.1)
    assert model.init_kwargs["backbone"] == "mobilenetv3_tiny"


def test_bad_arguments_are_vestis_errors() -> None:
    with pytest.raises(VestisError, match="output_stride"):
        CenterNet("mobilenetv3_tiny", output_stride=16)
    with pytest.raises(VestisError, match="num_classes"):
        CenterNet("mobilenetv3_tiny", num_classes=0)
    model = build_detector("centernet_tiny", num_classes=3).train()
    with pytest.raises(VestisError, match="needs targets"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(VestisError, match="2 images but 1 targets"):
        model(torch.randn(2, 3, 32, 32), _targets()[:1])
    with pytest.raises(VestisError, match="unknown detector"):
        build_detector("nope")


def test_thirty_steps_fit_a_synthetic_batch() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    targets = [
        {"boxes": torch.tensor([[4.0, 6, 28, 40]]), "labels": torch.tensor([0])},
        {"boxes": torch.tensor([[36.0, 10, 60, 30]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[10.0, 30, 50, 60]]), "labels": torch.tensor([2])},
    ]
    images = torch.rand(3, 3, 64, 64, generator=g) * 0.2
    for i, t in enumerate(targets):  # each box a flat rectangle of its class's colour on dim noise
        x0, y0, x1, y1 = t["boxes"][0].long().tolist()
        images[i, int(t["labels"][0]), y0:y1, x0:x1] = 1.0
    model = build_detector("centernet_tiny", num_classes=3).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    first = last = math.nan
    for step in range(30):
        total = sum(model(images, targets).values())
        first = total.item() if step == 0 else first
        last = total.item()
        opt.zero_grad()
        total.backward()
        opt.step()
    assert last < 0.25 * first
    # 30 momentum updates leave the running BatchNorm statistics behind the weights: recompute them on the batch
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.forward_maps(images)
    model.eval()
    with torch.no_grad():
        dets = model(images)
    for det, t in zip(dets, targets, strict=True):
        assert box_iou(det["boxes"][:1], t["boxes"]).item() > 0.5  # the top detection
        assert det["labels"][0] == t["labels"][0]
