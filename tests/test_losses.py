import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.losses import MaskedMultiTaskLoss, class_weights

TAX = Taxonomy.from_dict(
    {
        "attributes": [
            {"name": "colour", "kind": "single", "values": ["red", "green", "blue"]},
            {"name": "occasion", "kind": "multi", "values": ["casual", "party"]},
        ]
    }
)


def _batch():
    torch.manual_seed(0)
    logits = {"colour": torch.randn(4, 3, requires_grad=True), "occasion": torch.randn(4, 2, requires_grad=True)}
    targets = {"colour": torch.tensor([0, 2, -1, 1]), "occasion": torch.tensor([[1.0, 0], [0, 0], [1, 1], [0, 1]])}
    masks = {"colour": torch.tensor([True, True, False, True]), "occasion": torch.tensor([True, False, True, True])}
    return logits, targets, masks


def test_missing_labels_are_ignored():
    logits, targets, masks = _batch()
    losses = MaskedMultiTaskLoss(TAX)(logits, targets, masks)
    assert set(losses) == {"colour", "occasion"}
    keep = masks["colour"]
    ref = F.cross_entropy(logits["colour"][keep], targets["colour"][keep])
    assert torch.allclose(losses["colour"], ref)
    keep = masks["occasion"]
    ref = F.binary_cross_entropy_with_logits(logits["occasion"][keep], targets["occasion"][keep])
    assert torch.allclose(losses["occasion"], ref)
    # changing a masked row's logits does not change the loss
    logits2 = {k: v.detach().clone() for k, v in logits.items()}
    logits2["colour"][2] += 100
    logits2["occasion"][1] -= 100
    again = MaskedMultiTaskLoss(TAX)(logits2, targets, masks)
    assert all(torch.allclose(again[k], losses[k]) for k in losses)


def test_all_missing_gives_zero_with_gradient_path():
    logits, targets, masks = _batch()
    masks = {k: torch.zeros_like(v) for k, v in masks.items()}
    losses = MaskedMultiTaskLoss(TAX)(logits, targets, masks)
    total = sum(losses.values())
    assert total.item() == 0.0
    total.backward()
    assert logits["colour"].grad is not None and torch.all(logits["colour"].grad == 0)


def test_task_weights_smoothing_and_class_weights():
    logits, targets, masks = _batch()
    base = MaskedMultiTaskLoss(TAX)(logits, targets, masks)
    w = MaskedMultiTaskLoss(TAX, task_weights={"colour": 2.0})(logits, targets, masks)
    assert torch.allclose(w["colour"], 2 * base["colour"]) and torch.allclose(w["occasion"], base["occasion"])
    ls = MaskedMultiTaskLoss(TAX, label_smoothing=0.1)(logits, targets, masks)
    keep = masks["colour"]
    ref = F.cross_entropy(logits["colour"][keep], targets["colour"][keep], label_smoothing=0.1)
    assert torch.allclose(ls["colour"], ref)
    smooth = targets["occasion"][masks["occasion"]] * 0.9 + 0.05
    ref = F.binary_cross_entropy_with_logits(logits["occasion"][masks["occasion"]], smooth)
    assert torch.allclose(ls["occasion"], ref)
    cw = {"colour": torch.tensor([1.0, 2.0, 3.0]), "occasion": torch.tensor([2.0, 0.5])}
    out = MaskedMultiTaskLoss(TAX, class_weights=cw)(logits, targets, masks)
    per = F.cross_entropy(logits["colour"][keep], targets["colour"][keep], weight=cw["colour"], reduction="none")
    assert torch.allclose(out["colour"], per.mean())  # mean over labelled rows (not over the weight sum)
    with pytest.raises(VestisError, match="unknown attribute"):
        MaskedMultiTaskLoss(TAX, task_weights={"size": 1.0})


def test_class_weights_inverse_and_effective():
    # colour counts among labelled rows: red 3, green 1, blue 0
    targets = {"colour": np.array([0, 0, 0, 1, 2]), "occasion": np.array([[1, 0], [1, 0], [1, 1], [0, 0], [0, 0]])}
    masks = {"colour": np.array([1, 1, 1, 1, 0], bool), "occasion": np.array([1, 1, 1, 1, 0], bool)}
    w = class_weights(TAX, targets, masks, "inverse")
    # raw 1/3, 1, unseen -> max seen (1); scaled so (3*w_r + 1*w_g) / 4 = 1: w = [2/3, 2, 2]
    assert torch.allclose(w["colour"], torch.tensor([2 / 3, 2.0, 2.0]))
    # occasion over 4 labelled rows: casual 3 pos / 1 neg, party 1 pos / 3 neg -> pos_weight neg/pos
    assert torch.allclose(w["occasion"], torch.tensor([1 / 3, 3.0]))
    e = class_weights(TAX, targets, masks, "effective", beta=0.5)
    # E(3) = (1 - .125) / .5 = 1.75, E(1) = 1; raw 1/1.75, 1 -> scaled so (3*w_r + w_g) / 4 = 1
    r, g = 1 / 1.75, 1.0
    k = 4 / (3 * r + g)
    assert torch.allclose(e["colour"], torch.tensor([r * k, g * k, g * k]))
    assert torch.allclose(e["occasion"], torch.tensor([1 / 1.75, 1.75]))


def test_paper_output_makes_every_attribute_a_sigmoid_classifier():
    logits, targets, masks = _batch()
    losses = MaskedMultiTaskLoss(TAX, output="paper")(logits, targets, masks)
    keep = masks["colour"]
    onehot = torch.eye(3)[targets["colour"][keep]]  # class index -> one-hot BCE target
    ref = F.binary_cross_entropy_with_logits(logits["colour"][keep], onehot)
    assert torch.allclose(losses["colour"], ref)
    keep = masks["occasion"]
    ref = F.binary_cross_entropy_with_logits(logits["occasion"][keep], targets["occasion"][keep])
    assert torch.allclose(losses["occasion"], ref)  # multi-label attributes are unchanged
    with pytest.raises(VestisError, match=r"model\.output"):
        MaskedMultiTaskLoss(TAX, output="softmax")


def test_paper_output_probabilities_and_class_weights():
    from vestis.inference.batch import probabilities

    logits, _, _ = _batch()
    kind = probabilities(logits, TAX)
    paper = probabilities(logits, TAX, "paper")
    assert torch.allclose(kind["colour"], logits["colour"].softmax(-1))
    assert torch.allclose(paper["colour"], logits["colour"].sigmoid())
    assert torch.allclose(paper["occasion"], kind["occasion"])
    # single-label weights become per-value BCE pos_weights: negatives / positives of the one-hot targets
    t = {"colour": np.array([0, 0, 0, 1]), "occasion": np.zeros((4, 2), np.int64)}
    m = {"colour": np.ones(4, bool), "occasion": np.ones(4, bool)}
    w = class_weights(TAX, t, m, "inverse", output="paper")["colour"]
    assert w.tolist() == pytest.approx([1 / 3, 3.0, 1.0])  # value 2 never occurs: weight 1
