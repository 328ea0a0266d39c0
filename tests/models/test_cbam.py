from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vestis.models.layers.cbam import CBAM, ChannelAttention, NoAttention
from vestis.registry import ATTENTION


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _reference_cbam(x: torch.Tensor, w0: torch.Tensor, w1: torch.Tensor, k: torch.Tensor) -> tuple:
    """Woo et al. (2018) eqs. 2-3 written out: shared MLP on avg/max descriptors, 7x7 conv on [avg; max]."""
    b, c, h, w = x.shape
    avg = x.reshape(b, c, -1).mean(-1)  # (B, C)
    mx = x.reshape(b, c, -1).max(-1).values  # (B, C)
    mc = torch.sigmoid(torch.relu(avg @ w0.T) @ w1.T + torch.relu(mx @ w0.T) @ w1.T)  # (B, C)
    f1 = x * mc[:, :, None, None]
    pooled = torch.stack([f1.mean(1), f1.max(1).values], dim=1)  # (B, 2, H, W)
    pad = k.shape[-1] // 2
    padded = F.pad(pooled, (pad, pad, pad, pad))
    ms = torch.zeros(b, h, w)
    # the convolution as an explicit sum over the window
    for i in range(h):
        for j in range(w):
            window = padded[:, :, i : i + k.shape[-1], j : j + k.shape[-1]]  # (B, 2, 7, 7)
            ms[:, i, j] = (window * k).sum((1, 2, 3))
    ms = torch.sigmoid(ms)
    return f1 * ms[:, None], ms


def test_cbam_matches_the_paper_formula_with_random_weights() -> None:
    torch.manual_seed(0)
    m = CBAM(32, reduction=16).eval()
    x = torch.randn(2, 32, 5, 6)
    w0 = m.channel.fc1.weight[:, :, 0, 0]  # (hidden, C)
    w1 = m.channel.fc2.weight[:, :, 0, 0]  # (C, hidden)
    k = m.spatial.conv.weight[0]  # (2, 7, 7)
    want, want_map = _reference_cbam(x, w0, w1, k)
    got, got_map = m.forward_with_map(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_map, want_map, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-6)


def test_cbam_hand_computed_case() -> None:
    # one channel, a 1x2 map [1, 3]; W0 = W1 = 1 (hidden width 1);
    # spatial kernel: centre taps a=0.5 on the mean map, b=0.25 on the max map
    m = CBAM(1, reduction=1, min_hidden=1)
    with torch.no_grad():
        m.channel.fc1.weight.fill_(1.0)
        m.channel.fc2.weight.fill_(1.0)
        m.spatial.conv.weight.zero_()
        m.spatial.conv.weight[0, 0, 3, 3] = 0.5
        m.spatial.conv.weight[0, 1, 3, 3] = 0.25
    x = torch.tensor([[[[1.0, 3.0]]]])
    mc = _sigmoid(2.0 + 3.0)  # relu(mean=2) + relu(max=3)
    f1 = [1.0 * mc, 3.0 * mc]
    ms = [_sigmoid(0.5 * v + 0.25 * v) for v in f1]  # one channel: mean = max = the value
    y, amap = m.forward_with_map(x)
    assert y.flatten().tolist() == pytest.approx([f1[0] * ms[0], f1[1] * ms[1]], rel=1e-6)
    assert amap.shape == (1, 1, 2)
    assert amap.flatten().tolist() == pytest.approx(ms, rel=1e-6)


def test_channel_attention_hidden_width() -> None:
    assert ChannelAttention(512).fc1.out_channels == 32  # 512 / 16
    assert ChannelAttention(176).fc1.out_channels == 11  # 176 // 16
    assert ChannelAttention(80).fc1.out_channels == 8  # 80 // 16 = 5, raised to the minimum of 8
    assert ChannelAttention(4).fc1.out_channels == 4  # never wider than the input


def test_cbam_has_no_biases_as_in_the_paper() -> None:
    m = CBAM(64)
    assert sorted(n for n, _ in m.named_parameters()) == [
        "channel.fc1.weight",
        "channel.fc2.weight",
        "spatial.conv.weight",
    ]


def test_attention_registry() -> None:
    assert {"cbam", "none"} <= set(ATTENTION)
    cbam = ATTENTION.build("cbam", channels=16)
    assert isinstance(cbam, CBAM)
    none = ATTENTION.build("none", channels=16)
    assert isinstance(none, NoAttention)
    x = torch.randn(2, 16, 3, 3)
    y, amap = none.forward_with_map(x)
    assert y is x and amap is None
    assert torch.equal(none(x), x)
    assert sum(p.numel() for p in none.parameters()) == 0
