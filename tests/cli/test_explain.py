"""``vestis explain``: the attention maps a_1 and a_2 of an ``rnn_va`` stage-2 model drawn over each crop.

The overlays are checked pixel by pixel against a reference computed here from the returned attention (bilinear
upsampling by torch, the crop's area cut out of the letterboxed square, matplotlib's jet, the 50 % blend).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

import vestis.cli
from tests.service.outfit_fixtures import detector_checkpoint, expected_garment, make_pipeline, stage2_checkpoint
from vestis.errors import VestisError
from vestis.inference.explain import explain

SIZE = 128  # the stage-2 input: a 4 x 4 attention map on the tiny backbone (stride 32)
FILES = {"a1": "garment0_a1_category.png", "a2": "garment0_a2_attributes.png"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("explain")
    return {
        "rnn_va": stage2_checkpoint(d / "rnn_va.ckpt", image_size=SIZE, sharpen=50.0),
        "pipeline": make_pipeline(d, stage2_size=SIZE, sharpen=50.0),
        "folder": d,
    }


def _noise(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _reference(crop: Image.Image, a_t: np.ndarray, alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The expected overlay and the upsampled map over the crop: the letterboxed square's map, cut to the crop."""
    w, h = crop.size
    scale = SIZE / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    x0, y0 = (SIZE - nw) // 2, (SIZE - nh) // 2
    up = F.interpolate(torch.tensor(a_t, dtype=torch.float64)[None, None], size=(SIZE, SIZE), mode="bilinear")
    cut = up[:, :, y0 : y0 + nh, x0 : x0 + nw]
    cut = F.interpolate(cut, size=(h, w), mode="bilinear")[0, 0].numpy()  # the identity when the crop is not scaled
    heat = (cut - cut.min()) / (cut.max() - cut.min())
    jet = matplotlib.colormaps["jet"](heat)[..., :3] * 255.0
    return (1 - alpha) * np.asarray(crop, dtype=np.float64) + alpha * jet, cut


def _check_overlays(out: Path, garment, crop: Image.Image) -> None:
    pixels = np.asarray(crop, dtype=np.float64)
    drawn = {}
    for t, step in enumerate(("a1", "a2")):
        png = Image.open(out / FILES[step])
        assert png.size == crop.size and png.mode == "RGB"
        got = np.asarray(png, dtype=np.float64)
        want, cut = _reference(crop, garment.attention[t])
        # jet is a 256-entry table: a float64 map next to a float32 one can pick the neighbouring entry (a few levels)
        diff = np.abs(got - np.rint(want))
        assert diff.max() <= 4.0 and diff.mean() < 0.05, (step, diff.max(), diff.mean())
        hot = np.unravel_index(np.argmax(cut), cut.shape)
        # where the model looked most, the overlay is jet's dark red over the crop, far from the crop itself
        assert np.abs(got[hot] - pixels[hot]).max() > 20
        assert garment.attention[t].sum() == pytest.approx(1.0, abs=1e-5)
        drawn[step] = got
    assert not np.array_equal(drawn["a1"], drawn["a2"])  # two steps, two maps


