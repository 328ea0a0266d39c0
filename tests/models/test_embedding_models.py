from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vestis.config import ModelConfig
from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.models import AttributeModel, create_model, list_backbones
from vestis.models.embedding import (
    AttributeEmbedder,
    ConditionalSimilarityNetwork,
    EmbeddingModel,
    as_embedder,
    fixed_disjoint_masks,
)
from vestis.registry import BACKBONES, MODELS

EMBEDDING_MODELS = MODELS.names(task="embedding")
TINY = list_backbones(tiny=True)


def _build(name: str, backbone: str, taxonomy: Taxonomy, **kw: object) -> EmbeddingModel:
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, backbone=backbone, embedding_dim=12, embedding_hidden=16, **kw)
    return create_model(cfg, taxonomy, image_size=64)


def test_the_embedding_models_are_registered() -> None:
    assert {"csn", "csn_fixed", "triplet"} <= set(EMBEDDING_MODELS)
    assert not set(EMBEDDING_MODELS) & set(MODELS.names(task=None))


@pytest.mark.parametrize("name", EMBEDDING_MODELS)
@pytest.mark.parametrize("backbone", TINY)
def test_registry_sweep_forward_backward(
    name: str, backbone: str, taxonomy: Taxonomy, expected_outputs: dict[str, int]
) -> None:
    model = _build(name, backbone, taxonomy)
    assert isinstance(model, EmbeddingModel) and model.kind == name and model.backbone_name == backbone
    model.train()
    x = torch.randn(3, 3, 64, 64)
    out = model(x)
    layout = model.embedding_layout()
    assert [n for n, _ in layout] == taxonomy.names
    emb = out["embeddings"]
    assert list(emb) == taxonomy.names
    assert {k: tuple(v.shape) for k, v in emb.items()} == {n: (3, d) for n, d in layout}
    for v in emb.values():
        assert torch.isfinite(v).all()
        torch.testing.assert_close(v.norm(dim=1), torch.ones(3))
    for k, v in out["logits"].items():
        assert tuple(v.shape) == (3, expected_outputs[k]) and torch.isfinite(v).all()
    flat = model.concat(emb)
    assert flat.shape == (3, sum(d for _, d in layout))
    torch.testing.assert_close(flat.norm(dim=1) ** 2, torch.full((3,), float(len(layout))))
    # a loss on every output reaches every trainable parameter
    loss = sum((v * torch.randn_like(v)).sum() for v in emb.values())
    loss = loss + sum((v**2).mean() for v in out["logits"].values()) + sum(out["penalties"].values(), torch.tensor(0.0))
    if "joint_logits" in out:
        loss = loss + out["joint_logits"].square().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_forward_is_forward_head_after_the_backbone(taxonomy: Taxonomy) -> None:
    model = _build("csn", "resnet18_tiny", taxonomy).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = model.embed(x)
        b = model.forward_head(model.backbone(x))["embeddings"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("columns", "has_logits", "has_joint"), [("multi", True, False), ("single", True, True), ("none", False, False)]
)
def test_recognition_columns(
    columns: str, has_logits: bool, has_joint: bool, taxonomy: Taxonomy, expected_outputs: dict[str, int]
) -> None:
    model = _build("csn", "resnet18_tiny", taxonomy, columns=columns).eval()
    assert isinstance(model, ConditionalSimilarityNetwork)
    with torch.no_grad():
        feats = model.backbone(torch.randn(2, 3, 64, 64))
        out = model.forward_head(feats)
        f = model.global_embedding(feats)
    assert ("joint_logits" in out) is has_joint
    if not has_logits:
        assert out["logits"] == {}
        return
    assert {k: v.shape[1] for k, v in out["logits"].items()} == expected_outputs
    if columns == "multi":
        # one independent linear column per attribute on the un-normalised f(x)
        for col, name in zip(model.recognition, taxonomy.names, strict=True):
            torch.testing.assert_close(out["logits"][name], f @ col.weight.T + col.bias)
    else:
        joint = out["joint_logits"]
        assert joint.shape == (2, sum(expected_outputs.values()))
        torch.testing.assert_close(joint, model.recognition(f))
        torch.testing.assert_close(torch.cat(list(out["logits"].values()), dim=1), joint)


def test_csn_sub_embeddings_by_hand(taxonomy: Taxonomy) -> None:
    model = _build("csn", "resnet18_tiny", taxonomy).eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(2, 3, 64, 64))
        out = model.forward_head(feats)
        f = model.project(feats[model.backbone.last_feature].mean((2, 3)))
        w = model.mask_weight
        for t, name in enumerate(taxonomy.names):
            m = w[t].abs() / w[t].abs().sum()
            u = f / f.norm(dim=1, keepdim=True)
            ref = (u * m) / (u * m).norm(dim=1, keepdim=True)
            torch.testing.assert_close(out["embeddings"][name], ref)
        torch.testing.assert_close(out["penalties"]["embed_norm"], f.norm(dim=1).mean())
        torch.testing.assert_close(out["penalties"]["mask_l1"], w.abs().sum())


