"""Predictor: construction from both file kinds, the stages, decoding rules, typed results, heat-maps and errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import vestis
from tests.inference.conftest import IMAGE_SIZE, THRESHOLDS, small_taxonomy
from vestis.data.images import ImageNotFound, ImageTooLarge, load_image
from vestis.data.transforms import letterbox, letterbox_box, normalize
from vestis.errors import VestisError
from vestis.inference.batch import probabilities
from vestis.inference.predictor import Predictor, project_heatmap
from vestis.inference.results import MultiLabelResult, Prediction, SingleLabelResult


@pytest.fixture(scope="module")
def torch_predictor(ckpt):
    return Predictor.from_path(ckpt, device="cpu")


def _images(image_dir):
    return [Image.open(p) for p in sorted(image_dir.rglob("*.*"))]


def _probs(category, colour, sleeve, occasion):
    """A one-image probability dict for the small taxonomy."""
    return {
        "category": np.array([category], np.float32),
        "colour": np.array([colour], np.float32),
        "sleeve.length": np.array([sleeve], np.float32),
        "occasion": np.array([occasion], np.float32),
    }


def test_from_checkpoint(torch_predictor, ckpt):
    p = torch_predictor
    assert (p.backend, p.device, p.path, p.image_size) == ("torch", "cpu", ckpt, IMAGE_SIZE)
    assert p.taxonomy == small_taxonomy()
    assert p.thresholds == THRESHOLDS
    assert p.preprocessing["pad_value"] == 255 and p.preprocessing["resize"] == "letterbox"
    assert p.info["backend"] == "torch" and p.info["quantization"] == "none"


def test_preprocess_letterboxes_to_uint8(torch_predictor):
    wide = Image.new("RGB", (40, 20), (10, 20, 30))
    grey = Image.new("L", (16, 32), 77)
    batch = torch_predictor.preprocess([wide, grey])
    assert batch.dtype == np.uint8 and batch.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    # 40x20 -> 64x32, centred: rows 16..47 hold the image, the rest is white padding
    assert (batch[0, :, 16:48, :] == np.array([10, 20, 30])[:, None, None]).all()
    assert (batch[0, :, :16, :] == 255).all() and (batch[0, :, 48:, :] == 255).all()
    # a greyscale image becomes three equal channels, 16x32 -> 32x64 centred on columns 16..47
    assert (batch[1, :, :, 16:48] == 77).all() and (batch[1, :, :, :16] == 255).all()


def test_predict_arrays_matches_the_model(torch_predictor, ckpt, image_dir):
    images = _images(image_dir)
    batch = torch_predictor.preprocess(images)
    got = torch_predictor.predict_arrays(batch)
    model = vestis.load(ckpt)
    x = normalize(torch.from_numpy(batch), model.config.data.mean, model.config.data.std)
    with torch.no_grad():
        ref = probabilities(model(x), model.taxonomy)
    assert list(got) == ["category", "colour", "sleeve.length", "occasion"]
    for k, v in ref.items():
        assert got[k].dtype == np.float32 and got[k].shape == (len(images), v.shape[1])
        np.testing.assert_allclose(got[k], v.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (np.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32), "float32"),
        (np.zeros((1, 3, 32, 32), np.uint8), r"\(1, 3, 32, 32\)"),
        (np.zeros((3, IMAGE_SIZE, IMAGE_SIZE), np.uint8), "expected uint8"),
    ],
)
def test_predict_arrays_rejects_other_inputs(torch_predictor, batch, message):
    with pytest.raises(VestisError, match=message):
        torch_predictor.predict_arrays(batch)


def test_empty_batch(torch_predictor):
    probs = torch_predictor.predict_arrays(np.zeros((0, 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8))
    assert {k: v.shape for k, v in probs.items()} == {
        "category": (0, 3),
        "colour": (0, 3),
        "sleeve.length": (0, 2),
        "occasion": (0, 3),
    }
    assert torch_predictor.predict([]) == []


def test_decode_single_label_and_calibrated_thresholds(torch_predictor):
    probs = _probs([0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.25, 0.75], [0.25, 0.5, 0.95])
    (res,) = torch_predictor.decode(probs)
    assert res["category"] == {
        "value": "t-shirt",
        "score": pytest.approx(0.7),
        "scores": {"t-shirt": pytest.approx(0.7), "trousers": pytest.approx(0.2), "dress": pytest.approx(0.1)},
    }
    assert res["colour"]["value"] == "green" and res["colour"]["score"] == pytest.approx(0.6)
    assert res["sleeve.length"]["value"] == "long"  # applies to t-shirts
    # calibrated thresholds 0.2 / 0.6 / 0.9: casual 0.25 passes, formal 0.5 does not, sport 0.95 does; by score
    assert res["occasion"]["values"] == ["sport", "casual"]
    assert res["occasion"]["scores"] == pytest.approx({"casual": 0.25, "formal": 0.5, "sport": 0.95})
    # every value's decision records the threshold it was taken at
    assert res["occasion"]["thresholds"] == {"casual": 0.2, "formal": 0.6, "sport": 0.9}
    assert "thresholds" not in res["category"]  # single-label: the argmax, no threshold
    # the default 0.3 everywhere: casual 0.25 fails, formal 0.5 passes
    (raw,) = torch_predictor.decode(probs, calibrated=False)
    assert raw["occasion"]["values"] == ["sport", "formal"]
    assert raw["occasion"]["thresholds"] == {"casual": 0.3, "formal": 0.3, "sport": 0.3}


def test_decode_threshold_is_inclusive():
    p = Predictor.from_model(_tiny_model(), thresholds={})
    (res,) = p.decode(_probs([1, 0, 0], [1, 0, 0], [1, 0], [0.3, 0.2999, 0.31]))
    assert res["occasion"]["values"] == ["sport", "casual"]


def _tiny_model():
    """The checkpoint's architecture, random weights, with its config attached (as ``vestis.load`` does)."""
    from vestis.config import load_config
    from vestis.models import create_model

    cfg = load_config("tiny", [f"data.image_size={IMAGE_SIZE}"])
    model = create_model(cfg.model, small_taxonomy()).eval()
    model.config = cfg
    return model


