"""Training an embedding model through the one loop: P x K batches, named losses, triplet-accuracy selection."""

import json

import numpy as np
import pytest
import torch

import vestis
from vestis.config import load_config
from vestis.data.catalog import load_catalog
from vestis.data.dataset import AttributeDataset, EncodedTargets
from vestis.data.splits import split_manifest
from vestis.data.synthetic import generate_catalog
from vestis.data.transforms import prepare_batch
from vestis.data.triplets import build_condition_triplets, value_codes
from vestis.errors import VestisError
from vestis.eval.retrieval import triplet_accuracy
from vestis.losses import EmbeddingLoss
from vestis.train.checkpoint import load_checkpoint
from vestis.train.loop import train
from vestis.train.tasks import model_task

QUIET = {"progress": False, "log": lambda *_: None}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_catalog(root, n=96, size=48, seed=2)
    return root / "manifest.csv"


def _cfg(*extra):
    return load_config(
        "tiny",
        [
            "data.image_size=48",
            "data.augment.enabled=false",
            "model.name=csn",
            "model.embedding_dim=16",
            "train.pk_values=4",
            "train.pk_images=2",
            *extra,
        ],
    )


def _val_embeddings(model, catalog):
    cfg = model.config
    m, taxonomy = load_catalog(catalog)
    val = split_manifest(m, val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction, seed=0)["val"]
    ds = AttributeDataset(val, taxonomy, cfg.data)
    x = prepare_batch(torch.stack([ds[i]["image"] for i in range(len(ds))]), cfg.data)
    with torch.no_grad():
        emb = model.eval().embed(x)
    return {k: v.numpy() for k, v in emb.items()}, value_codes(taxonomy, ds.encoded)


def test_registered_embedding_models_are_trained_as_embedding_tasks():
    assert {model_task(n) for n in ("csn", "csn_fixed", "triplet", "datrnet")} == {"embedding"}
    assert model_task("baseline") == "classification"


def test_csn_trains_with_named_losses_and_selects_by_triplet_accuracy(catalog, tmp_path):
    result = train(_cfg("train.epochs=3"), catalog, tmp_path / "run", **QUIET)
    assert result.metric == "triplet_accuracy"
    first, last = result.history[0]["train"], result.history[-1]["train"]
    # the loop logged every named loss: one triplet and one recognition term per attribute, and both penalties
    _, taxonomy = load_catalog(catalog)
    for a in taxonomy.names:
        assert f"triplet/{a}" in first and f"recognition/{a}" in first
    assert "penalty/embed_norm" in first and "penalty/mask_l1" in first
    assert last["loss"] < first["loss"]
    # P x K batches: steps per epoch = ceil(train rows / (P * K))
    n_train = len(split_manifest(load_catalog(catalog)[0], val_fraction=0.1, test_fraction=0.1, seed=0)["train"])
    assert result.history[0]["step"] == int(np.ceil(n_train / 8))
    # the best checkpoint's stored metric is the triplet accuracy recomputed from its own embeddings
    best = vestis.load(result.best)
    emb, codes = _val_embeddings(best, catalog)
    acc = triplet_accuracy(emb, build_condition_triplets(codes, seed=0))["overall"]
    assert acc == pytest.approx(result.best_metric, abs=1e-6)
    assert best.metrics["summary"]["triplet_accuracy"] == pytest.approx(result.best_metric)
    assert "mean_recall@5" in best.metrics["summary"] and "mean_micro_f1" in best.metrics["summary"]
    assert json.loads((tmp_path / "run" / "history.json").read_text())[-1]["val"]["triplet_accuracy"] is not None


@pytest.mark.parametrize("name", ["csn", "csn_fixed", "triplet", "datrnet"])
def test_each_embedding_model_fits_a_batch_with_its_named_losses(catalog, name):
    """Model + EmbeddingLoss can learn: 120 steps on one batch drive the triplet losses of an attribute-aware model
    towards zero and order (almost) all of the batch's triplets (at initialisation about half are). The
    attribute-unaware triplet network cannot satisfy ten conditions with one embedding: it only improves."""
    extra = ["model.embedding_dim=64", "model.columns=none", "model.dropout=0"]
    if name == "datrnet":
        extra += ["model.backbone=datrnet_ase_tiny", "model.embedding_dim=32"]
    cfg = _cfg(f"model.name={name}", *extra)
    m, taxonomy = load_catalog(catalog)
    ds = AttributeDataset(m, taxonomy, cfg.data)
    idx = list(range(24))
    x = prepare_batch(torch.stack([ds[i]["image"] for i in idx]), cfg.data)
    targets = {k: torch.as_tensor(v[idx]) for k, v in ds.encoded.targets.items()}
    masks = {k: torch.as_tensor(v[idx]) for k, v in ds.encoded.masks.items()}
    torch.manual_seed(0)
    # training mode throughout (batch statistics): an untrained BatchNorm's running statistics are not the batch's
    model = vestis.models.create_model(cfg.model, taxonomy, image_size=48)
    loss_fn = EmbeddingLoss(taxonomy, margin=0.3, embed_reg=5e-3, mask_reg=5e-4, recognition_weight=0.3,
                            retrieval_weight=0.7)  # fmt: skip
    codes = value_codes(taxonomy, EncodedTargets({k: v[idx] for k, v in ds.encoded.targets.items()},
                                                 {k: v[idx] for k, v in ds.encoded.masks.items()}))  # fmt: skip
    triplets = build_condition_triplets(codes, seed=0)

    def accuracy():
        with torch.no_grad():
            return triplet_accuracy({k: v.numpy() for k, v in model.embed(x).items()}, triplets)["overall"]

    before = accuracy()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(120):
        losses = loss_fn(model(x), targets, masks)
        triplet = float(sum(v.detach() for k, v in losses.items() if k.startswith("triplet/")))
        first = triplet if first is None else first
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    if name == "triplet":
        assert accuracy() > before + 0.2, (before, accuracy())
    else:
        assert triplet < 0.2 * first, (first, triplet)
        assert accuracy() > 0.95, (before, accuracy())


def test_resume_is_exact_for_an_embedding_model(catalog, tmp_path):
    full = train(_cfg("train.epochs=2"), catalog, tmp_path / "full", **QUIET)
    train(_cfg("train.epochs=1"), catalog, tmp_path / "split", **QUIET)
    resumed = train(_cfg("train.epochs=2"), catalog, tmp_path / "split", resume=True, **QUIET)
    a, b = load_checkpoint(full.last), load_checkpoint(resumed.last)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_cached_trunk_trains_an_embedding_model(catalog, tmp_path):
    cfg = _cfg("train.epochs=2", "train.trainable_blocks=1", "train.cache_features=true", "model.name=triplet")
    result = train(cfg, catalog, tmp_path / "run", **QUIET)
    assert result.best_metric is not None and 0.0 <= result.best_metric <= 1.0
    # the checkpoint is the ordinary model: its embeddings from images reproduce the cached validation score
    emb, codes = _val_embeddings(vestis.load(result.best), catalog)
    acc = triplet_accuracy(emb, build_condition_triplets(codes, seed=0))["overall"]
    assert acc == pytest.approx(result.best_metric, abs=0.02)  # float16 cache


def test_unknown_same_category_attribute_is_a_clear_error(catalog, tmp_path):
    with pytest.raises(VestisError, match=r"train\.same_category"):
        train(_cfg("train.epochs=1", "train.same_category=nope"), catalog, tmp_path / "run", **QUIET)
