"""The hierarchical two-stage outfit pipeline: garments found by a detector, each classified by a stage-2 model.

::

    pipe = OutfitPipeline.load("outfit.vestis")              # or an exported folder, runtime="onnx"
    for result in pipe.predict(["look1.jpg", "look2.jpg"]):
        for g in result.garments:
            print(g.box, g.object_type, g.category, g.attributes)

Per image: letterbox to the detector's size (with its ``pad_value``, black for a trained detector) ->
:class:`~vestis.inference.pipeline_graphs.DetectorMaps` ->
peaks, class-wise NMS, the best ``max_garments`` scoring ``>= min_score``, boxes in original pixels
(:func:`~vestis.inference.pipeline_graphs.decode_detections`). Each *predicted* box is cropped from the original
image (:func:`vestis.data.crops.crop_box`, with ``margin``), letterboxed to the stage-2 model's size with its
``pad_value``; the crops of all images of a call go through stage 2 together, with the detector's object types
(:class:`~vestis.inference.pipeline_graphs.Stage2Logits`), and are decoded through the model's
:class:`~vestis.models.hierarchical.Stage2Layout` with taxonomy suppression
(:func:`~vestis.inference.pipeline_graphs.decode_stage2`).

Runtimes: ``torch`` runs a pipeline file (:mod:`vestis.inference.pipeline_format`); ``onnx`` runs an exported
folder (:mod:`vestis.inference.pipeline_export`) with ONNX Runtime (:mod:`vestis.inference.pipeline_onnx`). Both
run the same graphs and share the host decoding, so they give the same garments.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vestis.data.crops import crop_box
from vestis.data.images import DEFAULT_MAX_PIXELS, ImageError, load_image
from vestis.data.transforms import letterbox_array
from vestis.errors import VestisError
from vestis.inference.detector import letterbox_batch
from vestis.inference.outfit_results import Garment, OutfitResult
from vestis.inference.pipeline_format import (
    MANIFEST_NAME,
    PipelineBundle,
    PipelineSettings,
    load_pipeline_file,
    pipeline_fingerprint,
    pipeline_kind,
)
from vestis.inference.pipeline_graphs import (
    MAX_IMAGE_SIZE,
    Detections,
    DetectorMaps,
    PipelineSpec,
    Stage2Logits,
    check_image_sizes,
    decode_detections,
    decode_stage2,
    threshold_vector,
)
from vestis.inference.runtime import torch_device

__all__ = ["MAX_IMAGE_SIZE", "RUNTIMES", "OutfitPipeline", "PipelineSpec", "check_image_sizes"]

RUNTIMES = ("torch", "onnx")


class _TorchRuntime:
    def __init__(self, detector: DetectorMaps, stage2: Stage2Logits, device: torch.device) -> None:
        self.detector, self.stage2, self.device = detector.to(device).eval(), stage2.to(device).eval(), device

    @torch.inference_mode()
    def run_detector(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        outs = self.detector(torch.from_numpy(images).to(self.device))
        return tuple(o.float().cpu().numpy() for o in outs)

    @torch.inference_mode()
    def run_stage2(self, crops: np.ndarray, object_types: np.ndarray) -> tuple[np.ndarray, ...]:
        x = torch.from_numpy(crops).to(self.device)
        outs = self.stage2(x, torch.from_numpy(object_types).to(self.device))
        return tuple(o.float().cpu().numpy() for o in outs)


def _rebuild(state: dict[str, Any], source: str) -> torch.nn.Module:
    from vestis.train.checkpoint import rebuild_model

    return rebuild_model(state, source=source)


def torch_parts(bundle: PipelineBundle) -> tuple[DetectorMaps, Stage2Logits, PipelineSpec]:
    """The two graphs (on the CPU, eval mode) and the spec of a read pipeline file."""
    src = str(bundle.path or "<pipeline>")
    detector = _rebuild(bundle.detector, f"{src}: detector")
    stage2 = _rebuild(bundle.stage2, f"{src}: stage2")
    dp, sp = bundle.detector["preprocessing"], bundle.stage2["preprocessing"]
    det_size, st_size = int(dp["image_size"]), int(sp["image_size"])
    check_image_sizes(det_size, st_size, src, "preprocessing.image_size")
    cfg = stage2.config
    spec = PipelineSpec(
        classes=tuple(detector.classes),
        detector_size=det_size,
        detector_pad=int(dp["pad_value"]),
        stride=int(detector.stride),
        candidates=int(detector.max_detections),
        stage2_size=st_size,
        stage2_pad=int(sp["pad_value"]),
        layout=stage2.layout,
        thresholds=threshold_vector(stage2.layout, stage2.thresholds, cfg.train.threshold, source=f"{src}: stage2"),
        detector_fingerprint=detector.fingerprint,
        stage2_fingerprint=stage2.fingerprint,
        stage2_taxonomy=stage2.taxonomy,
    )
    return DetectorMaps(detector, dp["mean"], dp["std"]), Stage2Logits(stage2, sp["mean"], sp["std"]), spec


class OutfitPipeline:
    """Detector + stage-2 model (module docstring). Build with :meth:`load`.

    Attributes:
        spec: sizes, classes, layout and thresholds (:class:`PipelineSpec`).
        settings: ``min_score``, ``nms_iou``, ``max_garments``, ``margin`` in use.
        runtime: ``torch`` or ``onnx``.
        path: the file or folder it was loaded from.
        batch_size: images per detector call; :meth:`predict` decodes this many paths at a time.
    """

    def __init__(
        self,
        runner: Any,
        spec: PipelineSpec,
        settings: PipelineSettings,
        *,
        runtime: str,
        path: Path | None = None,
        stage2_batch: int = 64,
        top_k: int = 3,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        batch_size: int = 8,
    ) -> None:
        if stage2_batch < 1 or top_k < 1 or batch_size < 1:
            raise VestisError(
                f"expected stage2_batch, top_k and batch_size >= 1, got {stage2_batch}, {top_k} and {batch_size}"
            )
        self._runner, self.spec, self.settings, self.runtime, self.path = runner, spec, settings, runtime, path
        self.stage2_batch, self.top_k, self.max_pixels = stage2_batch, top_k, max_pixels
        self.batch_size = batch_size
        # detector class index -> the stage-2 model's object-type index (by name; -1: unknown to it)
        self._types = np.array([spec.layout.object_type_index(c) for c in spec.classes], dtype=np.int64)

    @property
    def fingerprint(self) -> str:
        """The pair's fingerprint under the settings in use (equal to the file's when none is overridden)."""
        return pipeline_fingerprint(self.spec.detector_fingerprint, self.spec.stage2_fingerprint, self.settings)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        runtime: str | None = None,
        device: str | None = None,
        *,
        min_score: float | None = None,
        nms_iou: float | None = None,
        max_garments: int | None = None,
        margin: float | None = None,
        threads: int | None = None,
        stage2_batch: int = 64,
        batch_size: int = 8,
    ) -> OutfitPipeline:
        """Load a pipeline file (runtime ``torch``) or an exported folder / its ``pipeline.json`` (``onnx``).

        Args:
            path: the pipeline file or the exported folder.
            runtime: ``torch`` or ``onnx``; ``None`` picks the one the path is for.
            device: ``cpu``, ``cuda``, ``cuda:N``; ``None`` for CUDA when present.
            min_score: override the stored setting (``None`` keeps it); likewise ``nms_iou``, ``max_garments``,
                ``margin``.
            nms_iou: see ``min_score``.
            max_garments: see ``min_score``.
            margin: see ``min_score``.
            threads: ONNX Runtime intra-op threads (``None``: its default).
            stage2_batch: crops per stage-2 call.
            batch_size: images per detector call (and decoded at a time by :meth:`predict`).

        Raises:
            VestisError: an unknown runtime, a path that is neither kind, a runtime the path cannot run, a damaged
                file.
        """
        path = Path(path)
        if runtime is not None and runtime not in RUNTIMES:
            raise VestisError(f"runtime: expected one of {list(RUNTIMES)}, got {runtime!r}")
        kind = pipeline_kind(path)
        if kind is None:
            if path.is_file() and path.suffix == ".vestis":
                load_pipeline_file(path)  # raises with the reason (damaged header, other format)
            raise VestisError(
                f"{path}: expected a pipeline file from `vestis pipeline` or a folder from `vestis export` "
                f"(with {MANIFEST_NAME})"
            )
        runtime = runtime or ("torch" if kind == "bundle" else "onnx")
        overrides = {"min_score": min_score, "nms_iou": nms_iou, "max_garments": max_garments, "margin": margin}
        if kind == "bundle" and runtime == "onnx":
            raise VestisError(f"{path}: runtime onnx needs an exported folder; run `vestis export {path} --out DIR`")
        if kind == "onnx" and runtime == "torch":
            raise VestisError(f"{path}: an exported (ONNX) pipeline; runtime torch needs the pipeline file")
        if kind == "bundle":
            bundle = load_pipeline_file(path)
            det, st, spec = torch_parts(bundle)
            runner: Any = _TorchRuntime(det, st, torch_device(device))
            settings = bundle.settings.replace(**overrides)
        else:
            folder = path if path.is_dir() else path.parent
            from vestis.inference.pipeline_onnx import load_onnx

            spec, settings, runner = load_onnx(folder, device, threads)
            settings = settings.replace(**overrides)
        return cls(runner, spec, settings, runtime=runtime, path=path, stage2_batch=stage2_batch, batch_size=batch_size)

    # --- the stages ----------------------------------------------------------------------------------------
    def detect(self, images: Sequence[Image.Image]) -> list[Detections]:
        """Stage 1 on RGB images: the garments' boxes (original pixels), scores and classes, best first."""
        if not images:
            return []
        out: list[Detections] = []
        for i in range(0, len(images), self.batch_size):  # one letterboxed batch of batch_size images at a time
            chunk = images[i : i + self.batch_size]
            boxed, lbs = letterbox_batch(chunk, self.spec.detector_size, self.spec.detector_pad)
            heat, size, offset = self._runner.run_detector(boxed)
            out += decode_detections(
                heat, size, offset, stride=self.spec.stride, candidates=self.spec.candidates, letterboxes=lbs,
                image_sizes=[img.size for img in chunk], settings=self.settings,
            )  # fmt: skip
        return out

    def crops(self, image: Image.Image, boxes: np.ndarray) -> list[Image.Image]:
        """The crops of ``(K, 4)`` xyxy boxes (original pixels), with the pipeline's margin."""
        return [crop_box(image, [b[0], b[1], b[2] - b[0], b[3] - b[1]], self.settings.margin) for b in boxes]

    def crop_arrays(self, image: Image.Image, boxes: np.ndarray) -> np.ndarray:
        """``uint8`` ``(K, 3, S2, S2)``: the crops letterboxed to the stage-2 model's input."""
        s, pad = self.spec.stage2_size, self.spec.stage2_pad
        out = np.empty((len(boxes), 3, s, s), dtype=np.uint8)
        for k, crop in enumerate(self.crops(image, boxes)):
            out[k] = letterbox_array(crop, s, pad)
        return out

    def classify(self, crops: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stage 2 on ``uint8`` crops ``(N, 3, S2, S2)`` with their detector classes: ``(N, C)``, ``(N, A)`` logits."""
        n = len(crops)
        types = self._types[np.asarray(labels, dtype=np.int64)] if n else np.zeros(0, dtype=np.int64)
        cats, attrs = [], []
        for i in range(0, n, self.stage2_batch):
            c, a = self._runner.run_stage2(
                np.ascontiguousarray(crops[i : i + self.stage2_batch]),
                np.ascontiguousarray(types[i : i + self.stage2_batch]),
            )
            cats.append(c)
            attrs.append(a)
        if not cats:
            return np.zeros((0, len(self.spec.layout.categories))), np.zeros((0, len(self.spec.layout.attributes)))
        return np.concatenate(cats), np.concatenate(attrs)

    # --- the whole pipeline --------------------------------------------------------------------------------
    def predict_images(
        self, images: Sequence[Image.Image], names: Sequence[str | None] | None = None
    ) -> list[OutfitResult]:
        """Both stages on RGB images; the crops of every image go through stage 2 together."""
        names = list(names) if names is not None else [None] * len(images)
        if len(names) != len(images):
            raise VestisError(f"expected one name per image, got {len(names)} for {len(images)} images")
        images = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        dets = self.detect(images)
        arrays = [self.crop_arrays(img, d.boxes) for img, d in zip(images, dets, strict=True)]
        s = self.spec.stage2_size
        crops = np.concatenate(arrays) if arrays else np.zeros((0, 3, s, s), dtype=np.uint8)
        labels = np.concatenate([d.labels for d in dets]) if dets else np.zeros(0, dtype=np.int64)
        cat, attr = self.classify(crops, labels)
        decoded = decode_stage2(cat, attr, self.spec.layout, self.spec.thresholds, self.top_k)
        fp, out, k = self.fingerprint, [], 0
        for img, name, d in zip(images, names, dets, strict=True):
            garments = []
            for box, score, label in zip(d.boxes, d.scores, d.labels, strict=True):
                lab = decoded[k]
                k += 1
                garments.append(
                    Garment(
                        box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                        object_type=self.spec.classes[int(label)],
                        object_score=float(score),
                        category=lab.category,
                        category_score=lab.category_score,
                        category_top=lab.category_top,
                        attributes=lab.attributes,
                        suppressed=lab.suppressed,
                    )
                )
            out.append(OutfitResult(name, img.width, img.height, garments, fp))
        return out

    def predict(self, images: Sequence[Image.Image | str | os.PathLike[str]]) -> list[OutfitResult]:
        """Garments of each image (PIL images or paths; a path's result names it), ``batch_size`` at a time.

        Raises:
            VestisError: an image that cannot be read (the message names it).
        """
        for i, x in enumerate(images):
            if not isinstance(x, Image.Image | str | os.PathLike):
                raise VestisError(f"images[{i}]: expected a PIL image or a path, got {type(x).__name__}")
        out: list[OutfitResult] = []
        for start in range(0, len(images), self.batch_size):  # at most batch_size decoded paths at a time
            pils, names, opened = [], [], []
            try:
                for x in images[start : start + self.batch_size]:
                    if isinstance(x, Image.Image):
                        pils.append(x)
                        names.append(None)
                        continue
                    try:
                        img = load_image(x, max_pixels=self.max_pixels)
                    except ImageError as e:
                        raise VestisError(str(e)) from None
                    opened.append(img)
                    pils.append(img)
                    names.append(str(x))
                out += self.predict_images(pils, names)
            finally:
                for img in opened:
                    img.close()
        return out
