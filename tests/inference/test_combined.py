"""The combined predictor of per-attribute runs: each attribute is its member's own prediction, members with
identical trunks run the backbone once, tagging rows name the combined fingerprint, hostile files are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.inference.combined_fixtures import ATTRIBUTES, images_of, make_runs
from vestis.data.taxonomy import load_taxonomy
from vestis.errors import VestisError
from vestis.inference.combined import (
    COMBINED_FILENAME,
    backbone_groups,
    combined_fingerprint,
    shared_blocks,
    write_combined,
)
from vestis.inference.predictor import Predictor
from vestis.inference.tagging import tag_catalog
from vestis.train.checkpoint import encode_checkpoint, load_checkpoint


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return make_runs(tmp_path_factory.mktemp("combined"))


def _counting(module: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda _m, inputs, _out: calls.append(len(inputs[0])))
    return calls


def test_each_attribute_is_its_members_own_prediction(runs) -> None:
    run = runs["free"]
    combined = Predictor.from_path(run, device="cpu")
    members = {a: Predictor.from_path(run / a / "best.ckpt", device="cpu") for a in ATTRIBUTES}
    assert combined.taxonomy.names == list(ATTRIBUTES)
    assert combined.taxonomy.to_dict() == load_taxonomy(runs["data"].parent / "taxonomy.yaml").to_dict()
    images = images_of(runs["data"])
    batch = combined.preprocess(images)
    probs = combined.predict_arrays(batch)
    for a, m in members.items():
        assert m.taxonomy.names == [a]
        assert np.array_equal(probs[a], m.predict_arrays(batch)[a]), a  # the member's computation, bit for bit
    heat = np.mean([m.run(batch)[1] for m in members.values()], axis=0)  # where the members looked, on average
    np.testing.assert_allclose(combined.run(batch)[1], heat, atol=1e-6, rtol=0)
    assert "occasion" in combined.thresholds  # calibrated on the validation rows
    assert combined.thresholds == {a: m.thresholds[a] for a, m in members.items() if a in m.thresholds}
    assert combined.thresholds_for("occasion").tolist() == members["occasion"].thresholds_for("occasion").tolist()

    cats = load_taxonomy(runs["data"].parent / "taxonomy.yaml")["pattern"].applies_to
    got = combined.predict(images)
    want = {a: m.predict(images) for a, m in members.items()}
    for i, pred in enumerate(got):
        category = want["category"][i]["category"].value
        expect = ["category", *(["pattern"] if category in cats else []), "occasion"]
        assert list(pred.to_dict()) == expect  # pattern only where the category member's answer allows it
        for a in expect:
            assert pred[a].to_dict() == want[a][i][a].to_dict(), (i, a)
    assert combined.fingerprint == json.loads((run / COMBINED_FILENAME).read_text())["fingerprint"]
    assert combined.info["members"] == {a: m.fingerprint for a, m in members.items()}


def test_members_with_other_trunks_run_one_backbone_each(runs) -> None:
    combined = Predictor.from_path(runs["free"] / COMBINED_FILENAME, device="cpu")
    bbs = [m.model.backbone for m in combined.module.members]
    for other in bbs[1:]:  # trained apart, the trunks differ
        assert not all(
            torch.equal(x, y) for x, y in zip(bbs[0].state_dict().values(), other.state_dict().values(), strict=True)
        )
    assert combined.info["backbone_groups"] == [[a] for a in ATTRIBUTES]
    calls = [_counting(b) for b in bbs]
    combined.predict_arrays(combined.preprocess(images_of(runs["data"])[:5]))
    assert calls == [[5], [5], [5]]


def test_identical_trunks_share_one_backbone_pass(runs) -> None:
    run = runs["shared"]
    members = {a: Predictor.from_path(run / a / "best.ckpt", device="cpu") for a in ("category", "pattern")}
    trunks = [load_checkpoint(run / a / "best.ckpt")["model"] for a in members]
    keys = [k for k in trunks[0] if k.startswith("backbone.")]
    assert keys and all(torch.equal(trunks[0][k], trunks[1][k]) for k in keys)
    assert any(not torch.equal(trunks[0][k], trunks[1][k]) for k in trunks[0] if k.startswith("neck."))
    assert backbone_groups([m.module.model for m in members.values()]) == [[0, 1]]

    combined = Predictor.from_path(run, device="cpu")
    assert combined.info["backbone_groups"] == [["category", "pattern"]]
    module = combined.module
    shared = module.members[0].model.backbone
    assert module.members[1].model.backbone is shared
    calls = _counting(shared)
    batch = combined.preprocess(images_of(runs["data"]))
    for n in (12, 3):
        probs = combined.predict_arrays(batch[:n])
        for a, m in members.items():
            assert np.array_equal(probs[a], m.predict_arrays(batch[:n])[a]), a
    assert calls == [12, 3]  # once per batch for both members


def test_tagging_rows_carry_the_combined_fingerprint(runs, tmp_path) -> None:
    combined = Predictor.from_path(runs["free"] / COMBINED_FILENAME, device="cpu")
    images = sorted((runs["data"].parent / "full" / "images").iterdir())[:6]
    out = tmp_path / "tags.jsonl"
    tag_catalog(runs["free"] / COMBINED_FILENAME, images, out, batch_size=4, workers=0, device="cpu")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and {r["model"] for r in rows} == {combined.fingerprint}
    for r, p in zip(rows, combined.predict(images), strict=True):
        assert set(r["attributes"]) == set(p.to_dict())
        assert r["attributes"]["category"]["value"] == p["category"].value
        assert r["attributes"]["occasion"]["values"] == p["occasion"].values


def _tamper(run: Path, tmp_path: Path, change) -> Path:
    doc = json.loads((run / COMBINED_FILENAME).read_text())
    change(doc)
    path = run / "tampered.json"
    path.write_text(json.dumps(doc))
    return path


def test_a_hostile_or_stale_combined_file_is_refused(runs, tmp_path) -> None:
    run = runs["free"]

    def outside(doc):
        doc["members"]["pattern"]["checkpoint"] = "../shared/pattern/best.ckpt"

    def refit(doc):  # a consistent file whose member fingerprint is not the checkpoint's
        doc["members"]["pattern"]["fingerprint"] = "sha256:" + "0" * 64
        fps = {k: v["fingerprint"] for k, v in doc["members"].items()}
        doc["fingerprint"] = combined_fingerprint(fps, doc["taxonomy"], doc["preprocessing"])

    cases = {
        "outside": (outside, "must lie inside"),
        "fingerprint": (lambda d: d.update(fingerprint="sha256:" + "1" * 64), "does not match its members"),
        "member": (refit, "retrained since"),
        "format": (lambda d: d.update(format="other"), "format: expected 'vestis-combined'"),
        "absolute": (lambda d: d["members"]["category"].update(checkpoint="/etc/passwd"), "expected a path relative"),
    }
    for change, message in cases.values():
        with pytest.raises(VestisError, match=message):
            Predictor.from_path(_tamper(run, tmp_path, change), device="cpu")
        (run / "tampered.json").unlink()
    bad = run / "bad.json"
    bad.write_bytes(b"\xff{")
    with pytest.raises(VestisError, match="expected UTF-8 JSON"):
        Predictor.from_path(bad)
    bad.unlink()


def test_members_with_other_preprocessing_are_refused(runs, tmp_path) -> None:
    run = runs["free"]
    state = load_checkpoint(run / "pattern" / "best.ckpt")
    state["preprocessing"] = {**state["preprocessing"], "pad_value": 0}
    other = run / "pattern" / "other.ckpt"
    other.write_bytes(encode_checkpoint(state))
    tax = Predictor.from_path(run, device="cpu").taxonomy
    members = {a: run / a / "best.ckpt" for a in ATTRIBUTES} | {"pattern": other}
    with pytest.raises(VestisError, match=r"preprocessing .* differs from member 'category'"):
        write_combined(run, tax, members)
    other.unlink()


def test_trunks_refined_in_their_last_block_share_the_blocks_below(runs) -> None:
    run = runs["partial"]
    names = ("category", "occasion")
    members = {a: Predictor.from_path(run / a / "best.ckpt", device="cpu") for a in names}
    bbs = [m.module.model.backbone for m in members.values()]
    n = len(bbs[0].blocks())
    assert shared_blocks(*bbs) == n - 1  # every block but the last one, which trained apart
    combined = Predictor.from_path(run, device="cpu")
    assert combined.info["backbone_groups"] == [["category"], ["occasion"]]
    assert combined.info["shared_blocks"] == [{"groups": [["category"], ["occasion"]], "blocks": n - 1}]
    module = combined.module
    own = [m.model.backbone for m in module.members]
    first = [_counting(bb.get_submodule(bb.blocks()[0].paths[0])) for bb in own]
    last = [_counting(bb.get_submodule(bb.blocks()[-1].paths[0])) for bb in own]
    batch = combined.preprocess(images_of(runs["data"]))
    probs = combined.predict_arrays(batch)
    for a, m in members.items():
        assert np.array_equal(probs[a], m.predict_arrays(batch)[a]), a
    assert first == [[12], []] and last == [[12], [12]]  # the stem once, each member's last block on its own