def test_a_crop_with_a_stage2_checkpoint(models, tmp_path):
    crop_path = _noise(tmp_path / "crop.png", (96, 128))  # letterboxed with 16 px of padding left and right
    out = tmp_path / "why"
    res = CliRunner().invoke(vestis.cli.app, ["explain", str(models["rnn_va"]), str(crop_path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "explained the crop" in res.output
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES.values(), "explain.json"])

    result = explain(models["rnn_va"], crop_path, tmp_path / "again", device="cpu")
    [garment] = result.garments
    assert garment.attention.shape == (2, 4, 4)
    _check_overlays(out, garment, Image.open(crop_path).convert("RGB"))

    body = json.loads((out / "explain.json").read_text())
    assert (body["image"], body["width"], body["height"], body["kind"]) == ("crop.png", 96, 128, "stage2")
    assert body["steps"] == {"a1": "category", "a2": "attributes"}
    [g] = body["garments"]
    want = expected_garment(64)
    assert g["box"] is None and g["object_type"] is None and g["crop"] == {"width": 96, "height": 128}
    assert g["category"] == "trousers" and g["category_score"] == pytest.approx(want["category_score"], abs=1e-6)
    assert dict(g["attributes"]["colour"]) == pytest.approx(want["colour"], abs=1e-6)
    assert g["suppressed"] == ["sleeve=short"] and g["files"] == FILES
    assert body["model"].startswith("sha256:")


def test_every_garment_of_an_outfit_pipeline(models, tmp_path):
    from vestis.inference.pipeline import OutfitPipeline

    look = _noise(tmp_path / "look.png", (64, 64), seed=1)
    out = tmp_path / "why"
    result = explain(models["pipeline"], look, out, device="cpu")
    [garment] = result.garments
    x0, y0, x1, y1 = expected_garment(64)["box"]  # (8, 8, 40, 56): a 32 x 48 crop
    assert garment.box == pytest.approx((x0, y0, x1, y1))
    crop = Image.open(look).convert("RGB").crop((int(x0), int(y0), int(x1), int(y1)))
    assert garment.crop.size == crop.size == (32, 48)
    assert np.array_equal(np.asarray(garment.crop), np.asarray(crop))
    _check_overlays(out, garment, crop)

    body = json.loads((out / "explain.json").read_text())
    [predicted] = OutfitPipeline.load(models["pipeline"], device="cpu").predict([look])
    assert body["kind"] == "outfit" and body["model"] == predicted.model
    [g] = body["garments"]
    [p] = predicted.to_dict()["garments"]
    for key in ("box", "object_type", "object_score", "category", "category_score", "category_top", "attributes"):
        assert g[key] == p[key], key
    assert g["suppressed"] == p["suppressed"] and g["files"] == FILES
    assert sorted(q.name for q in out.iterdir()) == sorted([*FILES.values(), "explain.json"])


def test_models_without_attention_are_refused(models, tmp_path):
    from tests.service.conftest import make_checkpoint

    crop = _noise(tmp_path / "crop.png", (32, 32))
    cases = {
        "stl": (stage2_checkpoint(tmp_path / "stl.ckpt", name="stl_tiny"), "stage-2 model stl_tiny has no attention"),
        "hls": (stage2_checkpoint(tmp_path / "hls.ckpt", name="stl_hls_tiny"), "stl_hls_tiny has no attention"),
        "detector": (detector_checkpoint(tmp_path / "det.ckpt"), "a detector has no attention maps"),
        "classifier": (make_checkpoint(tmp_path / "a3.ckpt"), "a a3 model has no attention maps"),
    }
    for name, (model, message) in cases.items():
        out = tmp_path / f"out-{name}"
        res = CliRunner().invoke(vestis.cli.app, ["explain", str(model), str(crop), "--out", str(out)])
        assert res.exit_code == 1, (name, res.output)
        assert "error:" in res.output and message in " ".join(res.output.split()), (name, res.output)
        assert not out.exists(), name  # nothing written
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "pipeline.json").write_text("{}")
    with pytest.raises(VestisError, match="exported \\(ONNX\\) pipeline has no attention"):
        explain(exported, crop, tmp_path / "out-onnx")


def test_bad_arguments(models, tmp_path):
    crop = _noise(tmp_path / "crop.png", (32, 32))
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    with pytest.raises(VestisError, match="must be a folder"):
        explain(models["rnn_va"], crop, a_file)
    with pytest.raises(VestisError, match="--object-type: expected one of"):
        explain(models["rnn_va"], crop, tmp_path / "o", object_type="hat")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(VestisError, match=r"broken\.png"):
        explain(models["rnn_va"], tmp_path / "broken.png", tmp_path / "o")
    assert not (tmp_path / "o").exists()
    # a known object type is fed to the model: the prediction stays the constant heads' one
    result = explain(models["rnn_va"], crop, tmp_path / "typed", object_type="footwear", device="cpu")
    assert result.garments[0].object_type == "footwear" and result.garments[0].prediction["category"] == "trousers"
