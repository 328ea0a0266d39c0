"""Imbalance options: class-balanced draw probabilities and frequencies, the sampler's epochs and ranks, and the
per-instance weighted loss against a hand computation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vestis.config import load_config
from vestis.data.dataset import AttributeDataset, EncodedTargets
from vestis.data.manifest import Manifest, Record, read_manifest, write_manifest
from vestis.data.synthetic import generate_catalog
from vestis.data.taxonomy import Attribute, Taxonomy
from vestis.errors import VestisError
from vestis.train.loop import train
from vestis.train.sampling import BalancedSampler, balanced_weights, instance_weights
from vestis.train.tasks import ClassifierTask

TAX = Taxonomy((Attribute("colour", "single", ("red", "blue", "green")), Attribute("tags", "multi", ("a", "b"))))


def test_balanced_weights_hand_case() -> None:
    y = np.array([0, 0, 0, 1, -1])
    enc = EncodedTargets({"colour": y, "tags": np.zeros((5, 2))}, {"colour": y >= 0, "tags": np.zeros(5, bool)})
    w = balanced_weights(TAX, enc, "colour")
    # N=5, L=4 labelled, K=2 values present: red rows (4/5)/(2*3), the blue row (4/5)/2, the unlabelled row 1/5
    np.testing.assert_allclose(w, [0.8 / 6, 0.8 / 6, 0.8 / 6, 0.4, 0.2])
    with pytest.raises(VestisError, match="multi-label"):
        balanced_weights(TAX, enc, "tags")
    with pytest.raises(VestisError, match="unknown attribute"):
        balanced_weights(TAX, enc, "size")


def test_sampler_draws_classes_equally_often_seeded_per_epoch_and_split_over_ranks() -> None:
    y = np.array([0] * 180 + [1] * 18 + [2] * 2)
    enc = EncodedTargets({"colour": y}, {"colour": np.ones(200, bool)})
    w = balanced_weights(TAX, enc, "colour")
    s = BalancedSampler(w, seed=3)
    draws = []
    for epoch in range(60):
        s.set_epoch(epoch)
        draws += list(s)
    freq = np.bincount(y[draws], minlength=3) / len(draws)
    # 12,000 draws: each class 1/3 within 4 standard errors (sqrt(p(1-p)/n) = 0.0043)
    np.testing.assert_allclose(freq, [1 / 3] * 3, atol=4 * math.sqrt(2 / 9 / len(draws)))
    s.set_epoch(5)
    first, again = list(s), list(s)
    s.set_epoch(6)
    assert first == again and list(s) != first and len(first) == len(s) == 200
    ranks = [BalancedSampler(w, num_replicas=3, rank=r, seed=3) for r in range(3)]
    for r in ranks:
        r.set_epoch(5)
    full = BalancedSampler(w, num_replicas=1, seed=3)
    full.set_epoch(5)
    parts = [list(r) for r in ranks]
    assert all(len(p) == 67 for p in parts)  # ceil(200 / 3)
    g = torch.Generator()
    g.manual_seed(3 + 5)
    drawn = torch.multinomial(torch.as_tensor(w), 201, replacement=True, generator=g).tolist()
    assert [drawn[r::3] for r in range(3)] == parts


def _task(tmp_path: Path, weights: list[str | None]) -> ClassifierTask:
    recs = [Record(f"r{i}", f"{i}.jpg", {"colour": (c,)}, meta={"w": w} if w is not None else {})
            for i, (c, w) in enumerate(zip(["red", "blue", "green", "red"], weights, strict=True))]  # fmt: skip
    m = Manifest(recs, attributes=["colour"], meta_columns=["w"], path=tmp_path / "m.csv")
    cfg = load_config("tiny", ["train.weight_column=w"])
    tax = Taxonomy((TAX["colour"],))
    ds = AttributeDataset(m, tax, cfg.data)
    return ClassifierTask(cfg, tax, ds, ds)


def test_weighted_loss_against_a_hand_computation(tmp_path: Path) -> None:
    task = _task(tmp_path, ["2", "0.5", None, "0"])  # an empty cell weighs 1
    assert task.weights.tolist() == [2.0, 0.5, 1.0, 0.0]
    idx = torch.tensor([3, 0, 2, 1])  # a batch in sampler order
    labels = torch.tensor([0, 0, 2, 1])
    batch = {"image": torch.zeros(4, 3, 8, 8, dtype=torch.uint8), "index": idx,
             "targets": {"colour": labels}, "masks": {"colour": torch.tensor([True, True, False, True])}}  # fmt: skip
    _, targets, masks, n = task.step_inputs(batch, torch.device("cpu"), None, None, 0.0, False)
    assert n == 4 and masks["colour"].tolist() == [0.0, 2.0, 0.0, 0.5]  # row 2 unlabelled: weight times mask 0
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0], [1.0, -2.0, 0.5]])
    loss = task.loss({"colour": logits}, targets, masks)["colour"]
    z = logits.double().numpy()
    ce = np.log(np.exp(z).sum(axis=1)) - z[np.arange(4), labels.numpy()]  # -log softmax of the true class
    w = np.array([0.0, 2.0, 0.0, 0.5])
    assert float(loss) == pytest.approx(float((w * ce).sum() / w.sum()), rel=1e-6)


def test_instance_weight_errors(tmp_path: Path) -> None:
    with pytest.raises(VestisError, match=r"m.csv:0: meta_w: expected a weight >= 0, got '-1'"):
        _task(tmp_path, ["1", "-1", None, None])
    with pytest.raises(VestisError, match="every weight is 0"):
        _task(tmp_path, ["0", "0", "0", "0"])
    m = Manifest([Record("a", "a.jpg")], path=tmp_path / "m.csv")
    with pytest.raises(VestisError, match="no meta_w column"):
        instance_weights(m, "w")


def test_both_options_in_a_training_run(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    generate_catalog(root, n=24, size=32, seed=6)
    m = read_manifest(root / "manifest.csv")
    for i, r in enumerate(m.records):
        r.meta["weight"] = str(1 + i % 3)
    m.meta_columns.append("weight")
    data = write_manifest(m, root / "weighted.csv")
    base = ["data.image_size=32", "data.augment.enabled=false", "train.epochs=1", "train.max_steps=2"]
    cfg = load_config("tiny", [*base, "train.weight_column=weight", "train.balanced_sampling=category"])
    res = train(cfg, data, tmp_path / "run", taxonomy=root / "taxonomy.yaml", progress=False, log=lambda *_: None)
    assert res.steps == 2 and res.last.is_file()
    bad = load_config("tiny", [*base, "train.balanced_sampling=occasion"])
    with pytest.raises(VestisError, match="multi-label"):
        train(bad, data, tmp_path / "bad", taxonomy=root / "taxonomy.yaml", progress=False, log=lambda *_: None)
    emb = load_config("tiny", [*base, "model.name=csn", "train.weight_column=weight"])
    with pytest.raises(VestisError, match="attribute classifiers only"):
        train(emb, data, tmp_path / "emb", taxonomy=root / "taxonomy.yaml", progress=False, log=lambda *_: None)
