from __future__ import annotations

import pytest
import torch

from vestis.config import ModelConfig
from vestis.data.taxonomy import Taxonomy
from vestis.models import AttributeModel, build_attribute_model, create_model, list_backbones, list_models
from vestis.models.layers.cbam import CBAM, NoAttention
from vestis.models.necks import FPN, IdentityNeck, RetinaNetFPN
from vestis.registry import BACKBONES, MODELS

VARIANTS = ["baseline", "a1", "a1_noatt", "a2", "a3", "a4"]


def _tiny(name: str, backbone: str, taxonomy: Taxonomy, **kw: object) -> AttributeModel:
    torch.manual_seed(0)
    return create_model(ModelConfig(name=name, backbone=backbone, branch_hidden=16, **kw), taxonomy)


def _meta(name: str, backbone: str, taxonomy: Taxonomy) -> AttributeModel:
    with torch.device("meta"):
        return create_model(ModelConfig(name=name, backbone=backbone), taxonomy)


def test_the_five_paper_variants_are_registered() -> None:
    assert set(VARIANTS) <= set(list_models())
    assert all("§5.2" in MODELS.meta(v)["description"] for v in VARIANTS)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("backbone", list_backbones(tiny=True))
def test_registry_sweep_forward_backward(
    backbone: str, variant: str, taxonomy: Taxonomy, expected_outputs: dict[str, int]
) -> None:
    model = _tiny(variant, backbone, taxonomy)
    model.train()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, n) for k, n in expected_outputs.items()}
    assert all(torch.isfinite(v).all() for v in out.values())
    loss = sum((v**2).mean() for v in out.values())
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert zero == []
    assert model.forward_features(x).shape == (2, model.feature_dim)


@pytest.mark.parametrize(
    ("backbone", "widths"),
    [
        ("efficientnetv2_m", {"baseline": 1280, "a1": 768, "a2": 768, "a3": 768, "a4": 1280}),
        ("efficientnetv2_s", {"baseline": 1280, "a1": 480, "a2": 480, "a3": 480, "a4": 1280}),
        ("resnet18", {"baseline": 512, "a1": 896, "a2": 896, "a3": 896, "a4": 1280}),
        ("resnet50", {"baseline": 2048, "a1": 3584, "a2": 3584, "a3": 3584, "a4": 1280}),
        ("mobilenetv3_small", {"baseline": 576, "a1": 168, "a2": 168, "a3": 168, "a4": 1280}),
        ("efficientnet_lite0", {"baseline": 1280, "a1": 472, "a1_noatt": 472, "a3": 472, "a4": 1280}),
        ("efficientnet_lite2", {"baseline": 1280, "a1": 520, "a2": 520, "a3": 520, "a4": 1280}),
    ],
)
def test_fused_widths_on_full_size_backbones(backbone: str, widths: dict[str, int], taxonomy: Taxonomy) -> None:
    for variant, width in widths.items():
        model = _meta(variant, backbone, taxonomy)
        assert model.feature_dim == width, variant
        assert model.heads.branches[0].fc.in_features == width
        # shape check on the meta device: no arithmetic, any size
        feats = model.forward_features(torch.empty(1, 3, 64, 64, device="meta"))
        assert tuple(feats.shape) == (1, width)


def test_approach_1_readings(taxonomy: Taxonomy) -> None:
    body = _meta("a1", "efficientnet_lite0", taxonomy)
    title = _meta("a1_noatt", "efficientnet_lite0", taxonomy)
    assert isinstance(body.neck, IdentityNeck) and isinstance(title.neck, IdentityNeck)
    assert all(isinstance(a, CBAM) for a in body.attention)
    assert all(isinstance(a, NoAttention) for a in title.attention)


