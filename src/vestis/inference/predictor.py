"""The predictor shared by ``vestis predict``, the HTTP service and Python users: images in, catalog attributes out.

A :class:`Predictor` is built from a checkpoint (PyTorch backend) or from an ONNX file written by
``vestis export`` (ONNX Runtime backend); both carry the taxonomy, the preprocessing and the calibrated
thresholds, and both run the same graph (:class:`~vestis.inference.onnx_format.InferenceModule`)::

    p = Predictor.from_path("best.ckpt")           # or "model.onnx"
    pred = p.predict("shirt.jpg")                  # a path, a PIL image or a uint8 (H, W, 3) array
    pred["category"].value, pred["category"].score # "shirt", 0.91
    pred["occasion"].values                        # ["casual"], with .scores and .thresholds per value
    p.predict([img1, "b.jpg"])                     # a list in, a list of results out
    pred.to_dict()                                 # the JSON-able dict of decode() below

:meth:`Predictor.predict` returns :class:`~vestis.inference.results.Prediction` objects. The work is also split
in stages so callers can run them where they fit (decoding in worker processes, batching across requests):
:meth:`Predictor.preprocess` (PIL images -> ``uint8`` ``(B, 3, S, S)``), :meth:`Predictor.predict_arrays`
(batch -> probabilities per attribute) and :meth:`Predictor.decode` (probabilities -> per-image dicts)::

    p.decode(p.predict_arrays(p.preprocess([img])))
    # [{"category": {"value": "shirt", "score": 0.91, "scores": {"t-shirt": 0.05, "shirt": 0.91, ...}},
    #   "occasion": {"values": ["casual"], "scores": {"casual": 0.82, "formal": 0.11, ...},
    #                "thresholds": {"casual": 0.3, "formal": 0.42, ...}}, ...}]

In a result, a single-label attribute gives its argmax ``value``, that value's ``score`` and every value's
``scores``; a multi-label attribute gives the ``values`` whose score reaches the threshold (highest score first),
``scores`` and ``thresholds``: the threshold every value's decision used, so a reader sees why a value was left
out as well as why one was chosen. The threshold is the checkpoint's calibrated per-value threshold when it has
one and ``calibrated=True``, else :data:`DEFAULT_THRESHOLD`. Attributes that do not apply to the predicted
category (``applies_to`` in the taxonomy) are left out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from PIL import Image
from torch import nn

from vestis.data.images import DEFAULT_MAX_PIXELS
from vestis.data.taxonomy import Taxonomy
from vestis.data.transforms import letterbox_batch, letterbox_box
from vestis.errors import VestisError
from vestis.eval.metrics import DEFAULT_THRESHOLD
from vestis.inference.backends import Backend, OnnxBackend, TorchBackend
from vestis.inference.inputs import ImageInput, ImageList, as_image
from vestis.inference.onnx_format import InferenceModule
from vestis.inference.results import Prediction
from vestis.inference.runtime import check_threads, eager_memory_format, open_onnx, torch_device

__all__ = ["DEFAULT_THRESHOLD", "ImageInput", "Predictor", "project_heatmap"]

_PREPROCESSING_KEYS = ("image_size", "mean", "std", "pad_value")


_EMBEDDING_HINT = (
    "a {} embedding model: it embeds images for substitute search and predicts no attributes here; "
    "use vestis.inference.Embedder (or `vestis evaluate` for its retrieval metrics)"
)


def project_heatmap(
    raw: np.ndarray, image_size: tuple[int, int], input_size: int, out_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Map a raw heat-map from the letterboxed input back onto the original image.

    The map is resized to the model input (``input_size`` squared), the letterbox padding is cropped
    off, the rest is resized to ``out_size`` and min-max scaled to [0, 1] (a constant map becomes zeros).

    Args:
        raw: ``(h, w)`` map over the letterboxed input.
        image_size: ``(width, height)`` of the original image.
        input_size: the model's input side.
        out_size: ``(width, height)`` of the result; default ``image_size``.

    Returns:
        ``float32`` ``(height, width)`` in [0, 1].
    """
    full = Image.fromarray(np.ascontiguousarray(raw, dtype=np.float32)).resize(
        (input_size, input_size), Image.Resampling.BILINEAR
    )
    x0, y0, nw, nh = letterbox_box(image_size[0], image_size[1], input_size)
    w, h = out_size or image_size
    crop = full.crop((x0, y0, x0 + nw, y0 + nh)).resize((w, h), Image.Resampling.BILINEAR)
    out = np.asarray(crop, dtype=np.float32)
    lo, hi = float(out.min()), float(out.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.zeros_like(out)
    return np.clip((out - lo) / (hi - lo), 0.0, 1.0)


class Predictor:
    """Attribute prediction from a checkpoint or an ONNX file (see the module docstring).

    Build it with :meth:`from_path` (or :meth:`from_model` for a model in memory). Methods may be called
    from several threads.

    Attributes:
        taxonomy: the attributes predicted.
        preprocessing: ``image_size``, ``mean``, ``std``, ``pad_value``, ``resize`` (``letterbox``).
        thresholds: calibrated per-value thresholds, attribute -> list (may be empty).
        threshold: the multi-label threshold used where no calibrated one applies.
        config: the training configuration as a dict, when known.
        path: the file the predictor was built from, if any.
        max_pixels: larger images are refused when decoding (decompression-bomb guard).
        fingerprint: the model's fingerprint (see :attr:`fingerprint`).
    """

    def __init__(
        self,
        backend: Backend,
        taxonomy: Taxonomy,
        preprocessing: Mapping[str, Any],
        thresholds: Mapping[str, Sequence[float]] | None = None,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        config: Mapping[str, Any] | None = None,
        path: Path | None = None,
        info: Mapping[str, Any] | None = None,
        fingerprint: str | None = None,
    ) -> None:
        missing = [k for k in _PREPROCESSING_KEYS if k not in preprocessing]
        if missing:
            raise VestisError(f"{path or '<model>'}: preprocessing: missing {missing}")
        self._backend = backend
        self.taxonomy = taxonomy
        self.preprocessing: dict[str, Any] = {"resize": "letterbox", **dict(preprocessing)}
        self.thresholds: dict[str, list[float]] = {k: [float(t) for t in v] for k, v in (thresholds or {}).items()}
        for name, values in self.thresholds.items():
            if name in taxonomy and len(values) != taxonomy[name].num_values:
                raise VestisError(
                    f"{path or '<model>'}: thresholds.{name}: expected {taxonomy[name].num_values} values, "
                    f"got {len(values)}"
                )
        self.threshold = float(threshold)
        self.config = dict(config) if config is not None else None
        self.path = path
        self.max_pixels = int(((config or {}).get("data") or {}).get("max_pixels", DEFAULT_MAX_PIXELS))
        self._info = dict(info or {})
        self._fingerprint = fingerprint

    # --- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike[str],
        device: str | None = None,
        *,
        threads: int | None = None,
        trust_checkpoint: bool = False,
    ) -> Predictor:
        """A ``.onnx`` file (ONNX Runtime), a checkpoint (PyTorch) or per-attribute models combined into one
        (``combined.json`` or its run folder from ``vestis train --per-attribute``; see
        :mod:`vestis.inference.combined`).

        Args:
            path: the model file (or a per-attribute run folder).
            device: ``cpu``, ``cuda`` or ``cuda:N``; ``None`` picks CUDA when available (the CUDA execution
                provider for ONNX), else the CPU.
            threads: CPU threads per model call; ``None`` leaves the runtime's default (all cores). For ONNX
                it is the session's own setting; for PyTorch it calls ``torch.set_num_threads``, which is
                process-wide.
            trust_checkpoint: also load an old pickle checkpoint, which runs any code the file holds (see
                :func:`vestis.train.checkpoint.load_checkpoint`).

        Raises:
            VestisError: a missing or unreadable file, a file without vestis metadata, an old pickle checkpoint
                without ``trust_checkpoint``, an unavailable device.
        """
        from vestis.inference.combined import combined_predictor_args, is_combined

        path = Path(path)
        if is_combined(path):  # per-attribute models served as one (vestis train --per-attribute)
            args, kwargs = combined_predictor_args(path, device, threads=threads, trust_checkpoint=trust_checkpoint)
            return cls(*args, **kwargs)
        if not path.is_file():
            raise VestisError(f"{path}: model file not found")
        if path.suffix.lower() == ".onnx":
            return cls.from_onnx(path, device, threads=threads)
        return cls.from_checkpoint(path, device, threads=threads, trust_checkpoint=trust_checkpoint)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        device: str | None = None,
        *,
        threads: int | None = None,
        trust_checkpoint: bool = False,
    ) -> Predictor:
        """The PyTorch backend on a vestis checkpoint (see :meth:`from_path`)."""
        from vestis.train.checkpoint import load_checkpoint, rebuild_model

        path = Path(path)
        if threads is not None:
            torch.set_num_threads(check_threads(threads))
        state = load_checkpoint(path, trust=trust_checkpoint)
        if state.get("embedding"):
            raise VestisError(f"{path}: {_EMBEDDING_HINT.format(state['embedding'].get('model', 'embedding'))}")
        _refuse_pipeline_stage(path, state)
        dev = torch_device(device)
        model = rebuild_model(state, source=str(path), map_location=dev)
        eager_memory_format(model, dev)
        predictor = cls.from_model(
            model, preprocessing=state.get("preprocessing"), thresholds=state.get("thresholds"), device=str(dev)
        )
        predictor.path = path
        return predictor

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        *,
        taxonomy: Taxonomy | None = None,
        preprocessing: Mapping[str, Any] | None = None,
        thresholds: Mapping[str, Sequence[float]] | None = None,
        device: str | None = None,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> Predictor:
        """The PyTorch backend on a model in memory (e.g. hand-set weights in a test).

        The model itself is used, not a copy: it is moved to ``device`` and put in eval mode.

        Args:
            model: an attribute model; its ``taxonomy``, ``config`` and ``thresholds`` attributes are used
                when the arguments are not given, and its ``fingerprint`` when it has one.
            taxonomy: the model's taxonomy.
            preprocessing: ``image_size``, ``mean``, ``std``, ``pad_value``; default: from ``model.config.data``.
            thresholds: calibrated per-value thresholds.
            device: as in :meth:`from_path`.
            threshold: the multi-label threshold where no calibrated one applies.
        """
        cfg = getattr(model, "config", None)
        taxonomy = taxonomy if taxonomy is not None else getattr(model, "taxonomy", None)
        if taxonomy is None:
            raise VestisError("Predictor.from_model: the model has no taxonomy; pass taxonomy=")
        if preprocessing is None:
            if cfg is None:
                raise VestisError("Predictor.from_model: the model has no config; pass preprocessing=")
            d = cfg.resolved().data
            preprocessing = {"image_size": d.image_size, "mean": list(d.mean), "std": list(d.std)}
            preprocessing |= {"pad_value": d.pad_value, "resize": "letterbox"}
        if thresholds is None:
            thresholds = getattr(model, "thresholds", None)
        dev = torch_device(device)
        module = InferenceModule(model, taxonomy, preprocessing["mean"], preprocessing["std"])
        return cls(
            TorchBackend(module, dev),
            taxonomy,
            preprocessing,
            thresholds,
            threshold=threshold,
            config=cfg.to_dict() if cfg is not None else None,
            info={"quantization": "none"},
            fingerprint=getattr(model, "fingerprint", None),
        )

    @classmethod
    def from_onnx(
        cls, path: str | os.PathLike[str], device: str | None = None, *, threads: int | None = None
    ) -> Predictor:
        """The ONNX Runtime backend on a file written by ``vestis export`` (see :meth:`from_path`)."""
        path = Path(path)
        session, meta = open_onnx(path, device, threads)
        if meta.get("vestis.task") == "embedding":
            try:
                name = json.loads(meta.get("vestis.embedding", "{}")).get("model", "embedding")
            except (json.JSONDecodeError, AttributeError):
                name = "embedding"
            raise VestisError(f"{path}: {_EMBEDDING_HINT.format(name)}")
        src = f"{path} (metadata)"
        try:
            taxonomy = Taxonomy.from_dict(json.loads(meta["vestis.taxonomy"]), source=src)
            preprocessing = json.loads(meta["vestis.preprocessing"])
            thresholds = json.loads(meta.get("vestis.thresholds", "{}"))
            config = json.loads(meta.get("vestis.config", "{}")) or None
            names = json.loads(meta["vestis.outputs"])
            quant = json.loads(meta.get("vestis.quantization", '{"mode": "none"}'))
        except (KeyError, json.JSONDecodeError) as e:
            raise VestisError(f"{src}: missing or malformed entry ({e})") from None
        missing = [a.name for a in taxonomy if a.name not in names]
        if missing:
            raise VestisError(f"{src}: vestis.outputs: no output for attribute(s) {missing}")
        backend = OnnxBackend(session, [names[a.name] for a in taxonomy])
        return cls(
            backend,
            taxonomy,
            {k: v for k, v in preprocessing.items() if k not in ("input", "normalization")},
            thresholds,
            config=config,
            path=path,
            info={"quantization": quant.get("mode", "none")},
            fingerprint=meta.get("vestis.fingerprint") or None,
        )

    # --- properties -----------------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """``torch`` or ``onnx``."""
        return self._backend.name

    @property
    def device(self) -> str:
        return self._backend.device

    @property
    def image_size(self) -> int:
        return int(self.preprocessing["image_size"])

    @property
    def module(self) -> InferenceModule | None:
        """The PyTorch module (``None`` for ONNX)."""
        return getattr(self._backend, "module", None)

    @property
    def fingerprint(self) -> str | None:
        """The model's fingerprint (``sha256:...`` over weights, taxonomy and preprocessing), ``None`` if unknown.

        From the checkpoint (the loaded model's ``fingerprint``) or the ONNX metadata key ``vestis.fingerprint``.
        An int8 export keeps the fingerprint of the model it was quantised from (its ``quantization`` in
        :attr:`info` tells them apart).
        """
        return self._fingerprint

    @property
    def info(self) -> dict[str, Any]:
        """A JSON-able summary: backend, device, source file, input size, quantisation, taxonomy, fingerprint."""
        return {
            "backend": self.backend,
            "device": self.device,
            "path": str(self.path) if self.path else None,
            "image_size": self.image_size,
            "taxonomy": self.taxonomy.name,
            "fingerprint": self.fingerprint,
            **self._info,
        }

    def thresholds_for(self, attribute: str, calibrated: bool = True) -> np.ndarray:
        """Per-value decision thresholds ``(K,)`` of a multi-label attribute."""
        a = self.taxonomy[attribute]
        if calibrated and attribute in self.thresholds:
            return np.asarray(self.thresholds[attribute], dtype=np.float64)
        return np.full(a.num_values, self.threshold)

    # --- stages ---------------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Letterbox PIL images to the model's input: ``uint8`` ``(B, 3, S, S)``."""
        return letterbox_batch(images, self.image_size, int(self.preprocessing["pad_value"]))

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        s = self.image_size
        arr = np.asarray(batch)
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (3, s, s):
            raise VestisError(f"batch: expected uint8 (B, 3, {s}, {s}), got {arr.dtype} {arr.shape}")
        return arr if arr.flags.c_contiguous and arr.flags.writeable else np.array(arr, order="C")

    def run(self, batch: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Raw outputs: probabilities ``{attribute: (B, K) float32}`` and heat-maps ``(B, h, w)``.

        An empty batch gives empty probabilities and heat-maps of shape ``(0, 0, 0)``.
        """
        arr = self._check_batch(batch)
        if len(arr) == 0:
            return {a.name: np.zeros((0, a.num_values), np.float32) for a in self.taxonomy}, np.zeros((0, 0, 0))
        probs, heat = self._backend.run(arr)
        return {a.name: p for a, p in zip(self.taxonomy, probs, strict=True)}, heat

    def predict_arrays(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Probabilities ``{attribute: (B, K) float32}`` for a preprocessed batch (see :meth:`preprocess`)."""
        return self.run(batch)[0]

    def decode(
        self, probs: Mapping[str, np.ndarray], calibrated: bool = True, digits: int | None = None
    ) -> list[dict[str, dict[str, Any]]]:
        """Per-image results from probabilities (format in the module docstring).

        Works on whole batches (one ``argmax``/``argsort`` per attribute) and builds the per-image dicts from lists.

        Args:
            probs: ``{attribute: (B, K)}`` probabilities, as :meth:`predict_arrays` gives them.
            calibrated: use the calibrated per-value thresholds where the model has them.
            digits: round the ``score`` and ``scores`` shown to this many decimals, exactly as ``round`` would
                (the decisions use the probabilities as they are); ``None`` keeps them whole.
        """
        tax = self.taxonomy
        n = len(next(iter(probs.values()))) if probs else 0
        if n == 0:
            return []
        cat = tax[tax.category_attribute] if tax.category_attribute else None
        categories: list[str | None] = [None] * n
        if cat is not None:
            categories = [cat.values[j] for j in np.argmax(np.asarray(probs[cat.name]), axis=1).tolist()]
        cols: dict[str, Any] = {}  # attribute -> per-image pieces, made for an attribute when some image needs it

        def columns(a: Any) -> Any:
            if a.name not in cols:
                p = np.asarray(probs[a.name])
                values = _shown_scores(p, digits)
                shown = [dict(zip(a.values, row, strict=True)) for row in values]
                if a.kind == "single":
                    best = np.argmax(p, axis=1).tolist()
                    cols[a.name] = (shown, best, [row[j] for row, j in zip(values, best, strict=True)])
                else:
                    t = self.thresholds_for(a.name, calibrated)
                    order = np.argsort(-p, axis=1, kind="stable").tolist()
                    keep = (p >= t).tolist()
                    chosen = [[a.values[j] for j in o if k[j]] for o, k in zip(order, keep, strict=True)]
                    cols[a.name] = (shown, chosen, dict(zip(a.values, t.tolist(), strict=True)))
            return cols[a.name]

        results: list[dict[str, dict[str, Any]]] = []
        for i, category in enumerate(categories):
            res: dict[str, dict[str, Any]] = {}
            for a in tax:
                if not a.applies(category):
                    continue
                shown, picked, extra = columns(a)
                if a.kind == "single":
                    res[a.name] = {"value": a.values[picked[i]], "score": extra[i], "scores": shown[i]}
                else:
                    res[a.name] = {"values": picked[i], "scores": shown[i], "thresholds": dict(extra)}
            results.append(res)
        return results

    @overload
    def predict(self, images: ImageInput, calibrated: bool = True) -> Prediction: ...

    @overload
    def predict(self, images: ImageList, calibrated: bool = True) -> list[Prediction]: ...

    def predict(self, images: ImageInput | ImageList, calibrated: bool = True) -> Prediction | list[Prediction]:
        """Attributes of one image, or of each image of a list.

        Paths are decoded by vestis' bounded image loader (the formats and the pixel cap of ``vestis predict``,
        JPEGs at a reduced DCT scale when that still covers the model input); arrays are ``uint8`` RGB
        ``(H, W, 3)``. Runs :meth:`preprocess`, :meth:`predict_arrays` and :meth:`decode` on them as one batch.

        Args:
            images: a PIL image, a path (``str`` or ``os.PathLike``), a ``uint8`` ``(H, W, 3)`` array, or a list
                (or tuple) of those.
            calibrated: use the calibrated per-value thresholds where the model has them.

        Returns:
            One :class:`~vestis.inference.results.Prediction` for one image, a list of them for a list.

        Raises:
            VestisError: an input of another type or shape, or a path that is not a readable image (an
                :class:`~vestis.data.images.ImageError` naming it).
        """
        one = not isinstance(images, list | tuple)
        items = [images] if one else list(images)
        where = "image" if one else "images[{}]"
        pils = [as_image(x, where.format(i), self.max_pixels, self.image_size) for i, x in enumerate(items)]
        if not pils:
            return []
        results = [Prediction.from_dict(r) for r in self.decode(self.predict_arrays(self.preprocess(pils)), calibrated)]
        return results[0] if one else results

    def heatmap(self, image: ImageInput, size: tuple[int, int] | None = None) -> np.ndarray:
        """Where the model looked, over the original image (see :func:`project_heatmap`).

        Args:
            image: a PIL image, a path or a ``uint8`` ``(H, W, 3)`` array, as in :meth:`predict`; a path is
                decoded at full size, so the map covers the file's pixels.
            size: ``(width, height)`` of the map; default the image's size.

        Returns:
            ``float32`` ``(height, width)`` in [0, 1].

        Raises:
            VestisError: as in :meth:`predict`.
        """
        img = as_image(image, "image", self.max_pixels)
        _, heat = self.run(self.preprocess([img]))
        return project_heatmap(heat[0], img.size, self.image_size, size)


def _shown_scores(p: np.ndarray, digits: int | None) -> list[list[float]]:
    """``p`` ``(B, K)`` as lists of floats, rounded to ``digits`` decimals as ``round`` rounds (``None``: as they are).

    For float32 (and narrower) probabilities ``np.round`` gives ``round``'s result bit for bit: ``x * 10**digits``
    is exact in float64 (24 + 14 significant bits for 6 digits), ``rint`` rounds half to even as ``round`` does, and
    the division is correctly rounded. Wider inputs take ``round`` itself.
    """
    if p.dtype.kind != "f":
        p = p.astype(np.float64)
    if digits is None:
        return p.tolist()
    if p.dtype.itemsize <= 4 and 0 <= digits <= 6:
        return np.round(p.astype(np.float64), digits).tolist()
    return [[round(float(x), digits) for x in row] for row in p.tolist()]


def _refuse_pipeline_stage(path: Path, state: Mapping[str, Any]) -> None:
    """A detector or a stage-2 checkpoint is not an attribute classifier: say what runs it instead."""
    from vestis.train.tasks import model_task

    name = str((state.get("config") or {}).get("model", {}).get("name", ""))
    kind = model_task(name) if name else "classification"
    if kind == "detection":
        raise VestisError(
            f"{path}: a garment detector ({name}); run it with `vestis detect`, or bundle it with a stage-2 model "
            "(`vestis pipeline DETECTOR STAGE2 --out outfit.vestis`) and predict with the pipeline"
        )
    if kind == "stage2":
        raise VestisError(
            f"{path}: a stage-2 crop model ({name}); it runs inside an outfit pipeline: "
            "`vestis pipeline DETECTOR STAGE2 --out outfit.vestis`, then `vestis predict outfit.vestis IMAGES`"
        )
