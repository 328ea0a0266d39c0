"""Tiny checkpoints and images for the inference tests (also imported by tests/cli)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import write_image
from vestis.config import load_config
from vestis.data.taxonomy import Taxonomy
from vestis.models import create_model
from vestis.train.checkpoint import save_checkpoint

IMAGE_SIZE = 64
# calibrated thresholds stored in the checkpoint; only the multi-label attribute's are used for decisions
THRESHOLDS = {"occasion": [0.2, 0.6, 0.9]}


def small_taxonomy() -> Taxonomy:
    """A category, an attribute for some categories only, a dotted name and a multi-label attribute."""
    return Taxonomy.from_dict(
        {
            "category_attribute": "category",
            "attributes": [
                {"name": "category", "kind": "single", "values": ["t-shirt", "trousers", "dress"]},
                {"name": "colour", "kind": "single", "values": ["red", "blue", "green"]},
                {"name": "sleeve.length", "kind": "single", "values": ["short", "long"], "applies_to": ["t-shirt"]},
                {"name": "occasion", "kind": "multi", "values": ["casual", "formal", "sport"]},
            ],
        }
    )


def make_checkpoint(
    path: Path, *, model: str = "a3", seed: int = 0, thresholds: dict[str, list[float]] | None = None
) -> Path:
    """A random-init ``resnet18_tiny`` model on :func:`small_taxonomy` at 64 px, saved as a checkpoint."""
    cfg = load_config("tiny", [f"data.image_size={IMAGE_SIZE}", f"model.name={model}"])
    torch.manual_seed(seed)
    net = create_model(cfg.model, small_taxonomy())
    th = THRESHOLDS if thresholds is None else thresholds
    return save_checkpoint(path, model=net, config=cfg, taxonomy=small_taxonomy(), thresholds=th)


def make_images(folder: Path) -> list[Path]:
    """Five small JPEG/PNG images of different sizes and colours (one in a sub-folder)."""
    specs = [
        ("a.jpg", (40, 30), (200, 30, 30)),
        ("b.png", (24, 48), (30, 30, 200)),
        ("c.jpg", (64, 64), (30, 160, 40)),
        ("sub/d.jpg", (90, 20), (220, 220, 220)),
        ("sub/e.png", (33, 57), (10, 10, 10)),
    ]
    return [write_image(folder / name, size, color) for name, size, color in specs]


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    make_images(folder)
    return folder


@pytest.fixture(scope="session")
def onnx_fp32(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint exported with the default (dynamo) exporter, no parity check (tests do their own)."""
    from vestis.inference.export import export_onnx

    return export_onnx(ckpt, tmp_path_factory.mktemp("onnx") / "tiny.onnx", check_images=0).path
