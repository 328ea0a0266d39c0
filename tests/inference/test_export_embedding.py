"""ONNX export of embedding models: parity per registered model and for a classifier's attribute-based embedder,
the graph and its metadata, the CLI, int8 refused, classifier exports unchanged."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

import vestis
import vestis.cli
from tests.inference.conftest import IMAGE_SIZE, make_checkpoint, small_taxonomy
from vestis.config import load_config
from vestis.data.transforms import normalize
from vestis.errors import VestisError
from vestis.inference.export import export_onnx
from vestis.inference.export_embedding import EmbeddingParityReport, export_embedding_onnx
from vestis.models import create_model
from vestis.models.embedding import as_embedder
from vestis.registry import MODELS
from vestis.train.checkpoint import save_checkpoint

# every registered embedding model on a test-sized trunk
BACKBONES = {"csn": "resnet18_tiny", "csn_fixed": "resnet18_tiny", "triplet": "resnet18_tiny"}
BACKBONES |= {"datrnet": "datrnet_ase_tiny"}
EMBEDDING_DIM = 12
runner = CliRunner()


def make_embedding_checkpoint(
    path: Path, name: str, *, seed: int = 0, image_size: int = IMAGE_SIZE, overrides: tuple[str, ...] = ()
) -> Path:
    """A random-init embedding model ``name`` on its tiny backbone and :func:`small_taxonomy`, saved."""
    cfg = load_config(
        "tiny",
        [
            f"data.image_size={image_size}",
            f"model.name={name}",
            f"model.backbone={BACKBONES[name]}",
            f"model.embedding_dim={EMBEDDING_DIM}",
            "model.embedding_hidden=16",
            *overrides,
        ],
    )
    torch.manual_seed(seed)
    net = create_model(cfg.model, small_taxonomy(), image_size=image_size)
    return save_checkpoint(path, model=net, config=cfg, taxonomy=small_taxonomy())


def reference_embeddings(ckpt: Path, batch: np.ndarray) -> tuple[list[tuple[str, int]], np.ndarray]:
    """Layout and concatenated embeddings through the plain model API (no inference module)."""
    loaded = vestis.load(ckpt)
    model = as_embedder(loaded)
    x = normalize(torch.from_numpy(batch), loaded.config.data.mean, loaded.config.data.std)
    with torch.no_grad():
        emb = model.embed(x)
    layout = model.embedding_layout()
    return layout, np.concatenate([emb[a].numpy() for a, _ in layout], axis=1)


def sample_batch(n: int = 6, size: int = IMAGE_SIZE, seed: int = 0) -> np.ndarray:
    """Noise and flat images: bright, dark and mid-grey rows stress the normalisation."""
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    batch[:1], batch[1:2] = 0, 255
    return batch


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_every_registered_embedding_model_is_swept():
    assert set(MODELS.names(task="embedding")) == set(BACKBONES)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_embedding_export_parity(name, tmp_path):
    """opset 17 (TorchScript exporter): the sweep's fast path; the dynamo default is tested below."""
    ckpt = make_embedding_checkpoint(tmp_path / f"{name}.ckpt", name)
    result = export_onnx(ckpt, tmp_path / f"{name}.onnx", opset=17, check_images=4)
    assert result.exporter == "torchscript" and result.opset == 17 and not result.int8
    batch = sample_batch()
    layout, ref = reference_embeddings(ckpt, batch)
    sess = _session(result.path)
    assert [o.name for o in sess.get_outputs()] == ["embedding"]
    for b in (batch, batch[:1]):  # the batch axis is dynamic
        (got,) = sess.run(None, {"images": b})
        assert got.shape == (len(b), EMBEDDING_DIM * 4) and got.dtype == np.float32
        assert np.abs(got - ref[: len(b)]).max() <= 1e-5
    # every part of the vector is a unit sub-embedding, in layout order
    (got,) = sess.run(None, {"images": batch})
    start = 0
    for _, width in layout:
        np.testing.assert_allclose(np.linalg.norm(got[:, start : start + width], axis=1), 1.0, atol=1e-5)
        start += width
    meta = sess.get_modelmeta().custom_metadata_map
    info = json.loads(meta["vestis.embedding"])
    assert meta["vestis.task"] == "embedding"
    assert info["model"] == name and info["backbone"] == BACKBONES[name]
    assert info["layout"] == [[a, w] for a, w in layout] == [[a, EMBEDDING_DIM] for a in small_taxonomy().names]
    assert isinstance(result.parity, EmbeddingParityReport) and result.parity.num_images == 4
    assert result.parity.max_diff <= 1e-5 and result.parity.lowest_cosine >= 1 - 1e-6


def test_sub_embeddings_differ_per_attribute_where_the_model_says_so(tmp_path):
    """csn: masked (different) sub-embeddings; triplet: one shared vector repeated; the export keeps both."""
    batch = sample_batch(3)
    parts = {}
    for name in ("csn", "triplet"):
        ckpt = make_embedding_checkpoint(tmp_path / f"{name}.ckpt", name)
        (got,) = _session(export_onnx(ckpt, tmp_path / f"{name}.onnx", opset=17, check_images=0).path).run(
            None, {"images": batch}
        )
        parts[name] = got.reshape(3, 4, EMBEDDING_DIM)  # (N, T, d)
    assert np.abs(parts["triplet"] - parts["triplet"][:, :1]).max() == 0.0
    assert np.abs(parts["csn"] - parts["csn"][:, :1]).max() > 1e-2


