"""An outfit pipeline whose answers are known by construction (random weights would find arbitrary boxes).

* the detector is :func:`tests.inference.detector_fixtures.full_image_checkpoint`: one whole-image box for
  ``upper-body`` (score sigmoid(3)) and one for ``footwear`` (sigmoid(2)), none for the other classes;
* the stage-2 model (``stl_hls_tiny``) has its heads set by hand: the category follows the object type only
  (upper-body -> t-shirt, lower-body -> trousers, full-body -> t-shirt, footwear -> sneakers, logit 10 against 0), and
  the attribute logits are constants: sleeve long (+5) over short (-5), colour red (+5), blue and white (-5). The
  taxonomy lets ``sleeve`` apply to t-shirts only, so the footwear garment's ``sleeve=long`` is suppressed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from tests.conftest import write_image
from tests.inference.detector_fixtures import full_image_checkpoint
from vestis.config import load_config
from vestis.data.detection import OBJECT_TYPES
from vestis.data.taxonomy import Taxonomy
from vestis.inference.pipeline_format import PipelineSettings, bundle_pipeline
from vestis.models import create_model
from vestis.train.checkpoint import save_checkpoint

STAGE2_SIZE = 32
CATEGORY_OF = {"upper-body": "t-shirt", "lower-body": "trousers", "full-body": "t-shirt", "footwear": "sneakers"}
CATEGORY_LOGIT = 10.0
ATTRIBUTE_LOGITS = {("sleeve", "short"): -5.0, ("sleeve", "long"): 5.0, ("colour", "red"): 5.0,
                    ("colour", "blue"): -5.0, ("colour", "white"): -5.0}  # fmt: skip


def crops_taxonomy() -> Taxonomy:
    """What `vestis crops` writes: a category, attributes (one for t-shirts only) and the object-type metadata."""
    return Taxonomy.from_dict(
        {
            "category_attribute": "category",
            "metadata": ["object_type", "score", "iou", "scene"],
            "attributes": [
                {"name": "category", "kind": "single", "values": ["t-shirt", "trousers", "sneakers"]},
                {"name": "sleeve", "kind": "single", "values": ["short", "long"], "applies_to": ["t-shirt"]},
                {"name": "colour", "kind": "multi", "values": ["red", "blue", "white"]},
            ],
        }
    )


def stage2_checkpoint(
    path: Path,
    *,
    hand_set: bool = True,
    seed: int = 0,
    model_name: str = "stl_hls_tiny",
    object_types: tuple[str, ...] | None = None,
) -> Path:
    """A stage-2 checkpoint on :func:`crops_taxonomy`; ``stl_hls_tiny`` heads as in the module docstring when
    ``hand_set``, random weights otherwise (any other model is random). ``object_types``: the model's
    ``model.object_types`` (default: the detector's classes, in its order)."""
    cfg = load_config(
        "tiny", [f"model.name={model_name}", "model.backbone=mobilenetv3_tiny", f"data.image_size={STAGE2_SIZE}"]
    )
    if object_types is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, object_types=tuple(object_types)))
    tax = crops_taxonomy()
    torch.manual_seed(seed)
    model = create_model(cfg.model, tax, image_size=STAGE2_SIZE)
    if hand_set and model_name == "stl_hls_tiny":
        layout = model.layout
        d = model.feature_channels
        with torch.no_grad():
            table = model.object_type_embedding.table.weight
            table.zero_()
            for i in range(len(layout.object_types)):
                table[i, i] = 1.0
            model.category_head.weight.zero_()
            model.category_head.bias.zero_()
            for i, ot in enumerate(layout.object_types):
                model.category_head.weight[layout.categories.index(CATEGORY_OF[ot]), d + i] = CATEGORY_LOGIT
            model.attribute_head.weight.zero_()
            model.attribute_head.bias.copy_(torch.tensor([ATTRIBUTE_LOGITS[av] for av in layout.attributes]))
    return save_checkpoint(path, model=model.eval(), config=cfg, taxonomy=tax)


def make_pipeline(
    tmp: Path, settings: PipelineSettings | None = None, *, hand_set: bool = True, model_name: str = "stl_hls_tiny"
) -> Path:
    """``tmp/outfit.vestis`` from the two checkpoints above (the detector at 32 px).

    The detector puts every class on the same whole-image box, so the default settings keep class-wise NMS
    (``one_type_per_garment=False``): each class is then one garment.
    """
    settings = dataclasses.replace(settings or PipelineSettings(), one_type_per_garment=False)
    det = full_image_checkpoint(tmp / "det.ckpt", image_size=32)
    st = stage2_checkpoint(tmp / "stage2.ckpt", hand_set=hand_set, model_name=model_name)
    return bundle_pipeline(det, st, tmp / "outfit.vestis", settings)


def scene(path: Path, size: tuple[int, int] = (48, 40)) -> Path:
    """A small noisy RGB image (not square, so the letterbox pads)."""
    return write_image(path, size=size, color=(120, 90, 200))


assert tuple(CATEGORY_OF) == OBJECT_TYPES
