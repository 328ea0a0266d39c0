"""ONNX export: output naming, the inference graph against the model, metadata, fp32 parity, int8 agreement (and its
warnings and progress) and the model fingerprint in the metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vestis
from tests.inference.conftest import IMAGE_SIZE, THRESHOLDS, make_checkpoint, small_taxonomy
from vestis.data.taxonomy import Taxonomy
from vestis.data.transforms import letterbox, normalize
from vestis.errors import VestisError
from vestis.inference.batch import probabilities
from vestis.inference.export import InferenceModule, export_onnx, load_sample_images, output_names
from vestis.inference.predictor import Predictor


def _letterboxed(paths: list[Path], size: int = IMAGE_SIZE) -> np.ndarray:
    arrays = [np.asarray(letterbox(Image.open(p).convert("RGB"), size, 255)).transpose(2, 0, 1) for p in paths]
    return np.ascontiguousarray(np.stack(arrays))  # (N, 3, S, S) uint8


def _reference(ckpt: Path, batch: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Probabilities and heat-map from the checkpoint through the plain model API (no InferenceModule)."""
    model = vestis.load(ckpt)
    x = normalize(torch.from_numpy(batch), model.config.data.mean, model.config.data.std)
    with torch.no_grad():
        probs = {k: v.numpy() for k, v in probabilities(model(x), model.taxonomy).items()}
        maps = list(model.attention_maps(x).values())
    size = maps[0].shape[-2:]
    heat = torch.stack([F.interpolate(m[:, None], size=size, mode="bilinear")[:, 0] for m in maps]).mean(0)
    return probs, heat.numpy()


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_output_names_are_sanitised_and_unique():
    tax = Taxonomy.from_dict(
        {
            "attributes": [
                {"name": "sleeve.length", "values": ["a", "b"]},
                {"name": "sleeve_length", "values": ["a", "b"]},
                {"name": "3d look", "values": ["a", "b"]},
                {"name": "images", "values": ["a", "b"]},
                {"name": "heatmap", "values": ["a", "b"]},
                {"name": "colour", "values": ["a", "b"]},
            ]
        }
    )
    assert output_names(tax) == {
        "sleeve.length": "sleeve_length",
        "sleeve_length": "sleeve_length_2",
        "3d look": "attr_3d_look",
        "images": "images_2",
        "heatmap": "heatmap_2",
        "colour": "colour",
    }


