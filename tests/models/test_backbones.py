from __future__ import annotations

import math

import pytest
import torch

from vestis.errors import VestisError
from vestis.models import list_backbones
from vestis.models.backbones import Backbone, EfficientNetV2, FeatureInfo, FusedMBConv, MBConv
from vestis.registry import BACKBONES

TINY = list_backbones(tiny=True)
FULL = list_backbones(tiny=False)


def _meta(name: str) -> Backbone:
    # full-size backbones are checked on the meta device: shapes without memory or arithmetic
    with torch.device("meta"):
        return BACKBONES.build(name)


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registered_names() -> None:
    assert {"resnet18_tiny", "resnet50_tiny", "efficientnetv2_tiny", "mobilenetv3_tiny"} <= set(TINY)
    assert {"resnet18", "resnet50", "efficientnetv2_s", "efficientnetv2_m", "mobilenetv3_small"} <= set(FULL)
    assert not set(TINY) & set(FULL)
    assert sorted(TINY + FULL) == list_backbones()


# Published counts with the 1000-class classifier, minus that classifier:
# ResNet: fc 2048*1000+1000 (512*1000+1000 for -18); EfficientNetV2: 1280*1000+1000;
# MobileNetV3-Small: Linear(576, 1024) + Linear(1024, 1000) = 1,615,848. EfficientNet-Lite: the totals of the
# TensorFlow reference's ImageNet files (4,652,008 / 5,416,680 / 6,092,072), classifier 1280*1000+1000.
@pytest.mark.parametrize(
    ("name", "published", "classifier"),
    [
        ("resnet18", 11_689_512, 513_000),
        ("resnet50", 25_557_032, 2_049_000),
        ("efficientnetv2_s", 21_458_488, 1_281_000),
        ("efficientnetv2_m", 54_139_356, 1_281_000),
        ("mobilenetv3_small", 2_542_856, 1_615_848),
        ("efficientnet_lite0", 4_652_008, 1_281_000),
        ("efficientnet_lite1", 5_416_680, 1_281_000),
        ("efficientnet_lite2", 6_092_072, 1_281_000),
    ],
)
def test_parameter_counts_match_published_architectures(name: str, published: int, classifier: int) -> None:
    assert _params(_meta(name)) == published - classifier


@pytest.mark.parametrize("name", FULL)
def test_feature_info_matches_outputs_full_size(name: str) -> None:
    bb = _meta(name)
    bb.select(bb.feature_names)
    out = bb(torch.empty(1, 3, 70, 70, device="meta"))
    assert list(out) == bb.feature_names
    for info in bb.feature_info:
        # every stride-2 layer pads k // 2, so a side of 70 becomes ceil(70 / stride)
        assert tuple(out[info.name].shape) == (
            1,
            info.channels,
            math.ceil(70 / info.stride),
            math.ceil(70 / info.stride),
        )


@pytest.mark.parametrize("name", TINY)
def test_feature_info_matches_outputs_tiny(name: str) -> None:
    torch.manual_seed(0)
    bb = BACKBONES.build(name).eval()
    bb.select(bb.feature_names)
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 70, 70))
    for info in bb.feature_info:
        assert tuple(out[info.name].shape) == (
            1,
            info.channels,
            math.ceil(70 / info.stride),
            math.ceil(70 / info.stride),
        )
        assert torch.isfinite(out[info.name]).all()


def test_efficientnetv2_m_paper_taps_at_380px() -> None:
    bb = _meta("efficientnetv2_m")
    assert bb.pyramid_features() == ["block3e", "block5n", "block7e"]
    bb.select(["block3e", "block5n", "block7e", "top"])
    out = bb(torch.empty(1, 3, 380, 380, device="meta"))
    shapes = {k: tuple(v.shape[1:]) for k, v in out.items()}
    # the paper's 48x48x80, 24x24x176, 12x12x512 and the 12x12x1280 head (channels first here)
    assert shapes == {
        "block3e": (80, 48, 48),
        "block5n": (176, 24, 24),
        "block7e": (512, 12, 12),
        "top": (1280, 12, 12),
    }


