import math

import pytest
import torch
import torch.nn.functional as F

from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.losses import (
    EmbeddingLoss,
    MaskedMultiTaskLoss,
    batch_all_triplet,
    batch_hard_triplet,
    triplet_margin_loss,
)

TAX = Taxonomy.from_dict(
    {
        "category_attribute": "category",
        "attributes": [
            {"name": "category", "kind": "single", "values": ["shirt", "jeans"]},
            {"name": "colour", "kind": "single", "values": ["red", "green", "blue"]},
            {"name": "occasion", "kind": "multi", "values": ["casual", "party"]},
        ],
    }
)
WEIGHTS = dict(margin=0.3, embed_reg=5e-3, mask_reg=5e-4, recognition_weight=0.3, retrieval_weight=0.7)


def _unit(b: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g), dim=1).requires_grad_()


def _naive_batch_hard(emb, same, valid, margin, positive_ok=None):
    """Two loops over the rows: the reference the vectorised loss must match."""
    b = emb.shape[0]
    hinges = []
    for i in range(b):
        if not valid[i]:
            continue
        s_ap, s_an = None, None
        for j in range(b):
            if j == i or not valid[j]:
                continue
            s = float(emb[i] @ emb[j])
            if same[i, j] and (positive_ok is None or positive_ok[i, j]):
                s_ap = s if s_ap is None else min(s_ap, s)
            elif not same[i, j]:
                s_an = s if s_an is None else max(s_an, s)
        if s_ap is not None and s_an is not None:
            hinges.append(max(0.0, s_an - s_ap + margin))
    return (sum(hinges) / len(hinges) if hinges else 0.0), len(hinges)


def test_triplet_margin_loss_hand_case():
    # anchor (1, 0), positive (0.6, 0.8), negative (0.8, 0.6): s_ap = 0.6, s_an = 0.8 -> 0.8 - 0.6 + 0.3 = 0.5
    a, p, n = torch.tensor([1.0, 0.0]), torch.tensor([0.6, 0.8]), torch.tensor([0.8, 0.6])
    loss = triplet_margin_loss((a @ p)[None], (a @ n)[None], 0.3)
    assert loss.item() == pytest.approx(0.5)
    # positive and negative swapped: 0.6 - 0.8 + 0.3 = 0.1; a margin of 0.1 makes it 0
    assert triplet_margin_loss((a @ n)[None], (a @ p)[None], 0.3).item() == pytest.approx(0.1)
    assert triplet_margin_loss((a @ n)[None], (a @ p)[None], 0.1).item() == pytest.approx(0.0, abs=1e-7)
    # the mean over triplets
    both = triplet_margin_loss(torch.tensor([0.6, 0.8]), torch.tensor([0.8, 0.6]), 0.3)
    assert both.item() == pytest.approx((0.5 + 0.1) / 2)


def test_batch_hard_three_points_by_hand():
    # rows 0 and 1 share a value, row 2 differs; every row is unit norm
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]], requires_grad=True)
    codes = torch.tensor([0, 0, 1])
    same = codes[:, None] == codes[None, :]
    loss, n = batch_hard_triplet(emb, same, torch.ones(3, dtype=torch.bool), 0.3)
    # anchor 0: 0.8 - 0.6 + 0.3 = 0.5; anchor 1: s(1,2) = 0.96, s(1,0) = 0.6 -> 0.66; row 2 has no positive
    assert int(n) == 2
    assert loss.item() == pytest.approx((0.5 + 0.66) / 2)


@pytest.mark.parametrize("seed", range(5))
def test_batch_hard_matches_naive_loops(seed):
    g = torch.Generator().manual_seed(seed)
    b = 12
    emb = _unit(b, 5, seed)
    codes = torch.randint(0, 3, (b,), generator=g)
    same = codes[:, None] == codes[None, :]
    valid = torch.rand(b, generator=g) > 0.25
    cat = torch.randint(0, 2, (b,), generator=g)
    for positive_ok in (None, cat[:, None] == cat[None, :]):
        loss, n = batch_hard_triplet(emb, same, valid, 0.2, positive_ok=positive_ok)
        ref, n_ref = _naive_batch_hard(emb.detach(), same, valid, 0.2, positive_ok)
        assert int(n) == n_ref
        assert loss.item() == pytest.approx(ref, abs=1e-6)


