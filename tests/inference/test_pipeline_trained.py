"""A stage-2 checkpoint from the training loop (one epoch on synthetic crops) in a pipeline: it bundles, predicts
within its taxonomy, and the decisions use the thresholds stored in the checkpoint (given explicitly here, as the
one-epoch run calibrates none)."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest

from tests.inference.detector_fixtures import full_image_checkpoint
from tests.inference.pipeline_fixtures import scene
from vestis.config import load_config
from vestis.data.detection import object_type
from vestis.data.synthetic import generate_catalog
from vestis.data.taxonomy import load_taxonomy, save_taxonomy
from vestis.inference.pipeline import OutfitPipeline
from vestis.inference.pipeline_format import PipelineSettings, bundle_pipeline
from vestis.train.checkpoint import load_checkpoint, rebuild_model, save_checkpoint
from vestis.train.loop import train

THRESHOLDS = {"colour": [1.5] * 10, "occasion": [0.0] * 4}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    generate_catalog(root, n=32, size=32, seed=3)
    tax = load_taxonomy(root / "taxonomy.yaml")
    parent = {c: p for p, cs in tax.hierarchy.items() for c in cs}
    save_taxonomy(dataclasses.replace(tax, metadata=(*tax.metadata, "object_type")), root / "crops_taxonomy.yaml")
    rows = list(csv.DictReader((root / "manifest.csv").open()))
    with (root / "crops.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*rows[0], "meta_object_type"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "meta_object_type": object_type(parent.get(r["category"], "")) or ""})
    cfg = load_config(
        "tiny", ["model.name=stl_hls_tiny", "model.backbone=mobilenetv3_tiny", "data.image_size=32", "train.epochs=1"]
    )
    result = train(cfg, root / "crops.csv", root / "run", taxonomy=root / "crops_taxonomy.yaml", progress=False,
                   log=lambda *_: None)  # fmt: skip
    # stored thresholds: colour (single-label) never reaches 1.5, every occasion (multi-label) value reaches 0
    state = load_checkpoint(result.best)
    model = rebuild_model(state)
    best = save_checkpoint(root / "thresholded.ckpt", model=model, config=model.config, taxonomy=model.taxonomy,
                           metrics=state.get("metrics"), thresholds=THRESHOLDS)  # fmt: skip
    det = full_image_checkpoint(root / "det.ckpt")
    return root, bundle_pipeline(det, best, root / "outfit.vestis", PipelineSettings(one_type_per_garment=False)), best


def test_a_trained_stage2_model_predicts_within_its_taxonomy(trained):
    root, path, best = trained
    pipe = OutfitPipeline.load(path, device="cpu")
    state = load_checkpoint(best)
    assert pipe.spec.stage2_fingerprint == state["fingerprint"]
    layout = pipe.spec.layout
    tax = pipe.spec.stage2_taxonomy
    # the thresholds in use: the checkpoint's stored ones where it has them, else train.threshold
    assert state["thresholds"] == THRESHOLDS
    default = state["config"]["train"]["threshold"]
    for attr, block in layout.blocks.items():
        want = THRESHOLDS.get(attr, [default] * (block.stop - block.start))
        assert np.allclose(pipe.spec.thresholds[block], want), attr
    results = pipe.predict([scene(root / f"s{i}.jpg", size=(32 + 8 * i, 40)) for i in range(3)])
    garments = [g for r in results for g in r.garments]
    assert len(garments) == 6
    for g in garments:
        # the stored thresholds decide: no colour ever, every occasion value always (occasion applies to all)
        assert "colour" not in g.attributes and not any(s.startswith("colour=") for s in g.suppressed)
        assert sorted(v for v, _ in g.attributes["occasion"]) == sorted(tax["occasion"].values)
        assert g.category in layout.categories
        assert g.category_top[0][0] == g.category
        for attr, values in g.attributes.items():
            assert tax[attr].applies(g.category), (attr, g.category)
            assert all(v in tax[attr].values for v, _ in values)
            if tax[attr].kind == "single":
                assert len(values) == 1
        for s in g.suppressed:
            assert not tax[s.split("=", 1)[0]].applies(g.category)
