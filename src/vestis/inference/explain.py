"""Where an ``rnn_va`` stage-2 model looked: its attention maps ``a_1`` (the category step) and ``a_2`` (the
attribute step) drawn over each garment crop (the paper's Figure 3; ``vestis explain``).

::

    explanation = explain("stage2.ckpt", "crop.jpg", "why/")          # the image is one garment crop
    explanation = explain("outfit.vestis", "look.jpg", "why/")        # every garment the detector finds

For each garment the crop is letterboxed to the model's input like in prediction, and the model's ``(h, w)``
maps, which cover the whole letterboxed square, are upsampled to it and cut to the crop's own area before
:func:`~vestis.models.hierarchical.attention_overlay` blends them over the crop: each PNG has the crop's size
and shows no padding. ``DIR/explain.json`` lists the garments (box, object type, category, attributes, the
files); nothing is written outside ``DIR``.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vestis.errors import VestisError

__all__ = ["STEPS", "Explanation", "GarmentExplanation", "explain", "explain_crops"]

# the two decoder steps: (file suffix, what the step predicts)
STEPS = (("a1", "category"), ("a2", "attributes"))
EXPLAIN_JSON = "explain.json"


@dataclass
class GarmentExplanation:
    """One garment: its crop, the model's attention and what it predicted.

    Attributes:
        crop: the RGB crop the maps were computed on.
        attention: ``(2, h, w)`` the model's maps ``a_1``, ``a_2`` over the letterboxed crop (each sums to 1).
        maps: ``(2, H, W)`` the maps upsampled to the letterboxed input and cut to the crop's area (what is drawn).
        overlays: the two overlays, each of the crop's size.
        prediction: category, category_score, category_top, attributes, suppressed (as in an outfit garment).
        box: ``(x0, y0, x1, y1)`` in the image (an outfit pipeline), ``None`` for a crop given as the image.
        object_type: the detector's class (``None``: unknown).
        object_score: the detector's score (``None`` for a crop).
        files: step -> the PNG file name in the output folder.
    """

    crop: Image.Image
    attention: np.ndarray
    maps: np.ndarray
    overlays: list[Image.Image]
    prediction: dict[str, Any]
    box: tuple[float, float, float, float] | None = None
    object_type: str | None = None
    object_score: float | None = None
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (no pixels)."""
        return {
            "box": None if self.box is None else [round(float(v), 2) for v in self.box],
            "object_type": self.object_type,
            "object_score": None if self.object_score is None else round(float(self.object_score), 6),
            "crop": {"width": self.crop.width, "height": self.crop.height},
            **self.prediction,
            "files": dict(self.files),
        }


@dataclass
class Explanation:
    """Every garment of one image, and where the files went."""

    image: str
    width: int
    height: int
    kind: str  # "stage2" (the image is a crop) or "outfit" (garments found by the pipeline's detector)
    model: str | None
    garments: list[GarmentExplanation]
    out: Path

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "width": self.width,
            "height": self.height,
            "kind": self.kind,
            "model": self.model,
            "steps": {name: what for name, what in STEPS},
            "garments": [g.to_dict() for g in self.garments],
        }


def _require_attention(state: dict[str, Any], source: str) -> None:
    from vestis.models.detection import is_detector
    from vestis.models.hierarchical import is_stage2

    name = ((state.get("config") or {}).get("model") or {}).get("name")
    if not isinstance(name, str) or not is_stage2(name):
        kind = "a detector" if isinstance(name, str) and is_detector(name) else f"a {name or 'unknown'} model"
        raise VestisError(
            f"{source}: {kind} has no attention maps; vestis explain takes an rnn_va stage-2 checkpoint "
            "(vestis train --task stage2 --model rnn_va) or an outfit pipeline built with one"
        )
    if not name.startswith("rnn_va"):
        raise VestisError(
            f"{source}: the stage-2 model {name} has no attention maps (only rnn_va has: its GRU decoder attends "
            "the feature map); train one with --model rnn_va to explain it"
        )


def _stage2(state: dict[str, Any], source: str, device: str | None) -> Any:
    from vestis.inference.runtime import torch_device
    from vestis.train.checkpoint import rebuild_model

    _require_attention(state, source)
    return rebuild_model(state, source=source, map_location=torch_device(device))