def test_decode_suppresses_attributes_of_other_categories(torch_predictor):
    trousers, dress = [0.1, 0.8, 0.1], [0.1, 0.2, 0.7]
    (r1,) = torch_predictor.decode(_probs(trousers, [1, 0, 0], [0.9, 0.1], [0.1, 0.1, 0.1]))
    (r2,) = torch_predictor.decode(_probs(dress, [1, 0, 0], [0.9, 0.1], [0.1, 0.1, 0.1]))
    assert list(r1) == list(r2) == ["category", "colour", "occasion"]  # sleeve.length: t-shirts only
    assert r1["category"]["value"] == "trousers" and r2["category"]["value"] == "dress"
    assert r1["occasion"]["values"] == []


def test_predict_is_the_three_stages(torch_predictor, image_dir):
    images = _images(image_dir)
    got = torch_predictor.predict(images)
    expected = torch_predictor.decode(torch_predictor.predict_arrays(torch_predictor.preprocess(images)))
    assert len(got) == len(images) and all(isinstance(g, Prediction) for g in got)
    assert [g.to_dict() for g in got] == expected
    assert got == expected  # the typed results also compare (and read) as the dicts
    assert json.loads(json.dumps([g.to_dict() for g in got])) == expected  # plain Python types only


def test_one_image_in_one_typed_result_out(torch_predictor, image_dir):
    img = _images(image_dir)[0]
    pred = torch_predictor.predict(img)
    assert isinstance(pred, Prediction)
    [as_list] = torch_predictor.predict([img])
    assert pred == as_list
    probs = torch_predictor.predict_arrays(torch_predictor.preprocess([img]))
    cat = pred["category"]
    assert isinstance(cat, SingleLabelResult) and cat.kind == "single"
    j = int(np.argmax(probs["category"][0]))
    assert cat.value == ["t-shirt", "trousers", "dress"][j] and cat.score == pytest.approx(probs["category"][0, j])
    occ = pred["occasion"]
    assert isinstance(occ, MultiLabelResult) and occ.kind == "multi"
    assert occ.thresholds == {"casual": 0.2, "formal": 0.6, "sport": 0.9}
    chosen = [v for v, s in sorted(occ.scores.items(), key=lambda kv: -kv[1]) if s >= occ.thresholds[v]]
    assert occ.values == chosen
    assert occ.to_dict() == {"values": occ.values, "scores": occ.scores, "thresholds": occ.thresholds}
    # dict-style reading, for code written against the list-of-dicts results
    assert occ["values"] == occ.values and occ.get("value") is None and cat.get("values", "absent") == "absent"
    assert list(pred) == list(pred.to_dict()) and "scores" in cat and set(cat.keys()) == {"value", "score", "scores"}


def _same(got: Prediction, want: Prediction) -> None:
    """Equal decisions and scores equal up to float noise (a convolution's sums depend on the batch size)."""
    assert list(got) == list(want)
    for name, w in want.items():
        g = got[name]
        assert type(g) is type(w) and g.get("value") == w.get("value") and g.get("values") == w.get("values"), name
        assert g.scores == pytest.approx(w.scores, abs=1e-6) and g.get("thresholds") == w.get("thresholds"), name


