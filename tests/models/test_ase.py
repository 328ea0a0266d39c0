from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vestis.config import ModelConfig
from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.models import create_model
from vestis.models.backbones.ase import ASEBackbone
from vestis.models.layers.ase import (
    ASEModule,
    AxisAttention,
    ChannelAxisAttention,
    ConcurrentAxialAttention,
    MultiScaleFeatures,
    check_axes,
)
from vestis.registry import BACKBONES


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _set(linear: nn.Linear, weight: list[list[float]], bias: list[float]) -> None:
    """Hand-set weights; rows / columns beyond the given ones are zero (unused hidden units)."""
    w, b = torch.tensor(weight, dtype=torch.float32), torch.tensor(bias, dtype=torch.float32)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
        linear.weight[: w.shape[0], : w.shape[1]] = w
        linear.bias[: b.shape[0]] = b


@pytest.mark.parametrize("channels", [2, 3, 8])
def test_msf_and_ase_double_the_width_and_keep_the_size(channels: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, channels, 9, 7)
    assert MultiScaleFeatures(channels)(x).shape == (2, 2 * channels, 9, 7)
    module = ASEModule(channels, (9, 7))
    y = module(x)
    assert module.out_channels == 2 * channels and y.shape == (2, 2 * channels, 9, 7) and torch.isfinite(y).all()


def test_channel_mask_by_hand() -> None:
    att = ChannelAxisAttention(4)  # one hidden unit (4 // 4)
    _set(att.max_path.fc1, [[1, 0, 0, 0]], [0])  # GMP channel 0
    _set(att.max_path.fc2, [[1], [2], [-1], [0]], [0, 0, 0, 0])
    _set(att.avg_path.fc1, [[0, 1, 0, 0]], [-4])  # GAP channel 1 - 4 < 0: the pair is linear, no ReLU
    _set(att.avg_path.fc2, [[1], [1], [1], [1]], [0, 0, 0, 1])
    _set(att.fuse, [[1 if j % 4 == i else 0 for j in range(8)] for i in range(4)], [0, 0, 0, 0])  # x1 + x2
    x = torch.zeros(1, 4, 2, 2)
    x[0, 0] = torch.tensor([[1.0, 3.0], [2.0, 0.0]])  # GMP 3
    x[0, 1] = torch.tensor([[2.0, 4.0], [6.0, 0.0]])  # GAP 3
    h1, h2 = 3.0, 3.0 - 4.0
    x1 = [_sig(h1), _sig(2 * h1), _sig(-h1), _sig(0.0)]  # eq. 1a
    x2 = [_sig(h2), _sig(h2), _sig(h2), _sig(h2 + 1)]  # eq. 1b
    expected = torch.tensor([[_sig(a + b) for a, b in zip(x1, x2, strict=True)]])  # eq. 1c
    torch.testing.assert_close(att(x), expected)


def test_height_mask_by_hand() -> None:
    att = AxisAttention(1, 2, "height")
    with torch.no_grad():
        att.squeeze.weight.zero_()
        att.squeeze.weight[0, 0, 1, 1] = 1.0  # the conv passes the single channel through
        att.squeeze.bias.zero_()
    _set(att.dense.fc1, [[1, -1]], [0])
    _set(att.dense.fc2, [[2], [-2]], [0, 1])
    x = torch.tensor([[[[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]]]])  # (1, 1, H=2, W=3): row means 2 and 1
    h = 2.0 - 1.0
    torch.testing.assert_close(att(x), torch.tensor([[_sig(2 * h), _sig(-2 * h + 1)]]))  # eq. 2a
    # another height: a profile of 4 rows pools to the declared 2 exactly, the mask is interpolated back
    x4 = x.repeat_interleave(2, dim=2)  # rows 1, 1, 2, 2 -> pooled means 2 and 1 again
    m0, m1 = _sig(2 * h), _sig(-2 * h + 1)
    ref = torch.tensor([[m0, 0.75 * m0 + 0.25 * m1, 0.25 * m0 + 0.75 * m1, m1]])
    # the edge rows of x4 see zero padding in the 3x3 conv only along the width, so the profile is exact
    torch.testing.assert_close(att(x4), ref)


def test_width_mask_reads_columns() -> None:
    att = AxisAttention(1, 3, "width")
    with torch.no_grad():
        att.squeeze.weight.zero_()
        att.squeeze.weight[0, 0, 1, 1] = 1.0
        att.squeeze.bias.zero_()
    _set(att.dense.fc1, [[1, 0, 0]], [0])  # one hidden unit (3 // 4 -> 1)
    _set(att.dense.fc2, [[1], [0], [-1]], [0, 0, 0])
    x = torch.tensor([[[[4.0, 0.0, 1.0], [2.0, 5.0, 1.0]]]])  # column means 3, 2.5, 1
    torch.testing.assert_close(att(x), torch.tensor([[_sig(3.0), _sig(0.0), _sig(-3.0)]]))


def test_the_masks_multiply_along_their_axes() -> None:
    torch.manual_seed(0)
    att = ConcurrentAxialAttention(6, (5, 3))
    x = torch.randn(2, 6, 5, 3)  # H != W: a mask on the wrong axis would not broadcast or would differ
    m = att.masks(x)
    assert {k: tuple(v.shape) for k, v in m.items()} == {"channel": (2, 6), "height": (2, 5), "width": (2, 3)}
    ref = torch.empty_like(x)
    for b in range(2):
        for c in range(6):
            for i in range(5):
                for j in range(3):
                    ref[b, c, i, j] = x[b, c, i, j] * m["channel"][b, c] * m["height"][b, i] * m["width"][b, j]
    torch.testing.assert_close(att(x), ref)


