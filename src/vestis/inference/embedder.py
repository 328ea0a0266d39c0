"""Images in, one unit sub-embedding per attribute out, from a checkpoint or an ONNX file.

An :class:`Embedder` is built from an embedding checkpoint (PyTorch backend), from a classifier checkpoint (its
attribute-based embedder, :func:`vestis.models.embedding.as_embedder`) or from an ONNX file written by
``vestis export`` for either (ONNX Runtime backend); both backends run
:class:`~vestis.inference.onnx_format.EmbeddingInferenceModule`::

    e = Embedder.from_path("best.ckpt")            # or "model.onnx"
    e.layout                                       # [("category", 64), ("colour", 64), ...]
    emb = e.embed([Image.open("shirt.jpg")])       # {"category": (1, 64) float32, ...}, each row unit-norm

The stages are the :class:`~vestis.inference.predictor.Predictor`'s: :meth:`Embedder.preprocess` (PIL images ->
letterboxed ``uint8`` ``(B, 3, S, S)``) and :meth:`Embedder.embed_arrays` (batch -> sub-embeddings). Two images
compare in a set ``S`` of attributes by ``sum_{t in S} <q_t, g_t>`` (inner products of unit vectors).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from vestis.data.taxonomy import Taxonomy
from vestis.data.transforms import letterbox_batch
from vestis.errors import VestisError
from vestis.inference.onnx_format import (
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    TASK,
    EmbeddingInferenceModule,
)
from vestis.inference.runtime import check_threads, open_onnx, torch_device

__all__ = ["DEFAULT_MAX_BATCH", "Embedder"]

# one model call embeds at most this many images: a larger batch is split by embed() and refused by
# embed_arrays(), so a caller cannot make one call allocate activations for an unbounded batch
DEFAULT_MAX_BATCH = 256
_PREPROCESSING_KEYS = ("image_size", "mean", "std", "pad_value")


class _TorchBackend:
    name = "torch"

    def __init__(self, module: EmbeddingInferenceModule, device: torch.device) -> None:
        self.module = module.to(device).eval()
        self.device = str(device)
        self._device = device

    def run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self.module(torch.from_numpy(batch).to(self._device))
        return out.float().cpu().numpy()


class _OnnxBackend:
    name = "onnx"

    def __init__(self, session: Any) -> None:
        self.session = session
        self.device = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def run(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([EMBEDDING_OUTPUT], {INPUT_NAME: batch})
        return np.asarray(out, dtype=np.float32)


class Embedder:
    """Sub-embeddings per attribute from a checkpoint or an ONNX file (see the module docstring).

    Build it with :meth:`from_path`, :meth:`from_checkpoint`, :meth:`from_onnx` or :meth:`from_model`.

    Attributes:
        taxonomy: the attributes (conditions).
        layout: ``(attribute, width)`` in concatenation order.
        preprocessing: ``image_size``, ``mean``, ``std``, ``pad_value``, ``resize`` (``letterbox``).
        config: the training configuration as a dict, when known.
        path: the file the embedder was built from, if any.
        max_batch: the most images one :meth:`embed_arrays` call takes.
        fingerprint: the model's fingerprint (:mod:`vestis.fingerprint`), ``None`` for a file without one.
    """

    def __init__(
        self,
        backend: _TorchBackend | _OnnxBackend,
        taxonomy: Taxonomy,
        layout: Sequence[tuple[str, int]],
        preprocessing: Mapping[str, Any],
        *,
        model: str,
        backbone: str = "",
        similarity: str = "",
        config: Mapping[str, Any] | None = None,
        path: Path | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        fingerprint: str | None = None,
    ) -> None:
        where = path or "<model>"
        missing = [k for k in _PREPROCESSING_KEYS if k not in preprocessing]
        if missing:
            raise VestisError(f"{where}: preprocessing: missing {missing}")
        if max_batch < 1:
            raise VestisError(f"max_batch: expected a positive number of images, got {max_batch}")
        self._backend = backend
        self.taxonomy = taxonomy
        self.layout: list[tuple[str, int]] = [(str(a), int(d)) for a, d in layout]
        self.preprocessing: dict[str, Any] = {"resize": "letterbox", **dict(preprocessing)}
        self.config = dict(config) if config is not None else None
        self.path = path
        self.max_batch = int(max_batch)
        self.fingerprint = fingerprint
        self._model = model
        self._backbone = backbone
        self._similarity = similarity
        # column offsets of each attribute in the concatenated vector
        ends = np.cumsum([d for _, d in self.layout]).tolist()
        self._slices = {a: slice(e - d, e) for (a, d), e in zip(self.layout, ends, strict=True)}

    # --- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_path(
        cls, path: str | os.PathLike[str], device: str | None = None, *, threads: int | None = None, trust: bool = False
    ) -> Embedder:
        """A ``.onnx`` file (ONNX Runtime) or a checkpoint (PyTorch).

        Args:
            path: the model file.
            device: ``cpu``, ``cuda`` or ``cuda:N``; ``None`` picks CUDA when available, else the CPU.
            threads: CPU threads per model call (as in :meth:`vestis.inference.Predictor.from_path`).
            trust: also load an old pickle checkpoint, which runs any code the file holds.

        Raises:
            VestisError: a missing or unreadable file, a file without vestis metadata, an unavailable device.
        """
        path = Path(path)
        if not path.is_file():
            raise VestisError(f"{path}: model file not found")
        if path.suffix.lower() == ".onnx":
            return cls.from_onnx(path, device, threads=threads)
        return cls.from_checkpoint(path, device, threads=threads, trust=trust)

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str], device: str | None = None, *, threads: int | None = None, trust: bool = False
    ) -> Embedder:
        """The PyTorch backend on an embedding checkpoint, or on a classifier's attribute-based embedder."""
        from vestis.train.checkpoint import load_checkpoint, rebuild_model

        path = Path(path)
        if threads is not None:
            torch.set_num_threads(check_threads(threads))
        state = load_checkpoint(path, trust=trust)
        dev = torch_device(device)
        model = rebuild_model(state, source=str(path), map_location=dev)
        embedder = cls.from_model(model, preprocessing=state["preprocessing"], device=str(dev))
        embedder.path = path
        return embedder

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        *,
        preprocessing: Mapping[str, Any] | None = None,
        device: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> Embedder:
        """The PyTorch backend on a model in memory: an embedding model, or a classifier (wrapped).

        The model itself is used, not a copy: it is moved to ``device`` and put in eval mode.

        Args:
            model: an embedding model or an attribute classifier; its ``config`` gives the preprocessing when
                ``preprocessing`` is not given.
            preprocessing: ``image_size``, ``mean``, ``std``, ``pad_value``.
            device: as in :meth:`from_path`.
            max_batch: the most images one :meth:`embed_arrays` call takes.
        """
        from vestis.models.embedding import as_embedder
        from vestis.train.checkpoint import SIMILARITY

        cfg = getattr(model, "config", None)
        if preprocessing is None:
            if cfg is None:
                raise VestisError("Embedder.from_model: the model has no config; pass preprocessing=")
            d = cfg.resolved().data
            preprocessing = {"image_size": d.image_size, "mean": list(d.mean), "std": list(d.std)}
            preprocessing |= {"pad_value": d.pad_value, "resize": "letterbox"}
        emb = as_embedder(model)
        dev = torch_device(device)
        module = EmbeddingInferenceModule(emb, preprocessing["mean"], preprocessing["std"])
        return cls(
            _TorchBackend(module, dev),
            emb.taxonomy,
            emb.embedding_layout(),
            preprocessing,
            model=emb.kind,
            backbone=emb.backbone_name,
            similarity=SIMILARITY,
            config=cfg.to_dict() if cfg is not None else None,
            max_batch=max_batch,
            fingerprint=getattr(model, "fingerprint", None),  # a classifier's own: its weights make the vectors
        )

    @classmethod
    def from_onnx(
        cls, path: str | os.PathLike[str], device: str | None = None, *, threads: int | None = None
    ) -> Embedder:
        """The ONNX Runtime backend on an embedding file written by ``vestis export`` (see :meth:`from_path`)."""
        path = Path(path)
        session, meta = open_onnx(path, device, threads)
        if meta.get("vestis.task") != TASK:
            raise VestisError(
                f"{path}: a classifier export, not an embedding one; embed from its checkpoint, or export it with "
                "`vestis export CHECKPOINT --embedding`"
            )
        src = f"{path} (metadata)"
        try:
            taxonomy = Taxonomy.from_dict(json.loads(meta["vestis.taxonomy"]), source=src)
            info = json.loads(meta["vestis.embedding"])
            preprocessing = json.loads(meta["vestis.preprocessing"])
            config = json.loads(meta.get("vestis.config", "{}")) or None
            layout = [(str(a), int(d)) for a, d in info["layout"]]
        except (KeyError, TypeError, ValueError) as e:  # JSONDecodeError is a ValueError
            raise VestisError(f"{src}: missing or malformed entry ({e!r})") from None
        width = session.get_outputs()[0].shape[-1] if session.get_outputs() else None
        if isinstance(width, int) and width != sum(d for _, d in layout):
            raise VestisError(f"{src}: vestis.embedding.layout: widths sum to {sum(d for _, d in layout)}, "
                              f"but the graph's output is {width} wide")  # fmt: skip
        return cls(
            _OnnxBackend(session),
            taxonomy,
            layout,
            {k: v for k, v in preprocessing.items() if k not in ("input", "normalization")},
            model=str(info.get("model", "")),
            backbone=str(info.get("backbone", "")),
            similarity=str(info.get("similarity", "")),
            config=config,
            path=path,
            fingerprint=meta.get("vestis.fingerprint"),
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
    def dim(self) -> int:
        """The width of the concatenated vector, ``sum d_t``."""
        return sum(d for _, d in self.layout)

    @property
    def module(self) -> EmbeddingInferenceModule | None:
        """The PyTorch module (``None`` for ONNX)."""
        return getattr(self._backend, "module", None)

    @property
    def info(self) -> dict[str, Any]:
        """A JSON-able summary: model, backbone, layout, similarity, image size, backend, device, source file."""
        return {
            "model": self._model,
            "backbone": self._backbone,
            "layout": [[a, d] for a, d in self.layout],
            "similarity": self._similarity,
            "image_size": self.image_size,
            "backend": self.backend,
            "device": self.device,
            "path": str(self.path) if self.path else None,
            "taxonomy": self.taxonomy.name,
            "fingerprint": self.fingerprint,
        }

    # --- stages ---------------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Letterbox PIL images to the model's input: ``uint8`` ``(B, 3, S, S)``, as the Predictor does."""
        return letterbox_batch(images, self.image_size, int(self.preprocessing["pad_value"]))

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        s = self.image_size
        arr = np.asarray(batch)
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (3, s, s):
            raise VestisError(
                f"batch: expected uint8 (B, 3, {s}, {s}) letterboxed pixels (see preprocess), got {arr.dtype} "
                f"{arr.shape}"
            )
        if len(arr) > self.max_batch:
            raise VestisError(f"batch: expected at most {self.max_batch} images per call, got {len(arr)}")
        return arr if arr.flags.c_contiguous and arr.flags.writeable else np.array(arr, order="C")

    def embed_concat(self, batch: np.ndarray) -> np.ndarray:
        """The concatenated vectors ``(B, sum d_t)`` ``float32`` for a preprocessed batch, in layout order."""
        arr = self._check_batch(batch)
        if len(arr) == 0:
            return np.zeros((0, self.dim), np.float32)
        out = self._backend.run(arr)
        if out.shape != (len(arr), self.dim):
            raise VestisError(
                f"{self.path or '<model>'}: the model returned {out.shape}, expected ({len(arr)}, {self.dim})"
            )
        return out

    def split(self, vectors: np.ndarray) -> dict[str, np.ndarray]:
        """Concatenated vectors ``(B, sum d_t)`` -> ``{attribute: (B, d_t)}`` (views, in layout order)."""
        return {a: vectors[:, sl] for a, sl in self._slices.items()}

    def embed_arrays(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """``{attribute: (B, d_t) float32}`` unit sub-embeddings for a preprocessed batch (see :meth:`preprocess`).

        Raises:
            VestisError: not ``uint8`` ``(B, 3, S, S)``, or more than :attr:`max_batch` images.
        """
        return self.split(self.embed_concat(batch))

    def embed(self, images: Sequence[Image.Image]) -> dict[str, np.ndarray]:
        """Sub-embeddings of PIL images, :attr:`max_batch` at a time."""
        parts = [
            self.embed_concat(self.preprocess(images[i : i + self.max_batch]))
            for i in range(0, len(images), self.max_batch)
        ]
        return self.split(np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32))
