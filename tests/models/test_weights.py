"""Weight loading: the renamings are checked against an inverse written here from the naming rules of
torchvision and timm, plus key names and shapes of their published checkpoints."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vestis.config import ModelConfig
from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.models import create_model, load_backbone_weights, read_state_dict
from vestis.models.backbones import Backbone
from vestis.models.weights import key_map
from vestis.registry import BACKBONES

_BLOCK = re.compile(r"^stages\.(\d+)\.(\d+)\.(fused|expand|dw|se|project)\.(.+)$")
_ORDER = ("fused", "expand", "dw", "se", "project")
_CONV_BN = {"conv": "0", "bn": "1"}


def _build(name: str, seed: int, **kw: object) -> Backbone:
    torch.manual_seed(seed)
    return BACKBONES.build(name, **kw)


def _blocks(state: dict[str, torch.Tensor]) -> dict[tuple[int, int], list[str]]:
    """(stage, block) -> the parts present, in forward order."""
    parts: dict[tuple[int, int], set[str]] = {}
    for k in state:
        m = _BLOCK.match(k)
        if m:
            parts.setdefault((int(m[1]), int(m[2])), set()).add(m[3])
    return {b: [p for p in _ORDER if p in ps] for b, ps in sorted(parts.items())}


def _split(rest: str) -> tuple[str, str]:
    module, _, leaf = rest.partition(".")
    return module, leaf


def to_torchvision(state: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """Our names -> torchvision ``efficientnet_v2_*`` / ``mobilenet_v3_small`` names (plus a classifier)."""
    blocks = _blocks(state)
    order = list(blocks)
    n_stages = max(i for i, _ in order) + 1
    last = n_stages + 1 if family == "efficientnetv2" else len(order) + 1
    out = {}
    for k, v in state.items():
        if k.startswith(("stem.", "top.")):
            head, rest = k.split(".", 1)
            module, leaf = _split(rest)
            index = 0 if head == "stem" else last
            out[f"features.{index}.{_CONV_BN[module]}.{leaf}"] = v
            continue
        m = _BLOCK.match(k)
        assert m, k
        i, j, part, rest = int(m[1]), int(m[2]), m[3], m[4]
        prefix = f"features.{i + 1}.{j}" if family == "efficientnetv2" else f"features.{order.index((i, j)) + 1}"
        idx = blocks[(i, j)].index(part)
        if part == "se":
            out[f"{prefix}.block.{idx}.{rest}"] = v  # fc1 / fc2 keep their names
        else:
            module, leaf = _split(rest)
            out[f"{prefix}.block.{idx}.{_CONV_BN[module]}.{leaf}"] = v
    out["classifier.1.weight"] = torch.randn(5, 7)
    out["classifier.1.bias"] = torch.randn(5)
    return out


def to_timm(state: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """Our names -> timm ``tf_efficientnetv2_*`` / ``mobilenetv3_small_100`` names (plus a classifier)."""
    blocks = _blocks(state)
    n_stages = max(i for i, _ in blocks) + 1
    out = {}
    for k, v in state.items():
        if k.startswith("stem."):
            module, leaf = _split(k[len("stem.") :])
            out[f"{ {'conv': 'conv_stem', 'bn': 'bn1'}[module] }.{leaf}"] = v
            continue
        if k.startswith("top."):
            module, leaf = _split(k[len("top.") :])
            if family == "efficientnetv2":
                out[f"{ {'conv': 'conv_head', 'bn': 'bn2'}[module] }.{leaf}"] = v
            else:
                out[f"blocks.{n_stages}.0.{ {'conv': 'conv', 'bn': 'bn1'}[module] }.{leaf}"] = v
            continue
        m = _BLOCK.match(k)
        assert m, k
        i, j, part, rest = int(m[1]), int(m[2]), m[3], m[4]
        parts = blocks[(i, j)]
        if parts == ["fused"]:  # ConvBnAct
            names = {"fused.conv": "conv", "fused.bn": "bn1"}
        elif parts == ["fused", "project"]:  # EdgeResidual
            names = {"fused.conv": "conv_exp", "fused.bn": "bn1", "project.conv": "conv_pwl", "project.bn": "bn2"}
        elif "expand" in parts:  # InvertedResidual
            names = {
                "expand.conv": "conv_pw",
                "expand.bn": "bn1",
                "dw.conv": "conv_dw",
                "dw.bn": "bn2",
                "project.conv": "conv_pwl",
                "project.bn": "bn3",
            }
        else:  # DepthwiseSeparableConv
            names = {"dw.conv": "conv_dw", "dw.bn": "bn1", "project.conv": "conv_pw", "project.bn": "bn2"}
        names |= {"se.fc1": "se.conv_reduce", "se.fc2": "se.conv_expand"}
        module, leaf = _split(rest)
        out[f"blocks.{i}.{j}.{names[f'{part}.{module}']}.{leaf}"] = v
    out["classifier.weight"] = torch.randn(5, 7)
    if family == "mobilenetv3":
        out["conv_head.weight"] = torch.randn(7, 3, 1, 1)  # timm's pre-logits 1x1 convolution
        out["conv_head.bias"] = torch.randn(7)
    return out


def _assert_same(a: Backbone, b: Backbone) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _differ(a: Backbone, b: Backbone) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return any(not torch.equal(sa[k], sb[k]) for k in sa if sa[k].is_floating_point())


# --- round trips --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("backbone", "family", "naming"),
    [
        ("efficientnetv2_tiny", "efficientnetv2", "torchvision"),
        ("efficientnetv2_tiny", "efficientnetv2", "timm"),
        ("mobilenetv3_tiny", "mobilenetv3", "torchvision"),
        ("mobilenetv3_tiny", "mobilenetv3", "timm"),
    ],
)
def test_round_trip_through_foreign_names(backbone: str, family: str, naming: str, tmp_path: Path) -> None:
    src, dst = _build(backbone, 0), _build(backbone, 1)
    assert _differ(src, dst)
    rename = to_torchvision if naming == "torchvision" else to_timm
    path = tmp_path / "w.pth"
    torch.save(rename(src.state_dict(), family), path)
    report = load_backbone_weights(dst, path)
    _assert_same(src, dst)
    assert report.naming == naming
    assert report.loaded == len(src.state_dict())
    assert all(k.startswith(("classifier.", "conv_head.")) for k in report.ignored) and report.ignored


@pytest.mark.parametrize("backbone", ["resnet18_tiny", "resnet50_tiny"])
def test_resnet_loads_torchvision_and_timm_names_unchanged(backbone: str, tmp_path: Path) -> None:
    src, dst = _build(backbone, 0), _build(backbone, 1)
    state = dict(src.state_dict())
    # torchvision and timm ResNets share these names, and both call the classifier fc
    assert {"conv1.weight", "bn1.running_var", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight"} <= set(state)
    assert "layer2.0.downsample.1.weight" in state
    state |= {"fc.weight": torch.randn(10, 32), "fc.bias": torch.randn(10)}
    path = tmp_path / "resnet.safetensors"
    save_file(state, str(path))
    report = load_backbone_weights(dst, path)
    _assert_same(src, dst)
    assert sorted(report.ignored) == ["fc.bias", "fc.weight"]


def test_round_trip_own_names_safetensors(tmp_path: Path) -> None:
    src, dst = _build("efficientnetv2_tiny", 0), _build("efficientnetv2_tiny", 1)
    path = tmp_path / "own.safetensors"
    save_file(dict(src.state_dict()), str(path))
    assert load_backbone_weights(dst, path).naming == "vestis"
    _assert_same(src, dst)


def test_published_checkpoint_key_names_and_shapes() -> None:
    # a few keys of torchvision's and timm's ImageNet checkpoints with their shapes
    cases = {
        ("efficientnetv2_s", "torchvision"): {
            "features.0.0.weight": (24, 3, 3, 3),
            "features.1.0.block.0.0.weight": (24, 24, 3, 3),
            "features.2.0.block.1.0.weight": (48, 96, 1, 1),
            "features.4.0.block.2.fc1.weight": (16, 256, 1, 1),
            "features.6.14.block.3.1.running_var": (256,),
            "features.7.0.weight": (1280, 256, 1, 1),
        },
        ("efficientnetv2_m", "timm"): {
            "conv_stem.weight": (24, 3, 3, 3),
            "blocks.0.2.conv.weight": (24, 24, 3, 3),
            "blocks.1.0.conv_exp.weight": (96, 24, 3, 3),
            "blocks.3.0.se.conv_reduce.weight": (20, 320, 1, 1),
            "blocks.6.4.conv_pwl.weight": (512, 3072, 1, 1),
            "conv_head.weight": (1280, 512, 1, 1),
            "bn2.weight": (1280,),
        },
        ("mobilenetv3_small", "torchvision"): {
            "features.1.block.0.0.weight": (16, 1, 3, 3),
            "features.1.block.1.fc1.weight": (8, 16, 1, 1),
            "features.4.block.2.fc1.weight": (24, 96, 1, 1),
            "features.11.block.3.0.weight": (96, 576, 1, 1),
            "features.12.0.weight": (576, 96, 1, 1),
        },
        ("mobilenetv3_small", "timm"): {
            "blocks.0.0.conv_dw.weight": (16, 1, 3, 3),
            "blocks.0.0.se.conv_reduce.weight": (8, 16, 1, 1),
            "blocks.1.0.conv_pw.weight": (72, 16, 1, 1),
            "blocks.4.2.conv_pwl.weight": (96, 576, 1, 1),
            "blocks.5.0.conv.weight": (576, 96, 1, 1),
        },
    }
    for (name, naming), keys in cases.items():
        with torch.device("meta"):
            bb = BACKBONES.build(name)
        own = bb.state_dict()
        fmap = key_map(bb, naming)
        assert len(fmap) == len(own)
        for key, shape in keys.items():
            assert tuple(own[fmap[key]].shape) == shape, (name, key)


def test_removed_stages_are_ignored(tmp_path: Path) -> None:
    src = _build("efficientnetv2_tiny", 0)
    dst = _build("efficientnetv2_tiny", 1, out_features=["block3a", "block5a", "block6a"])
    path = tmp_path / "tv.pth"
    torch.save(to_torchvision(src.state_dict(), "efficientnetv2"), path)
    report = load_backbone_weights(dst, path)
    assert sorted(report.ignored) == sorted(
        ["classifier.1.weight", "classifier.1.bias"] + [f"features.7.{i}.{p}" for i, p in _top_keys()]
    )
    for k, v in dst.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k


def _top_keys() -> list[tuple[str, str]]:
    return [("0", "weight")] + [
        ("1", p) for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    ]


def test_reads_wrapped_and_parallel_state_dicts(tmp_path: Path) -> None:
    src, dst = _build("resnet18_tiny", 0), _build("resnet18_tiny", 1)
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    assert set(read_state_dict(path)) == set(src.state_dict())
    load_backbone_weights(dst, path)
    _assert_same(src, dst)


def test_loads_the_backbone_of_a_whole_model(tmp_path: Path, taxonomy: Taxonomy) -> None:
    torch.manual_seed(0)
    model = create_model(ModelConfig(name="a3", backbone="mobilenetv3_tiny", branch_hidden=4), taxonomy)
    path = tmp_path / "model.pt"
    torch.save({"model": model.state_dict()}, path)
    dst = _build("mobilenetv3_tiny", 1, out_features=["stage1", "stage3", "stage4"])
    report = load_backbone_weights(dst, path)
    assert report.naming == "vestis"
    assert any(k.startswith("heads.") for k in report.ignored)
    for k, v in dst.state_dict().items():
        assert torch.equal(v, model.backbone.state_dict()[k]), k


# --- errors -------------------------------------------------------------------------------------------------
def _torchvision_file(tmp_path: Path, edit: Callable[[dict[str, torch.Tensor]], object]) -> Path:
    state = to_torchvision(_build("efficientnetv2_tiny", 0).state_dict(), "efficientnetv2")
    edit(state)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    return path


def test_missing_key_is_reported(tmp_path: Path) -> None:
    path = _torchvision_file(tmp_path, lambda s: s.pop("features.4.0.block.2.fc1.weight"))
    with pytest.raises(VestisError) as e:
        load_backbone_weights(_build("efficientnetv2_tiny", 1), path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: weights do not fit backbone efficientnetv2_tiny (torchvision naming):")
    assert "missing key(s) (1): stages.3.0.se.fc1.weight" in msg
    assert "unexpected" not in msg and "shape mismatch" not in msg


def test_unexpected_key_is_reported(tmp_path: Path) -> None:
    path = _torchvision_file(tmp_path, lambda s: s.update({"features.1.0.block.5.0.weight": torch.zeros(1)}))
    with pytest.raises(VestisError, match=r"unexpected key\(s\) \(1\): features\.1\.0\.block\.5\.0\.weight"):
        load_backbone_weights(_build("efficientnetv2_tiny", 1), path)


def test_shape_mismatch_is_reported(tmp_path: Path) -> None:
    path = _torchvision_file(tmp_path, lambda s: s.update({"features.0.0.weight": torch.zeros(8, 3, 5, 5)}))
    dst = _build("efficientnetv2_tiny", 1)
    before = dst.stem.conv.weight.clone()
    with pytest.raises(VestisError) as e:
        load_backbone_weights(dst, path)
    assert (
        "shape mismatch: features.0.0.weight is (8, 3, 5, 5) in the file, stem.conv.weight is (8, 3, 3, 3) in the model"
        in str(e.value)
    )
    assert torch.equal(dst.stem.conv.weight, before)  # nothing loaded


def test_non_strict_loads_what_fits_and_reports_the_rest(tmp_path: Path) -> None:
    def edit(s: dict) -> None:
        s.pop("features.4.0.block.2.fc1.weight")
        s["features.0.0.weight"] = torch.zeros(8, 3, 5, 5)
        s["extra.weight"] = torch.zeros(2)

    path = _torchvision_file(tmp_path, edit)
    src, dst = _build("efficientnetv2_tiny", 0), _build("efficientnetv2_tiny", 1)
    report = load_backbone_weights(dst, path, strict=False)
    assert report.missing == ["stages.3.0.se.fc1.weight"]
    assert report.unexpected == ["extra.weight"]
    assert report.mismatched == [("stem.conv.weight", (8, 3, 5, 5), (8, 3, 3, 3))]
    assert report.loaded == len(src.state_dict()) - 2
    assert torch.equal(dst.top.conv.weight, src.top.conv.weight)
    assert not torch.equal(dst.stem.conv.weight, src.stem.conv.weight)


def test_file_errors(tmp_path: Path) -> None:
    bb = _build("resnet18_tiny", 0)
    with pytest.raises(VestisError, match="weights file not found"):
        load_backbone_weights(bb, tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(VestisError, match=r"garbage.pth: cannot read weights"):
        load_backbone_weights(bb, garbage)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00\x01")
    with pytest.raises(VestisError, match="not a readable safetensors file"):
        load_backbone_weights(bb, bad_st)
    mixed = tmp_path / "mixed.pth"
    torch.save({"conv1.weight": torch.zeros(1), "note": "hello"}, mixed)
    with pytest.raises(VestisError, match="entries that are not tensors: note"):
        load_backbone_weights(bb, mixed)
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(1)}, other)
    with pytest.raises(
        VestisError, match="no key matches the torchvision or timm or vestis naming of backbone resnet18_tiny"
    ):
        load_backbone_weights(bb, other)
