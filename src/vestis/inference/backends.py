"""The runtimes behind :class:`~vestis.inference.predictor.Predictor`: PyTorch or ONNX Runtime, one ``run`` each."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from vestis.inference.onnx_format import HEATMAP_OUTPUT, INPUT_NAME, InferenceModule

__all__ = ["Backend", "OnnxBackend", "TorchBackend"]


class Backend(Protocol):
    """What a :class:`~vestis.inference.predictor.Predictor` runs: a batch of inputs -> outputs and heat-map."""

    name: str
    device: str

    def run(self, batch: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]: ...


class TorchBackend:
    """A PyTorch :class:`~vestis.inference.onnx_format.InferenceModule` on a device."""

    name = "torch"

    def __init__(self, module: InferenceModule, device: torch.device) -> None:
        self.module = module.to(device).eval()
        self.device = str(device)
        self._device = device

    def run(self, batch: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        x = torch.from_numpy(batch).to(self._device)
        with torch.inference_mode():
            outs = self.module(x)
        return [o.float().cpu().numpy() for o in outs[:-1]], outs[-1].float().cpu().numpy()


class OnnxBackend:
    """An ONNX Runtime session of a ``vestis export`` graph."""

    name = "onnx"

    def __init__(self, session: Any, outputs: list[str]) -> None:
        self.session = session
        self.outputs = [*outputs, HEATMAP_OUTPUT]
        self.device = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def run(self, batch: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        outs = self.session.run(self.outputs, {INPUT_NAME: batch})
        return [np.asarray(o, dtype=np.float32) for o in outs[:-1]], np.asarray(outs[-1], dtype=np.float32)