def test_batch_hard_without_valid_anchor_is_zero_with_gradient():
    emb = _unit(4, 3, 0)
    same = torch.ones(4, 4, dtype=torch.bool)  # one value only: no negative anywhere
    loss, n = batch_hard_triplet(emb, same, torch.ones(4, dtype=torch.bool), 0.3)
    assert int(n) == 0 and loss.item() == 0.0 and not math.copysign(1.0, loss.item()) < 0
    loss.backward()
    assert emb.grad is not None and torch.equal(emb.grad, torch.zeros_like(emb))


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b = 8
    targets = {
        "category": torch.tensor([0, 0, 1, 1, 0, 1, -1, 0]),
        "colour": torch.tensor([0, 1, 0, 2, 1, -1, 0, 0]),
        "occasion": torch.tensor([[1, 0], [1, 1], [1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]]).float(),
    }
    masks = {
        "category": targets["category"] >= 0,
        "colour": targets["colour"] >= 0,
        "occasion": targets["occasion"].sum(1) > 0,
    }
    outputs = {
        "embeddings": {n: _unit(b, 4, seed + i) for i, n in enumerate(TAX.names)},
        "logits": {a.name: torch.randn(b, a.num_values, generator=g, requires_grad=True) for a in TAX},
        "penalties": {"embed_norm": torch.tensor(2.5, requires_grad=True), "mask_l1": torch.tensor(40.0)},
    }
    return outputs, targets, masks


def _same(t: torch.Tensor) -> torch.Tensor:
    # naive: compare the rows element by element
    return torch.tensor([[bool(torch.equal(t[i], t[j])) for j in range(len(t))] for i in range(len(t))])


def test_embedding_loss_weights_applied_exactly():
    outputs, targets, masks = _batch()
    losses = EmbeddingLoss(TAX, **WEIGHTS)(outputs, targets, masks)
    names = TAX.names
    assert set(losses) == (
        {f"triplet/{n}" for n in names}
        | {f"recognition/{n}" for n in names}
        | {"penalty/embed_norm", "penalty/mask_l1"}
    )
    for n in names:
        ref, _ = _naive_batch_hard(outputs["embeddings"][n].detach(), _same(targets[n]), masks[n], 0.3)
        assert losses[f"triplet/{n}"].item() == pytest.approx(0.7 * ref, abs=1e-6)
    rec = MaskedMultiTaskLoss(TAX)(outputs["logits"], targets, masks)
    for n in names:
        assert losses[f"recognition/{n}"].item() == pytest.approx(0.3 * rec[n].item(), rel=1e-6)
    assert losses["penalty/embed_norm"].item() == pytest.approx(0.7 * 5e-3 * 2.5)
    assert losses["penalty/mask_l1"].item() == pytest.approx(0.7 * 5e-4 * 40.0)


def test_multi_label_same_value_is_the_whole_vector():
    # rows 0, 1 share "casual" but not the whole set: not positives of each other; rows 0, 2 are
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    tax = Taxonomy.from_dict({"attributes": [{"name": "occasion", "kind": "multi", "values": ["casual", "party"]}]})
    t = {"occasion": torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])}
    m = {"occasion": torch.ones(3, dtype=torch.bool)}
    out = {"embeddings": {"occasion": emb}, "logits": {}}
    losses = EmbeddingLoss(tax, **WEIGHTS)(out, t, m)
    # anchor 0: s_ap = s(0, 2) = 0, s_an = s(0, 1) = 1 -> 1.3; anchor 2: s_ap = 0, s_an = s(2, 1) = 0 -> 0.3
    assert losses["triplet/occasion"].item() == pytest.approx(0.7 * (1.3 + 0.3) / 2)
    assert set(losses) == {"triplet/occasion"}  # no recognition head, no penalties


