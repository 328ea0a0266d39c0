"""`vestis train --task stage2`: stage-2 models (stl, stl_hls, rnn_va) on a manifest of garment crops."""

import csv
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import vestis
from vestis.config import load_config
from vestis.data.dataset import AttributeDataset
from vestis.data.detection import object_type
from vestis.data.synthetic import generate_catalog
from vestis.data.taxonomy import Attribute, Taxonomy, load_taxonomy, save_taxonomy
from vestis.errors import VestisError
from vestis.inference.predictor import Predictor
from vestis.losses.hierarchical import HierarchicalLoss
from vestis.models.hierarchical import Stage2Layout
from vestis.train.loop import train
from vestis.train.stage2_task import Stage2Loss, Stage2Task

QUIET = {"progress": False, "log": lambda *_: None}
OBJECT_TYPES = ("upper-body", "lower-body", "full-body", "footwear")


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    """The synthetic product shots as crops, each with the object type of its category in meta_object_type."""
    root = tmp_path_factory.mktemp("crops")
    generate_catalog(root, n=48, size=48, seed=2)
    tax = load_taxonomy(root / "taxonomy.yaml")
    parent = {c: p for p, cs in tax.hierarchy.items() for c in cs}
    save_taxonomy(dataclasses.replace(tax, metadata=(*tax.metadata, "object_type")), root / "crops_taxonomy.yaml")
    rows = list(csv.DictReader((root / "manifest.csv").open()))
    with (root / "crops.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*rows[0], "meta_object_type"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "meta_object_type": object_type(parent.get(r["category"], "")) or ""})
    return root / "crops.csv", root / "crops_taxonomy.yaml"


def _tax():
    return Taxonomy(
        (
            Attribute("category", "single", ("shirt", "skirt")),
            Attribute("sleeve", "single", ("long", "short"), applies_to=("shirt",)),
            Attribute("colour", "multi", ("red", "blue", "green")),
        ),
        category_attribute="category",
    )


def test_layout_flattens_blocks_and_allowed_follows_applies_to():
    lay = Stage2Layout.from_taxonomy(_tax(), OBJECT_TYPES)
    assert lay.categories == ("shirt", "skirt")
    assert lay.attributes == (("sleeve", "long"), ("sleeve", "short"), ("colour", "red"), ("colour", "blue"),
                              ("colour", "green"))  # fmt: skip
    assert lay.blocks == {"sleeve": slice(0, 2), "colour": slice(2, 5)}
    np.testing.assert_array_equal(lay.allowed, [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    targets = {"category": torch.tensor([1, 0, 0]), "sleeve": torch.tensor([1, 0, 0]),
               "colour": torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 0]])}  # fmt: skip
    masks = {"category": torch.tensor([True, True, False]), "sleeve": torch.tensor([False, True, True]),
             "colour": torch.tensor([True, False, True])}  # fmt: skip
    torch.testing.assert_close(
        lay.flat_targets(targets, masks),
        torch.tensor([[-1.0, -1, 1, 0, 1], [1, 0, -1, -1, -1], [1, 0, 0, 1, 0]]),
    )
    torch.testing.assert_close(lay.category_targets(targets, masks), torch.tensor([1, 0, -1]))
    assert lay.object_type_index("footwear") == 3 and lay.object_type_index("hat") == -1
    assert lay.object_type_index(None) == -1
    split = lay.split(np.arange(10.0).reshape(2, 5))
    np.testing.assert_array_equal(split["colour"], [[2, 3, 4], [7, 8, 9]])


def test_layout_refuses_a_taxonomy_without_category():
    with pytest.raises(VestisError, match="category_attribute"):
        Stage2Layout.from_taxonomy(Taxonomy((Attribute("colour", "single", ("a", "b")),)), OBJECT_TYPES)