def test_paper_a3_and_a4_on_efficientnetv2_m(taxonomy: Taxonomy) -> None:
    a3 = _meta("a3", "efficientnetv2_m", taxonomy)
    assert [(f.name, f.channels, f.stride) for f in a3.levels] == [("p3", 80, 8), ("p4", 176, 16), ("p5", 512, 32)]
    assert a3.backbone.out_features == ("block3e", "block5n", "block7e")
    assert isinstance(a3.neck, FPN) and all(isinstance(a, CBAM) for a in a3.attention)
    assert not hasattr(a3.backbone, "top")  # the 1280 head convolution is unused and removed
    a4 = _meta("a4", "efficientnetv2_m", taxonomy)
    assert isinstance(a4.neck, RetinaNetFPN)
    assert [f.channels for f in a4.levels] == [256] * 5 and a4.feature_dim == 1280
    base = _meta("baseline", "efficientnetv2_m", taxonomy)
    assert base.backbone.out_features == ("top",) and len(base.attention) == 1
    a1 = _meta("a1", "efficientnetv2_m", taxonomy)
    assert isinstance(a1.neck, IdentityNeck) and all(isinstance(a, CBAM) for a in a1.attention)
    a2 = _meta("a2", "efficientnetv2_m", taxonomy)
    assert isinstance(a2.neck, FPN) and all(isinstance(a, NoAttention) for a in a2.attention)


def test_fpn_channels_sets_the_a4_width(taxonomy: Taxonomy) -> None:
    model = _tiny("a4", "resnet18_tiny", taxonomy, fpn_channels=8)
    assert model.feature_dim == 40


def test_forward_features_is_pooled_attended_levels(taxonomy: Taxonomy) -> None:
    model = _tiny("a3", "resnet18_tiny", taxonomy).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        levels = model.neck(model.backbone(x))
        want = torch.cat([att(lv).mean((2, 3)) for att, lv in zip(model.attention, levels.values(), strict=True)], 1)
        got = model.forward_features(x)
        logits = model(x)
    torch.testing.assert_close(got, want)
    branch = model.heads.branches[1]
    torch.testing.assert_close(logits["sleeve.length"], branch(want))


def test_attention_maps(taxonomy: Taxonomy) -> None:
    x = torch.randn(2, 3, 64, 64)
    a3 = _tiny("a3", "mobilenetv3_tiny", taxonomy).eval()
    with torch.no_grad():
        maps = a3.attention_maps(x)
    assert {k: tuple(v.shape) for k, v in maps.items()} == {"p3": (2, 8, 8), "p4": (2, 4, 4), "p5": (2, 2, 2)}
    assert all(((v > 0) & (v < 1)).all() for v in maps.values())
    base = _tiny("baseline", "mobilenetv3_tiny", taxonomy).eval()
    with torch.no_grad():
        assert {k: tuple(v.shape) for k, v in base.attention_maps(x).items()} == {"top": (2, 2, 2)}
        assert _tiny("a2", "mobilenetv3_tiny", taxonomy).attention_maps(x) == {}


def test_model_attributes(taxonomy: Taxonomy) -> None:
    model = _tiny("a1", "efficientnetv2_tiny", taxonomy)
    assert model.taxonomy is taxonomy
    assert model.variant == "a1" and model.backbone_name == "efficientnetv2_tiny"
    assert model.feature_dim == 24 + 40 + 48
    assert [f.name for f in model.levels] == ["block3a", "block5a", "block6a"]


def test_build_attribute_model_by_hand(taxonomy: Taxonomy) -> None:
    torch.manual_seed(0)
    bb = BACKBONES.build("resnet18_tiny")
    model = build_attribute_model(
        bb, taxonomy, taps=["layer3", "layer4"], neck="fpn", attention="none", branch_hidden=4, name="two-scale"
    )
    assert model.feature_dim == 24 + 32 and model.variant == "two-scale"
    assert bb.out_features == ("layer3", "layer4")
    assert model.eval()(torch.randn(1, 3, 32, 32))["category"].shape == (1, 3)


def test_construction_is_deterministic_under_seed(taxonomy: Taxonomy) -> None:
    a = _tiny("a4", "mobilenetv3_tiny", taxonomy).state_dict()
    b = _tiny("a4", "mobilenetv3_tiny", taxonomy).state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