def test_dynamo_export_of_an_embedding_model(tmp_path):
    ckpt = make_embedding_checkpoint(tmp_path / "csn.ckpt", "csn", seed=3)
    result = export_onnx(ckpt, tmp_path / "csn.onnx", check_images=0)
    assert result.exporter == "dynamo" and result.parity is None
    batch = sample_batch(3)
    _, ref = reference_embeddings(ckpt, batch)
    sess = _session(result.path)
    (inp,) = sess.get_inputs()
    assert (inp.name, inp.type) == ("images", "tensor(uint8)")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, IMAGE_SIZE, IMAGE_SIZE]
    (got,) = sess.run(None, {"images": batch})
    assert np.abs(got - ref).max() <= 1e-5
    meta = sess.get_modelmeta().custom_metadata_map
    prep = json.loads(meta["vestis.preprocessing"])
    assert prep["image_size"] == IMAGE_SIZE and prep["pad_value"] == 255 and prep["normalization"] == "in-graph"
    assert json.loads(meta["vestis.config"])["model"]["name"] == "csn"
    assert json.loads(meta["vestis.quantization"]) == {"mode": "none"}
    assert "vestis.outputs" not in meta and "vestis.heatmap" not in meta  # no classifier entries


def test_attribute_based_embedder_of_a_classifier_exports_with_parity(tmp_path):
    ckpt = make_checkpoint(tmp_path / "a3.ckpt")
    result = export_onnx(ckpt, tmp_path / "a3-emb.onnx", opset=17, check_images=4, embedding=True)
    batch = sample_batch()
    layout, ref = reference_embeddings(ckpt, batch)
    # the reference by hand: the L2-normalised hidden activation of each branch
    model = vestis.load(ckpt)
    x = normalize(torch.from_numpy(batch), model.config.data.mean, model.config.data.std)
    with torch.no_grad():
        fused = model._fuse(model.backbone(x))
        by_hand = [
            torch.nn.functional.normalize(b.act(b.fc(fused)), dim=1).numpy() for b in model.heads.branches
        ]  # fmt: skip
    np.testing.assert_allclose(ref, np.concatenate(by_hand, axis=1), atol=1e-6)
    (got,) = _session(result.path).run(None, {"images": batch})
    assert got.shape == (len(batch), sum(w for _, w in layout))
    assert np.abs(got - ref).max() <= 1e-5
    meta = _session(result.path).get_modelmeta().custom_metadata_map
    info = json.loads(meta["vestis.embedding"])
    assert info["model"] == "attribute_based" and info["layout"] == [[a, w] for a, w in layout]
    assert result.parity.lowest_cosine >= 1 - 1e-6


def test_a_classifier_checkpoint_still_exports_as_a_classifier(tmp_path):
    ckpt = make_checkpoint(tmp_path / "a3.ckpt")
    result = export_onnx(ckpt, tmp_path / "a3.onnx", opset=17, check_images=2)
    sess = _session(result.path)
    assert [o.name for o in sess.get_outputs()] == ["category", "colour", "sleeve_length", "occasion", "heatmap"]
    assert set(sess.get_modelmeta().custom_metadata_map) == {
        "vestis.format", "vestis.version", "vestis.taxonomy", "vestis.preprocessing", "vestis.thresholds",
        "vestis.config", "vestis.outputs", "vestis.heatmap", "vestis.quantization", "vestis.source",
        "vestis.fingerprint",
    }  # fmt: skip
    assert type(result.parity).__name__ == "ParityReport" and result.parity.min_agreement == 1.0


def test_int8_is_refused_for_embedding_models(tmp_path):
    ckpt = make_embedding_checkpoint(tmp_path / "csn.ckpt", "csn")
    with pytest.raises(VestisError, match="--int8 is not supported for embedding models"):
        export_onnx(ckpt, tmp_path / "csn.onnx", int8=True)
    with pytest.raises(VestisError, match="--int8 is not supported"):
        export_embedding_onnx(make_checkpoint(tmp_path / "a3.ckpt"), tmp_path / "a3.onnx", int8=True)
    assert not (tmp_path / "csn.onnx").exists() and not (tmp_path / "a3.onnx").exists()


def test_vestis_export_on_an_embedding_checkpoint(tmp_path):
    ckpt = make_embedding_checkpoint(tmp_path / "triplet.ckpt", "triplet")
    out = tmp_path / "triplet.onnx"
    res = runner.invoke(
        vestis.cli.app, ["export", str(ckpt), "--out", str(out), "--opset", "17", "--check-images", "3"]
    )
    assert res.exit_code == 0, res.output
    assert f"wrote {out} (fp32, opset 17, torchscript exporter" in res.stdout
    assert "against PyTorch on 3 images:" in res.stdout and "min cosine" in res.stdout
    reported = float(re.search(r"max \|de\| = (\S+),", res.stdout).group(1))
    assert 0 <= reported <= 1e-5
    assert float(re.search(r"lowest cosine = (\S+)", res.stdout).group(1)) >= 0.999999
    assert out.is_file()
    res = runner.invoke(vestis.cli.app, ["export", str(ckpt), "--out", str(tmp_path / "q.onnx"), "--int8"])
    assert res.exit_code == 1 and "not supported for embedding models" in res.stderr


def test_vestis_export_embedding_flag_on_a_classifier(tmp_path):
    ckpt = make_checkpoint(tmp_path / "a3.ckpt")
    out = tmp_path / "a3-emb.onnx"
    res = runner.invoke(
        vestis.cli.app, ["export", str(ckpt), "--out", str(out), "--opset", "17", "--check-images", "2", "--embedding"]
    )
    assert res.exit_code == 0, res.output
    assert "lowest cosine" in res.stdout and "agreement" not in res.stdout
    sess = _session(out)
    assert [o.name for o in sess.get_outputs()] == ["embedding"]
    assert json.loads(sess.get_modelmeta().custom_metadata_map["vestis.embedding"])["model"] == "attribute_based"