def test_each_axis_switch_changes_the_output_and_none_is_msf_alone() -> None:
    torch.manual_seed(0)
    ref = ASEModule(4, 6, axes=()).eval()
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        msf = ref.msf(x)
        torch.testing.assert_close(ref(x), msf)
        outputs = {}
        for axes in [("channel",), ("height",), ("width",), ("height", "width"), ("channel", "height", "width")]:
            m = ASEModule(4, 6, axes=axes).eval()
            m.msf.load_state_dict(ref.msf.state_dict())
            outputs[axes] = m(x)
            assert not torch.allclose(outputs[axes], msf), axes
    assert not torch.allclose(outputs[("height",)], outputs[("width",)])


def test_axes_are_checked() -> None:
    assert check_axes(["width", "channel"]) == ("width", "channel")
    for bad in (["depth"], ["height", "height"]):
        with pytest.raises(VestisError, match=r"model\.ase_axes"):
            check_axes(bad)


# --- the trunk ------------------------------------------------------------------------------------------------
def test_datrnet_trunk_matches_table_1_on_meta() -> None:
    with torch.device("meta"):
        bb = BACKBONES.build("datrnet_ase")
    bb.select(bb.feature_names)
    assert [(f.name, f.channels, f.stride) for f in bb.feature_info] == [
        ("stem", 32, 2),
        ("ase1", 64, 4),
        ("ase2", 128, 8),
        ("ase3", 256, 16),
    ]
    out = bb(torch.empty(1, 3, 256, 256, device="meta"))
    for f in bb.feature_info:
        assert tuple(out[f.name].shape) == (1, f.channels, 256 // f.stride, 256 // f.stride)
    # the height / width masks are built for the maps of a 256 px input
    assert [bb.get_submodule(f"ase{i}").attention.height.length for i in (1, 2, 3)] == [64, 32, 16]
    assert bb.pyramid_features() == ["ase1", "ase2", "ase3"]
    assert bb.pyramid_features((4, 16)) == ["ase1", "ase3"]
    assert [b.name for b in bb.blocks()] == ["stem", "ase1", "ase2", "ase3"]
    assert bb.blocks()[1].paths == ("pool1", "ase1")


@pytest.mark.parametrize("side", [64, 70, 33])
def test_tiny_trunk_feature_info_matches_outputs(side: int) -> None:
    torch.manual_seed(0)
    bb = BACKBONES.build("datrnet_ase_tiny", modules=2, axes=("channel", "width")).eval()
    bb.select(bb.feature_names)
    assert bb.feature_names == ["stem", "ase1", "ase2"]
    with torch.no_grad():
        out = bb(torch.randn(1, 3, side, side))
    for f in bb.feature_info:
        s = math.ceil(side / f.stride)
        assert tuple(out[f.name].shape) == (1, f.channels, s, s) and torch.isfinite(out[f.name]).all()


def test_trunk_select_prunes_and_full_architecture_restores() -> None:
    bb = BACKBONES.build("datrnet_ase_tiny", axes=("height",), image_size=32, out_features=["ase1"])
    assert not hasattr(bb, "ase2") and not hasattr(bb, "pool3")
    assert set(bb.pruned_prefixes) == {"ase3.", "pool3.", "ase2.", "pool2."}
    full = bb.full_architecture()
    assert isinstance(full, ASEBackbone) and full.out_features == ("ase3",)
    assert full.init_kwargs == {"modules": 3, "axes": ("height",), "image_size": 32, "stem_channels": 4}
    assert full.ase3.attention.height.length == 2  # ceil(32 / 16)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"modules": 0}, "ase_modules"),
        ({"modules": 4}, "ase_modules"),
        ({"axes": ("x",)}, "ase_axes"),
        ({"image_size": 0}, "image_size"),
    ],
)
def test_trunk_arguments_are_checked(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(VestisError, match=match):
        BACKBONES.build("datrnet_ase_tiny", **kwargs)


def test_create_model_passes_modules_axes_and_image_size(taxonomy: Taxonomy) -> None:
    cfg = ModelConfig(name="datrnet", backbone="datrnet_ase_tiny", ase_modules=2, ase_axes=("height",))
    model = create_model(cfg, taxonomy, image_size=48)
    bb = model.backbone
    assert bb.init_kwargs == {"modules": 2, "axes": ("height",), "image_size": 48, "stem_channels": 4}
    assert bb.out_features == ("ase2",) and model.heads[0].fc.in_features == 16
    att = bb.ase2.attention
    assert att.channel is None and att.width is None and att.height.length == 6  # ceil(48 / 8)
    # without image_size the registered default (64 px for the tiny trunk)
    assert create_model(cfg, taxonomy).backbone.image_size == 64
    with pytest.raises(VestisError, match="ase_axes"):
        create_model(ModelConfig(name="datrnet", backbone="datrnet_ase_tiny", ase_axes=("depth",)), taxonomy)
    # a classifier on the ASE trunk taps its modules
    clf = create_model(ModelConfig(name="a1", backbone="datrnet_ase_tiny", branch_hidden=8), taxonomy)
    assert [f.name for f in clf.levels] == ["ase1", "ase2", "ase3"]