def test_inference_module_matches_the_model(ckpt, image_dir):
    batch = _letterboxed(sorted(image_dir.rglob("*.*")))
    model = vestis.load(ckpt)
    module = InferenceModule(model, model.taxonomy, model.config.data.mean, model.config.data.std).eval()
    with torch.no_grad():
        outs = module(torch.from_numpy(batch))
    ref_probs, ref_heat = _reference(ckpt, batch)
    for a, got in zip(model.taxonomy, outs[:-1], strict=True):
        np.testing.assert_allclose(got.numpy(), ref_probs[a.name], atol=1e-6)
    assert outs[-1].shape == (len(batch), IMAGE_SIZE // 8, IMAGE_SIZE // 8)  # the stride-8 level of a3
    np.testing.assert_allclose(outs[-1].numpy(), ref_heat, atol=1e-6)


def test_heatmap_without_attention_is_the_activation_energy(tmp_path, image_dir):
    ckpt = make_checkpoint(tmp_path / "a2.ckpt", model="a2")  # FPN, no attention: no spatial maps
    model = vestis.load(ckpt)
    batch = _letterboxed(sorted(image_dir.rglob("*.*"))[:3])
    x = normalize(torch.from_numpy(batch), model.config.data.mean, model.config.data.std)
    with torch.no_grad():
        feats = [f.numpy() for f in model.neck(model.backbone(x)).values()]
        heat = InferenceModule(model, model.taxonomy, model.config.data.mean, model.config.data.std)(
            torch.from_numpy(batch)
        )[-1]
    energies = []
    for f in feats:  # (B, C, h, w)
        e = (f.astype(np.float64) ** 2).mean(axis=1)
        energies.append(e / e.max(axis=(1, 2), keepdims=True))
    size = energies[0].shape[-2:]
    up = [F.interpolate(torch.from_numpy(e)[:, None], size=size, mode="bilinear")[:, 0].numpy() for e in energies]
    np.testing.assert_allclose(heat.numpy(), np.mean(up, axis=0), atol=1e-5)


def test_fp32_graph_and_metadata(onnx_fp32, ckpt):
    sess = _session(onnx_fp32)
    (inp,) = sess.get_inputs()
    assert (inp.name, inp.type) == ("images", "tensor(uint8)")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, IMAGE_SIZE, IMAGE_SIZE]  # dynamic batch only
    assert [o.name for o in sess.get_outputs()] == ["category", "colour", "sleeve_length", "occasion", "heatmap"]
    assert [o.shape[1] for o in sess.get_outputs()[:4]] == [3, 3, 2, 3]
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["vestis.format"] == "vestis-onnx" and meta["vestis.version"] == "1"
    assert Taxonomy.from_dict(json.loads(meta["vestis.taxonomy"])) == small_taxonomy()
    prep = json.loads(meta["vestis.preprocessing"])
    assert prep["image_size"] == IMAGE_SIZE and prep["pad_value"] == 255 and prep["resize"] == "letterbox"
    assert prep["mean"] == pytest.approx([0.485, 0.456, 0.406]) and prep["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert prep["input"] == {"name": "images", "dtype": "uint8", "layout": "NCHW", "channels": "RGB"}
    assert json.loads(meta["vestis.thresholds"]) == THRESHOLDS
    assert json.loads(meta["vestis.outputs"])["sleeve.length"] == "sleeve_length"
    assert json.loads(meta["vestis.config"])["model"]["backbone"] == "resnet18_tiny"
    assert json.loads(meta["vestis.quantization"]) == {"mode": "none"}
    assert meta["vestis.heatmap"] == "heatmap"


def test_fp32_parity_with_pytorch(onnx_fp32, ckpt, image_dir):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (3, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    batch = np.concatenate([_letterboxed(sorted(image_dir.rglob("*.*"))), noise])
    sess = _session(onnx_fp32)
    ref_probs, ref_heat = _reference(ckpt, batch)
    names = ["category", "colour", "sleeve.length", "occasion"]
    for b in (batch, batch[:1]):  # the batch axis is dynamic
        outs = sess.run(None, {"images": b})
        for name, got in zip(names, outs[:4], strict=True):
            assert np.abs(got - ref_probs[name][: len(b)]).max() <= 1e-4, name
        assert np.abs(outs[4] - ref_heat[: len(b)]).max() <= 1e-4


def test_sample_images_from_a_folder_are_letterboxed(image_dir):
    paths = sorted(image_dir.rglob("*.*"))
    got = load_sample_images([image_dir], n=len(paths), size=IMAGE_SIZE)
    # every image, in collect_inputs order (relative path order), letterboxed exactly as in training
    expected = _letterboxed(sorted(paths, key=lambda p: p.relative_to(image_dir).as_posix()))
    np.testing.assert_array_equal(got, expected)
    assert load_sample_images([image_dir], n=2, size=IMAGE_SIZE).shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)


@pytest.fixture(scope="module")
def int8_calls(ckpt, tmp_path_factory):
    """The int8 export and the ``progress`` calls it made."""
    out = tmp_path_factory.mktemp("int8") / "tiny-int8.onnx"
    calls: list[tuple[int, int]] = []
    result = export_onnx(
        ckpt, out, int8=True, calibration_images=16, check_images=32, progress=lambda d, t: calls.append((d, t))
    )
    return result, calls


@pytest.fixture(scope="module")
def int8_export(int8_calls):
    return int8_calls[0]


def test_int8_graph_is_quantised(int8_export):
    model = onnx.load(int8_export.path)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 10  # every convolution and linear layer of the tiny network
    meta = {p.key: p.value for p in model.metadata_props}
    quant = json.loads(meta["vestis.quantization"])
    assert quant["mode"] == "static-int8" and quant["calibration_images"] == 16


def test_int8_agreement_with_pytorch(int8_export, ckpt):
    """int8 is close, not equal: bounded probability error and mostly the same decisions.

    Static int8 rounds every activation to one of 256 levels of its calibrated range, an error of up to half a
    step (about 0.2 % of the range) per layer, compounded over the network. This tiny random-init network has
    nearly uniform probabilities (top-2 margins of a few hundredths), so some argmaxes flip: agreement is
    0.72 to 1.0 per attribute, depending on the seed and the onnxruntime version. A decision may flip only where
    the reference's margin is within the measured probability error, and that is asserted exactly. A broken
    quantisation (wrong scales, channels mixed up, an unquantised calibration) falls to chance agreement (1/K, at
    most 0.5 here) with probability errors of the order of the probabilities.
    """
    batch = load_sample_images(None, 32, IMAGE_SIZE, seed=1)  # the images the export's own check used
    outs = _session(int8_export.path).run(None, {"images": batch})
    ref, _ = _reference(ckpt, batch)
    names = ["category", "colour", "sleeve.length", "occasion"]
    agreement = {}
    for name, got in zip(names, outs[:4], strict=True):
        err = np.abs(got - ref[name]).max()
        assert err <= 0.1, name
        if name == "occasion":
            t = np.array(THRESHOLDS["occasion"])
            same = (got >= t) == (ref[name] >= t)
            agreement[name] = float(same.mean())
            # a decision can only flip where the reference is within the probability error of its threshold
            assert same[np.abs(ref[name] - t) > err].all(), name
        else:
            same = got.argmax(1) == ref[name].argmax(1)
            agreement[name] = float(same.mean())
            top2 = np.sort(ref[name], axis=1)[:, -2:]
            assert same[top2[:, 1] - top2[:, 0] > 2 * err].all(), name  # only near-ties may flip
    # chance agreement would be 1/K (at most 0.5 here); near-ties are many in this random-init network
    assert min(agreement.values()) >= 0.6, agreement
    # the report written by the export is the same comparison
    parity = int8_export.parity
    assert parity is not None and parity.num_images == 32
    assert parity.agreement == pytest.approx(agreement)
    # the export's own reference and this one may run the weights in different memory orders: float rounding apart
    assert parity.max_diff == pytest.approx(
        max(float(np.abs(o - ref[n]).max()) for n, o in zip(names, outs[:4], strict=True)), abs=1e-6
    )


def test_export_of_a_file_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(VestisError, match="not a readable checkpoint"):
        export_onnx(bad, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_efficientnet_lite_with_paper_outputs_exports_with_parity(tmp_path, image_dir):
    """TensorFlow "SAME" padding (computed from the input size) and all-sigmoid outputs survive the export."""
    from vestis.config import load_config
    from vestis.models import create_model
    from vestis.train.checkpoint import save_checkpoint

    cfg = load_config(
        "tiny",
        [
            f"data.image_size={IMAGE_SIZE}",
            "model.backbone=efficientnet_lite_tiny",
            "model.name=a1",
            "model.output=paper",
        ],
    )
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        tmp_path / "lite.ckpt", model=create_model(cfg.model, small_taxonomy()), config=cfg, taxonomy=small_taxonomy()
    )
    onnx_path = export_onnx(ckpt, tmp_path / "lite.onnx", check_images=0).path
    batch = _letterboxed(sorted(image_dir.rglob("*.*")))
    model = vestis.load(ckpt)
    assert model.output == "paper"
    x = normalize(torch.from_numpy(batch), model.config.data.mean, model.config.data.std)
    with torch.no_grad():
        logits = model(x)
    outs = _session(onnx_path).run(None, {"images": batch})
    for name, got in zip(["category", "colour", "sleeve.length", "occasion"], outs[:4], strict=True):
        want = logits[name].sigmoid().numpy()  # sigmoid for single-label attributes too
        assert np.abs(got - want).max() <= 1e-4, name
    assert not np.allclose(outs[0].sum(1), 1.0)  # not a softmax


def test_int8_reports_progress_and_agreement_on_the_calibration_images(int8_calls, ckpt):
    result, calls = int8_calls
    assert calls == [(i, 16) for i in range(1, 17)]  # once per calibration image run, in order
    calib = load_sample_images(None, 16, IMAGE_SIZE, seed=0)  # the images the export calibrated on
    outs = _session(result.path).run(None, {"images": calib})
    ref, _ = _reference(ckpt, calib)
    t = np.array(THRESHOLDS["occasion"])
    want = {
        name: float(((got >= t) == (ref[name] >= t)).mean())
        if name == "occasion"
        else float((got.argmax(1) == ref[name].argmax(1)).mean())
        for name, got in zip(["category", "colour", "sleeve.length", "occasion"], outs[:4], strict=True)
    }
    assert result.calibration_agreement == pytest.approx(want)
    low = [name for name, v in want.items() if v < 0.9]  # the default --min-agreement
    assert [w.split(" on ")[1].split(" for ")[0] for w in result.warnings] == low


def test_agreement_warnings_name_each_attribute_below_the_minimum():
    from vestis.inference.export import _agreement_warnings

    notes = _agreement_warnings({"category": 0.95, "colour": 0.5, "occasion": 0.9}, 0.9, 32)
    assert notes == [
        "int8 agrees with fp32 on colour for 50.0% of the 32 calibration images, below --min-agreement 0.9; "
        "calibrate on more of your own images (--calibration) or ship the fp32 model"
    ]  # 0.9 itself is enough
    assert _agreement_warnings({"colour": 0.5}, 0.0, 32) == []


def test_min_agreement_must_be_a_fraction(ckpt, tmp_path):
    with pytest.raises(VestisError, match=r"min_agreement: expected a fraction in \[0, 1\], got 1.5"):
        export_onnx(ckpt, tmp_path / "m.onnx", int8=True, min_agreement=1.5)
    assert not (tmp_path / "m.onnx").exists()


def _with_fingerprint(monkeypatch, value: str) -> None:
    """Loaded models carry ``value`` as their fingerprint, as the checkpoint layer sets one."""
    from vestis.train import checkpoint

    rebuild = checkpoint.rebuild_model

    def rebuild_with_fingerprint(*args, **kwargs):
        model = rebuild(*args, **kwargs)
        model.fingerprint = value
        return model

    monkeypatch.setattr(checkpoint, "rebuild_model", rebuild_with_fingerprint)


def test_the_fingerprint_travels_into_the_metadata(ckpt, tmp_path, monkeypatch):
    fp = "sha256:" + "0f" * 32
    _with_fingerprint(monkeypatch, fp)
    out = export_onnx(ckpt, tmp_path / "m.onnx", opset=17, check_images=0)
    assert out.metadata["vestis.fingerprint"] == fp
    meta = _session(out.path).get_modelmeta().custom_metadata_map
    assert meta["vestis.fingerprint"] == fp
    p = Predictor.from_path(out.path)
    assert p.fingerprint == p.info["fingerprint"] == fp


def test_the_fingerprint_of_an_embedding_model_travels_too(tmp_path, monkeypatch):
    from tests.inference.test_export_embedding import make_embedding_checkpoint

    fp = "sha256:" + "e1" * 32
    _with_fingerprint(monkeypatch, fp)
    ckpt = make_embedding_checkpoint(tmp_path / "csn.ckpt", "csn")
    out = export_onnx(ckpt, tmp_path / "csn.onnx", opset=17, check_images=0)
    assert _session(out.path).get_modelmeta().custom_metadata_map["vestis.fingerprint"] == fp