def _cut(att: np.ndarray, size: int, content: tuple[int, int, int, int]) -> np.ndarray:
    """``(T, h, w)`` maps over the letterboxed square -> ``(T, ch, cw)`` upsampled to it and cut to the content."""
    x, y, w, h = content
    up = F.interpolate(torch.from_numpy(att).float()[None], size=(size, size), mode="bilinear", align_corners=False)
    return up[0, :, y : y + h, x : x + w].numpy()


def explain_crops(
    model: Any,
    crops: list[Image.Image],
    object_types: list[str | None],
    *,
    alpha: float = 0.5,
    top_k: int = 3,
) -> list[GarmentExplanation]:
    """Attention maps, overlays and predictions of an ``rnn_va`` model on garment crops.

    Args:
        model: a stage-2 model from :func:`vestis.train.checkpoint.load` (it has ``layout``, ``config``).
        crops: RGB crops.
        object_types: each crop's detector class name (``None``: unknown).
        alpha: weight of the colour map in the overlays.
        top_k: categories listed in ``category_top``.

    Raises:
        VestisError: the model returns no attention.
    """
    from vestis.data.transforms import letterbox_batch, letterbox_box, normalize
    from vestis.inference.pipeline_graphs import decode_stage2, threshold_vector
    from vestis.models.hierarchical import attention_overlay

    if not crops:
        return []
    cfg, layout = model.config, model.layout
    size, pad = int(cfg.data.image_size), int(cfg.data.pad_value)
    device = next(model.parameters()).device
    x = normalize(torch.from_numpy(letterbox_batch(crops, size, pad)), cfg.data.mean, cfg.data.std).to(device)
    types = torch.tensor([layout.object_type_index(t) for t in object_types], dtype=torch.long, device=device)
    with torch.inference_mode():
        out = model(x, object_types=types)
    if "attention" not in out:
        raise VestisError(f"the stage-2 model {cfg.model.name} returned no attention maps; explain needs rnn_va")
    attention = out["attention"].float().cpu().numpy()  # (N, 2, h, w)
    thresholds = threshold_vector(layout, model.thresholds, cfg.train.threshold)
    labels = decode_stage2(
        out["category"].float().cpu().numpy(), out["attributes"].float().cpu().numpy(), layout, thresholds, top_k
    )
    garments = []
    for crop, att, lab, ot in zip(crops, attention, labels, object_types, strict=True):
        maps = _cut(att, size, letterbox_box(crop.width, crop.height, size))
        prediction = {
            "category": lab.category,
            "category_score": round(float(lab.category_score), 6),
            "category_top": [[v, round(float(s), 6)] for v, s in lab.category_top],
            "attributes": {a: [[v, round(float(s), 6)] for v, s in vs] for a, vs in lab.attributes.items()},
            "suppressed": list(lab.suppressed),
        }
        overlays = [attention_overlay(crop, m, alpha=alpha) for m in maps]
        garments.append(GarmentExplanation(crop, att, maps, overlays, prediction, object_type=ot))
    return garments


def _write(out: Path, explanation: Explanation) -> None:
    from vestis.io import atomic_write_bytes, atomic_write_text

    for k, g in enumerate(explanation.garments):
        for (step, what), overlay in zip(STEPS, g.overlays, strict=True):
            name = f"garment{k}_{step}_{what}.png"
            buf = io.BytesIO()
            overlay.save(buf, format="PNG")
            atomic_write_bytes(out / name, buf.getvalue())
            g.files[step] = name
    atomic_write_text(out / EXPLAIN_JSON, json.dumps(explanation.to_dict(), indent=2, allow_nan=False) + "\n")


_OUR_FILE = re.compile(r"garment\d+_a[12]_[a-z]+\.png")


