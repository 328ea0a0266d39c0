from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vestis.errors import VestisError
from vestis.models.backbones.base import FeatureInfo
from vestis.models.necks import FPN, IdentityNeck, RetinaNetFPN, level_name
from vestis.registry import NECKS

C3 = FeatureInfo("c3", 2, 8)
C4 = FeatureInfo("c4", 3, 16)
C5 = FeatureInfo("c5", 4, 32)


def _inputs(batch: int = 1, size: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "c3": torch.randn(batch, 2, size, size, generator=g),
        "c4": torch.randn(batch, 3, size // 2, size // 2, generator=g),
        "c5": torch.randn(batch, 4, size // 4, size // 4, generator=g),
    }


def _identity_(conv: torch.nn.Conv2d) -> None:
    with torch.no_grad():
        conv.weight.zero_()
        c = conv.kernel_size[0] // 2
        for i in range(conv.out_channels):
            conv.weight[i, i, c, c] = 1.0
        conv.bias.zero_()


def test_level_names() -> None:
    assert [level_name(s) for s in (8, 16, 32, 64, 128)] == ["p3", "p4", "p5", "p6", "p7"]
    with pytest.raises(VestisError, match="power-of-two"):
        level_name(12)


def test_fpn_keeps_per_level_widths() -> None:
    fpn = FPN([C3, C4, C5])
    assert fpn.feature_info == [FeatureInfo("p3", 2, 8), FeatureInfo("p4", 3, 16), FeatureInfo("p5", 4, 32)]
    out = fpn(_inputs())
    assert list(out) == ["p3", "p4", "p5"]
    assert [tuple(v.shape) for v in out.values()] == [(1, 2, 8, 8), (1, 3, 4, 4), (1, 4, 2, 2)]
    # the paper's EfficientNetV2-M taps: output widths equal the tapped widths, 768 in total
    paper = FPN([FeatureInfo("block3e", 80, 8), FeatureInfo("block5n", 176, 16), FeatureInfo("block7e", 512, 32)])
    assert [f.channels for f in paper.feature_info] == [80, 176, 512]


def test_fpn_top_down_with_hand_set_weights() -> None:
    # identity laterals and smoothing, known projections between levels:
    # P5 = C5, P4 = C4 + up(T4 C5), P3 = C3 + up(T3 P4)
    fpn = FPN([C3, C4, C5])
    for conv in [*fpn.lateral, *fpn.smooth]:
        _identity_(conv)
    t4 = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 10  # C5 (4) -> C4 (3)
    t3 = torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, 1.0]])  # C4 (3) -> C3 (2)
    with torch.no_grad():
        fpn.topdown[1].weight.copy_(t4[:, :, None, None])
        fpn.topdown[1].bias.zero_()
        fpn.topdown[0].weight.copy_(t3[:, :, None, None])
        fpn.topdown[0].bias.fill_(0.25)
    x = _inputs()

    def up2(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)

    p5 = x["c5"]
    p4 = x["c4"] + up2(torch.einsum("oc,bchw->bohw", t4, p5))
    p3 = x["c3"] + up2(torch.einsum("oc,bchw->bohw", t3, p4) + 0.25)
    out = fpn(x)
    torch.testing.assert_close(out["p5"], p5)
    torch.testing.assert_close(out["p4"], p4)
    torch.testing.assert_close(out["p3"], p3)


def test_fpn_information_flows_top_down_only() -> None:
    torch.manual_seed(0)
    fpn = FPN([C3, C4, C5])
    x = _inputs()
    base = fpn(x)
    deep = dict(x, c5=x["c5"] + 1.0)
    changed = fpn(deep)
    assert all(not torch.allclose(changed[k], base[k]) for k in ("p3", "p4", "p5"))
    shallow = dict(x, c3=x["c3"] + 1.0)
    changed = fpn(shallow)
    assert not torch.allclose(changed["p3"], base["p3"])
    assert torch.equal(changed["p4"], base["p4"]) and torch.equal(changed["p5"], base["p5"])


def test_fpn_upsamples_to_odd_sizes() -> None:
    # 380 px on EfficientNetV2: 48 -> 24 -> 12, but 70 px gives 9 -> 5 -> 3
    fpn = FPN([C3, C4, C5])
    x = {"c3": torch.randn(1, 2, 9, 9), "c4": torch.randn(1, 3, 5, 5), "c5": torch.randn(1, 4, 3, 3)}
    out = fpn(x)
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(9, 9), (5, 5), (3, 3)]


def test_fpn_rejects_unordered_levels() -> None:
    with pytest.raises(VestisError, match="strides must increase"):
        FPN([C4, C3])
    with pytest.raises(VestisError, match="at least 2"):
        FPN([C3])


def test_retinanet_fpn_levels_and_extra_layers() -> None:
    torch.manual_seed(0)
    neck = RetinaNetFPN([C3, C4, C5], out_channels=6)
    assert [(f.name, f.channels, f.stride) for f in neck.feature_info] == [
        ("p3", 6, 8),
        ("p4", 6, 16),
        ("p5", 6, 32),
        ("p6", 6, 64),
        ("p7", 6, 128),
    ]
    x = _inputs(batch=2, size=16)
    out = neck(x)
    assert [tuple(v.shape) for v in out.values()] == [
        (2, 6, 16, 16),
        (2, 6, 8, 8),
        (2, 6, 4, 4),
        (2, 6, 2, 2),
        (2, 6, 1, 1),
    ]
    # P6 = conv3x3/2(C5); P7 = conv3x3/2(relu(P6)); P5 = smooth(lateral(C5)) (nothing above it)
    p6 = F.conv2d(x["c5"], neck.p6.weight, neck.p6.bias, stride=2, padding=1)
    p7 = F.conv2d(p6.clamp(min=0), neck.p7.weight, neck.p7.bias, stride=2, padding=1)
    p5 = F.conv2d(
        F.conv2d(x["c5"], neck.lateral[2].weight, neck.lateral[2].bias),
        neck.smooth[2].weight,
        neck.smooth[2].bias,
        padding=1,
    )
    torch.testing.assert_close(out["p6"], p6)
    torch.testing.assert_close(out["p7"], p7)
    torch.testing.assert_close(out["p5"], p5)
    assert sum(f.channels for f in RetinaNetFPN([C3, C4, C5]).feature_info) == 1280  # the paper's 5 x 256


def test_identity_neck_and_registry() -> None:
    assert {"fpn", "retinanet_fpn", "none"} <= set(NECKS)
    neck = NECKS.build("none", in_features=[C3, C5])
    assert isinstance(neck, IdentityNeck)
    x = _inputs()
    out = neck(x)
    assert list(out) == ["c3", "c5"] and out["c3"] is x["c3"]
    assert isinstance(NECKS.build("retinanet_fpn", in_features=[C3, C4, C5], out_channels=8), RetinaNetFPN)
