"""The exported pipeline: two ONNX graphs and pipeline.json that give the torch runtime's garments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.inference.pipeline_fixtures import make_pipeline, scene
from vestis.errors import VestisError
from vestis.inference.pipeline import OutfitPipeline
from vestis.inference.pipeline_export import export_pipeline_onnx
from vestis.inference.pipeline_format import MANIFEST_NAME, PipelineSettings, pipeline_kind

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    # random stage-2 weights: scores away from 0 and 1, so a difference between the runtimes would show
    path = make_pipeline(tmp, PipelineSettings(min_score=0.5, margin=0.1), hand_set=False)
    result = export_pipeline_onnx(path, tmp / "out", opset=17, check_images=2)
    return tmp, path, result


def test_export_writes_the_folder_and_checks_parity(exported):
    tmp, path, r = exported
    assert sorted(p.name for p in r.files) == ["detector.onnx", MANIFEST_NAME, "stage2.onnx"]
    assert r.opset == 17 and r.exporter == "torchscript"
    assert set(r.parity) == {"heatmap", "size", "offset", "category", "attributes"}
    assert r.max_diff < 1e-4
    meta = json.loads((tmp / "out" / MANIFEST_NAME).read_text())
    torch_pipe = OutfitPipeline.load(path, device="cpu")
    assert meta["fingerprint"] == torch_pipe.fingerprint
    assert meta["detector"]["fingerprint"] == torch_pipe.spec.detector_fingerprint
    assert meta["settings"] == {
        "min_score": 0.5, "nms_iou": 0.5, "max_garments": 10, "margin": 0.1, "one_type_per_garment": False
    }  # fmt: skip
    assert meta["stage2"]["layout"]["blocks"] == {"sleeve": [0, 2], "colour": [2, 5]}
    assert meta["parity"]["max_abs_diff"] == r.parity
    assert pipeline_kind(tmp / "out") == "onnx" and pipeline_kind(tmp / "out" / MANIFEST_NAME) == "onnx"


def test_onnx_runtime_gives_the_torch_garments(exported):
    tmp, path, _ = exported
    torch_pipe = OutfitPipeline.load(path, device="cpu")
    onnx_pipe = OutfitPipeline.load(tmp / "out", device="cpu")
    assert onnx_pipe.runtime == "onnx" and onnx_pipe.fingerprint == torch_pipe.fingerprint
    images = [scene(tmp / f"s{i}.jpg", size=(40 + 12 * i, 48)) for i in range(3)]
    ref, got = torch_pipe.predict(images), onnx_pipe.predict(images)
    assert sum(len(r.garments) for r in ref) == 6
    for a, b in zip(ref, got, strict=True):
        assert (a.image, a.width, a.height, a.model) == (b.image, b.width, b.height, b.model)
        assert len(a.garments) == len(b.garments)
        for ga, gb in zip(a.garments, b.garments, strict=True):
            assert (ga.object_type, ga.category) == (gb.object_type, gb.category)
            assert np.allclose(ga.box, gb.box, atol=1e-4)
            assert abs(ga.object_score - gb.object_score) < 1e-4
            assert abs(ga.category_score - gb.category_score) < 1e-4
            assert {k: [v for v, _ in vs] for k, vs in ga.attributes.items()} == {
                k: [v for v, _ in vs] for k, vs in gb.attributes.items()
            }
            for k, vs in ga.attributes.items():
                assert np.allclose([s for _, s in vs], [s for _, s in gb.attributes[k]], atol=1e-4)
            assert ga.suppressed == gb.suppressed


def test_rnn_va_stage2_uses_the_object_types_the_same_way_on_both_runtimes(tmp_path):
    path = make_pipeline(tmp_path, hand_set=False, model_name="rnn_va_tiny")
    r = export_pipeline_onnx(path, tmp_path / "out", opset=17, check_images=2)
    assert r.max_diff < 1e-4
    img = scene(tmp_path / "a.jpg")
    [a] = OutfitPipeline.load(path, device="cpu").predict([img])
    [b] = OutfitPipeline.load(tmp_path / "out", device="cpu").predict([img])
    # the two garments have the same (whole-image) crop: only their object types tell them apart in stage 2
    scores = [g.category_score for g in a.garments]
    assert len(scores) == 2 and abs(scores[0] - scores[1]) > 1e-6
    assert np.allclose(scores, [g.category_score for g in b.garments], atol=1e-4)
    assert [g.category for g in a.garments] == [g.category for g in b.garments]


def test_hostile_or_incomplete_folders_are_refused(exported, tmp_path):
    tmp, path, _ = exported
    src = tmp / "out"
    meta = json.loads((src / MANIFEST_NAME).read_text())

    def folder(name, manifest, files=("detector.onnx", "stage2.onnx")):
        d = tmp_path / name
        d.mkdir()
        for f in files:
            (d / f).write_bytes((src / f).read_bytes())
        (d / MANIFEST_NAME).write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
        return d

    with pytest.raises(VestisError, match="not a readable pipeline description"):
        OutfitPipeline.load(folder("a", "{oops"))
    with pytest.raises(VestisError, match="format: expected 'vestis-pipeline-onnx'"):
        OutfitPipeline.load(folder("b", {**meta, "format": "other"}))
    with pytest.raises(VestisError, match="fingerprint: expected"):
        OutfitPipeline.load(folder("c", {**meta, "settings": {**meta["settings"], "min_score": 0.1}}))
    with pytest.raises(VestisError, match=r"stage2\.onnx: missing"):
        OutfitPipeline.load(folder("d", meta, files=("detector.onnx",)))
    st = {**meta["stage2"], "thresholds": [0.5]}
    with pytest.raises(VestisError, match="thresholds: expected 5 numbers"):
        OutfitPipeline.load(folder("e", {**meta, "stage2": st}))
    det = {**meta["detector"], "stride": "4"}
    with pytest.raises(VestisError, match="detector: stride: expected int"):
        OutfitPipeline.load(folder("f", {**meta, "detector": det}))
    bad = folder("g", meta, files=("stage2.onnx",))
    (bad / "detector.onnx").write_bytes(b"not onnx")
    with pytest.raises(VestisError, match="not a loadable ONNX model"):
        OutfitPipeline.load(bad)
    with pytest.raises(VestisError, match="runtime torch needs the pipeline file"):
        OutfitPipeline.load(src, runtime="torch")
    with pytest.raises(VestisError, match="expected a folder"):
        export_pipeline_onnx(path, tmp / "s0.jpg")


def test_graphs_that_do_not_match_pipeline_json_are_refused(exported, tmp_path):
    tmp, _, _ = exported
    src = tmp / "out"
    meta = json.loads((src / MANIFEST_NAME).read_text())

    def folder(name, manifest, swap=False):
        d = tmp_path / name
        d.mkdir()
        files = {"detector.onnx": "stage2.onnx", "stage2.onnx": "detector.onnx"} if swap else {}
        for f in ("detector.onnx", "stage2.onnx"):
            (d / f).write_bytes((src / files.get(f, f)).read_bytes())
        (d / MANIFEST_NAME).write_text(json.dumps(manifest))
        return d

    # one class more than the graph's heatmap has channels
    det = {**meta["detector"], "classes": [*meta["detector"]["classes"], "hat"]}
    with pytest.raises(VestisError, match=r"detector\.onnx: output heatmap: 4 channels, but pipeline\.json gives 5"):
        OutfitPipeline.load(folder("a", {**meta, "detector": det}))
    # a stage-2 layout with a value more than the graph's attribute output (fingerprints re-signed, so only the
    # widths tell)
    tax = json.loads(json.dumps(meta["stage2"]["taxonomy"]))
    next(a for a in tax["attributes"] if a["name"] == "colour")["values"].append("green")
    st = {**meta["stage2"], "taxonomy": tax, "thresholds": [*meta["stage2"]["thresholds"], 0.5]}
    with pytest.raises(VestisError, match=r"stage2\.onnx: output attributes: 5 channels, but pipeline\.json gives 6"):
        OutfitPipeline.load(folder("b", {**meta, "stage2": st}))
    # the two files swapped
    with pytest.raises(VestisError, match=r"detector\.onnx: metadata vestis\.part: expected 'detector'"):
        OutfitPipeline.load(folder("c", meta, swap=True))
    # a pipeline.json of another detector (its fingerprint and the pair's re-computed, so it reads)
    from vestis.inference.pipeline_format import pipeline_fingerprint

    other = {**meta, "detector": {**meta["detector"], "fingerprint": "sha256:" + "0" * 64}}
    other["fingerprint"] = pipeline_fingerprint(
        other["detector"]["fingerprint"], meta["stage2"]["fingerprint"], PipelineSettings.from_dict(meta["settings"])
    )
    with pytest.raises(VestisError, match=r"detector\.onnx: metadata vestis\.fingerprint"):
        OutfitPipeline.load(folder("d", other))
