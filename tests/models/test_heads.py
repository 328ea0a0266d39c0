from __future__ import annotations

import pytest
import torch
from torch import nn

from vestis.errors import VestisError
from vestis.models.heads import AttributeBranch, AttributeHeads


def test_branch_is_fc_act_dropout_out() -> None:
    b = AttributeBranch(10, 7, 3, dropout=0.5)
    assert [type(m) for m in b] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (b.fc.in_features, b.fc.out_features, b.out.out_features) == (10, 7, 3)
    assert b.drop.p == 0.5


def test_branch_computes_logits_without_squashing() -> None:
    torch.manual_seed(0)
    b = AttributeBranch(4, 5, 2).eval()
    x = torch.randn(3, 4)
    want = torch.relu(x @ b.fc.weight.T + b.fc.bias) @ b.out.weight.T + b.out.bias
    torch.testing.assert_close(b(x), want)


def test_heads_per_attribute_widths_and_order() -> None:
    heads = AttributeHeads(12, {"neck.type": 5, "colour": 3, "tags": 1}, hidden=8, hidden_overrides={"colour": 32})
    assert heads.names == ("neck.type", "colour", "tags")
    assert [br.fc.out_features for br in heads.branches] == [8, 32, 8]
    out = heads(torch.randn(2, 12))
    assert list(out) == ["neck.type", "colour", "tags"]
    assert {k: tuple(v.shape) for k, v in out.items()} == {"neck.type": (2, 5), "colour": (2, 3), "tags": (2, 1)}
    # parameters: per branch (12 * h + h) + (h * n + n)
    want = (12 * 8 + 8 + 8 * 5 + 5) + (12 * 32 + 32 + 32 * 3 + 3) + (12 * 8 + 8 + 8 * 1 + 1)
    assert sum(p.numel() for p in heads.parameters()) == want


def test_heads_reject_bad_settings() -> None:
    with pytest.raises(VestisError, match=r"branch_hidden_overrides: unknown attribute\(s\) \['collar'\]"):
        AttributeHeads(4, {"colour": 3}, hidden_overrides={"collar": 16})
    with pytest.raises(VestisError, match=r"model\.branch_hidden: expected a positive width, got 0"):
        AttributeHeads(4, {"colour": 3}, hidden=0)
    with pytest.raises(VestisError, match=r"branch_hidden_overrides\.colour: expected a positive width, got -1"):
        AttributeHeads(4, {"colour": 3}, hidden_overrides={"colour": -1})
    with pytest.raises(VestisError, match=r"model.dropout: expected a probability in \[0, 1\), got 1.0"):
        AttributeHeads(4, {"colour": 3}, dropout=1.0)
