"""Where a model runs: the ``device`` and ``threads`` arguments of the predictors, checked once for both.

:class:`~vestis.inference.predictor.Predictor` and :class:`~vestis.inference.embedder.Embedder` take the same
``device`` (``cpu``, ``cuda``, ``cuda:N`` or ``None`` for the best available) and ``threads`` arguments, for
PyTorch and for ONNX Runtime alike; these helpers turn them into what each runtime wants, or a
:class:`~vestis.errors.VestisError` that names the bad value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vestis.errors import VestisError

__all__ = ["check_threads", "onnx_providers", "torch_device"]


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
