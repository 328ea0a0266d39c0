"""Memory bounds of the outfit pipeline: the decode budget of `vestis predict`, batched detection and decoding,
and the input sides a pipeline file or folder may ask for."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from tests.inference.pipeline_fixtures import make_pipeline, scene
from vestis.errors import VestisError
from vestis.inference import outfit_tagging
from vestis.inference.items import ImageItem
from vestis.inference.pipeline import MAX_IMAGE_SIZE, OutfitPipeline
from vestis.inference.pipeline_onnx import read_manifest


@pytest.fixture(scope="module")
def pipeline_path(tmp_path_factory):
    return make_pipeline(tmp_path_factory.mktemp("mem"))


@pytest.mark.parametrize("workers", [0, 2])
def test_decoding_ahead_stays_within_the_byte_budget(tmp_path, monkeypatch, workers):
    sides = [(40, 30), (60, 50), (20, 20), (80, 80), (30, 70), (50, 50), (10, 90)]
    items = [ImageItem(str(i), scene(tmp_path / f"{i}.png", size=s)) for i, s in enumerate(sides)]
    nbytes = {str(it.path): 3 * w * h for it, (w, h) in zip(items, sides, strict=True)}
    budget = 3 * 80 * 80 + 3 * 60 * 50  # the two largest images together
    live = {"now": 0, "peak": 0}
    lock = threading.Lock()
    real = outfit_tagging._DecodeWhole.__getitem__

    def counting(self, i):
        out = real(self, i)
        with lock:
            live["now"] += nbytes[str(self.items[i].path)]
            live["peak"] = max(live["peak"], live["now"])
        return out

    monkeypatch.setattr(outfit_tagging._DecodeWhole, "__getitem__", counting)
    got = []
    for its, arrays, errs in outfit_tagging._decoded(items, 10**8, 3, workers, budget):
        assert all(e is None for e in errs) and len(its) <= 3
        assert [a.shape[:2] for a in arrays] == [(h, w) for w, h in (sides[int(it.id)] for it in its)]
        got += [it.id for it in its]
        with lock:  # the caller is done with this batch
            live["now"] -= sum(nbytes[str(it.path)] for it in its)
    assert got == [it.id for it in items]  # all, in order
    assert 0 < live["peak"] <= budget
    # an image larger than the budget still goes, alone
    batches = [len(b[0]) for b in outfit_tagging._decoded(items[3:4] + items[:1], 10**8, 3, workers, 100)]
    assert batches == [1, 1]


def test_predict_decodes_and_detects_batch_size_images_at_a_time(pipeline_path, tmp_path):
    pipe = OutfitPipeline.load(pipeline_path, device="cpu", batch_size=2)
    calls = []
    run = pipe._runner.run_detector

    def recording(images):
        calls.append(len(images))
        return run(images)

    pipe._runner.run_detector = recording
    paths = [scene(tmp_path / f"{i}.jpg", size=(40 + 8 * i, 48)) for i in range(5)]
    got = pipe.predict(paths)
    assert calls == [2, 2, 1] and [r.image for r in got] == [str(p) for p in paths]
    ref = OutfitPipeline.load(pipeline_path, device="cpu", batch_size=8).predict(paths)
    for a, b in zip(got, ref, strict=True):
        assert len(a.garments) == len(b.garments) == 2 and a.width == b.width
        np.testing.assert_allclose([g.box for g in a.garments], [g.box for g in b.garments], atol=1e-5)
        assert [g.category_score for g in a.garments] == pytest.approx([g.category_score for g in b.garments])
    with pytest.raises(VestisError, match="batch_size"):
        OutfitPipeline.load(pipeline_path, device="cpu", batch_size=0)


def test_oversized_or_misaligned_input_sides_are_refused(pipeline_path, tmp_path):
    from vestis.inference.pipeline_export import export_pipeline_onnx

    pytest.importorskip("onnxruntime")
    out = tmp_path / "out"
    export_pipeline_onnx(pipeline_path, out, check_images=0)
    meta = json.loads((out / "pipeline.json").read_text())
    for part, side, msg in (
        ("detector", MAX_IMAGE_SIZE + 32, r"detector: image_size: expected a multiple of 32 in \[32, 4096\]"),
        ("detector", 48, "multiple of 32"),
        ("stage2", 10**6, r"stage2: image_size: expected a side in \[1, 4096\]"),
    ):
        p = tmp_path / f"{part}{side}.json"
        p.write_text(json.dumps({**meta, part: {**meta[part], "image_size": side}}))
        with pytest.raises(VestisError, match=msg):
            read_manifest(p)
    assert np.asarray(read_manifest(out / "pipeline.json")[0].thresholds).shape == (5,)


def test_a_pipeline_file_with_an_oversized_side_is_refused(pipeline_path):
    from vestis.inference.pipeline import torch_parts
    from vestis.inference.pipeline_format import load_pipeline_file

    bundle = load_pipeline_file(pipeline_path)
    bundle.stage2["preprocessing"]["image_size"] = 8192
    with pytest.raises(VestisError, match=r"stage2: preprocessing.image_size: expected a side in \[1, 4096\]"):
        torch_parts(bundle)


def test_tag_outfits_with_decoding_threads_and_a_small_budget_gives_the_same_rows(pipeline_path, tmp_path):
    from vestis.inference.tagging import read_journal

    paths = [scene(tmp_path / f"{i}.png", size=(30 + 10 * i, 40)) for i in range(5)]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    inputs = [*paths, tmp_path / "bad.png"]
    a = outfit_tagging.tag_outfits(pipeline_path, inputs, tmp_path / "a.jsonl", workers=0, device="cpu")
    b = outfit_tagging.tag_outfits(
        pipeline_path, inputs, tmp_path / "b.jsonl", workers=2, batch_size=3, decode_budget=3 * 40 * 40, device="cpu"
    )
    assert (a.predicted, a.errors) == (b.predicted, b.errors) == (5, 1)
    ra, rb = read_journal(tmp_path / "a.jsonl"), read_journal(tmp_path / "b.jsonl")
    assert [r["id"] for r in ra] == [r["id"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        assert x.get("error") == y.get("error")
        assert [g["box"] for g in x.get("garments", [])] == [g["box"] for g in y.get("garments", [])]
    with pytest.raises(VestisError, match="decode_budget"):
        outfit_tagging.tag_outfits(pipeline_path, inputs, tmp_path / "c.jsonl", decode_budget=0, device="cpu")