def test_paths_and_arrays_are_images_too(torch_predictor, image_dir):
    paths = sorted(image_dir.rglob("*.*"))
    # a path is decoded by the bounded loader as batch tagging decodes it (JPEG at a reduced DCT scale)
    want = torch_predictor.predict([load_image(p, min_side=IMAGE_SIZE) for p in paths])
    assert torch_predictor.predict(paths) == want
    _same(torch_predictor.predict(str(paths[1])), want[1])
    rgb = Image.open(paths[2]).convert("RGB")
    array = np.asarray(rgb)  # (H, W, 3) uint8
    assert torch_predictor.predict(array) == torch_predictor.predict(rgb)
    mixed = torch_predictor.predict((rgb, paths[1], array))  # a tuple is a list of images too
    assert len(mixed) == 3 and mixed[0] == mixed[2]
    _same(mixed[0], torch_predictor.predict(rgb))
    _same(mixed[1], want[1])
    np.testing.assert_allclose(torch_predictor.heatmap(array), torch_predictor.heatmap(rgb), atol=1e-6)
    # a path's heat-map covers the file's own pixels (decoded at full size)
    full = load_image(paths[2])
    np.testing.assert_allclose(torch_predictor.heatmap(paths[2]), torch_predictor.heatmap(full), atol=1e-6)
    assert torch_predictor.heatmap(str(paths[0])).shape == (30, 40)


def test_bad_inputs_are_vestis_errors(torch_predictor, tmp_path):
    with pytest.raises(ImageNotFound, match=r"missing\.jpg: image file not found"):
        torch_predictor.predict(tmp_path / "missing.jpg")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(VestisError, match="not a readable image"):
        torch_predictor.predict([str(text)])
    with pytest.raises(VestisError, match=r"image: expected a uint8 \(H, W, 3\) RGB array, got float32 \(8, 8, 3\)"):
        torch_predictor.predict(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(VestisError, match=r"images\[1\]: expected a uint8 \(H, W, 3\) RGB array, got uint8 \(8, 8\)"):
        torch_predictor.predict([Image.new("RGB", (8, 8)), np.zeros((8, 8), np.uint8)])
    with pytest.raises(VestisError, match=r"image: expected a PIL image, a path or a uint8 .* got int"):
        torch_predictor.predict(3)
    with pytest.raises(VestisError, match=r"image: expected a PIL image.* got bytes"):
        torch_predictor.heatmap(b"\xff\xd8")


def test_the_pixel_cap_applies_to_paths_and_arrays(ckpt, image_dir):
    p = Predictor.from_path(ckpt, device="cpu")
    p.max_pixels = 40 * 30 - 1  # a.jpg is 40 x 30
    with pytest.raises(ImageTooLarge, match="over the cap of 1,199"):
        p.predict(image_dir / "a.jpg")
    with pytest.raises(VestisError, match="40x30 pixels, over the cap of 1,199"):
        p.predict(np.zeros((30, 40, 3), np.uint8))
    assert isinstance(p.predict(np.zeros((29, 40, 3), np.uint8)), Prediction)


def test_fingerprint_of_a_model(ckpt):
    model = _tiny_model()
    assert Predictor.from_model(model).fingerprint is None  # a model without one
    model.fingerprint = "sha256:" + "ab" * 32
    p = Predictor.from_model(model)
    assert p.fingerprint == p.info["fingerprint"] == "sha256:" + "ab" * 32
    # from a checkpoint: the loaded model's own
    p = Predictor.from_path(ckpt)
    assert p.fingerprint == p.info["fingerprint"] == vestis.load(ckpt).fingerprint
    assert p.fingerprint.startswith("sha256:") and len(p.fingerprint) == 7 + 64


def test_letterbox_box_matches_letterbox():
    for w, h in [(40, 20), (20, 40), (64, 64), (7, 100), (100, 3), (33, 57)]:
        img = letterbox(Image.new("RGB", (w, h), (0, 0, 0)), IMAGE_SIZE, 255)
        dark = np.argwhere(np.asarray(img)[:, :, 0] < 128)  # (row, col) of image pixels
        (y0, x0), (y1, x1) = dark.min(0), dark.max(0)
        assert letterbox_box(w, h, IMAGE_SIZE) == (x0, y0, x1 - x0 + 1, y1 - y0 + 1), (w, h)


def test_project_heatmap_crops_the_padding_and_rescales():
    s = IMAGE_SIZE
    # a 64x32 image sits on rows 16..47; the raw map rises from left to right there, padding rows are huge
    raw = np.tile(np.linspace(0.2, 0.6, s, dtype=np.float32), (s, 1))
    raw[:16] = raw[48:] = 100.0
    out = project_heatmap(raw, (64, 32), s)
    assert out.shape == (32, 64) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[:, -1], 1.0, atol=1e-6)
    np.testing.assert_allclose(out[0], (raw[16] - 0.2) / 0.4, atol=1e-5)
    # the padding alone varies: the image region is flat, so the map is all zeros; other output sizes
    flat = np.full((s, s), 0.5, np.float32)
    flat[:16] = 3.0
    assert (project_heatmap(flat, (64, 32), s, out_size=(8, 4)) == 0).all()
    assert project_heatmap(flat, (64, 32), s, out_size=(8, 4)).shape == (4, 8)


