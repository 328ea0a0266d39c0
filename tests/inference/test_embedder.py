"""Embedder: checkpoint layout round trip and tampering, checkpoint against ONNX, preprocessing, input checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import vestis
from tests.inference.conftest import IMAGE_SIZE, make_checkpoint, small_taxonomy
from tests.inference.test_export_embedding import EMBEDDING_DIM, make_embedding_checkpoint, sample_batch
from vestis.data.transforms import normalize
from vestis.errors import VestisError
from vestis.inference.embedder import Embedder
from vestis.inference.export import export_onnx
from vestis.inference.predictor import Predictor
from vestis.io import atomic_write_bytes
from vestis.train.checkpoint import SIMILARITY, encode_checkpoint, load_checkpoint

NAMES = small_taxonomy().names


@pytest.fixture(scope="module")
def csn_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_embedding_checkpoint(tmp_path_factory.mktemp("csn") / "csn.ckpt", "csn", seed=1)


@pytest.fixture(scope="module")
def csn_onnx(csn_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(csn_ckpt, tmp_path_factory.mktemp("csn-onnx") / "csn.onnx", opset=17, check_images=0).path


def _images(image_dir: Path) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sorted(image_dir.rglob("*.*"))]


def _rewrite(path: Path, edit) -> Path:
    """The checkpoint at ``path`` with ``edit(state)`` applied, written back (a tampered file)."""
    state = load_checkpoint(path)
    edit(state)
    atomic_write_bytes(path, encode_checkpoint(state))
    return path


def test_checkpoint_records_the_layout_and_load_gives_identical_embeddings(tmp_path):
    from vestis.config import load_config
    from vestis.models import create_model
    from vestis.train.checkpoint import save_checkpoint

    cfg = load_config("tiny", [f"data.image_size={IMAGE_SIZE}", "model.name=csn", "model.embedding_dim=8"])
    torch.manual_seed(5)
    net = create_model(cfg.model, small_taxonomy()).eval()
    ckpt = save_checkpoint(tmp_path / "csn.ckpt", model=net, config=cfg, taxonomy=small_taxonomy())
    state = load_checkpoint(ckpt)
    assert state["embedding"] == {"model": "csn", "layout": [[a, 8] for a in NAMES], "similarity": SIMILARITY}
    x = normalize(torch.from_numpy(sample_batch(4)), cfg.data.mean, cfg.data.std)
    loaded = vestis.load(ckpt)
    with torch.no_grad():
        before, after = net.embed(x), loaded.embed(x)
    assert list(after) == NAMES
    for a in NAMES:
        assert torch.equal(before[a], after[a]), a  # bit for bit
    assert loaded.embedding_layout() == [(a, 8) for a in NAMES]


def test_classifier_checkpoints_have_no_embedding_entry(tmp_path):
    state = load_checkpoint(make_checkpoint(tmp_path / "a3.ckpt"))
    assert state.get("embedding") is None
    vestis.load(tmp_path / "a3.ckpt")  # and load as before


def test_datrnet_is_rebuilt_at_its_training_image_size(tmp_path):
    """The ASE trunk sizes its height / width attention by the input side; 48 px is not the tiny default (64)."""
    ckpt = make_embedding_checkpoint(tmp_path / "datrnet.ckpt", "datrnet", image_size=48)
    e = Embedder.from_checkpoint(ckpt)
    assert e.image_size == 48 and e.layout == [(a, EMBEDDING_DIM) for a in NAMES]
    got = e.embed_arrays(sample_batch(2, size=48))
    assert all(v.shape == (2, EMBEDDING_DIM) for v in got.values())


def _set(key: str, value):
    def edit(state):
        state["embedding"][key] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("layout", [[a, EMBEDDING_DIM + (a == "colour")] for a in NAMES]), "embedding.layout: expected"),
        (_set("layout", [[a, EMBEDDING_DIM] for a in reversed(NAMES)]), "embedding.layout: expected"),
        (_set("layout", [[a, EMBEDDING_DIM] for a in NAMES[:-1]]), "embedding.layout: expected"),
        (_set("layout", [["colour", "12"]]), r"embedding.layout: expected a list of \[attribute, positive width\]"),
        (_set("layout", [["colour", 0]]), "positive width"),
        (_set("layout", "category:12"), "positive width"),
        (_set("model", "datrnet"), "embedding.model: expected 'csn'"),
        (_set("model", 3), "embedding: expected a table with the model name"),
    ],
)
def test_a_tampered_layout_is_refused(edit, message, tmp_path):
    ckpt = _rewrite(make_embedding_checkpoint(tmp_path / "csn.ckpt", "csn"), edit)
    with pytest.raises(VestisError, match=message) as err:
        vestis.load(ckpt)
    assert str(ckpt) in str(err.value)
    with pytest.raises(VestisError, match=message):
        Embedder.from_path(ckpt)


def test_an_embedding_entry_on_a_classifier_is_refused(tmp_path):
    def edit(state):
        state["embedding"] = {"model": "a3", "layout": [["category", 4]], "similarity": SIMILARITY}

    ckpt = _rewrite(make_checkpoint(tmp_path / "a3.ckpt"), edit)
    with pytest.raises(VestisError, match="records an embedding layout, but its config builds AttributeModel"):
        vestis.load(ckpt)


def test_checkpoint_and_onnx_embedders_agree(csn_ckpt, csn_onnx, image_dir):
    torch_e, onnx_e = Embedder.from_path(csn_ckpt), Embedder.from_path(csn_onnx)
    assert (torch_e.backend, onnx_e.backend) == ("torch", "onnx")
    assert torch_e.layout == onnx_e.layout == [(a, EMBEDDING_DIM) for a in NAMES]
    same = ("model", "backbone", "layout", "similarity", "image_size", "taxonomy")
    assert {k: torch_e.info[k] for k in same} == {k: onnx_e.info[k] for k in same}
    assert torch_e.info["model"] == "csn" and torch_e.info["backbone"] == "resnet18_tiny"
    assert torch_e.preprocessing == onnx_e.preprocessing
    # both name the checkpoint's model, so an index and a search can be traced to it
    assert torch_e.fingerprint == onnx_e.fingerprint == vestis.load(csn_ckpt).fingerprint
    assert torch_e.info["fingerprint"] == torch_e.fingerprint and torch_e.fingerprint.startswith("sha256:")
    images = _images(image_dir)
    a, b = torch_e.embed(images), onnx_e.embed(images)
    assert list(a) == list(b) == NAMES
    for name in NAMES:
        assert a[name].shape == (len(images), EMBEDDING_DIM) and a[name].dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(a[name], axis=1), 1.0, atol=1e-5)
        assert np.abs(a[name] - b[name]).max() <= 1e-5
    # and both equal the model on the same letterboxed pixels
    model = vestis.load(csn_ckpt)
    x = normalize(torch.from_numpy(torch_e.preprocess(images)), model.config.data.mean, model.config.data.std)
    with torch.no_grad():
        ref = model.embed(x)
    for name in NAMES:
        np.testing.assert_allclose(a[name], ref[name].numpy(), atol=1e-6)


def test_preprocess_is_the_predictors(image_dir):
    ckpt = make_checkpoint(image_dir.parent / "pre-a3.ckpt")
    images = _images(image_dir)
    np.testing.assert_array_equal(
        Embedder.from_checkpoint(ckpt).preprocess(images), Predictor.from_checkpoint(ckpt).preprocess(images)
    )


def test_a_classifier_checkpoint_gives_the_attribute_based_embedder(tmp_path):
    ckpt = make_checkpoint(tmp_path / "a3.ckpt")
    e = Embedder.from_checkpoint(ckpt)
    model = vestis.load(ckpt)
    widths = [b.fc.out_features for b in model.heads.branches]
    assert e.info["model"] == "attribute_based" and e.layout == list(zip(NAMES, widths, strict=True))
    batch = sample_batch(3)
    x = normalize(torch.from_numpy(batch), model.config.data.mean, model.config.data.std)
    with torch.no_grad():
        fused = model._fuse(model.backbone(x))
        want = [torch.nn.functional.normalize(b.act(b.fc(fused)), dim=1).numpy() for b in model.heads.branches]
    got = e.embed_arrays(batch)
    for name, w in zip(NAMES, want, strict=True):
        np.testing.assert_allclose(got[name], w, atol=1e-6)


def test_input_checks(csn_ckpt, image_dir):
    e = Embedder.from_checkpoint(csn_ckpt)
    s = IMAGE_SIZE
    with pytest.raises(VestisError, match=rf"batch: expected uint8 \(B, 3, {s}, {s}\).*float32"):
        e.embed_arrays(sample_batch(2).astype(np.float32))
    with pytest.raises(VestisError, match=r"got uint8 \(2, 3, 32, 32\)"):
        e.embed_arrays(sample_batch(2, size=32))
    with pytest.raises(VestisError, match=r"got uint8 \(3, 64, 64\)"):
        e.embed_arrays(sample_batch(1)[0])
    empty = e.embed_arrays(np.zeros((0, 3, s, s), np.uint8))
    assert list(empty) == NAMES and all(v.shape == (0, EMBEDDING_DIM) for v in empty.values())
    assert all(v.shape == (0, EMBEDDING_DIM) for v in e.embed([]).values())
    # a bounded batch: embed_arrays refuses more, embed splits into calls of at most max_batch
    e.max_batch = 2
    with pytest.raises(VestisError, match="at most 2 images per call, got 3"):
        e.embed_arrays(sample_batch(3))
    images = _images(image_dir)
    split = e.embed(images)
    e.max_batch = 256
    whole = e.embed(images)
    for name in NAMES:
        np.testing.assert_allclose(split[name], whole[name], atol=1e-6)
    with pytest.raises(VestisError, match="max_batch: expected a positive"):
        Embedder.from_model(vestis.load(csn_ckpt), max_batch=0)


def test_file_errors(tmp_path, csn_onnx):
    with pytest.raises(VestisError, match="model file not found"):
        Embedder.from_path(tmp_path / "none.onnx")
    classifier = export_onnx(make_checkpoint(tmp_path / "a3.ckpt"), tmp_path / "a3.onnx", opset=17, check_images=0)
    with pytest.raises(VestisError, match="a classifier export, not an embedding one"):
        Embedder.from_path(classifier.path)
    # an ONNX file whose recorded layout does not fit its graph's output
    proto = onnx.load(csn_onnx)
    meta = {p.key: p.value for p in proto.metadata_props}
    info = json.loads(meta["vestis.embedding"])
    info["layout"] = info["layout"][:-1]
    meta["vestis.embedding"] = json.dumps(info)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta)
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, bad)
    with pytest.raises(VestisError, match=r"widths sum to 36, but the graph's output is 48 wide"):
        Embedder.from_path(bad)
    meta["vestis.embedding"] = "{not json"
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta)
    onnx.save(proto, bad)
    with pytest.raises(VestisError, match="missing or malformed entry"):
        Embedder.from_path(bad)


def test_the_predictor_refuses_an_embedding_checkpoint_cleanly(csn_ckpt):
    with pytest.raises(VestisError, match=r"a csn embedding model: .*Embedder"):
        Predictor.from_path(csn_ckpt)
