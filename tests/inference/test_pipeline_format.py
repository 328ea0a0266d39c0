"""The pipeline file: a round trip keeps both checkpoints' weights and fields; damaged or hostile files are refused."""

from __future__ import annotations

import json

import pytest
import safetensors
import safetensors.torch
import torch

from tests.inference.detector_fixtures import full_image_checkpoint
from tests.inference.pipeline_fixtures import make_pipeline, stage2_checkpoint
from vestis.errors import VestisError
from vestis.inference.pipeline_format import (
    FORMAT,
    PipelineSettings,
    bundle_pipeline,
    load_pipeline_file,
    pipeline_fingerprint,
    pipeline_kind,
)
from vestis.train.checkpoint import MAX_HEADER_BYTES, load_checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundle")
    path = make_pipeline(tmp, PipelineSettings(min_score=0.4, nms_iou=0.6, max_garments=3, margin=0.1))
    return tmp, path


def _rewrite(src, dst, *, drop_meta=(), set_meta=None, drop_tensors=()):
    """A copy of a safetensors file with metadata entries / tensors removed or changed."""
    with safetensors.safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys() if k not in drop_tensors}  # noqa: SIM118
    for k in drop_meta:
        meta.pop(k)
    meta.update(set_meta or {})
    dst.write_bytes(safetensors.torch.save(tensors, metadata=meta))
    return dst


def test_round_trip_keeps_weights_fields_and_settings(files):
    tmp, path = files
    bundle = load_pipeline_file(path)
    for part, ckpt in (("detector", tmp / "det.ckpt"), ("stage2", tmp / "stage2.ckpt")):
        ref = load_checkpoint(ckpt)
        got = getattr(bundle, part)
        assert got["model"].keys() == ref["model"].keys()
        for k, v in ref["model"].items():
            assert torch.equal(got["model"][k], v), (part, k)
        for field in ("config", "taxonomy", "preprocessing", "thresholds", "metrics", "fingerprint"):
            assert got[field] == ref[field], (part, field)
        assert got["train_state"] is None  # a pipeline only predicts
    assert bundle.settings == PipelineSettings(
        min_score=0.4, nms_iou=0.6, max_garments=3, margin=0.1, one_type_per_garment=False
    )  # the fixture's detector gives every class the same box: class-wise NMS
    fps = (bundle.detector["fingerprint"], bundle.stage2["fingerprint"])
    assert bundle.fingerprint == pipeline_fingerprint(*fps, bundle.settings)
    assert bundle.fingerprint != pipeline_fingerprint(*fps, PipelineSettings())  # the settings count


def test_tensor_names_and_format_are_readable_without_vestis(files):
    _, path = files
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["format"] == FORMAT and meta["version"] == "1"
    assert any(k.startswith("detector/model/heatmap.") for k in keys)
    assert any(k.startswith("stage2/model/category_head.") for k in keys)
    assert all(k.split("/")[0] in ("detector", "stage2") for k in keys)
    assert json.loads(meta["pipeline"])["max_garments"] == 3
    assert pipeline_kind(path) == "bundle"
    assert pipeline_kind(files[0] / "det.ckpt") is None  # a checkpoint is not a pipeline


