"""HierarchicalLoss: hand-computed values and missing labels ignored."""

from __future__ import annotations

import math

import pytest
import torch

from vestis.errors import VestisError
from vestis.losses.hierarchical import HierarchicalLoss, masked_attribute_bce, masked_category_ce


def test_category_ce_hand_case_ignores_missing_rows() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [50.0, -50.0]])
    labels = torch.tensor([0, 1, -1])
    # rows 0 and 1 only: -log softmax = log(1 + e^-2) and log 2
    expected = (math.log(1 + math.exp(-2.0)) + math.log(2.0)) / 2
    assert float(masked_category_ce(logits, labels)) == pytest.approx(expected, rel=1e-6)
    logits[2] = torch.tensor([-50.0, 50.0])  # a missing row's logits change nothing
    assert float(masked_category_ce(logits, labels)) == pytest.approx(expected, rel=1e-6)


def test_attribute_bce_hand_case_ignores_missing_entries() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [-1.0, 9.0, 0.0]])
    targets = torch.tensor([[1.0, -1.0, 0.0], [0.0, float("nan"), 1.0]])
    # labelled: (0, target 1), (1, target 0), (-1, target 0), (0, target 1)
    terms = [math.log(2.0), math.log(1 + math.e), math.log(1 + math.exp(-1.0)), math.log(2.0)]
    assert float(masked_attribute_bce(logits, targets)) == pytest.approx(sum(terms) / 4, rel=1e-6)


def test_named_dict_weights_and_gradients_only_on_labelled() -> None:
    cat = torch.zeros(2, 3, requires_grad=True)
    attr = torch.zeros(2, 2, requires_grad=True)
    loss = HierarchicalLoss(category_weight=2.0, attribute_weight=0.5)(
        {"category": cat, "attributes": attr, "attention": torch.ones(2, 2, 1, 1)},
        {"category": torch.tensor([1, -1]), "attributes": torch.tensor([[1.0, -1.0], [-1.0, -1.0]])},
    )
    assert set(loss) == {"category", "attributes"}
    assert loss["category"].item() == pytest.approx(2.0 * math.log(3.0))
    assert loss["attributes"].item() == pytest.approx(0.5 * math.log(2.0))
    sum(loss.values()).backward()
    assert torch.count_nonzero(cat.grad[1]) == 0 and torch.count_nonzero(cat.grad[0]) == 3
    assert torch.count_nonzero(attr.grad) == 1 and attr.grad[0, 0] != 0


def test_nothing_labelled_is_zero_and_attached() -> None:
    cat = torch.randn(2, 3, requires_grad=True)
    attr = torch.randn(2, 2, requires_grad=True)
    loss = HierarchicalLoss()({"category": cat, "attributes": attr}, {"category": torch.tensor([-1, -1])})
    assert loss["category"].item() == 0.0 and loss["attributes"].item() == 0.0
    sum(loss.values()).backward()  # a batch without labels must not break the loop
    assert torch.count_nonzero(cat.grad) == 0


def test_shape_mismatch_is_a_vestis_error() -> None:
    with pytest.raises(VestisError, match="attribute targets"):
        masked_attribute_bce(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(VestisError, match="category targets"):
        masked_category_ce(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