def test_efficientnetv2_stage_names_and_blocks() -> None:
    m, s = _meta("efficientnetv2_m"), _meta("efficientnetv2_s")
    assert m.feature_names == [
        "stem",
        "block1c",
        "block2e",
        "block3e",
        "block4g",
        "block5n",
        "block6r",
        "block7e",
        "top",
    ]
    assert s.feature_names == ["stem", "block1b", "block2d", "block3d", "block4f", "block5i", "block6o", "top"]
    assert s.pyramid_features() == ["block3d", "block5i", "block6o"]
    assert isinstance(s, EfficientNetV2)
    # fused-MBConv in the first three stages, MBConv with squeeze-excitation after
    kinds = [type(stage[0]) for stage in s.stages]
    assert kinds == [FusedMBConv] * 3 + [MBConv] * 3
    first_mb = s.stages[3][0]
    assert first_mb.se is not None and first_mb.se.fc1.out_channels == 16  # 0.25 x 64 input channels
    assert first_mb.dw.conv.groups == 256  # depthwise on 64 x 4


def test_pyramid_taps_of_other_families() -> None:
    assert _meta("resnet50").pyramid_features() == ["layer2", "layer3", "layer4"]
    assert _meta("mobilenetv3_small").pyramid_features() == ["stage1", "stage3", "stage4"]
    assert [f.channels for f in _meta("mobilenetv3_small").feature_info] == [16, 16, 24, 40, 48, 96, 576]
    assert _meta("resnet18").last_feature == "layer4"


def test_select_removes_unused_stages() -> None:
    torch.manual_seed(0)
    bb = BACKBONES.build("efficientnetv2_tiny")
    full = _params(bb)
    bb.select(bb.pyramid_features())
    assert bb.out_features == ("block3a", "block5a", "block6a")
    assert bb.pruned_prefixes == ("top.",)
    assert not any(k.startswith("top.") for k in bb.state_dict())
    assert _params(bb) == full - _params(BACKBONES.build("efficientnetv2_tiny").top)
    out = bb(torch.randn(2, 3, 64, 64))
    assert list(out) == ["block3a", "block5a", "block6a"]
    # order in stage order whatever the request order; shallower selections prune more
    bb.select(["block3a", "stem"])
    assert bb.out_features == ("stem", "block3a")
    assert len(bb.stages) == 3
    with pytest.raises(VestisError, match="removed by an earlier select"):
        bb.select(["block6a"])


def test_resnet_select_prunes_layers_and_keeps_torchvision_names() -> None:
    bb = BACKBONES.build("resnet18_tiny", out_features=["layer2"])
    assert bb.pruned_prefixes == ("layer4.", "layer3.")
    keys = list(bb.state_dict())
    assert keys[:2] == ["conv1.weight", "bn1.weight"]
    assert "layer2.0.downsample.0.weight" in keys and not any(k.startswith("layer3") for k in keys)


def test_select_errors() -> None:
    bb = BACKBONES.build("resnet18_tiny")
    with pytest.raises(VestisError, match=r"unknown feature 'layer9'; available: \['stem', 'layer1'"):
        bb.select(["layer9"])
    with pytest.raises(VestisError, match="out_features is empty"):
        bb.select([])
    with pytest.raises(VestisError, match="no stage at stride 64"):
        bb.pyramid_features((8, 64))


def test_full_architecture_rebuilds_removed_stages_on_meta() -> None:
    bb = BACKBONES.build("mobilenetv3_tiny", out_features=["stage1"])
    full = bb.full_architecture()
    assert full.arch == "mobilenetv3_tiny" and full.out_features == ("top",)
    assert next(full.parameters()).device.type == "meta"
    assert set(bb.state_dict()) < set(full.state_dict())


def test_construction_is_deterministic_under_seed() -> None:
    states = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        states.append(BACKBONES.build("efficientnetv2_tiny").state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not torch.equal(states[0]["stem.conv.weight"], states[2]["stem.conv.weight"])


def test_standard_initialisation() -> None:
    torch.manual_seed(0)
    bb = BACKBONES.build("resnet50_tiny")
    assert torch.equal(bb.bn1.weight, torch.ones(8)) and torch.equal(bb.bn1.bias, torch.zeros(8))
    # Kaiming normal, fan-out mode: std = sqrt(2 / (out_channels * k * k)) = sqrt(2 / (8 * 49))
    std = bb.conv1.weight.std().item()
    assert std == pytest.approx(math.sqrt(2 / (8 * 49)), rel=0.1)


def test_feature_info_is_a_value() -> None:
    assert FeatureInfo("p3", 80, 8) == FeatureInfo("p3", 80, 8)
    with pytest.raises(AttributeError):
        FeatureInfo("p3", 80, 8).channels = 1  # type: ignore[misc]
