"""Where a model runs: the ``device`` and ``threads`` arguments of the predictors, checked once for both.

:class:`~vestis.inference.predictor.Predictor` and :class:`~vestis.inference.embedder.Embedder` take the same
``device`` (``cpu``, ``cuda``, ``cuda:N`` or ``None`` for the best available) and ``threads`` arguments, for
PyTorch and for ONNX Runtime alike; these helpers turn them into what each runtime wants, or a
:class:`~vestis.errors.VestisError` that names the bad value.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vestis.errors import VestisError
from vestis.inference.onnx_format import ONNX_FORMAT, ONNX_VERSION

__all__ = ["check_threads", "eager_memory_format", "onnx_providers", "open_onnx", "torch_device"]


def torch_device(device: str | None) -> torch.device:
    """The PyTorch device for ``device``; ``None`` picks CUDA when available, else the CPU.

    Raises:
        VestisError: not a device name, or CUDA requested but not available.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise VestisError(f"device: expected cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VestisError(f"device: {device!r} requested but CUDA is not available")
    return dev


def onnx_providers(device: str | None, available: Sequence[str]) -> list[Any]:
    """ONNX Runtime execution providers for ``device``, given the ``available`` ones.

    ``None`` prefers CUDA and falls back to the CPU; ``cuda:N`` selects the device id.

    Raises:
        VestisError: not a device name, or CUDA requested but onnxruntime has no CUDA provider.
    """
    cuda = "CUDAExecutionProvider" in available
    if device is None:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" or device.startswith("cuda:"):
        if not cuda:
            raise VestisError(f"device: {device!r} requested but onnxruntime has no CUDAExecutionProvider")
        index = int(device.split(":", 1)[1]) if ":" in device and device.split(":", 1)[1].isdigit() else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise VestisError(f"device: expected cpu, cuda or cuda:N, got {device!r}")


def check_threads(threads: int) -> int:
    """``threads`` itself when it is a positive number of threads.

    Raises:
        VestisError: zero or negative.
    """
    if threads < 1:
        raise VestisError(f"threads: expected a positive number of threads, got {threads}")
    return threads


def open_onnx(
    path: str | os.PathLike[str], device: str | None = None, threads: int | None = None
) -> tuple[Any, dict[str, str]]:
    """An ONNX Runtime session on a file written by ``vestis export``, and its vestis metadata.

    Raises:
        VestisError: onnxruntime missing, a file it cannot load, no vestis metadata, or a format version this
            vestis does not read.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise VestisError("ONNX models need onnxruntime: pip install 'vestis[onnx]'") from None
    path = Path(path)
    providers = onnx_providers(device, ort.get_available_providers())
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the provider notes are not for users
    if threads is not None:
        options.intra_op_num_threads = check_threads(threads)
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        raise VestisError(f"{path}: not a loadable ONNX model ({str(e).strip()[:300]})") from None
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if meta.get("vestis.format") != ONNX_FORMAT:
        raise VestisError(f"{path}: no vestis metadata; write the model with `vestis export`")
    version = meta.get("vestis.version", "0")
    if not version.isdigit() or int(version) > ONNX_VERSION:
        raise VestisError(f"{path}: model format version {version!r} is not one this vestis reads")
    return session, meta


def eager_memory_format(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` (in place) in the memory order its run trained in, for eager inference on ``device``.

    The checkpoint's ``train.channels_last`` (:func:`vestis.train.accel.resolve`) holds for inference too:
    ``bench/train_speed.py`` measures channels-last faster for eager inference on CPU as well, and equal to the
    default order within float rounding. A model without a config is left as it is.
    """
    from vestis.train.accel import resolve

    cfg = getattr(model, "config", None)
    if cfg is not None and resolve(cfg.train, device, check=False).channels_last:
        model.to(memory_format=torch.channels_last)
    return model