def test_truncated_file_is_refused(files, tmp_path):
    _, path = files
    data = path.read_bytes()
    for n in (5, 100, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{n}.vestis"
        bad.write_bytes(data[:n])
        with pytest.raises(VestisError, match=str(bad)):
            load_pipeline_file(bad)


def test_oversized_header_is_refused_before_reading_it(tmp_path):
    bad = tmp_path / "huge.vestis"
    bad.write_bytes((MAX_HEADER_BYTES + 1).to_bytes(8, "little") + b"{" + b" " * 64)
    with pytest.raises(VestisError, match="over the limit"):
        load_pipeline_file(bad)


def test_wrong_format_tag_and_a_plain_checkpoint_are_refused(files, tmp_path):
    tmp, path = files
    bad = _rewrite(path, tmp_path / "tag.vestis", set_meta={"format": "vestis-pipeline-x"})
    with pytest.raises(VestisError, match="format: expected 'vestis-pipeline', got 'vestis-pipeline-x'"):
        load_pipeline_file(bad)
    with pytest.raises(VestisError, match="a checkpoint: bundle it"):
        load_pipeline_file(tmp / "det.ckpt")
    newer = _rewrite(path, tmp_path / "new.vestis", set_meta={"version": "9"})
    with pytest.raises(VestisError, match="newer than this vestis"):
        load_pipeline_file(newer)


@pytest.mark.parametrize(
    "drop,match",
    [
        (("stage2.config",), "stage2: missing config"),
        (("detector.model",), "detector: missing model"),
        (("pipeline",), "pipeline: missing"),
    ],
)
def test_missing_part_is_refused(files, tmp_path, drop, match):
    _, path = files
    bad = _rewrite(path, tmp_path / "missing.vestis", drop_meta=drop)
    with pytest.raises(VestisError, match=match):
        load_pipeline_file(bad)


def test_missing_tensor_hostile_json_and_tampering_are_refused(files, tmp_path):
    _, path = files
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        name = next(k for k in f.keys() if k.startswith("stage2/model/"))  # noqa: SIM118
    bad = _rewrite(path, tmp_path / "t.vestis", drop_tensors=(name,))
    with pytest.raises(VestisError, match="a tensor stored in the file"):
        load_pipeline_file(bad)
    bad = _rewrite(path, tmp_path / "j.vestis", set_meta={"detector.taxonomy": "{not json"})
    with pytest.raises(VestisError, match=r"detector\.taxonomy: expected JSON"):
        load_pipeline_file(bad)
    code = json.dumps({"__reduce__": {"$tag": "os.system"}})
    bad = _rewrite(path, tmp_path / "c.vestis", set_meta={"stage2.metrics": code})
    with pytest.raises(VestisError, match="a known tag"):
        load_pipeline_file(bad)
    settings = json.loads(meta["pipeline"]) | {"min_score": 0.01}
    bad = _rewrite(path, tmp_path / "s.vestis", set_meta={"pipeline": json.dumps(settings)})
    with pytest.raises(VestisError, match=r"fingerprint: expected .* the file was changed"):
        load_pipeline_file(bad)
    bad = _rewrite(path, tmp_path / "r.vestis", set_meta={"pipeline": json.dumps({"min_score": 7})})
    with pytest.raises(VestisError, match=r"pipeline.min_score: expected a number in \[0, 1\]"):
        load_pipeline_file(bad)


def test_bundle_refuses_swapped_or_mismatched_checkpoints(files, tmp_path):
    tmp, _ = files
    with pytest.raises(VestisError, match=r"not a registered detector .*DETECTOR then STAGE2"):
        bundle_pipeline(tmp / "stage2.ckpt", tmp / "det.ckpt", tmp_path / "x.vestis")
    with pytest.raises(VestisError, match="not a registered stage-2 model"):
        bundle_pipeline(tmp / "det.ckpt", tmp / "det.ckpt", tmp_path / "x.vestis")
    assert not (tmp_path / "x.vestis").exists()


def test_bundle_refuses_a_stage2_model_without_the_detector_classes(tmp_path, monkeypatch):
    det = full_image_checkpoint(tmp_path / "det.ckpt")
    st = stage2_checkpoint(tmp_path / "st.ckpt")
    state = load_checkpoint(st)
    state["config"]["model"]["object_types"] = ["upper-body", "lower-body"]
    from vestis.train.checkpoint import encode_checkpoint

    (tmp_path / "st2.ckpt").write_bytes(encode_checkpoint(state))
    with pytest.raises(VestisError, match=r"lacks the detector's class\(es\) \['full-body', 'footwear'\]"):
        bundle_pipeline(det, tmp_path / "st2.ckpt", tmp_path / "x.vestis")


@pytest.mark.parametrize(
    "kwargs",
    [{"min_score": 1.5}, {"nms_iou": -0.1}, {"max_garments": 0}, {"max_garments": 2.5}, {"margin": float("nan")}],
)
def test_settings_out_of_range_are_refused(kwargs):
    with pytest.raises(VestisError, match=next(iter(kwargs))):
        PipelineSettings(**kwargs)


def test_one_type_per_garment_is_a_setting_of_the_fingerprint():
    assert PipelineSettings().one_type_per_garment is True
    fps = ("sha256:" + "a" * 64, "sha256:" + "b" * 64)
    per_type = PipelineSettings(one_type_per_garment=False)
    assert pipeline_fingerprint(*fps, per_type) != pipeline_fingerprint(*fps, PipelineSettings())
    assert PipelineSettings.from_dict(per_type.to_dict()) == per_type
    with pytest.raises(VestisError, match="one_type_per_garment"):
        PipelineSettings(one_type_per_garment="yes")