def test_learned_mask_initialisation_statistics(taxonomy: Taxonomy) -> None:
    torch.manual_seed(1)
    bb = BACKBONES.build("resnet18_tiny")
    model = ConditionalSimilarityNetwork(bb, taxonomy, embedding_dim=4096)  # 4 x 4096 draws
    w = model.mask_weight.detach().flatten()
    assert abs(w.mean().item() - 0.9) < 0.03
    assert abs(w.var().item() - 0.7) < 0.03
    masks = model.masks()
    assert masks.shape == (4, 4096) and (masks >= 0).all()
    torch.testing.assert_close(masks.sum(dim=1), torch.ones(4))
    assert model.mask_weight.requires_grad


def test_masks_stay_a_distribution_when_weights_go_negative(taxonomy: Taxonomy) -> None:
    model = ConditionalSimilarityNetwork(BACKBONES.build("resnet18_tiny"), taxonomy, embedding_dim=3)
    with torch.no_grad():
        model.mask_weight.copy_(torch.tensor([[-1.0, 2.0, 1.0]] * 4))
    torch.testing.assert_close(model.masks(), torch.tensor([[0.25, 0.5, 0.25]] * 4))


def test_fixed_masks_are_disjoint_blocks_and_not_trainable(taxonomy: Taxonomy) -> None:
    m = fixed_disjoint_masks(3, 8)  # blocks of 2, the last takes the remainder: [0, 2), [2, 4), [4, 8)
    expected = torch.tensor(
        [[0.5, 0.5, 0, 0, 0, 0, 0, 0], [0, 0, 0.5, 0.5, 0, 0, 0, 0], [0, 0, 0, 0, 0.25, 0.25, 0.25, 0.25]]
    )
    torch.testing.assert_close(m, expected)
    model = _build("csn_fixed", "resnet18_tiny", taxonomy)
    masks = model.masks()
    support = masks > 0
    assert (support.sum(dim=0) == 1).all()  # every dimension belongs to exactly one condition
    assert (support.sum(dim=1) == torch.tensor([3, 3, 3, 3])).all()  # 12 // 4
    assert not any("mask" in n for n, _ in model.named_parameters())
    assert "penalties" in (out := model(torch.randn(2, 3, 64, 64))) and set(out["penalties"]) == {"embed_norm"}
    # a condition only sees its own block of f(x)
    with torch.no_grad():
        feats = model.backbone(torch.randn(2, 3, 64, 64))
        out = model.forward_head(feats)
        f = F.normalize(model.global_embedding(feats), dim=1)
        e0 = out["embeddings"]["category"]
    assert (e0[:, 3:] == 0).all()
    torch.testing.assert_close(e0[:, :3], F.normalize(f[:, :3], dim=1))
    with pytest.raises(VestisError, match="embedding_dim"):
        create_model(ModelConfig(name="csn_fixed", backbone="resnet18_tiny", embedding_dim=3), taxonomy)


def test_triplet_network_shares_one_embedding(taxonomy: Taxonomy) -> None:
    model = _build("triplet", "resnet18_tiny", taxonomy).eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(2, 3, 64, 64))
        out = model.forward_head(feats)
        ref = F.normalize(model.global_embedding(feats), dim=1)
    assert model.masks() is None
    for v in out["embeddings"].values():
        torch.testing.assert_close(v, ref)
    assert set(out["penalties"]) == {"embed_norm"}


def test_create_model_passes_the_embedding_config(taxonomy: Taxonomy) -> None:
    cfg = ModelConfig(name="csn", backbone="mobilenetv3_tiny", embedding_dim=20, columns="single", output="paper")
    model = create_model(cfg, taxonomy)
    assert isinstance(model, ConditionalSimilarityNetwork)
    assert model.embedding_dim == 20 and model.columns == "single" and model.output == "paper"
    assert model.mask_weight.shape == (4, 20)
    assert model.project.in_features == model.backbone.info(model.backbone.last_feature).channels


@pytest.mark.parametrize(
    ("field", "value", "match"), [("columns", "double", "model.columns"), ("embedding_dim", 0, "model.embedding_dim")]
)
def test_bad_embedding_config_is_a_clean_error(field: str, value: object, match: str, taxonomy: Taxonomy) -> None:
    with pytest.raises(VestisError, match=match):
        create_model(ModelConfig(name="csn", backbone="resnet18_tiny", **{field: value}), taxonomy)


