"""MTL w/ RNN+VA against a naive step-by-step implementation of the paper's eqs. 1-7 with the same weights."""

from __future__ import annotations

import math

import torch

from vestis.models.hierarchical import BahdanauAttention, RNNVAModel, build_stage2_model


def _lin(layer: torch.nn.Linear, x: list[float]) -> list[float]:
    w, b = layer.weight.tolist(), (layer.bias.tolist() if layer.bias is not None else [0.0] * layer.out_features)
    return [sum(wi * xi for wi, xi in zip(row, x, strict=True)) + bi for row, bi in zip(w, b, strict=True)]


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _gru(cell: torch.nn.GRUCell, x: list[float], h: list[float]) -> list[float]:
    # PyTorch's GRU: r, z, n gates stacked in weight_ih / weight_hh
    s = cell.hidden_size
    gi = [
        sum(w * v for w, v in zip(row, x, strict=True)) + b
        for row, b in zip(cell.weight_ih.tolist(), cell.bias_ih.tolist(), strict=True)
    ]
    gh = [
        sum(w * v for w, v in zip(row, h, strict=True)) + b
        for row, b in zip(cell.weight_hh.tolist(), cell.bias_hh.tolist(), strict=True)
    ]
    r = [_sig(gi[j] + gh[j]) for j in range(s)]
    z = [_sig(gi[s + j] + gh[s + j]) for j in range(s)]
    n = [math.tanh(gi[2 * s + j] + r[j] * gh[2 * s + j]) for j in range(s)]
    return [(1 - z[j]) * n[j] + z[j] * h[j] for j in range(s)]


def _attend(att: BahdanauAttention, feats: list[list[float]], h: list[float]) -> tuple[list[float], list[float]]:
    w2h = _lin(att.w2, h)
    v = att.v.weight[0].tolist()
    e = [sum(vk * math.tanh(a + b) for vk, a, b in zip(v, _lin(att.w1, f), w2h, strict=True)) for f in feats]  # eq. 1
    m = max(e)
    ex = [math.exp(x - m) for x in e]
    a = [x / sum(ex) for x in ex]  # eq. 2
    c = [sum(a[i] * feats[i][k] for i in range(len(feats))) for k in range(len(feats[0]))]  # eq. 3
    return c, a


def _dense2(seq: torch.nn.Sequential, x: list[float]) -> list[float]:
    return _lin(seq[3], [max(0.0, v) for v in _lin(seq[0], x)])


def _reference(model: RNNVAModel, fmap: torch.Tensor, types: list[int], cats: list[int] | None) -> list[dict]:
    out = []
    d, hgt, wid = fmap.shape[1:]
    for b in range(fmap.shape[0]):
        feats = [[float(fmap[b, k, y, x]) for k in range(d)] for y in range(hgt) for x in range(wid)]
        h0 = [0.0] * model.hidden_dim
        c1, a1 = _attend(model.attention, feats, h0)
        e_o = model.object_type_embedding.table.weight[types[b] if types[b] >= 0 else model.num_object_types].tolist()
        h1 = _gru(model.gru, c1 + e_o, h0)  # eq. 4
        cat = _dense2(model.category_head, h1)  # eq. 5
        shared = cats[b] if cats is not None and cats[b] >= 0 else max(range(len(cat)), key=cat.__getitem__)
        c2, a2 = _attend(model.attention, feats, h1)
        h2 = _gru(model.gru, c2 + model.category_embedding.table.weight[shared].tolist(), h1)  # eq. 6
        out.append({"category": cat, "attributes": _dense2(model.attribute_head, h2), "a": [a1, a2], "shared": shared})
    return out


def _model() -> RNNVAModel:
    torch.manual_seed(3)
    model = build_stage2_model("rnn_va_tiny", num_categories=4, num_attributes=5, num_object_types=4)
    with torch.no_grad():  # large enough weights that attention is far from uniform
        for p in model.attention.parameters():
            p.mul_(4.0)
    return model


def test_decoder_matches_naive_equations_in_eval() -> None:
    model = _model().eval()
    fmap = torch.randn(2, model.feature_channels, 3, 2)
    types = [1, -1]
    with torch.no_grad():
        got = model.decode(fmap, torch.tensor(types))
    ref = _reference(model, fmap, types, None)
    for b, r in enumerate(ref):
        torch.testing.assert_close(got["category"][b], torch.tensor(r["category"]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["attributes"][b], torch.tensor(r["attributes"]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["attention"][b].reshape(2, -1), torch.tensor(r["a"]), atol=1e-6, rtol=1e-5)
        assert int(got["shared_category"][b]) == r["shared"]
    assert got["attention"][0, 0].argmax() != got["attention"][0, 0].argmin()  # not a uniform map


def test_decoder_teacher_forcing_matches_reference() -> None:
    model = _model().train()
    fmap = torch.randn(2, model.feature_channels, 2, 2)
    cats = [3, -1]
    with torch.no_grad():
        got = model.decode(fmap, torch.tensor([0, 2]), torch.tensor(cats))
    ref = _reference(model, fmap, [0, 2], cats)
    assert got["shared_category"].tolist() == [r["shared"] for r in ref]
    for b, r in enumerate(ref):
        torch.testing.assert_close(got["attributes"][b], torch.tensor(r["attributes"]), atol=1e-5, rtol=1e-5)


def test_attention_sums_to_one_over_space_and_row_major_layout() -> None:
    model = _model().eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 96, 64))
    a = out["attention"]
    assert a.shape == (3, 2, 3, 2)
    torch.testing.assert_close(a.sum(dim=(2, 3)), torch.ones(3, 2))
    assert (a >= 0).all()
    # a map whose only informative cell is (y=1, x=0) must put the attention there
    att = BahdanauAttention(feature_dim=2, hidden_dim=1, attention_dim=1)
    with torch.no_grad():
        att.w1.weight.copy_(torch.tensor([[10.0, 0.0]]))
        att.w1.bias.zero_()
        att.w2.weight.zero_()
        att.w2.bias.zero_()
        att.v.weight.fill_(1.0)
    fmap = torch.zeros(1, 2, 2, 2)
    fmap[0, 0, 1, 0] = 1.0
    feats = fmap.flatten(2).transpose(1, 2)
    context, weights = att(feats, torch.zeros(1, 1))
    assert int(weights.argmax()) == 2  # row-major index of (1, 0)
    e = torch.tanh(torch.tensor([0.0, 0.0, 10.0, 0.0]))
    torch.testing.assert_close(weights[0], e.softmax(0))
    torch.testing.assert_close(context[0], torch.tensor([float(e.softmax(0)[2]), 0.0]))
