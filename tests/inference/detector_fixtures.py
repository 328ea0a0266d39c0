"""Detectors whose outputs are known by construction (a random-weight detector's boxes are arbitrary).

* :func:`full_image_checkpoint`: a ``centernet_tiny`` checkpoint whose heads are set by hand (zero weights,
  chosen biases): every cell scores ``sigmoid(bias[c])`` for class ``c`` and predicts a box twice the input, so
  after clipping every box is the whole letterbox; NMS leaves one whole-image box per class with a high bias.
* :func:`fixed_centernet`: a ``centernet_tiny`` whose three heads are replaced by constant maps, so chosen cells
  peak with chosen sizes and offsets (the boxes are then computed by hand).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from vestis.config import load_config
from vestis.data.detection import OBJECT_TYPES
from vestis.data.taxonomy import Attribute, Taxonomy
from vestis.models.detection import build_detector
from vestis.train.checkpoint import save_checkpoint

# class logits of the full-image detector: upper-body and footwear detected, the others far below any threshold
FULL_IMAGE_BIAS = (3.0, -20.0, -20.0, 2.0)
LOW = -10.0  # the logit of every cell that is not a chosen peak: sigmoid(-10) = 4.5e-5


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def detector_taxonomy() -> Taxonomy:
    return Taxonomy((Attribute("object_type", "single", OBJECT_TYPES),))


def full_image_checkpoint(path: Path, image_size: int = 32, bias: Sequence[float] = FULL_IMAGE_BIAS) -> Path:
    """A detector checkpoint predicting, per class with a high ``bias``, one box: the whole image."""
    cfg = load_config(
        "tiny",
        ["model.name=centernet_tiny", "model.backbone=mobilenetv3_tiny", f"data.image_size={image_size}",
         "data.pad_value=0"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_detector("centernet_tiny", num_classes=len(OBJECT_TYPES))
    with torch.no_grad():
        model.heatmap.out.weight.zero_()
        model.heatmap.out.bias.copy_(torch.tensor(list(bias)))
        model.size.out.weight.zero_()
        model.size.out.bias.fill_(2.0 * image_size / model.stride)  # (w, h) in cells: twice the input
        model.offset.out.weight.zero_()
        model.offset.out.bias.zero_()
    return save_checkpoint(path, model=model, config=cfg, taxonomy=detector_taxonomy())


class ConstantMap(nn.Module):
    """A head that ignores its input and returns ``value`` ``(C, H, W)`` for every image of the batch."""

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value)

    def forward(self, x: Tensor) -> Tensor:
        return self.value.expand(x.shape[0], *self.value.shape).to(x.dtype)


def fixed_centernet(
    image_size: int, peaks: Sequence[tuple[int, int, int, float, tuple[float, float], tuple[float, float]]]
) -> nn.Module:
    """A ``centernet_tiny`` (stride 4) whose maps are constant: ``peaks`` are ``(class, x, y, logit, (w, h),
    (dx, dy))`` in output cells; every other cell has logit :data:`LOW`."""
    model = build_detector("centernet_tiny", num_classes=len(OBJECT_TYPES))
    cells = image_size // model.stride
    heat = torch.full((len(OBJECT_TYPES), cells, cells), LOW)
    size = torch.ones(2, cells, cells)
    offset = torch.zeros(2, cells, cells)
    for c, x, y, logit, (w, h), (dx, dy) in peaks:
        heat[c, y, x] = logit
        size[:, y, x] = torch.tensor([w, h])
        offset[:, y, x] = torch.tensor([dx, dy])
    model.heatmap, model.size, model.offset = ConstantMap(heat), ConstantMap(size), ConstantMap(offset)
    return model.eval()