def test_concat_checks_the_layout(taxonomy: Taxonomy) -> None:
    model = _build("csn", "resnet18_tiny", taxonomy)
    emb = {n: F.normalize(torch.randn(2, 12), dim=1) for n in taxonomy.names}
    torch.testing.assert_close(model.concat(emb), torch.cat([emb[n] for n in taxonomy.names], dim=1))
    with pytest.raises(VestisError, match="missing"):
        model.concat({n: v for n, v in emb.items() if n != "occasion"})
    with pytest.raises(VestisError, match="width"):
        model.concat({**emb, "occasion": torch.zeros(2, 5)})
    # the squared L2 distance over a subset of conditions is sum (2 - 2 <q_t, g_t>)
    other = {n: F.normalize(torch.randn(2, 12), dim=1) for n in taxonomy.names}
    d = (model.concat(emb) - model.concat(other)).square().sum(dim=1)
    ref = sum(2 - 2 * (emb[n] * other[n]).sum(dim=1) for n in taxonomy.names)
    torch.testing.assert_close(d, ref)
    assert math.isclose(float(model.concat(emb).norm(dim=1)[0]) ** 2, 4.0, rel_tol=1e-5)


# --- the attribute-based adapter ----------------------------------------------------------------------------
def _classifier(taxonomy: Taxonomy) -> AttributeModel:
    torch.manual_seed(0)
    cfg = ModelConfig(name="a3", backbone="resnet18_tiny", branch_hidden=16, branch_hidden_overrides={"occasion": 7})
    return create_model(cfg, taxonomy)


def test_attribute_embedder_is_the_branch_activation(taxonomy: Taxonomy) -> None:
    clf = _classifier(taxonomy).eval()
    emb = as_embedder(clf)
    assert isinstance(emb, AttributeEmbedder) and emb.backbone is clf.backbone
    assert emb.embedding_layout() == [("category", 16), ("sleeve.length", 16), ("occasion", 7), ("distressed", 16)]
    # no second copy of the weights: the state dict is the classifier's under one prefix
    assert sorted(emb.state_dict()) == sorted(f"classifier.{k}" for k in clf.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = emb(x)
        fused = clf.forward_features(x)
        logits = clf(x)
    for branch, name in zip(clf.heads.branches, taxonomy.names, strict=True):
        hidden = torch.relu(fused @ branch.fc.weight.T + branch.fc.bias)
        torch.testing.assert_close(out["embeddings"][name], hidden / hidden.norm(dim=1, keepdim=True))
        torch.testing.assert_close(out["logits"][name], logits[name])
    assert out["penalties"] == {}


def test_as_embedder_keeps_embedding_models_and_refuses_others(taxonomy: Taxonomy) -> None:
    model = _build("triplet", "resnet18_tiny", taxonomy)
    assert as_embedder(model) is model
    with pytest.raises(VestisError, match="Linear"):
        as_embedder(torch.nn.Linear(2, 2))


# --- DAtRNet --------------------------------------------------------------------------------------------------
def test_datrnet_heads_by_hand(taxonomy: Taxonomy) -> None:
    model = _build("datrnet", "datrnet_ase_tiny", taxonomy, dropout=0.25).eval()
    assert model.embedding_layout() == [(n, 12) for n in taxonomy.names]
    assert all(h.fc.out_features == 16 and h.drop.p == 0.25 for h in model.heads)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        pooled = model.backbone(x)["ase3"].mean((2, 3))  # (B, 32)
    assert pooled.shape == (2, 32) and out["logits"] == {} and out["penalties"] == {}
    for head, name in zip(model.heads, taxonomy.names, strict=True):
        z = torch.relu(pooled @ head.fc.weight.T + head.fc.bias) @ head.out.weight.T + head.out.bias
        torch.testing.assert_close(out["embeddings"][name], z / z.norm(dim=1, keepdim=True))
    # the attributes have their own heads: their embeddings differ
    assert not torch.allclose(out["embeddings"]["category"], out["embeddings"]["occasion"])


def test_datrnet_on_a_pretrained_family_backbone_on_meta(taxonomy: Taxonomy) -> None:
    with torch.device("meta"):
        model = create_model(ModelConfig(name="datrnet", backbone="efficientnet_lite0", embedding_dim=128), taxonomy)
    assert model.backbone.out_features == ("top",) and model.heads[0].fc.in_features == 1280
    out = model(torch.empty(2, 3, 224, 224, device="meta"))
    assert {k: tuple(v.shape) for k, v in out["embeddings"].items()} == {n: (2, 128) for n in taxonomy.names}


def test_bad_datrnet_config_is_a_clean_error(taxonomy: Taxonomy) -> None:
    for kw, match in (({"embedding_hidden": 0}, "embedding_hidden"), ({"dropout": 1.0}, "dropout")):
        with pytest.raises(VestisError, match=match):
            create_model(ModelConfig(name="datrnet", backbone="resnet18_tiny", **kw), taxonomy)
