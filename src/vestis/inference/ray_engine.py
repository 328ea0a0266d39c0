"""``vestis predict --engine ray``: the tagging pipeline on Ray Data, for catalogs beyond one machine.

Two stages, as in the local engine: decoding (:func:`~vestis.inference.items.decode_image`) in parallel
Ray tasks, then the model in an actor that builds the same :class:`~vestis.inference.predictor.Predictor`
from the model file (a GPU actor when the cluster has GPUs). The driver receives the finished rows in
input order and journals them exactly as the local engine does, so a killed run resumes the same way.

Ray connects to the cluster named by ``RAY_ADDRESS`` or starts a local one, unless ``ray.init`` was
already called. The model file and the images must be readable at the same paths on every node (a
shared file system). Ray is an optional dependency: ``pip install 'vestis[ray]'``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vestis.errors import VestisError
from vestis.inference.items import ImageItem, decode_image, make_rows
from vestis.inference.predictor import Predictor

__all__ = ["ray_available", "ray_batches"]


def ray_available() -> bool:
    """Whether ``ray.data`` can be imported."""
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def _require_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise VestisError("--engine ray needs Ray Data: pip install 'vestis[ray]' (or 'ray[data]')") from None
    return ray


def _pool(ray: Any, *, actors: bool, size: int | None) -> dict[str, Any]:
    """``compute=`` on Ray >= 2.51 (where ``concurrency`` is deprecated), ``concurrency=`` before."""
    if hasattr(ray.data, "TaskPoolStrategy"):
        strategy = ray.data.ActorPoolStrategy(size=size) if actors else ray.data.TaskPoolStrategy(size=size)
        return {"compute": strategy}
    return {"concurrency": size}


def _decode_batch(batch: dict[str, np.ndarray], size: int, pad_value: int, max_pixels: int) -> dict[str, np.ndarray]:
    """Ray task: paths -> ``pixels`` ``uint8`` ``(B, 3, S, S)`` (zeros where decoding failed) and ``error``."""
    n = len(batch["path"])
    pixels = np.zeros((n, 3, size, size), dtype=np.uint8)
    errors = np.empty(n, dtype=object)
    for i, path in enumerate(batch["path"]):
        arr, err = decode_image(Path(str(path)), size, pad_value, max_pixels)
        if arr is not None:
            pixels[i] = arr
        errors[i] = err or ""
    return {"id": batch["id"], "path": batch["path"], "pixels": pixels, "error": errors}


class _PredictStage:
    """Ray actor: one :class:`Predictor` per actor, decoded batches -> JSON rows."""

    def __init__(self, model_path: str, device: str | None, calibrated: bool) -> None:
        self.predictor = Predictor.from_path(model_path, device=device)
        self.calibrated = calibrated

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [ImageItem(str(i), Path(str(p))) for i, p in zip(batch["id"], batch["path"], strict=True)]
        errors = [str(e) or None for e in batch["error"]]
        arrays = [None if e else batch["pixels"][i] for i, e in enumerate(errors)]
        rows = make_rows(self.predictor, items, arrays, errors, self.calibrated)
        out = np.empty(len(rows), dtype=object)
        out[:] = [json.dumps(r, ensure_ascii=False) for r in rows]
        return {"row": out}


def ray_batches(
    model_path: str | os.PathLike[str],
    items: Sequence[ImageItem],
    *,
    batch_size: int = 32,
    workers: int = 0,
    device: str | None = None,
    calibrated: bool = True,
) -> Iterator[list[dict[str, Any]]]:
    """Rows for ``items``, batch by batch and in input order, computed on Ray Data.

    Args:
        model_path: checkpoint or ONNX file, readable by every Ray worker.
        items: the images.
        batch_size: images per decode task and per model call.
        workers: parallel decode tasks (0: as many as Ray schedules).
        device: the predictor's device; ``None`` uses a GPU when the cluster has one.
        calibrated: use the model's calibrated thresholds.

    Raises:
        VestisError: Ray is not installed.
    """
    ray = _require_ray()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    # the driver reads size and padding from the model itself, so both stages agree with it
    probe = Predictor.from_path(model_path, device="cpu")
    size, pad, max_pixels = probe.image_size, int(probe.preprocessing["pad_value"]), probe.max_pixels
    del probe
    resources = ray.cluster_resources()
    gpu = device.startswith("cuda") if device else resources.get("GPU", 0) > 0
    # two stages share the CPUs; on a one-CPU cluster each takes half, or the actor would starve the decoder
    cpus = 1.0 if resources.get("CPU", 1) >= 2 else resources.get("CPU", 1) / 2

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ds = ray.data.from_items([{"id": it.id, "path": str(it.path)} for it in items])
    ds = ds.map_batches(
        _decode_batch,
        fn_kwargs={"size": size, "pad_value": pad, "max_pixels": max_pixels},
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=cpus,
        **_pool(ray, actors=False, size=workers or None),
    )
    ds = ds.map_batches(
        _PredictStage,
        fn_constructor_kwargs={
            "model_path": str(model_path),
            "device": ("cuda" if gpu else "cpu") if device is None else device,
            "calibrated": calibrated,
        },
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=cpus,
        num_gpus=1 if gpu else 0,
        **_pool(ray, actors=True, size=1),
    )
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        yield [json.loads(s) for s in batch["row"]]
