"""The top-level Python API: ``vestis.Predictor`` (lazily imported) and what ``vestis.load`` returns."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import vestis
from tests.inference.conftest import IMAGE_SIZE, make_checkpoint
from tests.inference.test_export_embedding import make_embedding_checkpoint
from vestis.errors import VestisError
from vestis.inference.predictor import Predictor
from vestis.inference.results import Prediction


def test_predictor_is_exported_at_the_top_level():
    assert vestis.Predictor is Predictor
    assert "Predictor" in vestis.__all__ and "Predictor" in dir(vestis)
    with pytest.raises(AttributeError, match="no attribute 'Predicter'"):
        vestis.Predicter  # noqa: B018


def test_import_vestis_does_not_load_torch():
    code = "import sys, vestis; assert 'torch' not in sys.modules, 'torch was imported'"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_predictor_from_path_predicts_one_image(tmp_path):
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    img = Image.new("RGB", (40, 30), (200, 30, 30))
    pred = vestis.Predictor.from_path(ckpt).predict(img)
    assert isinstance(pred, Prediction) and pred["colour"].value in ("red", "blue", "green")


def test_the_loaded_module_refuses_images_and_points_to_the_predictor(tmp_path):
    model = vestis.load(make_checkpoint(tmp_path / "m.ckpt"))
    assert isinstance(model, torch.nn.Module)
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
    for bad, kind in [(img, "Image"), (str(tmp_path / "x.jpg"), "str"), (np.zeros((2, 2, 3), np.uint8), "ndarray")]:
        with pytest.raises(VestisError, match=rf"AttributeModel: expected a normalised float tensor .* got {kind}; .*"
                           r"vestis\.Predictor\.from_path"):  # fmt: skip
            model(bad)
    with torch.no_grad():  # a tensor still works
        assert set(model(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))) == {
            "category",
            "colour",
            "sleeve.length",
            "occasion",
        }


def test_an_embedding_model_refuses_images_too(tmp_path):
    model = vestis.load(make_embedding_checkpoint(tmp_path / "csn.ckpt", "csn"))
    with pytest.raises(
        VestisError,
        match=r"ConditionalSimilarityNetwork: expected a normalised float tensor .* got Image.*Embedder\.from_path",
    ):
        model(Image.new("RGB", (8, 8)))
