"""Stage-2 models: every registered one builds, runs forward/backward on CPU and learns a tiny batch."""

from __future__ import annotations

import pytest
import torch

from vestis.errors import VestisError
from vestis.losses.hierarchical import HierarchicalLoss
from vestis.models.hierarchical import STAGE2_MODELS, STLHLSModel, STLModel, build_stage2_model
from vestis.registry import MODELS

C, A, NT = 5, 7, 4


def _build(name: str, **kwargs: object) -> torch.nn.Module:
    # the full-size names keep their architecture but run on the tiny backbone so the sweep stays fast
    if not STAGE2_MODELS.meta(name)["tiny"]:
        kwargs.setdefault("backbone", "mobilenetv3_tiny")
    return build_stage2_model(name, num_categories=C, num_attributes=A, num_object_types=NT, **kwargs)


def test_registry_holds_three_families_with_tiny_variants() -> None:
    names = set(STAGE2_MODELS)
    assert {"stl", "stl_hls", "rnn_va"} <= names
    assert {f"{n}_tiny" for n in ("stl", "stl_hls", "rnn_va")} <= set(STAGE2_MODELS.names(tiny=True))
    assert not names & set(MODELS)  # the classifier listing is untouched


@pytest.mark.parametrize("name", list(STAGE2_MODELS))
def test_forward_backward_shapes(name: str) -> None:
    torch.manual_seed(0)
    model = _build(name)
    images = torch.randn(3, 3, 64, 64)
    out = model(images, object_types=torch.tensor([0, 3, -1]), categories=torch.tensor([1, -1, 4]))
    assert out["category"].shape == (3, C)
    assert out["attributes"].shape == (3, A)
    if name.startswith("rnn_va"):
        assert out["attention"].shape == (3, 2, 2, 2)  # stride 32 on 64 px
    losses = HierarchicalLoss()(out, {"category": torch.tensor([1, 2, -1]), "attributes": torch.ones(3, A)})
    assert set(losses) == {"category", "attributes"}
    sum(losses.values()).backward()
    for pname, p in model.named_parameters():
        assert torch.isfinite(p.grad).all() if p.grad is not None else True, pname
    assert all(torch.isfinite(v).all() for v in out.values())
    # the backbone and both heads receive gradient
    assert model.backbone.feature_info and any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters()
    )
    heads = [m for n, m in model.named_children() if n in {"category_head", "attribute_head"}]
    assert len(heads) == 2 and all(any(p.grad.abs().sum() > 0 for p in h.parameters()) for h in heads)


def test_stl_separate_trunks_share_no_weights_but_start_equal() -> None:
    torch.manual_seed(0)
    shared = _build("stl_tiny")
    separate = _build("stl_tiny", shared_backbone=False)
    assert shared.attribute_backbone is None
    assert separate.attribute_backbone is not None
    a, b = separate.backbone, separate.attribute_backbone
    assert all(
        torch.equal(p, q) and p.data_ptr() != q.data_ptr() for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )
    out = separate(torch.randn(2, 3, 32, 32))
    out["attributes"].sum().backward()
    assert all(p.grad is None for p in separate.backbone.parameters())  # attribute loss: its own trunk only
    assert any(p.grad is not None for p in separate.attribute_backbone.parameters())


def test_hls_object_type_changes_category_and_teacher_forcing_feeds_truth() -> None:
    torch.manual_seed(0)
    model = _build("stl_hls_tiny").eval()
    with torch.no_grad():
        model.object_type_embedding.table.weight.normal_(0, 5)
    images = torch.randn(1, 3, 32, 32).repeat(2, 1, 1, 1)
    with torch.no_grad():
        out = model(images, object_types=torch.tensor([0, 2]))
    assert not torch.allclose(out["category"][0], out["category"][1])
    pred = out["category"].argmax(1)
    assert torch.equal(out["shared_category"], pred)
    truth = (pred + 1) % C
    model.train()
    out = model(images, categories=torch.tensor([int(truth[0]), -1]))
    assert int(out["shared_category"][0]) == int(truth[0])
    assert int(out["shared_category"][1]) == int(out["category"][1].argmax())
    model.teacher_forcing = False
    out = model(images, categories=torch.tensor([int(truth[0]), -1]))
    assert torch.equal(out["shared_category"], out["category"].detach().argmax(1))


def test_hls_attribute_logits_depend_on_shared_category() -> None:
    torch.manual_seed(0)
    model = _build("stl_hls_tiny").train()
    images = torch.randn(2, 3, 32, 32)
    one = model(images, categories=torch.tensor([0, 1]))
    two = model(images, categories=torch.tensor([2, 1]))
    assert torch.equal(one["category"], two["category"])
    assert torch.equal(one["attributes"][1], two["attributes"][1])
    assert not torch.allclose(one["attributes"][0], two["attributes"][0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"object_types": torch.tensor([0, 4])}, "object_types"),
        ({"object_types": torch.tensor([0.0, 1.0])}, "object_types"),
        ({"categories": torch.tensor([0, 1, 2])}, "categories"),
        ({"categories": torch.tensor([-2, 0])}, "categories"),
    ],
)
def test_bad_labels_are_vestis_errors(kwargs: dict[str, torch.Tensor], match: str) -> None:
    model = _build("rnn_va_tiny")
    with pytest.raises(VestisError, match=match):
        model(torch.randn(2, 3, 32, 32), **kwargs)


def test_bad_sizes_and_inputs_are_vestis_errors() -> None:
    with pytest.raises(VestisError, match="num_categories"):
        build_stage2_model("stl_tiny", num_categories=0, num_attributes=3)
    with pytest.raises(VestisError, match="backbone"):
        STLModel(torch.nn.Linear(2, 2), num_categories=2, num_attributes=2)  # type: ignore[arg-type]
    with pytest.raises(VestisError, match="unknown stage-2 model"):
        build_stage2_model("nope", num_categories=2, num_attributes=2)
    with pytest.raises(VestisError, match="tensor"):
        build_stage2_model("stl_tiny", num_categories=2, num_attributes=2)("shirt.jpg")


@pytest.mark.parametrize("name", ["stl_tiny", "stl_hls_tiny", "rnn_va_tiny"])
def test_a_few_steps_reduce_the_loss(name: str) -> None:
    torch.manual_seed(0)
    model = _build(name)
    images = torch.randn(8, 3, 32, 32)
    targets = {
        "category": torch.tensor([0, 1, 2, 3, 4, 0, 1, -1]),
        "attributes": torch.randint(0, 2, (8, A)).float(),
    }
    targets["attributes"][0, :3] = -1
    types = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = HierarchicalLoss()
    first = None
    for _ in range(15):
        loss = sum(loss_fn(model(images, types, targets["category"]), targets).values())
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # still in training mode: 15 steps leave BatchNorm's running statistics far behind
        final = float(sum(loss_fn(model(images, types, targets["category"]), targets).values()))
    assert final < 0.7 * first


def test_hls_subclass_of_stl() -> None:
    assert issubclass(STLHLSModel, STLModel)