def test_masked_rows_are_ignored():
    outputs, targets, masks = _batch()
    loss_fn = EmbeddingLoss(TAX, **WEIGHTS)
    before = loss_fn(outputs, targets, masks)
    # rewrite the embedding and the label of every row unlabelled in colour
    hidden = ~masks["colour"]
    emb = outputs["embeddings"]["colour"].detach().clone()
    emb[hidden] = F.normalize(torch.randn(int(hidden.sum()), 4), dim=1)
    outputs["embeddings"]["colour"] = emb
    targets = dict(targets, colour=torch.where(hidden, torch.tensor(2), targets["colour"]))
    after = loss_fn(outputs, targets, masks)
    assert after["triplet/colour"].item() == pytest.approx(before["triplet/colour"].item(), abs=1e-7)


def test_same_category_restricts_positives():
    outputs, targets, masks = _batch(1)
    losses = EmbeddingLoss(TAX, same_category="category", **WEIGHTS)(outputs, targets, masks)
    cat, cv = targets["category"], masks["category"]
    ok = (cat[:, None] == cat[None, :]) & cv[:, None] & cv[None, :]
    for n in TAX.names:
        ref, _ = _naive_batch_hard(outputs["embeddings"][n].detach(), _same(targets[n]), masks[n], 0.3, ok)
        assert losses[f"triplet/{n}"].item() == pytest.approx(0.7 * ref, abs=1e-6)
    # the option changes the colour loss on this batch (rows 0 and 2 share colour but not category)
    plain = EmbeddingLoss(TAX, **WEIGHTS)(outputs, targets, masks)
    assert plain["triplet/colour"].item() != pytest.approx(losses["triplet/colour"].item(), abs=1e-6)
    with pytest.raises(VestisError, match="same_category"):
        EmbeddingLoss(TAX, same_category="fabric", **WEIGHTS)


def test_joint_logits_cross_entropy_over_every_value():
    outputs, targets, masks = _batch(2)
    g = torch.Generator().manual_seed(3)
    joint = torch.randn(8, 7, generator=g, requires_grad=True)  # category 2 + colour 3 + occasion 2
    outputs["joint_logits"] = joint
    cw = {"category": torch.tensor([1.0, 2.0]), "colour": torch.tensor([0.5, 1.0, 3.0]), "occasion": torch.ones(2)}
    losses = EmbeddingLoss(TAX, class_weights=cw, **WEIGHTS)(outputs, targets, masks)
    w = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0, 1.0])
    z = joint.detach()
    for name, offset in (("category", 0), ("colour", 2)):
        rows = [i for i in range(8) if masks[name][i]]
        terms = [float(-F.log_softmax(z[i], 0)[offset + targets[name][i]]) * float(w[offset + targets[name][i]])
                 for i in rows]  # fmt: skip
        assert losses[f"recognition/{name}"].item() == pytest.approx(0.3 * sum(terms) / len(rows), rel=1e-5)
    keep = masks["occasion"]
    ref = F.binary_cross_entropy_with_logits(z[keep, 5:7], targets["occasion"][keep])
    assert losses["recognition/occasion"].item() == pytest.approx(0.3 * ref.item(), rel=1e-5)
    outputs["joint_logits"] = joint[:, :6]
    with pytest.raises(VestisError, match="joint_logits"):
        EmbeddingLoss(TAX, **WEIGHTS)(outputs, targets, masks)


def test_unlabelled_batch_still_has_gradients():
    outputs, targets, masks = _batch()
    masks = {k: torch.zeros_like(v) for k, v in masks.items()}
    outputs["penalties"] = {}
    losses = EmbeddingLoss(TAX, **WEIGHTS)(outputs, targets, masks)
    total = sum(losses.values())
    assert total.item() == 0.0
    total.backward()
    for n in TAX.names:
        grad = outputs["embeddings"][n].grad
        assert grad is not None and torch.equal(grad, torch.zeros_like(grad))