def _output_folder(out: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """The output folder, created; an earlier run's files removed with ``overwrite``.

    A folder that is not empty is refused unless ``overwrite``; then only the overlays the earlier ``explain.json``
    lists (names of the form ``garment<k>_a<t>_<what>.png``, plain files in the folder) and that ``explain.json`` go,
    so the folder holds this run's files only and nothing else of the user's is touched.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VestisError(f"{out}: --out must be a folder, and this is a file")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise VestisError(
                f"{out}: the output folder is not empty; pass --overwrite to replace an earlier run's files"
            )
        old = out / EXPLAIN_JSON
        names: list[str] = []
        if old.is_file() and not old.is_symlink():
            try:
                data = json.loads(old.read_text(encoding="utf-8"))
                names = [n for g in data.get("garments", []) for n in g.get("files", {}).values()]
            except (OSError, UnicodeDecodeError, ValueError, RecursionError, AttributeError, TypeError):
                names = []  # an unreadable listing: its overlays stay, as nothing says they were ours
        for name in names:
            p = out / str(name)
            if isinstance(name, str) and _OUR_FILE.fullmatch(name) and (p.is_symlink() or p.is_file()):
                p.unlink()
        old.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def explain(
    model: str | os.PathLike[str],
    image: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    device: str | None = None,
    object_type: str | None = None,
    alpha: float = 0.5,
    trust_checkpoint: bool = False,
    overwrite: bool = False,
) -> Explanation:
    """Write the attention overlays of ``model`` on ``image`` to ``out`` (see the module docstring).

    Args:
        model: an ``rnn_va`` stage-2 checkpoint (``image`` is then one garment crop) or an outfit pipeline file
            built with one (``image`` is an outfit photo: every garment its detector finds).
        image: the image file.
        out: the output folder (created; only files named ``garment*_a1_category.png``, ``garment*_a2_attributes.png``
            and ``explain.json`` are written in it).
        device: ``cpu``, ``cuda``, ``cuda:N``; ``None`` for CUDA when present.
        object_type: a stage-2 checkpoint: the crop's detector class (default unknown); ignored for a pipeline.
        alpha: weight of the colour map in the overlays, in [0, 1].
        trust_checkpoint: also read an old pickle checkpoint (runs any code it holds).
        overwrite: write into a folder that is not empty, removing the files of an earlier run (those its
            ``explain.json`` lists); without it such a folder is refused.

    Returns:
        The :class:`Explanation` (also written as ``out/explain.json``).

    Raises:
        VestisError: a model without attention (``stl``, ``stl_hls``, a classifier, a detector), an exported ONNX
            pipeline (its stage-2 graph has no attention output), an unreadable image, an ``out`` that is a file or
            (without ``overwrite``) a folder that is not empty.
    """
    from vestis.data.images import ImageError, load_image
    from vestis.inference.pipeline_format import load_pipeline_file, pipeline_kind
    from vestis.train.checkpoint import load_checkpoint

    if not 0.0 <= alpha <= 1.0:
        raise VestisError(f"alpha: expected a value in [0, 1], got {alpha}")
    if not overwrite and Path(out).is_dir() and any(Path(out).iterdir()):
        _output_folder(out)  # refused before any model is loaded
    model, image = Path(model), Path(image)
    kind = pipeline_kind(model)
    if kind == "onnx":
        raise VestisError(
            f"{model}: an exported (ONNX) pipeline has no attention outputs; explain the pipeline file from "
            "`vestis pipeline` instead"
        )
    bundle = load_pipeline_file(model) if kind == "bundle" else None
    state = bundle.stage2 if bundle is not None else load_checkpoint(model, trust=trust_checkpoint)
    stage2 = _stage2(state, f"{model}: stage2" if bundle is not None else str(model), device)
    try:
        picture = load_image(image)
    except ImageError as e:
        raise VestisError(str(e)) from None
    if object_type is not None and bundle is None and object_type not in stage2.layout.object_types:
        raise VestisError(f"--object-type: expected one of {list(stage2.layout.object_types)}, got {object_type!r}")
    if bundle is None:
        garments = explain_crops(stage2, [picture], [object_type], alpha=alpha)
        result_kind, fp = "stage2", stage2.fingerprint
    else:
        from vestis.inference.pipeline import OutfitPipeline

        pipeline = OutfitPipeline.load(model, runtime="torch", device=device)
        [det] = pipeline.detect([picture])
        types = [pipeline.spec.classes[int(c)] for c in det.labels]
        garments = explain_crops(stage2, pipeline.crops(picture, det.boxes), list(types), alpha=alpha)
        for g, box, score in zip(garments, det.boxes, det.scores, strict=True):
            g.box = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
            g.object_score = float(score)
        result_kind, fp = "outfit", pipeline.fingerprint
    explanation = Explanation(image.name, picture.width, picture.height, result_kind, fp, garments, Path(out))
    _write(_output_folder(out, overwrite), explanation)
    return explanation
