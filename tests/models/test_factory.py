from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vestis.config import ModelConfig, load_config
from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.models import AttributeModel, create_model, describe_backbone, list_backbones, list_models
from vestis.registry import BACKBONES


def test_list_models_and_backbones() -> None:
    assert list_models() == ["a1", "a1_noatt", "a2", "a3", "a4", "baseline", "csn", "csn_fixed", "datrnet", "triplet"]
    assert list_backbones(tiny=True) == [
        "datrnet_ase_tiny",
        "efficientnet_lite_tiny",
        "efficientnetv2_tiny",
        "mobilenetv3_tiny",
        "resnet18_tiny",
        "resnet50_tiny",
    ]
    assert list_backbones(tiny=False) == [
        "datrnet_ase",
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
        "efficientnetv2_m",
        "efficientnetv2_s",
        "mobilenetv3_small",
        "resnet18",
        "resnet50",
    ]
    assert list_backbones() == sorted(list_backbones(tiny=True) + list_backbones(tiny=False))


@pytest.mark.parametrize("preset", ["tiny", "default", "paper"])
def test_presets_name_registered_parts(preset: str) -> None:
    cfg = load_config(preset)
    assert cfg.model.name in list_models()
    assert cfg.model.backbone in list_backbones()


def test_create_model_from_the_tiny_preset(taxonomy: Taxonomy, expected_outputs: dict[str, int]) -> None:
    cfg = load_config("tiny")
    torch.manual_seed(0)
    model = create_model(cfg.model, taxonomy)
    assert isinstance(model, AttributeModel)
    assert model.variant == cfg.model.name and model.backbone_name == cfg.model.backbone
    assert all(br.fc.out_features == cfg.model.branch_hidden for br in model.heads.branches)
    out = model.eval()(torch.randn(1, 3, cfg.data.image_size, cfg.data.image_size))
    assert {k: v.shape[-1] for k, v in out.items()} == expected_outputs


def test_config_fields_reach_the_model(taxonomy: Taxonomy) -> None:
    cfg = ModelConfig(
        name="a4",
        backbone="resnet18_tiny",
        attention="none",
        fpn_channels=8,
        branch_hidden=6,
        branch_hidden_overrides={"occasion": 10},
        dropout=0.3,
    )
    model = create_model(cfg, taxonomy)
    assert model.feature_dim == 5 * 8
    assert [br.fc.out_features for br in model.heads.branches] == [6, 6, 10, 6]
    assert all(br.drop.p == 0.3 for br in model.heads.branches)
    assert model.attention_maps(torch.randn(2, 3, 64, 64)) == {}


def test_create_model_errors(taxonomy: Taxonomy) -> None:
    with pytest.raises(VestisError, match="unknown backbone 'resnet19'; registered: "):
        create_model(ModelConfig(name="a3", backbone="resnet19"), taxonomy)
    with pytest.raises(VestisError, match="unknown model 'a5'"):
        create_model(ModelConfig(name="a5", backbone="resnet18_tiny"), taxonomy)
    with pytest.raises(VestisError, match=r"model\.attention: unknown attention 'se'"):
        create_model(ModelConfig(backbone="resnet18_tiny", attention="se"), taxonomy)
    with pytest.raises(VestisError, match=r"model\.fpn_channels: expected a positive width"):
        create_model(ModelConfig(backbone="resnet18_tiny", fpn_channels=0), taxonomy)
    with pytest.raises(VestisError, match=r"unknown attribute\(s\) \['collar'\]"):
        create_model(ModelConfig(backbone="resnet18_tiny", branch_hidden_overrides={"collar": 4}), taxonomy)
    with pytest.raises(VestisError, match="weights file not found"):
        create_model(ModelConfig(backbone="resnet18_tiny", pretrained="missing.safetensors"), taxonomy)


def test_pretrained_backbone_weights_are_loaded(tmp_path: Path, taxonomy: Taxonomy) -> None:
    torch.manual_seed(0)
    src = BACKBONES.build("efficientnetv2_tiny")
    path = tmp_path / "backbone.pth"
    torch.save(src.state_dict(), path)
    torch.manual_seed(1)
    model = create_model(ModelConfig(name="a3", backbone="efficientnetv2_tiny", pretrained=str(path)), taxonomy)
    own = model.backbone.state_dict()
    assert "top.conv.weight" not in own  # loaded first, then the unused head was removed
    for k, v in own.items():
        assert torch.equal(v, src.state_dict()[k]), k


def test_describe_backbone() -> None:
    s = describe_backbone("efficientnetv2_m")
    assert (s.family, s.tiny, s.params) == ("efficientnetv2", False, 52_858_356)
    assert [(f.name, f.channels, f.stride) for f in s.pyramid] == [
        ("block3e", 80, 8),
        ("block5n", 176, 16),
        ("block7e", 512, 32),
    ]
    assert (s.last.name, s.last.channels) == ("top", 1280)
    assert describe_backbone("resnet18_tiny").tiny