def test_stage2_loss_is_the_hierarchical_loss_of_the_flat_targets():
    lay = Stage2Layout.from_taxonomy(_tax(), OBJECT_TYPES)
    torch.manual_seed(0)
    out = {"category": torch.randn(2, 2), "attributes": torch.randn(2, 5)}
    targets = {"category": torch.tensor([0, 1]), "sleeve": torch.tensor([1, 0]),
               "colour": torch.tensor([[0.0, 1, 1], [1, 0, 0]])}  # fmt: skip
    masks = {"category": torch.tensor([True, True]), "sleeve": torch.tensor([True, False]),
             "colour": torch.tensor([True, True])}  # fmt: skip
    got = Stage2Loss(lay)(out, targets, masks)
    flat = torch.tensor([[0.0, 1, 0, 1, 1], [-1, -1, 1, 0, 0]])
    want = HierarchicalLoss()(out, {"category": torch.tensor([0, 1]), "attributes": flat})
    for k in ("category", "attributes"):
        torch.testing.assert_close(got[k], want[k])
    keep = flat >= 0  # by hand: the BCE over the 8 labelled entries
    p = out["attributes"][keep].sigmoid()
    t = flat[keep]
    torch.testing.assert_close(got["attributes"], -(t * p.log() + (1 - t) * (1 - p).log()).mean())


@pytest.mark.parametrize("name", ["stl_tiny", "stl_hls_tiny", "rnn_va_tiny"])
def test_train_a_stage2_model_on_crops(crops, tmp_path, name):
    manifest, taxonomy = crops
    cfg = load_config("tiny", [f"model.name={name}", "model.backbone=mobilenetv3_tiny", "data.image_size=48",
                               "train.epochs=2"])  # fmt: skip
    result = train(cfg, manifest, tmp_path / "run", taxonomy=taxonomy, **QUIET)
    assert result.metric == "stage2_score"
    val = result.history[-1]["val"]
    assert {"category_top1", "category_top5", "attribute_recall@3", "attribute_map", "incompatible_rate"} <= set(val)
    parts = [v for v in (val["category_top1"], val["attribute_map"]) if v is not None]
    assert val["stage2_score"] == pytest.approx(np.mean(parts))
    model = vestis.load(result.best)
    assert model.layout.category == "category" and model.layout.object_types == OBJECT_TYPES
    out = model(torch.zeros(2, 3, 48, 48), object_types=torch.tensor([0, 3]))
    assert out["category"].shape == (2, len(model.layout.categories))
    assert out["attributes"].shape == (2, model.layout.num_attributes)
    if name.startswith("rnn_va"):
        assert out["attention"].shape[:2] == (2, 2)
    with pytest.raises(VestisError, match="outfit pipeline"):  # not an attribute classifier on its own
        Predictor.from_path(result.best)


def test_object_types_come_from_the_manifest_and_validation_is_exact(crops):
    manifest, taxonomy_path = crops
    from vestis.data.catalog import load_catalog

    m, taxonomy = load_catalog(manifest, taxonomy_path)
    cfg = load_config("tiny", ["model.name=stl_tiny", "data.image_size=48"]).resolved()
    ds = AttributeDataset(m, taxonomy, cfg.data)
    task = Stage2Task(cfg, taxonomy, ds, ds)
    lay = task.layout
    want = [lay.object_type_index(r.meta.get("object_type")) for r in m.records]
    assert task.train_types.tolist() == want and min(want) >= 0

    class Oracle(nn.Module):  # logits that rank every true label first
        def forward(self, x, object_types=None):
            n = len(x)
            idx = self.seen + torch.arange(n)
            self.seen += n
            enc = ds.encoded
            t = {a: torch.as_tensor(enc.targets[a])[idx] for a in enc.targets}
            mk = {a: torch.as_tensor(enc.masks[a])[idx] for a in enc.masks}
            cat = lay.category_targets(t, mk).clamp(min=0)
            flat = lay.flat_targets(t, mk).clamp(min=0)
            return {"category": torch.nn.functional.one_hot(cat, len(lay.categories)) * 10.0,
                    "attributes": flat * 20.0 - 10.0}  # fmt: skip

    oracle = Oracle()
    oracle.seen = 0
    loader = torch.utils.data.DataLoader(ds, batch_size=7)
    s = task.validate(oracle, None, loader, None, torch.device("cpu")).metrics["summary"]
    assert s["category_top1"] == pytest.approx(1.0) and s["attribute_map"] == pytest.approx(1.0)
    assert s["stage2_score"] == pytest.approx(1.0)


def test_taxonomy_loader_keeps_the_object_type_metadata(crops):
    _, taxonomy = crops
    assert "object_type" in load_taxonomy(taxonomy).metadata