def test_unknown_penalty_is_an_error():
    outputs, targets, masks = _batch()
    outputs["penalties"]["orthogonality"] = torch.tensor(1.0)
    with pytest.raises(VestisError, match="orthogonality"):
        EmbeddingLoss(TAX, **WEIGHTS)(outputs, targets, masks)


def _naive_batch_all(emb, same, valid, margin, positive_ok=None):
    """Three loops: every (anchor, positive, negative) of the batch, the hinge averaged over the positive ones."""
    b = emb.shape[0]
    hinges = []
    for i in range(b):
        for j in range(b):
            if i == j or not (valid[i] and valid[j] and same[i, j]):
                continue
            if positive_ok is not None and not positive_ok[i, j]:
                continue
            for k in range(b):
                if k in (i, j) or not valid[k] or same[i, k]:
                    continue
                h = float(emb[i] @ emb[k]) - float(emb[i] @ emb[j]) + margin
                if h > 0:
                    hinges.append(h)
    return (sum(hinges) / len(hinges) if hinges else 0.0), len(hinges)


def test_batch_all_three_points_by_hand():
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]], requires_grad=True)
    codes = torch.tensor([0, 0, 1])
    same = codes[:, None] == codes[None, :]
    loss, n = batch_all_triplet(emb, same, torch.ones(3, dtype=torch.bool), 0.3)
    # the same two triplets as batch-hard here: (0, 1, 2) costs 0.5 and (1, 0, 2) costs 0.66
    assert int(n) == 2 and loss.item() == pytest.approx((0.5 + 0.66) / 2)
    # a satisfied triplet is left out of the mean: with margin 0 only (0, 1, 2) (0.2) and (1, 0, 2) (0.36) are active
    loss, n = batch_all_triplet(emb, same, torch.ones(3, dtype=torch.bool), 0.0)
    assert int(n) == 2 and loss.item() == pytest.approx((0.2 + 0.36) / 2)


@pytest.mark.parametrize("seed", range(4))
def test_batch_all_matches_naive_loops(seed):
    g = torch.Generator().manual_seed(seed)
    b = 10
    emb = _unit(b, 4, seed)
    codes = torch.randint(0, 3, (b,), generator=g)
    same = codes[:, None] == codes[None, :]
    valid = torch.rand(b, generator=g) > 0.2
    cat = torch.randint(0, 2, (b,), generator=g)
    for positive_ok in (None, cat[:, None] == cat[None, :]):
        loss, n = batch_all_triplet(emb, same, valid, 0.2, positive_ok=positive_ok)
        ref, n_ref = _naive_batch_all(emb.detach(), same, valid, 0.2, positive_ok)
        assert int(n) == n_ref
        assert loss.item() == pytest.approx(ref, abs=1e-6)
    loss.backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_embedding_loss_mining_option():
    full, targets, masks = _batch(1)
    emb = full["embeddings"]
    outputs = {"embeddings": emb, "logits": {}, "penalties": {}}
    hard = EmbeddingLoss(TAX, **WEIGHTS)(outputs, targets, masks)
    every = EmbeddingLoss(TAX, **WEIGHTS, mining="batch_all")(outputs, targets, masks)
    for name in TAX.names:
        e = emb[name].detach()
        ref, _ = _naive_batch_all(e, _same(targets[name]), masks[name], WEIGHTS["margin"])
        assert every[f"triplet/{name}"].item() == pytest.approx(WEIGHTS["retrieval_weight"] * ref, abs=1e-6)
    assert any(abs(hard[k].item() - every[k].item()) > 1e-6 for k in hard)
    with pytest.raises(VestisError, match=r"train\.mining"):
        EmbeddingLoss(TAX, **WEIGHTS, mining="semi_hard")
