"""`vestis evaluate` on the combined.json of a per-attribute run: each attribute scores as its member checkpoint
does on its own, as the ONNX export of the combined model does, `--compare` writes its files, and a combined.json
whose member is missing is refused with a message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import vestis.cli
from tests.inference.combined_fixtures import ATTRIBUTES, small_catalog, train_run
from vestis.data.dataset import encode_targets
from vestis.data.images import load_image
from vestis.data.manifest import read_manifest
from vestis.data.taxonomy import load_taxonomy
from vestis.eval.compare import compare_checkpoint
from vestis.eval.run import evaluate_checkpoint
from vestis.inference.combined import COMBINED_FILENAME, union_taxonomy
from vestis.inference.predictor import Predictor

KEYS = ("n", "accuracy", "average_per_class_accuracy", "per_class_accuracy", "micro_f1", "mean_average_precision")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evalcombined")
    data = small_catalog(root / "cat")
    return {"data": data, "run": train_run(data, root / "run")}


def _leaves(x, prefix: str = "") -> dict:
    if isinstance(x, dict):
        return {k: v for key, sub in x.items() for k, v in _leaves(sub, f"{prefix}.{key}").items()}
    return {prefix: x}


def _same(got: dict, want: dict, tol: float = 1e-12) -> None:
    """The metrics in KEYS (nested per class) of ``want`` are in ``got`` with the same values."""
    for key in KEYS:
        if key not in want:
            continue
        g, w = _leaves(got[key], key), _leaves(want[key], key)
        assert g.keys() == w.keys(), key
        for k, v in w.items():
            assert g[k] == (None if v is None else pytest.approx(v, abs=tol, nan_ok=True)), k


def test_each_attribute_scores_as_its_member_and_the_onnx_export(run, tmp_path) -> None:
    from vestis.inference.export import export_onnx

    root, data = run["run"], run["data"]
    res = evaluate_checkpoint(root / COMBINED_FILENAME, data, tmp_path / "c", split="all", workers=0, device="cpu")
    assert set(res.metrics["attributes"]) == set(ATTRIBUTES)
    assert res.num_items == len(read_manifest(data).records) == 40
    assert {"metrics.json", "report.md", "report.html"} <= set(res.files)
    assert json.loads(res.files["metrics.json"].read_text())["attributes"].keys() == set(ATTRIBUTES)
    for a in ATTRIBUTES:  # the naive reference: the member checkpoint scored alone on its own one-attribute manifest
        member = evaluate_checkpoint(
            root / a / "best.ckpt", root / a / "manifest.csv", tmp_path / a, split="all", workers=0, device="cpu"
        )
        assert list(member.metrics["attributes"]) == [a] and member.num_items == 40
        _same(res.metrics["attributes"][a], member.metrics["attributes"][a], tol=1e-9)
        _same(res.metrics["reference"]["attributes"][a], member.metrics["reference"]["attributes"][a])
        # the member's report files (its figures, named by attribute) but its training curves (history.json)
        assert set(member.files) - set(res.files) == {"figures/training_curves.png"}
    # accuracy of the category attribute counted by hand from the member's own predictions
    pred = Predictor.from_path(root / "category" / "best.ckpt", device="cpu")
    man = read_manifest(data)
    probs = pred.predict_arrays(pred.preprocess([load_image(man.image_path(r)) for r in man.records]))["category"]
    enc = encode_targets(man.records, load_taxonomy(data.parent / "taxonomy.yaml"))
    y, m = enc.targets["category"], enc.masks["category"]
    assert res.metrics["attributes"]["category"]["accuracy"] == pytest.approx(
        float(np.mean(probs[m].argmax(1) == y[m]))
    )
    # the exported graph of the combined model scores the same, within the float tolerance of ONNX Runtime
    onnx = export_onnx(root, tmp_path / "c.onnx", opset=17, check_images=0).path
    other = evaluate_checkpoint(onnx, data, tmp_path / "o", split="all", workers=0)
    for a in ATTRIBUTES:
        _same(other.metrics["attributes"][a], res.metrics["attributes"][a], tol=1e-3)


def test_compare_on_combined_writes_its_files(run, tmp_path) -> None:
    root, data = run["run"], run["data"]
    out = tmp_path / "cmp"
    args = ["evaluate", str(root / COMBINED_FILENAME), "--data", str(data), "--compare", str(data), "--split", "all",
            "--out", str(out), "--workers", "0", "--device", "cpu"]  # fmt: skip
    res = CliRunner().invoke(vestis.cli.app, args)
    assert res.exit_code == 0, res.output
    for name in ("compare.json", "compare.md", "compare.html"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "compare.json").read_text())
    assert set(doc["attributes"]) == set(ATTRIBUTES)
    assert doc["run"]["fingerprint"] == json.loads((root / COMBINED_FILENAME).read_text())["fingerprint"]
    assert doc["run"]["a"]["items"] == doc["run"]["b"]["items"] == 40
    ev = evaluate_checkpoint(root, data, tmp_path / "e", split="all", workers=0, device="cpu")  # the run folder
    for a, r in doc["attributes"].items():  # one manifest twice: nothing drops, nothing shifts
        assert r["distribution"]["label_tvd"] == 0.0 and r["distribution"]["predicted_tvd"] == 0.0
        if r["kind"] == "single":
            assert r["drop"]["accuracy"] == 0.0
            assert r["a"]["accuracy"] == pytest.approx(ev.metrics["attributes"][a]["accuracy"])
            assert r["a"]["average_per_class_accuracy"] == pytest.approx(
                ev.metrics["attributes"][a]["average_per_class_accuracy"]
            )
        else:
            assert r["a"]["micro_f1"] == pytest.approx(ev.metrics["attributes"][a]["micro_f1"])


def test_a_missing_member_is_a_clear_error(run, tmp_path) -> None:
    root, data = run["run"], run["data"]
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    shutil.rmtree(bad / "pattern")
    for extra in ([], ["--compare", str(data)]):
        args = ["evaluate", str(bad / COMBINED_FILENAME), "--data", str(data), "--out", str(tmp_path / "o"), *extra]
        res = CliRunner().invoke(vestis.cli.app, [*args, "--workers", "0", "--device", "cpu"])
        assert res.exit_code != 0
        assert isinstance(res.exception, SystemExit), res.exception  # a message, not a traceback
        assert "members.pattern.checkpoint" in res.output and "not found" in res.output, res.output


def test_a_run_on_some_attributes_evaluates_on_its_own_untrimmed_catalog(tmp_path) -> None:
    """`--per-attribute --attributes category,pattern` on the full synthetic catalog: evaluate on that same manifest
    scores just the two attributes (the reference too), each as its member scores alone on its own manifest."""
    from vestis.data.synthetic import generate_catalog

    generate_catalog(tmp_path / "full", n=40, size=32, seed=4, workers=1)
    data = tmp_path / "full" / "manifest.csv"
    assert len(load_taxonomy(data.parent / "taxonomy.yaml").names) > 2  # the catalog keeps its other attributes
    root = train_run(data, tmp_path / "run", attributes=["category", "pattern"])
    res = evaluate_checkpoint(root / COMBINED_FILENAME, data, tmp_path / "c", split="test", workers=0, device="cpu")
    assert set(res.metrics["attributes"]) == set(res.metrics["reference"]["attributes"]) == {"category", "pattern"}
    report = json.loads(res.files["metrics.json"].read_text())
    assert set(report["attributes"]) == {"category", "pattern"}
    for a in ("category", "pattern"):  # the member on its own one-attribute manifest (its split column: the run's)
        member = evaluate_checkpoint(
            root / a / "best.ckpt", root / a / "manifest.csv", tmp_path / a, split="test", workers=0, device="cpu"
        )
        assert member.num_items == res.num_items > 0
        _same(res.metrics["attributes"][a], member.metrics["attributes"][a], tol=1e-9)
        _same(res.metrics["reference"]["attributes"][a], member.metrics["reference"]["attributes"][a])
    # --compare takes the same untrimmed catalog, on both sides
    cmp = compare_checkpoint(root, data, data, tmp_path / "cmp", split="test", workers=0, device="cpu")
    assert set(cmp.metrics["attributes"]) == {"category", "pattern"}
    for a in ("category", "pattern"):
        assert cmp.metrics["attributes"][a]["a"]["accuracy"] == pytest.approx(res.metrics["attributes"][a]["accuracy"])


def test_a_combined_model_needs_its_attributes_in_the_data_taxonomy(run, tmp_path) -> None:
    import yaml

    from vestis.errors import VestisError
    from vestis.eval.run import check_taxonomy

    tax = Predictor.from_path(run["run"] / COMBINED_FILENAME, device="cpu").taxonomy
    doc = yaml.safe_load((run["data"].parent / "taxonomy.yaml").read_text())
    path = tmp_path / "taxonomy.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert check_taxonomy(tmp_path / "manifest.csv", None, tax, subset=True).names == tax.names
    with pytest.raises(VestisError, match="taxonomy differs"):  # a plain checkpoint: exactly the same attributes
        check_taxonomy(tmp_path / "manifest.csv", path, union_taxonomy(tax, ["category"]))
    assert check_taxonomy(tmp_path / "manifest.csv", path, union_taxonomy(tax, ["category"]), subset=True)
    less = {**doc, "attributes": [a for a in doc["attributes"] if a["name"] != "occasion"]}
    path.write_text(yaml.safe_dump(less, sort_keys=False))
    with pytest.raises(VestisError, match=r"no attribute\(s\) \['occasion'\] of the model"):
        check_taxonomy(tmp_path / "manifest.csv", None, tax, subset=True)
    other = {**doc, "attributes": [{**a, "values": a["values"][:-1]} if a["name"] == "pattern" else a
                                   for a in doc["attributes"]]}  # fmt: skip
    path.write_text(yaml.safe_dump(other, sort_keys=False))
    with pytest.raises(VestisError, match=r"attribute\(s\) \['pattern'\] differ from the model's"):
        check_taxonomy(tmp_path / "manifest.csv", None, tax, subset=True)
