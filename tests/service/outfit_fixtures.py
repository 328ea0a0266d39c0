"""An outfit pipeline whose answer is known by construction (random weights would find arbitrary boxes).

The detector (``centernet_tiny`` at :data:`DETECTOR_SIZE` px, stride 4) has its weights set by hand so that
it finds exactly one garment, whatever the image:

* the FPN's finest smoothing convolution has zero weights and bias 1, so the heads read a constant map of ones;
* the heatmap head's 3x3 convolution copies the cell above into hidden channel 0 and the cell to the left into
  channel 1; with zero padding both are 0 only in the top-left cell (0, 0), positive everywhere else (after the
  GroupNorm and the ReLU, which keep that order). The 1x1 output gives class :data:`CLASS` the logit
  ``5 - 100 (h_0 + h_1)``: sigmoid(5) in cell (0, 0) and below sigmoid(-30) elsewhere; the other classes -20;
* size and offset are constants: (w, h) = :data:`SIZE_CELLS` and (dx, dy) = :data:`OFFSET_CELLS`,

so the one box is centred at ``OFFSET_CELLS * 4`` with sides ``SIZE_CELLS * 4`` in letterbox pixels:
:data:`LETTERBOX_BOX`; on a square image of side ``n`` it is ``LETTERBOX_BOX * n / DETECTOR_SIZE``.

The stage-2 model (``rnn_va_tiny``) has the last layer of both heads set to constants: the category logits
:data:`CATEGORY_LOGITS` (trousers) and the attribute logits :data:`ATTRIBUTE_LOGITS`, so its answer is known
from the formulas; its attention (the backbone and the GRU keep their seeded random weights) is whatever the
model computes, which is what ``vestis explain`` must draw.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from PIL import Image

from vestis.config import load_config
from vestis.data.detection import OBJECT_TYPES
from vestis.data.taxonomy import Attribute, Taxonomy
from vestis.models import create_model
from vestis.models.detection import build_detector
from vestis.train.checkpoint import save_checkpoint

DETECTOR_SIZE = 32
STAGE2_SIZE = 32
CLASS = 1  # lower-body
PEAK_LOGIT = 5.0
SIZE_CELLS = (4.0, 6.0)
OFFSET_CELLS = (3.0, 4.0)
STRIDE = 4
# centre (12, 16), sides (16, 24): x0, y0, x1, y1 in the detector's letterbox pixels
LETTERBOX_BOX = (4.0, 4.0, 20.0, 28.0)

CATEGORIES = ("t-shirt", "trousers", "sneakers")
CATEGORY_LOGITS = (0.0, 4.0, -1.0)
ATTRIBUTE_LOGITS = {
    ("sleeve", "short"): 3.0,
    ("sleeve", "long"): -3.0,
    ("colour", "red"): 2.0,
    ("colour", "blue"): -2.0,
    ("colour", "white"): 1.0,
}


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def softmax(xs: tuple[float, ...]) -> list[float]:
    e = [math.exp(x - max(xs)) for x in xs]
    return [v / sum(e) for v in e]


def crops_taxonomy() -> Taxonomy:
    """A crops taxonomy: the category, ``sleeve`` for t-shirts only, a multi-label ``colour``."""
    return Taxonomy.from_dict(
        {
            "category_attribute": "category",
            "metadata": ["object_type", "score", "iou", "scene"],
            "attributes": [
                {"name": "category", "kind": "single", "values": list(CATEGORIES)},
                {"name": "sleeve", "kind": "single", "values": ["short", "long"], "applies_to": ["t-shirt"]},
                {"name": "colour", "kind": "multi", "values": ["red", "blue", "white"]},
            ],
        }
    )


def detector_checkpoint(path: Path) -> Path:
    """The one-box detector of the module docstring."""
    cfg = load_config(
        "tiny",
        ["model.name=centernet_tiny", "model.backbone=mobilenetv3_tiny", f"data.image_size={DETECTOR_SIZE}",
         "data.pad_value=0"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_detector("centernet_tiny", num_classes=len(OBJECT_TYPES))
    assert model.stride == STRIDE
    with torch.no_grad():
        smooth = model.neck.smooth[0]
        smooth.weight.zero_()
        smooth.bias.fill_(1.0)
        conv = model.heatmap.body[0]
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, :, 0, 1] = 1.0 / conv.in_channels  # the cell above
        conv.weight[1, :, 1, 0] = 1.0 / conv.in_channels  # the cell to the left
        out = model.heatmap.out
        out.weight.zero_()
        out.bias.fill_(-20.0)
        out.weight[CLASS, 0] = -100.0
        out.weight[CLASS, 1] = -100.0
        out.bias[CLASS] = PEAK_LOGIT
        for head, value in ((model.size, SIZE_CELLS), (model.offset, OFFSET_CELLS)):
            head.out.weight.zero_()
            head.out.bias.copy_(torch.tensor(value))
    tax = Taxonomy((Attribute("object_type", "single", OBJECT_TYPES),))
    return save_checkpoint(path, model=model, config=cfg, taxonomy=tax)


def stage2_checkpoint(
    path: Path, name: str = "rnn_va_tiny", seed: int = 0, image_size: int = STAGE2_SIZE, sharpen: float = 1.0
) -> Path:
    """A stage-2 checkpoint with the constant heads of the module docstring (``stl_tiny`` etc. without them).

    ``sharpen`` scales the attention's ``V`` (eq. 1), so the softmax of eq. 2 peaks instead of staying near uniform.
    """
    cfg = load_config(
        "tiny", [f"model.name={name}", "model.backbone=mobilenetv3_tiny", f"data.image_size={image_size}"]
    )
    tax = crops_taxonomy()
    torch.manual_seed(seed)
    model = create_model(cfg.model, tax, image_size=image_size)
    if name.startswith("rnn_va"):
        layout = model.layout
        assert layout.categories == CATEGORIES
        with torch.no_grad():
            last_c, last_a = model.category_head[-1], model.attribute_head[-1]
            last_c.weight.zero_()
            last_c.bias.copy_(torch.tensor(CATEGORY_LOGITS))
            last_a.weight.zero_()
            last_a.bias.copy_(torch.tensor([ATTRIBUTE_LOGITS[av] for av in layout.attributes]))
            model.attention.v.weight.mul_(sharpen)
    return save_checkpoint(path, model=model.eval(), config=cfg, taxonomy=tax)


def make_pipeline(folder: Path, stage2_size: int = STAGE2_SIZE, sharpen: float = 1.0) -> Path:
    """``folder/outfit.vestis``: the two checkpoints above, default settings (min_score 0.3)."""
    from vestis.inference.pipeline_format import bundle_pipeline

    det = detector_checkpoint(folder / "det.ckpt")
    st = stage2_checkpoint(folder / "stage2.ckpt", image_size=stage2_size, sharpen=sharpen)
    return bundle_pipeline(det, st, folder / "outfit.vestis")


def expected_garment(side: int) -> dict:
    """The one garment on a square image of ``side`` px (category and attributes by the formulas above)."""
    scale = side / DETECTOR_SIZE
    cat = softmax(CATEGORY_LOGITS)
    return {
        "box": [v * scale for v in LETTERBOX_BOX],
        "object_type": OBJECT_TYPES[CLASS],
        "object_score": sigmoid(PEAK_LOGIT),
        "category": "trousers",
        "category_score": cat[1],
        # sleeve applies to t-shirts only: suppressed; colour: red and white pass the 0.5 threshold
        "colour": {"red": sigmoid(2.0), "white": sigmoid(1.0)},
    }


def png(color: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()