def test_evaluate_a_stage2_checkpoint_against_a_direct_pass(crops, tmp_path):
    from collections import Counter

    from vestis.data.catalog import load_catalog
    from vestis.data.splits import split_manifest
    from vestis.data.transforms import prepare_batch
    from vestis.eval.hierarchical import evaluate_stage2
    from vestis.eval.run import evaluate_checkpoint

    manifest, taxonomy = crops
    cfg = load_config("tiny", ["model.name=stl_hls_tiny", "data.image_size=48", "train.epochs=1",
                               "data.test_fraction=0.3"])  # fmt: skip
    result = train(cfg, manifest, tmp_path / "run", taxonomy=taxonomy, **QUIET)
    ev = evaluate_checkpoint(result.best, manifest, tmp_path / "ev", taxonomy=taxonomy, split="test", workers=0)
    assert ev.kind == "stage2" and (tmp_path / "ev" / "metrics.json").is_file()
    assert "majority reference" in (tmp_path / "ev" / "report.md").read_text()

    m, tax = load_catalog(manifest, taxonomy)
    parts = split_manifest(m, val_fraction=0.1, test_fraction=0.3, seed=0)
    counts = Counter(r.labels["category"][0] for r in parts["train"].records if "category" in r.labels)
    (top, n1), (_, n2) = counts.most_common(2)
    assert n1 > n2  # a unique majority category, so the reference's top-1 is defined by hand
    test_cats = [r.labels["category"][0] for r in parts["test"].records if "category" in r.labels]
    assert ev.metrics["reference"]["category_top1"] == pytest.approx(test_cats.count(top) / len(test_cats))

    model = vestis.load(result.best)
    ds = AttributeDataset(parts["test"], tax, model.config.data)
    lay = model.layout
    cat_p, attr_p, labels, flat = [], [], [], []
    with torch.no_grad():
        for i in range(len(ds)):
            item = ds[i]
            x = prepare_batch(item["image"][None], model.config.data)
            t = lay.object_type_index(parts["test"].records[i].meta.get("object_type"))
            out = model(x, object_types=torch.tensor([t]))
            cat_p.append(out["category"].softmax(1)[0].numpy())
            attr_p.append(out["attributes"].sigmoid()[0].numpy())
            tg = {k: torch.as_tensor(v)[None] for k, v in item["targets"].items()}
            mk = {k: torch.as_tensor(v)[None] for k, v in item["masks"].items()}
            labels.append(int(lay.category_targets(tg, mk)[0]))
            flat.append(lay.flat_targets(tg, mk)[0].numpy())
    want = evaluate_stage2(
        np.stack(cat_p),
        np.array(labels),
        np.stack(attr_p),
        np.stack(flat),
        allowed=lay.allowed,
        threshold=model.config.train.threshold,
    )
    for k in ("category_top1", "category_top3", "attribute_recall@3", "attribute_map", "incompatible_rate"):
        assert ev.metrics["stage2"][k] == pytest.approx(want[k], abs=1e-6), k


def test_the_crops_settings_beside_the_manifest_are_kept_in_the_metrics(crops, tmp_path):
    import json

    from vestis.data.catalog import load_catalog
    from vestis.train.stage2_task import crops_settings

    assert crops_settings(None) is None and crops_settings(tmp_path / "manifest.csv") is None  # no crops.json
    (tmp_path / "crops.json").write_text(json.dumps({"settings": {"margin": 0.1, "min_score": 0.3, "iou": 0.5}}))
    assert crops_settings(tmp_path / "manifest.csv") == {"margin": 0.1, "min_score": 0.3, "iou": 0.5}
    (tmp_path / "crops.json").write_text(json.dumps({"settings": {"margin": -1}}))
    assert crops_settings(tmp_path / "manifest.csv") is None  # not a margin vestis pipeline accepts
    (tmp_path / "crops.json").write_text("{not json")
    assert crops_settings(tmp_path / "manifest.csv") is None

    (tmp_path / "crops.json").write_text(json.dumps({"settings": {"margin": 0.2}}))
    manifest, taxonomy_path = crops
    m, taxonomy = load_catalog(manifest, taxonomy_path)
    m = dataclasses.replace(m, path=tmp_path / "manifest.csv")
    cfg = load_config("tiny", ["model.name=stl_tiny", "data.image_size=48"]).resolved()
    ds = AttributeDataset(m, taxonomy, cfg.data)
    task = Stage2Task(cfg, taxonomy, ds, ds)
    model = vestis.models.create_model(cfg.model, taxonomy)
    loader = torch.utils.data.DataLoader(ds, batch_size=16)
    assert task.validate(model, None, loader, None, torch.device("cpu")).metrics["crops"] == {"margin": 0.2}