def test_heatmap_of_an_image(torch_predictor, ckpt):
    img = Image.new("RGB", (48, 30), (200, 30, 30))
    img.paste((20, 20, 200), (30, 5, 44, 25))
    heat = torch_predictor.heatmap(img)
    assert heat.shape == (30, 48) and heat.dtype == np.float32
    assert heat.min() == pytest.approx(0.0, abs=1e-6) and heat.max() == pytest.approx(1.0, abs=1e-6)
    # the same map from the model's own attention maps (a3: CBAM at strides 8, 16, 32)
    model = vestis.load(ckpt)
    x = normalize(torch.from_numpy(torch_predictor.preprocess([img])), model.config.data.mean, model.config.data.std)
    with torch.no_grad():
        maps = list(model.attention_maps(x).values())
    size = maps[0].shape[-2:]
    raw = torch.stack([torch.nn.functional.interpolate(m[:, None], size=size, mode="bilinear") for m in maps])
    np.testing.assert_allclose(heat, project_heatmap(raw.mean(0)[0, 0].numpy(), img.size, IMAGE_SIZE), atol=1e-5)


def test_onnx_backend_agrees_with_torch(onnx_fp32, torch_predictor, image_dir):
    p = Predictor.from_path(onnx_fp32, device="cpu")
    assert (p.backend, p.device, p.info["quantization"]) == ("onnx", "cpu", "none")
    assert p.taxonomy == torch_predictor.taxonomy and p.thresholds == THRESHOLDS
    assert p.fingerprint == torch_predictor.fingerprint is not None  # the export carries the checkpoint's
    assert {k: p.preprocessing[k] for k in ("image_size", "pad_value", "resize")} == {
        "image_size": IMAGE_SIZE,
        "pad_value": 255,
        "resize": "letterbox",
    }
    images = _images(image_dir)
    got, ref = p.predict(images), torch_predictor.predict(images)
    for g, r in zip(got, ref, strict=True):
        assert list(g) == list(r)
        for name in g:
            assert g[name].get("value") == r[name].get("value") and g[name].get("values") == r[name].get("values")
            assert g[name]["scores"] == pytest.approx(r[name]["scores"], abs=1e-4)
    np.testing.assert_allclose(p.heatmap(images[0]), torch_predictor.heatmap(images[0]), atol=1e-3)


def test_from_model_takes_hand_set_thresholds():
    model = _tiny_model()
    p = Predictor.from_model(model, thresholds={"occasion": [0.5, 0.5, 0.5]}, device="cpu")
    assert p.thresholds_for("occasion").tolist() == [0.5, 0.5, 0.5]
    assert p.thresholds_for("occasion", calibrated=False).tolist() == [0.3, 0.3, 0.3]
    assert p.image_size == IMAGE_SIZE and p.path is None and p.config["model"]["backbone"] == "resnet18_tiny"


def test_errors(tmp_path, ckpt):
    with pytest.raises(VestisError, match="model file not found"):
        Predictor.from_path(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 not a model")
    with pytest.raises(VestisError, match="not a loadable ONNX model"):
        Predictor.from_path(garbage)
    plain = tmp_path / "plain.onnx"  # a valid ONNX graph, but not written by vestis export
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), plain)
    with pytest.raises(VestisError, match="no vestis metadata"):
        Predictor.from_path(plain)
    if not torch.cuda.is_available():
        with pytest.raises(VestisError, match="CUDA is not available"):
            Predictor.from_path(ckpt, device="cuda")
    with pytest.raises(VestisError, match="expected cpu, cuda or cuda:N"):
        Predictor.from_path(ckpt, device="tpu")
    with pytest.raises(VestisError, match=r"thresholds.occasion: expected 3 values, got 2"):
        Predictor.from_model(_tiny_model(), thresholds={"occasion": [0.5, 0.5]})
